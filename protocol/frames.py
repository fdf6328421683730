"""Frames of the peer wire: a length prefix, then one msgpack value.

A frame is a 4-byte unsigned big-endian length followed by that many bytes,
which hold exactly one msgpack value. A length of 0 or above
``MAX_FRAME_BYTES`` is invalid, and the reader rejects it as soon as the 4
header bytes are in, so a peer cannot make it wait for, or buffer, a body
that would be rejected anyway. The reader copies at most one incomplete
frame, so it never keeps more than ``MAX_FRAME_BYTES`` + 4 bytes.

The payload decoder accepts the wire value model: the canonical JSON value
model (see ``protocol.canonical``) plus byte strings (msgpack bin). It
rejects, with a ``WireError``:

* floats of any width, also when integral: msgpack float64 ``1.0`` is a
  float in Python and is never turned into the integer ``1``;
* integers outside ±(2**53 - 1);
* ext types, including the timestamp ext type -1;
* map keys that are not text, and duplicate map keys;
* text that is not valid UTF-8, including CESU-8 surrogates and overlong
  forms;
* nesting deeper than ``MAX_FRAME_DEPTH`` levels;
* bytes after the one value of the frame.

Which fields may hold bytes and which must be text is decided by the message
schema in ``protocol.wire``; this module has no notion of messages.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack

from .canonical import DEFAULT_LIMITS, MAX_SAFE_INTEGER, field_path
from .errors import UsageError, WireError, quote_value

__all__ = [
    "FRAME_HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_CONTAINERS",
    "MAX_FRAME_DEPTH",
    "FrameReader",
    "decode_payload",
    "encode_frame",
    "encode_payload",
]

FRAME_HEADER_BYTES = 4

# One frame carries up to 256 items, and a single event may take 512 KiB of
# canonical JSON (protocol.merge.MAX_EVENT_BYTES), so the largest event
# always fits in one frame. The cap is also the most a peer can make a
# connection buffer.
# Checking a frame costs CPU in proportion to its values, so
# MAX_FRAME_CONTAINERS bounds the costliest ones below.
MAX_FRAME_BYTES = 1024 * 1024

# The message map, the items array, then an item nested as deep as
# canonical JSON allows (DEFAULT_LIMITS.max_depth, counting the item itself).
MAX_FRAME_DEPTH = DEFAULT_LIMITS.max_depth + 2

# Arrays and maps in one frame. Each costs a walk step, and an empty one a
# single byte, so a 1 MiB frame of a million empty arrays took 1.6 s to
# reject. The published records and state have at least 67 bytes of JSON per
# container, so a full frame of real items contains about 16,000.
MAX_FRAME_CONTAINERS = 65_536


class FrameReader:
    """Split a byte stream into frame payloads without buffering more than one frame.

    Use: ``feed(data)`` with each chunk read from the stream, then call
    ``next_frame()`` until it returns None. ``feed`` keeps a reference to the
    chunk instead of copying it, and ``next_frame`` copies only the tail of
    an incomplete frame, so ``buffered`` never exceeds
    ``MAX_FRAME_BYTES + FRAME_HEADER_BYTES``.

    Error handling: ``next_frame`` raises ``WireError`` for a length prefix of
    0 or above the cap. The stream cannot be resynchronised after that, so
    the reader drops every byte it kept and every later call raises
    ``UsageError``.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if not 1 <= max_frame_bytes <= MAX_FRAME_BYTES:
            raise UsageError(f"max_frame_bytes must be 1 to {MAX_FRAME_BYTES}, got {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        # Start of an incomplete frame carried over from earlier chunks.
        self._partial = bytearray()
        # The chunk passed to feed() and how much of it next_frame() used.
        self._chunk = memoryview(b"")
        self._offset = 0
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame copied into the reader."""
        return len(self._partial)

    @property
    def at_frame_boundary(self) -> bool:
        """Whether every byte fed so far belongs to a complete frame already returned."""
        return not self._partial and self._offset == len(self._chunk)

    def feed(self, data: bytes) -> None:
        """Hand the reader the next chunk of the stream.

        Raises:
            UsageError: the previous chunk has not been drained with
                ``next_frame``, or the reader failed earlier.
        """
        if self._failed:
            raise UsageError("the frame reader failed on an invalid length prefix; close the connection")
        if self._offset != len(self._chunk):
            raise UsageError("call next_frame() until it returns None before feeding more data")
        self._chunk = memoryview(data)
        self._offset = 0

    def next_frame(self) -> bytes | None:
        """Return the next complete frame payload, or None when more data is needed.

        Raises:
            WireError: the next length prefix is 0 or larger than
                ``max_frame_bytes``.
            UsageError: the reader failed earlier.
        """
        if self._failed:
            raise UsageError("the frame reader failed on an invalid length prefix; close the connection")

        # Complete the length prefix, from the carried-over bytes first.
        if len(self._partial) < FRAME_HEADER_BYTES:
            self._take(FRAME_HEADER_BYTES - len(self._partial))
            if len(self._partial) < FRAME_HEADER_BYTES:
                return None
        length = int.from_bytes(self._partial[:FRAME_HEADER_BYTES], "big")
        if length == 0 or length > self.max_frame_bytes:
            self.discard()
            self._failed = True
            if length == 0:
                raise WireError("frame", "frame length 0 is invalid (a frame contains one msgpack value)")
            raise WireError(
                "frame", f"frame length {length} exceeds the limit of {self.max_frame_bytes} bytes"
            )

        # Then the body. A body that lies wholly inside the chunk is sliced
        # out of it without first copying it into the partial buffer.
        if len(self._partial) == FRAME_HEADER_BYTES and len(self._chunk) - self._offset >= length:
            payload = bytes(self._chunk[self._offset : self._offset + length])
            self._offset += length
            self._partial.clear()
            return payload
        self._take(FRAME_HEADER_BYTES + length - len(self._partial))
        if len(self._partial) < FRAME_HEADER_BYTES + length:
            return None
        payload = bytes(self._partial[FRAME_HEADER_BYTES:])
        self._partial.clear()
        return payload

    def discard(self) -> None:
        """Drop every byte held, for a connection that is being closed."""
        self._partial = bytearray()
        self._chunk = memoryview(b"")
        self._offset = 0

    def _take(self, count: int) -> None:
        end = min(self._offset + count, len(self._chunk))
        self._partial += self._chunk[self._offset : end]
        self._offset = end
        if self._offset == len(self._chunk):
            # Release the caller's chunk as soon as it is used up.
            self._chunk = memoryview(b"")
            self._offset = 0


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` with its 4-byte length prefix.

    Raises:
        UsageError: the payload is empty or larger than ``MAX_FRAME_BYTES``.
    """
    if not payload:
        raise UsageError("a frame payload must not be empty")
    if len(payload) > MAX_FRAME_BYTES:
        raise UsageError(f"frame payload of {len(payload)} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")
    return len(payload).to_bytes(FRAME_HEADER_BYTES, "big") + payload


def encode_payload(value: Any) -> bytes:
    """Return the msgpack encoding of a value already checked against its schema.

    Text is encoded as msgpack str and bytes as bin (``use_bin_type``), so
    ``decode_payload`` returns the same value.
    """
    return msgpack.packb(value, use_bin_type=True)


class _Rejected:
    """Marker the msgpack hook leaves where a map was rejected.

    The hook cannot know where in the value the map is, so the walk in
    ``decode_payload`` raises with the full path when it meets the marker.
    """

    __slots__ = ("reason", "key")

    def __init__(self, reason: str, key: str | None = None) -> None:
        self.reason = reason
        self.key = key


def _build_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any] | _Rejected:
    # strict_map_key lets both text and bin keys through, but only text is allowed.
    for key, _ in pairs:
        if type(key) is not str:
            return _Rejected(f"map key {quote_value(key)} must be text, got {type(key).__name__}")
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return _Rejected(f"duplicate map key {quote_value(key)}", key)
        seen.add(key)
    raise AssertionError("unreachable: dict shrank without a duplicate key")


