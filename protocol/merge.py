"""The deterministic merge: one subject's events in, its state document out.

``merge`` is a pure function of the *set* of its inputs. It sorts everything
it emits by keys computed from the events themselves, never by arrival order,
so every replica that stores the same events computes the same bytes and the
same ``state_sha256``. ``docs/merge.md`` states the rules precisely enough
for a second implementation; the steps below follow it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from .canonical import canonical_bytes, check_value
from .errors import EventError
from .events import BODY_FIELDS, Event, validate_event
from .payloads import EVENT_ID_PATTERN
from .identifiers import check_aliases, record_pith_number
from .trust import EVENT_TYPES, MERGE_VERSION, TrustConfig

__all__ = ["merge", "state_hash", "LIST_NAMES", "MAX_EVENT_BYTES"]

# The list in ``current`` that contains each event type, in document order.
LIST_NAMES = {
    "graph_snapshot": "graph_snapshots",
    "author_attestation": "author_attestations",
    "timestamp_anchor": "timestamp_anchors",
    "storage_attestation": "storage_attestations",
    "citation_signature": "citation_signatures",
    "replication_record": "replication_records",
    "correction": "corrections",
    "mirror_hint": "mirror_hints",
}

# An event whose canonical JSON is larger than this is invalid, so that one
# event cannot make a state document unbounded, and so that every valid event
# fits in one wire frame of 1 MiB with room for the message around it.
MAX_EVENT_BYTES = 512 * 1024

# Event types a correction cannot withdraw: a record is content-addressed
# and stays, and withdrawing corrections would make withdrawal recursive.
_NOT_WITHDRAWABLE = ("record_created", "correction")


def state_hash(state_without_hash: dict[str, Any]) -> str:
    """Return ``state_sha256``: SHA-256 hex of the canonical JSON of the state without that key."""
    return hashlib.sha256(canonical_bytes(state_without_hash)).hexdigest()


def _merge_aliases(aliases: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    # One entry per (kind, value); when copies differ only in created_at the
    # earliest wins, because it is when the alias first existed.
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for alias in aliases:
        key = (alias["alias_kind"], alias["alias_value"])
        current = chosen.get(key)
        if current is None or _alias_order(alias) < _alias_order(current):
            chosen[key] = alias
    return [chosen[key] for key in sorted(chosen)]


def _alias_order(alias: dict[str, Any]) -> tuple[int, str]:
    created_at = alias.get("created_at")
    return (0, created_at) if created_at is not None else (1, "")


def _invalid_entry(raw: Any, encoded: bytes, code: str) -> tuple[str, dict[str, Any]]:
    claimed = raw.get("event_id") if isinstance(raw, dict) else None
    input_sha256 = hashlib.sha256(encoded).hexdigest()
    entry = {
        "event_id": claimed if isinstance(claimed, str) and EVENT_ID_PATTERN.match(claimed) else None,
        "input_sha256": input_sha256,
        "reason": code,
    }
    return input_sha256, entry


_SIGNED_FIELDS = frozenset(BODY_FIELDS) | {"event_id", "signature_b64"}
_PLAIN_TEXT = re.compile(r"\A[A-Za-z0-9+/=:]{1,128}\Z", re.ASCII)
# The bytes the canonical JSON of a signed-shape event adds to its body:
# ,"event_id":"…" and ,"signature_b64":"…" with their quotes.
_ID_AND_SIGNATURE_OVERHEAD = len(b',"event_id":""') + len(b',"signature_b64":""')


def _encode(value: Any) -> bytes:
    # For values check_value has already accepted.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _identify(raw: Any) -> tuple[bytes, int, bytes | None]:
    """Return a key that identifies ``raw``, its canonical JSON size, and its body bytes if computed.

    An event of the signed shape is identified by its body bytes, id and
    signature, which determine it; the body bytes are reused for its event
    id, so the event is encoded once instead of twice. Anything else is
    identified by its full canonical JSON. The two kinds of key cannot be
    equal, because canonical JSON never contains a NUL byte and the first
    kind does.
    """
    if (
        type(raw) is dict
        and raw.keys() == _SIGNED_FIELDS
        and type(raw["event_id"]) is str
        and type(raw["signature_b64"]) is str
        and _PLAIN_TEXT.match(raw["event_id"])
        and _PLAIN_TEXT.match(raw["signature_b64"])
    ):
        body_bytes = _encode({key: raw[key] for key in BODY_FIELDS})
        event_id = raw["event_id"].encode("ascii")
        signature = raw["signature_b64"].encode("ascii")
        size = len(body_bytes) + _ID_AND_SIGNATURE_OVERHEAD + len(event_id) + len(signature)
        return body_bytes + b"\0" + event_id + b"\0" + signature, size, body_bytes
    encoded = _encode(raw)
    return encoded, len(encoded), None


def _classify(
    events: Iterable[Any], subject: str, trust: TrustConfig
) -> tuple[dict[str, Event], dict[str, dict[str, Any]]]:
    """Validate every distinct input; return valid events by id and invalid entries by input hash.

    Two distinct inputs can validate to one event id. For signed events they
    differ only in the signature (an Ed25519 signer can sign the same body
    again with another nonce), and the smaller signature text is kept. An
    unsigned registry event cannot prove its id: it loses to a signed event
    with that id, and two unsigned events that claim one id with different
    contents are both invalid.
    """
    seen: set[bytes] = set()
    invalid: dict[str, dict[str, Any]] = {}
    candidates: dict[str, list[tuple[Event, Any]]] = {}
    for raw in events:
        check_value(raw)
        identity, size, body_bytes = _identify(raw)
        if identity in seen:
            continue
        seen.add(identity)
        if size > MAX_EVENT_BYTES:
            key, entry = _invalid_entry(raw, _encode(raw), "event_too_large")
            invalid[key] = entry
            continue
        try:
            event = validate_event(raw, subject, trust, body_bytes=body_bytes)
        except EventError as error:
            key, entry = _invalid_entry(raw, _encode(raw), error.code)
            invalid[key] = entry
            continue
        candidates.setdefault(event.event_id, []).append((event, raw))

    valid: dict[str, Event] = {}
    for event_id, group in candidates.items():
        signed = [event for event, _ in group if event.signed]
        if signed:
            valid[event_id] = min(signed, key=lambda event: event.signature_b64 or "")
            losers = [raw for event, raw in group if not event.signed]
        elif len({_encode(event.state_form()) for event, _ in group}) == 1:
            # Copies that differ only in fields the state does not carry.
            valid[event_id] = group[0][0]
            losers = []
        else:
            losers = [raw for _, raw in group]
        for raw in losers:
            key, entry = _invalid_entry(raw, _encode(raw), "conflicting_event_id")
            invalid[key] = entry
    return valid, invalid


def _resolve_slots(valid: Iterable[Event]) -> tuple[dict[tuple[str, str, str], Event], list[dict[str, Any]]]:
    """Pick each slot's winner and collect equivocations.

    Within one (event type, signer, slot) the latest ``created_at`` wins.
    Several events sharing a ``created_at`` are an equivocation: they are
    kept as proof, and if they are the latest, the slot has no winner.
    A slot that contains a signed event ignores its unsigned registry events,
    because anyone can write an unsigned event under the registry's
    fingerprint, and it must not supersede or hide what the registry signed.
    """
    slots: dict[tuple[str, str, str], list[Event]] = {}
    for event in valid:
        key = (event.event_type, event.signer_fingerprint, event.slot)
        slots.setdefault(key, []).append(event)

    winners: dict[tuple[str, str, str], Event] = {}
    equivocations: list[dict[str, Any]] = []
    for key, events in slots.items():
        if any(event.signed for event in events):
            events = [event for event in events if event.signed]
        by_time: dict[str, list[Event]] = {}
        for event in events:
            by_time.setdefault(event.created_at, []).append(event)
        for created_at, group in by_time.items():
            if len(group) > 1:
                event_type, fingerprint, slot = key
                equivocations.append(
                    {
                        "event_type": event_type,
                        "signer_fingerprint": fingerprint,
                        "slot": slot,
                        "created_at": created_at,
                        "events": [event.state_form() for event in sorted(group, key=lambda e: e.event_id)],
                    }
                )
        latest = max(by_time)
        if len(by_time[latest]) == 1:
            winners[key] = by_time[latest][0]

    equivocations.sort(key=lambda entry: (entry["event_type"], entry["signer_fingerprint"], entry["slot"], entry["created_at"]))
    return winners, equivocations


def _withdrawn_ids(winners: Iterable[Event]) -> set[str]:
    """Return the ids that winning corrections withdraw from ``current``.

    A correction withdraws an event only when both have the same signer, so
    no signer can withdraw another signer's event. An unsigned correction
    cannot withdraw a signed event, for the reason given in ``_resolve_slots``.
    """
    winners = list(winners)
    by_id = {event.event_id: event for event in winners}
    withdrawn: set[str] = set()
    for event in winners:
        if event.event_type != "correction":
            continue
        target = by_id.get(event.payload["corrects_event_id"])
        if target is None or target.event_type in _NOT_WITHDRAWABLE:
            continue
        if target.signed and not event.signed:
            continue
        if target.signer_fingerprint == event.signer_fingerprint:
            withdrawn.add(target.event_id)
    return withdrawn


def merge(
    record: dict[str, Any],
    aliases: Iterable[dict[str, Any]],
    events: Iterable[Any],
    trust: TrustConfig,
) -> dict[str, Any]:
    """Merge one subject's events into its state document.

    Args:
        record: the subject's canonical record; its hash names the subject.
        aliases: the record's ``source_aliases``; repeats are merged.
        events: events in bundle form, in any order, with any duplicates.
            Each must be in the canonical value model (as the strict JSON
            reader and the wire decoder guarantee); invalid events are
            recorded, not raised.
        trust: the trust configuration.

    Returns:
        The state document, including ``state_sha256``.

    Raises:
        IdentifierError: the record or an alias is malformed.
        CanonicalJSONError: an event is outside the canonical value model.
    """
    subject, canonical_sha256 = record_pith_number(record)
    aliases = list(aliases)
    check_aliases(aliases, subject, record, canonical_sha256)

    valid, invalid = _classify(events, subject, trust)
    winners, equivocations = _resolve_slots(valid.values())
    withdrawn = _withdrawn_ids(winners.values())
    current_events = [event for event in winners.values() if event.event_id not in withdrawn]

    # Several registry keys may each have created the record; the earliest
    # creation is the one the state shows.
    created = sorted(
        (event for event in current_events if event.event_type == "record_created"),
        key=lambda event: (event.created_at, event.event_id),
    )
    record_created = created[0] if created else None

    lists: dict[str, list[Event]] = {name: [] for name in LIST_NAMES.values()}
    for event in current_events:
        if event.event_type != "record_created":
            lists[LIST_NAMES[event.event_type]].append(event)
    for items in lists.values():
        items.sort(key=lambda event: (event.created_at, event.event_id))

    current: dict[str, Any] = {"canonical_record": record, "source_aliases": _merge_aliases(aliases)}
    for name, items in lists.items():
        current[name] = [event.state_form() for event in items]
    current["record_created"] = record_created.state_form() if record_created else None

    applied = [record_created.event_id] if record_created else []
    for event_type in EVENT_TYPES[1:]:
        applied.extend(event.event_id for event in lists[LIST_NAMES[event_type]])

    event_count = len(valid) + len(invalid)
    state: dict[str, Any] = {
        "state_type": "pith_open_graph_state",
        "state_version": "1.0",
        "pith_number": subject,
        "merge_version": MERGE_VERSION,
        "event_count": event_count,
        "valid_event_count": len(valid),
        "invalid_event_count": len(invalid),
        "equivocation_count": len(equivocations),
        "current": current,
        "equivocations": equivocations,
        "invalid_events": [invalid[key] for key in sorted(invalid)],
        "applied_event_ids": applied,
    }
    # Every part of the state was checked on its way in (the record, the
    # aliases and each event), so it is encoded without a second walk.
    encoded = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    state["state_sha256"] = hashlib.sha256(encoded).hexdigest()
    return state
