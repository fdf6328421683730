"""Resident memory of the daemon per 100,000 subjects, against an idle daemon on an empty store.

Run from the repository root::

    python -m bench.memory_bench --subjects 100000 --sample 20000
    python -m bench.memory_bench --smoke

The benchmark starts ``pith-mirror run`` twice on free ports of 127.0.0.1
and reads ``VmRSS`` and ``VmHWM`` from ``/proc/PID/status``:

* baseline: on an empty store, once ``/healthz`` returns 200 and again after
  ``--sample`` requests for unknown subjects (404), so that both daemons
  have served the same number of requests;
* loaded: on a store into which ``--subjects`` bundles of the generator of
  ``bench.import_bench`` were imported (each with three signed events),
  once ``/healthz`` returns 200 and again after ``--sample`` requests for the
  states of distinct subjects drawn at random, each checked byte for byte
  against ``Store.get_state_bytes``.

The report gives both, the difference per 100,000 subjects, and the size
of the store's files after the daemon stopped, per 100,000 subjects.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.store import Store
from protocol import default_trust

from .http_bench import DaemonProcess, build_store, state_path
from .import_bench import machine_facts, store_size_bytes
from .verify_merge import DEFAULT_CACHE_DIR, BenchmarkError

__all__ = ["DaemonMemory", "MemoryMeasurement", "main", "measure", "run_smoke"]

DEFAULT_SUBJECTS = 100_000
DEFAULT_SAMPLE = 20_000
SMOKE_SUBJECTS = 200
SMOKE_SAMPLE = 100
# Time given to the daemon after /healthz returned 200 and after the last
# request, so that memory is read once it is idle.
SETTLE_SECONDS = 1.0
SMOKE_SETTLE_SECONDS = 0.1
# An unknown suffix (26 base32 characters) for the baseline's requests.
_UNKNOWN_PATH = "/pith/AAAAAAAAAAAAAAAAAAAAAAAAAA/state.json"


@dataclass(frozen=True)
class DaemonMemory:
    """Memory of one daemon in KiB, after start and after serving its requests, and its response counts."""

    subjects: int
    rss_started_kib: int
    rss_served_kib: int
    hwm_kib: int
    requests: int
    statuses: dict[int, int]
    matched: int


@dataclass(frozen=True)
class MemoryMeasurement:
    baseline: DaemonMemory
    loaded: DaemonMemory
    store_bytes: int

    @property
    def rss_per_100k_kib(self) -> float:
        """The loaded daemon's RSS after its requests minus the baseline's, per 100,000 subjects."""
        return (self.loaded.rss_served_kib - self.baseline.rss_served_kib) * 100_000 / self.loaded.subjects

    @property
    def store_bytes_per_100k(self) -> float:
        return self.store_bytes * 100_000 / self.loaded.subjects


def _request_paths(daemon: DaemonProcess, paths: list[str], expected: Store | None) -> tuple[dict[int, int], int]:
    """GET every path on one keep-alive connection; return statuses and how many bodies matched the store."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    statuses: dict[int, int] = {}
    matched = 0
    try:
        for path in paths:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if expected is not None and response.status == 200:
                number = _number_for_path(path, expected)
                if number is not None and body == expected.get_state_bytes(number):
                    matched += 1
    finally:
        connection.close()
    return statuses, matched


def _number_for_path(path: str, store: Store) -> str | None:
    return store.resolve(path.split("/")[2])


def _serve_and_read(
    data_dir: Path, log_path: Path, subjects: int, paths: list[str], expected: Store | None, settle: float
) -> DaemonMemory:
    with DaemonProcess(data_dir, log_path) as daemon:
        time.sleep(settle)
        started = daemon.memory_kib()
        statuses, matched = _request_paths(daemon, paths, expected)
        time.sleep(settle)
        served = daemon.memory_kib()
    return DaemonMemory(
        subjects=subjects,
        rss_started_kib=started["VmRSS"],
        rss_served_kib=served["VmRSS"],
        hwm_kib=served["VmHWM"],
        requests=len(paths),
        statuses=statuses,
        matched=matched,
    )