def decode_payload(payload: bytes) -> Any:
    """Decode one frame payload into the wire value model.

    Args:
        payload: the bytes after the length prefix.

    Returns:
        A value built from dict (text keys), list, str, bytes, int, bool and
        None, nested at most ``MAX_FRAME_DEPTH`` levels.

    Raises:
        WireError: ``field`` is the path of the offending value, or "frame"
            when msgpack rejects the bytes before a path exists (invalid
            UTF-8, a non-text key msgpack refuses itself, a truncated value,
            trailing bytes).
    """
    size = len(payload)
    if size > MAX_FRAME_BYTES:
        raise WireError("frame", f"frame payload of {size} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")
    try:
        # No string, container or ext in a frame can be longer than the
        # frame, and each array element or map entry takes at least one or
        # two bytes. Passing the size keeps msgpack from preallocating a
        # list for a header that claims 4 billion elements.
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_build_map,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except msgpack.ExtraData:
        raise WireError("frame", "frame contains bytes after its msgpack value") from None
    except msgpack.StackError:
        # msgpack 1.2.4 stops at 1024 levels on its own stack, well past ours.
        raise WireError("frame", f"nesting is deeper than {MAX_FRAME_DEPTH} levels") from None
    except RecursionError:
        # Only the pure-Python fallback of msgpack (MSGPACK_PUREPYTHON) recurses per level.
        raise WireError("frame", f"nesting is deeper than {MAX_FRAME_DEPTH} levels") from None
    except UnicodeDecodeError as error:
        raise WireError(
            "frame", f"text is not valid UTF-8 ({error.reason} at byte {error.start} of a string)"
        ) from None
    except msgpack.FormatError:
        raise WireError("frame", "not valid msgpack (reserved type byte)") from None
    except (ValueError, TypeError, OverflowError) as error:
        raise WireError("frame", _describe_msgpack_error(str(error))) from None

    _check_wire_value(value)
    return value


