"""Ed25519 keys, signatures, fingerprints and registry receipts.

Every key and signature has exactly one accepted text encoding, so that one
event can never be stored twice under two spellings:

* a public key is 64 lowercase hex characters of the 32 raw bytes;
* a signature is standard base64 (``+`` and ``/``, with ``=`` padding) of
  the 64 raw bytes, and must re-encode to the same text, which rules out
  non-zero padding bits, line breaks, other alphabets and extra padding.

Before a public key is used it must decode to a point of the prime-order
subgroup. The ``cryptography`` library (checked with version 50) loads any
32 bytes, including the identity point, for which the signature
``identity || 0`` verifies for every message, and non-canonical encodings
with y >= p. A signature whose scalar S is not below the group order L is
rejected here too, so that a change of library cannot make a malleable
signature valid.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import KeyFormatError, SignatureError, quote_value

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SIGNATURE_BYTES",
    "SigningKey",
    "decode_public_key_hex",
    "decode_signature_b64",
    "encode_signature_b64",
    "key_fingerprint",
    "verify_signature",
    "verify_receipt",
]

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_PUBLIC_KEY_HEX = re.compile(r"\A[0-9a-f]{64}\Z", re.ASCII)
_SIGNATURE_B64 = re.compile(r"\A[A-Za-z0-9+/]{86}==\Z", re.ASCII)

# Curve25519 in twisted Edwards form: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p),
# with a base point of prime order L (RFC 8032, section 5.1).
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_MINUS_ONE = pow(2, (_P - 1) // 4, _P)


def _decompress(encoded: bytes) -> tuple[int, int] | None:
    """Return the affine point of a canonical encoding, or None (RFC 8032, 5.1.3)."""
    number = int.from_bytes(encoded, "little")
    y = number & ((1 << 255) - 1)
    sign = number >> 255
    if y >= _P:
        return None
    y_squared = y * y % _P
    u = (y_squared - 1) % _P
    v = (_D * y_squared + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if v * x * x % _P == (-u) % _P:
        x = x * _SQRT_MINUS_ONE % _P
    if v * x * x % _P != u:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _scalar_multiply_is_identity(point: tuple[int, int], scalar: int) -> bool:
    """Return whether ``scalar * point`` is the identity, in extended coordinates."""
    px, py = point
    base = (px, py, 1, px * py % _P)
    result = (0, 1, 1, 0)

    def add(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x1, y1, z1, t1 = a
        x2, y2, z2, t2 = b
        e_a = (y1 - x1) * (y2 - x2) % _P
        e_b = (y1 + x1) * (y2 + x2) % _P
        e_c = 2 * _D * t1 * t2 % _P
        e_d = 2 * z1 * z2 % _P
        e, f, g, h = e_b - e_a, e_d - e_c, e_d + e_c, e_b + e_a
        return e * f % _P, g * h % _P, f * g % _P, e * h % _P

    while scalar:
        if scalar & 1:
            result = add(result, base)
        base = add(base, base)
        scalar >>= 1
    x, y, z, _ = result
    return x % _P == 0 and (y - z) % _P == 0


@functools.lru_cache(maxsize=4096)
def _load_public_key(raw: bytes) -> Ed25519PublicKey | None:
    """Return the library key for a prime-order point, or None for a weak key."""
    point = _decompress(raw)
    if point is None or point == (0, 1):
        # No encoding at all, or the identity point, which every signature
        # with R = identity and S = 0 verifies against.
        return None
    # A point of the prime-order subgroup satisfies L * P = identity. This
    # rejects the eight small-order points and every point with a torsion
    # component, which would make some signatures valid for several messages.
    if not _scalar_multiply_is_identity(point, _L):
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def decode_public_key_hex(text: Any, field: str = "public_key_hex") -> bytes:
    """Return the raw bytes of a strict public key encoding.

    Raises:
        KeyFormatError: ``text`` is not 64 lowercase hex characters, or the
            key is not a point of the prime-order subgroup.
    """
    if not isinstance(text, str) or _PUBLIC_KEY_HEX.match(text) is None:
        raise KeyFormatError(field, f"{quote_value(text)} is not 64 lowercase hex characters")
    raw = bytes.fromhex(text)
    if _load_public_key(raw) is None:
        raise KeyFormatError(field, f"public key {text[:16]}... is weak or not a valid Ed25519 point")
    return raw


def decode_signature_b64(text: Any, field: str = "signature_b64") -> bytes:
    """Return the 64 raw bytes of a strict base64 signature.

    Raises:
        KeyFormatError: ``text`` is not the one canonical base64 spelling of
            64 bytes, or its scalar S is not below the group order.
    """
    if not isinstance(text, str) or _SIGNATURE_B64.match(text) is None:
        raise KeyFormatError(
            field, f"{quote_value(text)} is not 88 characters of padded standard base64"
        )
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise KeyFormatError(field, f"invalid base64: {error}") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise KeyFormatError(field, "base64 has non-zero padding bits (not the canonical encoding)")
    if int.from_bytes(raw[32:], "little") >= _L:
        raise KeyFormatError(field, "signature scalar S is not below the group order (malleable)")
    return raw


def encode_signature_b64(raw: bytes) -> str:
    """Return the canonical base64 text of a 64-byte signature."""
    return base64.b64encode(raw).decode("ascii")


def key_fingerprint(raw_public_key: bytes) -> str:
    """Return the first 16 bytes of SHA-256 over the raw key, in lowercase hex."""
    return hashlib.sha256(raw_public_key).digest()[:16].hex()


def verify_signature(raw_public_key: bytes, signature: bytes, message: bytes, field: str) -> None:
    """Verify an Ed25519 signature made by a key that passed ``decode_public_key_hex``.

    Raises:
        KeyFormatError: the key is weak.
        SignatureError: the signature does not verify.
    """
    key = _load_public_key(raw_public_key)
    if key is None:
        raise KeyFormatError(field, "public key is weak or not a valid Ed25519 point")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(field, "Ed25519 signature does not verify") from None


class SigningKey:
    """An Ed25519 private key with the encodings this protocol uses."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFormatError("seed", f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._private.public_key().public_bytes_raw()
        self.public_key_hex = self.public_key.hex()
        self.fingerprint = key_fingerprint(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a key from the operating system's random source."""
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_label(cls, label: str) -> SigningKey:
        """Create a deterministic test key whose seed is SHA-256 of ``label``.

        Only for tests and benchmarks: anyone with the label can derive the key.
        """
        return cls(hashlib.sha256(label.encode("utf-8")).digest())

    def seed(self) -> bytes:
        """Return the 32-byte private seed; callers must keep it secret."""
        return self._private.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)


