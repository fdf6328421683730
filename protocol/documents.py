"""Bundle, state and record documents: reading, checking and writing them.

* A **bundle** (``bundle_type`` ``pith_open_graph_bundle``) carries one
  record and every event known about it, in bundle form. Merging a bundle's
  events reproduces the state exactly.
* A **state** (``state_type`` ``pith_open_graph_state``) is the merge output.
  It lists only the events in effect and the equivocations, so superseded
  and invalid inputs cannot be recovered from it.
* A **record line** is one line of a JSON-lines export of published records:
  ``pith_number`` plus any of ``canonical_record``, ``canonical_sha256``,
  ``receipt_signature_b64`` and ``source_aliases``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .canonical import Limits, canonical_bytes, field_path, parse_json
from .errors import DocumentError, InvalidInput, quote_value
from .identifiers import (
    check_aliases,
    check_canonical_record,
    check_sha256_hex,
    parse_pith_number,
    pith_suffix,
    record_pith_number,
)
from .keys import decode_signature_b64, verify_signature
from .merge import LIST_NAMES, _classify, merge, state_hash
from .payloads import EVENT_ID_PATTERN
from .trust import MERGE_VERSION, TrustConfig

__all__ = [
    "BUNDLE_TYPE",
    "STATE_TYPE",
    "MAX_BUNDLE_EVENTS",
    "DOCUMENT_LIMITS",
    "MergeInput",
    "read_document",
    "document_kind",
    "bundle_input",
    "state_input",
    "emit_bundle",
    "check_state",
    "check_record_line",
]

BUNDLE_TYPE = "pith_open_graph_bundle"
STATE_TYPE = "pith_open_graph_state"
DOCUMENT_VERSION = "1.0"

# A bundle or state with more events than this is rejected whole. A record
# with more events than fit is served in several bundles.
MAX_BUNDLE_EVENTS = 10_000
DOCUMENT_LIMITS = Limits(max_bytes=64 * 1024 * 1024, max_depth=32, max_values=4_000_000)

_EVENT_LISTS = {name: event_type for event_type, name in LIST_NAMES.items()}
_CURRENT_FIELDS = frozenset({"canonical_record", "source_aliases", "record_created", *_EVENT_LISTS})


@dataclass(frozen=True)
class MergeInput:
    """Everything merge() needs for one subject, read from a document."""

    pith_number: str
    record: dict[str, Any]
    aliases: list[dict[str, Any]]
    events: list[Any]


def read_document(data: bytes | str, limits: Limits = DOCUMENT_LIMITS) -> dict[str, Any]:
    """Strictly decode a JSON document that must be an object."""
    value = parse_json(data, limits)
    if not isinstance(value, dict):
        raise DocumentError("", f"document must be a JSON object, got {type(value).__name__}")
    return value


def document_kind(document: dict[str, Any]) -> str:
    """Return ``"bundle"``, ``"state"`` or ``"record"`` for a decoded document."""
    if document.get("bundle_type") == BUNDLE_TYPE:
        return "bundle"
    if document.get("state_type") == STATE_TYPE:
        return "state"
    if "pith_number" in document and "bundle_type" not in document and "state_type" not in document:
        return "record"
    raise DocumentError(
        "", "document is not a Pith bundle, state or record (no bundle_type, state_type or pith_number)"
    )


def _require(document: dict[str, Any], key: str, kind: type, path: str = "") -> Any:
    full = field_path(path, key)
    if key not in document:
        raise DocumentError(full, "missing")
    value = document[key]
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise DocumentError(full, f"must be {kind.__name__}, got {type(value).__name__}")
    return value


def _check_record_identity(document: dict[str, Any], record: dict[str, Any], path: str = "") -> tuple[str, str]:
    """Check that the document's Pith number and hash belong to its record."""
    try:
        check_canonical_record(record, field_path(path, "canonical_record"))
        number, digest = record_pith_number(record)
    except InvalidInput as error:
        raise DocumentError(error.field, error.reason) from None
    if document.get("pith_number") != number:
        raise DocumentError(
            field_path(path, "pith_number"),
            f"{quote_value(document.get('pith_number'))} is not the Pith number of the record ({number})",
        )
    if "canonical_sha256" in document and document["canonical_sha256"] != digest:
        raise DocumentError(
            field_path(path, "canonical_sha256"),
            f"{quote_value(document['canonical_sha256'])} is not the hash of the record ({digest})",
        )
    return number, digest


