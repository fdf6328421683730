"""Event envelope v1: building, signing and validating events.

An event in bundle form (the form exchanged between nodes)::

    {
      "event_id": "sha256:<64 hex>",
      "event_type": "mirror_hint",
      "subject_pith_number": "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY",
      "target": "mirror",
      "created_at": "2026-05-18T00:22:39Z",
      "signer": {"key_id": "...", "public_key_fingerprint": "<32 hex>",
                 "public_key_hex": "<64 hex>", "signer_id": "...", "signer_type": "..."},
      "payload": {...},
      "signature_b64": "<88 characters>"
    }

The body is every field except ``event_id`` and ``signature_b64``. The event
id is ``sha256:`` + the hex SHA-256 of ``ENVELOPE_DOMAIN`` followed by the
canonical JSON of the body; the domain prefix keeps an event id from ever
equalling the hash of a record or another document. The signature is
Ed25519 over the 32 raw bytes of that digest, by the key in
``signer.public_key_hex``.

Registry events published before this envelope, such as the registry's
``graph_snapshot``, have a signer block without ``public_key_hex``, an event
id whose formula is not published, and no signature this project can check.
They are "unsigned registry events"; the trust configuration decides whether
they are valid. Fields of theirs that the state does not carry are dropped.

``docs/protocol.md`` is the full specification.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_bytes
from .errors import EventError, InvalidInput, quote_value
from .identifiers import parse_pith_number
from .keys import (
    SigningKey,
    decode_public_key_hex,
    decode_signature_b64,
    encode_signature_b64,
    key_fingerprint,
    verify_receipt,
    verify_signature,
)
from .payloads import EVENT_ID_PATTERN, TARGETS, check_payload, slot_of
from .timestamps import parse_timestamp
from .trust import EVENT_TYPES, TrustConfig

__all__ = [
    "BODY_FIELDS",
    "ENVELOPE_DOMAIN",
    "Event",
    "build_event",
    "compute_event_id",
    "validate_event",
]

ENVELOPE_DOMAIN = b"pith-mirror-event-v1\n"

REGISTRY_SIGNER_TYPE = "pith_registry"
BODY_FIELDS = ("event_type", "subject_pith_number", "target", "created_at", "signer", "payload")
_ENVELOPE_FIELDS = frozenset(BODY_FIELDS) | {"event_id", "signature_b64"}
_SIGNER_FIELDS = frozenset({"key_id", "public_key_fingerprint", "public_key_hex", "signer_id", "signer_type"})
_REGISTRY_SIGNER_FIELDS = _SIGNER_FIELDS - {"public_key_hex"}
_SIGNER_LABEL = re.compile(r"\A[\x21-\x7e][\x20-\x7e]{0,127}\Z", re.ASCII)
_SIGNER_TYPE = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z", re.ASCII)
_FINGERPRINT = re.compile(r"\A[0-9a-f]{32}\Z", re.ASCII)


# Not frozen: a frozen dataclass sets every field through object.__setattr__,
# which made building an Event a measurable part of validating one.
@dataclass(slots=True)
class Event:
    """A validated event; treat it as read-only.

    Attributes:
        signer_fingerprint: the signer's key fingerprint, which identifies the
            signer in slots and equivocations.
        slot: the slot the event claims for its signer within its type.
        signed: whether the event carries a signature this node verified
            (False for an unsigned registry event).
    """

    event_id: str
    event_type: str
    subject: str
    target: str
    created_at: str
    signer: dict[str, Any]
    payload: dict[str, Any]
    signature_b64: str | None
    signer_fingerprint: str
    slot: str
    signed: bool

    def state_form(self) -> dict[str, Any]:
        """Return the event as a state document lists it."""
        form = {
            "event_id": self.event_id,
            "target": self.target,
            "created_at": self.created_at,
            "signer": self.signer,
            "payload": self.payload,
        }
        if self.signature_b64 is not None:
            form["signature_b64"] = self.signature_b64
        return form

    def bundle_form(self) -> dict[str, Any]:
        """Return the event as a bundle carries it."""
        form = self.state_form()
        form["event_type"] = self.event_type
        form["subject_pith_number"] = self.subject
        return form


def _body_bytes(body: dict[str, Any]) -> bytes:
    # The caller has already checked the body against the canonical value
    # model, so this encodes without a second walk over it.
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_event_id(body: dict[str, Any]) -> str:
    """Return the envelope v1 event id of an event body.

    Raises:
        CanonicalJSONError: the body is outside the canonical value model.
    """
    canonical_bytes(body)
    return "sha256:" + hashlib.sha256(ENVELOPE_DOMAIN + _body_bytes(body)).hexdigest()


def build_event(
    signing_key: SigningKey,
    *,
    event_type: str,
    subject: str,
    payload: dict[str, Any],
    created_at: str,
    key_id: str,
    signer_id: str,
    signer_type: str,
) -> dict[str, Any]:
    """Build and sign an envelope v1 event; return it in bundle form.

    The payload is checked against the schema of ``event_type`` first, so a
    node never signs an event that other replicas would reject. The caller
    passes ``created_at`` because the protocol core reads no clock.

    Raises:
        EventError: the type, subject, payload or signer labels are invalid.
    """
    if event_type not in EVENT_TYPES:
        raise EventError("event_type", f"{quote_value(event_type)} is not an event type", code="unknown_event_type")
    parse_pith_number(subject, "subject_pith_number")
    parse_timestamp(created_at)
    body = {
        "event_type": event_type,
        "subject_pith_number": subject,
        "target": TARGETS[event_type],
        "created_at": created_at,
        "signer": {
            "key_id": key_id,
            "public_key_fingerprint": signing_key.fingerprint,
            "public_key_hex": signing_key.public_key_hex,
            "signer_id": signer_id,
            "signer_type": signer_type,
        },
        "payload": payload,
    }
    _check_signer_labels(body["signer"])
    check_payload(event_type, payload, subject)
    event_id = compute_event_id(body)
    signature = signing_key.sign(bytes.fromhex(event_id[7:]))
    return {"event_id": event_id, **body, "signature_b64": encode_signature_b64(signature)}


def _check_signer_labels(signer: dict[str, Any]) -> None:
    for key in ("key_id", "signer_id"):
        value = signer.get(key)
        if not isinstance(value, str) or _SIGNER_LABEL.match(value) is None:
            raise EventError(
                f"signer.{key}", f"{quote_value(value)} is not 1 to 128 printable ASCII characters",
                code="malformed_signer",
            )
    if not isinstance(signer.get("signer_type"), str) or _SIGNER_TYPE.match(signer["signer_type"]) is None:
        raise EventError(
            "signer.signer_type", f"{quote_value(signer.get('signer_type'))} is not a lowercase type name",
            code="malformed_signer",
        )
    fingerprint = signer.get("public_key_fingerprint")
    if not isinstance(fingerprint, str) or _FINGERPRINT.match(fingerprint) is None:
        raise EventError(
            "signer.public_key_fingerprint", f"{quote_value(fingerprint)} is not 32 lowercase hex characters",
            code="malformed_signer",
        )


def _check_common(raw: Any, subject: str) -> None:
    if not isinstance(raw, dict):
        raise EventError("", f"event must be an object, got {type(raw).__name__}")
    for key in (*BODY_FIELDS, "event_id"):
        if key not in raw:
            raise EventError(key, "missing")
    if raw["event_type"] not in EVENT_TYPES:
        raise EventError("event_type", f"{quote_value(raw['event_type'])} is not an event type", code="unknown_event_type")
    if not isinstance(raw["event_id"], str) or EVENT_ID_PATTERN.match(raw["event_id"]) is None:
        raise EventError(
            "event_id", f"{quote_value(raw['event_id'])} is not sha256: and 64 lowercase hex", code="malformed_event_id"
        )
    if raw["subject_pith_number"] != subject:
        raise EventError(
            "subject_pith_number", f"{quote_value(raw['subject_pith_number'])} is not the subject {subject}",
            code="wrong_subject",
        )
    expected_target = TARGETS[raw["event_type"]]
    if raw["target"] != expected_target:
        raise EventError(
            "target", f"{quote_value(raw['target'])} is not {expected_target!r} for {raw['event_type']}",
            code="wrong_target",
        )
    try:
        parse_timestamp(raw["created_at"])
    except InvalidInput as error:
        raise EventError(error.field, error.reason, code="malformed_timestamp") from None
    if not isinstance(raw["signer"], dict):
        raise EventError("signer", "must be an object", code="malformed_signer")


def _check_receipt(raw: dict[str, Any], trust: TrustConfig) -> None:
    try:
        verify_receipt(raw["payload"]["receipt"], raw["payload"]["canonical_sha256"], trust.registry_keys, "payload.receipt")
    except InvalidInput as error:
        raise EventError(error.field, error.reason, code="bad_receipt") from None


def _validated_event(raw: dict[str, Any], signature_b64: str | None) -> Event:
    """Return the Event for a raw event that passed every check."""
    event_type = raw["event_type"]
    signer = raw["signer"]
    return Event(
        event_id=raw["event_id"],
        event_type=event_type,
        subject=raw["subject_pith_number"],
        target=raw["target"],
        created_at=raw["created_at"],
        signer=signer,
        payload=raw["payload"],
        signature_b64=signature_b64,
        signer_fingerprint=signer["public_key_fingerprint"],
        slot=slot_of(event_type, raw["payload"]),
        signed=signature_b64 is not None,
    )


def _validate_signed(raw: dict[str, Any], trust: TrustConfig, body_bytes: bytes | None) -> Event:
    signer = raw["signer"]
    for key in raw:
        if key not in _ENVELOPE_FIELDS:
            raise EventError(key, "unknown envelope field")
    if set(signer) != _SIGNER_FIELDS:
        raise EventError(
            "signer", f"must have exactly the fields {', '.join(sorted(_SIGNER_FIELDS))}", code="malformed_signer"
        )
    _check_signer_labels(signer)
    try:
        public_key = decode_public_key_hex(signer["public_key_hex"], "signer.public_key_hex")
    except InvalidInput as error:
        raise EventError(error.field, error.reason, code="weak_public_key") from None
    if signer["public_key_fingerprint"] != key_fingerprint(public_key):
        raise EventError(
            "signer.public_key_fingerprint", "is not the fingerprint of signer.public_key_hex", code="malformed_signer"
        )

    event_type = raw["event_type"]
    check_payload(event_type, raw["payload"], raw["subject_pith_number"])
    if body_bytes is None:
        body_bytes = _body_bytes({key: raw[key] for key in BODY_FIELDS})
    digest = hashlib.sha256(ENVELOPE_DOMAIN + body_bytes).hexdigest()
    if raw["event_id"] != "sha256:" + digest:
        raise EventError("event_id", f"is not the id of the event body (sha256:{digest})", code="event_id_mismatch")

    if "signature_b64" not in raw:
        raise EventError("signature_b64", "missing", code="missing_signature")
    try:
        signature = decode_signature_b64(raw["signature_b64"], "signature_b64")
    except InvalidInput as error:
        raise EventError(error.field, error.reason, code="malformed_signature") from None
    try:
        verify_signature(public_key, signature, bytes.fromhex(digest), "signature_b64")
    except InvalidInput as error:
        raise EventError(error.field, error.reason, code="bad_signature") from None

    if not trust.allows(event_type, public_key, trust.is_registry_key(public_key)):
        raise EventError(
            "signer", f"key {signer['public_key_fingerprint']} may not sign {event_type} events",
            code="signer_not_trusted",
        )
    if event_type == "record_created":
        _check_receipt(raw, trust)
    return _validated_event(raw, raw["signature_b64"])


def _validate_unsigned_registry(raw: dict[str, Any], trust: TrustConfig) -> Event:
    signer = raw["signer"]
    if set(signer) != _REGISTRY_SIGNER_FIELDS:
        raise EventError(
            "signer", "must have public_key_hex, or be a registry signer block without it", code="malformed_signer"
        )
    _check_signer_labels(signer)
    if signer["signer_type"] != REGISTRY_SIGNER_TYPE:
        raise EventError(
            "signer.signer_type", f"{quote_value(signer['signer_type'])} has no public key to verify with",
            code="malformed_signer",
        )
    registry_key = trust.registry_keys.get(signer["key_id"])
    if registry_key is None:
        raise EventError("signer.key_id", f"{quote_value(signer['key_id'])} is not a trusted registry key", code="signer_not_trusted")
    if signer["public_key_fingerprint"] != key_fingerprint(registry_key):
        raise EventError(
            "signer.public_key_fingerprint", f"is not the fingerprint of registry key {signer['key_id']}",
            code="malformed_signer",
        )
    if trust.unsigned_registry_events != "accept":
        raise EventError(
            "signer", "unsigned registry events are rejected by the trust configuration",
            code="unsigned_registry_event_rejected",
        )

    event_type = raw["event_type"]
    if not trust.allows(event_type, registry_key, True):
        raise EventError("signer", f"the registry may not sign {event_type} events", code="signer_not_trusted")
    check_payload(event_type, raw["payload"], raw["subject_pith_number"])
    if event_type == "record_created":
        _check_receipt(raw, trust)
    return _validated_event(raw, None)


def validate_event(raw: Any, subject: str, trust: TrustConfig, *, body_bytes: bytes | None = None) -> Event:
    """Check one bundle-form event against the envelope, its schema and the trust configuration.

    Args:
        raw: the event as decoded by the strict JSON reader or the wire decoder.
        subject: the Pith number the event must be about.
        trust: which keys may sign which event types.
        body_bytes: the canonical JSON of the event's body, when the caller
            has already encoded it; it must be exactly those bytes.

    Returns:
        The validated event.

    Raises:
        EventError: with ``field`` naming what failed and ``code`` the stable
            reason the merge records in ``invalid_events``.
    """
    _check_common(raw, subject)
    if "public_key_hex" in raw["signer"]:
        return _validate_signed(raw, trust, body_bytes)
    return _validate_unsigned_registry(raw, trust)
