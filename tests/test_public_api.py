"""The public API of the protocol package: its names and where they come from."""

from __future__ import annotations

import importlib
import pkgutil

import protocol

PUBLIC_NAMES = [
    "BUNDLE_TYPE",
    "CanonicalJSONError",
    "Connection",
    "ConnectionEvent",
    "DEFAULT_LIMITS",
    "DocumentError",
    "ENVELOPE_DOMAIN",
    "ERROR_CODES",
    "EVENT_TYPES",
    "Event",
    "EventError",
    "EventsAnnounced",
    "EventsRequested",
    "HandshakeFailed",
    "HelloReceived",
    "IdentifierError",
    "InvalidInput",
    "ItemsReceived",
    "KeyFormatError",
    "Limits",
    "MAX_BUNDLE_EVENTS",
    "MAX_EVENT_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_FUTURE_SKEW_SECONDS",
    "MAX_SAFE_INTEGER",
    "MERGE_VERSION",
    "MergeInput",
    "MergeProfile",
    "PROTOCOL_NAME",
    "PeerAuthenticated",
    "PeerClosed",
    "PeerError",
    "PeersReceived",
    "PingReceived",
    "PithError",
    "PithNumber",
    "PongReceived",
    "ProtocolViolation",
    "ReconcileReceived",
    "Reconciler",
    "Role",
    "STATE_TYPE",
    "SignatureError",
    "SigningKey",
    "SortedIds",
    "State",
    "TARGETS",
    "TrustConfig",
    "UsageError",
    "WireError",
    "build_event",
    "bundle_input",
    "canonical_bytes",
    "canonical_sha256",
    "check_aliases",
    "check_not_future",
    "check_record_line",
    "check_state",
    "compute_event_id",
    "decode_public_key_hex",
    "decode_signature_b64",
    "default_trust",
    "derive_aliases",
    "document_kind",
    "emit_bundle",
    "format_timestamp",
    "item_id",
    "key_fingerprint",
    "merge",
    "parse_arxiv_id",
    "parse_json",
    "parse_pith_number",
    "parse_timestamp",
    "pith_number_for",
    "pith_suffix",
    "read_document",
    "record_pith_number",
    "state_hash",
    "state_input",
    "validate_event",
    "verify_receipt",
]


def test_all_is_pinned() -> None:
    assert sorted(protocol.__all__) == PUBLIC_NAMES


def test_all_has_no_duplicates() -> None:
    assert len(set(protocol.__all__)) == len(protocol.__all__)


def test_every_name_resolves() -> None:
    missing = [name for name in PUBLIC_NAMES if not hasattr(protocol, name)]
    assert missing == []


def test_star_import_gives_all_names() -> None:
    namespace: dict[str, object] = {}
    exec("from protocol import *", namespace)
    assert sorted(key for key in namespace if key != "__builtins__") == PUBLIC_NAMES


def test_errors_share_base_class() -> None:
    input_errors = (
        "CanonicalJSONError",
        "IdentifierError",
        "KeyFormatError",
        "SignatureError",
        "EventError",
        "DocumentError",
        "WireError",
    )
    for name in input_errors:
        assert issubclass(getattr(protocol, name), protocol.InvalidInput), name
    assert issubclass(protocol.InvalidInput, protocol.PithError)
    assert issubclass(protocol.UsageError, protocol.PithError)
    assert not issubclass(protocol.UsageError, protocol.InvalidInput)


def test_submodule_names_resolve() -> None:
    # Each submodule's own __all__ must name things that exist, because the
    # package re-exports from them and star imports read them.
    submodules = [info.name for info in pkgutil.iter_modules(protocol.__path__)]
    assert "canonical" in submodules
    for module_name in submodules:
        module = importlib.import_module(f"protocol.{module_name}")
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], module_name