def _check_event_list(events: Any, path: str) -> list[Any]:
    if not isinstance(events, list):
        raise DocumentError(path, "must be a list")
    if len(events) > MAX_BUNDLE_EVENTS:
        raise DocumentError(path, f"holds {len(events)} events, more than the limit of {MAX_BUNDLE_EVENTS}")
    return events


def bundle_input(document: dict[str, Any]) -> MergeInput:
    """Check a bundle document's header and return its merge input.

    Events are not validated here; the merge validates each one and records
    the invalid ones.

    Raises:
        DocumentError: naming the first header field that is wrong.
    """
    if document.get("bundle_type") != BUNDLE_TYPE:
        raise DocumentError("bundle_type", f"{quote_value(document.get('bundle_type'))} is not {BUNDLE_TYPE!r}")
    if document.get("bundle_version") != DOCUMENT_VERSION:
        raise DocumentError("bundle_version", f"{quote_value(document.get('bundle_version'))} is not {DOCUMENT_VERSION!r}")
    record = _require(document, "canonical_record", dict)
    number, digest = _check_record_identity(document, record)
    if document.get("short_pith_number") != parse_pith_number(number).short:
        raise DocumentError("short_pith_number", f"{quote_value(document.get('short_pith_number'))} is not {parse_pith_number(number).short}")
    if document.get("source") != record["source"]:
        raise DocumentError("source", "is not the source of canonical_record")
    aliases = _require(document, "source_aliases", list)
    try:
        check_aliases(aliases, number, record, digest)
    except InvalidInput as error:
        raise DocumentError(error.field, error.reason) from None
    events = _check_event_list(_require(document, "events", list), "events")
    return MergeInput(number, record, aliases, events)


def state_input(document: dict[str, Any]) -> MergeInput:
    """Rebuild merge input from the events a state document lists.

    The event type comes from the list an event sits in and the subject from
    the state's Pith number, which is all bundle form adds to state form.

    Raises:
        DocumentError: naming the first field that is wrong.
    """
    if document.get("state_type") != STATE_TYPE:
        raise DocumentError("state_type", f"{quote_value(document.get('state_type'))} is not {STATE_TYPE!r}")
    if document.get("state_version") != DOCUMENT_VERSION:
        raise DocumentError("state_version", f"{quote_value(document.get('state_version'))} is not {DOCUMENT_VERSION!r}")
    if document.get("merge_version") != MERGE_VERSION:
        raise DocumentError("merge_version", f"{quote_value(document.get('merge_version'))} is not {MERGE_VERSION!r}")
    current = _require(document, "current", dict)
    for key in current:
        if key not in _CURRENT_FIELDS:
            raise DocumentError(field_path("current", key), "unknown field")
    if "record_created" not in current:
        raise DocumentError("current.record_created", "missing (it is null when no event created the record)")
    record = _require(current, "canonical_record", dict, "current")
    number, _ = _check_record_identity(document, record)
    aliases = _require(current, "source_aliases", list, "current")

    events: list[Any] = []

    def add(event: Any, event_type: str, path: str) -> None:
        if not isinstance(event, dict):
            raise DocumentError(path, "event must be an object")
        events.append({**event, "event_type": event_type, "subject_pith_number": number})

    for name, event_type in _EVENT_LISTS.items():
        items = _check_event_list(_require(current, name, list, "current"), f"current.{name}")
        for index, event in enumerate(items):
            add(event, event_type, f"current.{name}[{index}]")
    if current.get("record_created") is not None:
        add(current["record_created"], "record_created", "current.record_created")

    equivocations = _check_event_list(_require(document, "equivocations", list), "equivocations")
    for index, entry in enumerate(equivocations):
        path = f"equivocations[{index}]"
        if not isinstance(entry, dict) or entry.get("event_type") not in (*_EVENT_LISTS.values(), "record_created"):
            raise DocumentError(path, "must be an object with a known event_type")
        for position, event in enumerate(_check_event_list(_require(entry, "events", list, path), f"{path}.events")):
            add(event, entry["event_type"], f"{path}.events[{position}]")
    return MergeInput(number, record, aliases, events)


