"""Pith numbers, their short forms, and the aliases of a record.

A Pith number is ``pith:`` + the four-digit year of
``metadata.submitted_at`` + ``:`` + the first 26 characters of the RFC 4648
base32 encoding of the 32-byte ``canonical_sha256`` digest. Those 26
characters are the record's URL suffix (``/pith/{suffix}/state.json``), and
their first 8, 12 and 16 characters are the short forms ``pith_short_8``,
``pith_short_12`` and ``pith_short_16``. ``pith:`` + the first 8 characters
is the short Pith number.

For an arXiv record the registry publishes these aliases beside the short
forms, all derived from ``source``:

* ``arxiv``: the identifier, new style (``1711.00489``) or old style with a
  slash (``hep-lat/0305021``);
* ``arxiv_version``: the identifier + ``v`` + ``source.version``;
* ``doi``: ``10.48550/arxiv.`` + the identifier, in lowercase.

The year of a Pith number follows ``submitted_at``, which can fall months
before the month written in a new-style arXiv identifier, so the two are
never compared.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_sha256, field_path
from .errors import IdentifierError, quote_value
from .timestamps import parse_timestamp

__all__ = [
    "SUFFIX_LENGTH",
    "SHORT_LENGTHS",
    "ALIAS_KINDS",
    "PithNumber",
    "parse_pith_number",
    "pith_suffix",
    "pith_number_for",
    "short_pith_number",
    "check_sha256_hex",
    "check_suffix",
    "parse_arxiv_id",
    "check_canonical_record",
    "record_pith_number",
    "derive_aliases",
    "check_aliases",
]

SUFFIX_LENGTH = 26
SHORT_LENGTHS = (8, 12, 16)
ALIAS_KINDS = ("arxiv", "arxiv_version", "doi", "pith_short_12", "pith_short_16", "pith_short_8")
ARXIV_DOI_PREFIX = "10.48550/arxiv."
# A paper may have been submitted long before Unix time began, so record
# metadata accepts any four-digit year; event timestamps start at 1970.
RECORD_EARLIEST_YEAR = 1

_BASE32_CHARS = "A-Z2-7"
_PITH_NUMBER = re.compile(rf"\Apith:(\d{{4}}):([{_BASE32_CHARS}]{{26}})\Z", re.ASCII)
_SUFFIX = re.compile(rf"\A[{_BASE32_CHARS}]{{26}}\Z", re.ASCII)
_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z", re.ASCII)
# New-style arXiv identifiers: YYMM.NNNN from April 2007 (0704) to December
# 2014, YYMM.NNNNN since January 2015 (1501).
_ARXIV_NEW = re.compile(r"\A(\d{2}(?:0[1-9]|1[0-2]))\.(\d{4,5})\Z", re.ASCII)
_ARXIV_NEW_FIRST_MONTH = "0704"
_ARXIV_FIVE_DIGITS_FROM = "1501"
# Old-style identifiers: archive name, optional dotted subject class, slash,
# YYMMNNN (for example hep-lat/0305021 or math.GT/0309136).
_ARXIV_OLD = re.compile(r"\A[a-z]+(-[a-z]+)*(\.[A-Z]{2})?/\d{2}(0[1-9]|1[0-2])\d{3}\Z", re.ASCII)
_ARXIV_VERSIONED = re.compile(r"\A(.+)v([1-9]\d{0,5})\Z", re.ASCII)


@dataclass(frozen=True)
class PithNumber:
    """A parsed Pith number such as ``pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY``."""

    year: int
    suffix: str

    def __str__(self) -> str:
        return f"pith:{self.year:04d}:{self.suffix}"

    @property
    def short(self) -> str:
        """The short Pith number, ``pith:`` + the first 8 suffix characters."""
        return f"pith:{self.suffix[:8]}"


def parse_pith_number(text: object, field: str = "pith_number") -> PithNumber:
    """Parse ``pith:YYYY:SUFFIX``; raise IdentifierError naming ``field`` if malformed."""
    if not isinstance(text, str):
        raise IdentifierError(field, f"Pith number must be text, got {type(text).__name__}")
    match = _PITH_NUMBER.match(text)
    if match is None:
        raise IdentifierError(
            field,
            f"{quote_value(text)} is not a Pith number "
            "(expected pith:YYYY: and 26 base32 characters A-Z, 2-7)",
        )
    return PithNumber(int(match.group(1)), match.group(2))


def check_sha256_hex(text: object, field: str) -> str:
    """Return ``text`` if it is 64 lowercase hex characters, else raise IdentifierError."""
    if not isinstance(text, str) or _SHA256_HEX.match(text) is None:
        raise IdentifierError(field, f"{quote_value(text)} is not 64 lowercase hex characters")
    return text


def check_suffix(text: object, field: str = "suffix") -> str:
    """Return ``text`` if it is a 26-character Pith suffix, else raise IdentifierError."""
    if not isinstance(text, str) or _SUFFIX.match(text) is None:
        raise IdentifierError(
            field, f"{quote_value(text)} is not a Pith suffix (26 base32 characters A-Z, 2-7)"
        )
    return text


def pith_suffix(sha256_hex: str) -> str:
    """Return the 26-character URL suffix of a record's ``canonical_sha256``."""
    check_sha256_hex(sha256_hex, "canonical_sha256")
    return base64.b32encode(bytes.fromhex(sha256_hex)).decode("ascii")[:SUFFIX_LENGTH]


