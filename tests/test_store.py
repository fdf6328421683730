"""The SQLite store on real files: published data, ingest outcomes, migrations, recomputation and crashes."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from node.demo import fixture_path
from node.migrations import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from node.store import RESOLVE_ALIAS_QUERY, Status, Store, StoreError, StoreLimits, default_data_dir
from protocol import (
    MAX_FUTURE_SKEW_SECONDS,
    SigningKey,
    TrustConfig,
    build_event,
    bundle_input,
    canonical_bytes,
    default_trust,
    derive_aliases,
    emit_bundle,
    format_timestamp,
    merge,
    parse_timestamp,
    read_document,
    record_pith_number,
    state_hash,
    state_input,
)

PUBLISHED_SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
PUBLISHED_STATE_FILE = "state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json"
# The node's clock in these tests: after every published created_at.
NOW = parse_timestamp("2026-06-01T00:00:00Z")


def published_state() -> dict[str, Any]:
    return read_document(fixture_path(PUBLISHED_STATE_FILE).read_bytes())


def record_lines() -> list[dict[str, Any]]:
    """Return the published record lines that carry their canonical record."""
    lines = [json.loads(line) for line in fixture_path("records.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in lines if "canonical_record" in line]


def record_bundle(line: dict[str, Any]) -> dict[str, Any]:
    return emit_bundle(line["canonical_record"], line.get("source_aliases", []), [], default_trust())


def synthetic_bundle(source_id: str, version: int) -> dict[str, Any]:
    """Return a bundle of a made-up arXiv record, for cases the published records lack."""
    record = {
        "metadata": {"submitted_at": "2003-05-20T10:00:00Z", "title_canon_sha256": "0" * 64},
        "schema_version": "1.0",
        "source": {"id": source_id, "kind": "arxiv", "version": version},
    }
    _, digest = record_pith_number(record)
    aliases = [{"alias_kind": kind, "alias_value": value} for kind, value in sorted(derive_aliases(record, digest).items())]
    return emit_bundle(record, aliases, [], default_trust())


def mirror_hint(key: SigningKey, subject: str, slot: str = "primary", created_at: str = "2026-05-30T00:00:00Z") -> dict[str, Any]:
    return build_event(
        key,
        event_type="mirror_hint",
        subject=subject,
        payload={"slot": slot, "url": f"https://{slot}.mirror.example.org/pith/"},
        created_at=created_at,
        key_id="test-key",
        signer_id="mirror.example.org",
        signer_type="mirror",
    )


def published_graph_snapshot() -> dict[str, Any]:
    """Return the published unsigned registry graph_snapshot event in bundle form."""
    events = state_input(published_state()).events
    return next(event for event in events if event["event_type"] == "graph_snapshot")


def input_sha256(event: Any) -> str:
    return hashlib.sha256(canonical_bytes(event)).hexdigest()


def reject_unsigned_trust() -> TrustConfig:
    return TrustConfig.from_document({**default_trust().document, "unsigned_registry_events": "reject"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "data") as opened:
        yield opened
        # Every test that writes through this fixture also checks the row
        # counters the store keeps against the tables.
        assert opened.integrity_check() == []


# Published data


def test_published_state_hash(store: Store) -> None:
    outcome = store.add_state(published_state(), "fixture", NOW)
    assert outcome.status == Status.ACCEPTED
    assert outcome.state_sha256 == PUBLISHED_STATE_SHA256
    assert store.get_state(PUBLISHED_SUBJECT)["state_sha256"] == PUBLISHED_STATE_SHA256


def test_published_state_bytes(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    assert store.get_state_bytes(PUBLISHED_SUBJECT) == fixture_path(PUBLISHED_STATE_FILE).read_bytes()


def test_published_event_outcomes(store: Store) -> None:
    outcome = store.add_state(published_state(), "fixture", NOW)
    assert [event.status for event in outcome.events] == [Status.ACCEPTED, Status.ACCEPTED]
    assert {event.event_id for event in outcome.events} == {
        "sha256:7d5068929a07627ce5d1204fd138d82d8b439902ff6148fd5641d0d106304220",
        "sha256:bd510d71ca4b7d34554903f18d34753f29becca9d98074b29bf529e9125b4eba",
    }


@pytest.mark.parametrize(
    "text",
    [
        PUBLISHED_SUBJECT,
        "pith:JXMVLSVZ",
        "JXMVLSVZ7B4A7F3JLM5PIYYILY",
        "JXMVLSVZ",
        "JXMVLSVZ7B4A",
        "JXMVLSVZ7B4A7F3J",
        "jxmvlsvz7b4a7f3j",
        "1711.00489",
        "1711.00489v2",
        "arXiv:1711.00489",
        "10.48550/arxiv.1711.00489",
        "10.48550/arXiv.1711.00489",
        "https://doi.org/10.48550/arXiv.1711.00489",
        "  1711.00489  ",
    ],
)
def test_resolve_published_forms(store: Store, text: str) -> None:
    store.add_state(published_state(), "fixture", NOW)
    assert store.resolve(text) == PUBLISHED_SUBJECT


@pytest.mark.parametrize("text", ["1711.00489v1", "pith:2016:JXMVLSVZ7B4A7F3JLM5PIYYILY", "JXMVLSVQ", "10.48550/arxiv.1711.00488", "", "x" * 500])
def test_resolve_unknown_forms(store: Store, text: str) -> None:
    store.add_state(published_state(), "fixture", NOW)
    assert store.resolve(text) is None


def test_published_records_import(store: Store) -> None:
    lines = record_lines()
    outcomes = [store.add_bundle(record_bundle(line), "records.jsonl", NOW) for line in lines]
    assert len(lines) == 20
    assert [outcome.status for outcome in outcomes] == [Status.ACCEPTED] * 20
    assert [outcome.subject for outcome in outcomes] == [line["pith_number"] for line in lines]
    assert store.stats().records == 20


def test_resolve_published_records(store: Store) -> None:
    lines = record_lines()
    for line in lines:
        store.add_bundle(record_bundle(line), "records.jsonl", NOW)
    checked = 0
    for line in lines:
        number = line["pith_number"]
        suffix = number.rsplit(":", 1)[1]
        forms = [number, f"pith:{suffix[:8]}", suffix, suffix.lower()]
        for alias in line.get("source_aliases", []):
            forms.append(alias["alias_value"])
            if alias["alias_kind"] == "doi":
                forms.append(alias["alias_value"].replace("arxiv", "arXiv"))
        for form in forms:
            assert store.resolve(form) == number, form
            checked += 1
    assert checked == 20 * 4 + 18 * 7


def test_resolve_records_without_aliases(store: Store) -> None:
    lines = [line for line in record_lines() if not line.get("source_aliases")]
    for line in lines:
        store.add_bundle(record_bundle(line), "records.jsonl", NOW)
    found = {}
    for line in lines:
        source = line["canonical_record"]["source"]
        identifier = source["id"]
        for form in (identifier, f"{identifier}v{source['version']}", f"10.48550/arXiv.{identifier}"):
            found[form] = store.resolve(form)
        assert store.resolve(f"{identifier}v{source['version'] + 1}") is None
    assert found == {
        "1401.8280": "pith:2014:2YOEY3OJ5O73D4WLRLU65OKN7N",
        "1401.8280v1": "pith:2014:2YOEY3OJ5O73D4WLRLU65OKN7N",
        "10.48550/arXiv.1401.8280": "pith:2014:2YOEY3OJ5O73D4WLRLU65OKN7N",
        "1904.01873": "pith:2019:C7XXWVHAMRX5K4J6P522DBIZ7S",
        "1904.01873v1": "pith:2019:C7XXWVHAMRX5K4J6P522DBIZ7S",
        "10.48550/arXiv.1904.01873": "pith:2019:C7XXWVHAMRX5K4J6P522DBIZ7S",
    }


@pytest.mark.parametrize("text", ["hep-lat/0305021", "hep-lat/0305021v1", "HEP-LAT/0305021", "10.48550/arXiv.hep-lat/0305021"])
def test_resolve_old_style_arxiv(store: Store, text: str) -> None:
    outcome = store.add_bundle(synthetic_bundle("hep-lat/0305021", 1), "test", NOW)
    assert store.resolve(text) == outcome.subject


def test_resolve_subject_class_case(store: Store) -> None:
    outcome = store.add_bundle(synthetic_bundle("math.GT/0309136", 1), "test", NOW)
    assert store.resolve("math.GT/0309136v1") == outcome.subject
    assert store.resolve("10.48550/arxiv.math.gt/0309136") == outcome.subject


def test_bundle_reproduces_state(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    store.add_events([mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)], "test", NOW)
    bundle = store.get_bundle(PUBLISHED_SUBJECT)
    merge_input = bundle_input(bundle)
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    assert len(bundle["events"]) == 3
    assert state["state_sha256"] == store.get_state_sha256(PUBLISHED_SUBJECT)


def test_bundle_parts_split_events(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    key = SigningKey.generate()
    store.add_events([mirror_hint(key, PUBLISHED_SUBJECT, f"slot{index}") for index in range(3)], "test", NOW)
    parts = store.get_bundle_parts(PUBLISHED_SUBJECT, max_events=2)
    events = [event for part in parts for event in part["events"]]
    state = merge(parts[0]["canonical_record"], parts[0]["source_aliases"], events, default_trust())
    assert [len(part["events"]) for part in parts] == [2, 2, 1]
    assert state["state_sha256"] == store.get_state_sha256(PUBLISHED_SUBJECT)


def test_unknown_subject_reads(store: Store) -> None:
    assert store.get_state(PUBLISHED_SUBJECT) is None
    assert store.get_state_bytes(PUBLISHED_SUBJECT) is None
    assert store.get_bundle(PUBLISHED_SUBJECT) is None
    assert store.get_bundle_parts(PUBLISHED_SUBJECT) == []


# Ingest outcomes


def test_duplicate_document(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    again = store.add_state(published_state(), "fixture", NOW)
    assert again.status == Status.DUPLICATE
    assert [event.status for event in again.events] == [Status.DUPLICATE, Status.DUPLICATE]
    assert again.state_changed is False
    assert store.stats().events == 2


def test_duplicate_event_input(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    first, second = store.add_events([hint, copy.deepcopy(hint)], "test", NOW)
    assert first.status == Status.ACCEPTED
    assert second.status == Status.DUPLICATE
    assert second.reason == "input already stored"
    assert store.stats().events == 3


def test_same_event_id_converges(tmp_path: Path) -> None:
    # Unsigned registry events cannot prove their id, so two different
    # inputs can claim one. Both orders must keep the same input.
    original = published_graph_snapshot()
    altered = copy.deepcopy(original)
    altered["payload"]["graph_snapshot"]["builder_version"] = "another-builder"
    kept = min(input_sha256(original), input_sha256(altered))
    states = []
    for name, order in (("a", [original, altered]), ("b", [altered, original])):
        with Store(tmp_path / name) as opened:
            opened.add_bundle(record_bundle_of_published(), "test", NOW)
            outcomes = opened.add_events(order, "test", NOW)
            assert [outcome.status for outcome in outcomes] == [Status.ACCEPTED, Status.ACCEPTED if input_sha256(order[1]) == kept else Status.DUPLICATE]
            assert opened.get_event_by_id(PUBLISHED_SUBJECT, original["event_id"]) == (original if input_sha256(original) == kept else altered)
            states.append(opened.get_state_bytes(PUBLISHED_SUBJECT))
    assert states[0] == states[1]


def test_signed_copy_wins(tmp_path: Path) -> None:
    # An unsigned registry event claims the id of a signed event. The merge
    # prefers the signed one, so the store keeps it in both orders.
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    impostor = {**published_graph_snapshot(), "event_id": hint["event_id"]}
    for name, order in (("a", [hint, impostor]), ("b", [impostor, hint])):
        with Store(tmp_path / name) as opened:
            opened.add_bundle(record_bundle_of_published(), "test", NOW)
            opened.add_events(order, "test", NOW)
            assert opened.get_event_by_id(PUBLISHED_SUBJECT, hint["event_id"]) == hint
            assert opened.stats().events == 1
            assert opened.verify_all() == []
            assert opened.integrity_check() == []


def test_pending_copy_replaced_before_its_record(tmp_path: Path) -> None:
    # Both copies wait for the record; the replacement must leave one
    # pending event in the counters, and the record releases it.
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    impostor = {**published_graph_snapshot(), "event_id": hint["event_id"]}
    with Store(tmp_path) as opened:
        outcomes = opened.add_events([impostor, hint], "test", NOW)
        assert [(outcome.status, outcome.pending) for outcome in outcomes] == [(Status.ACCEPTED, True), (Status.ACCEPTED, True)]
        assert (opened.stats().events, opened.stats().pending_events) == (1, 1)
        assert opened.integrity_check() == []
        opened.add_bundle(record_bundle_of_published(), "test", NOW)
        assert (opened.stats().events, opened.stats().pending_events, opened.stats().states) == (1, 0, 1)
        assert opened.get_event_by_id(PUBLISHED_SUBJECT, hint["event_id"]) == hint
        assert opened.integrity_check() == []


def test_event_id_per_subject(store: Store) -> None:
    # The merge groups copies of an event id within one subject, so a copy
    # claimed for another subject must leave the first subject alone.
    store.add_state(published_state(), "fixture", NOW)
    other = record_lines()[0]
    store.add_bundle(record_bundle(other), "records.jsonl", NOW)
    elsewhere = {**published_graph_snapshot(), "subject_pith_number": other["pith_number"]}
    [outcome] = store.add_events([elsewhere], "test", NOW)
    assert outcome.status == Status.ACCEPTED
    assert store.get_state_sha256(PUBLISHED_SUBJECT) == PUBLISHED_STATE_SHA256
    assert store.get_state(other["pith_number"])["current"]["graph_snapshots"][0]["event_id"] == elsewhere["event_id"]
    assert store.stats().events == 3


def record_bundle_of_published() -> dict[str, Any]:
    """Return the published record as a bundle with its aliases and no events."""
    merge_input = state_input(published_state())
    return emit_bundle(merge_input.record, merge_input.aliases, [], default_trust())


def test_invalid_event_not_stored(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    forged = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    forged["payload"]["url"] = "https://attacker.example.net/pith/"
    [outcome] = store.add_events([forged], "peer 192.0.2.1", NOW)
    assert outcome.status == Status.REJECTED
    assert outcome.code == "event_id_mismatch"
    assert outcome.field == "event_id"
    assert store.get_event(outcome.input_sha256) is None
    assert store.stats().events == 2
    assert store.get_state_sha256(PUBLISHED_SUBJECT) == PUBLISHED_STATE_SHA256


def test_rejection_logged(store: Store) -> None:
    forged = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    forged["signature_b64"] = forged["signature_b64"][:-4] + "AAA="
    [outcome] = store.add_events([forged], "peer 192.0.2.1", NOW)
    [entry] = store.recent_rejections()
    assert entry.code == outcome.code
    assert entry.input_sha256 == outcome.input_sha256
    assert entry.event_id == forged["event_id"]
    assert entry.source == "peer 192.0.2.1"
    assert entry.received_at == NOW


@pytest.mark.parametrize(
    ("raw", "field", "code"),
    [
        ("not an event", "", "malformed_envelope"),
        ({"event_type": "mirror_hint"}, "subject_pith_number", "malformed_envelope"),
        ({"subject_pith_number": "pith:17:X", "event_id": "x"}, "subject_pith_number", "malformed_subject"),
        ({"value": 1.5}, "value", "not_canonical"),
    ],
)
def test_malformed_events_rejected(store: Store, raw: Any, field: str, code: str) -> None:
    [outcome] = store.add_events([raw], "test", NOW)
    assert outcome.status == Status.REJECTED
    assert outcome.field == field
    assert outcome.code == code


def test_oversized_event_rejected(store: Store) -> None:
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    hint["padding"] = "x" * (1024 * 1024)
    [outcome] = store.add_events([hint], "test", NOW)
    assert outcome.code == "event_too_large"


def test_event_with_many_containers_rejected(store: Store) -> None:
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    hint["padding"] = [[] for _ in range(20_000)]
    [outcome] = store.add_events([hint], "test", NOW)

    assert outcome.status == Status.REJECTED
    assert outcome.code == "too_many_containers"
    # The padding, its 20,000 arrays, and the event's own 3 objects.
    assert outcome.reason == "event holds 20004 arrays and objects, over the limit of 16384"
    assert store.stats().events == 0


def test_future_event_rejected(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    key = SigningKey.generate()
    too_late = mirror_hint(key, PUBLISHED_SUBJECT, "late", format_timestamp(NOW + MAX_FUTURE_SKEW_SECONDS + 1))
    at_limit = mirror_hint(key, PUBLISHED_SUBJECT, "limit", format_timestamp(NOW + MAX_FUTURE_SKEW_SECONDS))
    rejected, accepted = store.add_events([too_late, at_limit], "test", NOW)
    assert rejected.status == Status.REJECTED
    assert rejected.code == "future_timestamp"
    assert rejected.field == "created_at"
    assert accepted.status == Status.ACCEPTED


@pytest.mark.parametrize(
    "document",
    [None, [], {"bundle_type": "something_else"}, {"bundle_type": "pith_open_graph_bundle", "bundle_version": "1.0"}],
)
def test_bad_bundle_rejected(store: Store, document: Any) -> None:
    outcome = store.add_bundle(document, "test", NOW)
    assert outcome.status == Status.REJECTED
    assert outcome.code == "invalid_document"
    assert store.stats().records == 0
    assert store.stats().rejections_total == 1


def test_wrong_subject_in_bundle(store: Store) -> None:
    bundle = record_bundle_of_published()
    other = record_lines()[0]["pith_number"]
    bundle["events"] = [mirror_hint(SigningKey.generate(), other)]
    outcome = store.add_bundle(bundle, "test", NOW)
    assert outcome.status == Status.ACCEPTED
    assert outcome.events[0].code == "wrong_subject"
    assert store.stats().events == 0


def test_state_hash_mismatch(store: Store) -> None:
    document = published_state()
    document["event_count"] = 3
    outcome = store.add_state(document, "test", NOW)
    assert outcome.status == Status.REJECTED
    assert outcome.code == "state_hash_mismatch"
    assert store.stats().records == 0


def test_alias_shared_by_versions(store: Store) -> None:
    first = store.add_bundle(synthetic_bundle("2101.00001", 1), "test", NOW).subject
    second = store.add_bundle(synthetic_bundle("2101.00001", 2), "test", NOW).subject
    assert store.resolve("2101.00001") == second
    assert store.resolve("10.48550/arxiv.2101.00001") == second
    assert store.resolve("2101.00001v1") == first
    assert store.resolve_all("2101.00001") == [second, first]


def test_resolve_prefers_proven(store: Store) -> None:
    # The published record has a record_created event with a verified
    # receipt, and a made-up version 3 of the same paper has none.
    store.add_state(published_state(), "fixture", NOW)
    unproven = store.add_bundle(synthetic_bundle("1711.00489", 3), "test", NOW).subject
    assert store.resolve("1711.00489") == PUBLISHED_SUBJECT
    assert store.resolve("10.48550/arXiv.1711.00489") == PUBLISHED_SUBJECT
    assert store.resolve("1711.00489v3") == unproven
    assert store.resolve_all("1711.00489") == [PUBLISHED_SUBJECT, unproven]


def test_aliases_merge_earliest(store: Store) -> None:
    # The aliases of a record line have no created_at, but those of the
    # published state do, and the merge keeps those.
    bundle = record_bundle_of_published()
    bundle["source_aliases"] = [{key: value for key, value in alias.items() if key != "created_at"} for alias in bundle["source_aliases"]]
    store.add_bundle(bundle, "test", NOW)
    outcome = store.add_state(published_state(), "fixture", NOW)
    assert outcome.status == Status.DUPLICATE
    assert outcome.state_changed is True
    assert outcome.state_sha256 == PUBLISHED_STATE_SHA256


# Pending events


def test_pending_merged_on_record(store: Store) -> None:
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    [outcome] = store.add_events([hint], "test", NOW)
    assert outcome.status == Status.ACCEPTED
    assert outcome.pending is True
    assert store.stats().pending_events == 1
    assert store.get_state(PUBLISHED_SUBJECT) is None

    document = store.add_state(published_state(), "fixture", NOW)
    state = store.get_state(PUBLISHED_SUBJECT)
    assert store.stats().pending_events == 0
    assert state["current"]["mirror_hints"][0]["event_id"] == hint["event_id"]
    assert document.state_sha256 == state["state_sha256"]
    assert store.verify_all() == []


def test_pending_caps(tmp_path: Path) -> None:
    limits = StoreLimits(max_pending_per_subject=2, max_pending_total=3, pending_max_age_seconds=None)
    other = record_lines()[0]["pith_number"]
    key = SigningKey.generate()
    with Store(tmp_path, limits=limits) as opened:
        events = [mirror_hint(key, PUBLISHED_SUBJECT, f"s{index}") for index in range(3)]
        events += [mirror_hint(key, other, f"s{index}") for index in range(2)]
        outcomes = opened.add_events(events, "test", NOW)
        assert [outcome.code for outcome in outcomes] == [None, None, "pending_subject_limit", None, "pending_limit"]
        assert opened.stats().pending_events == 3
        assert opened.integrity_check() == []


def test_pending_expiry(tmp_path: Path) -> None:
    limits = StoreLimits(pending_max_age_seconds=3600)
    with Store(tmp_path, limits=limits) as opened:
        opened.add_events([mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)], "test", NOW)
        assert opened.expire_pending(NOW + 3600) == 0
        assert opened.expire_pending(NOW + 3601) == 1
        assert opened.stats().pending_events == 0
        assert opened.stats().events == 0
        assert opened.integrity_check() == []


# Schema, reopening and recomputation


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    hint = mirror_hint(SigningKey.generate(), PUBLISHED_SUBJECT)
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
        opened.add_events([hint, {"bad": True}], "test", NOW)
        for line in record_lines():
            opened.add_bundle(record_bundle(line), "records.jsonl", NOW)
        before = opened.stats()
        state = opened.get_state_bytes(PUBLISHED_SUBJECT)
    with Store(tmp_path) as reopened:
        assert reopened.stats() == before
        assert reopened.get_state_bytes(PUBLISHED_SUBJECT) == state
        assert reopened.get_event(input_sha256(hint)) == hint
        assert reopened.resolve("1711.00489") == PUBLISHED_SUBJECT
        assert reopened.verify_all() == []
    assert before.records == 21
    assert before.events == 3
    assert before.rejections_total == 1


def test_newer_schema_refused(tmp_path: Path) -> None:
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError) as raised:
        Store(tmp_path)
    assert str(raised.value) == (
        f"store {tmp_path / 'store.sqlite3'} was written by schema version {SCHEMA_VERSION + 1}; "
        f"this pith-mirror supports up to {SCHEMA_VERSION}; upgrade pith-mirror"
    )


def test_migrate_empty_v1(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "store.sqlite3", isolation_level=None)
    conn.execute("BEGIN")
    MIGRATIONS[0](conn)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("COMMIT")
    conn.close()
    with Store(tmp_path) as opened:
        assert opened.stats().schema_version == SCHEMA_VERSION
        [outcome] = opened.add_events([{"bad": True}], "test", NOW)
        assert opened.recent_rejections()[0].input_sha256 == outcome.input_sha256


def _restore_count_triggers(conn: sqlite3.Connection) -> None:
    """Create the row-count triggers that schema versions 1 to 4 had, to turn a current store into an older one."""
    old = sqlite3.connect(":memory:")
    for step in MIGRATIONS[:4]:
        step(old)
    for (statement,) in old.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(statement)
    old.close()


def test_migrate_v1_keeps_data(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("DROP INDEX records_by_source")
        conn.execute("DROP TABLE rejections")
        conn.execute("DELETE FROM counters WHERE name = 'rejections_total'")
        _restore_count_triggers(conn)
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with Store(tmp_path) as migrated:
        assert migrated.stats().schema_version == SCHEMA_VERSION
        assert migrated.stats().rejections_total == 0
        assert migrated.get_state_sha256(PUBLISHED_SUBJECT) == PUBLISHED_STATE_SHA256


def test_migrate_v2_adds_source_index(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("DROP INDEX records_by_source")
        _restore_count_triggers(conn)
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with Store(tmp_path) as migrated:
        assert migrated.stats().schema_version == SCHEMA_VERSION
        assert migrated.resolve("1711.00489v2") == PUBLISHED_SUBJECT
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
    assert "records_by_source" in names


def test_migrate_v3_indexes_fewer_aliases(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("DROP INDEX aliases_by_lookup_key")
        conn.execute("CREATE INDEX aliases_by_lookup_key ON aliases (lookup_key, kind)")
        _restore_count_triggers(conn)
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    with Store(tmp_path) as migrated:
        version = migrated.stats().schema_version
        found = migrated.resolve("1711.00489v2")
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        indexed = conn.execute("SELECT count(*) FROM aliases INDEXED BY aliases_by_lookup_key WHERE kind NOT LIKE 'pith\\_short\\_%' ESCAPE '\\'").fetchone()[0]
        stored = conn.execute("SELECT count(*) FROM aliases").fetchone()[0]

    assert version == SCHEMA_VERSION
    assert found == PUBLISHED_SUBJECT
    # The published record has six aliases; the three short forms are not indexed.
    assert (indexed, stored) == (3, 6)



def test_migrate_v4_counts_rows_without_triggers(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        _restore_count_triggers(conn)
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 7
    with Store(tmp_path) as migrated:
        list(migrated.add_many_bundles([record_bundle(line) for line in record_lines()[:5]], "import", NOW))
        stats = migrated.stats()
        findings = migrated.integrity_check()
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        triggers = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
    assert (stats.schema_version, triggers, findings) == (SCHEMA_VERSION, 0, [])
    assert (stats.records, stats.states) == (6, 6)


def test_alias_lookup_uses_partial_index(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
        with opened.snapshot() as conn:
            plan = conn.execute(f"EXPLAIN QUERY PLAN {RESOLVE_ALIAS_QUERY}", ("10.48550/arxiv.1711.00489", 4)).fetchall()

    assert "USING COVERING INDEX aliases_by_lookup_key (lookup_key=?)" in plan[0][3]


def test_trust_change_recomputes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    with caplog.at_level(logging.WARNING, logger="pith_mirror.store"), Store(tmp_path, reject_unsigned_trust()) as strict:
        state = strict.get_state(PUBLISHED_SUBJECT)
        # Both published events are unsigned registry events.
        assert state["current"]["graph_snapshots"] == []
        assert state["current"]["record_created"] is None
        assert state["invalid_event_count"] == 0
        assert strict.stats().excluded_events == 2
        assert strict.stats().trust_sha256 == reject_unsigned_trust().digest
        assert strict.verify_all() == []
        assert strict.get_bundle(PUBLISHED_SUBJECT)["events"] == []
    assert any("recomputed 1 states" in record.getMessage() for record in caplog.records)
    with Store(tmp_path) as restored:
        assert restored.get_state_sha256(PUBLISHED_SUBJECT) == PUBLISHED_STATE_SHA256
        assert restored.stats().excluded_events == 0


def test_unfinished_recompute_resumes(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    # A recomputation that died part way leaves the profile empty.
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("UPDATE meta SET value = '' WHERE key IN ('trust_sha256', 'merge_version')")
        conn.execute("UPDATE states SET state_sha256 = 'stale'")
    with Store(tmp_path) as reopened:
        assert reopened.get_state_sha256(PUBLISHED_SUBJECT) == PUBLISHED_STATE_SHA256


def test_verify_all_finds_tampering(tmp_path: Path) -> None:
    with Store(tmp_path) as opened:
        opened.add_state(published_state(), "fixture", NOW)
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("UPDATE states SET state_json = CAST('{}' AS BLOB)")
    with Store(tmp_path) as reopened:
        assert reopened.verify_all() == [PUBLISHED_SUBJECT]
        assert reopened.integrity_check() == []


def test_full_disk_raises(store: Store) -> None:
    # max_page_count makes SQLite report a full disk once the file has grown.
    store.add_state(published_state(), "fixture", NOW)
    pages = store._writer.execute("PRAGMA page_count").fetchone()[0]
    store._writer.execute(f"PRAGMA max_page_count = {pages}")
    documents = [record_bundle(line) for line in record_lines()]
    with pytest.raises(StoreError, match="full"):
        list(store.add_many_bundles(documents, "import", NOW, batch_size=100))
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    assert store.stats().records == 1
    assert store.verify_all() == []
    assert store.add_bundle(documents[0], "import", NOW).status == Status.ACCEPTED


def test_closed_store_raises(tmp_path: Path) -> None:
    opened = Store(tmp_path)
    opened.close()
    with pytest.raises(StoreError, match="closed"):
        opened.get_state(PUBLISHED_SUBJECT)
    with pytest.raises(StoreError, match="closed"):
        opened.add_events([], "test", NOW)


def test_second_writer_refused(tmp_path: Path) -> None:
    with Store(tmp_path):
        with pytest.raises(StoreError, match="in use by another process"):
            Store(tmp_path)


def test_read_only_beside_writer(tmp_path: Path) -> None:
    with Store(tmp_path) as writer:
        writer.add_state(published_state(), "fixture", NOW)
        with Store(tmp_path, read_only=True) as reader:
            assert reader.get_state_sha256(PUBLISHED_SUBJECT) == PUBLISHED_STATE_SHA256
            with pytest.raises(StoreError, match="read-only"):
                reader.add_events([], "test", NOW)


def test_foreign_file_refused(tmp_path: Path) -> None:
    (tmp_path / "store.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store(tmp_path)


def test_foreign_database_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StoreError, match="not a pith-mirror store"):
        Store(tmp_path)


def test_sqlite_settings(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    conn.close()


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "pith-mirror"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")
    monkeypatch.setenv("HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert default_data_dir() == tmp_path / ".local" / "share" / "pith-mirror"


# Reads for the status page


def test_stats_and_activity(store: Store) -> None:
    store.add_state(published_state(), "fixture", NOW)
    store.add_events([{"bad": True}], "peer", NOW + 1)
    stats = store.stats()
    activity = store.recent_activity(10)
    assert (stats.records, stats.events, stats.states, stats.rejections_total) == (1, 2, 1, 1)
    assert [item.kind for item in activity] == ["rejection", "event", "event", "record"]
    assert activity[0].time == format_timestamp(NOW + 1)
    assert list(store.iter_subjects()) == [PUBLISHED_SUBJECT]


def test_reads_during_writes(store: Store) -> None:
    # Writes run on a worker thread, as trio.to_thread runs them. Readers
    # on other threads must only ever see whole committed states.
    store.add_state(published_state(), "fixture", NOW)
    key = SigningKey.generate()
    events = [mirror_hint(key, PUBLISHED_SUBJECT, f"s{index}") for index in range(15)]
    done = threading.Event()

    def read_states() -> list[str]:
        hashes = []
        for _ in range(2_000):
            state = store.get_state(PUBLISHED_SUBJECT)
            body = {key: value for key, value in state.items() if key != "state_sha256"}
            assert state_hash(body) == state["state_sha256"]
            hashes.append(state["state_sha256"])
            if done.is_set():
                break
        return hashes

    def write_events() -> list[str | None]:
        try:
            return [store.add_events([event], "test", NOW)[0].input_sha256 for event in events]
        finally:
            done.set()

    with ThreadPoolExecutor(max_workers=3) as pool:
        readers = [pool.submit(read_states) for _ in range(2)]
        written = pool.submit(write_events).result(timeout=60)
        seen = [state for reader in readers for state in reader.result(timeout=60)]
    assert len(written) == 15
    assert len(seen) >= 2
    assert store.get_state(PUBLISHED_SUBJECT)["valid_event_count"] == 17


def test_rejections_log_bounded(tmp_path: Path) -> None:
    with Store(tmp_path, limits=StoreLimits(rejections_kept=5)) as opened:
        opened.add_events([{"bad": index} for index in range(8)], "test", NOW)
        assert opened.stats().rejections_logged == 5
        assert opened.stats().rejections_total == 8
        assert [entry.input_sha256 for entry in opened.recent_rejections(1)] == [input_sha256({"bad": 7})]


def test_add_many_bundles(store: Store) -> None:
    documents = [record_bundle(line) for line in record_lines()] + ["not a bundle"]
    outcomes = list(store.add_many_bundles(documents, "import", NOW, batch_size=7))
    assert [outcome.status for outcome in outcomes] == [Status.ACCEPTED] * 20 + [Status.REJECTED]
    assert all(outcome.state_sha256 is not None for outcome in outcomes[:20])
    assert store.stats().states == 20


# Durability

# The child opens the store, imports the published state, then signs and
# adds mirror hints one at a time, printing each input_sha256 only after
# add_events has returned. It stops by itself after 1.5 s.
CHILD = """
import sys, time
from protocol import SigningKey, build_event, read_document
from node.demo import fixture_path
from node.store import Store