def verify_receipt(
    receipt: Any,
    canonical_sha256: str,
    registry_keys: dict[str, bytes],
    field: str = "receipt",
) -> str:
    """Check a registry receipt over a record's ``canonical_sha256``.

    The registry signs the 32 raw digest bytes, not the hex text, and states so
    in ``signed_message``.

    Args:
        receipt: the receipt object as published.
        canonical_sha256: the hash the receipt must cover, lowercase hex.
        registry_keys: trusted registry keys by ``key_id``.
        field: path used in error messages.

    Returns:
        The ``key_id`` that signed the receipt.

    Raises:
        KeyFormatError, SignatureError: naming the receipt field that failed.
    """
    if not isinstance(receipt, dict):
        raise KeyFormatError(field, "receipt must be an object")
    expected = {
        "algorithm": "ed25519",
        "kind": "pith_receipt",
        "signed_message": "canonical_sha256_bytes",
        "canonical_sha256": canonical_sha256,
    }
    for key, value in expected.items():
        if receipt.get(key) != value:
            raise KeyFormatError(
                f"{field}.{key}", f"is {quote_value(receipt.get(key))}, expected {value!r}"
            )

    key_id = receipt.get("key_id")
    if not isinstance(key_id, str) or key_id not in registry_keys:
        raise SignatureError(f"{field}.key_id", f"{quote_value(key_id)} is not a trusted registry key")
    raw_key = registry_keys[key_id]
    if receipt.get("public_key_fingerprint") != key_fingerprint(raw_key):
        raise KeyFormatError(
            f"{field}.public_key_fingerprint",
            f"{quote_value(receipt.get('public_key_fingerprint'))} is not the fingerprint of key {key_id}",
        )

    signature = decode_signature_b64(receipt.get("signature_b64"), f"{field}.signature_b64")
    verify_signature(raw_key, signature, bytes.fromhex(canonical_sha256), f"{field}.signature_b64")
    return key_id
