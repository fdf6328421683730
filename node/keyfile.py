"""Node key files: an Ed25519 seed and the signer labels, readable by the owner only.

File form (JSON)::

    {"key_type": "pith_mirror_signing_key", "algorithm": "ed25519",
     "seed_hex": "<64 hex>", "public_key_hex": "<64 hex>",
     "public_key_fingerprint": "<32 hex>",
     "key_id": "...", "signer_id": "...", "signer_type": "node"}
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from protocol import SigningKey
from protocol.canonical import Limits, parse_json
from protocol.errors import InvalidInput

__all__ = ["KeyFile", "KeyFileError", "create_key_file", "load_key_file"]

logger = logging.getLogger("pith_mirror.keyfile")

KEY_TYPE = "pith_mirror_signing_key"
_SEED_HEX = re.compile(r"\A[0-9a-f]{64}\Z", re.ASCII)
_KEY_FILE_LIMITS = Limits(max_bytes=4096, max_depth=2, max_values=64)


class KeyFileError(Exception):
    """A key file is missing, unreadable, too widely readable or malformed."""


@dataclass(frozen=True)
class KeyFile:
    """A loaded signing key with the labels its events carry in ``signer``."""

    signing_key: SigningKey
    key_id: str
    signer_id: str
    signer_type: str


def create_key_file(path: Path, key_id: str, signer_id: str, signer_type: str, *, overwrite: bool = False) -> KeyFile:
    """Generate a key and write it to ``path`` with mode 0600.

    The file is created with its final mode in one step, so the seed is never
    readable by others, even briefly.

    Raises:
        KeyFileError: ``path`` exists and ``overwrite`` is False, or it cannot be written.
    """
    signing_key = SigningKey.generate()
    document = {
        "key_type": KEY_TYPE,
        "algorithm": "ed25519",
        "seed_hex": signing_key.seed().hex(),
        "public_key_hex": signing_key.public_key_hex,
        "public_key_fingerprint": signing_key.fingerprint,
        "key_id": key_id,
        "signer_id": signer_id,
        "signer_type": signer_type,
    }
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; pass --force to replace the key in it") from None
    except OSError as error:
        raise KeyFileError(f"cannot create key file {path}: {error.strerror}") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(json.dumps(document, indent=2) + "\n")
    logger.info("created key file %s for key %s", path, signing_key.fingerprint)
    return KeyFile(signing_key, key_id, signer_id, signer_type)


def load_key_file(path: Path) -> KeyFile:
    """Read a key file, refusing one that group or others can read, like ssh does.

    Raises:
        KeyFileError: naming the path and what is wrong with it.
    """
    try:
        info = path.stat()
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None
    # A FIFO or device would block or never end, so only a regular file is read.
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
            f"run 'chmod 600 {path}' so only its owner can read it"
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(_KEY_FILE_LIMITS.max_bytes + 1)
    except OSError as error:
        raise KeyFileError(f"cannot read key file {path}: {error.strerror}") from None
    try:
        document = parse_json(data, _KEY_FILE_LIMITS)
    except InvalidInput as error:
        raise KeyFileError(f"key file {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("key_type") != KEY_TYPE:
        raise KeyFileError(f"key file {path} has no key_type {KEY_TYPE!r}")
    seed_hex = document.get("seed_hex")
    if not isinstance(seed_hex, str) or _SEED_HEX.match(seed_hex) is None:
        raise KeyFileError(f"key file {path}: seed_hex must be 64 lowercase hex characters")
    signing_key = SigningKey(bytes.fromhex(seed_hex))
    if document.get("public_key_hex") != signing_key.public_key_hex:
        raise KeyFileError(f"key file {path}: public_key_hex does not belong to seed_hex")
    labels = []
    for key in ("key_id", "signer_id", "signer_type"):
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise KeyFileError(f"key file {path}: {key} must be non-empty text")
        labels.append(value)
    return KeyFile(signing_key, *labels)
