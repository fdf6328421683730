"""Sans-IO core of pith-mirror: canonical JSON, identifiers, keys, events and the merge.

Nothing in this package opens sockets or files, reads clocks or starts
threads; ``node`` does the I/O. The names below are the public API, pinned
by a test.
"""

from .canonical import DEFAULT_LIMITS, MAX_SAFE_INTEGER, Limits, canonical_bytes, canonical_sha256, parse_json
from .documents import (
    BUNDLE_TYPE,
    MAX_BUNDLE_EVENTS,
    STATE_TYPE,
    MergeInput,
    bundle_input,
    check_record_line,
    check_state,
    document_kind,
    emit_bundle,
    read_document,
    state_input,
)
from .errors import (
    CanonicalJSONError,
    DocumentError,
    EventError,
    IdentifierError,
    InvalidInput,
    KeyFormatError,
    PithError,
    SignatureError,
    UsageError,
    WireError,
)
from .events import ENVELOPE_DOMAIN, Event, build_event, compute_event_id, validate_event
from .identifiers import (
    PithNumber,
    check_aliases,
    derive_aliases,
    parse_arxiv_id,
    parse_pith_number,
    pith_number_for,
    pith_suffix,
    record_pith_number,
)
from .keys import SigningKey, decode_public_key_hex, decode_signature_b64, key_fingerprint, verify_receipt
from .merge import MAX_EVENT_BYTES, merge, state_hash
from .payloads import TARGETS
from .timestamps import MAX_FUTURE_SKEW_SECONDS, check_not_future, format_timestamp, parse_timestamp
from .trust import EVENT_TYPES, MERGE_VERSION, TrustConfig, default_trust

__all__ = [
    "BUNDLE_TYPE",
    "CanonicalJSONError",
    "DEFAULT_LIMITS",
    "DocumentError",
    "ENVELOPE_DOMAIN",
    "EVENT_TYPES",
    "Event",
    "EventError",
    "IdentifierError",
    "InvalidInput",
    "KeyFormatError",
    "Limits",
    "MAX_BUNDLE_EVENTS",
    "MAX_EVENT_BYTES",
    "MAX_FUTURE_SKEW_SECONDS",
    "MAX_SAFE_INTEGER",
    "MERGE_VERSION",
    "MergeInput",
    "PithError",
    "PithNumber",
    "STATE_TYPE",
    "SignatureError",
    "SigningKey",
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
