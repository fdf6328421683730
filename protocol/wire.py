"""The peer wire protocol: messages, the handshake and the connection state machine.

A ``Connection`` is fed the bytes read from one TCP stream and returns
events; its ``send_*`` methods return the bytes to write. It does no I/O,
reads no clock and draws no random numbers: the node passes in the nonces.

Rules of the state machine:

* Each side of a connection has its own state. A side's state names what
  this connection awaits from that side next: ``AWAIT_HELLO``, then
  ``AWAIT_AUTH``, then ``READY``. A side that sent ``bye`` or ``error``, or
  whose stream ended at a frame boundary, is ``CLOSED``. A peer that broke
  the protocol, or whose stream ended inside a frame, is ``ERROR``.
* ``TRANSITIONS`` is the one table of what a side may send: for a side's
  state and a message type, it gives the states the other side must be in
  and the sender's next state. The same table checks the peer's messages
  and our own ``send_*`` calls. A pair missing from the table is a
  ``ProtocolViolation`` when the peer sends it and a ``UsageError`` when
  we try to.
* ``auth`` needs the other side's hello, because the signature covers both
  hellos. Session messages need both sides ``READY``: a peer may send them
  only after it has verified our auth, so it must not send one before ours
  went out.
* A bad frame, a message the table does not allow, or a failed handshake
  moves the peer to ``ERROR`` and yields one ``ProtocolViolation`` or
  ``HandshakeFailed``. Its ``code`` is the error code to send back with
  ``send_error``, which stays allowed until our side is closed.
* Once our side is ``CLOSED``, or the peer's side is ``CLOSED`` or
  ``ERROR``, ``receive_data`` ignores its input and returns no events.

docs/protocol.md, section "Wire protocol", specifies the frames, messages,
limits and handshake for implementers.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_bytes, field_path
from .errors import CanonicalJSONError, InvalidInput, UsageError, WireError, quote_value
from .frames import MAX_FRAME_BYTES, FrameReader, decode_payload, encode_frame, encode_payload
from .keys import SigningKey, decode_public_key_hex, decode_signature_b64, encode_signature_b64, verify_signature
from .trust import TrustConfig

__all__ = [
    "ERROR_CODES",
    "HANDSHAKE_DOMAIN",
    "MAX_ANNOUNCE_IDS",
    "MAX_ITEMS",
    "MAX_PEER_ADDRESSES",
    "MAX_REASON_CHARS",
    "MESSAGE_TYPES",
    "NONCE_BYTES",
    "PING_NONCE_BYTES",
    "PROTOCOL_NAME",
    "RECONCILE_KEY_DOMAIN",
    "TRANSITIONS",
    "Connection",
    "ConnectionEvent",
    "EventsAnnounced",
    "EventsRequested",
    "HandshakeFailed",
    "HelloReceived",
    "ItemsReceived",
    "MergeProfile",
    "PeerAuthenticated",
    "PeerClosed",
    "PeerError",
    "PeersReceived",
    "PingReceived",
    "PongReceived",
    "ProtocolViolation",
    "ReconcileReceived",
    "Role",
    "State",
    "Transition",
    "check_message",
    "decode_message",
    "encode_message",
    "handshake_digest",
    "item_id",
]

PROTOCOL_NAME = "pith-mirror/1"

# Prefix of the input from which both sides derive a reconciliation key.
RECONCILE_KEY_DOMAIN = b"pith-mirror-reconcile-key-v1\n"

# Prefix of the signed handshake transcript. The node key also signs events,
# over a digest that starts from ENVELOPE_DOMAIN instead, so an auth
# signature is never a valid event signature, nor the other way round.
HANDSHAKE_DOMAIN = b"pith-mirror-handshake-v1\n"

NONCE_BYTES = 32
PING_NONCE_BYTES = 8
ITEM_ID_BYTES = 32
SIGNATURE_BYTES = 64
MAX_ANNOUNCE_IDS = 1024
MAX_ITEMS = 256
MAX_PEER_ADDRESSES = 64
MAX_REASON_CHARS = 512
# Reconciliation sessions and rounds are counters, bounded so that every
# implementation can hold them in an unsigned 32-bit integer.
MAX_COUNTER = 2**32 - 1

# Error codes a node sends in an ``error`` message. A received code only
# needs the form of ``_ERROR_CODE``, so that a newer peer can add codes.
ERROR_CODES = (
    "auth_failed",
    "busy",
    "invalid_frame",
    "invalid_message",
    "profile_mismatch",
    "protocol_mismatch",
    "self_connection",
    "unexpected_message",
)

_ERROR_CODE = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z", re.ASCII)
_MERGE_VERSION = re.compile(r"\A[\x21-\x7e]{1,64}\Z", re.ASCII)
_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z", re.ASCII)
_PROTOCOL_NAME = re.compile(r"\A[\x21-\x7e]{1,64}\Z", re.ASCII)
# The HOST:PORT form of a mirror hint's gossip address: a DNS name or IPv4
# address, or an IPv6 address in brackets. Whether the node may dial it is
# the dial policy's decision.
_HOST_PORT = re.compile(r"\A(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})\Z", re.ASCII)


class Role(enum.Enum):
    """Role of this node on a connection: the side that opened it or the side that accepted it.

    The handshake is the same for both roles. The role is recorded for the
    caller, for example to keep one of two connections that two nodes opened
    to each other at once.
    """

    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    """The state of one side of a connection: what is awaited from that side next."""

    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True)
class Transition:
    """One allowed (state, message type) pair of ``TRANSITIONS``.

    Attributes:
        other_side: the states the other side must be in.
        next_state: the sender's state after the message.
    """

    other_side: frozenset[State]
    next_state: State


_OPEN = frozenset({State.AWAIT_HELLO, State.AWAIT_AUTH, State.READY})
_ANY = frozenset(State)
_HELLO_SENT = frozenset({State.AWAIT_AUTH, State.READY})
_READY = frozenset({State.READY})

SESSION_MESSAGE_TYPES = ("announce", "want", "items", "reconcile", "peers", "ping", "pong")

# (sender's state, message type) -> Transition. Every pair not listed is
# forbidden. Both sides follow the same table.
TRANSITIONS: dict[tuple[State, str], Transition] = {
    (State.AWAIT_HELLO, "hello"): Transition(_OPEN, State.AWAIT_AUTH),
    (State.AWAIT_HELLO, "error"): Transition(_ANY, State.CLOSED),
    (State.AWAIT_AUTH, "auth"): Transition(_HELLO_SENT, State.READY),
    (State.AWAIT_AUTH, "error"): Transition(_ANY, State.CLOSED),
    **{(State.READY, message_type): Transition(_READY, State.READY) for message_type in SESSION_MESSAGE_TYPES},
    (State.READY, "bye"): Transition(_ANY, State.CLOSED),
    (State.READY, "error"): Transition(_ANY, State.CLOSED),
}


@dataclass(frozen=True)
class MergeProfile:
    """The merge rules and trust configuration two nodes must share to compute the same state hashes.

    Attributes:
        merge_version: the merge rules, such as ``pith-open-graph-merge-v1``.
        trust_sha256: SHA-256 hex of the canonical JSON of the trust
            configuration.
    """

    merge_version: str
    trust_sha256: str

    @classmethod
    def from_trust(cls, trust: TrustConfig) -> MergeProfile:
        """Return the profile of this implementation's merge under ``trust``."""
        profile = trust.profile
        return cls(merge_version=profile["merge_version"], trust_sha256=profile["trust_sha256"])

    def describe(self) -> str:
        """Return the profile as one line of text for messages."""
        return f"{self.merge_version} with trust {self.trust_sha256}"