def emit_bundle(record: dict[str, Any], aliases: list[dict[str, Any]], events: Iterable[Any], trust: TrustConfig) -> dict[str, Any]:
    """Return a bundle whose events merge to the same state as ``events``.

    Each valid signed event is written once, in bundle form with its
    smallest signature. Invalid inputs and valid unsigned registry events are
    written as they arrived, because an unsigned copy may carry fields the
    state drops. A later conflicting claim of its id turns every such copy
    into an entry of ``invalid_events`` under its own input hash. So merging
    the bundle together with any other events gives the same state as
    merging ``events`` with them. Events are ordered by the SHA-256 of their
    canonical JSON.
    """
    number, digest = record_pith_number(record)
    events = list(events)
    valid, invalid = _classify(events, number, trust)
    output: dict[str, Any] = {}
    for event in valid.values():
        if event.signed:
            encoded = canonical_bytes(event.bundle_form())
            output[hashlib.sha256(encoded).hexdigest()] = event.bundle_form()
    for raw in events:
        encoded = canonical_bytes(raw)
        key = hashlib.sha256(encoded).hexdigest()
        # A raw input that is not invalid passed validation, so it is an
        # object with a signer object.
        if key in invalid or "public_key_hex" not in raw["signer"]:
            output[key] = raw
    return {
        "bundle_type": BUNDLE_TYPE,
        "bundle_version": DOCUMENT_VERSION,
        "pith_number": number,
        "short_pith_number": parse_pith_number(number).short,
        "canonical_record": record,
        "canonical_sha256": digest,
        "source": record["source"],
        "source_aliases": aliases,
        "events": [output[key] for key in sorted(output)],
    }


def check_state(document: dict[str, Any], trust: TrustConfig) -> list[str]:
    """Verify a state document; return the names of the checks that passed.

    Checks ``state_sha256``, the record's hash and Pith number, the aliases,
    every listed event (ids, signatures, receipts), that the counts agree
    with each other and with ``invalid_events``, and that merging the listed
    events reproduces every other field. When the state lists every event it
    counts, the merge must reproduce it byte for byte.

    Raises:
        DocumentError: naming the first field that failed.
    """
    if "state_sha256" not in document:
        raise DocumentError("state_sha256", "missing")
    body = {key: value for key, value in document.items() if key != "state_sha256"}
    try:
        computed = state_hash(body)
    except InvalidInput as error:
        raise DocumentError(error.field, error.reason) from None
    if document["state_sha256"] != computed:
        raise DocumentError("state_sha256", f"{quote_value(document['state_sha256'])} does not match the document ({computed})")
    passed = ["state_sha256"]

    merge_input = state_input(document)
    passed.append("canonical_sha256 and pith_number")
    try:
        check_aliases(merge_input.aliases, merge_input.pith_number, merge_input.record)
    except InvalidInput as error:
        raise DocumentError(error.field, error.reason) from None
    passed.append("source_aliases")

    state = merge(merge_input.record, merge_input.aliases, merge_input.events, trust)
    if state["invalid_events"]:
        entry = state["invalid_events"][0]
        raise DocumentError("current", f"event {entry['event_id']} listed as in effect is invalid: {entry['reason']}")
    passed.append(f"{state['valid_event_count']} events (ids, signatures, receipts)")

    _check_counts(document, state["valid_event_count"])

    # The listed events are the winners and the equivocations, and the merge
    # of those alone picks the same winners, so everything but the counts of
    # unlisted inputs and invalid_events must come out equal.
    for key in document:
        if key not in state:
            raise DocumentError(key, "unknown state field")
    for key, value in state.items():
        if key in _COUNTED_FIELDS or key == "state_sha256":
            continue
        if key not in document or canonical_bytes(document[key]) != canonical_bytes(value):
            raise DocumentError(_first_difference(key, document.get(key), value), "differs from the merge of the listed events")

    if document["event_count"] == state["event_count"]:
        if state["state_sha256"] != document["state_sha256"]:
            raise DocumentError("state_sha256", f"merging the listed events gives {state['state_sha256']}")
        passed.append("re-merge reproduces state_sha256")
    else:
        passed.append("event counts and invalid_events agree")
        passed.append(
            "re-merge reproduces current, equivocations and applied_event_ids "
            "(the state omits superseded or invalid events: verify the bundle for the rest)"
        )
    return passed


# State fields that count or list inputs a state does not carry, so a merge
# of its listed events cannot reproduce them.
_COUNTED_FIELDS = ("event_count", "valid_event_count", "invalid_event_count", "invalid_events")
_REASON_CODE = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z", re.ASCII)


