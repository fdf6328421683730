"""The trust configuration: which keys may sign which event types.

The trust configuration is an explicit input of the merge. Two replicas with
different trust configurations can compute different states from the same
events, so the SHA-256 of its canonical JSON is part of the merge profile
that peers compare before they exchange events.

Document form::

    {
      "trust_version": 1,
      "registry_keys": [{"key_id": "pith-v1-2026-05", "public_key_hex": "b2d5..."}],
      "unsigned_registry_events": "accept",
      "allowed_signers": {"record_created": ["registry"], "mirror_hint": ["any"], ...}
    }

``allowed_signers`` maps every event type to a list of signer rules:
``"any"`` (any valid key), ``"registry"`` (a key in ``registry_keys``) or a
64-hex public key. ``unsigned_registry_events`` decides what happens to
registry events published without a signature this project can check, such
as the registry's ``graph_snapshot``: ``"accept"`` treats them as valid when
their signer block names a registry key, ``"reject"`` makes them invalid.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .canonical import canonical_sha256, field_path
from .errors import DocumentError, InvalidInput, quote_value
from .keys import decode_public_key_hex

__all__ = [
    "MERGE_VERSION",
    "EVENT_TYPES",
    "REGISTRY_KEY_ID",
    "REGISTRY_PUBLIC_KEY_HEX",
    "TrustConfig",
    "default_trust",
]

MERGE_VERSION = "pith-open-graph-merge-v1"

# Every event type, in the order their lists appear in a state document.
EVENT_TYPES = (
    "record_created",
    "graph_snapshot",
    "author_attestation",
    "timestamp_anchor",
    "storage_attestation",
    "citation_signature",
    "replication_record",
    "correction",
    "mirror_hint",
)

REGISTRY_KEY_ID = "pith-v1-2026-05"
REGISTRY_PUBLIC_KEY_HEX = "b2d552b68890857171a78b36a5dccf368a953413288c353f7c9d9d6f94b709b3"

_SIGNER_RULES = ("any", "registry")
_UNSIGNED_POLICIES = ("accept", "reject")


@dataclass(frozen=True)
class TrustConfig:
    """A validated trust configuration.

    Attributes:
        registry_keys: raw registry public keys by ``key_id``.
        unsigned_registry_events: ``"accept"`` or ``"reject"``.
        allowed_signers: signer rules by event type.
        document: the configuration as a JSON value.
        digest: SHA-256 hex of the canonical JSON of ``document``.
    """

    registry_keys: dict[str, bytes]
    unsigned_registry_events: str
    allowed_signers: dict[str, tuple[str, ...]]
    document: dict[str, Any] = field(repr=False)
    digest: str

    @classmethod
    def from_document(cls, document: Any) -> TrustConfig:
        """Validate a trust configuration document.

        Raises:
            DocumentError: naming the first invalid field.
        """
        if not isinstance(document, dict):
            raise DocumentError("", "trust configuration must be an object")
        expected_keys = {"trust_version", "registry_keys", "unsigned_registry_events", "allowed_signers"}
        for key in document:
            if key not in expected_keys:
                raise DocumentError(key, "unknown trust configuration field")
        for key in expected_keys:
            if key not in document:
                raise DocumentError(key, "missing")
        # Only the integer 1: true and 1.0 compare equal to 1 in Python but
        # have other canonical JSON, so they would give another digest.
        if type(document["trust_version"]) is not int or document["trust_version"] != 1:
            raise DocumentError("trust_version", f"{quote_value(document['trust_version'])} is not supported (expected 1)")

        registry_keys = cls._read_registry_keys(document["registry_keys"])

        policy = document["unsigned_registry_events"]
        if policy not in _UNSIGNED_POLICIES:
            raise DocumentError("unsigned_registry_events", f"{quote_value(policy)} is not 'accept' or 'reject'")

        allowed = document["allowed_signers"]
        if not isinstance(allowed, dict):
            raise DocumentError("allowed_signers", "must be an object")
        allowed_signers: dict[str, tuple[str, ...]] = {}
        for event_type in EVENT_TYPES:
            rules = allowed.get(event_type)
            path = field_path("allowed_signers", event_type)
            if not isinstance(rules, list) or not rules:
                raise DocumentError(path, "must be a non-empty list of signer rules")
            for index, rule in enumerate(rules):
                if rule in _SIGNER_RULES:
                    continue
                try:
                    decode_public_key_hex(rule, field_path(path, index))
                except InvalidInput as error:
                    raise DocumentError(error.field, "must be 'any', 'registry' or a 64-hex public key") from None
            allowed_signers[event_type] = tuple(rules)
        for event_type in allowed:
            if event_type not in EVENT_TYPES:
                raise DocumentError(field_path("allowed_signers", event_type), "unknown event type")

        # A copy, so that a caller changing its document later cannot make
        # ``document`` disagree with ``digest``.
        document = copy.deepcopy(document)
        return cls(
            registry_keys=registry_keys,
            unsigned_registry_events=policy,
            allowed_signers=allowed_signers,
            document=document,
            digest=canonical_sha256(document),
        )

    @staticmethod
    def _read_registry_keys(entries: Any) -> dict[str, bytes]:
        if not isinstance(entries, list):
            raise DocumentError("registry_keys", "must be a list")
        keys: dict[str, bytes] = {}
        for index, entry in enumerate(entries):
            path = field_path("registry_keys", index)
            if not isinstance(entry, dict) or set(entry) != {"key_id", "public_key_hex"}:
                raise DocumentError(path, "must be an object with exactly key_id and public_key_hex")
            key_id = entry["key_id"]
            if not isinstance(key_id, str) or not key_id or key_id in keys:
                raise DocumentError(field_path(path, "key_id"), f"{quote_value(key_id)} is empty, not text or repeated")
            try:
                keys[key_id] = decode_public_key_hex(entry["public_key_hex"], field_path(path, "public_key_hex"))
            except InvalidInput as error:
                raise DocumentError(error.field, error.reason) from None
        return keys

    def is_registry_key(self, raw_public_key: bytes) -> bool:
        """Return whether ``raw_public_key`` is one of the registry keys."""
        return raw_public_key in self.registry_keys.values()

    def allows(self, event_type: str, raw_public_key: bytes, is_registry: bool) -> bool:
        """Return whether a signer may sign events of ``event_type``."""
        for rule in self.allowed_signers[event_type]:
            if rule == "any":
                return True
            if rule == "registry" and is_registry:
                return True
            if rule == raw_public_key.hex():
                return True
        return False

    @property
    def profile(self) -> dict[str, str]:
        """The merge profile peers must share: merge version and trust digest."""
        return {"merge_version": MERGE_VERSION, "trust_sha256": self.digest}


def default_trust() -> TrustConfig:
    """Return the built-in trust configuration.

    Registry events without a checkable signature are accepted, so that
    replicas reproduce the registry's published state hashes. Only the
    registry may create records and graph snapshots; any valid key may sign
    the other event types, because their signers (authors, mirrors,
    replicators) are not known in advance.
    """
    allowed = {event_type: ["any"] for event_type in EVENT_TYPES}
    allowed["record_created"] = ["registry"]
    allowed["graph_snapshot"] = ["registry"]
    return TrustConfig.from_document(
        {
            "trust_version": 1,
            "registry_keys": [{"key_id": REGISTRY_KEY_ID, "public_key_hex": REGISTRY_PUBLIC_KEY_HEX}],
            "unsigned_registry_events": "accept",
            "allowed_signers": allowed,
        }
    )
