"""Ed25519 keys and signatures: the C09 encodings, weak keys and registry receipts."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conftest import load_case
from node.demo import fixture_path
from protocol import EventError, build_event, default_trust, validate_event
from protocol.errors import KeyFormatError, SignatureError
from protocol.keys import (
    _D,
    _L,
    _P,
    SigningKey,
    _decompress,
    decode_public_key_hex,
    decode_signature_b64,
    encode_signature_b64,
    key_fingerprint,
    verify_receipt,
    verify_signature,
)
from protocol.payloads import EVENT_ID_PATTERN
from protocol.trust import REGISTRY_KEY_ID, REGISTRY_PUBLIC_KEY_HEX

C09 = load_case("C09")
C09_VECTORS = {vector["name"]: vector for vector in C09["vectors"]}
TEST_KEY = SigningKey.from_label(C09["test_key_label"])
SUBJECT = "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY"
REGISTRY_FINGERPRINT = "8d4b5ee74e4693bcd1df2446408b0d54"

# Signature encodings in C09 that differ from the canonical one.
BAD_SIGNATURE_NAMES = (
    "s_plus_l",
    "nonzero_pad_bits",
    "embedded_newline",
    "embedded_junk_char",
    "extra_padding",
    "missing_padding",
    "urlsafe_alphabet",
)


# --- deriving the C09 bad encodings from any canonical signature -----------

_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _flip_pad_bit(text: str) -> str:
    # 64 bytes fill 85 characters and the top 2 bits of the 86th. The other
    # 4 bits are padding and must be zero, but lax decoders ignore them.
    last = _B64_ALPHABET.index(text[85])
    return text[:85] + _B64_ALPHABET[last ^ 1] + text[86:]


def _add_group_order(text: str) -> str:
    raw = base64.b64decode(text)
    scalar = int.from_bytes(raw[32:], "little") + _L
    return base64.b64encode(raw[:32] + scalar.to_bytes(32, "little")).decode("ascii")


def _bad_encodings(text: str) -> dict[str, str]:
    """Return the C09 bad encodings of a canonical signature, by vector name."""
    return {
        "s_plus_l": _add_group_order(text),
        "nonzero_pad_bits": _flip_pad_bit(text),
        "embedded_newline": text[:40] + "\n" + text[40:],
        "embedded_junk_char": text[:40] + "!" + text[40:],
        "extra_padding": text + "==",
        "missing_padding": text.rstrip("="),
        "urlsafe_alphabet": text.replace("+", "-").replace("/", "_"),
    }


def test_derivations_reproduce_c09_vectors() -> None:
    derived = _bad_encodings(C09["sig_b64_canonical"])
    assert sorted(derived) == sorted(BAD_SIGNATURE_NAMES)
    for name in BAD_SIGNATURE_NAMES:
        assert derived[name] == C09_VECTORS[name]["sig"], name


# --- C09 vectors against protocol.keys --------------------------------------


def test_label_key_public_hex() -> None:
    assert TEST_KEY.public_key_hex == C09["pubkey_hex"]


def test_label_key_seed_is_label_hash() -> None:
    assert TEST_KEY.seed() == hashlib.sha256(b"gossip-mirror-test-key-1").digest()


def test_illustrative_id_is_body_hash() -> None:
    body = C09["canonical_body_utf8"].encode("utf-8")
    assert hashlib.sha256(body).hexdigest() == C09["id_hex"]


def test_label_key_reproduces_signature() -> None:
    # Ed25519 is deterministic, so the same key and message give the same bytes.
    signature = TEST_KEY.sign(bytes.fromhex(C09["id_hex"]))
    assert encode_signature_b64(signature) == C09["sig_b64_canonical"]


def test_canonical_signature_decodes() -> None:
    raw = decode_signature_b64(C09_VECTORS["canonical"]["sig"])
    assert raw == base64.b64decode(C09["sig_b64_canonical"])
    assert len(raw) == 64


def test_canonical_signature_verifies() -> None:
    raw = decode_signature_b64(C09["sig_b64_canonical"])
    public_key = decode_public_key_hex(C09["pubkey_hex"])
    verify_signature(public_key, raw, bytes.fromhex(C09["id_hex"]), "sig")


def test_signature_over_other_message_fails() -> None:
    raw = decode_signature_b64(C09["sig_b64_canonical"])
    public_key = decode_public_key_hex(C09["pubkey_hex"])
    with pytest.raises(SignatureError) as caught:
        verify_signature(public_key, raw, bytes.fromhex(C09["id_hex"])[::-1], "sig")
    assert caught.value.field == "sig"


@pytest.mark.parametrize("name", BAD_SIGNATURE_NAMES)
def test_bad_signature_encoding_rejected(name: str) -> None:
    with pytest.raises(KeyFormatError) as caught:
        decode_signature_b64(C09_VECTORS[name]["sig"], "event.signature_b64")
    assert caught.value.field == "event.signature_b64"


def test_s_plus_l_reason_names_group_order() -> None:
    with pytest.raises(KeyFormatError) as caught:
        decode_signature_b64(C09_VECTORS["s_plus_l"]["sig"])
    assert "group order" in caught.value.reason


def test_pad_bits_reason_names_padding() -> None:
    with pytest.raises(KeyFormatError) as caught:
        decode_signature_b64(C09_VECTORS["nonzero_pad_bits"]["sig"])
    assert "padding bits" in caught.value.reason


@pytest.mark.parametrize("value", [None, 7, b"x" * 88, ["x"], ""])
def test_non_text_signature_rejected(value: Any) -> None:
    with pytest.raises(KeyFormatError):
        decode_signature_b64(value)


@pytest.mark.parametrize("name", ["uppercase_id", "id_with_spaces"])
def test_bad_id_forms_fail_event_id_pattern(name: str) -> None:
    assert EVENT_ID_PATTERN.match("sha256:" + C09_VECTORS[name]["id"]) is None


def test_canonical_id_matches_event_id_pattern() -> None:
    assert EVENT_ID_PATTERN.match("sha256:" + C09["id_hex"]) is not None


def test_uppercase_id_same_bytes_as_canonical() -> None:
    # The spellings decode to the same 32 bytes, so only the format check
    # keeps them from being stored as a second event.
    for name in ("uppercase_id", "id_with_spaces"):
        assert bytes.fromhex(C09_VECTORS[name]["id"]) == bytes.fromhex(C09["id_hex"])


# --- C09 re-signed with the real envelope -----------------------------------


def _c09_hint() -> dict[str, Any]:
    # The C09 body with this project's field names. The mirror_hint schema has
    # no "note" field, so the payload gets the required "slot" instead.
    return build_event(
        TEST_KEY,
        event_type="mirror_hint",
        subject=SUBJECT,
        payload={"slot": "primary", "url": "https://mirror.example.org/bundles/"},
        created_at="2026-05-18T00:22:39Z",
        key_id="gossip-mirror-test-key-1",
        signer_id="mirror.example.org",
        signer_type="mirror",
    )


def test_resigned_hint_is_valid() -> None:
    event = validate_event(_c09_hint(), SUBJECT, default_trust())
    assert event.signer["public_key_hex"] == C09["pubkey_hex"]
    assert event.slot == "primary"


def test_resigned_hint_has_urlsafe_variant() -> None:
    # The urlsafe case below tests something only if the signature has '+' or '/'.
    signature = _c09_hint()["signature_b64"]
    assert "+" in signature or "/" in signature


@pytest.mark.parametrize("name", BAD_SIGNATURE_NAMES)
def test_resigned_hint_bad_encoding_rejected(name: str) -> None:
    event = _c09_hint()
    event["signature_b64"] = _bad_encodings(event["signature_b64"])[name]
    with pytest.raises(EventError) as caught:
        validate_event(event, SUBJECT, default_trust())
    assert caught.value.code == "malformed_signature"
    assert caught.value.field == "signature_b64"


def test_resigned_hint_uppercase_id_rejected() -> None:
    event = _c09_hint()
    event["event_id"] = "sha256:" + event["event_id"][7:].upper()
    with pytest.raises(EventError) as caught:
        validate_event(event, SUBJECT, default_trust())
    assert caught.value.code == "malformed_event_id"


def test_resigned_hint_spaced_id_rejected() -> None:
    event = _c09_hint()
    hex_id = event["event_id"][7:]
    event["event_id"] = "sha256:" + " ".join(hex_id[i : i + 2] for i in range(0, 64, 2))
    with pytest.raises(EventError) as caught:
        validate_event(event, SUBJECT, default_trust())
    assert caught.value.code == "malformed_event_id"


# --- weak and malformed public keys -----------------------------------------

# The eight points of order 1, 2, 4 and 8, in their canonical encodings, and
# the sign-bit variants of the points whose x is not zero.
SMALL_ORDER_POINTS = [
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
]

# Encodings that are not canonical: y >= p, or the sign bit set where x = 0.
NON_CANONICAL_KEYS = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = 2**255 - 1
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p, sign set
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, sign set
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, sign set
]


def _affine_add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    # Twisted Edwards addition with a = -1 (RFC 8032, section 5.1.4, affine form).
    (x1, y1), (x2, y2) = a, b
    product = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + x2 * y1) * pow(1 + product, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - product, _P - 2, _P) % _P
    return x3, y3


def _compress(point: tuple[int, int]) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


@pytest.mark.parametrize("key_hex", SMALL_ORDER_POINTS)
def test_small_order_point_rejected(key_hex: str) -> None:
    # Each encodes a point on the curve, so only the order check rejects it.
    assert _decompress(bytes.fromhex(key_hex)) is not None
    with pytest.raises(KeyFormatError) as caught:
        decode_public_key_hex(key_hex, "signer.public_key_hex")
    assert caught.value.field == "signer.public_key_hex"
    assert "weak" in caught.value.reason


@pytest.mark.parametrize("key_hex", NON_CANONICAL_KEYS)
def test_non_canonical_key_rejected(key_hex: str) -> None:
    assert _decompress(bytes.fromhex(key_hex)) is None
    with pytest.raises(KeyFormatError):
        decode_public_key_hex(key_hex)


def test_off_curve_key_rejected() -> None:
    # y = 2 has no x on the curve: (y^2 - 1) / (d y^2 + 1) is not a square.
    key_hex = (2).to_bytes(32, "little").hex()
    assert _decompress(bytes.fromhex(key_hex)) is None
    with pytest.raises(KeyFormatError):
        decode_public_key_hex(key_hex)


def test_mixed_order_key_rejected() -> None:
    valid = _decompress(bytes.fromhex(C09["pubkey_hex"]))
    torsion = _decompress(bytes.fromhex(SMALL_ORDER_POINTS[4]))
    assert valid is not None and torsion is not None
    mixed = _compress(_affine_add(valid, torsion))

    assert _decompress(mixed) is not None
    assert mixed.hex() != C09["pubkey_hex"]
    with pytest.raises(KeyFormatError):
        decode_public_key_hex(mixed.hex())


def test_affine_add_is_group_law() -> None:
    # Control for the helper above: adding the identity changes nothing, and
    # the order-8 point added to itself 8 times gives the identity.
    valid = _decompress(bytes.fromhex(C09["pubkey_hex"]))
    torsion = _decompress(bytes.fromhex(SMALL_ORDER_POINTS[4]))
    assert valid is not None and torsion is not None
    assert _affine_add(valid, (0, 1)) == valid
    total = (0, 1)
    for _ in range(8):
        total = _affine_add(total, torsion)
    assert total == (0, 1)


def test_library_accepts_identity_key() -> None:
    # Why decode_public_key_hex checks the point: the cryptography library
    # loads the identity as a public key, and then the signature made of the
    # identity encoding and 32 zero bytes verifies for every message.
    identity = bytes.fromhex(SMALL_ORDER_POINTS[0])
    library_key = Ed25519PublicKey.from_public_bytes(identity)
    library_key.verify(identity + bytes(32), b"any message at all")
    library_key.verify(identity + bytes(32), b"a different message")


def test_identity_key_fails_verify_signature() -> None:
    identity = bytes.fromhex(SMALL_ORDER_POINTS[0])
    with pytest.raises(KeyFormatError) as caught:
        verify_signature(identity, identity + bytes(32), b"any message at all", "signer.public_key_hex")
    assert caught.value.field == "signer.public_key_hex"


BAD_KEY_TEXT = [
    pytest.param(C09["pubkey_hex"].upper(), id="uppercase"),
    pytest.param(C09["pubkey_hex"][:63], id="63-chars"),
    pytest.param(C09["pubkey_hex"] + "0", id="65-chars"),
    pytest.param(" " + C09["pubkey_hex"][1:], id="leading-space"),
    pytest.param(C09["pubkey_hex"] + "\n", id="trailing-newline"),
    pytest.param("0x" + C09["pubkey_hex"][2:], id="0x-prefix"),
    pytest.param(C09["pubkey_hex"][:62] + "٣٣", id="arabic-digits"),
    pytest.param(bytes.fromhex(C09["pubkey_hex"]), id="raw-bytes"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("value", BAD_KEY_TEXT)
def test_bad_key_text_rejected(value: Any) -> None:
    with pytest.raises(KeyFormatError) as caught:
        decode_public_key_hex(value, "key")
    assert caught.value.field == "key"
    assert "64 lowercase hex characters" in caught.value.reason


def test_valid_key_decodes() -> None:
    assert decode_public_key_hex(C09["pubkey_hex"]) == TEST_KEY.public_key


def test_signing_key_rejects_short_seed() -> None:
    with pytest.raises(KeyFormatError) as caught:
        SigningKey(bytes(31))
    assert caught.value.field == "seed"


# --- the registry key and receipts ------------------------------------------


def _published_receipt() -> dict[str, Any]:
    state = json.loads(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    return state["current"]["record_created"]["payload"]


def test_registry_key_fingerprint() -> None:
    raw = decode_public_key_hex(REGISTRY_PUBLIC_KEY_HEX)
    assert key_fingerprint(raw) == REGISTRY_FINGERPRINT


def test_registry_key_matches_manifest() -> None:
    manifest = json.loads(fixture_path("pith-mirrors.json").read_bytes())
    published = manifest["mirrors"][0]["public_key"]
    raw = decode_public_key_hex(published["public_key_hex"])
    assert published["public_key_hex"] == REGISTRY_PUBLIC_KEY_HEX
    assert base64.b64decode(published["public_key_b64"]) == raw
    assert published["fingerprint_sha256_hex"] == key_fingerprint(raw)
    assert published["fingerprint_sha256_b32_first128bits"] == (
        base64.b32encode(hashlib.sha256(raw).digest()).decode("ascii")[:26]
    )


def test_published_receipt_verifies() -> None:
    payload = _published_receipt()
    registry_keys = {REGISTRY_KEY_ID: decode_public_key_hex(REGISTRY_PUBLIC_KEY_HEX)}
    assert verify_receipt(payload["receipt"], payload["canonical_sha256"], registry_keys) == REGISTRY_KEY_ID


def test_record_line_receipt_verifies() -> None:
    line = json.loads(fixture_path("records.jsonl").read_text(encoding="utf-8").splitlines()[0])
    signature = decode_signature_b64(line["receipt_signature_b64"])
    raw = decode_public_key_hex(REGISTRY_PUBLIC_KEY_HEX)
    verify_signature(raw, signature, bytes.fromhex(line["canonical_sha256"]), "receipt_signature_b64")


RECEIPT_CHANGES = [
    pytest.param("algorithm", "ed448", KeyFormatError, "receipt.algorithm", id="algorithm"),
    pytest.param("kind", "receipt", KeyFormatError, "receipt.kind", id="kind"),
    pytest.param("signed_message", "canonical_sha256_hex", KeyFormatError, "receipt.signed_message", id="signed-message"),
    pytest.param("canonical_sha256", "0" * 64, KeyFormatError, "receipt.canonical_sha256", id="digest"),
    pytest.param("key_id", "pith-v0", SignatureError, "receipt.key_id", id="key-id"),
    pytest.param("public_key_fingerprint", "0" * 32, KeyFormatError, "receipt.public_key_fingerprint", id="fingerprint"),
    pytest.param("signature_b64", C09["sig_b64_canonical"], SignatureError, "receipt.signature_b64", id="other-signature"),
    pytest.param("signature_b64", C09_VECTORS["nonzero_pad_bits"]["sig"], KeyFormatError, "receipt.signature_b64", id="bad-base64"),
]


@pytest.mark.parametrize(("key", "value", "error", "field"), RECEIPT_CHANGES)
def test_changed_receipt_rejected(key: str, value: str, error: type[Exception], field: str) -> None:
    payload = _published_receipt()
    receipt = copy.deepcopy(payload["receipt"])
    receipt[key] = value
    registry_keys = {REGISTRY_KEY_ID: decode_public_key_hex(REGISTRY_PUBLIC_KEY_HEX)}
    with pytest.raises(error) as caught:
        verify_receipt(receipt, payload["canonical_sha256"], registry_keys)
    assert caught.value.field == field
