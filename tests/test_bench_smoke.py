"""The verify-and-merge benchmark in its smoke configuration: counts only, no timing."""

from __future__ import annotations

import pytest

from pathlib import Path

from bench.verify_merge import (
    SMOKE_REPEAT,
    Measurement,
    load_or_build_workload,
    main,
    run_smoke,
)

# The smoke workload is deterministic (seeded generators, deterministic
# Ed25519 signatures), so its merged states have fixed hashes. A change here
# means the generator, the event envelope or the merge output changed.
SMOKE_STATES_SHA256 = "e2d22aae6bbae94d2ffa58ce72f4c30ab3277ff1149dd4eda71bb65ab3286eb5"


@pytest.fixture(scope="module")
def smoke() -> Measurement:
    return run_smoke()


def test_smoke_counts_every_event(smoke: Measurement) -> None:
    totals = smoke.totals()
    assert smoke.events == 2_000
    assert totals["event_count"] == 2_000
    assert totals["valid_event_count"] == 2_000
    assert totals["invalid_event_count"] == 0


def test_smoke_covers_every_subject(smoke: Measurement) -> None:
    assert smoke.subjects == 20
    assert len(smoke.results) == 20
    assert len({row.pith_number for row in smoke.results}) == 20
    assert {row.event_count for row in smoke.results} == {100}


def test_smoke_supersedes_some_events(smoke: Measurement) -> None:
    applied = smoke.totals()["applied_event_count"]
    assert applied == 1_639


def test_smoke_states_hash_is_fixed(smoke: Measurement) -> None:
    assert smoke.states_sha256() == SMOKE_STATES_SHA256


def test_smoke_times_each_repetition(smoke: Measurement) -> None:
    assert len(smoke.floor.wall) == SMOKE_REPEAT
    assert len(smoke.pipeline.wall) == SMOKE_REPEAT
    assert len(smoke.merge_only.cpu) == SMOKE_REPEAT


def test_smoke_command_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--smoke"]) == 0
    output = capsys.readouterr().out
    assert "2,000 valid, 0 invalid" in output
    assert "| pipeline (parse_json + merge) |" in output


def test_cache_reuses_signed_events(tmp_path: Path) -> None:
    first, first_origin = load_or_build_workload(40, 4, cache_dir=tmp_path)
    second, second_origin = load_or_build_workload(40, 4, cache_dir=tmp_path)
    assert first_origin.startswith("signed, cached in ")
    assert second_origin.startswith("cache ")
    assert [subject.lines for subject in second.subjects] == [subject.lines for subject in first.subjects]


def test_cache_damaged_file_is_resigned(tmp_path: Path) -> None:
    first, _ = load_or_build_workload(40, 4, cache_dir=tmp_path)
    (cache_file,) = tmp_path.iterdir()
    data = bytearray(cache_file.read_bytes())
    data[-10] ^= 0x01
    cache_file.write_bytes(bytes(data))

    again, origin = load_or_build_workload(40, 4, cache_dir=tmp_path)
    assert origin.startswith("signed, cached in ")
    assert [subject.lines for subject in again.subjects] == [subject.lines for subject in first.subjects]
