"""Attacks on the parallel import, the row counters kept in code and the JSON-lines reader.

Each test that shows a fault is marked ``xfail(strict=True)`` with the
fault in its reason, so the suite stays green until the fault is fixed and
then reports the fixed test as an unexpected pass.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing.resource_tracker
import multiprocessing.spawn
import multiprocessing.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import node.offline
from bench.import_bench import build_bundles, write_jsonl
from node.config import Config
from node.importer import import_sources
from node.offline import InputError, read_items
from node.store import MERGE_CHUNK, STORE_FILENAME, DocumentOutcome, Status, Store, StoreLimits
from protocol import SigningKey, default_trust, emit_bundle
from protocol.canonical import Limits
from test_import_workers import published_bundle, table_rows
from test_store import (
    NOW,
    PUBLISHED_SUBJECT,
    mirror_hint,
    published_graph_snapshot,
    published_state,
    record_lines,
    reject_unsigned_trust,
)

REPOSITORY = Path(__file__).resolve().parent.parent
# Runs `pith-mirror import` with a small batch size, so that a file of a few
# thousand bundles spans many transactions and the workers take part.
IMPORT_WITH_BATCH = (
    "import sys, node.importer as importer; importer.BATCH_SIZE = int(sys.argv.pop(1)); "
    "from node.cli import main; sys.exit(main(sys.argv[1:]))"
)


# Helpers


def record_bundle(line: dict[str, Any], events: list[Any] | None = None) -> dict[str, Any]:
    return emit_bundle(line["canonical_record"], line.get("source_aliases", []), events or [], default_trust())


def adversarial_mix(seed: int, fresh: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Return bundles that take every import path in a random order, and events to store as pending before the import.

    ``fresh`` are valid bundles of distinct subjects. The mix repeats them,
    adds events to them, forges and post-dates events, and mixes in
    malformed documents and values that are not documents.
    """
    rng = random.Random(seed)
    key = SigningKey.generate()
    lines = record_lines()
    documents: list[Any] = []
    pending: list[Any] = []
    hint = mirror_hint(key, PUBLISHED_SUBJECT, "id-clash")
    impostor = {**published_graph_snapshot(), "event_id": hint["event_id"]}
    published = published_bundle()

    for number, line in enumerate(lines):
        subject = line["pith_number"]
        events = [mirror_hint(key, subject, f"s{number}-{slot}") for slot in range(rng.randrange(3))]
        document = record_bundle(line, events)
        # A third of the subjects have an event waiting before the import,
        # and one in two of those waiting events is also in the bundle.
        if number % 3 == 0:
            waiting = mirror_hint(key, subject, f"pending-{number}")
            pending.append(waiting)
            if number % 2 == 0:
                document = {**document, "events": [*document["events"], waiting]}
        documents.append(document)
    documents.extend(fresh)
    # Events that wait for records that never arrive.
    pending.extend(mirror_hint(key, bundle["pith_number"], "never") for bundle in fresh[:5])
    fresh_numbers = {bundle["pith_number"] for bundle in fresh[:5]}
    documents = [bundle for bundle in documents if bundle["pith_number"] not in fresh_numbers]

    extras: list[Any] = []
    for step in range(len(documents) // 3 + 12):
        base = rng.choice(documents)
        choice = step % 12
        if choice == 0:
            extras.append(copy.deepcopy(base))
        elif choice == 1:
            # The same subject again with one more event.
            extras.append({**base, "events": [*base["events"], mirror_hint(key, base["pith_number"], f"more-{step}")]})
        elif choice == 2 and base["events"]:
            # An event input already in another document of the subject.
            extras.append({**base, "events": [base["events"][0]]})
        elif choice == 3:
            forged = mirror_hint(key, base["pith_number"], f"forged-{step}")
            forged["signature_b64"] = mirror_hint(key, base["pith_number"], f"other-{step}")["signature_b64"]
            extras.append({**base, "events": [forged]})
        elif choice == 4:
            late = mirror_hint(key, base["pith_number"], f"late-{step}", created_at="2999-01-01T00:00:00Z")
            extras.append({**base, "events": [*base["events"], late]})
        elif choice == 5:
            extras.append({**base, "bundle_type": "something_else"})
        elif choice == 6:
            extras.append(rng.choice([["not", "a", "bundle"], None, "text", 7, {}]))
        elif choice == 7:
            # An event of another subject inside this subject's bundle.
            other = rng.choice(documents)["pith_number"]
            extras.append({**base, "events": [mirror_hint(key, other, f"elsewhere-{step}")]})
        elif choice == 8:
            # One input twice in the same document.
            twice = mirror_hint(key, base["pith_number"], f"twice-{step}")
            extras.append({**base, "events": [twice, twice]})
        elif choice == 9:
            # A signed event and an unsigned one claiming its id, in one
            # document or in two documents in either order.
            pair = rng.choice([[hint, impostor], [impostor, hint]])
            if rng.random() < 0.5:
                extras.append({**published, "events": [*published["events"], *pair]})
            else:
                extras.extend({**published, "events": [event]} for event in pair)
        elif choice == 10:
            extras.append(copy.deepcopy(published))
        else:
            # A float is outside the canonical value model.
            bad = mirror_hint(key, base["pith_number"], f"float-{step}")
            extras.append({**base, "events": [{**bad, "payload": {**bad["payload"], "weight": 0.5}}]})
    for extra in extras:
        documents.insert(rng.randrange(len(documents) + 1), extra)
    return documents, pending


def import_mix(data_dir: Path, documents: list[Any], pending: list[Any], workers: int, batch_size: int) -> list[DocumentOutcome]:
    with Store(data_dir) as store:
        store.add_events(pending, "before", NOW)
        outcomes = list(store.add_many_bundles(documents, "import", NOW, batch_size=batch_size, workers=workers))
        assert store.integrity_check() == []
        assert store.verify_all() == []
    return outcomes


@pytest.fixture(scope="module")
def generated_bundles() -> list[dict[str, Any]]:
    """Return bundles of distinct made-up subjects, each with one signed event."""
    bundles, _ = build_bundles(1_150, events_per_bundle=1, cache_dir=None)
    return bundles


# Differential imports: workers change nothing


@pytest.mark.parametrize(
    ("seed", "batch_size", "counts"), [(1, 3, (87, 56, 26, 5)), (2, 11, (140, 96, 36, 8)), (3, 64, (194, 136, 48, 10))]
)
def test_mix_same_with_workers(
    tmp_path: Path, generated_bundles: list[dict[str, Any]], seed: int, batch_size: int, counts: tuple[int, ...]
) -> None:
    documents, pending = adversarial_mix(seed, generated_bundles[: 40 * seed])
    without = import_mix(tmp_path / "w0", documents, pending, 0, batch_size)
    rows = table_rows(tmp_path / "w0")
    for workers in (1, 2):
        with_workers = import_mix(tmp_path / f"w{workers}", documents, pending, workers, batch_size)
        assert with_workers == without
        assert table_rows(tmp_path / f"w{workers}") == rows
    statuses = [outcome.status for outcome in without]
    assert len(documents) == counts[0]
    assert statuses.count(Status.ACCEPTED) == counts[1]
    assert statuses.count(Status.DUPLICATE) == counts[2]
    assert statuses.count(Status.REJECTED) == counts[3]
    event_codes = {event.code for outcome in without for event in outcome.events if event.code}
    assert event_codes == {"bad_signature", "future_timestamp", "not_canonical", "wrong_subject"}


@pytest.mark.parametrize("batch_size", [499, 700])
def test_mix_across_chunks_same_with_workers(tmp_path: Path, generated_bundles: list[dict[str, Any]], batch_size: int) -> None:
    # Over 1,500 documents: batches of 499 and 700 put the 500-document
    # worker chunks and the batch boundaries at different places.
    documents, pending = adversarial_mix(4, generated_bundles)
    assert len(documents) > 3 * MERGE_CHUNK
    without = import_mix(tmp_path / "w0", documents, pending, 0, batch_size)
    with_workers = import_mix(tmp_path / "w2", documents, pending, 2, batch_size)

    assert with_workers == without
    assert table_rows(tmp_path / "w2") == table_rows(tmp_path / "w0")
    statuses = [outcome.status for outcome in without]
    assert len(documents) == 1587
    assert statuses.count(Status.ACCEPTED) == 1166
    assert statuses.count(Status.DUPLICATE) == 355
    assert statuses.count(Status.REJECTED) == 66
    assert len(table_rows(tmp_path / "w0")["events"]) == 1242


def failing_source(documents: list[Any], error_after: int) -> Iterator[Any]:
    """Yield documents, then fail as a file that cannot be read further does."""
    yield from documents[:error_after]
    raise InputError("source.jsonl: cannot read: Input/output error")


def test_failing_source_same_with_workers(tmp_path: Path, generated_bundles: list[dict[str, Any]]) -> None:
    # With workers the next batch is read before the current one is stored,
    # but the two batches a source delivered before it failed must be stored.
    documents = generated_bundles[:20]
    stored = []
    for workers in (0, 1):
        with Store(tmp_path / f"w{workers}") as store:
            outcomes: list[DocumentOutcome] = []
            with pytest.raises(InputError):
                for outcome in store.add_many_bundles(failing_source(documents, 11), "import", NOW, batch_size=5, workers=workers):
                    outcomes.append(outcome)
            stored.append((len(outcomes), store.stats().records))
    assert stored[0] == (10, 10)
    assert stored[1] == stored[0]


# Row counters kept in code


class _InjectedFailure(Exception):
    """Raised inside a write transaction to make it roll back."""


def random_operations(store: Store, rng: random.Random, bundles: list[dict[str, Any]], key: SigningKey, step: int, now: int) -> None:
    """Run one random write on ``store``: events, documents, imports, expiry or a rolled-back batch."""
    subjects = [bundle["pith_number"] for bundle in bundles] + [PUBLISHED_SUBJECT]
    choice = rng.randrange(8)
    if choice == 0:
        events = [
            mirror_hint(key, rng.choice(subjects), f"slot-{rng.randrange(4)}", created_at=f"2026-05-{rng.randrange(1, 29):02d}T00:00:00Z")
            for _ in range(rng.randrange(1, 5))
        ]
        store.add_events(events, "events", now)
    elif choice == 1:
        hint = mirror_hint(key, PUBLISHED_SUBJECT, f"clash-{rng.randrange(3)}")
        impostor = {**published_graph_snapshot(), "event_id": hint["event_id"]}
        store.add_events(rng.choice([[hint, impostor], [impostor, hint], [impostor]]), "events", now)
    elif choice == 2:
        store.add_bundle(rng.choice(bundles), "bundle", now)
    elif choice == 3:
        if rng.random() < 0.5:
            store.add_state(published_state(), "state", now)
        else:
            store.add_bundle(rng.choice([published_bundle(), {**published_bundle(), "events": []}]), "bundle", now)
    elif choice == 4:
        sample = rng.sample(bundles, rng.randrange(1, len(bundles)))
        list(store.add_many_bundles(sample, "import", now, batch_size=rng.randrange(1, 6), workers=rng.choice([0, 1])))
    elif choice == 5:
        store.expire_pending(now)
    elif choice == 6:
        # A batch that fails after writing its rows rolls them back with
        # their counter updates.
        original = Store._finish_batch

        def failing_finish(self: Store, batch: Any) -> None:
            original(self, batch)
            raise _InjectedFailure

        Store._finish_batch = failing_finish  # type: ignore[method-assign]
        try:
            with pytest.raises(_InjectedFailure):
                store.add_events([mirror_hint(key, rng.choice(subjects), f"lost-{step}")], "events", now)
            with pytest.raises(_InjectedFailure):
                store.add_bundle({**rng.choice(bundles), "events": [mirror_hint(key, subjects[0], f"lost-{step}")]}, "bundle", now)
        finally:
            Store._finish_batch = original  # type: ignore[method-assign]
    else:
        store.add_events([mirror_hint(key, f"pith:2026:{'A' * 25}{chr(ord('A') + rng.randrange(8))}", f"orphan-{step}")], "events", now)


@pytest.mark.parametrize("seed", [11, 12])
def test_counters_exact_after_random_writes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    key = SigningKey.generate()
    bundles = [record_bundle(line) for line in record_lines()[:8]]
    limits = StoreLimits(max_pending_per_subject=3, max_pending_total=6, pending_max_age_seconds=3_600)
    now = NOW
    findings = []
    for session in range(4):
        # Every other session opens the store with a trust configuration
        # that rejects unsigned registry events, which recomputes every state.
        trust = reject_unsigned_trust() if session % 2 else default_trust()
        with Store(tmp_path, trust, limits=limits) as store:
            findings.extend(store.integrity_check())
            for step in range(12):
                now += rng.choice([0, 60, 2_000])
                random_operations(store, rng, bundles, key, session * 100 + step, now)
                findings.extend(store.integrity_check())
                findings.extend(store.verify_all())
    assert findings == []


# Worker processes that die, cannot start or outlive their import


def test_unstartable_worker_merges_in_process(tmp_path: Path, generated_bundles: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # A worker whose program cannot be executed exits at once and breaks the
    # pool, so the writer merges every bundle itself.
    bundles = generated_bundles[:40]
    expected = import_mix(tmp_path / "w0", bundles, [], 0, 5)
    multiprocessing.resource_tracker.ensure_running()
    monkeypatch.setattr(multiprocessing.spawn, "_python_exe", os.fsencode(tmp_path / "missing-python"))
    with caplog.at_level(logging.WARNING, logger="pith_mirror.store"):
        outcomes = import_mix(tmp_path / "w1", bundles, [], 1, 5)

    assert outcomes == expected
    assert [outcome.status for outcome in outcomes].count(Status.ACCEPTED) == 40
    assert table_rows(tmp_path / "w1") == table_rows(tmp_path / "w0")
    assert any("merging the remaining bundles in this process" in record.getMessage() for record in caplog.records)


def test_fork_failure_merges_in_process(tmp_path: Path, generated_bundles: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    # With the resource tracker running, as after any earlier pool in the
    # process, ProcessPoolExecutor starts its workers in submit().
    bundles = generated_bundles[:40]
    multiprocessing.resource_tracker.ensure_running()

    def fail_to_fork(*args: Any, **kwargs: Any) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", fail_to_fork)
    outcomes = import_mix(tmp_path, bundles, [], 1, 5)

    assert [outcome.status for outcome in outcomes].count(Status.ACCEPTED) == 40


# `pith-mirror import --workers 1` killed part way

BUNDLES_IN_FILE = 3_000
BATCH_IN_FILE = 150


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, str]]:
    """Return a JSON-lines file of bundles, their Pith numbers in file order, and the state hash the protocol core computes for each."""
    from bench.import_bench import run_core

    bundles, _ = build_bundles(BUNDLES_IN_FILE, events_per_bundle=1, cache_dir=None)
    path = tmp_path_factory.mktemp("bundles") / "bundles.jsonl"
    write_jsonl(bundles, path)
    return path, [bundle["pith_number"] for bundle in bundles], dict(run_core(bundles, default_trust()))


def start_import(tmp_path: Path, source: Path, data_dir: Path, name: str) -> subprocess.Popen[bytes]:
    # Output goes to files: a worker that outlives the import would keep a
    # pipe open, and reading that pipe would never end.
    command = [
        sys.executable, "-c", IMPORT_WITH_BATCH, str(BATCH_IN_FILE),
        "import", "--data-dir", str(data_dir), "--workers", "1", str(source),
    ]
    with open(tmp_path / f"{name}.out", "wb") as out, open(tmp_path / f"{name}.err", "wb") as err:
        return subprocess.Popen(command, cwd=REPOSITORY, stdout=out, stderr=err, stdin=subprocess.DEVNULL)


def process_start(pid: int) -> tuple[int, str] | None:
    """Return the parent pid and start time of a live process, None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), fields[19]


def worker_processes(parent: int) -> dict[int, str]:
    """Return the multiprocessing children of ``parent`` (merge workers and the resource tracker) by pid, with start times."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        started = process_start(int(entry.name))
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if started is not None and started[0] == parent and b"multiprocessing" in command:
            found[int(entry.name)] = started[1]
    return found


def wait_for_merge_worker(process: subprocess.Popen[bytes]) -> dict[int, str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        workers = worker_processes(process.pid)
        if len(workers) >= 2:
            return workers
        time.sleep(0.02)
    raise AssertionError(f"import {process.pid} started no worker process")


def still_running(processes: dict[int, str], wait_seconds: float) -> list[int]:
    """Return the processes that are still alive after waiting up to ``wait_seconds`` for them to exit."""
    deadline = time.monotonic() + wait_seconds
    while True:
        alive = [pid for pid, started in processes.items() if (process_start(pid) or (0, ""))[1] == started]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def end_processes(processes: dict[int, str]) -> None:
    """Kill the processes this test started that are still alive (checked by start time against pid reuse)."""
    for pid in still_running(processes, 0):
        os.kill(pid, signal.SIGKILL)


def stored_numbers(data_dir: Path) -> list[str]:
    conn = sqlite3.connect(data_dir / STORE_FILENAME)
    try:
        return [row[0] for row in conn.execute("SELECT pith_number FROM records ORDER BY rowid")]
    finally:
        conn.close()


# SIGKILL ends the import at once; SIGTERM makes it stop after the
# transaction being written and exit with 128 + 15.
@pytest.mark.parametrize(("signal_number", "status"), [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 143)])
def test_killed_import_keeps_whole_batches(
    tmp_path: Path, bundle_file: tuple[Path, list[str], dict[str, str]], signal_number: int, status: int
) -> None:
    source, numbers, expected = bundle_file
    data_dir = tmp_path / "data"
    process = start_import(tmp_path, source, data_dir, "first")
    workers = wait_for_merge_worker(process)
    try:
        time.sleep(0.6)
        process.send_signal(signal_number)
        returned = process.wait(timeout=30)
        leftover = still_running(workers, 3)
    finally:
        end_processes(workers)

    with Store(data_dir) as store:
        integrity = store.integrity_check()
        mismatched = store.verify_all()
    stored = stored_numbers(data_dir)
    assert returned == status
    # The merge worker and the resource tracker exit with the import.
    assert leftover == []
    assert integrity == []
    assert mismatched == []
    assert len(stored) % BATCH_IN_FILE == 0
    assert len(stored) < BUNDLES_IN_FILE
    assert stored == numbers[: len(stored)]

    again = start_import(tmp_path, source, data_dir, "again")
    assert again.wait(timeout=120) == 0
    output = (tmp_path / "again.out").read_text()
    with Store(data_dir) as store:
        assert store.state_hashes() == expected
        assert store.integrity_check() == []
    assert f"{2 * (BUNDLES_IN_FILE - len(stored))} accepted, {2 * len(stored)} duplicate, 0 rejected" in output


def test_interrupted_import_stops_early(tmp_path: Path, bundle_file: tuple[Path, list[str], dict[str, str]]) -> None:
    source, numbers, _ = bundle_file
    data_dir = tmp_path / "data"
    process = start_import(tmp_path, source, data_dir, "import")
    workers = wait_for_merge_worker(process)
    try:
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        leftover = still_running(workers, 3)
    finally:
        end_processes(workers)
    stored = stored_numbers(data_dir)
    output = (tmp_path / "import.out").read_text()
    assert process.returncode == 130
    assert leftover == []
    assert stored == numbers[: len(stored)]
    assert len(stored) < BUNDLES_IN_FILE
    # Each bundle carries one event: the summary counts what is stored.
    assert f"{2 * len(stored)} accepted, 0 duplicate, 0 rejected" in output
    assert "stopped by SIGINT: the items counted above are stored" in output


def test_killed_worker_import_finishes(tmp_path: Path, bundle_file: tuple[Path, list[str], dict[str, str]]) -> None:
    source, _, expected = bundle_file
    data_dir = tmp_path / "data"
    process = start_import(tmp_path, source, data_dir, "import")
    workers = wait_for_merge_worker(process)
    try:
        merge_worker = next(pid for pid in workers if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes())
        time.sleep(0.3)
        os.kill(merge_worker, signal.SIGKILL)
        assert process.wait(timeout=120) == 0
    finally:
        end_processes(workers)
    output = (tmp_path / "import.out").read_text()
    errors = (tmp_path / "import.err").read_text()

    assert f"{2 * BUNDLES_IN_FILE} accepted, 0 duplicate, 0 rejected" in output
    assert "merging the remaining bundles in this process" in errors
    with Store(data_dir) as store:
        assert store.state_hashes() == expected
        assert store.integrity_check() == []


# The JSON-lines reader


def items_of(path: Path) -> list[tuple[str, str, str | None]]:
    """Return (label suffix, kind, error message) of each item read from ``path``."""
    return [(item.label.rsplit(":", 1)[1], item.kind, None if item.error is None else str(item.error)) for item in read_items(str(path))]


def test_jsonl_crlf_and_unterminated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b'{"a":1}\r\n\r\n   \n{"b":2}')
    assert items_of(path) == [("1", "record", None), ("4", "record", None)]


