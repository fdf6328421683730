"""The daemon's benchmarks in their smoke configurations: exact counts only, no timing.

The HTTP and memory smoke runs start the real daemon (``pith-mirror run``)
on free ports of 127.0.0.1; neither needs nginx or wrk.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import http_bench, import_bench, memory_bench

# The smoke workload is deterministic (seeded generators, deterministic
# Ed25519 signatures), so its merged states have fixed hashes. A change here
# means the generator, the event envelope or the merge output changed.
IMPORT_SMOKE_STATES_SHA256 = "db05130b56aa65376ab7f123b55641b8cc9b97dd5e82f43a94debc96ddc654de"

WRK_REPORT = """\
Running 10s test @ http://127.0.0.1:40000
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.05ms  30.12ms   90.00%
    Req/Sec    15.50k     1.20k   18.00k    70.00%
  Latency Distribution
     50%    1.95ms
     75%    2.40ms
     90%    3.10ms
     99%  850.00us
  308512 requests in 10.00s, 1.23GB read
  Non-2xx or 3xx responses: 7
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  30851.20
Transfer/sec:    125.90MB
"""


@pytest.fixture(scope="module")
def import_smoke(tmp_path_factory: pytest.TempPathFactory) -> import_bench.ImportMeasurement:
    return import_bench.run_smoke(tmp_path_factory.mktemp("import"))


@pytest.fixture(scope="module")
def http_smoke(tmp_path_factory: pytest.TempPathFactory) -> http_bench.SmokeResult:
    return http_bench.run_smoke(tmp_path_factory.mktemp("http"))


@pytest.fixture(scope="module")
def memory_smoke(tmp_path_factory: pytest.TempPathFactory) -> memory_bench.MemoryMeasurement:
    return memory_bench.run_smoke(tmp_path_factory.mktemp("memory"))


def test_import_smoke_accepts_every_bundle(import_smoke: import_bench.ImportMeasurement) -> None:
    assert import_smoke.bundles == 200
    assert import_smoke.counts.bundles_accepted == 200
    assert import_smoke.counts.bundles_other == 0


def test_import_smoke_accepts_every_event(import_smoke: import_bench.ImportMeasurement) -> None:
    assert import_smoke.events == 600
    assert import_smoke.counts.events_accepted == 600
    assert import_smoke.counts.events_other == 0


def test_import_smoke_states_hash_is_fixed(import_smoke: import_bench.ImportMeasurement) -> None:
    assert import_smoke.states_sha256 == IMPORT_SMOKE_STATES_SHA256


def test_import_smoke_times_one_repetition(import_smoke: import_bench.ImportMeasurement) -> None:
    assert import_smoke.batch_size == 50
    assert len(import_smoke.core.wall) == 1
    assert list(import_smoke.stores) == [0, 1]
    assert [len(times.cpu) for times in import_smoke.stores.values()] == [1, 1]
    # One store is closed after each store pass.
    assert len(import_smoke.close.wall) == 2


def test_import_smoke_command_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert import_bench.main(["--smoke"]) == 0
    output = capsys.readouterr().out
    assert "200 bundles with 600 signed events, batches of 50" in output
    assert "| store: Store.add_many_bundles, committed, 0 worker processes |" in output
    assert "| store: Store.add_many_bundles, committed, 1 worker process |" in output


def test_import_rejects_zero_repeat(tmp_path: Path) -> None:
    with pytest.raises(import_bench.BenchmarkError, match="--repeat must be at least 1"):
        import_bench.measure([], 0, tmp_path)


def test_http_smoke_answers_every_request(http_smoke: http_bench.SmokeResult) -> None:
    assert http_smoke.subjects == 50
    assert http_smoke.requests == 200
    assert http_smoke.statuses == {200: 200}


def test_http_smoke_serves_stored_bytes(http_smoke: http_bench.SmokeResult) -> None:
    assert http_smoke.ok == 200
    assert http_smoke.matched == 200


def test_wrk_report_parsed() -> None:
    run = http_bench.parse_wrk(WRK_REPORT, server_cpu_seconds=4.5)
    assert run.requests == 308_512
    assert run.seconds == 10.0
    assert run.requests_per_second == 30_851.2
    assert run.non_2xx == 7
    assert run.socket_errors == 3
    assert run.latency_ms == {"50": 1.95, "90": 3.1, "99": 0.85}
    assert run.server_cpu_seconds == 4.5


def test_wrk_report_unreadable_raises() -> None:
    with pytest.raises(http_bench.BenchmarkError, match="cannot read wrk's report"):
        http_bench.parse_wrk("wrk: connection refused\n", server_cpu_seconds=0.0)


def test_memory_smoke_baseline_serves_404s(memory_smoke: memory_bench.MemoryMeasurement) -> None:
    assert memory_smoke.baseline.subjects == 0
    assert memory_smoke.baseline.requests == 100
    assert memory_smoke.baseline.statuses == {404: 100}


def test_memory_smoke_loaded_serves_states(memory_smoke: memory_bench.MemoryMeasurement) -> None:
    assert memory_smoke.loaded.subjects == 200
    assert memory_smoke.loaded.requests == 100
    assert memory_smoke.loaded.statuses == {200: 100}
    assert memory_smoke.loaded.matched == 100


def test_memory_smoke_reads_proc_status(memory_smoke: memory_bench.MemoryMeasurement) -> None:
    for memory in (memory_smoke.baseline, memory_smoke.loaded):
        assert memory.rss_started_kib > 0
        assert memory.hwm_kib >= memory.rss_served_kib


def test_memory_smoke_store_is_whole_pages(memory_smoke: memory_bench.MemoryMeasurement) -> None:
    assert memory_smoke.store_bytes > 0
    assert memory_smoke.store_bytes % 4096 == 0