# "int is not allowed for map key ..." (C extension) or
# "<class 'int'> is not allowed for map key" (pure-Python fallback).
_MAP_KEY_TYPE = re.compile(r"(\w+)'?>? is not allowed for map key")


def _describe_msgpack_error(message: str) -> str:
    # The texts matched here are those of msgpack 1.2.4, in its C extension
    # and its pure-Python fallback. Any other text is quoted as it is.
    key_type = _MAP_KEY_TYPE.search(message)
    if key_type is not None:
        return f"map key must be text, got {key_type.group(1)}"
    if "incomplete input" in message:
        return "msgpack value is truncated: the frame ends inside it"
    if "exceeds max_" in message:
        return f"a msgpack length is larger than the frame could hold ({message})"
    return f"not valid msgpack: {quote_value(message)}"


# Location of a value: None for the top-level value, else a pair of the
# parent's location and the key or index inside the parent.
_Location = tuple[Any, "str | int"] | None


def _check_wire_value(value: Any) -> None:
    """Raise WireError at the first value outside the wire value model, in document order."""
    # An explicit stack instead of recursion, so a deep value cannot raise
    # RecursionError before the depth check reaches it.
    stack: list[tuple[Any, int, _Location]] = [(value, 1, None)]
    # Each array or map is counted when its parent is visited, before it is
    # pushed, so a frame of a million empty arrays stops after one step.
    containers = 1 if type(value) in _CONTAINER_TYPES else 0
    while stack:
        item, depth, location = stack.pop()
        kind = type(item)
        if item is None or kind is bool or kind is str or kind is bytes:
            continue
        if kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise WireError(
                    _path_of(location), f"integer {quote_value(item)} is outside the safe range ±(2**53 - 1)"
                )
        elif kind is dict or kind is list:
            if depth > MAX_FRAME_DEPTH:
                raise WireError(_path_of(location), f"nesting is deeper than {MAX_FRAME_DEPTH} levels")
            if _scalar_members_valid(item.values() if kind is dict else item):
                continue
            containers += sum(map(_CONTAINER_TYPES.__contains__, map(type, item.values() if kind is dict else item)))
            if containers > MAX_FRAME_CONTAINERS:
                raise WireError("frame", f"frame contains more than {MAX_FRAME_CONTAINERS} arrays and maps")
            if kind is dict:
                members = list(item.items())
                for key, member in reversed(members):
                    stack.append((member, depth + 1, (location, key)))
            else:
                for index in range(len(item) - 1, -1, -1):
                    stack.append((item[index], depth + 1, (location, index)))
        elif kind is _Rejected:
            where = location if item.key is None else (location, item.key)
            raise WireError(_path_of(where), item.reason)
        elif kind is float:
            if math.isfinite(item):
                reason = f"non-integer number {quote_value(item)} is not allowed (msgpack float)"
            else:
                reason = f"non-finite number {quote_value(item)} is not allowed (msgpack float)"
            raise WireError(_path_of(location), reason)
        elif kind is msgpack.ExtType:
            raise WireError(_path_of(location), f"msgpack ext type {item.code} is not allowed")
        elif kind is msgpack.Timestamp:
            raise WireError(_path_of(location), "msgpack timestamp (ext type -1) is not allowed")
        else:
            raise WireError(_path_of(location), f"msgpack value of type {kind.__name__} is not allowed")


_SCALAR_TYPES = frozenset({str, bytes, bool, type(None)})
_CONTAINER_TYPES = frozenset({dict, list})


def _scalar_members_valid(members: Any) -> bool:
    """Return whether every member is a valid scalar, so the walk can skip them.

    The type set and the bounds are computed in C, which makes a long flat
    array of small integers, the cheapest input to send per value, cheap to
    check too. Any other container goes through the walk member by member.
    """
    kinds = set(map(type, members))
    if kinds <= _SCALAR_TYPES:
        return True
    if kinds == {int}:
        return -MAX_SAFE_INTEGER <= min(members) and max(members) <= MAX_SAFE_INTEGER
    return False


def _path_of(location: _Location) -> str:
    keys: list[str | int] = []
    while location is not None:
        location, key = location
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path = field_path(path, key)
    return path or "frame"