store = Store(sys.argv[1])
store.add_state(read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()), "child", time.time())
key = SigningKey.generate()
deadline = time.monotonic() + 1.5
index = 0
while time.monotonic() < deadline and index < 5000:
    event = build_event(
        key, event_type="mirror_hint", subject="pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY",
        payload={"slot": f"s{index % 40}", "url": f"https://m{index}.example.org/"},
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1780000000 + index)),
        key_id="child", signer_id="child.example.org", signer_type="mirror",
    )
    [outcome] = store.add_events([event], "child", time.time())
    assert outcome.status == "accepted", outcome
    print(outcome.input_sha256, flush=True)
    index += 1
"""


def run_killed_child(data_dir: Path, delay: float) -> list[str]:
    """Run CHILD, kill it with SIGKILL ``delay`` seconds after its first acknowledgement; return the acknowledged ids."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    # Bounds the wait for the first line if the child hangs.
    watchdog = threading.Timer(20.0, child.kill)
    watchdog.start()
    try:
        first = child.stdout.readline()
    finally:
        watchdog.cancel()
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    rest, errors = child.communicate(timeout=30)
    output = first + rest
    assert first, errors.decode("utf-8", "replace")
    # A line cut off by the kill has no newline, so only whole lines count.
    return [line.decode("ascii") for line in output.split(b"\n")[:-1]]


def test_acknowledged_survives_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    delays = [random.Random(seed + trial).uniform(0.0, 0.5) for trial in range(20)]
    with ThreadPoolExecutor(max_workers=5) as pool:
        acknowledged = list(pool.map(run_killed_child, [tmp_path / f"trial{trial}" for trial in range(20)], delays))
    for trial, ids in enumerate(acknowledged):
        with Store(tmp_path / f"trial{trial}") as reopened:
            missing = [value for value in ids if reopened.get_event(value) is None]
            assert missing == [], f"seed {seed}, trial {trial}"
            assert reopened.verify_all() == [], f"seed {seed}, trial {trial}"
            assert reopened.stats().events >= len(ids) + 2, f"seed {seed}, trial {trial}"
