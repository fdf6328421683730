"""Event envelope v1: building, validating, and every rejection code."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import (
    RECORD_LINE_SUBJECT,
    REGISTRY_FINGERPRINT,
    SUBJECT,
    key,
    published_input,
    receipt_for,
    record_created_payload,
    resign,
    signed_event,
    trust_with_registry,
    unsigned_registry_event,
    valid_payload,
)
from protocol import (
    ENVELOPE_DOMAIN,
    EVENT_TYPES,
    EventError,
    TARGETS,
    build_event,
    canonical_bytes,
    compute_event_id,
    default_trust,
    merge,
    validate_event,
)
from protocol.merge import MAX_EVENT_BYTES

REGISTRY = key("test-registry-key")
# A replica that checks every event: unsigned registry events are invalid.
REGISTRY_TRUST = trust_with_registry(REGISTRY, key_id="test-registry", unsigned="reject")
MIRROR = "mirror-key-1"
# Types any key may sign under the default trust configuration.
OPEN_TYPES = [t for t in EVENT_TYPES if t not in ("record_created", "graph_snapshot")]
# Identity point of Ed25519: every signature (R = identity, S = 0) verifies against it.
IDENTITY_KEY_HEX = "01" + "00" * 31


def _registry_record_created(created_at: str = "2026-06-01T00:00:00Z") -> dict[str, Any]:
    return build_event(
        REGISTRY,
        event_type="record_created",
        subject=RECORD_LINE_SUBJECT,
        payload=record_created_payload(REGISTRY, "test-registry"),
        created_at=created_at,
        key_id="test-registry",
        signer_id="registry.example.org",
        signer_type="pith_registry",
    )


def _rejection(raw: Any, subject: str = SUBJECT, trust: Any = None) -> EventError:
    with pytest.raises(EventError) as caught:
        validate_event(raw, subject, trust or default_trust())
    return caught.value


def _hint() -> dict[str, Any]:
    return signed_event(MIRROR, "mirror_hint", valid_payload("mirror_hint"))


# Round trips ----------------------------------------------------------------


@pytest.mark.parametrize("event_type", OPEN_TYPES)
def test_build_validate_round_trip(event_type: str) -> None:
    payload = valid_payload(event_type)
    raw = signed_event(MIRROR, event_type, payload, "2026-06-01T00:00:00Z")

    event = validate_event(raw, SUBJECT, default_trust())

    assert event.event_id == raw["event_id"]
    assert event.event_type == event_type
    assert event.target == TARGETS[event_type]
    assert event.payload == payload
    assert event.signed is True
    assert event.signer_fingerprint == key(MIRROR).fingerprint
    assert event.bundle_form() == raw


def test_event_id_covers_domain_and_body() -> None:
    raw = _hint()
    body = {name: raw[name] for name in raw if name not in ("event_id", "signature_b64")}
    expected = hashlib.sha256(ENVELOPE_DOMAIN + canonical_bytes(body)).hexdigest()
    assert raw["event_id"] == "sha256:" + expected
    assert compute_event_id(body) == raw["event_id"]


def test_graph_snapshot_round_trip_registry() -> None:
    raw = signed_event("test-registry-key", "graph_snapshot", valid_payload("graph_snapshot"), signer_type="pith_registry")
    event = validate_event(raw, SUBJECT, REGISTRY_TRUST)
    assert event.slot == "graph"
    assert event.signed is True


def test_record_created_round_trip_test_registry() -> None:
    raw = _registry_record_created()
    event = validate_event(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST)
    assert event.event_type == "record_created"
    assert event.slot == "record"
    assert event.payload["canonical_sha256"] == record_created_payload(REGISTRY, "test-registry")["canonical_sha256"]


def test_published_record_created_validates() -> None:
    events = published_input().events
    raw = next(event for event in events if event["event_type"] == "record_created")
    event = validate_event(raw, SUBJECT, default_trust())
    assert event.event_id == "sha256:bd510d71ca4b7d34554903f18d34753f29becca9d98074b29bf529e9125b4eba"
    assert event.signed is False
    assert event.signer_fingerprint == REGISTRY_FINGERPRINT


def test_published_graph_snapshot_validates() -> None:
    events = published_input().events
    raw = next(event for event in events if event["event_type"] == "graph_snapshot")
    event = validate_event(raw, SUBJECT, default_trust())
    assert event.event_id == "sha256:7d5068929a07627ce5d1204fd138d82d8b439902ff6148fd5641d0d106304220"
    assert event.signed is False


def test_build_event_rejects_invalid_payload() -> None:
    with pytest.raises(EventError) as caught:
        build_event(
            key(MIRROR),
            event_type="mirror_hint",
            subject=SUBJECT,
            payload={"slot": "primary", "url": "file:///etc/passwd"},
            created_at="2026-06-01T00:00:00Z",
            key_id="k",
            signer_id="s",
            signer_type="mirror",
        )
    assert caught.value.code == "invalid_payload"
    assert caught.value.field == "payload.url"


def test_build_event_rejects_unknown_type() -> None:
    with pytest.raises(EventError) as caught:
        build_event(
            key(MIRROR),
            event_type="bogus",
            subject=SUBJECT,
            payload={},
            created_at="2026-06-01T00:00:00Z",
            key_id="k",
            signer_id="s",
            signer_type="mirror",
        )
    assert caught.value.code == "unknown_event_type"


# Rejection codes -------------------------------------------------------------


def _resigned(change: Callable[[dict[str, Any]], None], label: str = MIRROR) -> dict[str, Any]:
    raw = _hint()
    change(raw)
    return resign(raw, key(label))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = raw
        for name in parents:
            target = target[name]
        target[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = raw
        for name in parents:
            target = target[name]
        del target[last]

    return change


# (case id, event builder, expected code, expected field)
SIGNED_REJECTIONS: list[tuple[str, Callable[[], Any], str, str]] = [
    ("not_object", lambda: [_hint()], "malformed_envelope", ""),
    ("missing_created_at", lambda: {k: v for k, v in _hint().items() if k != "created_at"}, "malformed_envelope", "created_at"),
    ("missing_event_id", lambda: {k: v for k, v in _hint().items() if k != "event_id"}, "malformed_envelope", "event_id"),
    ("unknown_envelope_field", lambda: {**_hint(), "extra": 1}, "malformed_envelope", "extra"),
    ("unknown_type", lambda: _resigned(_set("event_type", "bogus")), "unknown_event_type", "event_type"),
    ("unhashable_type", lambda: {**_hint(), "event_type": ["mirror_hint"]}, "unknown_event_type", "event_type"),
    ("event_id_uppercase", lambda: {**_hint(), "event_id": _hint()["event_id"].upper()}, "malformed_event_id", "event_id"),
    ("event_id_no_prefix", lambda: {**_hint(), "event_id": _hint()["event_id"][7:]}, "malformed_event_id", "event_id"),
    ("other_subject", lambda: _resigned(_set("subject_pith_number", RECORD_LINE_SUBJECT)), "wrong_subject", "subject_pith_number"),
    ("graph_target", lambda: _resigned(_set("target", "graph")), "wrong_target", "target"),
    ("timestamp_space", lambda: _resigned(_set("created_at", "2026-06-01 00:00:00Z")), "malformed_timestamp", "created_at"),
    ("timestamp_fraction", lambda: _resigned(_set("created_at", "2026-06-01T00:00:00.5Z")), "malformed_timestamp", "created_at"),
    ("timestamp_feb_30", lambda: _resigned(_set("created_at", "2026-02-30T00:00:00Z")), "malformed_timestamp", "created_at"),
    ("signer_list", lambda: _resigned(_set("signer", [])), "malformed_signer", "signer"),
    ("signer_extra_field", lambda: _resigned(_set("signer.extra", "x")), "malformed_signer", "signer"),
    ("signer_no_key_id", lambda: _resigned(_delete("signer.key_id")), "malformed_signer", "signer"),
    ("key_id_empty", lambda: _resigned(_set("signer.key_id", "")), "malformed_signer", "signer.key_id"),
    ("signer_id_newline", lambda: _resigned(_set("signer.signer_id", "a\nb")), "malformed_signer", "signer.signer_id"),
    ("signer_type_upper", lambda: _resigned(_set("signer.signer_type", "Mirror")), "malformed_signer", "signer.signer_type"),
    ("fingerprint_upper", lambda: _resigned(_set("signer.public_key_fingerprint", key(MIRROR).fingerprint.upper())), "malformed_signer", "signer.public_key_fingerprint"),
    ("fingerprint_other_key", lambda: _resigned(_set("signer.public_key_fingerprint", key("other").fingerprint)), "malformed_signer", "signer.public_key_fingerprint"),
    ("identity_key", lambda: _resigned(_set("signer.public_key_hex", IDENTITY_KEY_HEX)), "weak_public_key", "signer.public_key_hex"),
    ("key_hex_upper", lambda: _resigned(_set("signer.public_key_hex", key(MIRROR).public_key_hex.upper())), "weak_public_key", "signer.public_key_hex"),
    ("file_url", lambda: _resigned(_set("payload.url", "file:///etc/passwd")), "invalid_payload", "payload.url"),
    ("payload_extra", lambda: _resigned(_set("payload.extra", "x")), "invalid_payload", "payload.extra"),
    ("payload_list", lambda: _resigned(_set("payload", [])), "invalid_payload", "payload"),
    ("id_of_other_body", lambda: {**_hint(), "event_id": signed_event(MIRROR, "mirror_hint", valid_payload("mirror_hint", variant=1))["event_id"]}, "event_id_mismatch", "event_id"),
    ("no_signature", lambda: {k: v for k, v in _hint().items() if k != "signature_b64"}, "missing_signature", "signature_b64"),
    ("signature_short", lambda: {**_hint(), "signature_b64": "AAAA"}, "malformed_signature", "signature_b64"),
    ("signature_null", lambda: {**_hint(), "signature_b64": None}, "malformed_signature", "signature_b64"),
    ("signature_urlsafe", lambda: {**_hint(), "signature_b64": "-" * 86 + "=="}, "malformed_signature", "signature_b64"),
    ("signature_other_event", lambda: {**_hint(), "signature_b64": signed_event(MIRROR, "mirror_hint", valid_payload("mirror_hint", variant=1))["signature_b64"]}, "bad_signature", "signature_b64"),
    ("signed_by_other_key", lambda: {**_hint(), "signature_b64": resign(_hint(), key("other"))["signature_b64"]}, "bad_signature", "signature_b64"),
    ("graph_by_mirror_key", lambda: signed_event(MIRROR, "graph_snapshot", valid_payload("graph_snapshot")), "signer_not_trusted", "signer"),
]


@pytest.mark.parametrize(
    ("build", "code", "field"),
    [case[1:] for case in SIGNED_REJECTIONS],
    ids=[case[0] for case in SIGNED_REJECTIONS],
)
def test_signed_rejection_code(build: Callable[[], Any], code: str, field: str) -> None:
    error = _rejection(build())
    assert error.code == code
    assert error.field == field


def test_malleable_signature_rejected() -> None:
    # S + L satisfies the same verification equation as S, so a verifier
    # without the S < L check would accept a second spelling of one signature.
    import base64

    order = 2**252 + 27742317777372353535851937790883648493
    raw = _hint()
    signature = base64.b64decode(raw["signature_b64"])
    s_value = int.from_bytes(signature[32:], "little") + order
    raw["signature_b64"] = base64.b64encode(signature[:32] + s_value.to_bytes(32, "little")).decode()

    error = _rejection(raw)

    assert error.code == "malformed_signature"
    assert error.field == "signature_b64"


def test_unsigned_unknown_key_id_not_trusted() -> None:
    raw = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot"), key_id="other-registry")
    error = _rejection(raw)
    assert error.code == "signer_not_trusted"
    assert error.field == "signer.key_id"


def test_unsigned_wrong_fingerprint_malformed() -> None:
    raw = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot"), fingerprint=key("x").fingerprint)
    error = _rejection(raw)
    assert error.code == "malformed_signer"
    assert error.field == "signer.public_key_fingerprint"


def test_unsigned_non_registry_type_malformed() -> None:
    raw = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot"))
    raw["signer"]["signer_type"] = "mirror"
    error = _rejection(raw)
    assert error.code == "malformed_signer"
    assert error.field == "signer.signer_type"


def test_unsigned_rejected_by_trust() -> None:
    events = published_input().events
    raw = next(event for event in events if event["event_type"] == "graph_snapshot")
    trust = trust_with_registry(None, unsigned="reject", keep_real_key=True)
    error = _rejection(raw, trust=trust)
    assert error.code == "unsigned_registry_event_rejected"
    assert error.field == "signer"


def test_unsigned_registry_bad_payload() -> None:
    raw = unsigned_registry_event("graph_snapshot", {"graph_snapshot": []})
    error = _rejection(raw)
    assert error.code == "invalid_payload"
    assert error.field == "payload.graph_snapshot"


def test_signed_record_created_bad_receipt() -> None:
    raw = _registry_record_created()
    raw["payload"]["receipt"] = receipt_for(key("not-the-registry"), "test-registry", raw["payload"]["canonical_sha256"])
    raw = resign(raw, REGISTRY)
    error = _rejection(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST)
    assert error.code == "bad_receipt"
    assert error.field == "payload.receipt.public_key_fingerprint"


def test_receipt_signature_by_other_key() -> None:
    raw = _registry_record_created()
    receipt = raw["payload"]["receipt"]
    receipt["signature_b64"] = receipt_for(key("not-the-registry"), "test-registry", receipt["canonical_sha256"])["signature_b64"]
    raw = resign(raw, REGISTRY)
    error = _rejection(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST)
    assert error.code == "bad_receipt"
    assert error.field == "payload.receipt.signature_b64"


def test_receipt_unknown_key_id() -> None:
    raw = _registry_record_created()
    raw["payload"]["receipt"]["key_id"] = "unknown"
    raw = resign(raw, REGISTRY)
    error = _rejection(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST)
    assert error.code == "bad_receipt"
    assert error.field == "payload.receipt.key_id"


def test_unsigned_record_created_bad_receipt() -> None:
    events = published_input().events
    raw = copy.deepcopy(next(event for event in events if event["event_type"] == "record_created"))
    raw["payload"]["receipt"]["signature_b64"] = receipt_for(key("x"), "x", "00" * 32)["signature_b64"]
    error = _rejection(raw)
    assert error.code == "bad_receipt"
    assert error.field == "payload.receipt.signature_b64"


# (case id, change to the payload of a signed record_created, expected field)
RECORD_MISMATCHES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("sha256", lambda p: p.__setitem__("canonical_sha256", "00" * 32), "payload.canonical_sha256"),
    ("source_id", lambda p: p.__setitem__("source_id", "1110.0524"), "payload.source_id"),
    ("source_kind", lambda p: p.__setitem__("source_kind", "doi"), "payload.source_kind"),
    ("source_version", lambda p: p.__setitem__("source_version", 2), "payload.source_version"),
]


@pytest.mark.parametrize(
    ("change", "field"), [case[1:] for case in RECORD_MISMATCHES], ids=[case[0] for case in RECORD_MISMATCHES]
)
def test_record_mismatch_field(change: Callable[[dict[str, Any]], None], field: str) -> None:
    raw = _registry_record_created()
    change(raw["payload"])
    raw = resign(raw, REGISTRY)
    error = _rejection(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST)
    assert error.code == "record_mismatch"
    assert error.field == field


def test_record_of_other_subject() -> None:
    # A correct record and receipt, but for another Pith number than the subject.
    raw = _registry_record_created()
    raw["subject_pith_number"] = SUBJECT
    raw = resign(raw, REGISTRY)
    error = _rejection(raw, SUBJECT, REGISTRY_TRUST)
    assert error.code == "record_mismatch"
    assert error.field == "payload.canonical_record"


def test_record_created_by_mirror_key() -> None:
    raw = _registry_record_created()
    raw["signer"]["public_key_hex"] = key(MIRROR).public_key_hex
    raw["signer"]["public_key_fingerprint"] = key(MIRROR).fingerprint
    raw = resign(raw, key(MIRROR))
    error = _rejection(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST)
    assert error.code == "signer_not_trusted"
    assert error.field == "signer"


def test_event_too_large_in_merge() -> None:
    merge_input = published_input()
    payload = {"graph_snapshot": {"blob": "x" * MAX_EVENT_BYTES}}
    raw = unsigned_registry_event("graph_snapshot", payload, "2026-06-02T00:00:00Z")

    state = merge(merge_input.record, merge_input.aliases, [*merge_input.events, raw], default_trust())

    expected = hashlib.sha256(canonical_bytes(raw)).hexdigest()
    assert state["invalid_events"] == [{"event_id": raw["event_id"], "input_sha256": expected, "reason": "event_too_large"}]


def test_conflicting_event_id_in_merge() -> None:
    merge_input = published_input()
    first = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot", variant=1), "2026-06-02T00:00:00Z")
    second = unsigned_registry_event(
        "graph_snapshot", valid_payload("graph_snapshot", variant=2), "2026-06-02T00:00:00Z", event_id=first["event_id"]
    )

    state = merge(merge_input.record, merge_input.aliases, [*merge_input.events, first, second], default_trust())

    reasons = sorted((entry["event_id"], entry["reason"]) for entry in state["invalid_events"])
    assert reasons == [(first["event_id"], "conflicting_event_id")] * 2


# Forgeries --------------------------------------------------------------------


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _leaves(item, (*path, name))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _changed_values(value: Any) -> list[Any]:
    """Return values that differ from ``value``, including a change of type."""
    if isinstance(value, bool):
        return [not value, None]
    if isinstance(value, int):
        return [value + 1, str(value)]
    if isinstance(value, str):
        last = "B" if value.endswith("A") else "A"
        return [value[:-1] + last, value + " ", None]
    if value is None:
        return [0]
    return [None]


def _replace(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    forged = copy.deepcopy(event)
    target = forged
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return forged


def _forgery_cases() -> list[tuple[str, dict[str, Any], str, Any]]:
    cases = [(event_type, signed_event(MIRROR, event_type, valid_payload(event_type)), SUBJECT, default_trust()) for event_type in OPEN_TYPES]
    cases.append(("record_created", _registry_record_created(), RECORD_LINE_SUBJECT, REGISTRY_TRUST))
    cases.append(
        (
            "graph_snapshot_registry",
            signed_event("test-registry-key", "graph_snapshot", valid_payload("graph_snapshot"), signer_type="pith_registry"),
            SUBJECT,
            REGISTRY_TRUST,
        )
    )
    return cases


FORGERY_CASES = _forgery_cases()


@pytest.mark.parametrize(("name", "raw", "subject", "trust"), FORGERY_CASES, ids=[case[0] for case in FORGERY_CASES])
def test_forged_leaf_never_valid(name: str, raw: dict[str, Any], subject: str, trust: Any) -> None:
    validate_event(raw, subject, trust)
    checked = 0
    for path, value in _leaves(raw):
        for changed in _changed_values(value):
            forged = _replace(raw, path, changed)
            with pytest.raises(EventError):
                validate_event(forged, subject, trust)
            checked += 1
    assert checked >= 20


def test_forged_field_removal_never_valid() -> None:
    raw = _registry_record_created()
    for path, _ in _leaves(raw):
        forged = copy.deepcopy(raw)
        target = forged
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        with pytest.raises(EventError):
            validate_event(forged, RECORD_LINE_SUBJECT, REGISTRY_TRUST)


def test_stripped_signature_accept_mode() -> None:
    # Without public_key_hex a registry-signed event reads as an unsigned
    # registry event with the same id and content. Only a trust
    # configuration that accepts unsigned registry events accepts it.
    raw = _registry_record_created()
    del raw["signer"]["public_key_hex"]
    del raw["signature_b64"]
    accepting = trust_with_registry(REGISTRY, key_id="test-registry", unsigned="accept")

    event = validate_event(raw, RECORD_LINE_SUBJECT, accepting)

    assert event.signed is False
    assert event.event_id == _registry_record_created()["event_id"]
    assert _rejection(raw, RECORD_LINE_SUBJECT, REGISTRY_TRUST).code == "unsigned_registry_event_rejected"


def test_forged_signer_block_swap() -> None:
    # The body names another key and the id is recomputed, but the signature
    # is still the original signer's.
    raw = _hint()
    other = key("other")
    raw["signer"]["public_key_hex"] = other.public_key_hex
    raw["signer"]["public_key_fingerprint"] = other.fingerprint
    original_signature = raw["signature_b64"]
    raw = resign(raw, other)
    raw["signature_b64"] = original_signature

    error = _rejection(raw)

    assert error.code == "bad_signature"
    assert error.field == "signature_b64"