# --- events ------------------------------------------------------------------


@dataclass(frozen=True)
class HelloReceived:
    """The peer's hello passed every check; its auth is still to come."""

    node_key: bytes
    listen: str | None
    profile: MergeProfile


@dataclass(frozen=True)
class PeerAuthenticated:
    """The peer proved it has the private key of ``node_key``."""

    node_key: bytes


@dataclass(frozen=True)
class EventsAnnounced:
    """The peer has the items with these ids (raw SHA-256 of each item's canonical JSON)."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class EventsRequested:
    """The peer requests the items with these ids."""

    ids: tuple[bytes, ...]


@dataclass(frozen=True)
class ItemsReceived:
    """Items sent by the peer, each with its id; ``more`` is set when another items message follows."""

    items: tuple[dict[str, Any], ...]
    ids: tuple[bytes, ...]
    more: bool


@dataclass(frozen=True)
class ReconcileReceived:
    """One round of a set reconciliation session; ``payload`` is opaque to this layer."""

    session: int
    round: int
    payload: bytes


@dataclass(frozen=True)
class PeersReceived:
    """Gossip addresses (``HOST:PORT``) sent by the peer; no dial policy has checked them yet."""

    addresses: tuple[str, ...]


@dataclass(frozen=True)
class PingReceived:
    """The peer sent a ping; reply with ``send_pong(nonce)``."""

    nonce: bytes


@dataclass(frozen=True)
class PongReceived:
    """The peer replied to a ping."""

    nonce: bytes


@dataclass(frozen=True)
class PeerError:
    """The peer sent an error message and closed its side."""

    code: str
    reason: str


@dataclass(frozen=True)
class PeerClosed:
    """The peer sent bye or its stream ended; ``reason`` distinguishes the two and names a truncated frame."""

    reason: str


@dataclass(frozen=True)
class HandshakeFailed:
    """The peer's hello or auth was well-formed but not acceptable.

    Attributes:
        code: the error code to send back, such as ``profile_mismatch``.
        field: the hello or auth field that failed, such as ``profile``.
        reason: what failed.
    """

    code: str
    field: str
    reason: str


@dataclass(frozen=True)
class ProtocolViolation:
    """The peer sent an invalid frame or message, or a message its state does not allow.

    Attributes:
        code: ``invalid_frame``, ``invalid_message`` or ``unexpected_message``.
        field: path of the offending field, ``frame`` for the whole frame.
        reason: what failed.
    """

    code: str
    field: str
    reason: str


ConnectionEvent = (
    HelloReceived
    | PeerAuthenticated
    | EventsAnnounced
    | EventsRequested
    | ItemsReceived
    | ReconcileReceived
    | PeersReceived
    | PingReceived
    | PongReceived
    | PeerError
    | PeerClosed
    | HandshakeFailed
    | ProtocolViolation
)


# --- message schemas ---------------------------------------------------------

# A field check takes the value and its path, and raises WireError. The items
# check also returns the item ids, which it computes while checking.
_Check = Callable[[Any, str], Any]


def _type_name(value: Any) -> str:
    names = {str: "text", bytes: "bytes", bool: "boolean", int: "integer", list: "array", dict: "map"}
    return "nil" if value is None else names.get(type(value), type(value).__name__)


def _fixed_bytes(size: int) -> _Check:
    def check(value: Any, path: str) -> None:
        if type(value) is not bytes:
            raise WireError(path, f"must be {size} bytes (msgpack bin), got {_type_name(value)}")
        if len(value) != size:
            raise WireError(path, f"must be {size} bytes, got {len(value)}")

    return check


def _any_bytes(value: Any, path: str) -> None:
    if type(value) is not bytes:
        raise WireError(path, f"must be bytes (msgpack bin), got {_type_name(value)}")


def _text(value: Any, path: str) -> str:
    if type(value) is not str:
        raise WireError(path, f"must be text, got {_type_name(value)}")
    return value


def _pattern(pattern: re.Pattern[str], description: str) -> _Check:
    def check(value: Any, path: str) -> None:
        if pattern.match(_text(value, path)) is None:
            raise WireError(path, f"{quote_value(value)} is not {description}")

    return check


def _host_port(value: Any, path: str) -> None:
    match = _HOST_PORT.match(_text(value, path))
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        raise WireError(path, f"{quote_value(value)} is not HOST:PORT")


def _optional_host_port(value: Any, path: str) -> None:
    if value is not None:
        _host_port(value, path)


def _counter(value: Any, path: str) -> None:
    if type(value) is not int:
        raise WireError(path, f"must be an integer, got {_type_name(value)}")
    if not 0 <= value <= MAX_COUNTER:
        raise WireError(path, f"{value} is outside 0 to {MAX_COUNTER}")


def _boolean(value: Any, path: str) -> None:
    if type(value) is not bool:
        raise WireError(path, f"must be a boolean, got {_type_name(value)}")


def _reason(value: Any, path: str) -> None:
    if len(_text(value, path)) > MAX_REASON_CHARS:
        raise WireError(path, f"must be at most {MAX_REASON_CHARS} characters, got {len(value)}")
    # The reason ends up in logs, so it may not carry line breaks or
    # terminal escapes.
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in value):
        raise WireError(path, "must not contain control characters")


def _array(value: Any, path: str, min_count: int, max_count: int) -> list[Any]:
    if type(value) is not list:
        raise WireError(path, f"must be an array, got {_type_name(value)}")
    if not min_count <= len(value) <= max_count:
        raise WireError(path, f"must hold {min_count} to {max_count} entries, got {len(value)}")
    return value


def _ids(value: Any, path: str) -> None:
    ids = _array(value, path, 1, MAX_ANNOUNCE_IDS)
    check_id = _fixed_bytes(ITEM_ID_BYTES)
    seen: set[bytes] = set()
    for index, entry in enumerate(ids):
        entry_path = field_path(path, index)
        check_id(entry, entry_path)
        if entry in seen:
            raise WireError(entry_path, f"duplicate id {entry.hex()}")
        seen.add(entry)


def _addresses(value: Any, path: str) -> None:
    for index, entry in enumerate(_array(value, path, 0, MAX_PEER_ADDRESSES)):
        _host_port(entry, field_path(path, index))


_RECORD_ITEM_FIELDS = frozenset({"item_type", "canonical_record", "source_aliases"})


def _item(value: Any, path: str) -> bytes:
    """Check one item and return its id."""
    if type(value) is not dict:
        raise WireError(path, f"an item must be a map, got {_type_name(value)}")
    # A record entry is recognised by item_type; any other map is an event
    # in bundle form, which the event layer validates.
    if "item_type" in value:
        if value["item_type"] != "record":
            raise WireError(field_path(path, "item_type"), f"{quote_value(value['item_type'])} is not 'record'")
        for name in sorted(set(value) ^ _RECORD_ITEM_FIELDS):
            reason = "unknown field of a record item" if name in value else "missing"
            raise WireError(field_path(path, name), reason)
        if type(value["canonical_record"]) is not dict:
            raise WireError(field_path(path, "canonical_record"), "must be a map")
        if type(value["source_aliases"]) is not list:
            raise WireError(field_path(path, "source_aliases"), "must be an array")

    # canonical_bytes checks the value model, bytes included, so the check
    # and the id cost one walk over the item.
    try:
        encoded = canonical_bytes(value)
    except CanonicalJSONError as error:
        raise WireError(_join_path(path, error.field), error.reason) from None
    return hashlib.sha256(encoded).digest()


def _join_path(prefix: str, relative: str) -> str:
    if not relative:
        return prefix
    if relative.startswith("["):
        return prefix + relative
    return f"{prefix}.{relative}"


def _items(value: Any, path: str) -> list[bytes]:
    items = _array(value, path, 0, MAX_ITEMS)
    return [_item(entry, field_path(path, index)) for index, entry in enumerate(items)]


_PROFILE_FIELDS = {
    "merge_version": _pattern(_MERGE_VERSION, "1 to 64 printable ASCII characters"),
    "trust_sha256": _pattern(_SHA256_HEX, "64 lowercase hex characters"),
}


def _profile(value: Any, path: str) -> None:
    _check_fields(value, path, _PROFILE_FIELDS)


def _check_fields(
    value: Any, path: str, fields: dict[str, _Check], extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check a map with exactly ``fields`` (plus ``extra``); return what each check returned."""
    if type(value) is not dict:
        raise WireError(path, f"must be a map, got {_type_name(value)}")
    for name in value:
        if name not in fields and name not in extra:
            raise WireError(field_path(path, name), "unknown field")
    results = {}
    for name, check in fields.items():
        if name not in value:
            raise WireError(field_path(path, name), "missing")
        results[name] = check(value[name], field_path(path, name))
    return results


