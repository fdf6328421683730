"""Import throughput of the SQLite store against the protocol core's own rate.

Run from the repository root::

    python -m bench.import_bench --bundles 100000 --repeat 1
    python -m bench.import_bench --smoke

Setup, which is not timed, builds one bundle per subject with the event
generator of ``bench.verify_merge``: a canonical record in the shape of the
published records, its six aliases and ``--events-per-bundle`` signed events
(citations, mirror hints, storage and author attestations and so on, about
one in ten superseding an earlier event of the same signer and slot). The
signed events are cached under ``bench-results/`` as that benchmark caches
them. Bundles are decoded with ``protocol.parse_json`` in setup, so both
passes start from the same decoded documents, and every signer key is loaded
into the key cache of ``protocol.keys`` before either pass.

Each repetition times these passes over the same bundles, one after the other:

* core: ``protocol.bundle_input`` and ``protocol.merge`` for every bundle,
  with no storage. This is the floor for an importer that checks every event
  and computes every state in one process;
* store, once per count given to ``--workers``: ``Store.add_many_bundles``
  with that many worker processes into a new store in a new directory on
  disk, iterated to the last outcome. Outcomes are yielded only after their
  batch committed with ``synchronous=FULL``, so the time includes every
  fsync. Its CPU time includes the workers'. Closing the store (a WAL
  checkpoint) is timed on its own line.

After each store pass the benchmark checks that every bundle and event was
accepted and that every stored ``state_sha256`` equals the one the core
computed, so a faster store that computes other states fails the run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import pstats
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.store import STORE_FILENAME, Status, Store
from protocol import (
    BUNDLE_TYPE,
    TrustConfig,
    bundle_input,
    decode_public_key_hex,
    default_trust,
    merge,
    parse_json,
    parse_pith_number,
    parse_timestamp,
    record_pith_number,
)

from .verify_merge import DEFAULT_CACHE_DIR, BenchmarkError, Subject, describe_machine, load_or_build_workload

__all__ = [
    "ImportMeasurement",
    "build_bundles",
    "import_bundles",
    "main",
    "measure",
    "run_smoke",
    "store_size_bytes",
]

TARGET_RATIO = 1.5
EVENTS_PER_BUNDLE = 3
SMOKE_BUNDLES = 200
SMOKE_BATCH_SIZE = 50
SMOKE_WORKERS = (0, 1)
DEFAULT_BATCH_SIZE = 500
# The node's clock for every import: a year after the generator's registry
# epoch, so that no generated event is dated in the future and the outcome
# does not depend on the day the benchmark runs.
IMPORT_NOW = parse_timestamp("2027-05-18T00:00:00Z")
SOURCE_LABEL = "import-bench"


@dataclass
class PassTimes:
    """Wall-clock and CPU seconds of one pass, one entry per repetition."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


@dataclass
class ImportCounts:
    """Outcome counts of one store pass."""

    bundles_accepted: int = 0
    bundles_other: int = 0
    events_accepted: int = 0
    events_other: int = 0


@dataclass
class ImportMeasurement:
    """Timings of the core and store passes, with the outcome counts, state digest and size of the store."""

    bundles: int
    events: int
    batch_size: int
    core: PassTimes
    # Store passes by the number of worker processes they used.
    stores: dict[int, PassTimes]
    close: PassTimes
    counts: ImportCounts
    states_sha256: str
    store_bytes: int
    # Runs of ``pith-mirror import`` on a JSON-lines file of the bundles,
    # by the --workers value they were given.
    commands: dict[int, PassTimes] = field(default_factory=dict)

    @property
    def store(self) -> PassTimes:
        """Return the store passes with the first worker count measured."""
        return next(iter(self.stores.values()))

    def ratio(self, workers: int) -> float:
        """Median wall time of the store pass with ``workers`` over median wall time of the core pass."""
        return self.stores[workers].median_wall / self.core.median_wall

    def cpu_ratio(self, workers: int) -> float:
        """Median CPU time (the workers' included) of the store pass with ``workers`` over the core pass's."""
        return self.stores[workers].median_cpu / self.core.median_cpu


