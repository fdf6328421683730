"""Range-based set reconciliation of 32-byte ids, sans-IO.

Two replicas each hold a set of 32-byte ids (the SHA-256 event ids). A
session finds the ids each side has that the other lacks ("have") and the
ids it lacks that the other has ("need"). Traffic grows with the size of the
difference, not with the size of the sets. Both sides sort their ids and
send fingerprints of ranges of the id space. Ranges whose fingerprints match
are done, and the others are split until they are small enough to send as
id lists. docs/reconciliation.md specifies the messages byte by byte.

Fingerprints are keyed with a 32-byte session key that both sides share and
that no one knew before the session started (the node derives it from both
handshake nonces). A third party who creates events therefore cannot choose
ids whose fingerprints collide, as it could against a plain sum or XOR of
the ids.

Each ``Reconciler`` is one session with one explicit state machine. Events
are facts about the last message; the table ``_TRANSITIONS`` below is the
only place that changes the state::

    state           event           next state
    NEW             SENT_OPEN       AWAITING_REPLY   initiate(), or the first reply
    NEW             SENT_FINAL      DONE             first reply opens no range
    NEW             PEER_ERROR      FAILED
    AWAITING_REPLY  SENT_OPEN       AWAITING_REPLY
    AWAITING_REPLY  SENT_FINAL      DONE
    AWAITING_REPLY  RECEIVED_FINAL  DONE             receive() returns None
    AWAITING_REPLY  PEER_ERROR      FAILED

A message "opens" a range when it contains a fingerprint or an id list, which
the receiver must reply to. A final message opens none, so its sender is done
once it is sent and its receiver is done once it is read. Calling a method in
a state the table does not allow raises ``UsageError``. A peer's invalid
message raises ``WireError`` and moves the session to FAILED.

The node owns the I/O around a session: it sends each returned payload in a
``reconcile`` frame, stops reading once ``done`` is true, applies a
wall-clock timeout to every session, and keeps the storage snapshot
unchanged while the session runs.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import UsageError, WireError, quote_value

__all__ = [
    "BRANCH_FACTOR",
    "DEFAULT_FRAME_BUDGET",
    "DEFAULT_MAX_PEER_IDS",
    "FINGERPRINT_SIZE",
    "ID_SIZE",
    "MAX_ID_LIST",
    "MAX_MESSAGE_BYTES",
    "MIN_FRAME_BUDGET",
    "PROTOCOL_VERSION",
    "SESSION_KEY_SIZE",
    "Mode",
    "Range",
    "Reconciler",
    "SessionState",
    "SortedIds",
    "Storage",
    "decode_message",
    "encode_message",
    "round_limit",
]

ID_SIZE = 32
SESSION_KEY_SIZE = 32
FINGERPRINT_SIZE = 16
PROTOCOL_VERSION = 1

# When a fingerprint does not match and the receiving side has more than
# MAX_ID_LIST ids in the range, it splits the range into BRANCH_FACTOR
# sub-ranges of equal id count. With 16 and 32, four splits take 10**6 ids
# down to id lists of about 15 ids, so a session with one difference takes
# 3 round trips and under 2 KB (measured in docs/reconciliation.md).
BRANCH_FACTOR = 16
MAX_ID_LIST = 32

# Every message the reconciler builds fits in its frame budget. The wire frame
# carrying the payload is at most 1 MiB, and 1 KiB of it is left for the
# frame's other fields. MIN_FRAME_BUDGET keeps room for the reply to one
# range (an id list of 32 ids is 1,058 bytes) plus the continuation.
DEFAULT_FRAME_BUDGET = 512 * 1024
MIN_FRAME_BUDGET = 4 * 1024
MAX_MESSAGE_BYTES = 1024 * 1024 - 1024

# The maximum number of ids one peer may report that this side lacks in one
# session, and the allowance that sizes the round limit. 2**24 ids are 512 MiB.
# NOTE: a guess at an upper bound on a full Pith catalogue, not a measured
# size. The node can pass a tighter value when it has learned the peer's size.
DEFAULT_MAX_PEER_IDS = 1 << 24

_ZERO_BOUND = bytes(ID_SIZE)
# Sorts after every 32-byte id, so bisect() on a sorted id list returns its
# length for it.
_INFINITY = b"\xff" * (ID_SIZE + 1)
_SUM_MASK = (1 << 256) - 1
_ITEM_PERSON = b"pith-rec-item"
_FINGERPRINT_PERSON = b"pith-rec-fp"

# Encoded sizes used to keep every message within its budget.
_MAX_BOUND_BYTES = 1 + ID_SIZE
_MAX_FINGERPRINT_RANGE = _MAX_BOUND_BYTES + FINGERPRINT_SIZE
_MAX_BITMAP_BYTES = (MAX_ID_LIST + 7) // 8
_RESOLVED_OVERHEAD = _MAX_BOUND_BYTES + 2 + 1 + _MAX_BITMAP_BYTES
_MAX_ID_LIST_RANGE = _MAX_BOUND_BYTES + 1 + MAX_ID_LIST * ID_SIZE
_MIN_CONTINUATION_RESERVE = _MAX_ID_LIST_RANGE + _MAX_BOUND_BYTES
_MAX_RESOLVED_IDS = 0xFFFF
# Bytes an honest session spends per id it moves in bulk: the id, and a share
# of the fingerprints and bounds around it. Used only to size the round limit.
_BULK_BYTES_PER_ID = 40


class Mode(enum.IntEnum):
    """Content type of a range in a message. All four 2-bit values are assigned."""

    SKIP = 0
    FINGERPRINT = 1
    ID_LIST = 2
    RESOLVED = 3


_OPENING_MODES = (Mode.FINGERPRINT, Mode.ID_LIST)


@dataclass(frozen=True, slots=True)
class Range:
    """One range of a message: the ids x with ``lower <= x < upper``.

    Bounds are 32 bytes, except the upper bound of the last range of a
    message, which is infinity (33 bytes of 0xff here, length 0 on the wire).
    Only ``upper`` is encoded; ``lower`` is the previous range's upper bound,
    or 32 zero bytes for the first range.

    Attributes:
        fingerprint: for FINGERPRINT, the sender's fingerprint of the range.
        ids: for ID_LIST, every id the sender has in the range; for
            RESOLVED, the ids the sender has and the receiver lacks.
        bitmap: for RESOLVED, one bit per id of the receiver's id list for
            this range, most significant bit first, set where the sender
            lacks that id.
    """

    lower: bytes
    upper: bytes
    mode: Mode
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()
    bitmap: bytes = b""


class Storage(Protocol):
    """A sorted, duplicate-free sequence of 32-byte ids that does not change during a session.

    ``SortedIds`` keeps them in memory. A SQLite store can implement this over
    a snapshot read with one ordered scan, because a b-tree index gives no
    O(log n) rank (``bisect_left``) or position (``id_at``) lookups.
    """

    def __len__(self) -> int: ...

    def bisect_left(self, bound: bytes) -> int:
        """Return the number of ids less than the 32-byte ``bound``."""
        ...

    def id_at(self, index: int) -> bytes:
        """Return the id at position ``index`` in ascending order."""
        ...

    def ids_between(self, start: int, stop: int) -> Sequence[bytes]:
        """Return the ids at positions ``start`` to ``stop - 1`` in ascending order."""
        ...


class SortedIds:
    """An immutable in-memory Storage built from any iterable of 32-byte ids.

    Duplicates are dropped. Several sessions may share one instance.
    """

    __slots__ = ("_ids",)

    def __init__(self, ids: Iterable[bytes]) -> None:
        items = list(ids)
        for item in items:
            if type(item) is not bytes or len(item) != ID_SIZE:
                raise UsageError(f"an id must be {ID_SIZE} bytes, got {quote_value(item)}")
        self._ids = sorted(set(items))

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item: object) -> bool:
        if type(item) is not bytes:
            return False
        index = bisect.bisect_left(self._ids, item)
        return index < len(self._ids) and self._ids[index] == item

    def bisect_left(self, bound: bytes) -> int:
        return bisect.bisect_left(self._ids, bound)

    def id_at(self, index: int) -> bytes:
        return self._ids[index]

    def ids_between(self, start: int, stop: int) -> Sequence[bytes]:
        return self._ids[start:stop]


def round_limit(
    local_count: int,
    frame_budget: int = DEFAULT_FRAME_BUDGET,
    max_peer_ids: int = DEFAULT_MAX_PEER_IDS,
) -> int:
    """Return the maximum number of messages one side of a session accepts from its peer.

    The first term covers the descent through the split levels of the larger
    set, twice over plus slack, because a continuation after a full message
    starts a new, shallower descent. The second term allows four round trips
    for every frame budget of ids that the two sides may have to move. A
    peer that lies can stretch a session up to this limit, never beyond it.
    """
    largest = max(local_count, max_peer_ids, 1)
    levels = _split_levels(largest)
    bulk_messages = math.ceil(_BULK_BYTES_PER_ID * (local_count + max_peer_ids) / frame_budget)
    return 2 * (levels + 4) + 4 * bulk_messages


def _split_levels(count: int) -> int:
    levels = 0
    while count > MAX_ID_LIST:
        count = math.ceil(count / BRANCH_FACTOR)
        levels += 1
    return levels


# --- Encoding ---------------------------------------------------------------


def _bound_prefix(upper: bytes) -> bytes:
    """Return the wire prefix of an upper bound: empty for infinity."""
    if upper == _INFINITY:
        return b""
    prefix = upper.rstrip(b"\x00")
    if not prefix:
        raise UsageError("an upper bound of 0 cannot be encoded: the range would be empty")
    return prefix


def _bound_between(previous: bytes, following: bytes) -> bytes:
    """Return the shortest bound b with ``previous < b <= following``, padded to 32 bytes.

    It is the first byte where the two ids differ, with every byte before it:
    a prefix of ``following`` whose last byte is nonzero, because it is
    larger than the byte of ``previous`` at the same position.
    """
    position = 0
    while previous[position] == following[position]:
        position += 1
    return following[: position + 1] + bytes(ID_SIZE - 1 - position)


def _range_size(item: Range) -> int:
    size = 1 + len(_bound_prefix(item.upper))
    if item.mode is Mode.FINGERPRINT:
        size += FINGERPRINT_SIZE
    elif item.mode is Mode.ID_LIST:
        size += 1 + ID_SIZE * len(item.ids)
    elif item.mode is Mode.RESOLVED:
        size += 2 + ID_SIZE * len(item.ids) + 1 + len(item.bitmap)
    return size


def encode_message(ranges: Iterable[Range]) -> bytes:
    """Encode ranges as a reconciliation payload.

    The encoder writes what it is given, so tests can build invalid messages;
    ``decode_message`` is the side that enforces the rules.
    """
    out = bytearray([PROTOCOL_VERSION])
    for item in ranges:
        prefix = _bound_prefix(item.upper)
        out.append(int(item.mode) << 6 | len(prefix))
        out += prefix
        if item.mode is Mode.FINGERPRINT:
            out += item.fingerprint
        elif item.mode is Mode.ID_LIST:
            out.append(len(item.ids))
            out += b"".join(item.ids)
        elif item.mode is Mode.RESOLVED:
            out += len(item.ids).to_bytes(2, "big")
            out += b"".join(item.ids)
            out.append(len(item.bitmap))
            out += item.bitmap
    return bytes(out)


# --- Decoding ---------------------------------------------------------------


class _Reader:
    """Cursor over a payload that raises WireError when a field runs past its end."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def remaining(self) -> int:
        return len(self.data) - self.position

    def take(self, size: int, field: str, what: str) -> bytes:
        if size > self.remaining():
            raise WireError(field, f"payload ends inside {what}: needs {size} bytes, {self.remaining()} left")
        start = self.position
        self.position += size
        return self.data[start : self.position]


