"""The deterministic merge on the published state plus signed test events."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from conftest import load_case
from helpers import (
    RECORD_LINE_SUBJECT,
    REGISTRY_FINGERPRINT,
    SUBJECT,
    key,
    published_input,
    published_state,
    record_created_payload,
    record_line,
    resign,
    signed_event,
    trust_with_registry,
    unsigned_registry_event,
    valid_payload,
    with_nonce,
)
from protocol import build_event, canonical_bytes, default_trust, merge, state_hash, validate_event

PUBLISHED_STATE_SHA256 = "639b10615b1eed11474946d569750a736e62592919f04e71d6102b4d3b2b43ce"
RECORD_CREATED_ID = "sha256:bd510d71ca4b7d34554903f18d34753f29becca9d98074b29bf529e9125b4eba"
GRAPH_SNAPSHOT_ID = "sha256:7d5068929a07627ce5d1204fd138d82d8b439902ff6148fd5641d0d106304220"
PUBLISHED_IDS = [RECORD_CREATED_ID, GRAPH_SNAPSHOT_ID]
T1 = "2026-06-01T00:00:00Z"
T2 = "2026-06-02T00:00:00Z"
T3 = "2026-06-03T00:00:00Z"


def _merge(*extra: Any, trust: Any = None) -> dict[str, Any]:
    """Merge the published events plus ``extra`` on the published subject."""
    merge_input = published_input()
    return merge(merge_input.record, merge_input.aliases, [*merge_input.events, *extra], trust or default_trust())


def _hint(label: str, created_at: str, variant: int = 0, slot: str = "primary") -> dict[str, Any]:
    payload = {"slot": slot, "url": f"https://{label}.example.org/v{variant}/"}
    return signed_event(label, "mirror_hint", payload, created_at)


def _state_form(raw: dict[str, Any]) -> dict[str, Any]:
    return validate_event(raw, raw["subject_pith_number"], default_trust()).state_form()


def _input_sha256(raw: Any) -> str:
    return hashlib.sha256(canonical_bytes(raw)).hexdigest()


def _correction(label: str, target_id: str, created_at: str = T3) -> dict[str, Any]:
    return signed_event(label, "correction", {"corrects_event_id": target_id, "reason": "wrong URL"}, created_at)


# The published state ----------------------------------------------------------


def test_published_events_reproduce_hash() -> None:
    state = _merge()
    assert state["state_sha256"] == PUBLISHED_STATE_SHA256
    assert state["applied_event_ids"] == PUBLISHED_IDS


def test_state_hash_excludes_own_key() -> None:
    state = _merge()
    body = {name: value for name, value in state.items() if name != "state_sha256"}
    assert state_hash(body) == hashlib.sha256(canonical_bytes(body)).hexdigest()
    assert state_hash(body) == PUBLISHED_STATE_SHA256


# Slots -------------------------------------------------------------------------


def test_newer_created_at_supersedes() -> None:
    old = _hint("mirror-a", T1, 0)
    new = _hint("mirror-a", T2, 1)

    state = _merge(new, old)

    assert state["current"]["mirror_hints"] == [_state_form(new)]
    assert state["event_count"] == 4
    assert state["valid_event_count"] == 4
    assert state["invalid_event_count"] == 0
    assert state["equivocations"] == []
    assert state["applied_event_ids"] == [*PUBLISHED_IDS, new["event_id"]]


def test_slots_of_other_signers_independent() -> None:
    first = _hint("mirror-a", T2, 0)
    second = _hint("mirror-b", T1, 0)

    state = _merge(first, second)

    assert state["current"]["mirror_hints"] == [_state_form(second), _state_form(first)]
    assert state["applied_event_ids"] == [*PUBLISHED_IDS, second["event_id"], first["event_id"]]


def test_other_slots_of_one_signer_independent() -> None:
    primary = _hint("mirror-a", T1, 0, slot="primary")
    backup = _hint("mirror-a", T1, 1, slot="backup")

    state = _merge(primary, backup)

    expected = sorted([primary, backup], key=lambda raw: raw["event_id"])
    assert state["current"]["mirror_hints"] == [_state_form(raw) for raw in expected]
    assert state["equivocation_count"] == 0


def test_equivocation_at_latest_time() -> None:
    first = _hint("mirror-a", T2, 0)
    second = _hint("mirror-a", T2, 1)
    older = _hint("mirror-a", T1, 2)

    state = _merge(first, second, older)

    ordered = sorted([first, second], key=lambda raw: raw["event_id"])
    assert state["current"]["mirror_hints"] == []
    assert state["equivocation_count"] == 1
    assert state["equivocations"] == [
        {
            "event_type": "mirror_hint",
            "signer_fingerprint": key("mirror-a").fingerprint,
            "slot": "primary",
            "created_at": T2,
            "events": [_state_form(raw) for raw in ordered],
        }
    ]
    assert state["valid_event_count"] == 5
    assert state["applied_event_ids"] == PUBLISHED_IDS


def test_old_equivocation_newer_winner() -> None:
    first = _hint("mirror-a", T1, 0)
    second = _hint("mirror-a", T1, 1)
    newer = _hint("mirror-a", T2, 2)

    state = _merge(first, second, newer)

    assert state["current"]["mirror_hints"] == [_state_form(newer)]
    assert [entry["created_at"] for entry in state["equivocations"]] == [T1]
    assert state["equivocations"][0]["events"] == [_state_form(raw) for raw in sorted([first, second], key=lambda raw: raw["event_id"])]
    assert state["equivocation_count"] == 1
    assert state["applied_event_ids"] == [*PUBLISHED_IDS, newer["event_id"]]


def test_equivocations_sorted_by_key() -> None:
    pairs = [(_hint(label, T1, 0), _hint(label, T1, 1)) for label in ("mirror-a", "mirror-b", "mirror-c")]
    events = [raw for pair in pairs for raw in pair]

    state = _merge(*reversed(events))

    fingerprints = [entry["signer_fingerprint"] for entry in state["equivocations"]]
    assert fingerprints == sorted(key(label).fingerprint for label in ("mirror-a", "mirror-b", "mirror-c"))
    assert state["equivocation_count"] == 3


# Corrections -------------------------------------------------------------------


def test_correction_withdraws_own_event() -> None:
    hint = _hint("mirror-a", T1)
    correction = _correction("mirror-a", hint["event_id"])

    state = _merge(hint, correction)

    assert state["current"]["mirror_hints"] == []
    assert state["current"]["corrections"] == [_state_form(correction)]
    assert state["applied_event_ids"] == [*PUBLISHED_IDS, correction["event_id"]]
    assert state["valid_event_count"] == 4


def test_correction_of_other_signer_ignored() -> None:
    hint = _hint("mirror-a", T1)
    correction = _correction("mirror-b", hint["event_id"])

    state = _merge(hint, correction)

    assert state["current"]["mirror_hints"] == [_state_form(hint)]
    assert state["current"]["corrections"] == [_state_form(correction)]
    assert state["applied_event_ids"] == [*PUBLISHED_IDS, correction["event_id"], hint["event_id"]]


def test_superseded_correction_withdraws_nothing() -> None:
    hint = _hint("mirror-a", T1)
    correction = _correction("mirror-a", hint["event_id"], T2)
    # A newer correction in the same slot (same target) supersedes the first.
    newer_payload = {"corrects_event_id": hint["event_id"], "reason": "still wrong"}
    newer = signed_event("mirror-a", "correction", newer_payload, T3)

    state = _merge(hint, correction, newer)

    assert state["current"]["mirror_hints"] == []
    assert state["current"]["corrections"] == [_state_form(newer)]


def test_correction_of_superseded_event() -> None:
    old = _hint("mirror-a", T1, 0)
    new = _hint("mirror-a", T2, 1)
    correction = _correction("mirror-a", old["event_id"])

    state = _merge(old, new, correction)

    assert state["current"]["mirror_hints"] == [_state_form(new)]


def test_correction_cannot_withdraw_correction() -> None:
    hint = _hint("mirror-a", T1)
    first = _correction("mirror-a", hint["event_id"], T2)
    second = _correction("mirror-a", first["event_id"], T3)

    state = _merge(hint, first, second)

    assert state["current"]["mirror_hints"] == []
    assert [entry["event_id"] for entry in state["current"]["corrections"]] == [first["event_id"], second["event_id"]]


def test_correction_cannot_withdraw_record_created() -> None:
    # An unsigned registry correction has the registry's fingerprint, like
    # the published record_created, but record_created is never withdrawn.
    payload = {"corrects_event_id": RECORD_CREATED_ID, "reason": "withdrawn"}
    correction = unsigned_registry_event("correction", payload, T1)

    state = _merge(correction)

    assert state["current"]["record_created"]["event_id"] == RECORD_CREATED_ID
    assert state["current"]["corrections"] == [_state_form(correction)]


def test_unsigned_correction_withdraws_unsigned() -> None:
    # Unsigned registry events carry no proof, so under "accept" an
    # unsigned correction can withdraw the published graph snapshot.
    payload = {"corrects_event_id": GRAPH_SNAPSHOT_ID, "reason": "withdrawn"}
    correction = unsigned_registry_event("correction", payload, T1)

    state = _merge(correction)

    assert state["current"]["graph_snapshots"] == []
    assert state["applied_event_ids"] == [RECORD_CREATED_ID, correction["event_id"]]


# Signed and unsigned registry events -------------------------------------------

REGISTRY = key("test-registry-key")
# The test registry key next to the real one, with unsigned events accepted.
MIXED_TRUST = trust_with_registry(REGISTRY, key_id="test-registry", keep_real_key=True)


def _signed_snapshot(created_at: str, variant: int = 0) -> dict[str, Any]:
    payload = valid_payload("graph_snapshot", variant=variant)
    return signed_event("test-registry-key", "graph_snapshot", payload, created_at, signer_type="pith_registry", key_id="test-registry")


def _unsigned_as_test_registry(event_type: str, payload: dict[str, Any], created_at: str) -> dict[str, Any]:
    return unsigned_registry_event(event_type, payload, created_at, key_id="test-registry", fingerprint=REGISTRY.fingerprint)


def _state_form_under(raw: dict[str, Any], trust: Any) -> dict[str, Any]:
    return validate_event(raw, raw["subject_pith_number"], trust).state_form()


def test_unsigned_cannot_supersede_signed() -> None:
    signed = _signed_snapshot(T1)
    fake = _unsigned_as_test_registry("graph_snapshot", valid_payload("graph_snapshot", variant=9), T2)

    state = _merge(signed, fake, trust=MIXED_TRUST)

    snapshots = [entry["event_id"] for entry in state["current"]["graph_snapshots"]]
    assert snapshots == [GRAPH_SNAPSHOT_ID, signed["event_id"]]
    assert state["valid_event_count"] == 4
    assert state["equivocations"] == []


def test_unsigned_cannot_equivocate_signed() -> None:
    signed = _signed_snapshot(T1)
    fake = _unsigned_as_test_registry("graph_snapshot", valid_payload("graph_snapshot", variant=9), T1)

    state = _merge(signed, fake, trust=MIXED_TRUST)

    snapshots = [entry["event_id"] for entry in state["current"]["graph_snapshots"]]
    assert snapshots == [GRAPH_SNAPSHOT_ID, signed["event_id"]]
    assert state["equivocation_count"] == 0


def test_unsigned_correction_cannot_withdraw_signed() -> None:
    signed = _signed_snapshot(T1)
    payload = {"corrects_event_id": signed["event_id"], "reason": "fake withdrawal"}
    fake = _unsigned_as_test_registry("correction", payload, T2)

    state = _merge(signed, fake, trust=MIXED_TRUST)

    snapshots = [entry["event_id"] for entry in state["current"]["graph_snapshots"]]
    assert snapshots == [GRAPH_SNAPSHOT_ID, signed["event_id"]]
    assert state["current"]["corrections"] == [_state_form_under(fake, MIXED_TRUST)]


def test_signed_correction_withdraws_unsigned() -> None:
    unsigned = _unsigned_as_test_registry("graph_snapshot", valid_payload("graph_snapshot", variant=3), T1)
    payload = {"corrects_event_id": unsigned["event_id"], "reason": "superseded by a signed snapshot"}
    correction = signed_event("test-registry-key", "correction", payload, T2, signer_type="pith_registry")

    state = _merge(unsigned, correction, trust=MIXED_TRUST)

    snapshots = [entry["event_id"] for entry in state["current"]["graph_snapshots"]]
    assert snapshots == [GRAPH_SNAPSHOT_ID]


def test_unsigned_equivocation_without_signed() -> None:
    first = _unsigned_as_test_registry("graph_snapshot", valid_payload("graph_snapshot", variant=1), T1)
    second = _unsigned_as_test_registry("graph_snapshot", valid_payload("graph_snapshot", variant=2), T1)

    state = _merge(first, second, trust=MIXED_TRUST)

    assert [entry["event_id"] for entry in state["current"]["graph_snapshots"]] == [GRAPH_SNAPSHOT_ID]
    assert state["equivocation_count"] == 1
    assert state["equivocations"][0]["signer_fingerprint"] == REGISTRY.fingerprint


def test_signed_beats_unsigned_same_id() -> None:
    signed = _signed_snapshot(T1)
    stripped = copy.deepcopy(signed)
    del stripped["signer"]["public_key_hex"]
    del stripped["signature_b64"]

    state = _merge(signed, stripped, trust=MIXED_TRUST)

    assert [entry["event_id"] for entry in state["current"]["graph_snapshots"]] == [GRAPH_SNAPSHOT_ID, signed["event_id"]]
    assert state["invalid_events"] == [
        {"event_id": signed["event_id"], "input_sha256": _input_sha256(stripped), "reason": "conflicting_event_id"}
    ]
    assert state["valid_event_count"] == 3
    assert state["event_count"] == 4


def test_unsigned_claiming_mirror_event_id() -> None:
    hint = _hint("mirror-a", T1)
    fake = unsigned_registry_event("graph_snapshot", valid_payload("graph_snapshot"), T1, event_id=hint["event_id"])

    state = _merge(hint, fake)

    assert state["current"]["mirror_hints"] == [_state_form(hint)]
    assert state["invalid_events"] == [
        {"event_id": hint["event_id"], "input_sha256": _input_sha256(fake), "reason": "conflicting_event_id"}
    ]


def test_unsigned_copies_same_state_form() -> None:
    published = published_input().events
    snapshot = next(raw for raw in published if raw["event_type"] == "graph_snapshot")
    copy_with_extra = {**copy.deepcopy(snapshot), "registry_note": "dropped"}

    state = _merge(copy_with_extra)

    assert state["state_sha256"] == PUBLISHED_STATE_SHA256


def test_signed_duplicate_smaller_signature() -> None:
    hint = _hint("mirror-a", T1)
    copies = [with_nonce(hint, key("mirror-a"), nonce) for nonce in (7, 11)]
    smallest = min([hint, *copies], key=lambda raw: raw["signature_b64"])

    state = _merge(copies[0], hint, copies[1])

    assert state["current"]["mirror_hints"] == [_state_form(smallest)]
    assert state["valid_event_count"] == 3
    assert state["invalid_event_count"] == 0
    assert state == _merge(smallest)


# record_created ---------------------------------------------------------------


def _record_setup() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    line = record_line(RECORD_LINE_SUBJECT)
    return line["canonical_record"], line["source_aliases"]


def _record_created(label: str, key_id: str, created_at: str) -> dict[str, Any]:
    return build_event(
        key(label),
        event_type="record_created",
        subject=RECORD_LINE_SUBJECT,
        payload=record_created_payload(key(label), key_id),
        created_at=created_at,
        key_id=key_id,
        signer_id=f"{key_id}.example.org",
        signer_type="pith_registry",
    )


def _two_registries() -> Any:
    from protocol import EVENT_TYPES, TrustConfig

    allowed = {event_type: ["any"] for event_type in EVENT_TYPES}
    allowed["record_created"] = ["registry"]
    allowed["graph_snapshot"] = ["registry"]
    return TrustConfig.from_document(
        {
            "trust_version": 1,
            "registry_keys": [
                {"key_id": "registry-one", "public_key_hex": key("registry-one").public_key_hex},
                {"key_id": "registry-two", "public_key_hex": key("registry-two").public_key_hex},
            ],
            "unsigned_registry_events": "reject",
            "allowed_signers": allowed,
        }
    )


def test_record_created_earliest_shown() -> None:
    record, aliases = _record_setup()
    early = _record_created("registry-two", "registry-two", T1)
    late = _record_created("registry-one", "registry-one", T2)

    state = merge(record, aliases, [late, early], _two_registries())

    assert state["current"]["record_created"]["event_id"] == early["event_id"]
    assert state["applied_event_ids"] == [early["event_id"]]
    assert state["valid_event_count"] == 2


def test_record_created_tie_smaller_id() -> None:
    record, aliases = _record_setup()
    first = _record_created("registry-one", "registry-one", T1)
    second = _record_created("registry-two", "registry-two", T1)

    state = merge(record, aliases, [first, second], _two_registries())

    assert state["current"]["record_created"]["event_id"] == min(first["event_id"], second["event_id"])


def test_record_created_superseded_in_slot() -> None:
    record, aliases = _record_setup()
    old = _record_created("registry-one", "registry-one", T1)
    new = _record_created("registry-one", "registry-one", T2)

    state = merge(record, aliases, [old, new], _two_registries())

    assert state["current"]["record_created"]["event_id"] == new["event_id"]


def test_record_created_none_without_events() -> None:
    record, aliases = _record_setup()
    state = merge(record, aliases, [], _two_registries())
    assert state["current"]["record_created"] is None
    assert state["applied_event_ids"] == []
    assert state["event_count"] == 0


# Invalid inputs and duplicates ------------------------------------------------


def test_invalid_events_listed_by_hash() -> None:
    hint = _hint("mirror-a", T1)
    forged = copy.deepcopy(hint)
    forged["payload"]["url"] = "https://attacker.example.net/"
    malformed_id = {**copy.deepcopy(hint), "event_id": "sha256:XYZ"}
    not_object = ["not", "an", "event"]

    state = _merge(hint, forged, malformed_id, not_object)

    expected = sorted(
        [
            {"event_id": hint["event_id"], "input_sha256": _input_sha256(forged), "reason": "event_id_mismatch"},
            {"event_id": None, "input_sha256": _input_sha256(malformed_id), "reason": "malformed_event_id"},
            {"event_id": None, "input_sha256": _input_sha256(not_object), "reason": "malformed_envelope"},
        ],
        key=lambda entry: entry["input_sha256"],
    )
    assert state["invalid_events"] == expected
    assert state["invalid_event_count"] == 3
    assert state["valid_event_count"] == 3
    assert state["event_count"] == 6
    assert state["current"]["mirror_hints"] == [_state_form(hint)]


def test_invalid_input_hash_exact() -> None:
    raw = {"event_id": "sha256:" + "0" * 64}
    state = _merge(raw)
    assert state["invalid_events"] == [
        {
            "event_id": "sha256:" + "0" * 64,
            "input_sha256": hashlib.sha256(b'{"event_id":"sha256:' + b"0" * 64 + b'"}').hexdigest(),
            "reason": "malformed_envelope",
        }
    ]


def test_duplicates_collapse() -> None:
    hint = _hint("mirror-a", T1)
    forged = {**copy.deepcopy(hint), "created_at": T2}

    once = _merge(hint, forged)
    many = _merge(*[copy.deepcopy(raw) for raw in (hint, forged, hint, forged, forged)])

    assert many == once
    assert many["event_count"] == 4
    assert many["invalid_event_count"] == 1


def test_published_events_duplicated() -> None:
    merge_input = published_input()
    state = _merge(*copy.deepcopy(merge_input.events))
    assert state["state_sha256"] == PUBLISHED_STATE_SHA256


def test_reject_unsigned_registry_events() -> None:
    trust = trust_with_registry(None, unsigned="reject", keep_real_key=True)
    merge_input = published_input()

    state = _merge(trust=trust)

    expected = sorted(
        [
            {"event_id": raw["event_id"], "input_sha256": _input_sha256(raw), "reason": "unsigned_registry_event_rejected"}
            for raw in merge_input.events
        ],
        key=lambda entry: entry["input_sha256"],
    )
    assert state["invalid_events"] == expected
    assert state["valid_event_count"] == 0
    assert state["current"]["graph_snapshots"] == []
    assert state["current"]["record_created"] is None
    assert state["applied_event_ids"] == []
    assert state["state_sha256"] != PUBLISHED_STATE_SHA256


def test_alias_copies_merged() -> None:
    merge_input = published_input()
    aliases = merge_input.aliases
    later = [{**alias, "created_at": "2026-06-01T00:00:00Z"} for alias in aliases]
    bare = [{name: value for name, value in alias.items() if name != "created_at"} for alias in aliases]

    state = merge(merge_input.record, [*later, *bare, *aliases], merge_input.events, default_trust())

    assert state["state_sha256"] == PUBLISHED_STATE_SHA256


def test_published_state_document_equal() -> None:
    assert _merge() == published_state()


# The gossip vector with equal and later timestamps -----------------------------

C12_LABEL = "gossip-mirror-test-key-1"
# Regression pins: the state hashes of the two scenarios under this merge.
C12_EQUAL_SHA256 = "05ea6ce4dfb266b326e54ac8ace223fd6ee7b4c303d9903f2ac2fb08cd9d26f7"
C12_LATER_SHA256 = "cab386b4807f96f4e2f3f9e505ba75291ebc8ec3f475e5ab3a953566086583d5"


def c12_events() -> dict[str, dict[str, Any]]:
    case = load_case("C12")
    events = {}
    for name, vector in case["events"].items():
        assert key(C12_LABEL).public_key_hex == vector["pubkey"]
        payload = {"slot": vector["slot"], "url": vector["payload"]["url"]}
        events[name] = signed_event(C12_LABEL, vector["kind"], payload, vector["created_at"])
    return events


def c12_scenario(name: str) -> dict[str, Any]:
    return next(scenario for scenario in load_case("C12")["scenarios"] if scenario["name"] == name)


def test_c12_equal_timestamps_equivocate() -> None:
    """A and B: one key, slot ``primary``, one ``created_at``, two URLs.

    The vector assumes that the smaller id wins a tie. Under this merge a
    tie is an equivocation: both orders give one state, with no mirror hint
    in ``current`` and A and B listed as proof in ``equivocations``.
    """
    events = c12_events()
    scenario = c12_scenario("equal_timestamp_both_orders")

    first = _merge(*[events[name] for name in scenario["replica_1_receives"]])
    second = _merge(*[events[name] for name in scenario["replica_2_receives"]])

    assert first["state_sha256"] == second["state_sha256"]
    assert first["state_sha256"] == C12_EQUAL_SHA256
    assert first == second
    assert first["current"]["mirror_hints"] == []
    ordered = sorted([events["A"], events["B"]], key=lambda raw: raw["event_id"])
    assert first["equivocations"] == [
        {
            "event_type": "mirror_hint",
            "signer_fingerprint": key(C12_LABEL).fingerprint,
            "slot": "primary",
            "created_at": "2026-05-18T00:22:39Z",
            "events": [_state_form(raw) for raw in ordered],
        }
    ]
    assert first["applied_event_ids"] == PUBLISHED_IDS
    assert first["valid_event_count"] == 4


def test_c12_later_timestamp_wins() -> None:
    events = c12_events()
    scenario = c12_scenario("later_timestamp_wins")

    first = _merge(*[events[name] for name in scenario["replica_1_receives"]])
    second = _merge(*[events[name] for name in scenario["replica_2_receives"]])

    assert first["state_sha256"] == second["state_sha256"]
    assert first["state_sha256"] == C12_LATER_SHA256
    assert first == second
    assert first["current"]["mirror_hints"] == [_state_form(events["C_later"])]
    assert first["current"]["mirror_hints"][0]["payload"]["url"] == "https://mirror-c.example.org/bundles/"
    assert first["equivocation_count"] == 1
    assert first["equivocations"][0]["created_at"] == "2026-05-18T00:22:39Z"
    assert first["applied_event_ids"] == [*PUBLISHED_IDS, events["C_later"]["event_id"]]


@pytest.mark.parametrize("name", ["A", "B", "C_later"])
def test_c12_events_resigned_valid(name: str) -> None:
    event = validate_event(c12_events()[name], SUBJECT, default_trust())
    assert event.signer["public_key_hex"] == load_case("C12")["events"][name]["pubkey"]
    assert event.slot == "primary"


def test_registry_fingerprint_constant() -> None:
    assert REGISTRY_FINGERPRINT == "8d4b5ee74e4693bcd1df2446408b0d54"


def test_resign_helper_matches_build() -> None:
    hint = _hint("mirror-a", T1)
    assert resign(hint, key("mirror-a")) == hint
