"""The trust configuration: validation, signer rules and the digest."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from helpers import SUBJECT, key, signed_event, valid_payload
from protocol import EVENT_TYPES, MERGE_VERSION, DocumentError, EventError, TrustConfig, canonical_sha256, default_trust, validate_event
from protocol.trust import REGISTRY_KEY_ID, REGISTRY_PUBLIC_KEY_HEX

# Regression pin: changing the default trust configuration changes every
# replica's merge profile, so it must be a deliberate change.
DEFAULT_TRUST_SHA256 = "b82f05206406b2df298889ddb926763b61815ebb24ee3a3afcc7bd84a295eace"
IDENTITY_KEY_HEX = "01" + "00" * 31


def _document() -> dict[str, Any]:
    return copy.deepcopy(default_trust().document)


def _error(document: Any) -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        TrustConfig.from_document(document)
    return caught.value


def test_default_digest_pinned() -> None:
    assert default_trust().digest == DEFAULT_TRUST_SHA256


def test_digest_is_canonical_hash() -> None:
    assert canonical_sha256(default_trust().document) == DEFAULT_TRUST_SHA256


def test_digest_ignores_key_order() -> None:
    document = _document()
    reordered = {name: document[name] for name in reversed(list(document))}
    assert TrustConfig.from_document(reordered).digest == DEFAULT_TRUST_SHA256


def test_default_profile() -> None:
    assert default_trust().profile == {"merge_version": MERGE_VERSION, "trust_sha256": DEFAULT_TRUST_SHA256}


def test_default_document_contents() -> None:
    document = default_trust().document
    assert document["registry_keys"] == [{"key_id": REGISTRY_KEY_ID, "public_key_hex": REGISTRY_PUBLIC_KEY_HEX}]
    assert document["unsigned_registry_events"] == "accept"
    assert document["allowed_signers"]["record_created"] == ["registry"]
    assert document["allowed_signers"]["graph_snapshot"] == ["registry"]
    assert [event_type for event_type, rules in document["allowed_signers"].items() if rules == ["any"]] == list(EVENT_TYPES[2:])


def test_document_copied_on_read() -> None:
    document = _document()
    trust = TrustConfig.from_document(document)
    document["unsigned_registry_events"] = "reject"
    assert trust.document["unsigned_registry_events"] == "accept"
    assert canonical_sha256(trust.document) == trust.digest


# (case id, change to the default document, field named by the error)
TRUST_ERRORS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown_field", lambda d: d.__setitem__("extra", 1), "extra"),
    ("missing_version", lambda d: d.pop("trust_version"), "trust_version"),
    ("missing_keys", lambda d: d.pop("registry_keys"), "registry_keys"),
    ("missing_policy", lambda d: d.pop("unsigned_registry_events"), "unsigned_registry_events"),
    ("missing_signers", lambda d: d.pop("allowed_signers"), "allowed_signers"),
    ("version_two", lambda d: d.__setitem__("trust_version", 2), "trust_version"),
    ("version_text", lambda d: d.__setitem__("trust_version", "1"), "trust_version"),
    ("version_true", lambda d: d.__setitem__("trust_version", True), "trust_version"),
    ("version_float", lambda d: d.__setitem__("trust_version", 1.0), "trust_version"),
    ("keys_object", lambda d: d.__setitem__("registry_keys", {}), "registry_keys"),
    ("key_entry_extra", lambda d: d["registry_keys"][0].__setitem__("note", "x"), "registry_keys[0]"),
    ("key_entry_text", lambda d: d["registry_keys"].append("key"), "registry_keys[1]"),
    ("key_id_empty", lambda d: d["registry_keys"][0].__setitem__("key_id", ""), "registry_keys[0].key_id"),
    ("key_id_number", lambda d: d["registry_keys"][0].__setitem__("key_id", 7), "registry_keys[0].key_id"),
    (
        "key_id_duplicate",
        lambda d: d["registry_keys"].append({"key_id": REGISTRY_KEY_ID, "public_key_hex": key("other").public_key_hex}),
        "registry_keys[1].key_id",
    ),
    ("key_weak", lambda d: d["registry_keys"][0].__setitem__("public_key_hex", IDENTITY_KEY_HEX), "registry_keys[0].public_key_hex"),
    ("key_upper", lambda d: d["registry_keys"][0].__setitem__("public_key_hex", REGISTRY_PUBLIC_KEY_HEX.upper()), "registry_keys[0].public_key_hex"),
    ("key_short", lambda d: d["registry_keys"][0].__setitem__("public_key_hex", REGISTRY_PUBLIC_KEY_HEX[:62]), "registry_keys[0].public_key_hex"),
    ("policy_other", lambda d: d.__setitem__("unsigned_registry_events", "warn"), "unsigned_registry_events"),
    ("signers_list", lambda d: d.__setitem__("allowed_signers", []), "allowed_signers"),
    ("signers_missing_type", lambda d: d["allowed_signers"].pop("mirror_hint"), "allowed_signers.mirror_hint"),
    ("signers_empty_rules", lambda d: d["allowed_signers"].__setitem__("correction", []), "allowed_signers.correction"),
    ("signers_rule_text", lambda d: d["allowed_signers"].__setitem__("correction", "any"), "allowed_signers.correction"),
    ("rule_unknown", lambda d: d["allowed_signers"].__setitem__("correction", ["Any"]), "allowed_signers.correction[0]"),
    ("rule_weak_key", lambda d: d["allowed_signers"].__setitem__("correction", ["any", IDENTITY_KEY_HEX]), "allowed_signers.correction[1]"),
    ("rule_number", lambda d: d["allowed_signers"].__setitem__("correction", [1]), "allowed_signers.correction[0]"),
    ("signers_unknown_type", lambda d: d["allowed_signers"].__setitem__("review", ["any"]), "allowed_signers.review"),
]


@pytest.mark.parametrize(("change", "field"), [case[1:] for case in TRUST_ERRORS], ids=[case[0] for case in TRUST_ERRORS])
def test_trust_document_error(change: Callable[[dict[str, Any]], None], field: str) -> None:
    document = _document()
    change(document)
    error = _error(document)
    assert error.field == field


def test_trust_not_object() -> None:
    error = _error([])
    assert error.field == ""


def test_weak_registry_key_reason() -> None:
    document = _document()
    document["registry_keys"][0]["public_key_hex"] = IDENTITY_KEY_HEX
    assert _error(document).reason == "public key 0100000000000000... is weak or not a valid Ed25519 point"


# Signer rules -----------------------------------------------------------------------


def _trust_with_rules(event_type: str, rules: list[str]) -> TrustConfig:
    document = _document()
    document["allowed_signers"][event_type] = rules
    return TrustConfig.from_document(document)


def _hint(label: str) -> dict[str, Any]:
    return signed_event(label, "mirror_hint", valid_payload("mirror_hint"), "2026-06-01T00:00:00Z")


def test_key_rule_allows_that_key() -> None:
    trust = _trust_with_rules("mirror_hint", [key("trusted-mirror").public_key_hex])
    event = validate_event(_hint("trusted-mirror"), SUBJECT, trust)
    assert event.signer_fingerprint == key("trusted-mirror").fingerprint


def test_key_rule_rejects_other_key() -> None:
    trust = _trust_with_rules("mirror_hint", [key("trusted-mirror").public_key_hex])
    with pytest.raises(EventError) as caught:
        validate_event(_hint("other-mirror"), SUBJECT, trust)
    assert caught.value.code == "signer_not_trusted"


def test_registry_rule_rejects_mirror() -> None:
    trust = _trust_with_rules("mirror_hint", ["registry"])
    with pytest.raises(EventError) as caught:
        validate_event(_hint("other-mirror"), SUBJECT, trust)
    assert caught.value.code == "signer_not_trusted"


def test_allows_by_rule() -> None:
    trust = _trust_with_rules("mirror_hint", ["registry", key("trusted-mirror").public_key_hex])
    registry = bytes.fromhex(REGISTRY_PUBLIC_KEY_HEX)
    assert trust.allows("mirror_hint", registry, True) is True
    assert trust.allows("mirror_hint", key("trusted-mirror").public_key, False) is True
    assert trust.allows("mirror_hint", key("other-mirror").public_key, False) is False
    assert trust.allows("correction", key("other-mirror").public_key, False) is True


def test_is_registry_key() -> None:
    trust = default_trust()
    assert trust.is_registry_key(bytes.fromhex(REGISTRY_PUBLIC_KEY_HEX)) is True
    assert trust.is_registry_key(key("other-mirror").public_key) is False


def test_rule_change_changes_digest() -> None:
    trust = _trust_with_rules("mirror_hint", ["registry"])
    assert trust.digest != DEFAULT_TRUST_SHA256
    assert trust.digest == canonical_sha256(trust.document)


def test_reject_policy_changes_digest() -> None:
    document = _document()
    document["unsigned_registry_events"] = "reject"
    assert TrustConfig.from_document(document).digest != DEFAULT_TRUST_SHA256