_SCHEMAS: dict[str, dict[str, _Check]] = {
    "hello": {
        "protocol": _pattern(_PROTOCOL_NAME, "1 to 64 printable ASCII characters"),
        "node_key": _fixed_bytes(32),
        "nonce": _fixed_bytes(NONCE_BYTES),
        "listen": _optional_host_port,
        "profile": _profile,
    },
    "auth": {"signature": _fixed_bytes(SIGNATURE_BYTES)},
    "announce": {"ids": _ids},
    "want": {"ids": _ids},
    "items": {"items": _items, "more": _boolean},
    "reconcile": {"session": _counter, "round": _counter, "payload": _any_bytes},
    "peers": {"addresses": _addresses},
    "ping": {"nonce": _fixed_bytes(PING_NONCE_BYTES)},
    "pong": {"nonce": _fixed_bytes(PING_NONCE_BYTES)},
    "error": {"code": _pattern(_ERROR_CODE, "an error code ([a-z][a-z0-9_]*, at most 64)"), "reason": _reason},
    "bye": {},
}

MESSAGE_TYPES = tuple(_SCHEMAS)
_TYPE_FIELD = frozenset({"type"})


def _message_type(value: Any) -> str:
    if type(value) is not dict:
        raise WireError("frame", f"a message must be a msgpack map, got {_type_name(value)}")
    if "type" not in value:
        raise WireError("type", "missing")
    message_type = value["type"]
    if type(message_type) is not str:
        raise WireError("type", f"must be text, got {_type_name(message_type)}")
    if message_type not in _SCHEMAS:
        raise WireError("type", f"unknown message type {quote_value(message_type)}")
    return message_type