def write_jsonl(bundles: list[dict[str, Any]], path: Path) -> None:
    """Write one bundle per line, as ``pith-mirror import`` reads them."""
    with path.open("w", encoding="utf-8") as handle:
        for bundle in bundles:
            handle.write(json.dumps(bundle, separators=(",", ":"), ensure_ascii=False))
            handle.write("\n")


def run_command(source: Path, data_dir: Path, workers: int, times: PassTimes) -> None:
    """Time ``pith-mirror import --workers N`` of ``source`` into a new store; its CPU time includes its workers'.

    Raises:
        BenchmarkError: the command failed or rejected something.
    """
    command = [sys.executable, "-m", "node", "import", "--data-dir", str(data_dir), "--workers", str(workers), str(source)]
    result = _timed(lambda: subprocess.run(command, capture_output=True, text=True, check=False), times)
    if result.returncode != 0 or " 0 rejected" not in result.stdout:
        raise BenchmarkError(f"pith-mirror import exited {result.returncode}: {result.stdout.strip()} {result.stderr.strip()[-500:]}")


# ---------------------------------------------------------------------------
# Setup (not timed)
# ---------------------------------------------------------------------------


def _bundle_document(subject: Subject) -> dict[str, Any]:
    pith_number, digest = record_pith_number(subject.record)
    if pith_number != subject.pith_number:
        raise BenchmarkError(f"generated record {subject.pith_number} hashes to {pith_number}")
    return {
        "bundle_type": BUNDLE_TYPE,
        "bundle_version": "1.0",
        "pith_number": pith_number,
        "short_pith_number": parse_pith_number(pith_number).short,
        "canonical_record": subject.record,
        "canonical_sha256": digest,
        "source": subject.record["source"],
        "source_aliases": subject.aliases,
        "events": [parse_json(line) for line in subject.lines.splitlines()],
    }


def build_bundles(
    count: int, events_per_bundle: int = EVENTS_PER_BUNDLE, seed: int = 1, cache_dir: Path | None = DEFAULT_CACHE_DIR
) -> tuple[list[dict[str, Any]], str]:
    """Return ``count`` decoded bundles and where their signed events came from.

    Every signer key is also loaded into the key cache of ``protocol.keys``,
    so that neither timed pass pays for loading a new key.
    """
    if events_per_bundle < 1:
        raise BenchmarkError(f"--events-per-bundle must be at least 1 (got {events_per_bundle})")
    workload, origin = load_or_build_workload(count * events_per_bundle, count, seed, cache_dir)
    for key_hex in workload.public_keys_hex:
        decode_public_key_hex(key_hex)
    return [_bundle_document(subject) for subject in workload.subjects], origin


# ---------------------------------------------------------------------------
# The two timed passes
# ---------------------------------------------------------------------------