def decode_message(payload: bytes) -> list[Range]:
    """Decode and check a reconciliation payload from a peer.

    Raises:
        WireError: the payload breaks a rule of docs/reconciliation.md; its
            ``field`` names the range and part, such as
            ``payload.ranges[3].ids[2]``.
        UsageError: ``payload`` is not bytes.
    """
    if not isinstance(payload, bytes):
        raise UsageError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError("payload", f"is {len(payload)} bytes, more than the limit of {MAX_MESSAGE_BYTES}")
    if not payload:
        raise WireError("payload", "is empty: a message starts with the version byte")
    if payload[0] != PROTOCOL_VERSION:
        raise WireError("payload.version", f"is {payload[0]}, expected {PROTOCOL_VERSION}")

    reader = _Reader(payload)
    reader.position = 1
    ranges: list[Range] = []
    lower = _ZERO_BOUND
    previous_mode: Mode | None = None
    while True:
        field = f"payload.ranges[{len(ranges)}]"
        if reader.remaining() == 0:
            raise WireError("payload.ranges", "do not cover the id space: the last range must end at infinity")
        header = reader.take(1, field, "the range header")[0]
        mode = Mode(header >> 6)
        upper = _read_upper_bound(reader, header & 0x3F, lower, f"{field}.upper_bound")
        if mode is Mode.SKIP and previous_mode is Mode.SKIP:
            raise WireError(field, "follows another skip range; adjacent skip ranges must be merged")
        ranges.append(_read_range_body(reader, mode, lower, upper, field))
        previous_mode = mode
        if upper == _INFINITY:
            break
        lower = upper

    if reader.remaining():
        raise WireError("payload", f"has {reader.remaining()} bytes after the range that ends at infinity")
    return ranges