def check_message(value: Any) -> dict[str, Any]:
    """Check a decoded value against the schema of its message type.

    Every message is a map with ``type`` and exactly the fields of its
    schema. Paths in errors are relative to the message map, as in
    ``decode_payload``, such as ``nonce`` or ``items[3].payload``.

    Returns:
        ``value``, unchanged.

    Raises:
        WireError: naming the first field that failed.
    """
    message_type = _message_type(value)
    _check_fields(value, "", _SCHEMAS[message_type], _TYPE_FIELD)
    return value


def decode_message(payload: bytes) -> dict[str, Any]:
    """Decode and check one frame payload.

    Raises:
        WireError: the payload is not a valid message.
    """
    return check_message(decode_payload(payload))


def encode_message(message: dict[str, Any]) -> bytes:
    """Return the frame payload of a message built by this node.

    Raises:
        UsageError: the message does not match its schema or is larger than
            a frame; both are bugs of the caller.
    """
    try:
        check_message(message)
    except WireError as error:
        raise UsageError(f"invalid outgoing message: {error}") from None
    payload = encode_payload(message)
    if len(payload) > MAX_FRAME_BYTES:
        raise UsageError(
            f"{message['type']} message of {len(payload)} bytes exceeds the frame limit of "
            f"{MAX_FRAME_BYTES} bytes; split it into smaller messages"
        )
    return payload