def pith_number_for(sha256_hex: str, submitted_at: str) -> str:
    """Return the Pith number of a record from its hash and submission time."""
    parse_timestamp(submitted_at, "metadata.submitted_at", earliest_year=RECORD_EARLIEST_YEAR)
    return f"pith:{submitted_at[:4]}:{pith_suffix(sha256_hex)}"


def short_pith_number(pith_number: str) -> str:
    """Return ``pith:`` + the first 8 characters of the suffix of ``pith_number``."""
    return parse_pith_number(pith_number).short


def parse_arxiv_id(text: object, field: str = "source.id") -> str:
    """Return ``text`` if it is an unversioned arXiv identifier, new or old style."""
    if isinstance(text, str) and (_ARXIV_OLD.match(text) or _is_new_arxiv_id(text)):
        return text
    raise IdentifierError(field, f"{quote_value(text)} is not an arXiv identifier")


def _is_new_arxiv_id(text: str) -> bool:
    match = _ARXIV_NEW.match(text)
    if match is None:
        return False
    month, number = match.groups()
    if month < _ARXIV_NEW_FIRST_MONTH:
        return False
    return len(number) == (5 if month >= _ARXIV_FIVE_DIGITS_FROM else 4)


def _require_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise IdentifierError(field, f"must be an object, got {type(value).__name__}")
    return value


def check_canonical_record(record: Any, field: str = "canonical_record") -> dict[str, Any]:
    """Check the parts of a canonical record that Pith numbers and aliases depend on.

    Fields the registry may add later are allowed, because the hash covers
    them anyway; the fields read here must have the expected types.

    Raises:
        IdentifierError: naming the first missing or malformed field.
    """
    record = _require_object(record, field)
    for key in ("metadata", "schema_version", "source"):
        if key not in record:
            raise IdentifierError(field_path(field, key), "missing")
    if not isinstance(record["schema_version"], str):
        raise IdentifierError(field_path(field, "schema_version"), "must be text")

    metadata = _require_object(record["metadata"], field_path(field, "metadata"))
    submitted_path = field_path(field_path(field, "metadata"), "submitted_at")
    if "submitted_at" not in metadata:
        raise IdentifierError(submitted_path, "missing")
    parse_timestamp(metadata["submitted_at"], submitted_path, earliest_year=RECORD_EARLIEST_YEAR)

    source_path = field_path(field, "source")
    source = _require_object(record["source"], source_path)
    for key, kind in (("id", str), ("kind", str), ("version", int)):
        if key not in source:
            raise IdentifierError(field_path(source_path, key), "missing")
        if type(source[key]) is not kind:
            raise IdentifierError(
                field_path(source_path, key), f"must be {'text' if kind is str else 'an integer'}"
            )
    if source["version"] < 1:
        raise IdentifierError(field_path(source_path, "version"), "must be at least 1")
    if source["kind"] == "arxiv":
        parse_arxiv_id(source["id"], field_path(source_path, "id"))
    return record


def record_pith_number(record: Any) -> tuple[str, str]:
    """Return ``(pith_number, canonical_sha256)`` computed from a canonical record."""
    check_canonical_record(record)
    digest = canonical_sha256(record)
    return pith_number_for(digest, record["metadata"]["submitted_at"]), digest