def _read_upper_bound(reader: _Reader, length: int, lower: bytes, field: str) -> bytes:
    if length == 0:
        return _INFINITY
    if length > ID_SIZE:
        raise WireError(field, f"prefix length is {length}, more than {ID_SIZE}")
    prefix = reader.take(length, field, "the bound prefix")
    if prefix[-1] == 0:
        raise WireError(field, f"prefix {prefix.hex()} ends with a zero byte; the shortest form drops it")
    upper = prefix + bytes(ID_SIZE - length)
    if upper <= lower:
        raise WireError(field, f"{prefix.hex()} is not above the lower bound {lower.hex()}; bounds must increase")
    return upper


def _read_range_body(reader: _Reader, mode: Mode, lower: bytes, upper: bytes, field: str) -> Range:
    if mode is Mode.SKIP:
        return Range(lower, upper, mode)
    if mode is Mode.FINGERPRINT:
        fingerprint = reader.take(FINGERPRINT_SIZE, f"{field}.fingerprint", "a fingerprint")
        return Range(lower, upper, mode, fingerprint=fingerprint)
    if mode is Mode.ID_LIST:
        count = reader.take(1, f"{field}.count", "the id count")[0]
        if count > MAX_ID_LIST:
            raise WireError(f"{field}.count", f"is {count}, more than the {MAX_ID_LIST} ids an id list may hold")
        ids = _read_ids(reader, count, lower, upper, field)
        return Range(lower, upper, mode, ids=ids)

    count = int.from_bytes(reader.take(2, f"{field}.count", "the id count"), "big")
    if count * ID_SIZE > reader.remaining():
        raise WireError(f"{field}.count", f"is {count}, but only {reader.remaining()} bytes remain")
    ids = _read_ids(reader, count, lower, upper, field)
    bitmap_size = reader.take(1, f"{field}.bitmap", "the bitmap length")[0]
    if bitmap_size > _MAX_BITMAP_BYTES:
        raise WireError(f"{field}.bitmap", f"length is {bitmap_size}, more than {_MAX_BITMAP_BYTES}")
    bitmap = reader.take(bitmap_size, f"{field}.bitmap", "the bitmap")
    return Range(lower, upper, mode, ids=ids, bitmap=bitmap)