def item_id(item: dict[str, Any]) -> bytes:
    """Return the 32-byte id of an item: SHA-256 of its canonical JSON.

    Raises:
        CanonicalJSONError: ``item`` is outside the canonical value model.
    """
    return hashlib.sha256(canonical_bytes(item)).digest()


def handshake_digest(sender_hello: bytes, receiver_hello: bytes) -> bytes:
    """Return the SHA-256 digest that a side's auth signature signs.

    Args:
        sender_hello: the frame payload of the signing side's hello.
        receiver_hello: the frame payload of the other side's hello.

    Each payload is one complete msgpack value, so the concatenation splits
    into the two hellos in only one way.
    """
    return hashlib.sha256(HANDSHAKE_DOMAIN + sender_hello + receiver_hello).digest()


# --- the connection ----------------------------------------------------------


class Connection:
    """The protocol state of one peer connection: it turns received bytes into events and messages into bytes.

    Args:
        our_role: whether we opened the connection.
        signing_key: this node's key; its public key goes in our hello.
        profile: this node's merge profile, which the peer's must equal.

    Attributes:
        our_state, their_state: the ``State`` of each side.
        their_node_key: the peer's public key once its hello passed, else None.
        their_listen: the gossip address in the peer's hello, if any.
    """

    def __init__(self, our_role: Role, signing_key: SigningKey, profile: MergeProfile) -> None:
        self.our_role = our_role
        self.our_state = State.AWAIT_HELLO
        self.their_state = State.AWAIT_HELLO
        self.their_node_key: bytes | None = None
        self.their_listen: str | None = None
        self._signing_key = signing_key
        self._profile = profile
        self._reader = FrameReader()
        self._our_hello: bytes | None = None
        self._their_hello: bytes | None = None
        self._our_nonce: bytes | None = None
        self._their_nonce: bytes | None = None

    @property
    def ready(self) -> bool:
        """Whether both sides are authenticated and session messages may flow."""
        return self.our_state is State.READY and self.their_state is State.READY

    @property
    def closed(self) -> bool:
        """Whether the connection is over: the caller should close the stream."""
        return self.our_state is State.CLOSED or self.their_state in (State.CLOSED, State.ERROR)

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held, at most ``MAX_FRAME_BYTES`` + 4."""
        return self._reader.buffered

    def reconcile_key(self, session: int) -> bytes:
        """Return the 32-byte key of reconciliation session ``session`` on this connection.

        Both sides derive the same key: SHA-256 of ``RECONCILE_KEY_DOMAIN``,
        the initiator's hello nonce, the responder's hello nonce and the
        session number as 8 bytes big-endian. The nonces are fresh for each
        connection, so no one who created ids before the handshake knew the
        key. Anyone who read the hellos can compute it: it is not a secret.

        Raises:
            UsageError: the handshake is not complete, or ``session`` is
                outside 0 to 2**32 - 1.
        """
        if not self.ready:
            raise UsageError("the reconcile key needs a completed handshake")
        if type(session) is not int or not 0 <= session <= MAX_COUNTER:
            raise UsageError(f"session must be an integer from 0 to {MAX_COUNTER}")
        assert self._our_nonce is not None
        assert self._their_nonce is not None
        if self.our_role is Role.INITIATOR:
            nonces = self._our_nonce + self._their_nonce
        else:
            nonces = self._their_nonce + self._our_nonce
        return hashlib.sha256(RECONCILE_KEY_DOMAIN + nonces + session.to_bytes(8, "big")).digest()

    # --- receiving -------------------------------------------------------

    def receive_data(self, data: bytes) -> list[ConnectionEvent]:
        """Process bytes read from the stream; ``b""`` means the stream ended.

        Returns:
            The events of every frame completed by ``data``, in order. After
            a ``ProtocolViolation``, ``HandshakeFailed``, ``PeerError`` or
            ``PeerClosed`` the rest of ``data`` and every later call are
            ignored.

        Error handling: bad input from the peer never raises; it becomes an
        event, so that one misbehaving peer cannot crash the node.
        """
        if self.closed:
            return []
        if not data:
            return [self._end_of_stream()]

        self._reader.feed(data)
        events: list[ConnectionEvent] = []
        while not self.closed:
            try:
                payload = self._reader.next_frame()
            except WireError as error:
                events.append(self._violation("invalid_frame", error))
                break
            if payload is None:
                break
            events.append(self._receive_payload(payload))
        if self.closed:
            self._reader.discard()
        return events

    def _end_of_stream(self) -> PeerClosed:
        if self._reader.at_frame_boundary:
            self.their_state = State.CLOSED
            event = PeerClosed("the peer closed the stream")
        else:
            self.their_state = State.ERROR
            event = PeerClosed(
                f"the peer closed the stream inside a frame (truncated frame, {self._reader.buffered} bytes)"
            )
        self._reader.discard()
        return event

    def _violation(self, code: str, error: InvalidInput) -> ProtocolViolation:
        self.their_state = State.ERROR
        return ProtocolViolation(code=code, field=error.field, reason=error.reason)

    def _handshake_failed(self, code: str, field: str, reason: str) -> HandshakeFailed:
        self.their_state = State.ERROR
        return HandshakeFailed(code=code, field=field, reason=reason)

    def _receive_payload(self, payload: bytes) -> ConnectionEvent:
        try:
            value = decode_payload(payload)
        except WireError as error:
            return self._violation("invalid_frame", error)
        try:
            message_type = _message_type(value)
        except WireError as error:
            return self._violation("invalid_message", error)

        transition = TRANSITIONS.get((self.their_state, message_type))
        if transition is None or self.our_state not in transition.other_side:
            return self._violation(
                "unexpected_message",
                WireError(
                    "type",
                    f"message {message_type!r} is not allowed while the peer is in "
                    f"{self.their_state.name} and we are in {self.our_state.name}",
                ),
            )

        # The protocol name is compared before the rest of the hello, so a
        # later protocol version may change the other hello fields and still
        # get a clean protocol_mismatch.
        if message_type == "hello":
            protocol = value.get("protocol")
            if type(protocol) is str and protocol != PROTOCOL_NAME:
                return self._handshake_failed(
                    "protocol_mismatch",
                    "protocol",
                    f"the peer speaks {quote_value(protocol)}, we speak {PROTOCOL_NAME!r}",
                )

        try:
            checked = _check_fields(value, "", _SCHEMAS[message_type], _TYPE_FIELD)
        except WireError as error:
            return self._violation("invalid_message", error)

        handler = getattr(self, f"_on_{message_type}")
        event: ConnectionEvent = handler(value, payload, checked)
        if self.their_state is not State.ERROR:
            self.their_state = transition.next_state
        return event

    def _on_hello(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        node_key = message["node_key"]
        try:
            decode_public_key_hex(node_key.hex(), "node_key")
        except InvalidInput as error:
            return self._handshake_failed("auth_failed", error.field, error.reason)
        if node_key == self._signing_key.public_key:
            return self._handshake_failed(
                "self_connection", "node_key", "the peer's node key is our own: this node dialled itself"
            )
        if message["nonce"] == self._our_nonce:
            # Only a peer that echoes our hello back sends our nonce.
            return self._handshake_failed("auth_failed", "nonce", "the peer's nonce equals ours (reflected hello)")

        theirs = MergeProfile(**message["profile"])
        if theirs != self._profile:
            return self._handshake_failed(
                "profile_mismatch",
                "profile",
                f"merge profiles differ: ours is {self._profile.describe()}, the peer's is {theirs.describe()}",
            )

        self.their_node_key = node_key
        self.their_listen = message["listen"]
        self._their_nonce = message["nonce"]
        self._their_hello = payload
        return HelloReceived(node_key=node_key, listen=message["listen"], profile=theirs)

    def _on_auth(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        # The table lets auth in only after both hellos, so both are set.
        assert self.their_node_key is not None
        assert self._their_hello is not None
        assert self._our_hello is not None
        signature = message["signature"]
        try:
            # The same rule as for event signatures: S must be below the
            # group order, so that no second encoding of a signature verifies.
            decode_signature_b64(encode_signature_b64(signature), "signature")
            verify_signature(
                self.their_node_key,
                signature,
                handshake_digest(self._their_hello, self._our_hello),
                "signature",
            )
        except InvalidInput as error:
            return self._handshake_failed("auth_failed", error.field, error.reason)
        return PeerAuthenticated(node_key=self.their_node_key)

    def _on_announce(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return EventsAnnounced(ids=tuple(message["ids"]))

    def _on_want(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return EventsRequested(ids=tuple(message["ids"]))

    def _on_items(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return ItemsReceived(items=tuple(message["items"]), ids=tuple(checked["items"]), more=message["more"])

    def _on_reconcile(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return ReconcileReceived(session=message["session"], round=message["round"], payload=message["payload"])

    def _on_peers(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return PeersReceived(addresses=tuple(message["addresses"]))

    def _on_ping(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return PingReceived(nonce=message["nonce"])

    def _on_pong(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return PongReceived(nonce=message["nonce"])

    def _on_error(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return PeerError(code=message["code"], reason=message["reason"])

    def _on_bye(self, message: dict[str, Any], payload: bytes, checked: dict[str, Any]) -> ConnectionEvent:
        return PeerClosed("the peer sent bye")

    # --- sending ---------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> tuple[bytes, bytes]:
        """Check the table, encode, and advance our state; return the frame and its payload."""
        message_type = message["type"]
        transition = TRANSITIONS.get((self.our_state, message_type))
        if transition is None or self.their_state not in transition.other_side:
            raise UsageError(
                f"cannot send {message_type!r} while we are in {self.our_state.name} "
                f"and the peer is in {self.their_state.name}"
            )
        payload = encode_message(message)
        self.our_state = transition.next_state
        if self.our_state is State.CLOSED:
            self._reader.discard()
        return encode_frame(payload), payload

    def send_hello(self, nonce: bytes, listen: str | None = None) -> bytes:
        """Return our hello frame.

        Args:
            nonce: 32 fresh random bytes from the operating system. The peer's
                auth signs this nonce, so a reused nonce lets an old auth be
                replayed.
            listen: our gossip address as ``HOST:PORT``, or None.

        Raises:
            UsageError: not allowed in this state, or invalid arguments.
        """
        if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
            raise UsageError(f"nonce must be {NONCE_BYTES} bytes")
        if nonce == self._their_nonce:
            raise UsageError("nonce equals the peer's nonce; pass fresh random bytes")
        frame, payload = self._send(
            {
                "type": "hello",
                "protocol": PROTOCOL_NAME,
                "node_key": self._signing_key.public_key,
                "nonce": nonce,
                "listen": listen,
                "profile": {
                    "merge_version": self._profile.merge_version,
                    "trust_sha256": self._profile.trust_sha256,
                },
            }
        )
        self._our_hello = payload
        self._our_nonce = nonce
        return frame

    def send_auth(self) -> bytes:
        """Return our auth frame, which signs both hellos with our node key.

        Raises:
            UsageError: our hello is not sent or the peer's hello has not
                passed.
        """
        if self._our_hello is None or self._their_hello is None:
            raise UsageError(
                f"cannot send 'auth' while we are in {self.our_state.name} "
                f"and the peer is in {self.their_state.name}"
            )
        digest = handshake_digest(self._our_hello, self._their_hello)
        frame, _ = self._send({"type": "auth", "signature": self._signing_key.sign(digest)})
        return frame

    def send_announce(self, ids: Sequence[bytes]) -> bytes:
        """Return an announce frame for 1 to ``MAX_ANNOUNCE_IDS`` distinct 32-byte item ids."""
        return self._send({"type": "announce", "ids": list(ids)})[0]

    def send_want(self, ids: Sequence[bytes]) -> bytes:
        """Return a want frame requesting 1 to ``MAX_ANNOUNCE_IDS`` distinct item ids."""
        return self._send({"type": "want", "ids": list(ids)})[0]

    def send_items(self, items: Sequence[dict[str, Any]], more: bool) -> bytes:
        """Return an items frame with up to ``MAX_ITEMS`` items.

        Raises:
            UsageError: an item is outside the canonical value model, or the
                frame would exceed ``MAX_FRAME_BYTES``; send fewer items.
        """
        return self._send({"type": "items", "items": list(items), "more": more})[0]

    def send_reconcile(self, session: int, round: int, payload: bytes) -> bytes:
        """Return a reconcile frame carrying one round of a reconciliation session."""
        return self._send({"type": "reconcile", "session": session, "round": round, "payload": payload})[0]

    def send_peers(self, addresses: Sequence[str]) -> bytes:
        """Return a peers frame with up to ``MAX_PEER_ADDRESSES`` ``HOST:PORT`` addresses."""
        return self._send({"type": "peers", "addresses": list(addresses)})[0]

    def send_ping(self, nonce: bytes) -> bytes:
        """Return a ping frame; ``nonce`` is 8 bytes the pong must echo."""
        return self._send({"type": "ping", "nonce": nonce})[0]

    def send_pong(self, nonce: bytes) -> bytes:
        """Return a pong frame echoing the nonce of a ping."""
        return self._send({"type": "pong", "nonce": nonce})[0]

    def send_error(self, code: str, reason: str) -> bytes:
        """Return an error frame and close our side.

        Allowed in every state until our side is closed, also after the peer
        broke the protocol. A reason longer than ``MAX_REASON_CHARS`` is cut.

        Raises:
            UsageError: ``code`` is not one of ``ERROR_CODES``, or our side is
                closed.
        """
        if code not in ERROR_CODES:
            raise UsageError(f"unknown error code {code!r}; use one of {', '.join(ERROR_CODES)}")
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        return self._send({"type": "error", "code": code, "reason": reason})[0]

    def send_bye(self) -> bytes:
        """Return a bye frame and close our side; the caller then closes the stream."""
        return self._send({"type": "bye"})[0]