@pytest.mark.parametrize("content", [b"", b"\n", b"\n\r\n \t \n"])
def test_jsonl_without_items(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(content)
    assert items_of(path) == []


def test_jsonl_line_limit_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.offline, "DOCUMENT_LIMITS", Limits(max_bytes=100))

    def line(size: int) -> bytes:
        text = b'{"pad":"' + b"x" * (size - 10) + b'"}'
        assert len(text) == size
        return text

    path = tmp_path / "limits.jsonl"
    path.write_bytes(line(100) + b"\n" + line(101) + b"\n" + line(1_000) + b"\n" + b'{"after":1}\n' + line(100))
    over = "line exceeds the limit of 100 bytes"
    assert items_of(path) == [("1", "record", None), ("2", "line", over), ("3", "line", over), ("4", "record", None), ("5", "record", None)]

    path.write_bytes(b'{"before":1}\n' + line(101))
    assert items_of(path) == [("1", "record", None), ("2", "line", over)]


def test_jsonl_bad_bytes_leave_later_lines(tmp_path: Path) -> None:
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"a":\x00 1}\n\xff\xfe\n\xef\xbb\xbf{"a":1}\n[1,2]\n{"c":3}\n')
    items = items_of(path)
    assert [label for label, _, _ in items] == ["1", "2", "3", "4", "5"]
    assert [kind for _, kind, _ in items] == ["line", "line", "line", "line", "record"]
    assert items[1][2] == "document is not valid UTF-8 at byte 0"
    assert items[2][2] == "document starts with a byte order mark"


