"""Canonical JSON: the exact bytes every Pith hash is computed over.

The Pith registry hashes the UTF-8 bytes of::

    json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

``sort_keys`` orders object keys by Unicode code point, which differs from
the UTF-16 code unit order of RFC 8785 for characters above U+FFFF. Every
replica must use code point order, or the same document hashes differently.

The value model is deliberately smaller than JSON's, so that one value has
exactly one encoding on every replica and in every language:

* objects with text keys, arrays, text, ``true``, ``false`` and ``null``;
* integers in the exact range of an IEEE 754 double, -(2**53 - 1) to
  2**53 - 1, because a reader that decodes numbers as doubles would see
  another value outside it;
* no non-integer numbers at all. ``1.0``, ``1e0``, ``-0.0`` and ``1e-05``
  have several spellings across encoders, and no published Pith record contains
  one. ``-0`` is rejected too, because it is a second spelling of ``0``;
* text must be valid Unicode: an unpaired surrogate has no UTF-8 encoding.

``parse_json`` is the strict reader for outside bytes. It also rejects
duplicate object keys at any depth (including keys that only differ by
escaping), nesting deeper than ``Limits.max_depth``, more than
``Limits.max_values`` values and more than ``Limits.max_bytes`` bytes. Every
rejection is a ``CanonicalJSONError`` whose ``field`` is the path of the
offending value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from .errors import CanonicalJSONError, quote_value

__all__ = [
    "MAX_SAFE_INTEGER",
    "Limits",
    "DEFAULT_LIMITS",
    "canonical_bytes",
    "canonical_sha256",
    "check_value",
    "parse_json",
    "field_path",
]

MAX_SAFE_INTEGER = 2**53 - 1

# The longest decimal spelling of a safe integer has 16 digits; anything
# longer is out of range, and checking the length first keeps a 4,301-digit
# number from reaching int(), which raises a plain ValueError for it.
_MAX_INTEGER_DIGITS = 16


@dataclass(frozen=True)
class Limits:
    """Bounds applied to a JSON document read from outside.

    Attributes:
        max_bytes: largest accepted encoded document, in bytes.
        max_depth: deepest accepted nesting; the top-level value is depth 1.
        max_values: most values (objects, arrays, strings, numbers, literals
            and keys) in one document.
    """

    max_bytes: int = 16 * 1024 * 1024
    max_depth: int = 32
    max_values: int = 2_000_000


DEFAULT_LIMITS = Limits()


class _Rejected:
    """Placeholder the JSON decoder hooks leave where a value was rejected.

    The hooks cannot know where in the document they are, so they leave this
    marker and ``check_value`` raises with the full field path when it meets it.
    ``key`` is set when the fault is one key of the rejected object, such as
    a duplicate, so that the path names that key.
    """

    __slots__ = ("reason", "key")

    def __init__(self, reason: str, key: str | None = None) -> None:
        self.reason = reason
        self.key = key


def _parse_int(text: str) -> int | _Rejected:
    digits = text[1:] if text.startswith("-") else text
    if len(digits) > _MAX_INTEGER_DIGITS:
        return _Rejected(f"integer {quote_value(text)} is outside the safe range ±(2**53 - 1)")
    if text == "-0":
        return _Rejected("negative zero '-0' is a second spelling of 0")
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return _Rejected(f"integer {text} is outside the safe range ±(2**53 - 1)")
    return value


def _parse_float(text: str) -> _Rejected:
    return _Rejected(f"non-integer number {quote_value(text)} is not allowed")


def _parse_constant(text: str) -> _Rejected:
    return _Rejected(f"{text} is not a finite number and not JSON")


def _build_object(pairs: list[tuple[str, Any]]) -> dict[str, Any] | _Rejected:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Rejected(f"duplicate key {quote_value(key)}", key)
        seen.add(key)
    raise AssertionError("unreachable: dict shrank without a duplicate key")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_build_object,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_parse_constant,
    strict=True,
)


def field_path(parent: str, key: str | int) -> str:
    """Return the dotted path of ``key`` inside the value at ``parent``."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if key.isidentifier():
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{quote_value(key)}]"


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Location of a value: None for the top-level value, else a pair of the
# parent's location and the key or index inside the parent.
_Location = tuple[Any, "str | int"] | None


