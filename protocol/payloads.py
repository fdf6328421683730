"""Payload schemas of the event types, and the slot each event claims.

A slot is what an event occupies for its signer: a newer event from the
same signer in the same slot supersedes an older one, and two different
events from one signer in one slot with the same ``created_at`` are an
equivocation. ``slot_of`` returns the slot name inside an event type.

Payloads of this project's event types are closed: unknown fields are
invalid, because a field that no replica interprets could still change the
event id. Payloads of the registry's own types (``record_created`` and
``graph_snapshot``) are only checked where the merge depends on them, since
the registry defines them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .canonical import field_path
from .errors import EventError, InvalidInput, quote_value
from .identifiers import check_canonical_record, check_sha256_hex, parse_pith_number, record_pith_number

__all__ = [
    "TARGETS",
    "check_payload",
    "slot_of",
    "check_url",
    "EVENT_ID_PATTERN",
]

# The fixed ``target`` of each event type: which part of the record the
# event is about. The registry uses "record" and "graph".
TARGETS = {
    "record_created": "record",
    "graph_snapshot": "graph",
    "author_attestation": "authors",
    "timestamp_anchor": "record",
    "storage_attestation": "content",
    "citation_signature": "citations",
    "replication_record": "results",
    "correction": "event",
    "mirror_hint": "mirror",
}

EVENT_ID_PATTERN = re.compile(r"\Asha256:[0-9a-f]{64}\Z", re.ASCII)
_MAX_URL_LENGTH = 2048
_SLOT_NAME = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z", re.ASCII)
_REPLICATION_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z", re.ASCII)
_ORCID = re.compile(r"\A\d{4}-\d{4}-\d{4}-\d{3}[\dX]\Z", re.ASCII)
_HOST_PORT = re.compile(r"\A(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})\Z", re.ASCII)
_MEDIA_TYPE = re.compile(r"\A[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}\Z", re.ASCII)
_MAX_PROOF_B64 = 65536
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# Spaces, control characters and DEL; the caller has checked for non-ASCII.
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


def _invalid(path: str, reason: str) -> EventError:
    return EventError(path, reason, code="invalid_payload")


def _text(value: Any, path: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise _invalid(path, f"must be text, got {type(value).__name__}")
    if not value or len(value) > max_length:
        raise _invalid(path, f"must be 1 to {max_length} characters, got {len(value)}")
    if _CONTROL_CHARACTER.search(value):
        raise _invalid(path, "must not contain control characters")
    return value


def _pattern(value: Any, path: str, pattern: re.Pattern[str], description: str) -> str:
    if not isinstance(value, str) or pattern.match(value) is None:
        raise _invalid(path, f"{quote_value(value)} is not {description}")
    return value


def _choice(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _invalid(path, f"{quote_value(value)} is not one of {', '.join(choices)}")
    return value


def check_url(value: Any, path: str) -> str:
    """Return ``value`` if it is an absolute http or https URL without userinfo.

    This is syntax only. Whether the node may connect to the host is the dial
    policy's decision in node/, which also checks addresses after resolution.
    """
    if not isinstance(value, str) or not value or len(value) > _MAX_URL_LENGTH:
        raise _invalid(path, f"URL must be 1 to {_MAX_URL_LENGTH} characters of text")
    if not value.isascii() or _URL_FORBIDDEN.search(value):
        raise _invalid(path, "URL must be printable ASCII without spaces")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise _invalid(path, f"URL {quote_value(value)} is malformed: {error}") from None
    if parts.scheme not in ("https", "http"):
        raise _invalid(path, f"URL scheme {quote_value(parts.scheme)} is not https or http")
    if "@" in parts.netloc:
        raise _invalid(path, "URL must not contain userinfo ('@' before the host)")
    if not parts.hostname:
        raise _invalid(path, "URL has no host")
    if port == 0:
        raise _invalid(path, "URL port 0 is not valid")
    return value


def _strict_base64(value: Any, path: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise _invalid(path, f"must be 1 to {max_length} characters of base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(path, "is not standard padded base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise _invalid(path, "is not the canonical base64 spelling")
    return value


def _orcid(value: Any, path: str) -> str:
    _pattern(value, path, _ORCID, "an ORCID iD (0000-0000-0000-000X)")
    digits = value.replace("-", "")
    total = 0
    for digit in digits[:-1]:
        total = (total + int(digit)) * 2
    check = (12 - total % 11) % 11
    if digits[-1] != ("X" if check == 10 else str(check)):
        raise _invalid(path, f"ORCID iD {value} has a wrong check digit")
    return value


def _host_port(value: Any, path: str) -> str:
    match = _HOST_PORT.match(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise _invalid(path, f"{quote_value(value)} is not HOST:PORT")
    return value


def _event_id(value: Any, path: str) -> str:
    return _pattern(value, path, EVENT_ID_PATTERN, "an event id (sha256: and 64 lowercase hex)")


def _sha256(value: Any, path: str) -> str:
    try:
        return check_sha256_hex(value, path)
    except InvalidInput as error:
        raise _invalid(error.field, error.reason) from None


def _pith(value: Any, path: str) -> str:
    try:
        parse_pith_number(value, path)
    except InvalidInput as error:
        raise _invalid(error.field, error.reason) from None
    return value


def _size(value: Any, path: str) -> int:
    if type(value) is not int or value < 0:
        raise _invalid(path, f"{quote_value(value)} is not a non-negative integer")
    return value


# Each closed schema maps a field to (checker, required).
_Checker = Callable[[Any, str], Any]
_SCHEMAS: dict[str, dict[str, tuple[_Checker, bool]]] = {
    "author_attestation": {
        "author_name": (lambda v, p: _text(v, p, 256), True),
        "orcid": (_orcid, False),
        "statement": (lambda v, p: _choice(v, p, ("authored", "not_authored")), True),
    },
    "timestamp_anchor": {
        "anchor_type": (lambda v, p: _choice(v, p, ("opentimestamps", "rfc3161")), True),
        "anchored_sha256": (_sha256, True),
        "proof_b64": (lambda v, p: _strict_base64(v, p, _MAX_PROOF_B64), True),
    },
    "storage_attestation": {
        "url": (check_url, True),
        "content_sha256": (_sha256, True),
        "size_bytes": (_size, True),
        "media_type": (lambda v, p: _pattern(v, p, _MEDIA_TYPE, "a media type"), True),
    },
    "citation_signature": {
        "cites_pith_number": (_pith, True),
        "context": (lambda v, p: _text(v, p, 1024), False),
    },
    "replication_record": {
        "replication_id": (lambda v, p: _pattern(v, p, _REPLICATION_ID, "a replication id"), True),
        "outcome": (
            lambda v, p: _choice(v, p, ("reproduced", "partially_reproduced", "not_reproduced")),
            True,
        ),
        "report_url": (check_url, True),
        "report_sha256": (_sha256, False),
    },
    "correction": {
        "corrects_event_id": (_event_id, True),
        "reason": (lambda v, p: _text(v, p, 2048), True),
    },
    "mirror_hint": {
        "slot": (lambda v, p: _pattern(v, p, _SLOT_NAME, "a slot name (a-z, 0-9, _ . -)"), True),
        "url": (check_url, True),
        "gossip": (_host_port, False),
    },
}


def _check_closed(event_type: str, payload: dict[str, Any]) -> None:
    schema = _SCHEMAS[event_type]
    for key in payload:
        if key not in schema:
            raise _invalid(field_path("payload", key), f"unknown field for {event_type}")
    for key, (checker, required) in schema.items():
        if key in payload:
            checker(payload[key], field_path("payload", key))
        elif required:
            raise _invalid(field_path("payload", key), "missing")


def _check_record_created(payload: dict[str, Any], subject: str) -> None:
    for key in ("canonical_record", "canonical_sha256", "receipt"):
        if key not in payload:
            raise _invalid(field_path("payload", key), "missing")
    try:
        check_canonical_record(payload["canonical_record"], "payload.canonical_record")
        number, digest = record_pith_number(payload["canonical_record"])
    except InvalidInput as error:
        raise _invalid(error.field, error.reason) from None
    if payload["canonical_sha256"] != digest:
        raise EventError(
            "payload.canonical_sha256",
            f"{quote_value(payload['canonical_sha256'])} is not the hash of payload.canonical_record ({digest})",
            code="record_mismatch",
        )
    if number != subject:
        raise EventError(
            "payload.canonical_record", f"record is {number}, not the subject {subject}", code="record_mismatch"
        )
    source = payload["canonical_record"]["source"]
    for key, expected in (("source_id", source["id"]), ("source_kind", source["kind"]), ("source_version", source["version"])):
        if key in payload and payload[key] != expected:
            raise EventError(
                field_path("payload", key), f"{quote_value(payload[key])} disagrees with the record ({expected!r})",
                code="record_mismatch",
            )


def check_payload(event_type: str, payload: Any, subject: str) -> None:
    """Raise EventError unless ``payload`` fits the schema of ``event_type``.

    ``record_created`` payloads must also carry the subject's own record:
    its hash must be ``canonical_sha256`` and derive the subject's Pith number.
    Receipts are checked by the event validator, which has the trust
    configuration.
    """
    if not isinstance(payload, dict):
        raise _invalid("payload", f"must be an object, got {type(payload).__name__}")
    if event_type == "record_created":
        _check_record_created(payload, subject)
    elif event_type == "graph_snapshot":
        if not isinstance(payload.get("graph_snapshot"), dict):
            raise _invalid("payload.graph_snapshot", "must be an object")
    else:
        _check_closed(event_type, payload)


def slot_of(event_type: str, payload: dict[str, Any]) -> str:
    """Return the slot an event of ``event_type`` claims for its signer."""
    if event_type == "record_created":
        return "record"
    if event_type == "graph_snapshot":
        return "graph"
    if event_type == "author_attestation":
        return "author"
    if event_type == "timestamp_anchor":
        return f"{payload['anchor_type']}:{payload['anchored_sha256']}"
    if event_type == "storage_attestation":
        return payload["url"]
    if event_type == "citation_signature":
        return payload["cites_pith_number"]
    if event_type == "replication_record":
        return payload["replication_id"]
    if event_type == "correction":
        return payload["corrects_event_id"]
    if event_type == "mirror_hint":
        return payload["slot"]
    raise AssertionError(f"slot_of called with unknown event type {event_type!r}")
