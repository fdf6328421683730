"""Payload schemas of every event type, URL rules, ORCID iDs and base64 proofs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from helpers import SUBJECT, key, record_created_payload, valid_payload
from protocol import EventError
from protocol.payloads import check_payload, check_url, slot_of

CLOSED_TYPES = [
    "author_attestation",
    "timestamp_anchor",
    "storage_attestation",
    "citation_signature",
    "replication_record",
    "correction",
    "mirror_hint",
]

# Required and optional fields of each closed payload schema.
SCHEMA_FIELDS = {
    "author_attestation": ({"author_name", "statement"}, {"orcid"}),
    "timestamp_anchor": ({"anchor_type", "anchored_sha256", "proof_b64"}, set()),
    "storage_attestation": ({"url", "content_sha256", "size_bytes", "media_type"}, set()),
    "citation_signature": ({"cites_pith_number"}, {"context"}),
    "replication_record": ({"replication_id", "outcome", "report_url"}, {"report_sha256"}),
    "correction": ({"corrects_event_id", "reason"}, set()),
    "mirror_hint": ({"slot", "url"}, {"gossip"}),
}
OPTIONAL_VALUES = {
    "orcid": "0000-0002-1825-0097",
    "context": "cited in section 2",
    "report_sha256": "cd" * 32,
    "gossip": "mirror.example.org:7400",
}


def _error(event_type: str, payload: Any) -> EventError:
    with pytest.raises(EventError) as caught:
        check_payload(event_type, payload, SUBJECT)
    return caught.value


def _with(event_type: str, **changes: Any) -> dict[str, Any]:
    payload = copy.deepcopy(valid_payload(event_type))
    payload.update(changes)
    return payload


@pytest.mark.parametrize("event_type", CLOSED_TYPES)
def test_valid_payload_passes(event_type: str) -> None:
    check_payload(event_type, valid_payload(event_type), SUBJECT)


@pytest.mark.parametrize("event_type", CLOSED_TYPES)
def test_helper_payload_has_required_fields(event_type: str) -> None:
    required, optional = SCHEMA_FIELDS[event_type]
    assert required <= set(valid_payload(event_type))
    assert set(valid_payload(event_type)) <= required | optional


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(event_type, field) for event_type, (required, _) in SCHEMA_FIELDS.items() for field in sorted(required)],
)
def test_missing_required_field(event_type: str, field: str) -> None:
    payload = {name: value for name, value in valid_payload(event_type).items() if name != field}
    error = _error(event_type, payload)
    assert error.code == "invalid_payload"
    assert error.field == f"payload.{field}"
    assert error.reason == "missing"


@pytest.mark.parametrize(
    ("event_type", "field"),
    [(event_type, field) for event_type, (_, optional) in SCHEMA_FIELDS.items() for field in sorted(optional)],
)
def test_optional_field_accepted(event_type: str, field: str) -> None:
    check_payload(event_type, _with(event_type, **{field: OPTIONAL_VALUES[field]}), SUBJECT)


@pytest.mark.parametrize("event_type", CLOSED_TYPES)
def test_unknown_field_rejected(event_type: str) -> None:
    error = _error(event_type, _with(event_type, note="extra"))
    assert error.code == "invalid_payload"
    assert error.field == "payload.note"


@pytest.mark.parametrize("event_type", [*CLOSED_TYPES, "graph_snapshot", "record_created"])
def test_payload_not_object(event_type: str) -> None:
    error = _error(event_type, ["a"])
    assert error.code == "invalid_payload"
    assert error.field == "payload"


# URLs --------------------------------------------------------------------------

VALID_URLS = [
    "https://mirror.example.org/pith/",
    "http://127.0.0.1:8080/bundles/",
    "http://[::1]:8080/",
    "https://mirror.example.org/a?b=c#d",
    "https://m.example.org/" + "a" * (2048 - len("https://m.example.org/")),
]

# (case id, URL, expected start of the reason)
INVALID_URLS = [
    ("userinfo", "http://a@127.0.0.1/", "URL must not contain userinfo"),
    ("userinfo_password", "https://user:pass@mirror.example.org/", "URL must not contain userinfo"),
    ("file_scheme", "file:///etc/passwd", "URL scheme 'file'"),
    ("ftp_scheme", "ftp://mirror.example.org/", "URL scheme 'ftp'"),
    ("javascript_scheme", "javascript:alert(1)", "URL scheme 'javascript'"),
    ("gopher_scheme", "gopher://127.0.0.1:6379/_INFO", "URL scheme 'gopher'"),
    ("no_scheme", "mirror.example.org/pith/", "URL scheme ''"),
    ("scheme_relative", "//mirror.example.org/", "URL scheme ''"),
    ("no_host", "http:///pith/", "URL has no host"),
    ("port_zero", "http://127.0.0.1:0/", "URL port 0"),
    ("port_too_large", "http://127.0.0.1:65536/", "URL 'http://127.0.0.1:65536/' is malformed"),
    ("port_text", "http://127.0.0.1:http/", "URL 'http://127.0.0.1:http/' is malformed"),
    ("control_char", "https://mirror.example.org/\x01", "URL must be printable ASCII"),
    ("delete_char", "https://mirror.example.org/\x7f", "URL must be printable ASCII"),
    ("newline", "https://mirror.example.org/\nHost: x", "URL must be printable ASCII"),
    ("tab", "https://mirror.example.org/\t", "URL must be printable ASCII"),
    ("space", "https://mirror.example.org/a b", "URL must be printable ASCII"),
    ("non_ascii", "https://mirror.exämple.org/", "URL must be printable ASCII"),
    ("too_long", "https://m.example.org/" + "a" * (2049 - len("https://m.example.org/")), "URL must be 1 to 2048"),
    ("empty", "", "URL must be 1 to 2048"),
]


@pytest.mark.parametrize("url", VALID_URLS)
def test_url_accepted(url: str) -> None:
    assert check_url(url, "payload.url") == url


@pytest.mark.parametrize(("url", "reason"), [case[1:] for case in INVALID_URLS], ids=[case[0] for case in INVALID_URLS])
def test_url_rejected(url: str, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        check_url(url, "payload.url")
    assert caught.value.code == "invalid_payload"
    assert caught.value.field == "payload.url"
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize("value", [None, 1, ["https://a.example.org/"]])
def test_url_not_text(value: Any) -> None:
    with pytest.raises(EventError) as caught:
        check_url(value, "payload.url")
    assert caught.value.code == "invalid_payload"


def test_url_length_boundary() -> None:
    assert len(VALID_URLS[-1]) == 2048
    assert len(INVALID_URLS[-2][1]) == 2049


@pytest.mark.parametrize(("event_type", "field"), [("storage_attestation", "url"), ("replication_record", "report_url"), ("mirror_hint", "url")])
def test_url_fields_use_url_rules(event_type: str, field: str) -> None:
    error = _error(event_type, _with(event_type, **{field: "http://a@127.0.0.1/"}))
    assert error.field == f"payload.{field}"
    assert error.code == "invalid_payload"


# Field rules ---------------------------------------------------------------------

# (case id, event type, field, value)
INVALID_FIELDS = [
    ("orcid_checksum", "author_attestation", "orcid", "0000-0002-1825-0098"),
    ("orcid_short", "author_attestation", "orcid", "0000-0002-1825-009"),
    ("orcid_lowercase_x", "author_attestation", "orcid", "0000-0002-1694-233x"),
    ("orcid_no_dashes", "author_attestation", "orcid", "0000000218250097"),
    ("orcid_arabic_indic", "author_attestation", "orcid", "٠٠٠٠-0002-1825-0097"),
    ("author_empty", "author_attestation", "author_name", ""),
    ("author_too_long", "author_attestation", "author_name", "a" * 257),
    ("author_control", "author_attestation", "author_name", "Ada\x00Lovelace"),
    ("author_delete", "author_attestation", "author_name", "Ada\x7f"),
    ("author_number", "author_attestation", "author_name", 5),
    ("statement_other", "author_attestation", "statement", "reviewed"),
    ("anchor_type_other", "timestamp_anchor", "anchor_type", "bitcoin"),
    ("anchored_upper", "timestamp_anchor", "anchored_sha256", "AB" * 32),
    ("proof_unpadded", "timestamp_anchor", "proof_b64", "AAE"),
    ("proof_padding_bits", "timestamp_anchor", "proof_b64", "AAF="),
    ("proof_urlsafe", "timestamp_anchor", "proof_b64", "-_-_"),
    ("proof_newline", "timestamp_anchor", "proof_b64", "AAEC\nAAEC"),
    ("proof_extra_padding", "timestamp_anchor", "proof_b64", "AAE=="),
    ("proof_empty", "timestamp_anchor", "proof_b64", ""),
    ("proof_too_long", "timestamp_anchor", "proof_b64", "AAAA" * 16385),
    ("size_negative", "storage_attestation", "size_bytes", -1),
    ("size_bool", "storage_attestation", "size_bytes", True),
    ("size_text", "storage_attestation", "size_bytes", "10"),
    ("media_upper", "storage_attestation", "media_type", "Application/PDF"),
    ("media_no_slash", "storage_attestation", "media_type", "pdf"),
    ("content_short", "storage_attestation", "content_sha256", "ab" * 31),
    ("cites_malformed", "citation_signature", "cites_pith_number", "pith:2017:short"),
    ("context_too_long", "citation_signature", "context", "c" * 1025),
    ("replication_id_space", "replication_record", "replication_id", "rep 1"),
    ("replication_outcome", "replication_record", "outcome", "failed"),
    ("corrects_bare_hex", "correction", "corrects_event_id", "0" * 64),
    ("reason_too_long", "correction", "reason", "r" * 2049),
    ("slot_upper", "mirror_hint", "slot", "Primary"),
    ("slot_too_long", "mirror_hint", "slot", "s" * 65),
    ("gossip_no_port", "mirror_hint", "gossip", "mirror.example.org"),
    ("gossip_port_zero", "mirror_hint", "gossip", "mirror.example.org:0"),
    ("gossip_port_large", "mirror_hint", "gossip", "mirror.example.org:65536"),
    ("gossip_userinfo", "mirror_hint", "gossip", "a@mirror.example.org:7400"),
    ("gossip_unbracketed_v6", "mirror_hint", "gossip", "::1:7400"),
]


@pytest.mark.parametrize(("event_type", "field", "value"), [case[1:] for case in INVALID_FIELDS], ids=[case[0] for case in INVALID_FIELDS])
def test_invalid_field_value(event_type: str, field: str, value: Any) -> None:
    error = _error(event_type, _with(event_type, **{field: value}))
    assert error.code == "invalid_payload"
    assert error.field == f"payload.{field}"


# (case id, event type, field, value)
VALID_FIELDS = [
    ("orcid_checksum", "author_attestation", "orcid", "0000-0002-1825-0097"),
    ("orcid_check_x", "author_attestation", "orcid", "0000-0002-1694-233X"),
    ("author_unicode", "author_attestation", "author_name", "Émilie du Châtelet"),
    ("author_max", "author_attestation", "author_name", "a" * 256),
    ("not_authored", "author_attestation", "statement", "not_authored"),
    ("rfc3161", "timestamp_anchor", "anchor_type", "rfc3161"),
    ("proof_one_byte", "timestamp_anchor", "proof_b64", "AA=="),
    ("proof_max", "timestamp_anchor", "proof_b64", "AAAA" * 16384),
    ("size_zero", "storage_attestation", "size_bytes", 0),
    ("media_plus", "storage_attestation", "media_type", "application/ld+json"),
    ("replication_colon", "replication_record", "replication_id", "osf:abc-1.2"),
    ("partially", "replication_record", "outcome", "partially_reproduced"),
    ("slot_dots", "mirror_hint", "slot", "eu-1.backup_2"),
    ("gossip_v6", "mirror_hint", "gossip", "[::1]:7400"),
    ("gossip_v4", "mirror_hint", "gossip", "127.0.0.1:65535"),
]


@pytest.mark.parametrize(("event_type", "field", "value"), [case[1:] for case in VALID_FIELDS], ids=[case[0] for case in VALID_FIELDS])
def test_valid_field_value(event_type: str, field: str, value: Any) -> None:
    check_payload(event_type, _with(event_type, **{field: value}), SUBJECT)


def test_orcid_checksum_reason() -> None:
    error = _error("author_attestation", _with("author_attestation", orcid="0000-0002-1825-0098"))
    assert error.reason == "ORCID iD 0000-0002-1825-0098 has a wrong check digit"


# Registry payloads -----------------------------------------------------------------


def test_graph_snapshot_open_payload() -> None:
    check_payload("graph_snapshot", {"graph_snapshot": {}, "verdict_id": None, "anything": [1]}, SUBJECT)


@pytest.mark.parametrize("value", [None, [], "snapshot"])
def test_graph_snapshot_needs_object(value: Any) -> None:
    error = _error("graph_snapshot", {"graph_snapshot": value})
    assert error.code == "invalid_payload"
    assert error.field == "payload.graph_snapshot"


RECORD_SUBJECT = "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3"


def _record_payload() -> dict[str, Any]:
    return record_created_payload(key("test-registry-key"), "test-registry", RECORD_SUBJECT)


@pytest.mark.parametrize("field", ["canonical_record", "canonical_sha256", "receipt"])
def test_record_created_missing_field(field: str) -> None:
    payload = {name: value for name, value in _record_payload().items() if name != field}
    with pytest.raises(EventError) as caught:
        check_payload("record_created", payload, RECORD_SUBJECT)
    assert caught.value.code == "invalid_payload"
    assert caught.value.field == f"payload.{field}"


def test_record_created_source_fields_optional() -> None:
    payload = _record_payload()
    for name in ("source_id", "source_kind", "source_version"):
        del payload[name]
    check_payload("record_created", payload, RECORD_SUBJECT)


def test_record_created_malformed_record() -> None:
    payload = _record_payload()
    del payload["canonical_record"]["metadata"]["submitted_at"]
    with pytest.raises(EventError) as caught:
        check_payload("record_created", payload, RECORD_SUBJECT)
    assert caught.value.code == "invalid_payload"
    assert caught.value.field == "payload.canonical_record.metadata.submitted_at"


def test_record_created_wrong_subject() -> None:
    with pytest.raises(EventError) as caught:
        check_payload("record_created", _record_payload(), SUBJECT)
    assert caught.value.code == "record_mismatch"
    assert caught.value.field == "payload.canonical_record"


# Slots ----------------------------------------------------------------------------

SLOTS = {
    "record_created": "record",
    "graph_snapshot": "graph",
    "author_attestation": "author",
    "timestamp_anchor": "opentimestamps:4dd955cab9f8780f97695b3af463085e19ab1f7da6f922959e527872d10dff1e",
    "storage_attestation": "https://store.example.org/paper.pdf",
    "citation_signature": "pith:2011:KVP6JX7SJ7DKL2CBULRPI6KYU3",
    "replication_record": "rep-1",
    "correction": "sha256:" + "0" * 64,
    "mirror_hint": "primary",
}


@pytest.mark.parametrize("event_type", sorted(SLOTS))
def test_slot_of_each_type(event_type: str) -> None:
    payload = _record_payload() if event_type == "record_created" else valid_payload(event_type)
    assert slot_of(event_type, payload) == SLOTS[event_type]


@pytest.mark.parametrize("event_type", CLOSED_TYPES)
def test_slot_ignores_variant(event_type: str) -> None:
    assert slot_of(event_type, valid_payload(event_type, variant=1)) == slot_of(event_type, valid_payload(event_type))