def test_jsonl_line_kinds(tmp_path: Path) -> None:
    path = tmp_path / "kinds.jsonl"
    path.write_bytes(b'{"bundle_type":5}\n{"state_type":null}\n{"event_type":"x","bundle_type":"y"}\n{"pith_number":"p"}\n')
    assert [kind for _, kind, _ in items_of(path)] == ["bundle", "state", "event", "record"]


def test_jsonl_directory_is_input_error(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").mkdir()
    with pytest.raises(InputError, match="cannot read: Is a directory"):
        items_of(tmp_path / "x.jsonl")


def test_jsonl_fifo_with_writer(tmp_path: Path) -> None:
    path = tmp_path / "stream.jsonl"
    os.mkfifo(path)

    def write_lines() -> None:
        with open(path, "wb") as handle:
            for number in range(3):
                handle.write(b'{"n":%d}\n' % number)

    writer = threading.Thread(target=write_lines, daemon=True)
    writer.start()
    items = items_of(path)
    writer.join(timeout=10)
    assert items == [("1", "record", None), ("2", "record", None), ("3", "record", None)]


READ_ENDLESS = (
    "import sys, node.offline as offline; from protocol.canonical import Limits; "
    "offline.DOCUMENT_LIMITS = Limits(max_bytes=1000); "
    "print([(item.kind, str(item.error)) for item in offline.read_items(sys.argv[1])])"
)


def test_jsonl_endless_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "zero.jsonl"
    path.symlink_to("/dev/zero")
    try:
        result = subprocess.run(
            [sys.executable, "-c", READ_ENDLESS, str(path)], cwd=REPOSITORY, capture_output=True, timeout=3, check=False
        )
    except subprocess.TimeoutExpired:
        result = None
    assert result is not None


# `pith-mirror import` of a mixed JSON-lines file


@pytest.mark.trio
async def test_mixed_jsonl_same_with_workers(tmp_path: Path, generated_bundles: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs of bundles separated by a state, a record line, event lines, bad
    # lines and blank lines: each run of bundles is one add_many_bundles call.
    monkeypatch.setattr("node.importer.BATCH_SIZE", 3)
    # The rows carry the import's clock reading; one fixed reading lets the
    # three imports be compared row for row.
    monkeypatch.setattr("node.importer.time", SimpleNamespace(time=lambda: float(NOW)))
    key = SigningKey.generate()
    bundles = generated_bundles[:20]
    lines = [json.dumps(bundle) for bundle in bundles[:8]]
    lines += [json.dumps(published_state()), "", json.dumps(record_lines()[0]), "{not json"]
    lines += [json.dumps(bundle) for bundle in bundles[8:]]
    lines += [json.dumps(mirror_hint(key, bundles[0]["pith_number"], "late-line")), json.dumps({"bundle_type": "other"})]
    lines += [json.dumps(published_bundle()), json.dumps(bundles[3]), "\r"]
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines), encoding="utf-8")

    summaries = []
    for workers in (0, 1, 2):
        config = Config(data_dir=tmp_path / f"w{workers}")
        summaries.append(await import_sources(config, [str(source)], [], show_progress=False, workers=workers))
    rows = [table_rows(tmp_path / f"w{workers}") for workers in (0, 1, 2)]

    assert rows[1] == rows[0]
    assert rows[2] == rows[0]
    for summary in summaries:
        assert (summary.accepted, summary.duplicate, summary.rejected, summary.skipped) == (45, 5, 2, 0)
        assert summary.reasons == {"invalid_document": 2}
    assert len(rows[0]["records"]) == 22
    assert len(rows[0]["events"]) == 23