def derive_aliases(record: dict[str, Any], sha256_hex: str) -> dict[str, str]:
    """Return the aliases the registry derives for a record, by alias kind."""
    suffix = pith_suffix(sha256_hex)
    aliases = {f"pith_short_{length}": suffix[:length] for length in SHORT_LENGTHS}
    source = record["source"]
    if source["kind"] == "arxiv":
        aliases["arxiv"] = source["id"]
        aliases["arxiv_version"] = f"{source['id']}v{source['version']}"
        aliases["doi"] = ARXIV_DOI_PREFIX + source["id"].lower()
    return aliases


def _check_alias_shape(alias: Any, field: str) -> tuple[str, str]:
    alias = _require_object(alias, field)
    allowed = {"alias_kind", "alias_value", "created_at"}
    for key in alias:
        if key not in allowed:
            raise IdentifierError(field_path(field, key), "unknown alias field")
    kind = alias.get("alias_kind")
    value = alias.get("alias_value")
    if kind not in ALIAS_KINDS:
        raise IdentifierError(field_path(field, "alias_kind"), f"unknown alias kind {quote_value(kind)}")
    if not isinstance(value, str):
        raise IdentifierError(field_path(field, "alias_value"), "must be text")
    if "created_at" in alias:
        parse_timestamp(alias["created_at"], field_path(field, "created_at"))
    return kind, value


def _check_alias_without_record(kind: str, value: str, aliases: dict[str, str], field: str) -> None:
    # Without the canonical record only the forms and their agreement with
    # each other can be checked.
    if kind == "arxiv":
        parse_arxiv_id(value, field)
    elif kind == "arxiv_version":
        match = _ARXIV_VERSIONED.match(value)
        if match is None:
            raise IdentifierError(field, f"{quote_value(value)} is not a versioned arXiv identifier")
        parse_arxiv_id(match.group(1), field)
        if "arxiv" in aliases and match.group(1) != aliases["arxiv"]:
            raise IdentifierError(
                field, f"{quote_value(value)} does not version arxiv alias {quote_value(aliases['arxiv'])}"
            )
    elif kind == "doi":
        if "arxiv" in aliases and value != ARXIV_DOI_PREFIX + aliases["arxiv"].lower():
            raise IdentifierError(
                field, f"{quote_value(value)} is not the DOI of arxiv alias {quote_value(aliases['arxiv'])}"
            )
        if not value.startswith(ARXIV_DOI_PREFIX):
            raise IdentifierError(field, f"{quote_value(value)} is not an arXiv DOI")


def check_aliases(
    aliases: Any,
    pith_number: str,
    record: dict[str, Any] | None = None,
    sha256_hex: str | None = None,
    field: str = "source_aliases",
) -> list[dict[str, Any]]:
    """Check a record's ``source_aliases`` against what can be derived.

    Args:
        aliases: the list as published.
        pith_number: the record's Pith number; short forms must be its prefixes.
        record: the canonical record, if known; then every alias must equal
            the derived value.
        sha256_hex: the record's ``canonical_sha256``, if known.
        field: path used in error messages.

    Returns:
        The aliases, unchanged.

    Raises:
        IdentifierError: an alias is malformed, repeated, or disagrees with
            the record, naming the alias by its index.
    """
    if not isinstance(aliases, list):
        raise IdentifierError(field, f"must be a list, got {type(aliases).__name__}")
    suffix = parse_pith_number(pith_number).suffix

    by_kind: dict[str, str] = {}
    for index, alias in enumerate(aliases):
        kind, value = _check_alias_shape(alias, field_path(field, index))
        if kind in by_kind and by_kind[kind] != value:
            raise IdentifierError(
                field_path(field, index),
                f"second {kind} alias {quote_value(value)} conflicts with {quote_value(by_kind[kind])}",
            )
        by_kind[kind] = value

    expected = derive_aliases(record, sha256_hex or canonical_sha256(record)) if record else None
    for index, alias in enumerate(aliases):
        kind, value = alias["alias_kind"], alias["alias_value"]
        path = field_path(field_path(field, index), "alias_value")
        if kind.startswith("pith_short_"):
            length = int(kind.rsplit("_", 1)[1])
            if value != suffix[:length]:
                raise IdentifierError(
                    path, f"{kind} {quote_value(value)} is not the first {length} characters of {suffix}"
                )
        elif expected is not None:
            if expected.get(kind) != value:
                raise IdentifierError(
                    path, f"{kind} alias {quote_value(value)} does not match the record ({expected.get(kind)!r})"
                )
        else:
            _check_alias_without_record(kind, value, by_kind, path)
    return aliases
