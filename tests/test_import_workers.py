"""Imports whose bundles worker processes merge: the same outcomes and rows as without workers."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sqlite3
import threading
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.config import Config
from node.demo import fixture_path
from node.importer import default_workers, import_sources
from node.store import STORE_FILENAME, DocumentOutcome, Status, Store, _MergePool
from protocol import SigningKey, canonical_bytes, default_trust, emit_bundle, read_document, state_input
from test_store import NOW, PUBLISHED_STATE_SHA256, PUBLISHED_SUBJECT, record_lines
from test_store import mirror_hint as hint

TABLES = ("records", "aliases", "events", "states", "rejections", "counters")
DATA_TABLES = ("records", "aliases", "events", "states")


def published_bundle() -> dict[str, Any]:
    merge_input = state_input(read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()))
    return emit_bundle(merge_input.record, merge_input.aliases, merge_input.events, default_trust())


def mixed_bundles() -> list[Any]:
    """Return bundles that take every path of an import: new, repeated, stored, invalid and conflicting."""
    key = SigningKey.generate()
    bundles: list[Any] = []
    for number, line in enumerate(record_lines()):
        subject = line["pith_number"]
        events = [hint(key, subject, f"s{number}")] if number % 3 == 0 else []
        bundles.append(emit_bundle(line["canonical_record"], line.get("source_aliases", []), events, default_trust()))
    first = bundles[0]
    subject = first["pith_number"]
    # The same subject again in the same batch, with one more event.
    bundles.insert(2, {**first, "events": [*first["events"], hint(key, subject, "again")]})
    # An exact copy in a later batch.
    bundles.insert(20, copy.deepcopy(first))
    # A malformed document and a document that is not an object.
    bundles.insert(5, {**bundles[6], "bundle_type": "something_else"})
    bundles.insert(9, ["not", "a", "bundle"])
    # An event whose signature does not verify, and an event dated centuries
    # after any clock these tests run with: both documents take the
    # per-event checks.
    forged = hint(key, bundles[12]["pith_number"], "forged")
    forged["signature_b64"] = hint(key, bundles[12]["pith_number"], "other")["signature_b64"]
    bundles[12] = {**bundles[12], "events": [forged]}
    late = hint(key, bundles[14]["pith_number"], "late", created_at="2999-01-01T00:00:00Z")
    bundles[14] = {**bundles[14], "events": [late]}
    bundles.append(published_bundle())
    return bundles


def table_rows(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(data_dir / STORE_FILENAME)
    try:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in TABLES}
    finally:
        conn.close()


def import_all(data_dir: Path, bundles: list[Any], workers: int, batch_size: int = 7) -> list[DocumentOutcome]:
    with Store(data_dir) as store:
        outcomes = list(store.add_many_bundles(bundles, "import", NOW, batch_size=batch_size, workers=workers))
        assert store.integrity_check() == []
        assert store.verify_all() == []
    return outcomes


def test_workers_store_the_same(tmp_path: Path) -> None:
    bundles = mixed_bundles()
    without = import_all(tmp_path / "without", bundles, workers=0)
    with_workers = import_all(tmp_path / "with", bundles, workers=1)

    assert with_workers == without
    assert table_rows(tmp_path / "with") == table_rows(tmp_path / "without")
    statuses = [outcome.status for outcome in without]
    assert len(statuses) == 25
    assert statuses.count(Status.ACCEPTED) == 21
    assert statuses.count(Status.DUPLICATE) == 2
    assert statuses.count(Status.REJECTED) == 2
    assert [event.code for event in without[12].events] == ["bad_signature"]
    assert [event.code for event in without[14].events] == ["future_timestamp"]
    assert without[-1].state_sha256 == PUBLISHED_STATE_SHA256


def test_two_workers_store_the_same(tmp_path: Path) -> None:
    bundles = mixed_bundles()
    without = import_all(tmp_path / "without", bundles, workers=0, batch_size=4)
    with_workers = import_all(tmp_path / "with", bundles, workers=2, batch_size=4)

    assert with_workers == without
    assert table_rows(tmp_path / "with") == table_rows(tmp_path / "without")


def test_reimport_with_workers_is_all_duplicates(tmp_path: Path) -> None:
    bundles = mixed_bundles()
    import_all(tmp_path, bundles, workers=1)
    before = table_rows(tmp_path)

    again = import_all(tmp_path, bundles, workers=1)

    after = table_rows(tmp_path)
    for table in DATA_TABLES:
        assert after[table] == before[table]
    assert [outcome.status for outcome in again].count(Status.ACCEPTED) == 0
    assert all(outcome.state_changed is False for outcome in again if outcome.status != Status.REJECTED)


def test_conflict_in_buffered_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Another subject's pending row contains the input hash of an event of a
    # new subject, so writing the buffered rows at once fails. The batch is
    # written again one document at a time, and the document that conflicts
    # takes the per-event checks, which report the event as a duplicate.
    bundles = mixed_bundles()[:7]
    target = next(index for index, bundle in enumerate(bundles) if isinstance(bundle, dict) and bundle.get("events"))
    event = bundles[target]["events"][0]
    with Store(tmp_path) as store:
        encoded = canonical_bytes(event)
        with store._write_lock, store._write_transaction() as conn:
            conn.execute(
                "INSERT INTO events (input_sha256, event_id, subject, event_type, created_at, signed, signature_b64, "
                "pending, received_at, source, raw_json) VALUES (?, ?, ?, ?, ?, 1, ?, 1, ?, 'test', ?)",
                (
                    hashlib.sha256(encoded).hexdigest(), event["event_id"], "pith:2026:AAAAAAAAAAAAAAAAAAAAAAAAAA",
                    event["event_type"], event["created_at"], event["signature_b64"], NOW, encoded,
                ),
            )
            store._count_rows(conn, events=1, pending=1)
        with caplog.at_level(logging.WARNING, logger="pith_mirror.store"):
            outcomes = list(store.add_many_bundles(bundles, "import", NOW, batch_size=len(bundles)))
        stored = store.get_bundle(bundles[target]["pith_number"])
        findings = store.integrity_check()

    assert outcomes[target].status == Status.ACCEPTED
    assert [item.status for item in outcomes[target].events] == [Status.DUPLICATE]
    # The repeated document of the same subject brings one more event.
    assert stored is not None
    assert [item["event_id"] for item in stored["events"]] == [bundles[2]["events"][1]["event_id"]]
    assert [outcome.status for outcome in outcomes].count(Status.ACCEPTED) == 5
    assert findings == []
    assert any("writing them one at a time" in record.getMessage() for record in caplog.records)


def test_foreign_object_checked_by_writer(tmp_path: Path) -> None:
    # A document that is not a JSON object is never sent to the workers;
    # the writer reports it as it would without workers.
    bundles: list[Any] = mixed_bundles()[:12]
    bundles[8] = threading.Lock()
    outcomes = import_all(tmp_path, bundles, workers=1, batch_size=4)

    assert outcomes[8].status == Status.REJECTED
    assert outcomes[8].reason == "document must be a JSON object, got lock"
    assert [outcome.status for outcome in outcomes].count(Status.ACCEPTED) == 8


def test_failed_worker_chunk_left_to_writer(caplog: pytest.LogCaptureFixture) -> None:
    # A chunk whose worker died comes back as None for each of its
    # documents, and the pool stops sending work.
    pool = _MergePool(1, default_trust())
    failed: Future[list[Any]] = Future()
    failed.set_exception(BrokenProcessPool("a worker process died"))
    try:
        with caplog.at_level(logging.WARNING, logger="pith_mirror.store"):
            merged = list(pool.results([([None, None, None], failed)]))
        later = pool.submit([None])
    finally:
        pool.close()

    assert merged == [(None, None), (None, None), (None, None)]
    assert later == ([None], None)
    assert any("merging the remaining bundles in this process" in record.getMessage() for record in caplog.records)


def test_stopping_early_keeps_committed_batches(tmp_path: Path) -> None:
    # A caller that stops after the first batch's outcomes leaves that
    # batch stored and nothing after it, and the workers are stopped.
    bundles = [bundle for bundle in mixed_bundles() if isinstance(bundle, dict)][:12]
    with Store(tmp_path) as store:
        outcomes = store.add_many_bundles(bundles, "import", NOW, batch_size=4, workers=1)
        first = [next(outcomes) for _ in range(4)]
        outcomes.close()
        stats = store.stats()
        findings = store.integrity_check()

    assert [outcome.subject for outcome in first] == [bundle["pith_number"] for bundle in bundles[:4]]
    assert stats.records == len({bundle["pith_number"] for bundle in bundles[:4]})
    assert findings == []


def failing_after(documents: list[Any], count: int) -> Iterator[Any]:
    yield from documents[:count]
    raise OSError("the source failed")


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize(("count", "stored"), [(3, 0), (6, 4), (9, 8)])
def test_failing_source_keeps_read_batches(tmp_path: Path, workers: int, count: int, stored: int) -> None:
    # The source fails part way into a batch: every whole batch it delivered
    # before is stored, with or without workers, and then the error is raised.
    bundles = [bundle for bundle in mixed_bundles() if isinstance(bundle, dict)][:12]
    outcomes: list[DocumentOutcome] = []
    with Store(tmp_path) as store:
        with pytest.raises(OSError, match="the source failed"):
            outcomes.extend(store.add_many_bundles(failing_after(bundles, count), "import", NOW, batch_size=4, workers=workers))
        records = store.stats().records

    assert len(outcomes) == stored
    assert records == len({bundle["pith_number"] for bundle in bundles[:stored]})


def test_workers_argument_checked(tmp_path: Path) -> None:
    with Store(tmp_path) as store, pytest.raises(ValueError, match="workers must be at least 0, got -1"):
        list(store.add_many_bundles([], "import", NOW, workers=-1))


@pytest.mark.trio
async def test_import_command_with_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node.importer.BATCH_SIZE", 5)
    source = tmp_path / "records.jsonl"
    source.write_bytes(fixture_path("records.jsonl").read_bytes())
    summaries = []
    for name, workers in (("without", 0), ("with", 1)):
        config = Config(data_dir=tmp_path / name)
        summaries.append(await import_sources(config, [str(source)], [], show_progress=False, workers=workers))

    assert summaries[1].accepted == summaries[0].accepted == len(record_lines())
    assert summaries[1].rejected == summaries[0].rejected == 0
    assert table_rows(tmp_path / "with")["records"] == table_rows(tmp_path / "without")["records"]


@pytest.mark.trio
async def test_import_jsonl_of_bundles_with_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One bundle per line: the events are stored, and workers change nothing.
    monkeypatch.setattr("node.importer.BATCH_SIZE", 4)
    bundles = [bundle for bundle in mixed_bundles() if isinstance(bundle, dict)]
    source = tmp_path / "bundles.jsonl"
    source.write_text("".join(json.dumps(bundle) + "\n" for bundle in bundles), encoding="utf-8")
    summaries = []
    for name, workers in (("without", 0), ("with", 1)):
        config = Config(data_dir=tmp_path / name)
        summaries.append(await import_sources(config, [str(source)], [], show_progress=False, workers=workers))

    rows = [table_rows(tmp_path / name) for name in ("without", "with")]
    for table in DATA_TABLES:
        assert rows[1][table] == rows[0][table]
    assert len(rows[0]["events"]) == 9
    for summary in summaries:
        assert (summary.accepted, summary.duplicate, summary.rejected) == (30, 4, 3)
        assert summary.reasons == {"invalid_document": 1, "bad_signature": 1, "future_timestamp": 1}


@pytest.mark.trio
async def test_event_lines_stored_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Event lines are stored a few at a time. The ones listed before their
    # record's state wait as pending events until the state arrives.
    monkeypatch.setattr("node.importer.EVENTS_PER_TRANSACTION", 2)
    key = SigningKey.generate()
    events = [hint(key, PUBLISHED_SUBJECT, f"slot{number}") for number in range(5)]
    state = read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    source = tmp_path / "events.jsonl"
    lines = [json.dumps(event) for event in events[:3]] + [json.dumps(state)] + [json.dumps(event) for event in events[3:]]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")

    summary = await import_sources(Config(data_dir=tmp_path / "data"), [str(source)], [], show_progress=False, workers=0)

    with Store(tmp_path / "data") as store:
        stats = store.stats()
        applied = store.get_state(PUBLISHED_SUBJECT)["applied_event_ids"]
    assert (summary.accepted, summary.rejected) == (8, 0)
    # The first two events were stored before the state: they waited.
    assert summary.pending == 2
    assert (stats.events, stats.pending_events) == (7, 0)
    assert {event["event_id"] for event in events} <= set(applied)


def test_default_workers_bounds() -> None:
    assert 0 <= default_workers() <= 4