def _children_cpu() -> float:
    """Return the CPU seconds of this process's child processes that have exited and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(function: Callable[[], Any], times: PassTimes) -> Any:
    """Call ``function``, append its wall and CPU seconds to ``times`` and return its value.

    The CPU time includes child processes that ``function`` started and
    waited for, as the import's worker processes are when it returns.
    """
    gc.collect()
    wall_start = time.perf_counter()
    cpu_start = time.process_time() + _children_cpu()
    value = function()
    times.cpu.append(time.process_time() + _children_cpu() - cpu_start)
    times.wall.append(time.perf_counter() - wall_start)
    return value


def _states_digest(rows: list[tuple[str, str]]) -> str:
    """Return SHA-256 over every "pith_number state_sha256" line, in Pith number order."""
    text = "".join(f"{number} {state_sha256}\n" for number, state_sha256 in sorted(rows))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def run_core(bundles: list[dict[str, Any]], trust: TrustConfig) -> list[tuple[str, str]]:
    """Check and merge every bundle without storing anything; return (pith_number, state_sha256) pairs."""
    rows = []
    for document in bundles:
        merge_input = bundle_input(document)
        state = merge(merge_input.record, merge_input.aliases, merge_input.events, trust)
        rows.append((state["pith_number"], state["state_sha256"]))
    return rows


def import_bundles(
    store: Store, bundles: list[dict[str, Any]], batch_size: int = DEFAULT_BATCH_SIZE, workers: int = 0
) -> ImportCounts:
    """Import every bundle with ``Store.add_many_bundles``; return the outcome counts."""
    counts = ImportCounts()
    for outcome in store.add_many_bundles(bundles, SOURCE_LABEL, IMPORT_NOW, batch_size=batch_size, workers=workers):
        if outcome.status == Status.ACCEPTED:
            counts.bundles_accepted += 1
        else:
            counts.bundles_other += 1
        for event in outcome.events:
            if event.status == Status.ACCEPTED:
                counts.events_accepted += 1
            else:
                counts.events_other += 1
    return counts


def store_size_bytes(data_dir: Path) -> int:
    """Return the bytes of the store file and its WAL and shared-memory files."""
    total = 0
    for name in (STORE_FILENAME, STORE_FILENAME + "-wal", STORE_FILENAME + "-shm"):
        path = data_dir / name
        if path.exists():
            total += path.stat().st_size
    return total


def stored_states(data_dir: Path) -> list[tuple[str, str]]:
    """Return (pith_number, state_sha256) for every state in a closed store."""
    uri = (data_dir / STORE_FILENAME).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return [(str(number), str(digest)) for number, digest in conn.execute("SELECT pith_number, state_sha256 FROM states")]
    finally:
        conn.close()


def _store_pass(
    bundles: list[dict[str, Any]],
    trust: TrustConfig,
    data_dir: Path,
    batch_size: int,
    workers: int,
    import_times: PassTimes,
    close_times: PassTimes,
) -> ImportCounts:
    store = Store(data_dir, trust)
    try:
        counts = _timed(lambda: import_bundles(store, bundles, batch_size, workers), import_times)
    finally:
        _timed(store.close, close_times)
    return counts


def _check_import(bundles: list[dict[str, Any]], counts: ImportCounts, events: int) -> None:
    if counts.bundles_accepted != len(bundles) or counts.bundles_other:
        raise BenchmarkError(
            f"expected {len(bundles)} accepted bundles, got {counts.bundles_accepted} accepted and {counts.bundles_other} other"
        )
    if counts.events_accepted != events or counts.events_other:
        raise BenchmarkError(
            f"expected {events} accepted events, got {counts.events_accepted} accepted and {counts.events_other} other"
        )


def measure(
    bundles: list[dict[str, Any]],
    repeat: int,
    work_dir: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: Sequence[int] = (0,),
    command_workers: Sequence[int] = (),
    trust: TrustConfig | None = None,
    keep_store: bool = False,
) -> ImportMeasurement:
    """Time the core pass and a store pass per count in ``workers``, ``repeat`` times each, interleaved.

    Each store pass imports into a new directory under ``work_dir``; the
    last one is kept when ``keep_store`` is true, and the others are deleted.
    For each count in ``command_workers`` each repetition also runs
    ``pith-mirror import --workers N`` on a JSON-lines file of the bundles,
    written in setup, and checks its states like a store pass's.

    Raises:
        BenchmarkError: a bundle or event was not accepted, or the store's
            states differ from the core's.
    """
    if repeat < 1:
        raise BenchmarkError(f"--repeat must be at least 1 (got {repeat})")
    if batch_size < 1:
        raise BenchmarkError(f"--batch-size must be at least 1 (got {batch_size})")
    if not workers or min(workers) < 0 or len(set(workers)) != len(workers):
        raise BenchmarkError(f"--workers must list distinct counts of at least 0 (got {list(workers)})")
    trust = trust or default_trust()
    events = sum(len(document["events"]) for document in bundles)
    core, close = PassTimes(), PassTimes()
    stores = {count: PassTimes() for count in workers}
    commands = {count: PassTimes() for count in command_workers}
    source = work_dir / "bundles.jsonl"
    if command_workers:
        write_jsonl(bundles, source)
    expected: str | None = None
    counts = ImportCounts()
    size = 0
    for number in range(repeat):
        rows = _timed(lambda: run_core(bundles, trust), core)
        digest = _states_digest(rows)
        if expected is not None and digest != expected:
            raise BenchmarkError("two core passes over the same bundles computed different states")
        expected = digest

        for count in workers:
            data_dir = work_dir / f"store-{number}-{count}-workers"
            if data_dir.exists():
                raise BenchmarkError(f"{data_dir} already exists; pass an empty --work-dir")
            counts = _store_pass(bundles, trust, data_dir, batch_size, count, stores[count], close)
            _check_import(bundles, counts, events)
            stored = _states_digest(stored_states(data_dir))
            if stored != expected:
                raise BenchmarkError("the store's states differ from the states the core computed from the same bundles")
            size = store_size_bytes(data_dir)
            if not (keep_store and number == repeat - 1 and count == workers[-1]):
                shutil.rmtree(data_dir)
        for count in command_workers:
            data_dir = work_dir / f"command-{number}-{count}-workers"
            run_command(source, data_dir, count, commands[count])
            if _states_digest(stored_states(data_dir)) != expected:
                raise BenchmarkError("pith-mirror import stored states that differ from the core's")
            shutil.rmtree(data_dir)

    assert expected is not None
    return ImportMeasurement(
        bundles=len(bundles),
        events=events,
        batch_size=batch_size,
        core=core,
        stores=stores,
        commands=commands,
        close=close,
        counts=counts,
        states_sha256=expected,
        store_bytes=size,
    )


def run_smoke(work_dir: Path) -> ImportMeasurement:
    """Run the smoke configuration (200 bundles of 3 events, batches of 50, one repetition, 0 and 1 workers) without the cache."""
    bundles, _ = build_bundles(SMOKE_BUNDLES, EVENTS_PER_BUNDLE, cache_dir=None)
    return measure(bundles, 1, work_dir, batch_size=SMOKE_BATCH_SIZE, workers=SMOKE_WORKERS)


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    """Return ``describe_machine()`` of bench.verify_merge plus the SQLite library version."""
    return {**describe_machine(), "sqlite": sqlite3.sqlite_version}


def _per_100k(value: float, subjects: int) -> float:
    return value * 100_000 / subjects


def format_report(measurement: ImportMeasurement, command: str, machine: dict[str, str]) -> str:
    """Return the markdown record of a measurement for docs/benchmarks.md."""
    rows = [("core: bundle_input + merge, no storage", measurement.core, 1.0, 1.0)]
    for count, times in measurement.stores.items():
        rows.append(
            (f"store: Store.add_many_bundles, committed, {count} worker process{'' if count == 1 else 'es'}",
             times, measurement.ratio(count), measurement.cpu_ratio(count))
        )
    for count, times in measurement.commands.items():
        rows.append(
            (f"command: pith-mirror import --workers {count} of a JSON-lines file",
             times, times.median_wall / measurement.core.median_wall, times.median_cpu / measurement.core.median_cpu)
        )
    lines = [
        f"- Command: `{command}`",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['cpus']} CPUs (`nproc`), {machine['cpu_model']}, {machine['python']}, "
        f"SQLite {machine['sqlite']}, cryptography {machine['cryptography']}",
        f"- Workload: {measurement.bundles:,} bundles with {measurement.events:,} signed events, "
        f"batches of {measurement.batch_size}, {len(measurement.core.wall)} repetition(s)",
        "",
        "| pass | median wall s | bundles/second | events/second | time / core | median CPU s | CPU time / core |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, times, ratio, cpu_ratio in rows:
        lines.append(
            f"| {name} | {times.median_wall:.2f} | {measurement.bundles / times.median_wall:,.0f} "
            f"| {measurement.events / times.median_wall:,.0f} | {ratio:.2f} | {times.median_cpu:.2f} | {cpu_ratio:.2f} |"
        )
    each_core = ", ".join(f"{value:.2f}" for value in measurement.core.wall)
    lines.append("")
    for count, times in measurement.stores.items():
        verdict = "met" if measurement.ratio(count) <= TARGET_RATIO else "not met"
        each_store = ", ".join(f"{value:.2f}" for value in times.wall)
        lines.append(
            f"With {count} worker process{'' if count == 1 else 'es'}: target store / core <= {TARGET_RATIO} by wall time {verdict} "
            f"({measurement.ratio(count):.2f}; {measurement.cpu_ratio(count):.2f} by CPU time). "
            f"Wall seconds of each repetition: core {each_core}; store {each_store}."
        )
    lines += [
        f"Closing the store (WAL checkpoint): {measurement.close.median_wall:.2f} s. "
        f"Store size after close: {measurement.store_bytes:,} bytes, "
        f"{_per_100k(measurement.store_bytes, measurement.bundles) / 2**20:,.0f} MiB per 100,000 subjects. "
        f"SHA-256 over all state hashes: `{measurement.states_sha256}`.",
    ]
    return "\n".join(lines)


def _profile_store(bundles: list[dict[str, Any]], work_dir: Path, batch_size: int, limit: int) -> str:
    data_dir = work_dir / "store-profiled"
    store = Store(data_dir, default_trust())
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        import_bundles(store, bundles, batch_size)
        profiler.disable()
    finally:
        store.close()
        shutil.rmtree(data_dir)
    output = io.StringIO()
    pstats.Stats(profiler, stream=output).sort_stats("tottime").print_stats(limit)
    return output.getvalue()


def _worker_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts separated by commas, such as 0,1; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.import_bench",
        description="Measure Store.add_many_bundles against protocol.bundle_input + merge on the same bundles.",
    )
    parser.add_argument("--bundles", type=int, default=100_000, help="number of bundles, one per subject (default 100000)")
    parser.add_argument(
        "--events-per-bundle", type=int, default=EVENTS_PER_BUNDLE, help=f"signed events per bundle (default {EVENTS_PER_BUNDLE})"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="bundles per transaction (default 500)")
    parser.add_argument("--repeat", type=int, default=1, help="timed repetitions of each pass (default 1)")
    parser.add_argument(
        "--workers", type=_worker_counts, default=(0,), metavar="N[,N...]",
        help="worker process counts; one store pass per count in each repetition (default 0)",
    )
    parser.add_argument(
        "--command-workers", type=_worker_counts, default=(), metavar="N[,N...]",
        help="also time pith-mirror import of a JSON-lines file of the bundles, once per --workers value listed",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated workload (default 1)")
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"run {SMOKE_BUNDLES} bundles in batches of {SMOKE_BATCH_SIZE}, one repetition, without the cache",
    )
    parser.add_argument("--no-cache", action="store_true", help="sign the events anew and write no cache file")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="directory of the signed-event cache (default bench-results/)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="directory for the stores the benchmark creates (default: a new temporary directory, deleted afterwards)",
    )
    parser.add_argument("--keep-store", action="store_true", help="keep the last store in --work-dir")
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="after measuring, profile one more store pass with cProfile and print the top N functions by own time",
    )
    parser.add_argument(
        "--profile-bundles", type=int, default=10_000, metavar="COUNT",
        help="bundles the profiled pass imports (default 10000)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 when every bundle was accepted with the core's states, else 1."""
    args = build_parser().parse_args(argv)
    if args.smoke:
        count, repeat, batch_size, cache_dir, workers = SMOKE_BUNDLES, 1, SMOKE_BATCH_SIZE, None, SMOKE_WORKERS
        command_workers: Sequence[int] = ()
        events_per_bundle = EVENTS_PER_BUNDLE
        command = "python -m bench.import_bench --smoke"
    else:
        count, repeat, batch_size, workers = args.bundles, args.repeat, args.batch_size, args.workers
        command_workers = args.command_workers
        events_per_bundle = args.events_per_bundle
        cache_dir = None if args.no_cache else args.cache_dir
        command = (
            f"python -m bench.import_bench --bundles {count} --events-per-bundle {events_per_bundle} "
            f"--batch-size {batch_size} --repeat {repeat} --workers {','.join(map(str, workers))}"
        )
        if command_workers:
            command += f" --command-workers {','.join(map(str, command_workers))}"

    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="pith-import-bench-")
        work_dir = Path(temporary.name)
    else:
        work_dir = args.work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        bundles, origin = build_bundles(count, events_per_bundle, args.seed, cache_dir)
        print(f"setup: {count:,} bundles, events from {origin}, in {time.perf_counter() - start:.1f} s", flush=True)
        measurement = measure(
            bundles, repeat, work_dir, batch_size=batch_size, workers=workers, command_workers=command_workers,
            keep_store=args.keep_store,
        )
        print()
        print(format_report(measurement, command, machine_facts()))
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"\npeak RSS of this benchmark process: {peak_kib / 1024:,.0f} MiB")
        if args.profile:
            print()
            print(_profile_store(bundles[: args.profile_bundles], work_dir, batch_size, args.profile))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if temporary is not None:
            temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