def _read_ids(reader: _Reader, count: int, lower: bytes, upper: bytes, field: str) -> tuple[bytes, ...]:
    ids: list[bytes] = []
    previous = b""
    for index in range(count):
        item = reader.take(ID_SIZE, f"{field}.ids[{index}]", "an id")
        if item < lower or item >= upper:
            raise WireError(f"{field}.ids[{index}]", f"{item.hex()} lies outside its range")
        if item <= previous:
            raise WireError(f"{field}.ids[{index}]", f"{item.hex()} is not above the previous id; ids must increase")
        ids.append(item)
        previous = item
    return tuple(ids)


# --- Fingerprints -----------------------------------------------------------


class _FingerprintIndex:
    """Prefix sums of keyed item hashes in sorted order, for O(log n) range fingerprints.

    The fingerprint of the ids at positions [start, stop) is

        BLAKE2b-128(key, person="pith-rec-fp", count as 8 bytes LE || S as 32 bytes LE)

    where S is the sum mod 2**256 of BLAKE2b-256(key, person="pith-rec-item", id)
    read as little-endian integers. S of a range is the difference of two
    prefix sums, which are kept as 32 bytes each, so a session costs 32 bytes
    per id on top of the storage.
    """

    __slots__ = ("_key", "_prefix")

    def __init__(self, storage: Storage, key: bytes) -> None:
        self._key = key
        count = len(storage)
        prefix = bytearray(ID_SIZE * (count + 1))
        item_hasher = hashlib.blake2b(digest_size=32, key=key, person=_ITEM_PERSON)
        from_bytes = int.from_bytes
        total = 0
        offset = ID_SIZE
        previous = b""
        for item in storage.ids_between(0, count):
            if type(item) is not bytes or len(item) != ID_SIZE or item <= previous:
                raise UsageError(f"storage must hold ascending {ID_SIZE}-byte ids without duplicates")
            hasher = item_hasher.copy()
            hasher.update(item)
            total = (total + from_bytes(hasher.digest(), "little")) & _SUM_MASK
            prefix[offset : offset + ID_SIZE] = total.to_bytes(ID_SIZE, "little")
            offset += ID_SIZE
            previous = item
        self._prefix = prefix

    def _sum_before(self, index: int) -> int:
        offset = ID_SIZE * index
        return int.from_bytes(self._prefix[offset : offset + ID_SIZE], "little")

    def fingerprint(self, start: int, stop: int) -> bytes:
        total = (self._sum_before(stop) - self._sum_before(start)) & _SUM_MASK
        data = (stop - start).to_bytes(8, "little") + total.to_bytes(ID_SIZE, "little")
        return hashlib.blake2b(data, digest_size=FINGERPRINT_SIZE, key=self._key, person=_FINGERPRINT_PERSON).digest()


