"""Bundle, state and record documents: headers, round trips and verification."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import (
    RECORD_LINE_SUBJECT,
    SUBJECT,
    key,
    published_input,
    published_state,
    record_line,
    signed_event,
    unsigned_registry_event,
    valid_payload,
    with_nonce,
)
from node.demo import fixture_path
from protocol import (
    MAX_BUNDLE_EVENTS,
    DocumentError,
    bundle_input,
    canonical_sha256,
    check_record_line,
    check_state,
    default_trust,
    document_kind,
    emit_bundle,
    merge,
    read_document,
    state_hash,
    state_input,
)

PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
T1 = "2026-06-01T00:00:00Z"
T2 = "2026-06-02T00:00:00Z"


def _published_bundle() -> dict[str, Any]:
    merge_input = published_input()
    return emit_bundle(merge_input.record, merge_input.aliases, merge_input.events, default_trust())


def _document_error(check: Callable[[], Any]) -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        check()
    return caught.value


def _reseal(state: dict[str, Any]) -> dict[str, Any]:
    """Return ``state`` with ``state_sha256`` recomputed over its other fields."""
    body = {name: value for name, value in state.items() if name != "state_sha256"}
    return {**body, "state_sha256": state_hash(body)}


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict) and value:
        for name, item in value.items():
            yield from _leaves(item, (*path, name))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 0
    if value == []:
        return [0]
    return {"x": 0}


def _with_leaf(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    holder = changed
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = value
    return changed


# Reading ---------------------------------------------------------------------------


def test_read_document_not_object() -> None:
    error = _document_error(lambda: read_document(b"[1, 2]"))
    assert error.field == ""
    assert error.reason == "document must be a JSON object, got list"


def test_document_kind_of_each() -> None:
    assert document_kind(published_state()) == "state"
    assert document_kind(_published_bundle()) == "bundle"
    assert document_kind(record_line(RECORD_LINE_SUBJECT)) == "record"


def test_document_kind_unknown() -> None:
    error = _document_error(lambda: document_kind({"events": []}))
    assert error.field == ""


# Bundles ---------------------------------------------------------------------------


def test_published_bundle_round_trip() -> None:
    bundle = read_document(json.dumps(_published_bundle()))
    merge_input = bundle_input(bundle)

    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())

    assert state["state_sha256"] == PUBLISHED_STATE_SHA256
    assert merge_input.pith_number == SUBJECT


def test_bundle_header_fields() -> None:
    bundle = _published_bundle()
    assert bundle["pith_number"] == SUBJECT
    assert bundle["short_pith_number"] == "pith:JXMVLSVZ"
    assert bundle["canonical_sha256"] == "4dd955cab9f8780f97695b3af463085e19ab1f7da6f922959e527872d10dff1e"
    assert bundle["source"] == {"id": "1711.00489", "kind": "arxiv", "version": 2}
    assert len(bundle["events"]) == 2


# (case id, change to a valid bundle, field named by the error)
BUNDLE_ERRORS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("bundle_type", lambda b: b.__setitem__("bundle_type", "pith_open_graph_state"), "bundle_type"),
    ("bundle_type_missing", lambda b: b.pop("bundle_type"), "bundle_type"),
    ("bundle_version", lambda b: b.__setitem__("bundle_version", "2.0"), "bundle_version"),
    ("bundle_version_number", lambda b: b.__setitem__("bundle_version", 1), "bundle_version"),
    ("record_missing", lambda b: b.pop("canonical_record"), "canonical_record"),
    ("record_list", lambda b: b.__setitem__("canonical_record", []), "canonical_record"),
    ("record_no_metadata", lambda b: b["canonical_record"].pop("metadata"), "canonical_record.metadata"),
    ("pith_number_other", lambda b: b.__setitem__("pith_number", RECORD_LINE_SUBJECT), "pith_number"),
    ("pith_number_year", lambda b: b.__setitem__("pith_number", SUBJECT.replace("2017", "2018")), "pith_number"),
    ("record_changed", lambda b: b["canonical_record"]["source"].__setitem__("version", 3), "pith_number"),
    ("canonical_sha256", lambda b: b.__setitem__("canonical_sha256", "00" * 32), "canonical_sha256"),
    ("short_number", lambda b: b.__setitem__("short_pith_number", "pith:JXMVLSVA"), "short_pith_number"),
    ("short_number_missing", lambda b: b.pop("short_pith_number"), "short_pith_number"),
    ("source", lambda b: b.__setitem__("source", {"id": "1711.00489", "kind": "arxiv", "version": 1}), "source"),
    ("aliases_missing", lambda b: b.pop("source_aliases"), "source_aliases"),
    ("alias_wrong", lambda b: b["source_aliases"][0].__setitem__("alias_value", "1711.00488"), "source_aliases[0].alias_value"),
    ("events_missing", lambda b: b.pop("events"), "events"),
    ("events_object", lambda b: b.__setitem__("events", {}), "events"),
    ("too_many_events", lambda b: b.__setitem__("events", [{}] * (MAX_BUNDLE_EVENTS + 1)), "events"),
]


@pytest.mark.parametrize(("change", "field"), [case[1:] for case in BUNDLE_ERRORS], ids=[case[0] for case in BUNDLE_ERRORS])
def test_bundle_header_error(change: Callable[[dict[str, Any]], None], field: str) -> None:
    bundle = _published_bundle()
    change(bundle)
    error = _document_error(lambda: bundle_input(bundle))
    assert error.field == field


def test_bundle_event_limit_inclusive() -> None:
    bundle = _published_bundle()
    bundle["events"] = [{}] * MAX_BUNDLE_EVENTS
    assert len(bundle_input(bundle).events) == MAX_BUNDLE_EVENTS


def test_bundle_events_not_validated() -> None:
    bundle = _published_bundle()
    bundle["events"].append({"not": "an event"})
    merge_input = bundle_input(bundle)
    state = merge(merge_input.record, merge_input.aliases, merge_input.events, default_trust())
    assert state["invalid_events"][0]["reason"] == "malformed_envelope"


def test_emit_bundle_orders_by_hash() -> None:
    hint = signed_event("doc-mirror", "mirror_hint", valid_payload("mirror_hint"), T1)
    merge_input = published_input()
    bundle = emit_bundle(merge_input.record, merge_input.aliases, [hint, *merge_input.events], default_trust())
    hashes = [canonical_sha256(event) for event in bundle["events"]]
    assert hashes == sorted(hashes)
    assert len(hashes) == 3


def test_emit_bundle_keeps_unsigned_copies() -> None:
    # Two copies of one unsigned event that differ in a field the state
    # drops are both written, so a conflicting claim of the id later turns
    # both into invalid_events, as it does for the original inputs.
    plain = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot"), T1)
    noted = {**copy.deepcopy(plain), "registry_note": "dropped by the state"}
    conflicting = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot", variant=1), T1, event_id=plain["event_id"])
    merge_input = published_input()
    trust = default_trust()

    bundle = emit_bundle(merge_input.record, merge_input.aliases, [*merge_input.events, plain, noted], trust)
    from_bundle = merge(merge_input.record, merge_input.aliases, [*bundle["events"], conflicting], trust)
    from_inputs = merge(merge_input.record, merge_input.aliases, [*merge_input.events, plain, noted, conflicting], trust)

    assert noted in bundle["events"]
    assert plain in bundle["events"]
    assert from_bundle == from_inputs
    assert from_inputs["invalid_event_count"] == 3


def test_emit_bundle_one_signature_per_event() -> None:
    hint = signed_event("doc-mirror", "mirror_hint", valid_payload("mirror_hint"), T1)
    second = with_nonce(hint, key("doc-mirror"), 5)
    merge_input = published_input()

    bundle = emit_bundle(merge_input.record, merge_input.aliases, [hint, second], default_trust())

    assert bundle["events"] == [min([hint, second], key=lambda raw: raw["signature_b64"])]


# States ----------------------------------------------------------------------------


def test_state_input_published_events() -> None:
    merge_input = state_input(published_state())
    types = sorted(event["event_type"] for event in merge_input.events)
    assert types == ["graph_snapshot", "record_created"]
    assert all(event["subject_pith_number"] == SUBJECT for event in merge_input.events)


# (case id, change to the published state, field named by the error)
STATE_ERRORS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("state_type", lambda s: s.__setitem__("state_type", "pith_open_graph_bundle"), "state_type"),
    ("state_version", lambda s: s.__setitem__("state_version", "1.1"), "state_version"),
    ("merge_version", lambda s: s.__setitem__("merge_version", "pith-open-graph-merge-v2"), "merge_version"),
    ("pith_number", lambda s: s.__setitem__("pith_number", RECORD_LINE_SUBJECT), "pith_number"),
    ("current_missing", lambda s: s.pop("current"), "current"),
    ("current_unknown_key", lambda s: s["current"].__setitem__("record_creation", None), "current.record_creation"),
    ("record_created_missing", lambda s: s["current"].pop("record_created"), "current.record_created"),
    ("record_missing", lambda s: s["current"].pop("canonical_record"), "current.canonical_record"),
    ("aliases_missing", lambda s: s["current"].pop("source_aliases"), "current.source_aliases"),
    ("list_missing", lambda s: s["current"].pop("mirror_hints"), "current.mirror_hints"),
    ("list_object", lambda s: s["current"].__setitem__("corrections", {}), "current.corrections"),
    ("event_not_object", lambda s: s["current"]["graph_snapshots"].__setitem__(0, "event"), "current.graph_snapshots[0]"),
    ("too_many_events", lambda s: s["current"].__setitem__("mirror_hints", [{}] * (MAX_BUNDLE_EVENTS + 1)), "current.mirror_hints"),
    ("equivocations_missing", lambda s: s.pop("equivocations"), "equivocations"),
    ("equivocation_type", lambda s: s["equivocations"].append({"event_type": "bogus", "events": []}), "equivocations[0]"),
    ("equivocation_events", lambda s: s["equivocations"].append({"event_type": "mirror_hint"}), "equivocations[0].events"),
]


@pytest.mark.parametrize(("change", "field"), [case[1:] for case in STATE_ERRORS], ids=[case[0] for case in STATE_ERRORS])
def test_state_input_error(change: Callable[[dict[str, Any]], None], field: str) -> None:
    state = published_state()
    change(state)
    error = _document_error(lambda: state_input(state))
    assert error.field == field


def test_check_state_published_passes() -> None:
    passed = check_state(published_state(), default_trust())
    assert passed == [
        "state_sha256",
        "canonical_sha256 and pith_number",
        "source_aliases",
        "2 events (ids, signatures, receipts)",
        "re-merge reproduces state_sha256",
    ]


def test_check_state_every_leaf_change() -> None:
    state = published_state()
    checked = 0
    for path, value in _leaves(state):
        changed = _with_leaf(state, path, _changed(value))
        error = _document_error(lambda: check_state(changed, default_trust()))
        assert error.field == "state_sha256", path
        checked += 1
    assert checked > 100


# Fields of the published unsigned registry events that nothing checks: no
# signature covers them and the receipt signs only canonical_sha256. With
# unsigned registry events accepted, a state with any of them changed and
# state_sha256 recomputed is a different but valid state.
UNCHECKED_PUBLISHED_FIELDS = {
    ("current", "graph_snapshots", 0, "signer", "signer_id"),
    ("current", "record_created", "signer", "signer_id"),
    ("current", "record_created", "payload", "attestation_state"),
    ("current", "record_created", "payload", "receipt", "builder_version"),
    ("current", "record_created", "payload", "receipt", "first_computed_at"),
    ("current", "record_created", "payload", "receipt", "last_reissued_at"),
    ("current", "record_created", "payload", "receipt", "receipt_version"),
    ("current", "record_created", "payload", "receipt", "signature_status"),
    ("current", "record_created", "payload", "receipt", "signed_at"),
}


def _unchecked(path: tuple[Any, ...]) -> bool:
    in_snapshot_payload = path[:4] == ("current", "graph_snapshots", 0, "payload")
    return in_snapshot_payload or path in UNCHECKED_PUBLISHED_FIELDS


def test_check_state_resealed_leaf_change() -> None:
    state = published_state()
    accepted = []
    for path, value in _leaves(state):
        if path == ("state_sha256",):
            continue
        changed = _reseal(_with_leaf(state, path, _changed(value)))
        try:
            check_state(changed, default_trust())
        except DocumentError:
            assert not _unchecked(path), path
            continue
        accepted.append(path)
    assert accepted == [path for path, _ in _leaves(state) if _unchecked(path)]
    assert len(accepted) == 45


# (count raised by one, field named by the error): the first three break
# event_count = valid_event_count + invalid_event_count.
RESEALED_COUNTS = [
    ("event_count", "event_count"),
    ("valid_event_count", "event_count"),
    ("invalid_event_count", "event_count"),
    ("equivocation_count", "equivocation_count"),
]


@pytest.mark.parametrize(("name", "field"), RESEALED_COUNTS)
def test_check_state_resealed_count(name: str, field: str) -> None:
    state = _reseal({**published_state(), name: published_state()[name] + 1})
    error = _document_error(lambda: check_state(state, default_trust()))
    assert error.field == field


def test_check_state_unknown_field() -> None:
    state = _reseal({**published_state(), "note": "added"})
    error = _document_error(lambda: check_state(state, default_trust()))
    assert error.field == "note"


def _partial_state() -> dict[str, Any]:
    """Return a merged state that lists only some of its events.

    One mirror hint supersedes another and one input is invalid, so the
    state counts four valid events and one invalid input but lists three.
    """
    old = signed_event("doc-mirror", "mirror_hint", valid_payload("mirror_hint", variant=0), T1)
    new = signed_event("doc-mirror", "mirror_hint", valid_payload("mirror_hint", variant=1), T2)
    forged = {**copy.deepcopy(new), "created_at": T1}
    merge_input = published_input()
    return merge(merge_input.record, merge_input.aliases, [*merge_input.events, old, new, forged], default_trust())


def test_check_state_partial_passes() -> None:
    state = _partial_state()

    passed = check_state(state, default_trust())

    assert state["event_count"] == 5
    assert state["invalid_event_count"] == 1
    assert passed[-2:] == [
        "event counts and invalid_events agree",
        "re-merge reproduces current, equivocations and applied_event_ids "
        "(the state omits superseded or invalid events: verify the bundle for the rest)",
    ]


# (case id, change to the partial state before resealing, field named by the error)
PARTIAL_ERRORS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("event_count", lambda s: s.__setitem__("event_count", 6), "event_count"),
    ("event_count_bool", lambda s: s.__setitem__("equivocation_count", False), "equivocation_count"),
    ("valid_below_listed", lambda s: s.update(valid_event_count=2, event_count=3), "valid_event_count"),
    ("invalid_count", lambda s: s.update(invalid_event_count=2, event_count=6), "invalid_event_count"),
    ("invalid_entry_keys", lambda s: s["invalid_events"][0].__setitem__("note", 1), "invalid_events[0]"),
    ("invalid_entry_reason", lambda s: s["invalid_events"][0].__setitem__("reason", "Bad Reason"), "invalid_events[0].reason"),
    ("invalid_entry_id", lambda s: s["invalid_events"][0].__setitem__("event_id", "sha256:00"), "invalid_events[0].event_id"),
    ("invalid_entry_hash", lambda s: s["invalid_events"][0].__setitem__("input_sha256", "AB" * 32), "invalid_events[0].input_sha256"),
    ("applied_ids", lambda s: s["applied_event_ids"].pop(), "applied_event_ids"),
    # The merge of the remaining listed events has no hint either, but
    # applied_event_ids still names it.
    ("hint_dropped", lambda s: s["current"]["mirror_hints"].clear(), "applied_event_ids"),
    ("hint_changed", lambda s: s["current"]["mirror_hints"][0]["payload"].__setitem__("url", "https://x.example/"), "current"),
    ("equivocation_count", lambda s: s.__setitem__("equivocation_count", 1), "equivocation_count"),
]


@pytest.mark.parametrize(("change", "field"), [case[1:] for case in PARTIAL_ERRORS], ids=[case[0] for case in PARTIAL_ERRORS])
def test_check_state_partial_error(change: Callable[[dict[str, Any]], None], field: str) -> None:
    state = _partial_state()
    change(state)
    error = _document_error(lambda: check_state(_reseal(state), default_trust()))
    assert error.field == field


def test_check_state_invalid_entries_order() -> None:
    state = _partial_state()
    entry = state["invalid_events"][0]
    state["invalid_events"] = [entry, entry]
    state["invalid_event_count"] = 2
    state["event_count"] = 6

    error = _document_error(lambda: check_state(_reseal(state), default_trust()))

    assert error.field == "invalid_events[1].input_sha256"


def test_check_state_names_equivocation_field() -> None:
    first = signed_event("doc-other", "mirror_hint", valid_payload("mirror_hint", variant=0), T1)
    second = signed_event("doc-other", "mirror_hint", valid_payload("mirror_hint", variant=1), T1)
    merge_input = published_input()
    state = merge(merge_input.record, merge_input.aliases, [*merge_input.events, first, second], default_trust())
    check_state(copy.deepcopy(state), default_trust())
    state["equivocations"][0]["slot"] = "backup"

    error = _document_error(lambda: check_state(_reseal(state), default_trust()))

    assert error.field == "equivocations[0].slot"
    assert error.reason == "differs from the merge of the listed events"


def test_check_state_names_applied_index() -> None:
    state = _partial_state()
    state["applied_event_ids"].reverse()

    error = _document_error(lambda: check_state(_reseal(state), default_trust()))

    assert error.field == "applied_event_ids[0]"


def test_check_state_bad_signature_listed() -> None:
    state = _partial_state()
    state["current"]["mirror_hints"][0]["signature_b64"] = signed_event(
        "doc-mirror", "mirror_hint", valid_payload("mirror_hint", variant=0), T1
    )["signature_b64"]

    error = _document_error(lambda: check_state(_reseal(state), default_trust()))

    assert error.field == "current"
    assert error.reason.endswith("is invalid: bad_signature")


def test_check_state_missing_hash() -> None:
    state = published_state()
    del state["state_sha256"]
    error = _document_error(lambda: check_state(state, default_trust()))
    assert error.field == "state_sha256"
    assert error.reason == "missing"


# Record lines ----------------------------------------------------------------------


def test_published_record_lines_pass() -> None:
    lines = fixture_path("records.jsonl").read_text(encoding="utf-8").splitlines()
    for text in lines:
        check_record_line(json.loads(text), default_trust())
    assert len(lines) == 50


def test_record_line_checks_listed() -> None:
    passed = check_record_line(record_line(RECORD_LINE_SUBJECT), default_trust())
    assert passed == ["pith_number form", "canonical_sha256 and pith_number from the record", "6 aliases"]


# (case id, change to a published record line, field named by the error)
RECORD_LINE_ERRORS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown_field", RECORD_LINE_SUBJECT, lambda r: r.__setitem__("note", 1), "note"),
    ("pith_number", RECORD_LINE_SUBJECT, lambda r: r.__setitem__("pith_number", SUBJECT), "pith_number"),
    ("canonical_sha256", RECORD_LINE_SUBJECT, lambda r: r.__setitem__("canonical_sha256", "00" * 32), "canonical_sha256"),
    ("record_list", RECORD_LINE_SUBJECT, lambda r: r.__setitem__("canonical_record", []), "canonical_record"),
    (
        "receipt_other_record",
        "pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQH",
        lambda r: r.__setitem__("canonical_sha256", "9d8a60d4cd6be8ee9f005dc3630dea01b6c6d8595c71762eecbdbbb77d0d5e60"),
        "pith_number",
    ),
    (
        "receipt_signature",
        "pith:2003:OMJFN3CZBZK4KRI4XCDIFRLNQH",
        lambda r: r.__setitem__("receipt_signature_b64", "A" * 86 + "=="),
        "receipt_signature_b64",
    ),
    ("alias_value", RECORD_LINE_SUBJECT, lambda r: r["source_aliases"][0].__setitem__("alias_value", "1110.0524"), "source_aliases[0].alias_value"),
]


@pytest.mark.parametrize(
    ("pith_number", "change", "field"), [case[1:] for case in RECORD_LINE_ERRORS], ids=[case[0] for case in RECORD_LINE_ERRORS]
)
def test_record_line_error(pith_number: str, change: Callable[[dict[str, Any]], None], field: str) -> None:
    line = record_line(pith_number)
    change(line)
    error = _document_error(lambda: check_record_line(line, default_trust()))
    assert error.field == field
