"""Builders for signed and unsigned test events, on the real published data.

Keys come from ``SigningKey.from_label``, so every run signs with the same
seeds and produces the same event ids. Ed25519 signing is the slow part of
these tests, so signed events are cached by their inputs.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from node.demo import fixture_path
from protocol import (
    EVENT_TYPES,
    TARGETS,
    MergeInput,
    SigningKey,
    TrustConfig,
    build_event,
    canonical_sha256,
    compute_event_id,
    key_fingerprint,
    read_document,
    state_input,
)
from protocol.keys import encode_signature_b64
from protocol.trust import REGISTRY_KEY_ID, REGISTRY_PUBLIC_KEY_HEX

__all__ = [
    "SUBJECT",
    "RECORD_LINE_SUBJECT",
    "REGISTRY_FINGERPRINT",
    "key",
    "signed_event",
    "unsigned_registry_event",
    "published_state",
    "published_input",
    "record_line",
    "receipt_for",
    "record_created_payload",
    "trust_with_registry",
    "valid_payload",
    "mutable",
    "resign",
    "sign_with_nonce",
    "with_nonce",
    "BODY_FIELDS",
]

# The envelope fields that the event id covers.
BODY_FIELDS = ("event_type", "subject_pith_number", "target", "created_at", "signer", "payload")

# The subject of the published state shipped in node/data/pith.
SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
# A published record line with its canonical record and aliases.
RECORD_LINE_SUBJECT = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"
REGISTRY_FINGERPRINT = key_fingerprint(bytes.fromhex(REGISTRY_PUBLIC_KEY_HEX))


@functools.cache
def key(label: str) -> SigningKey:
    """Return the deterministic test key whose seed is SHA-256 of ``label``."""
    return SigningKey.from_label(label)


@functools.cache
def _published_bytes() -> bytes:
    return fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()


def published_state() -> dict[str, Any]:
    """Return a fresh copy of the published state document."""
    return read_document(_published_bytes())


def published_input() -> MergeInput:
    """Return the merge input (record, aliases, events) of the published state."""
    return state_input(published_state())


@functools.cache
def _record_lines() -> dict[str, str]:
    lines = fixture_path("records.jsonl").read_text(encoding="utf-8").splitlines()
    return {json.loads(line)["pith_number"]: line for line in lines}


def record_line(pith_number: str) -> dict[str, Any]:
    """Return a fresh copy of one published line of records.jsonl."""
    return json.loads(_record_lines()[pith_number])


def receipt_for(signing_key: SigningKey, key_id: str, digest: str) -> dict[str, Any]:
    """Return a registry receipt over ``digest`` signed by a test key."""
    signature = signing_key.sign(bytes.fromhex(digest))
    return {
        "algorithm": "ed25519",
        "canonical_sha256": digest,
        "key_id": key_id,
        "kind": "pith_receipt",
        "public_key_fingerprint": signing_key.fingerprint,
        "signature_b64": encode_signature_b64(signature),
        "signed_message": "canonical_sha256_bytes",
    }


def record_created_payload(registry_key: SigningKey, key_id: str, pith_number: str = RECORD_LINE_SUBJECT) -> dict[str, Any]:
    """Return a record_created payload for a published record, with a receipt by a test key."""
    line = record_line(pith_number)
    record = line["canonical_record"]
    digest = canonical_sha256(record)
    return {
        "canonical_record": record,
        "canonical_sha256": digest,
        "receipt": receipt_for(registry_key, key_id, digest),
        "source_id": record["source"]["id"],
        "source_kind": record["source"]["kind"],
        "source_version": record["source"]["version"],
    }


def trust_with_registry(
    registry_key: SigningKey | None = None,
    *,
    key_id: str = "test-registry",
    unsigned: str = "accept",
    keep_real_key: bool = False,
) -> TrustConfig:
    """Return the default rules with a test key as a registry key.

    With ``keep_real_key`` the real registry key stays listed too, so that
    the published unsigned registry events remain valid.
    """
    keys = []
    if keep_real_key:
        keys.append({"key_id": REGISTRY_KEY_ID, "public_key_hex": REGISTRY_PUBLIC_KEY_HEX})
    if registry_key is not None:
        keys.append({"key_id": key_id, "public_key_hex": registry_key.public_key_hex})
    allowed = {event_type: ["any"] for event_type in EVENT_TYPES}
    allowed["record_created"] = ["registry"]
    allowed["graph_snapshot"] = ["registry"]
    return TrustConfig.from_document(
        {
            "trust_version": 1,
            "registry_keys": keys,
            "unsigned_registry_events": unsigned,
            "allowed_signers": allowed,
        }
    )


def valid_payload(event_type: str, subject: str = SUBJECT, variant: int = 0) -> dict[str, Any]:
    """Return a valid payload of ``event_type``; ``variant`` changes a content field, not the slot.

    ``record_created`` is not covered: its payload needs a receipt.
    """
    suffix = f"v{variant}"
    payloads: dict[str, dict[str, Any]] = {
        "graph_snapshot": {"graph_snapshot": {"builder": suffix, "claims": []}},
        "author_attestation": {"author_name": f"Ada Lovelace {suffix}", "statement": "authored"},
        "timestamp_anchor": {
            "anchor_type": "opentimestamps",
            "anchored_sha256": "4dd955cab9f8780f97695b3af463085e19ab1f7da6f922959e527872d10dff1e",
            "proof_b64": "AAEC" + ("AA==" if variant else "Aw=="),
        },
        "storage_attestation": {
            "url": "https://store.example.org/paper.pdf",
            "content_sha256": "ab" * 32,
            "size_bytes": 1000 + variant,
            "media_type": "application/pdf",
        },
        "citation_signature": {"cites_pith_number": "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3", "context": f"cited {suffix}"},
        "replication_record": {
            "replication_id": "rep-1",
            "outcome": "reproduced",
            "report_url": f"https://reports.example.org/{suffix}",
        },
        "correction": {"corrects_event_id": "sha256:" + "0" * 64, "reason": f"retracted {suffix}"},
        "mirror_hint": {"slot": "primary", "url": f"https://mirror.example.org/{suffix}/"},
    }
    return payloads[event_type]


def _freeze(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@functools.cache
def _signed(label: str, event_type: str, payload_json: str, created_at: str, subject: str, signer_type: str, key_id: str) -> str:
    event = build_event(
        key(label),
        event_type=event_type,
        subject=subject,
        payload=json.loads(payload_json),
        created_at=created_at,
        key_id=key_id,
        signer_id=f"{label}.example.org",
        signer_type=signer_type,
    )
    return json.dumps(event)


def signed_event(
    label: str,
    event_type: str,
    payload: dict[str, Any],
    created_at: str = "2026-06-01T00:00:00Z",
    *,
    subject: str = SUBJECT,
    signer_type: str = "mirror",
    key_id: str | None = None,
) -> dict[str, Any]:
    """Return a fresh copy of an envelope v1 event signed by ``key(label)``.

    ``key_id`` defaults to ``label`` + ``-key``.
    """
    raw = _signed(label, event_type, _freeze(payload), created_at, subject, signer_type, key_id or f"{label}-key")
    return json.loads(raw)


def resign(event: dict[str, Any], signing_key: SigningKey) -> dict[str, Any]:
    """Return ``event`` with its id recomputed from its body and a fresh signature.

    The body is not checked, so a test can sign a body that ``build_event``
    would reject and reach the check it wants.
    """
    body = {name: copy.deepcopy(event[name]) for name in BODY_FIELDS if name in event}
    event_id = compute_event_id(body)
    signature = signing_key.sign(bytes.fromhex(event_id.removeprefix("sha256:")))
    return {"event_id": event_id, **body, "signature_b64": encode_signature_b64(signature)}


# Ed25519 (RFC 8032, section 5.1) in plain integers, used only to make a
# second valid signature of one message with another nonce.
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_BASE_Y = 4 * pow(5, _P - 2, _P) % _P


def _recover_x(y: int, sign: int) -> int:
    x_squared = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x_squared, (_P + 3) // 8, _P)
    if (x * x - x_squared) % _P != 0:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x & 1 != sign:
        x = _P - x
    return x


def _point_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def _scalar_multiply(scalar: int, point: tuple[int, int]) -> tuple[int, int]:
    result = (0, 1)
    while scalar:
        if scalar & 1:
            result = _point_add(result, point)
        point = _point_add(point, point)
        scalar >>= 1
    return result


def _encode_point(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def sign_with_nonce(signing_key: SigningKey, message: bytes, nonce: int) -> bytes:
    """Return a valid Ed25519 signature of ``message`` whose nonce is ``nonce``.

    Standard Ed25519 derives the nonce from the key and message, so it
    always gives one signature. Any nonce yields a signature that verifies.
    """
    digest = hashlib.sha512(signing_key.seed()).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar &= (1 << 254) - 8
    scalar |= 1 << 254
    base = (_recover_x(_BASE_Y, 0), _BASE_Y)
    r_encoded = _encode_point(_scalar_multiply(nonce % _L, base))
    challenge = int.from_bytes(hashlib.sha512(r_encoded + signing_key.public_key + message).digest(), "little")
    s_value = (nonce + challenge * scalar) % _L
    return r_encoded + s_value.to_bytes(32, "little")


def with_nonce(event: dict[str, Any], signing_key: SigningKey, nonce: int) -> dict[str, Any]:
    """Return ``event`` with a second valid signature made with ``nonce``."""
    message = bytes.fromhex(event["event_id"].removeprefix("sha256:"))
    signature = sign_with_nonce(signing_key, message, nonce)
    return {**copy.deepcopy(event), "signature_b64": encode_signature_b64(signature)}


def unsigned_registry_event(
    event_type: str,
    payload: dict[str, Any],
    created_at: str = "2026-06-01T00:00:00Z",
    *,
    subject: str = SUBJECT,
    event_id: str | None = None,
    key_id: str = REGISTRY_KEY_ID,
    fingerprint: str = REGISTRY_FINGERPRINT,
) -> dict[str, Any]:
    """Return an event shaped like the registry's unsigned events.

    Anyone can write such an event because it has no signature; its id is
    the hash of its content here, but any id is accepted.
    """
    event = {
        "event_type": event_type,
        "subject_pith_number": subject,
        "target": TARGETS[event_type],
        "created_at": created_at,
        "signer": {
            "key_id": key_id,
            "public_key_fingerprint": fingerprint,
            "signer_id": "pith.science",
            "signer_type": "pith_registry",
        },
        "payload": copy.deepcopy(payload),
    }
    event["event_id"] = event_id or "sha256:" + canonical_sha256(event)
    return event


def mutable(value: Any) -> Any:
    """Return a deep copy, so a test can change it without touching a cache."""
    return copy.deepcopy(value)
