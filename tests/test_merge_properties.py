"""Property tests: the merge is a function of the set of its inputs.

Events come from a small pre-signed pool: two mirror keys and a test
registry key, two slots, two or three timestamps and two contents per slot.
So generated sets contain supersessions, equivocations, second signatures,
signed and unsigned registry events, corrections and forgeries.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from hypothesis import HealthCheck, Phase, event, example, find, given, settings, target
from hypothesis import strategies as st

from helpers import (
    REGISTRY_FINGERPRINT,
    key,
    published_input,
    signed_event,
    trust_with_registry,
    unsigned_registry_event,
    valid_payload,
    with_nonce,
)
from protocol import canonical_bytes, check_state, emit_bundle, merge

TIMES = ("2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z", "2026-06-03T00:00:00Z")
MIRROR_LABELS = ("prop-mirror-a", "prop-mirror-b")
SLOTS = ("primary", "backup")
REGISTRY_LABEL = "prop-registry"
REGISTRY_KEY_ID = "prop-registry"
# The published registry key plus the test registry key; unsigned registry
# events are accepted, so both signed and unsigned registry events occur.
TRUST = trust_with_registry(key(REGISTRY_LABEL), key_id=REGISTRY_KEY_ID, keep_real_key=True)

# find() only has to show that the pool produces a case, so it skips shrinking.
FIND_SETTINGS = settings(database=None, max_examples=2000, phases=[Phase.generate])
PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)


def _unsigned_test_registry(event_type: str, payload: dict[str, Any], created_at: str) -> dict[str, Any]:
    fingerprint = key(REGISTRY_LABEL).fingerprint
    return unsigned_registry_event(event_type, payload, created_at, key_id=REGISTRY_KEY_ID, fingerprint=fingerprint)


def _registry_signed(event_type: str, payload: dict[str, Any], created_at: str) -> dict[str, Any]:
    return signed_event(REGISTRY_LABEL, event_type, payload, created_at, signer_type="pith_registry", key_id=REGISTRY_KEY_ID)


@functools.cache
def _pool_json() -> str:
    """Return the pool as JSON text of {name: event}, mirror hints first."""
    pool: dict[str, dict[str, Any]] = {}

    hints = {}
    for label in MIRROR_LABELS:
        for slot in SLOTS:
            for created_at in TIMES[:2]:
                for variant in (0, 1):
                    payload = {"slot": slot, "url": f"https://{label}.example.org/{slot}/v{variant}/"}
                    hints[label, slot, created_at, variant] = signed_event(label, "mirror_hint", payload, created_at)
                    pool[f"hint_{label}_{slot}_{created_at}_v{variant}"] = hints[label, slot, created_at, variant]

    signed_snapshots = {}
    unsigned_snapshots = {}
    for created_at in TIMES[:2]:
        for variant in (0, 1):
            payload = valid_payload("graph_snapshot", variant=variant)
            signed_snapshots[created_at, variant] = _registry_signed("graph_snapshot", payload, created_at)
            unsigned_snapshots[created_at, variant] = _unsigned_test_registry("graph_snapshot", payload, created_at)
            pool[f"signed_snapshot_{created_at}_v{variant}"] = signed_snapshots[created_at, variant]
            pool[f"unsigned_snapshot_{created_at}_v{variant}"] = unsigned_snapshots[created_at, variant]

    # An unsigned copy with a field the state does not carry, and an unsigned
    # event that claims an existing id with other content.
    plain = unsigned_snapshots[TIMES[0], 0]
    pool["unsigned_with_extra_field"] = {**copy.deepcopy(plain), "registry_note": "not in the state"}
    conflicting = _unsigned_test_registry("graph_snapshot", valid_payload("graph_snapshot", variant=7), TIMES[0])
    pool["unsigned_conflicting_id"] = {**conflicting, "event_id": plain["event_id"]}
    # A registry-signed event with its signature stripped claims the signed id.
    stripped = copy.deepcopy(signed_snapshots[TIMES[0], 0])
    del stripped["signer"]["public_key_hex"]
    del stripped["signature_b64"]
    pool["stripped_signed_snapshot"] = stripped

    published = published_input().events
    published_snapshot = next(raw for raw in published if raw["event_type"] == "graph_snapshot")
    targets = {
        "mirror": hints[MIRROR_LABELS[0], "primary", TIMES[0], 0]["event_id"],
        "signed_snapshot": signed_snapshots[TIMES[1], 0]["event_id"],
        "unsigned_snapshot": unsigned_snapshots[TIMES[1], 1]["event_id"],
    }
    for name, target_id in targets.items():
        payload = {"corrects_event_id": target_id, "reason": "withdrawn"}
        pool[f"mirror_corrects_{name}"] = signed_event(MIRROR_LABELS[0], "correction", payload, TIMES[2])
        pool[f"registry_corrects_{name}"] = _registry_signed("correction", payload, TIMES[2])
        pool[f"unsigned_corrects_{name}"] = _unsigned_test_registry("correction", payload, TIMES[2])
    payload = {"corrects_event_id": published_snapshot["event_id"], "reason": "withdrawn"}
    pool["unsigned_corrects_published"] = unsigned_registry_event("correction", payload, TIMES[2])

    # Second valid signatures of signed events, made with other nonces.
    hint = hints[MIRROR_LABELS[1], "backup", TIMES[1], 0]
    pool["hint_second_signature"] = with_nonce(hint, key(MIRROR_LABELS[1]), 1000)
    snapshot = signed_snapshots[TIMES[1], 1]
    pool["snapshot_second_signature"] = with_nonce(snapshot, key(REGISTRY_LABEL), 1001)

    # Forgeries: a changed body with the original id and signature.
    forged = copy.deepcopy(hints[MIRROR_LABELS[0], "primary", TIMES[1], 1])
    forged["payload"]["url"] = "https://attacker.example.net/"
    pool["forged_hint_url"] = forged
    pool["forged_snapshot_time"] = {**copy.deepcopy(signed_snapshots[TIMES[0], 1]), "created_at": TIMES[2]}
    return json.dumps(pool)


POOL_BY_NAME: dict[str, dict[str, Any]] = json.loads(_pool_json())
POOL = list(POOL_BY_NAME.values())
PUBLISHED = published_input()

# The first entries of the pool are the mirror hints. Half the draws come
# from the rest (registry events, corrections, second signatures and
# forgeries), so that rare interactions between them, such as an unsigned
# copy and a conflicting claim of its id, occur within a few dozen examples.
HINT_COUNT = len(MIRROR_LABELS) * len(SLOTS) * 2 * 2
event_indexes = st.one_of(st.integers(0, len(POOL) - 1), st.integers(HINT_COUNT, len(POOL) - 1))
event_sets = st.lists(event_indexes, max_size=14).map(lambda indexes: [POOL[i] for i in indexes])
with_published = st.booleans()


def _merge(events: list[Any], include_published: bool = True) -> dict[str, Any]:
    base = PUBLISHED.events if include_published else []
    return merge(PUBLISHED.record, PUBLISHED.aliases, [*copy.deepcopy(base), *copy.deepcopy(events)], TRUST)


def _served(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _record_statistics(state: dict[str, Any]) -> None:
    event(f"equivocations: {min(state['equivocation_count'], 2)}")
    event(f"invalid events: {min(state['invalid_event_count'], 2)}")
    event(f"superseded or withdrawn: {state['valid_event_count'] > len(state['applied_event_ids'])}")
    target(float(state["equivocation_count"]), label="equivocations")


@PROPERTY_SETTINGS
@given(events=event_sets, include_published=with_published, data=st.data())
def test_arrival_order_irrelevant(events: list[Any], include_published: bool, data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(events))

    state = _merge(events, include_published)

    _record_statistics(state)
    assert _served(_merge(shuffled, include_published)) == _served(state)


@PROPERTY_SETTINGS
@given(events=event_sets, data=st.data())
def test_duplicates_irrelevant(events: list[Any], data: st.DataObject) -> None:
    extra = data.draw(st.lists(st.sampled_from(events), max_size=6)) if events else []

    assert _served(_merge([*events, *extra, *events])) == _served(_merge(events))


@PROPERTY_SETTINGS
@given(events=event_sets, split=st.integers(min_value=0, max_value=14))
@example(events=[POOL_BY_NAME["unsigned_with_extra_field"], POOL_BY_NAME["unsigned_conflicting_id"]], split=1)
@example(events=[POOL_BY_NAME["unsigned_conflicting_id"], POOL_BY_NAME["unsigned_with_extra_field"]], split=1)
def test_split_and_remerge(events: list[Any], split: int) -> None:
    first, second = events[:split], events[split:]
    whole = _served(_merge(events))

    bundle_first = emit_bundle(PUBLISHED.record, PUBLISHED.aliases, [*PUBLISHED.events, *first], TRUST)
    bundle_second = emit_bundle(PUBLISHED.record, PUBLISHED.aliases, [*PUBLISHED.events, *second], TRUST)

    assert _served(_merge([*bundle_first["events"], *second], include_published=False)) == whole
    assert _served(_merge([*first, *bundle_second["events"]], include_published=False)) == whole
    assert _served(_merge([*bundle_first["events"], *bundle_second["events"]], include_published=False)) == whole


@PROPERTY_SETTINGS
@given(events=event_sets, include_published=with_published)
def test_emit_bundle_round_trip(events: list[Any], include_published: bool) -> None:
    base = PUBLISHED.events if include_published else []
    bundle = emit_bundle(PUBLISHED.record, PUBLISHED.aliases, [*base, *events], TRUST)

    remerged = merge(PUBLISHED.record, PUBLISHED.aliases, bundle["events"], TRUST)

    assert canonical_bytes(remerged) == canonical_bytes(_merge(events, include_published))
    assert _served(remerged) == _served(_merge(events, include_published))


@PROPERTY_SETTINGS
@given(events=event_sets, data=st.data())
def test_equivocating_signer_any_order(events: list[Any], data: st.DataObject) -> None:
    label = data.draw(st.sampled_from(MIRROR_LABELS))
    slot = data.draw(st.sampled_from(SLOTS))
    created_at = data.draw(st.sampled_from(TIMES[:2]))
    pair = [
        signed_event(label, "mirror_hint", {"slot": slot, "url": f"https://{label}.example.org/{slot}/v{variant}/"}, created_at)
        for variant in (0, 1)
    ]
    ordered = [*events, *pair]
    shuffled = data.draw(st.permutations(ordered))

    state = _merge(ordered)

    assert state["equivocation_count"] >= 1
    assert _served(_merge(shuffled)) == _served(state)
    assert _served(_merge(list(reversed(ordered)))) == _served(state)


def _signed_only(events: list[Any]) -> list[Any]:
    return [raw for raw in events if "public_key_hex" in raw.get("signer", {})]


def _leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict) and value:
        return [leaf for name, item in value.items() for leaf in _leaf_paths(item, (*path, name))]
    if isinstance(value, list) and value:
        return [leaf for index, item in enumerate(value) for leaf in _leaf_paths(item, (*path, index))]
    return [path]


@PROPERTY_SETTINGS
@given(events=event_sets, data=st.data())
def test_forgery_never_changes_current(events: list[Any], data: st.DataObject) -> None:
    candidates = _signed_only(POOL)
    original = data.draw(st.sampled_from(candidates))
    path = data.draw(st.sampled_from(_leaf_paths(original)))
    replacement = data.draw(st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=4), st.booleans()))
    forged = copy.deepcopy(original)
    holder = forged
    for step in path[:-1]:
        holder = holder[step]
    if holder[path[-1]] == replacement:
        replacement = [replacement]
    holder[path[-1]] = replacement

    before = _merge(events)
    after = _merge([*events, forged])

    assert after["current"] == before["current"]
    assert after["equivocations"] == before["equivocations"]
    assert after["applied_event_ids"] == before["applied_event_ids"]
    assert after["valid_event_count"] == before["valid_event_count"]


@PROPERTY_SETTINGS
@given(events=event_sets)
def test_merged_state_passes_check(events: list[Any]) -> None:
    state = _merge(events)
    check_state(copy.deepcopy(state), TRUST)


def test_pool_events_produce_equivocations() -> None:
    example = find(event_sets, lambda events: _merge(events)["equivocation_count"] >= 2, settings=FIND_SETTINGS)
    assert _merge(example)["equivocation_count"] >= 2


def test_pool_events_produce_conflicts() -> None:
    def has_conflict(events: list[Any]) -> bool:
        return any(entry["reason"] == "conflicting_event_id" for entry in _merge(events)["invalid_events"])

    example = find(event_sets, has_conflict, settings=FIND_SETTINGS)
    assert has_conflict(example)


def test_pool_events_produce_withdrawals() -> None:
    def has_withdrawal(events: list[Any]) -> bool:
        state = _merge(events)
        corrected = {entry["payload"]["corrects_event_id"] for entry in state["current"]["corrections"]}
        present = {raw["event_id"] for raw in events}
        return bool(corrected & present) and not corrected & set(state["applied_event_ids"])

    example = find(event_sets, has_withdrawal, settings=FIND_SETTINGS)
    assert has_withdrawal(example)


def test_pool_fingerprints_distinct() -> None:
    fingerprints = {key(label).fingerprint for label in (*MIRROR_LABELS, REGISTRY_LABEL)}
    assert len(fingerprints) == 3
    assert REGISTRY_FINGERPRINT not in fingerprints