def _check_counts(document: dict[str, Any], listed_valid: int) -> None:
    """Check that the counts agree with each other and with ``invalid_events``."""
    counts = {}
    for key in (*_COUNTED_FIELDS[:3], "equivocation_count"):
        value = document.get(key)
        if type(value) is not int or value < 0:
            raise DocumentError(key, f"{quote_value(value)} is not a non-negative integer")
        counts[key] = value
    if counts["event_count"] != counts["valid_event_count"] + counts["invalid_event_count"]:
        raise DocumentError(
            "event_count",
            f"{counts['event_count']} is not valid_event_count + invalid_event_count "
            f"({counts['valid_event_count']} + {counts['invalid_event_count']})",
        )
    if counts["valid_event_count"] < listed_valid:
        raise DocumentError("valid_event_count", f"{counts['valid_event_count']} is less than the {listed_valid} valid events listed")

    entries = _require(document, "invalid_events", list)
    if len(entries) != counts["invalid_event_count"]:
        raise DocumentError("invalid_event_count", f"{counts['invalid_event_count']} is not the length of invalid_events ({len(entries)})")
    previous = ""
    for index, entry in enumerate(entries):
        path = f"invalid_events[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"event_id", "input_sha256", "reason"}:
            raise DocumentError(path, "must be an object with exactly event_id, input_sha256 and reason")
        if entry["event_id"] is not None and (not isinstance(entry["event_id"], str) or EVENT_ID_PATTERN.match(entry["event_id"]) is None):
            raise DocumentError(f"{path}.event_id", f"{quote_value(entry['event_id'])} is not null or an event id")
        try:
            check_sha256_hex(entry["input_sha256"], f"{path}.input_sha256")
        except InvalidInput as error:
            raise DocumentError(error.field, error.reason) from None
        if entry["input_sha256"] <= previous:
            raise DocumentError(f"{path}.input_sha256", "entries are not in ascending order of input_sha256 without repeats")
        previous = entry["input_sha256"]
        if not isinstance(entry["reason"], str) or _REASON_CODE.match(entry["reason"]) is None:
            raise DocumentError(f"{path}.reason", f"{quote_value(entry['reason'])} is not a reason code")


def _first_difference(path: str, found: Any, expected: Any) -> str:
    """Return the path of the first value where ``found`` and ``expected`` differ."""
    while True:
        if isinstance(found, dict) and isinstance(expected, dict) and set(found) == set(expected):
            key = next(key for key in expected if found[key] != expected[key])
            path, found, expected = field_path(path, key), found[key], expected[key]
        elif isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
            index = next(index for index in range(len(expected)) if found[index] != expected[index])
            path, found, expected = field_path(path, index), found[index], expected[index]
        else:
            return path


def check_record_line(line: dict[str, Any], trust: TrustConfig) -> list[str]:
    """Verify one published record line; return the names of the checks that passed.

    Raises:
        DocumentError: naming the first field that failed.
    """
    allowed = {"pith_number", "canonical_record", "canonical_sha256", "receipt_signature_b64", "source_aliases"}
    for key in line:
        if key not in allowed:
            raise DocumentError(key, "unknown record field")
    try:
        number = parse_pith_number(line.get("pith_number"))
    except InvalidInput as error:
        raise DocumentError(error.field, error.reason) from None
    passed = ["pith_number form"]

    digest = line.get("canonical_sha256")
    record = line.get("canonical_record")
    if record is not None:
        if not isinstance(record, dict):
            raise DocumentError("canonical_record", "must be an object")
        _, digest = _check_record_identity(line, record)
        passed.append("canonical_sha256 and pith_number from the record")
    elif digest is not None:
        try:
            check_sha256_hex(digest, "canonical_sha256")
        except InvalidInput as error:
            raise DocumentError(error.field, error.reason) from None
        if pith_suffix(digest) != number.suffix:
            raise DocumentError("pith_number", f"suffix {number.suffix} is not derived from canonical_sha256 ({pith_suffix(digest)})")
        passed.append("pith_number suffix from canonical_sha256")

    if "receipt_signature_b64" in line:
        if digest is None:
            raise DocumentError("receipt_signature_b64", "cannot be checked without canonical_sha256 or canonical_record")
        try:
            signature = decode_signature_b64(line["receipt_signature_b64"], "receipt_signature_b64")
            verified = False
            for raw_key in trust.registry_keys.values():
                try:
                    verify_signature(raw_key, signature, bytes.fromhex(digest), "receipt_signature_b64")
                    verified = True
                    break
                except InvalidInput:
                    continue
            if not verified:
                raise DocumentError("receipt_signature_b64", "does not verify with any trusted registry key")
        except DocumentError:
            raise
        except InvalidInput as error:
            raise DocumentError(error.field, error.reason) from None
        passed.append("receipt signature")

    if "source_aliases" in line:
        try:
            check_aliases(line["source_aliases"], str(number), record, digest if record else None)
        except InvalidInput as error:
            raise DocumentError(error.field, error.reason) from None
        passed.append(f"{len(line['source_aliases'])} aliases")
    return passed