# --- The session ------------------------------------------------------------


class SessionState(enum.Enum):
    """State of a reconciliation session, changed only by the table in the module docstring."""

    NEW = "new"
    AWAITING_REPLY = "awaiting_reply"
    DONE = "done"
    FAILED = "failed"


class _Event(enum.Enum):
    SENT_OPEN = "sent_open"
    SENT_FINAL = "sent_final"
    RECEIVED_FINAL = "received_final"
    PEER_ERROR = "peer_error"


_TRANSITIONS: dict[tuple[SessionState, _Event], SessionState] = {
    (SessionState.NEW, _Event.SENT_OPEN): SessionState.AWAITING_REPLY,
    (SessionState.NEW, _Event.SENT_FINAL): SessionState.DONE,
    (SessionState.NEW, _Event.PEER_ERROR): SessionState.FAILED,
    (SessionState.AWAITING_REPLY, _Event.SENT_OPEN): SessionState.AWAITING_REPLY,
    (SessionState.AWAITING_REPLY, _Event.SENT_FINAL): SessionState.DONE,
    (SessionState.AWAITING_REPLY, _Event.RECEIVED_FINAL): SessionState.DONE,
    (SessionState.AWAITING_REPLY, _Event.PEER_ERROR): SessionState.FAILED,
}