def measure(
    subjects: int,
    sample: int,
    work_dir: Path,
    *,
    seed: int = 1,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    settle: float = SETTLE_SECONDS,
) -> MemoryMeasurement:
    """Measure the baseline daemon, then build the loaded store and measure its daemon.

    Raises:
        BenchmarkError: a response was not the expected status or bytes.
    """
    if subjects < 1 or sample < 1:
        raise BenchmarkError(f"--subjects and --sample must be at least 1 (got {subjects} and {sample})")
    sample = min(sample, subjects)

    empty_dir = work_dir / "empty"
    baseline = _serve_and_read(empty_dir, work_dir / "baseline.log", 0, [_UNKNOWN_PATH] * sample, None, settle)
    if baseline.statuses != {404: sample}:
        raise BenchmarkError(f"the empty store's daemon returned {baseline.statuses}, expected {sample} times 404")

    data_dir = work_dir / "store"
    numbers = build_store(subjects, data_dir, seed, cache_dir)
    paths = [state_path(number) for number in random.Random(seed).sample(numbers, sample)]
    reader = Store(data_dir, default_trust(), read_only=True)
    try:
        loaded = _serve_and_read(data_dir, work_dir / "loaded.log", subjects, paths, reader, settle)
    finally:
        reader.close()
    if loaded.statuses != {200: sample} or loaded.matched != sample:
        raise BenchmarkError(
            f"the loaded daemon returned {loaded.statuses} with {loaded.matched} matching bodies, expected {sample} of each"
        )
    return MemoryMeasurement(baseline=baseline, loaded=loaded, store_bytes=store_size_bytes(data_dir))


def run_smoke(work_dir: Path) -> MemoryMeasurement:
    """Measure with 200 subjects and 100 requests per daemon, signing the events anew and settling briefly."""
    return measure(SMOKE_SUBJECTS, SMOKE_SAMPLE, work_dir, cache_dir=None, settle=SMOKE_SETTLE_SECONDS)


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def format_report(measurement: MemoryMeasurement, command: str, machine: dict[str, str]) -> str:
    """Return the markdown record of a measurement for docs/benchmarks.md."""
    lines = [
        f"- Command: `{command}`",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['cpus']} CPUs (`nproc`), {machine['cpu_model']}, {machine['python']}, SQLite {machine['sqlite']}",
        "",
        "| daemon | subjects | requests served | VmRSS MiB after start | VmRSS MiB after requests | VmHWM MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = (
        ("empty store (baseline), requests for an unknown subject (404)", measurement.baseline),
        ("loaded store, requests for distinct random subjects (200)", measurement.loaded),
    )
    for name, memory in rows:
        lines.append(
            f"| {name} | {memory.subjects:,} | {memory.requests:,} | {_mib(memory.rss_started_kib)} "
            f"| {_mib(memory.rss_served_kib)} | {_mib(memory.hwm_kib)} |"
        )
    lines += [
        "",
        f"RSS per 100,000 subjects (loaded minus baseline, after requests): {_mib(measurement.rss_per_100k_kib)} MiB. "
        f"Store files after the daemon stopped: {measurement.store_bytes:,} bytes, "
        f"{measurement.store_bytes_per_100k / 2**20:,.0f} MiB per 100,000 subjects.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory_bench",
        description="Measure the daemon's resident memory on a loaded store against an empty one.",
    )
    parser.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS, help="subjects imported into the store (default 100000)")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help="requests each daemon serves (default 20000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload and of the sample (default 1)")
    parser.add_argument("--no-cache", action="store_true", help="sign the events anew and write no cache file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="directory of the signed-event cache (default bench-results/)")
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"use {SMOKE_SUBJECTS} subjects and {SMOKE_SAMPLE} requests per daemon, without the cache",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 when every response was as expected, else 1."""
    args = build_parser().parse_args(argv)
    if args.smoke:
        subjects, sample, cache_dir, settle = SMOKE_SUBJECTS, SMOKE_SAMPLE, None, SMOKE_SETTLE_SECONDS
        command = "python -m bench.memory_bench --smoke"
    else:
        subjects, sample = args.subjects, args.sample
        cache_dir = None if args.no_cache else args.cache_dir
        settle = SETTLE_SECONDS
        command = f"python -m bench.memory_bench --subjects {subjects} --sample {sample}"
    with tempfile.TemporaryDirectory(prefix="pith-memory-bench-") as temporary:
        try:
            measurement = measure(subjects, sample, Path(temporary), seed=args.seed, cache_dir=cache_dir, settle=settle)
        except BenchmarkError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(format_report(measurement, command, machine_facts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