def check_value(value: Any, path: str = "", limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise CanonicalJSONError unless ``value`` is in the canonical value model.

    The walk uses an explicit stack instead of recursion, so any nesting the
    limits allow is checked without a RecursionError.

    Args:
        value: a decoded JSON value.
        path: field path of ``value``, used in error messages.
        limits: nesting and size bounds to enforce.

    Raises:
        CanonicalJSONError: names the path of the first offending value, in
            document order.
    """
    if _is_canonical(value, limits.max_depth, limits.max_values):
        return
    _check_with_paths(value, path, limits)


def _is_canonical(value: Any, max_depth: int, max_values: int) -> bool:
    """Return whether ``value`` is in the model and within the limits, without building paths.

    This is the fast walk taken for every valid value: scalars inside a
    container are checked in place and only containers go on the stack. It
    counts values and object keys exactly as ``_check_with_paths`` does,
    which runs only when this returns False and then names the offending path.
    """
    if not _is_canonical_scalar(value) and type(value) is not dict and type(value) is not list:
        return False
    remaining = max_values - 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            if depth > max_depth:
                return False
            remaining -= 2 * len(item)
            if remaining < 0:
                return False
            for key, member in item.items():
                if type(key) is not str or (not key.isascii() and _has_surrogate(key)):
                    return False
                member_kind = type(member)
                if member_kind is dict or member_kind is list:
                    stack.append((member, depth + 1))
                elif not _is_canonical_scalar(member):
                    return False
        elif kind is list:
            if depth > max_depth:
                return False
            remaining -= len(item)
            if remaining < 0:
                return False
            for member in item:
                member_kind = type(member)
                if member_kind is dict or member_kind is list:
                    stack.append((member, depth + 1))
                elif not _is_canonical_scalar(member):
                    return False
    return True


def _is_canonical_scalar(value: Any) -> bool:
    kind = type(value)
    if kind is str:
        return value.isascii() or not _has_surrogate(value)
    if kind is int:
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    return value is None or kind is bool


def _check_with_paths(value: Any, path: str, limits: Limits) -> None:
    remaining = limits.max_values
    max_depth = limits.max_depth
    # Each entry is (value, depth, location, is_object_member). The text path
    # is built from the location only when an error is raised.
    stack: list[tuple[Any, int, _Location, bool]] = [(value, 1, None, False)]
    while stack:
        item, depth, location, is_member = stack.pop()
        if is_member and location is not None:
            parent, key = location
            if type(key) is not str:
                raise CanonicalJSONError(_path_of(path, parent), f"object key {quote_value(key)} is not text")
            if _has_surrogate(key):
                raise CanonicalJSONError(_path_of(path, location), "object key contains an unpaired surrogate")
            remaining -= 1
        remaining -= 1
        if remaining < 0:
            raise CanonicalJSONError(
                _path_of(path, location), f"document contains more than {limits.max_values} values"
            )

        # bool is a subclass of int, so it must be tested first.
        if item is None or item is True or item is False:
            continue
        kind = type(item)
        if kind is str:
            if _has_surrogate(item):
                raise CanonicalJSONError(_path_of(path, location), "text contains an unpaired surrogate")
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise CanonicalJSONError(
                    _path_of(path, location),
                    f"integer {quote_value(item)} is outside the safe range ±(2**53 - 1)",
                )
        elif kind is dict or kind is list:
            if depth > max_depth:
                raise CanonicalJSONError(_path_of(path, location), f"nesting is deeper than {max_depth} levels")
            # Members are pushed in reverse, so they are checked in document
            # order. Members past the value budget are never reached, so they
            # are not pushed, which keeps the stack small for a huge container.
            count = min(len(item), remaining + 1)
            if kind is dict:
                members = list(itertools.islice(item.items(), count))
                for key, member in reversed(members):
                    stack.append((member, depth + 1, (location, key), True))
            else:
                for index in range(count - 1, -1, -1):
                    stack.append((item[index], depth + 1, (location, index), False))
        elif kind is _Rejected:
            where = location if item.key is None else (location, item.key)
            raise CanonicalJSONError(_path_of(path, where), item.reason)
        elif kind is float:
            raise CanonicalJSONError(
                _path_of(path, location), f"non-integer number {quote_value(item)} is not allowed"
            )
        else:
            raise CanonicalJSONError(
                _path_of(path, location), f"value of type {kind.__name__} is not allowed in JSON"
            )


def _path_of(base: str, location: _Location) -> str:
    keys: list[str | int] = []
    while location is not None:
        location, key = location
        keys.append(key)
    path = base
    for key in reversed(keys):
        path = field_path(path, key)
    return path


def parse_json(data: bytes | str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode one JSON document from outside, strictly.

    Args:
        data: the document as UTF-8 bytes (no byte order mark) or as text.
        limits: size, nesting and value-count bounds.

    Returns:
        The decoded value, guaranteed to be in the canonical value model.

    Raises:
        CanonicalJSONError: the document is too large, is not UTF-8, is not
            JSON, or contains a value outside the model; ``field`` is the path.
    """
    if isinstance(data, str):
        if len(data) > limits.max_bytes:
            raise CanonicalJSONError(
                "", f"document of {len(data)} characters exceeds the limit of {limits.max_bytes} bytes"
            )
        # A code point takes 1 to 4 bytes in UTF-8, so the exact size matters
        # only when it could exceed the limit. A surrogate counts 3 bytes,
        # and check_value rejects it later.
        size = len(data) if len(data) * 4 <= limits.max_bytes else len(data.encode("utf-8", "surrogatepass"))
    else:
        size = memoryview(data).nbytes
    if size > limits.max_bytes:
        raise CanonicalJSONError(
            "", f"document of {size} bytes exceeds the limit of {limits.max_bytes} bytes"
        )
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise CanonicalJSONError(
                "", f"document is not valid UTF-8 at byte {error.start}"
            ) from None
    if text.startswith("\ufeff"):
        raise CanonicalJSONError("", "document starts with a byte order mark")

    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise CanonicalJSONError(
            "", f"not valid JSON: {error.msg}: line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise CanonicalJSONError("", "nesting is too deep to decode") from None
    except ValueError as error:
        # The C decoder raises plain ValueError for a few inputs that are not
        # JSONDecodeError; they are still bad input.
        raise CanonicalJSONError("", f"not valid JSON: {error}") from None

    check_value(value, "", limits)
    return value


def canonical_bytes(value: Any, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Return the canonical JSON encoding of ``value``.

    Raises:
        CanonicalJSONError: ``value`` is outside the canonical value model.
    """
    check_value(value, "", limits)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        # The standard encoder recurses once per level, so nesting that a
        # caller's large Limits.max_depth allows can still exceed the
        # interpreter's recursion limit.
        raise CanonicalJSONError("", "nesting is too deep to encode") from None
    return text.encode("utf-8")


def canonical_sha256(value: Any) -> str:
    """Return the lowercase hex SHA-256 of the canonical JSON of ``value``.

    Raises:
        CanonicalJSONError: ``value`` is outside the canonical value model.
    """
    return hashlib.sha256(canonical_bytes(value)).hexdigest()