class _Reply:
    """A message under construction that stays within ``limit`` bytes."""

    __slots__ = ("limit", "ranges", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ranges: list[Range] = []
        self.size = 1

    def fits(self, extra: int) -> bool:
        return self.size + extra <= self.limit

    def add(self, item: Range) -> None:
        if item.mode is Mode.SKIP and self.ranges and self.ranges[-1].mode is Mode.SKIP:
            merged = self.ranges.pop()
            self.size -= _range_size(merged)
            item = Range(merged.lower, item.upper, Mode.SKIP)
        self.ranges.append(item)
        self.size += _range_size(item)


class Reconciler:
    """One reconciliation session over a storage snapshot.

    The side that calls ``initiate()`` first is the initiator; the other side
    starts with ``receive()``. Both sides learn ``have_ids`` and
    ``need_ids``. They grow while the session runs, so the node may start
    fetching before it ends, and they are complete once ``state`` is DONE.

    Args:
        storage: the ids of this side; it must not change during the session.
        session_key: 32 bytes that both sides share and that no third party
            could predict before the session (the node derives it from both
            handshake nonces).
        frame_budget: the largest payload this side sends, from
            MIN_FRAME_BUDGET to MAX_MESSAGE_BYTES. Differences that do not
            fit are carried over to later round trips.
        max_peer_ids: the maximum number of ids the peer may report that
            this side lacks. It also sizes the round limit (``round_limit``).
        need_limit: when set, this side ends the session with a final
            message as soon as it has learned at least this many ids it
            lacks (``stopped_early`` is then true), so that it can fetch
            them before it reconciles the rest in a later session. One
            message can overshoot the limit by what fits in a frame.

    Raises:
        UsageError: a wrong key size, a budget out of range, or a storage
            that is not ascending.
    """

    def __init__(
        self,
        storage: Storage,
        session_key: bytes,
        *,
        frame_budget: int = DEFAULT_FRAME_BUDGET,
        max_peer_ids: int = DEFAULT_MAX_PEER_IDS,
        need_limit: int | None = None,
    ) -> None:
        if type(session_key) is not bytes or len(session_key) != SESSION_KEY_SIZE:
            raise UsageError(f"session_key must be {SESSION_KEY_SIZE} bytes")
        if not MIN_FRAME_BUDGET <= frame_budget <= MAX_MESSAGE_BYTES:
            raise UsageError(f"frame_budget must be {MIN_FRAME_BUDGET} to {MAX_MESSAGE_BYTES} bytes, got {frame_budget}")
        if max_peer_ids < 0:
            raise UsageError(f"max_peer_ids must not be negative, got {max_peer_ids}")
        if need_limit is not None and need_limit < 1:
            raise UsageError(f"need_limit must be at least 1, got {need_limit}")

        self._storage = storage
        self._count = len(storage)
        self._fingerprints = _FingerprintIndex(storage, session_key)
        self._frame_budget = frame_budget
        # Part of every budget is kept back for the continuation that covers
        # the ranges a full message had no room to reply to.
        self._reserve = max(frame_budget // 8, _MIN_CONTINUATION_RESERVE)
        self._max_peer_ids = max_peer_ids
        self._need_limit = need_limit
        self._stopped_early = False
        self._max_rounds = round_limit(self._count, frame_budget, max_peer_ids)

        self._state = SessionState.NEW
        self._initiator = False
        self._have: set[bytes] = set()
        self._need: set[bytes] = set()
        # (lower, upper) of every id list in our last message, ordered by
        # lower bound: the only ranges a RESOLVED range from the peer may cover.
        self._sent_id_lists: list[tuple[bytes, bytes]] = []
        self._messages_sent = 0
        self._messages_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0

    # --- Public surface ---

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def done(self) -> bool:
        """True once the session ended normally and no more messages are expected."""
        return self._state is SessionState.DONE

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def have_ids(self) -> frozenset[bytes]:
        """Ids this side has and the peer lacks."""
        return frozenset(self._have)

    @property
    def need_ids(self) -> frozenset[bytes]:
        """Ids the peer has and this side lacks."""
        return frozenset(self._need)

    @property
    def stopped_early(self) -> bool:
        """True when this side ended the session at ``need_limit``, before every range was reconciled."""
        return self._stopped_early

    @property
    def max_rounds(self) -> int:
        """The maximum number of messages this side accepts from the peer before it fails the session."""
        return self._max_rounds

    @property
    def messages_sent(self) -> int:
        return self._messages_sent

    @property
    def messages_received(self) -> int:
        return self._messages_received

    @property
    def bytes_sent(self) -> int:
        return self._bytes_sent

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    def initiate(self) -> bytes:
        """Return the first message of the session, which makes this side the initiator.

        Raises:
            UsageError: the session has already sent or received a message.
        """
        if self._state is not SessionState.NEW:
            raise UsageError(f"initiate() is only allowed in state new, not {self._state.value}")
        self._initiator = True
        reply = _Reply(self._frame_budget)
        for item in self._describe(_ZERO_BOUND, _INFINITY, BRANCH_FACTOR):
            reply.add(item)
        return self._send(reply.ranges)

    def receive(self, payload: bytes) -> bytes | None:
        """Process one message from the peer and return the reply, or None when no reply is due.

        None means the peer's message was final and the session is DONE. When
        the returned reply is itself final, ``done`` is already true, so send
        it and expect nothing back.

        Raises:
            WireError: the payload is invalid, contradicts this side's
                storage or last message, or exceeds the round limit. The
                session is then FAILED; have_ids and need_ids keep only what
                earlier messages established.
            UsageError: the session is DONE or FAILED.
        """
        if self._state not in (SessionState.NEW, SessionState.AWAITING_REPLY):
            raise UsageError(f"receive() is not allowed in state {self._state.value}")
        try:
            return self._handle(payload)
        except WireError:
            self._advance(_Event.PEER_ERROR)
            raise

    # --- State ---

    def _advance(self, event: _Event) -> None:
        next_state = _TRANSITIONS.get((self._state, event))
        if next_state is None:
            raise UsageError(f"event {event.value} is not allowed in state {self._state.value}")
        self._state = next_state

    def _send(self, ranges: list[Range]) -> bytes:
        payload = encode_message(ranges)
        self._messages_sent += 1
        self._bytes_sent += len(payload)
        self._sent_id_lists = [(item.lower, item.upper) for item in ranges if item.mode is Mode.ID_LIST]
        opens = any(item.mode in _OPENING_MODES for item in ranges)
        self._advance(_Event.SENT_OPEN if opens else _Event.SENT_FINAL)
        return payload

    # --- Message handling ---

    def _handle(self, payload: bytes) -> bytes | None:
        ranges = decode_message(payload)
        self._messages_received += 1
        self._bytes_received += len(payload)
        if self._messages_received > self._max_rounds:
            raise WireError("payload", f"is message {self._messages_received}, over the session's round limit of {self._max_rounds}")
        opens = any(item.mode in _OPENING_MODES for item in ranges)
        if not opens and self._state is SessionState.NEW:
            raise WireError("payload", "is the first message of a session but opens no range")

        # New ids are collected apart and merged only once the whole message
        # passed every check, so a rejected message teaches nothing.
        have: set[bytes] = set()
        need: set[bytes] = set()
        for index, item in enumerate(ranges):
            if item.mode is Mode.RESOLVED:
                self._read_resolved(item, f"payload.ranges[{index}]", have, need)
        reply = self._build_reply(ranges, have, need) if opens else None
        if len(self._need) + len(need - self._need) > self._max_peer_ids:
            raise WireError("payload", f"reports more than max_peer_ids={self._max_peer_ids} ids that this side lacks")
        self._have |= have
        self._need |= need

        if reply is None:
            self._advance(_Event.RECEIVED_FINAL)
            return None
        if self._need_limit is not None and len(self._need) >= self._need_limit:
            # A final message: one skip over the whole id space.
            self._stopped_early = True
            reply = [Range(_ZERO_BOUND, _INFINITY, Mode.SKIP)]
        return self._send(reply)

    def _build_reply(self, ranges: list[Range], have: set[bytes], need: set[bytes]) -> list[Range]:
        """Return the ranges of the reply to a message, within the frame budget.

        The peer's ranges are processed in order until the reply to the next
        one would not fit. From that bound on, the reply covers the rest of
        the id space with a continuation: our own fingerprints of it, cut
        finer than usual, which the peer processes in the next round trip.
        """
        reply = _Reply(self._frame_budget - self._reserve)
        cut: bytes | None = None
        for item in ranges:
            if item.mode is Mode.SKIP or item.mode is Mode.RESOLVED:
                response = [Range(item.lower, item.upper, Mode.SKIP)]
            elif item.mode is Mode.FINGERPRINT:
                response = self._respond_to_fingerprint(item)
            else:
                response, cut = self._respond_to_id_list(item, reply, have, need)
                if cut is not None:
                    # A truncated RESOLVED range that ends at the cut and was
                    # sized to fit.
                    for part in response:
                        reply.add(part)
                    break
            if reply.fits(sum(_range_size(part) for part in response)):
                for part in response:
                    reply.add(part)
            else:
                cut = item.lower
            if cut is not None:
                break

        if cut is not None:
            fanout = (self._reserve - _MAX_BOUND_BYTES) // _MAX_FINGERPRINT_RANGE
            for part in self._describe(cut, _INFINITY, fanout):
                reply.add(part)
        return reply.ranges

    def _index(self, bound: bytes) -> int:
        if bound == _INFINITY:
            return self._count
        return self._storage.bisect_left(bound)

    def _describe(self, lower: bytes, upper: bytes, fanout: int) -> list[Range]:
        """Return ranges that open [lower, upper): our id list, or up to ``fanout`` fingerprints."""
        start = self._index(lower)
        stop = self._index(upper)
        count = stop - start
        if count <= MAX_ID_LIST:
            return [Range(lower, upper, Mode.ID_LIST, ids=tuple(self._storage.ids_between(start, stop)))]

        parts = min(fanout, count)
        ranges: list[Range] = []
        part_lower, part_start = lower, start
        for part in range(1, parts):
            boundary = start + part * count // parts
            bound = _bound_between(self._storage.id_at(boundary - 1), self._storage.id_at(boundary))
            fingerprint = self._fingerprints.fingerprint(part_start, boundary)
            ranges.append(Range(part_lower, bound, Mode.FINGERPRINT, fingerprint=fingerprint))
            part_lower, part_start = bound, boundary
        fingerprint = self._fingerprints.fingerprint(part_start, stop)
        ranges.append(Range(part_lower, upper, Mode.FINGERPRINT, fingerprint=fingerprint))
        return ranges

    def _respond_to_fingerprint(self, item: Range) -> list[Range]:
        start = self._index(item.lower)
        stop = self._index(item.upper)
        if self._fingerprints.fingerprint(start, stop) == item.fingerprint:
            return [Range(item.lower, item.upper, Mode.SKIP)]
        return self._describe(item.lower, item.upper, BRANCH_FACTOR)

    def _respond_to_id_list(
        self, item: Range, reply: _Reply, have: set[bytes], need: set[bytes]
    ) -> tuple[list[Range], bytes | None]:
        """Compare the peer's id list with ours and return what each side lacks, truncated to the space left.

        Returns the response ranges and, when they had to stop early, the
        bound where the continuation starts (None otherwise).
        """
        theirs = item.ids
        their_set = set(theirs)
        missing_here = [their_id for their_id in theirs if not self._holds(their_id)]

        # Only as many of our ids are read as can be sent, so a range that
        # contains a million of our ids costs one message's worth of work.
        capacity = max(0, (reply.limit - reply.size - _RESOLVED_OVERHEAD) // ID_SIZE)
        capacity = min(capacity, _MAX_RESOLVED_IDS)
        start = self._index(item.lower)
        stop = self._index(item.upper)
        window = self._storage.ids_between(start, min(stop, start + capacity + 1 + len(theirs)))
        missing_there: list[bytes] = []
        for our_id in window:
            if our_id not in their_set:
                missing_there.append(our_id)
                if len(missing_there) > capacity:
                    break

        if len(missing_there) <= capacity:
            if not missing_there and not missing_here:
                return [Range(item.lower, item.upper, Mode.SKIP)], None
            have.update(missing_there)
            need.update(missing_here)
            bitmap = _bitmap(theirs, missing_here)
            return [Range(item.lower, item.upper, Mode.RESOLVED, ids=tuple(missing_there), bitmap=bitmap)], None

        if capacity == 0:
            return [], item.lower
        sent = missing_there[:capacity]
        cut = _bound_between(sent[-1], missing_there[capacity])
        their_part = tuple(their_id for their_id in theirs if their_id < cut)
        missing_part = [their_id for their_id in missing_here if their_id < cut]
        have.update(sent)
        need.update(missing_part)
        bitmap = _bitmap(their_part, missing_part)
        return [Range(item.lower, cut, Mode.RESOLVED, ids=tuple(sent), bitmap=bitmap)], cut

    def _read_resolved(self, item: Range, field: str, have: set[bytes], need: set[bytes]) -> None:
        """Add the ids from the peer's RESOLVED range to ``have`` and ``need``."""
        position = bisect.bisect_left(self._sent_id_lists, (item.lower, b""))
        if position == len(self._sent_id_lists) or self._sent_id_lists[position][0] != item.lower:
            raise WireError(field, "is a RESOLVED range for an id list that our last message did not send")
        if item.upper > self._sent_id_lists[position][1]:
            raise WireError(f"{field}.upper_bound", "extends past the id list it resolves")

        for index, their_id in enumerate(item.ids):
            if self._holds(their_id):
                raise WireError(f"{field}.ids[{index}]", f"{their_id.hex()} is reported missing here, but this side has it")
        start = self._index(item.lower)
        stop = self._index(item.upper)
        ours = self._storage.ids_between(start, stop)
        if len(item.bitmap) != (len(ours) + 7) // 8:
            raise WireError(f"{field}.bitmap", f"is {len(item.bitmap)} bytes for {len(ours)} ids; expected {(len(ours) + 7) // 8}")
        marked = int.from_bytes(item.bitmap, "big")
        unused_bits = 8 * len(item.bitmap) - len(ours)
        if marked & ((1 << unused_bits) - 1):
            raise WireError(f"{field}.bitmap", "has bits set past the last id")
        for index, our_id in enumerate(ours):
            if marked >> (8 * len(item.bitmap) - 1 - index) & 1:
                have.add(our_id)
        need.update(item.ids)

    def _holds(self, item: bytes) -> bool:
        index = self._storage.bisect_left(item)
        return index < self._count and self._storage.id_at(index) == item


def _bitmap(ids: Sequence[bytes], marked: Sequence[bytes]) -> bytes:
    """Return one bit per id in ``ids``, most significant first, set for the ids in ``marked``."""
    marked_set = set(marked)
    value = 0
    for item in ids:
        value = value << 1 | (item in marked_set)
    size = (len(ids) + 7) // 8
    return (value << (8 * size - len(ids))).to_bytes(size, "big")
