"""The peer wire protocol: messages, handshake and the connection state machine, with no sockets.

Two ``Connection`` objects are joined in memory: the bytes one side's
``send_*`` returns are fed to the other's ``receive_data``. Hostile input
comes from the vector files in tests/data/cases/.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.canonical import canonical_bytes
from protocol.errors import UsageError, WireError
from protocol.frames import MAX_FRAME_BYTES, encode_frame
from protocol.keys import SigningKey, verify_signature
from protocol.trust import MERGE_VERSION, default_trust
from protocol.wire import (
    ERROR_CODES,
    MAX_ANNOUNCE_IDS,
    MAX_ITEMS,
    MAX_PEER_ADDRESSES,
    MAX_REASON_CHARS,
    MESSAGE_TYPES,
    PROTOCOL_NAME,
    TRANSITIONS,
    Connection,
    EventsAnnounced,
    EventsRequested,
    HandshakeFailed,
    HelloReceived,
    ItemsReceived,
    MergeProfile,
    PeerAuthenticated,
    PeerClosed,
    PeerError,
    PeersReceived,
    PingReceived,
    PongReceived,
    ProtocolViolation,
    ReconcileReceived,
    Role,
    State,
    decode_message,
    encode_message,
    handshake_digest,
    item_id,
)

from conftest import load_case
from helpers import RECORD_LINE_SUBJECT, key, published_input, record_line
from test_frames import framed_chunks

PROFILE = MergeProfile.from_trust(default_trust())
INITIATOR_KEY = key("wire-initiator")
RESPONDER_KEY = key("wire-responder")
INITIATOR_NONCE = bytes(range(32))
RESPONDER_NONCE = bytes(range(32, 64))
ID_A = hashlib.sha256(b"a").digest()
ID_B = hashlib.sha256(b"b").digest()
# The identity point of Ed25519: every "signature" (identity, S = 0) verifies for it.
IDENTITY_POINT = bytes.fromhex("01" + "00" * 31)

EVENT_TYPES = (
    HelloReceived,
    PeerAuthenticated,
    EventsAnnounced,
    EventsRequested,
    ItemsReceived,
    ReconcileReceived,
    PeersReceived,
    PingReceived,
    PongReceived,
    PeerError,
    PeerClosed,
    HandshakeFailed,
    ProtocolViolation,
)
TERMINAL_EVENTS = (PeerError, PeerClosed, HandshakeFailed, ProtocolViolation)


def new_pair(profile: MergeProfile = PROFILE) -> tuple[Connection, Connection]:
    return (
        Connection(Role.INITIATOR, INITIATOR_KEY, PROFILE),
        Connection(Role.RESPONDER, RESPONDER_KEY, profile),
    )


def handshake(initiator: Connection, responder: Connection) -> list[list[Any]]:
    """Run the handshake in its usual order and return the events of each step."""
    return [
        responder.receive_data(initiator.send_hello(INITIATOR_NONCE, "127.0.0.1:4000")),
        initiator.receive_data(responder.send_hello(RESPONDER_NONCE)),
        responder.receive_data(initiator.send_auth()),
        initiator.receive_data(responder.send_auth()),
    ]


def ready_pair() -> tuple[Connection, Connection]:
    initiator, responder = new_pair()
    handshake(initiator, responder)
    return initiator, responder


def hello_payload(
    node_key: bytes,
    nonce: bytes,
    profile: MergeProfile = PROFILE,
    protocol: str = PROTOCOL_NAME,
) -> bytes:
    return encode_message(
        {
            "type": "hello",
            "protocol": protocol,
            "node_key": node_key,
            "nonce": nonce,
            "listen": None,
            "profile": {"merge_version": profile.merge_version, "trust_sha256": profile.trust_sha256},
        }
    )


def raw_frame(message: Any) -> bytes:
    """Return a frame for a message that need not match its schema."""
    return encode_frame(msgpack.packb(message, use_bin_type=True))


def items_message_parts() -> tuple[bytes, bytes]:
    """Return the msgpack bytes before and after the one item of an items message."""
    before = b"\x83" + msgpack.packb("type") + msgpack.packb("items") + msgpack.packb("items") + b"\x91"
    after = msgpack.packb("more") + msgpack.packb(False)
    return before, after


def as_item_frame(value_bytes: bytes) -> bytes:
    """Return an items frame whose one item is the given msgpack bytes, unchanged."""
    before, after = items_message_parts()
    return encode_frame(before + value_bytes + after)


# --- handshake ---------------------------------------------------------------


def test_handshake_completes() -> None:
    initiator, responder = new_pair()
    steps = handshake(initiator, responder)
    assert steps[0] == [
        HelloReceived(node_key=INITIATOR_KEY.public_key, listen="127.0.0.1:4000", profile=PROFILE)
    ]
    assert steps[1] == [HelloReceived(node_key=RESPONDER_KEY.public_key, listen=None, profile=PROFILE)]
    assert steps[2] == [PeerAuthenticated(node_key=INITIATOR_KEY.public_key)]
    assert steps[3] == [PeerAuthenticated(node_key=RESPONDER_KEY.public_key)]
    assert initiator.ready
    assert responder.ready


def test_handshake_records_peer() -> None:
    initiator, responder = ready_pair()
    assert responder.their_node_key == INITIATOR_KEY.public_key
    assert responder.their_listen == "127.0.0.1:4000"
    assert initiator.their_listen is None
    assert initiator.our_role is Role.INITIATOR


def test_hellos_may_cross() -> None:
    # Both sides send hello before reading the other's; auth follows.
    initiator, responder = new_pair()
    hello_i = initiator.send_hello(INITIATOR_NONCE)
    hello_r = responder.send_hello(RESPONDER_NONCE)
    assert len(responder.receive_data(hello_i)) == 1
    assert len(initiator.receive_data(hello_r)) == 1
    auth_i = initiator.send_auth()
    auth_r = responder.send_auth()
    assert responder.receive_data(auth_i) == [PeerAuthenticated(node_key=INITIATOR_KEY.public_key)]
    assert initiator.receive_data(auth_r) == [PeerAuthenticated(node_key=RESPONDER_KEY.public_key)]


def test_handshake_transcript_vector() -> None:
    # Fixed keys, nonces and profile, so a second implementation can check
    # its bytes against these.
    profile = MergeProfile(merge_version="pith-open-graph-merge-v1", trust_sha256="ab" * 32)
    initiator = Connection(Role.INITIATOR, SigningKey.from_label("wire-vector-initiator"), profile)
    responder = Connection(Role.RESPONDER, SigningKey.from_label("wire-vector-responder"), profile)
    hello_i = initiator.send_hello(INITIATOR_NONCE, "127.0.0.1:4000")
    responder.receive_data(hello_i)
    hello_r = responder.send_hello(RESPONDER_NONCE)
    initiator.receive_data(hello_r)
    auth_i = initiator.send_auth()

    assert hello_i[:4] == (len(hello_i) - 4).to_bytes(4, "big")
    assert decode_message(hello_i[4:])["node_key"] == SigningKey.from_label("wire-vector-initiator").public_key
    assert hashlib.sha256(hello_i).hexdigest() == HELLO_VECTOR_SHA256
    digest = handshake_digest(hello_i[4:], hello_r[4:])
    assert digest.hex() == TRANSCRIPT_VECTOR_SHA256
    assert hashlib.sha256(b"pith-mirror-handshake-v1\n" + hello_i[4:] + hello_r[4:]).digest() == digest
    signature = decode_message(auth_i[4:])["signature"]
    verify_signature(SigningKey.from_label("wire-vector-initiator").public_key, signature, digest, "auth")
    assert signature.hex() == AUTH_VECTOR_SIGNATURE


HELLO_VECTOR_SHA256 = "45a59e6a4c25739e452f9cf6f86349ff9846dde1e64bbbcd97037b38f8f3bcd2"
TRANSCRIPT_VECTOR_SHA256 = "8e8e1d45d2e56564ae596f38a64f56d698e7d28bf21d9b4cab6c2e6db47b4b5a"
AUTH_VECTOR_SIGNATURE = (
    "2cb3106bc5b389c57be1467099a8f6343c3a780ba62d47cc145bf7aa8176eeb8"
    "b80c940930a544ccc2c8631d1abdd64ac837d3d4f1f4c32e72d3ac4ca9dd0804"
)


def test_replayed_auth_fails() -> None:
    # A recorded session of the initiator is replayed to the responder in a
    # new session. The responder's new nonce is in the signed transcript.
    initiator, responder = new_pair()
    old_hello = initiator.send_hello(INITIATOR_NONCE)
    responder.receive_data(old_hello)
    initiator.receive_data(responder.send_hello(RESPONDER_NONCE))
    old_auth = initiator.send_auth()

    _, fresh = new_pair()
    assert len(fresh.receive_data(old_hello)) == 1
    fresh.send_hello(bytes(range(100, 132)))
    events = fresh.receive_data(old_auth)
    assert events == [
        HandshakeFailed(code="auth_failed", field="signature", reason="Ed25519 signature does not verify")
    ]
    assert fresh.their_state is State.ERROR


def test_auth_by_other_key_fails() -> None:
    # The hello claims the initiator's key, the auth is signed by another.
    _, responder = new_pair()
    claimed = hello_payload(INITIATOR_KEY.public_key, INITIATOR_NONCE)
    responder.receive_data(encode_frame(claimed))
    responder_hello = responder.send_hello(RESPONDER_NONCE)[4:]
    forged = key("wire-forger").sign(handshake_digest(claimed, responder_hello))
    events = responder.receive_data(encode_frame(encode_message({"type": "auth", "signature": forged})))
    assert [type(event) for event in events] == [HandshakeFailed]
    assert events[0].code == "auth_failed"


def test_auth_over_swapped_hellos_fails() -> None:
    # Signing the hellos in the receiver's order gives another digest.
    _, responder = new_pair()
    claimed = hello_payload(INITIATOR_KEY.public_key, INITIATOR_NONCE)
    responder.receive_data(encode_frame(claimed))
    responder_hello = responder.send_hello(RESPONDER_NONCE)[4:]
    swapped = INITIATOR_KEY.sign(handshake_digest(responder_hello, claimed))
    events = responder.receive_data(encode_frame(encode_message({"type": "auth", "signature": swapped})))
    assert [type(event) for event in events] == [HandshakeFailed]


def test_auth_with_large_scalar_fails() -> None:
    # S + L in place of S is a second encoding of the same signature, which
    # the scalar check rejects before any verification.
    _, responder = new_pair()
    claimed = hello_payload(INITIATOR_KEY.public_key, INITIATOR_NONCE)
    responder.receive_data(encode_frame(claimed))
    responder_hello = responder.send_hello(RESPONDER_NONCE)[4:]
    signature = INITIATOR_KEY.sign(handshake_digest(claimed, responder_hello))
    order = 2**252 + 27742317777372353535851937790883648493
    scalar = int.from_bytes(signature[32:], "little") + order
    malleable = signature[:32] + scalar.to_bytes(32, "little")
    events = responder.receive_data(encode_frame(encode_message({"type": "auth", "signature": malleable})))
    assert events[0].code == "auth_failed"
    assert "group order" in events[0].reason


def test_identity_point_node_key_fails() -> None:
    _, responder = new_pair()
    events = responder.receive_data(encode_frame(hello_payload(IDENTITY_POINT, INITIATOR_NONCE)))
    assert [type(event) for event in events] == [HandshakeFailed]
    assert events[0].code == "auth_failed"
    assert events[0].field == "node_key"
    assert responder.their_node_key is None


def test_own_node_key_is_self_connection() -> None:
    _, responder = new_pair()
    events = responder.receive_data(encode_frame(hello_payload(RESPONDER_KEY.public_key, INITIATOR_NONCE)))
    assert events[0].code == "self_connection"


def test_reflected_hello_fails() -> None:
    # Our own hello echoed back carries our key and our nonce.
    initiator, _ = new_pair()
    hello = initiator.send_hello(INITIATOR_NONCE)
    events = initiator.receive_data(hello)
    assert events[0].code == "self_connection"


def test_echoed_nonce_fails() -> None:
    initiator, _ = new_pair()
    initiator.send_hello(INITIATOR_NONCE)
    events = initiator.receive_data(encode_frame(hello_payload(RESPONDER_KEY.public_key, INITIATOR_NONCE)))
    assert events == [
        HandshakeFailed(
            code="auth_failed", field="nonce", reason="the peer's nonce equals ours (reflected hello)"
        )
    ]


def test_profile_mismatch_names_both() -> None:
    other = MergeProfile(merge_version=MERGE_VERSION, trust_sha256="00" * 32)
    initiator, responder = new_pair(profile=other)
    events = responder.receive_data(initiator.send_hello(INITIATOR_NONCE))
    assert [type(event) for event in events] == [HandshakeFailed]
    failure = events[0]
    assert failure.code == "profile_mismatch"
    assert failure.field == "profile"
    assert other.trust_sha256 in failure.reason
    assert PROFILE.trust_sha256 in failure.reason


def test_profile_mismatch_error_reaches_peer() -> None:
    other = MergeProfile(merge_version="another-merge-v9", trust_sha256=PROFILE.trust_sha256)
    initiator, responder = new_pair(profile=other)
    failure = responder.receive_data(initiator.send_hello(INITIATOR_NONCE))[0]
    frame = responder.send_error(failure.code, failure.reason)
    assert responder.our_state is State.CLOSED
    assert responder.closed
    events = initiator.receive_data(frame)
    assert events == [PeerError(code="profile_mismatch", reason=failure.reason)]
    assert initiator.their_state is State.CLOSED


def test_protocol_mismatch_checked_first() -> None:
    # A later version may change other hello fields; the name is compared first.
    _, responder = new_pair()
    frame = raw_frame({"type": "hello", "protocol": "pith-mirror/2", "node_key": "a text key"})
    events = responder.receive_data(frame)
    assert events == [
        HandshakeFailed(
            code="protocol_mismatch",
            field="protocol",
            reason="the peer speaks 'pith-mirror/2', we speak 'pith-mirror/1'",
        )
    ]


def test_session_message_before_our_auth() -> None:
    # The peer cannot have verified us before our auth went out.
    initiator, responder = new_pair()
    responder.receive_data(initiator.send_hello(INITIATOR_NONCE))
    initiator.receive_data(responder.send_hello(RESPONDER_NONCE))
    data = responder.send_auth()
    data += encode_frame(encode_message({"type": "announce", "ids": [ID_A]}))
    events = initiator.receive_data(data)
    assert [type(event) for event in events] == [PeerAuthenticated, ProtocolViolation]
    assert events[1].code == "unexpected_message"


def test_auth_before_our_hello_is_unexpected() -> None:
    _, responder = new_pair()
    responder.receive_data(encode_frame(hello_payload(INITIATOR_KEY.public_key, INITIATOR_NONCE)))
    events = responder.receive_data(encode_frame(encode_message({"type": "auth", "signature": b"\x00" * 64})))
    assert events[0].code == "unexpected_message"


def test_announce_before_hello_is_unexpected() -> None:
    _, responder = new_pair()
    events = responder.receive_data(encode_frame(encode_message({"type": "announce", "ids": [ID_A]})))
    assert events == [
        ProtocolViolation(
            code="unexpected_message",
            field="type",
            reason="message 'announce' is not allowed while the peer is in AWAIT_HELLO and we are in AWAIT_HELLO",
        )
    ]
    assert responder.their_state is State.ERROR


def test_second_hello_is_unexpected() -> None:
    initiator, responder = new_pair()
    hello = initiator.send_hello(INITIATOR_NONCE)
    responder.receive_data(hello)
    events = responder.receive_data(hello)
    assert events[0].code == "unexpected_message"


def test_error_during_handshake_reported() -> None:
    initiator, responder = new_pair()
    events = responder.receive_data(initiator.send_error("busy", "too many peers"))
    assert events == [PeerError(code="busy", reason="too many peers")]
    assert initiator.our_state is State.CLOSED


# --- every message round-trips ---------------------------------------------------


def published_items() -> list[dict[str, Any]]:
    record = record_line(RECORD_LINE_SUBJECT)
    record_item = {
        "item_type": "record",
        "canonical_record": record["canonical_record"],
        "source_aliases": record["source_aliases"],
    }
    return [*published_input().events, record_item]


ROUND_TRIPS = [
    pytest.param("send_announce", ([ID_A, ID_B],), EventsAnnounced(ids=(ID_A, ID_B)), id="announce"),
    pytest.param("send_want", ([ID_B],), EventsRequested(ids=(ID_B,)), id="want"),
    pytest.param(
        "send_reconcile",
        (7, 2, b"\x00fingerprint"),
        ReconcileReceived(session=7, round=2, payload=b"\x00fingerprint"),
        id="reconcile",
    ),
    pytest.param(
        "send_reconcile", (0, 0, b""), ReconcileReceived(session=0, round=0, payload=b""), id="reconcile-empty"
    ),
    pytest.param(
        "send_peers",
        (["127.0.0.1:4000", "[::1]:4001", "mirror.example.org:7000"],),
        PeersReceived(addresses=("127.0.0.1:4000", "[::1]:4001", "mirror.example.org:7000")),
        id="peers",
    ),
    pytest.param("send_peers", ([],), PeersReceived(addresses=()), id="peers-empty"),
    pytest.param("send_ping", (b"12345678",), PingReceived(nonce=b"12345678"), id="ping"),
    pytest.param("send_pong", (b"87654321",), PongReceived(nonce=b"87654321"), id="pong"),
    pytest.param(
        "send_error", ("busy", "shutting down"), PeerError(code="busy", reason="shutting down"), id="error"
    ),
    pytest.param("send_bye", (), PeerClosed(reason="the peer sent bye"), id="bye"),
]


@pytest.mark.parametrize(("method", "args", "expected"), ROUND_TRIPS)
@pytest.mark.parametrize("direction", ["to-responder", "to-initiator"])
def test_message_round_trip(method: str, args: tuple[Any, ...], expected: Any, direction: str) -> None:
    initiator, responder = ready_pair()
    sender, receiver = (initiator, responder) if direction == "to-responder" else (responder, initiator)
    assert receiver.receive_data(getattr(sender, method)(*args)) == [expected]


def test_items_round_trip_published() -> None:
    initiator, responder = ready_pair()
    items = published_items()
    events = responder.receive_data(initiator.send_items(items, more=True))
    assert len(events) == 1
    assert events[0].items == tuple(items)
    assert events[0].ids == tuple(hashlib.sha256(canonical_bytes(item)).digest() for item in items)
    assert events[0].more is True


def test_items_empty_list_allowed() -> None:
    initiator, responder = ready_pair()
    assert responder.receive_data(initiator.send_items([], more=False)) == [
        ItemsReceived(items=(), ids=(), more=False)
    ]


def test_item_id_is_canonical_sha256() -> None:
    assert item_id({"n": 1}).hex() == "2bfd14f43d17fc7cea24e0917a8879b4b2f880b8baeec1b9d90fbaad655e71bd"


def test_every_message_type_round_trips() -> None:
    covered = {"hello", "auth", "items"} | {param.id.split("-")[0] for param in ROUND_TRIPS}
    assert covered == set(MESSAGE_TYPES)


# --- chunking: whole, byte by byte, every split, trailing bytes --------------------


def sample_frames() -> list[tuple[str, bytes, Connection]]:
    """Return (name, frame, receiver) triples, each receiver in the state the frame needs."""
    samples = []
    _, responder = new_pair()
    hello = new_pair()[0].send_hello(INITIATOR_NONCE, "[::1]:9")
    samples.append(("hello", hello, responder))
    for name, build in [
        ("announce", lambda c: c.send_announce([ID_A, ID_B])),
        ("items", lambda c: c.send_items(published_items()[:1], more=False)),
        ("ping", lambda c: c.send_ping(b"\x01" * 8)),
    ]:
        initiator, receiver = ready_pair()
        samples.append((name, build(initiator), receiver))
    return samples


@pytest.mark.parametrize("index", range(4), ids=["hello", "announce", "items", "ping"])
def test_frame_fed_byte_by_byte(index: int) -> None:
    name, frame, receiver = sample_frames()[index]
    _, _, whole_receiver = sample_frames()[index]
    expected = whole_receiver.receive_data(frame)
    assert len(expected) == 1
    events: list[Any] = []
    for position in range(len(frame)):
        step = receiver.receive_data(frame[position : position + 1])
        if position < len(frame) - 1:
            assert step == [], position
        events += step
    assert events == expected


@pytest.mark.parametrize("index", [0, 1, 3], ids=["hello", "announce", "ping"])
def test_frame_split_at_every_position(index: int) -> None:
    _, frame, _ = sample_frames()[index]
    _, _, whole_receiver = sample_frames()[index]
    expected = whole_receiver.receive_data(frame)
    # b"" would mean the end of the stream, so both parts are non-empty.
    for cut in range(1, len(frame)):
        _, _, receiver = sample_frames()[index]
        assert receiver.receive_data(frame[:cut]) + receiver.receive_data(frame[cut:]) == expected, cut


def test_frame_with_trailing_bytes() -> None:
    initiator, responder = ready_pair()
    first = initiator.send_ping(b"\x01" * 8)
    second = initiator.send_ping(b"\x02" * 8)
    assert responder.receive_data(first + second[:5]) == [PingReceived(nonce=b"\x01" * 8)]
    assert responder.buffered == 5
    assert responder.receive_data(second[5:]) == [PingReceived(nonce=b"\x02" * 8)]
    assert responder.buffered == 0


def test_many_frames_in_one_chunk() -> None:
    initiator, responder = ready_pair()
    data = b"".join(initiator.send_ping(bytes([index]) * 8) for index in range(10))
    assert responder.receive_data(data) == [PingReceived(nonce=bytes([index]) * 8) for index in range(10)]


def test_frames_after_bye_ignored() -> None:
    initiator, responder = ready_pair()
    data = initiator.send_ping(b"\x01" * 8)
    data += initiator.send_bye()
    data += encode_frame(encode_message({"type": "ping", "nonce": b"\x02" * 8}))
    events = responder.receive_data(data)
    assert events == [PingReceived(nonce=b"\x01" * 8), PeerClosed(reason="the peer sent bye")]
    assert responder.receive_data(b"\x00") == []


# --- end of stream ---------------------------------------------------------------


def test_clean_end_of_stream() -> None:
    initiator, responder = ready_pair()
    assert responder.receive_data(b"") == [PeerClosed(reason="the peer closed the stream")]
    assert responder.their_state is State.CLOSED


def test_truncated_frame_reported_once() -> None:
    initiator, responder = ready_pair()
    frame = initiator.send_ping(b"\x01" * 8)
    assert responder.receive_data(frame[:7]) == []
    events = responder.receive_data(b"")
    assert len(events) == 1
    assert "truncated frame" in events[0].reason
    assert isinstance(events[0], PeerClosed)
    assert responder.their_state is State.ERROR
    assert responder.receive_data(b"") == []
    assert responder.receive_data(frame[7:]) == []
    assert responder.buffered == 0


# --- invalid messages ----------------------------------------------------------------


RECORD_ITEM_WITH_EXTRA = {"item_type": "record", "canonical_record": {}, "source_aliases": [], "x": 1}

# (test id, message, field, reason) of messages that break their schema.
INVALID_MESSAGE_ROWS = [
    ("missing-field", {"type": "ping"}, "nonce", "missing"),
    ("unknown-field", {"type": "bye", "extra": 1}, "extra", "unknown field"),
    ("unknown-type", {"type": "shout"}, "type", "unknown message type 'shout'"),
    ("no-type", {"nonce": b"x"}, "type", "missing"),
    ("type-as-bytes", {"type": b"ping"}, "type", "must be text, got bytes"),
    ("text-nonce", {"type": "ping", "nonce": "12345678"}, "nonce", "must be 8 bytes (msgpack bin), got text"),
    ("short-nonce", {"type": "ping", "nonce": b"1234567"}, "nonce", "must be 8 bytes, got 7"),
    ("no-ids", {"type": "announce", "ids": []}, "ids", "must hold 1 to 1024 entries, got 0"),
    ("duplicate-id", {"type": "announce", "ids": [ID_A] * 2}, "ids[1]", f"duplicate id {ID_A.hex()}"),
    ("hex-id", {"type": "want", "ids": [ID_A.hex()]}, "ids[0]", "must be 32 bytes (msgpack bin), got text"),
    ("int-more", {"type": "items", "items": [], "more": 1}, "more", "must be a boolean, got integer"),
    ("array-item", {"type": "items", "items": [[1]], "more": False}, "items[0]", "an item must be a map, got array"),
    (
        "bytes-in-item",
        {"type": "items", "items": [{"x": b"raw"}], "more": False},
        "items[0].x",
        "value of type bytes is not allowed in JSON",
    ),
    (
        "item-type-event",
        {"type": "items", "items": [{"item_type": "event"}], "more": False},
        "items[0].item_type",
        "'event' is not 'record'",
    ),
    (
        "record-without-aliases",
        {"type": "items", "items": [{"item_type": "record", "canonical_record": {}}], "more": False},
        "items[0].source_aliases",
        "missing",
    ),
    (
        "record-extra-field",
        {"type": "items", "items": [RECORD_ITEM_WITH_EXTRA], "more": False},
        "items[0].x",
        "unknown field of a record item",
    ),
    (
        "negative-session",
        {"type": "reconcile", "session": -1, "round": 0, "payload": b""},
        "session",
        "-1 is outside 0 to 4294967295",
    ),
    (
        "bool-round",
        {"type": "reconcile", "session": 0, "round": True, "payload": b""},
        "round",
        "must be an integer, got boolean",
    ),
    (
        "text-payload",
        {"type": "reconcile", "session": 0, "round": 0, "payload": "x"},
        "payload",
        "must be bytes (msgpack bin), got text",
    ),
    ("no-port", {"type": "peers", "addresses": ["127.0.0.1"]}, "addresses[0]", "'127.0.0.1' is not HOST:PORT"),
    ("port-zero", {"type": "peers", "addresses": ["h:0"]}, "addresses[0]", "'h:0' is not HOST:PORT"),
    ("bytes-address", {"type": "peers", "addresses": [b"h:1"]}, "addresses[0]", "must be text, got bytes"),
    (
        "bad-code",
        {"type": "error", "code": "Bad", "reason": ""},
        "code",
        "'Bad' is not an error code ([a-z][a-z0-9_]*, at most 64)",
    ),
    (
        "newline-reason",
        {"type": "error", "code": "busy", "reason": "a\nb"},
        "reason",
        "must not contain control characters",
    ),
    (
        "long-reason",
        {"type": "error", "code": "busy", "reason": "x" * 513},
        "reason",
        "must be at most 512 characters, got 513",
    ),
]
INVALID_MESSAGES = [pytest.param(*row[1:], id=row[0]) for row in INVALID_MESSAGE_ROWS]


@pytest.mark.parametrize(("message", "field", "reason"), INVALID_MESSAGES)
def test_invalid_message_rejected(message: dict[str, Any], field: str, reason: str) -> None:
    _, responder = ready_pair()
    events = responder.receive_data(raw_frame(message))
    assert events == [ProtocolViolation(code="invalid_message", field=field, reason=reason)]


@pytest.mark.parametrize(("message", "field", "reason"), INVALID_MESSAGES)
def test_invalid_message_not_encoded(message: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(UsageError):
        encode_message(message)


# (test id, changed hello fields, field, reason).
INVALID_HELLO_ROWS = [
    ("bytes-listen", {"listen": b"127.0.0.1:1"}, "listen", "must be text, got bytes"),
    ("bad-listen", {"listen": "no port"}, "listen", "'no port' is not HOST:PORT"),
    ("short-nonce", {"nonce": b"\x00" * 31}, "nonce", "must be 32 bytes, got 31"),
    ("hex-key", {"node_key": INITIATOR_KEY.public_key_hex}, "node_key", "must be 32 bytes (msgpack bin), got text"),
    ("no-trust", {"profile": {"merge_version": MERGE_VERSION}}, "profile.trust_sha256", "missing"),
    (
        "upper-trust",
        {"profile": {"merge_version": MERGE_VERSION, "trust_sha256": "AB" * 32}},
        "profile.trust_sha256",
        f"{'AB' * 32!r} is not 64 lowercase hex characters",
    ),
    (
        "profile-extra",
        {"profile": {"merge_version": MERGE_VERSION, "trust_sha256": "ab" * 32, "type": "x"}},
        "profile.type",
        "unknown field",
    ),
]
INVALID_HELLOS = [pytest.param(*row[1:], id=row[0]) for row in INVALID_HELLO_ROWS]


@pytest.mark.parametrize(("change", "field", "reason"), INVALID_HELLOS)
def test_invalid_hello_rejected(change: dict[str, Any], field: str, reason: str) -> None:
    message = decode_message(hello_payload(INITIATOR_KEY.public_key, INITIATOR_NONCE))
    message.update(change)
    _, responder = new_pair()
    events = responder.receive_data(raw_frame(message))
    assert len(events) == 1
    assert events[0].code == "invalid_message"
    assert events[0].field == field
    assert events[0].reason == reason


def test_message_not_a_map() -> None:
    _, responder = new_pair()
    events = responder.receive_data(raw_frame([1, 2]))
    assert events == [
        ProtocolViolation(code="invalid_message", field="frame", reason="a message must be a msgpack map, got array")
    ]


def test_deep_item_rejected_by_path() -> None:
    item: dict[str, Any] = {}
    inner = item
    for _ in range(32):
        inner["a"] = {}
        inner = inner["a"]
    _, responder = ready_pair()
    events = responder.receive_data(raw_frame({"type": "items", "items": [item], "more": False}))
    # An item 33 levels deep puts the frame at 35, past its own limit of 34,
    # so the frame decoder reports it before the item check does.
    assert events[0].code == "invalid_frame"
    assert events[0].field == "items[0]" + ".a" * 32
    assert events[0].reason == "nesting is deeper than 34 levels"


def test_depth_bomb_frame_rejected() -> None:
    _, responder = ready_pair()
    events = responder.receive_data(encode_frame(b"\x91" * 100_000 + b"\xc0"))
    assert events == [
        ProtocolViolation(code="invalid_frame", field="frame", reason="nesting is deeper than 34 levels")
    ]


def test_data_after_violation_ignored() -> None:
    initiator, responder = ready_pair()
    data = raw_frame({"type": "shout"}) + initiator.send_ping(b"\x01" * 8)
    assert len(responder.receive_data(data)) == 1
    assert responder.receive_data(initiator.send_ping(b"\x02" * 8)) == []
    assert responder.closed


# --- our own misuse -------------------------------------------------------------------


def test_send_before_ready_is_usage_error() -> None:
    initiator, _ = new_pair()
    with pytest.raises(UsageError):
        initiator.send_announce([ID_A])
    assert initiator.our_state is State.AWAIT_HELLO


def test_auth_before_peer_hello_is_usage_error() -> None:
    initiator, _ = new_pair()
    initiator.send_hello(INITIATOR_NONCE)
    with pytest.raises(UsageError):
        initiator.send_auth()
    assert initiator.our_state is State.AWAIT_AUTH


def test_second_hello_is_usage_error() -> None:
    initiator, _ = new_pair()
    initiator.send_hello(INITIATOR_NONCE)
    with pytest.raises(UsageError):
        initiator.send_hello(RESPONDER_NONCE)


def test_send_after_bye_is_usage_error() -> None:
    initiator, _ = ready_pair()
    initiator.send_bye()
    with pytest.raises(UsageError):
        initiator.send_ping(b"\x00" * 8)
    with pytest.raises(UsageError):
        initiator.send_error("busy", "")


def test_session_send_after_peer_bye_is_usage_error() -> None:
    initiator, responder = ready_pair()
    responder.receive_data(initiator.send_bye())
    with pytest.raises(UsageError):
        responder.send_announce([ID_A])
    assert responder.send_bye()[4:] == encode_message({"type": "bye"})


def test_nonce_equal_to_peer_nonce_rejected() -> None:
    initiator, responder = new_pair()
    responder.receive_data(initiator.send_hello(INITIATOR_NONCE))
    with pytest.raises(UsageError):
        responder.send_hello(INITIATOR_NONCE)
    assert responder.our_state is State.AWAIT_HELLO


TOO_MANY_IDS = [hashlib.sha256(index.to_bytes(2, "big")).digest() for index in range(MAX_ANNOUNCE_IDS + 1)]


@pytest.mark.parametrize(
    ("method", "args"),
    [
        pytest.param("send_announce", ([],), id="no-ids"),
        pytest.param("send_announce", ([ID_A] * 2,), id="duplicate-ids"),
        pytest.param("send_announce", (TOO_MANY_IDS,), id="too-many-ids"),
        pytest.param("send_want", ([b"short"],), id="short-id"),
        pytest.param("send_items", ([{"x": 1.5}], False), id="float-item"),
        pytest.param("send_items", ([{"x": 1}] * (MAX_ITEMS + 1), False), id="too-many-items"),
        pytest.param("send_items", ([{"x": "y" * 600_000}, {"x": "z" * 600_000}], False), id="frame-too-large"),
        pytest.param("send_reconcile", (2**32, 0, b""), id="session-too-large"),
        pytest.param("send_peers", (["a:1"] * (MAX_PEER_ADDRESSES + 1),), id="too-many-peers"),
        pytest.param("send_peers", (["not an address"],), id="bad-address"),
        pytest.param("send_ping", (b"\x00" * 9,), id="long-ping-nonce"),
        pytest.param("send_error", ("made_up", "x"), id="unknown-code"),
        pytest.param("send_error", ("busy", "line\nbreak"), id="control-in-reason"),
    ],
)
def test_invalid_send_is_usage_error(method: str, args: tuple[Any, ...]) -> None:
    initiator, _ = ready_pair()
    with pytest.raises(UsageError):
        getattr(initiator, method)(*args)
    assert initiator.our_state is State.READY


def test_long_error_reason_is_cut() -> None:
    initiator, responder = ready_pair()
    events = responder.receive_data(initiator.send_error("busy", "r" * 600))
    assert events == [PeerError(code="busy", reason="r" * (MAX_REASON_CHARS - 3) + "...")]


def test_error_codes_are_valid_codes() -> None:
    for code in ERROR_CODES:
        assert decode_message(encode_message({"type": "error", "code": code, "reason": ""}))["code"] == code


# --- hostile vectors through the connection --------------------------------------------


def vector(case_id: str, name: str) -> dict[str, Any]:
    return next(v for v in load_case(case_id)["vectors"] if v["name"] == name)


C07_HEADER_BOMBS = [v["name"] for v in load_case("C07")["vectors"] if len(v.get("input_hex", "")) >= 8]


@pytest.mark.parametrize("name", C07_HEADER_BOMBS)
def test_c07_header_bomb_closes_connection(name: str) -> None:
    data = bytes.fromhex(vector("C07", name)["input_hex"])
    length = int.from_bytes(data[:4], "big")
    _, responder = ready_pair()
    events = responder.receive_data(data)
    assert events == [
        ProtocolViolation(
            code="invalid_frame",
            field="frame",
            reason=f"frame length {length} exceeds the limit of {MAX_FRAME_BYTES} bytes",
        )
    ]
    assert responder.buffered == 0


@pytest.mark.parametrize("name", [v["name"] for v in load_case("C07")["vectors"] if "input_hex" in v])
def test_c07_as_frame_payload_rejected(name: str) -> None:
    _, responder = ready_pair()
    events = responder.receive_data(encode_frame(bytes.fromhex(vector("C07", name)["input_hex"])))
    assert len(events) == 1
    assert events[0].code == "invalid_frame"


def test_c07_byte_by_byte_as_item() -> None:
    chunks = [bytes.fromhex(chunk) for chunk in vector("C07", "one_frame_byte_by_byte")["chunks_hex"]]
    framed = framed_chunks(chunks, *items_message_parts())
    _, responder = ready_pair()
    results = [responder.receive_data(chunk) for chunk in framed]
    assert all(result == [] for result in results[:-1])
    assert [type(event) for event in results[-1]] == [ItemsReceived]
    assert results[-1][0].items == ({"type": "event", "event": {"kind": "note", "payload": {"text": "x" * 40}}},)


@pytest.mark.parametrize(
    ("name", "expected_counts"),
    [("two_frames_one_chunk", [2]), ("frame_plus_half", [1, 1]), ("eof_with_partial_frame", [0])],
)
def test_c07_chunks_as_items(name: str, expected_counts: list[int]) -> None:
    chunks = [bytes.fromhex(chunk) for chunk in vector("C07", name)["chunks_hex"]]
    framed = framed_chunks(chunks, *items_message_parts())
    _, responder = ready_pair()
    results = [responder.receive_data(chunk) for chunk in framed]
    assert [len(result) for result in results] == expected_counts
    assert all(isinstance(event, ItemsReceived) for result in results for event in result)


def test_c07_partial_frame_then_eof() -> None:
    chunks = [bytes.fromhex(chunk) for chunk in vector("C07", "eof_with_partial_frame")["chunks_hex"]]
    _, responder = ready_pair()
    for chunk in framed_chunks(chunks, *items_message_parts()):
        assert responder.receive_data(chunk) == []
    events = responder.receive_data(b"")
    assert len(events) == 1
    assert "truncated frame" in events[0].reason


def test_c07_unframed_chunks_rejected() -> None:
    chunks = [bytes.fromhex(chunk) for chunk in vector("C07", "one_frame_byte_by_byte")["chunks_hex"]]
    _, responder = ready_pair()
    results = [responder.receive_data(chunk) for chunk in chunks]
    assert results[:3] == [[], [], []]
    assert [event.code for event in results[3]] == ["invalid_frame"]
    assert all(result == [] for result in results[4:])


# Outcome of each C06 vector as the one item of an items message: None to
# accept, or the code, field and a phrase of the reason.
C06_ITEM_OUTCOMES: dict[str, tuple[str, str, str] | None] = {
    "bin_value_where_str_expected": ("invalid_message", "items[0].id", "type bytes is not allowed"),
    "bin_key": ("invalid_frame", "items[0]", "map key b'id' must be text, got bytes"),
    "int_key": ("invalid_frame", "frame", "map key must be text, got int"),
    "nil_key": ("invalid_frame", "frame", "map key must be text, got NoneType"),
    "array_key": ("invalid_frame", "frame", "map key must be text, got list"),
    "invalid_utf8_str": ("invalid_frame", "frame", "not valid UTF-8"),
    "overlong_utf8_str": ("invalid_frame", "frame", "not valid UTF-8"),
    "valid_reference": None,
}

# The msgpack vectors of the canonical JSON cases, as items.
CANONICAL_ITEM_OUTCOMES: dict[tuple[str, str], tuple[str, str, str] | None] = {
    ("C02", "msgpack_str_with_cesu8_surrogate"): ("invalid_frame", "frame", "not valid UTF-8"),
    ("C03", "msgpack_float64_nan"): ("invalid_frame", "items[0].n", "non-finite number nan"),
    ("C03", "msgpack_float64_one"): ("invalid_frame", "items[0].n", "non-integer number 1.0"),
    ("C03", "msgpack_int_one"): None,
    ("C03", "msgpack_float32_1.1"): ("invalid_frame", "items[0].n", "non-integer number"),
    ("C03", "msgpack_uint64_max"): ("invalid_frame", "items[0].n", "safe range"),
    ("C03", "msgpack_int64_min"): ("invalid_frame", "items[0].n", "safe range"),
    ("C04", "msgpack_dup_map_key"): ("invalid_frame", "items[0].url", "duplicate map key 'url'"),
}


def item_vectors() -> list[Any]:
    params = []
    for name, outcome in C06_ITEM_OUTCOMES.items():
        params.append(pytest.param(vector("C06", name), outcome, id=f"C06-{name}"))
    for (case_id, name), outcome in CANONICAL_ITEM_OUTCOMES.items():
        params.append(pytest.param(vector(case_id, name), outcome, id=f"{case_id}-{name}"))
    return params


def test_item_outcomes_cover_vectors() -> None:
    assert set(C06_ITEM_OUTCOMES) == {v["name"] for v in load_case("C06")["vectors"]}
    msgpack_vectors = {
        (case_id, v["name"])
        for case_id in ("C02", "C03", "C04")
        for v in load_case(case_id)["vectors"]
        if "input_hex" in v
    }
    assert set(CANONICAL_ITEM_OUTCOMES) == msgpack_vectors


@pytest.mark.parametrize(("case_vector", "outcome"), item_vectors())
def test_vector_as_item(case_vector: dict[str, Any], outcome: tuple[str, str, str] | None) -> None:
    value_bytes = bytes.fromhex(case_vector["input_hex"])
    _, responder = ready_pair()
    events = responder.receive_data(as_item_frame(value_bytes))
    assert len(events) == 1
    if outcome is None:
        value = msgpack.unpackb(value_bytes)
        assert events[0] == ItemsReceived(items=(value,), ids=(item_id(value),), more=False)
        return
    code, field, phrase = outcome
    assert events[0].code == code
    assert events[0].field == field
    assert phrase in events[0].reason


@pytest.mark.parametrize(("case_vector", "outcome"), item_vectors())
def test_vector_as_message_rejected(case_vector: dict[str, Any], outcome: Any) -> None:
    # None of the vectors is a message: a map without "type", or not decodable.
    _, responder = ready_pair()
    events = responder.receive_data(encode_frame(bytes.fromhex(case_vector["input_hex"])))
    assert [type(event) for event in events] == [ProtocolViolation]
    assert responder.their_state is State.ERROR


def test_int_one_item_id() -> None:
    _, responder = ready_pair()
    events = responder.receive_data(as_item_frame(bytes.fromhex(vector("C03", "msgpack_int_one")["input_hex"])))
    assert events[0].ids[0].hex() == vector("C03", "int_one")["python_sha256_today"]


@pytest.mark.parametrize("name", [v["name"] for v in load_case("C16")["vectors"]])
def test_c16_unframed_rejected_at_header(name: str) -> None:
    _, responder = ready_pair()
    events = responder.receive_data(bytes.fromhex(vector("C16", name)["input_hex"]))
    assert [event.code for event in events] == ["invalid_frame"]
    assert responder.receive_data(b"") == []


C16_FRAMED_OUTCOMES = {
    "spliced_decodes_cleanly": ("invalid_message", "type", "unknown message type 'event'"),
    "spliced_decode_error": (
        "invalid_frame",
        "frame",
        "text is not valid UTF-8 (invalid start byte at byte 3 of a string)",
    ),
}


@pytest.mark.parametrize("name", sorted(C16_FRAMED_OUTCOMES))
def test_c16_spliced_frame_accepts_nothing(name: str) -> None:
    _, responder = ready_pair()
    events = responder.receive_data(encode_frame(bytes.fromhex(vector("C16", name)["input_hex"])))
    code, field, reason = C16_FRAMED_OUTCOMES[name]
    assert events == [ProtocolViolation(code=code, field=field, reason=reason)]


@pytest.mark.parametrize("name", ["half_frame_then_eof", "reset_mid_frame"])
def test_c16_half_frame_then_eof(name: str) -> None:
    # The frame header declares the 60-byte string the vector cuts off after 5 bytes.
    data = bytes.fromhex(vector("C16", name)["input_hex"])
    frame_start = (len(data) + 55).to_bytes(4, "big") + data
    _, responder = ready_pair()
    assert responder.receive_data(frame_start) == []
    events = responder.receive_data(b"")
    assert len(events) == 1
    expected = f"the peer closed the stream inside a frame (truncated frame, {len(frame_start)} bytes)"
    assert events[0].reason == expected
    for _ in range(3):
        assert responder.receive_data(b"") == []


# --- properties ----------------------------------------------------------------------------


def check_events(events: list[Any]) -> None:
    """Assert the events are documented types and nothing follows a terminal event."""
    for index, event in enumerate(events):
        assert type(event) in EVENT_TYPES
        if isinstance(event, TERMINAL_EVENTS):
            assert index == len(events) - 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=6), ready=st.booleans())
def test_arbitrary_bytes_only_documented_events(data: bytes, cuts: list[int], ready: bool) -> None:
    _, receiver = ready_pair() if ready else new_pair()
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut <= len(data))})
    events: list[Any] = []
    for start, end in zip(bounds, bounds[1:]):
        events += receiver.receive_data(data[start:end])
        assert receiver.buffered <= MAX_FRAME_BYTES + 4
    events += receiver.receive_data(b"")
    check_events(events)
    assert len(events) >= 1


# Our send actions with valid arguments, and the message type each sends.
OUR_SENDS = {
    "hello": lambda c: c.send_hello(INITIATOR_NONCE),
    "auth": lambda c: c.send_auth(),
    "announce": lambda c: c.send_announce([ID_A]),
    "want": lambda c: c.send_want([ID_A]),
    "items": lambda c: c.send_items([{"n": 1}], more=False),
    "reconcile": lambda c: c.send_reconcile(1, 0, b"\x01"),
    "peers": lambda c: c.send_peers(["127.0.0.1:1"]),
    "ping": lambda c: c.send_ping(b"\x00" * 8),
    "pong": lambda c: c.send_pong(b"\x00" * 8),
    "error": lambda c: c.send_error("busy", "test"),
    "bye": lambda c: c.send_bye(),
}

PEER_ACTIONS = [*MESSAGE_TYPES, "garbage", "eof"]


class ScriptedPeer:
    """A peer that can send any message at any time, signing its auth correctly."""

    def __init__(self) -> None:
        self.key = key("wire-scripted-peer")
        self.hello: bytes | None = None
        self.count = 0

    def frame(self, action: str, our_hello: bytes | None) -> bytes:
        self.count += 1
        if action == "hello":
            self.hello = hello_payload(self.key.public_key, hashlib.sha256(bytes([self.count])).digest())
            return encode_frame(self.hello)
        if action == "auth":
            transcript = handshake_digest(self.hello or b"", our_hello or b"")
            return encode_frame(encode_message({"type": "auth", "signature": self.key.sign(transcript)}))
        if action == "garbage":
            return b"\x00\x00\x00\x02\xc1\x01"
        fields = {
            "announce": {"ids": [ID_A]},
            "want": {"ids": [ID_B]},
            "items": {"items": [{"n": 2}], "more": True},
            "reconcile": {"session": 3, "round": 1, "payload": b"x"},
            "peers": {"addresses": ["[::1]:2"]},
            "ping": {"nonce": b"p" * 8},
            "pong": {"nonce": b"q" * 8},
            "error": {"code": "busy", "reason": "r"},
            "bye": {},
        }[action]
        return encode_frame(encode_message({"type": action, **fields}))


ACTIONS = st.lists(
    st.tuples(st.sampled_from(["us", "peer"]), st.sampled_from(PEER_ACTIONS)),
    max_size=12,
)


# The handshake in order; a random number of these steps opens each run,
# so that the random actions also start from the later states.
HANDSHAKE_STEPS = [("us", "hello"), ("peer", "hello"), ("us", "auth"), ("peer", "auth")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(role=st.sampled_from(list(Role)), steps=st.integers(0, 4), actions=ACTIONS)
def test_state_machine_follows_table(role: Role, steps: int, actions: list[tuple[str, str]]) -> None:
    connection = Connection(role, INITIATOR_KEY, PROFILE)
    peer = ScriptedPeer()
    our_hello: bytes | None = None

    for actor, action in HANDSHAKE_STEPS[:steps] + actions:
        our_before, their_before = connection.our_state, connection.their_state
        if actor == "us":
            if action not in OUR_SENDS:
                continue
            transition = TRANSITIONS.get((our_before, action))
            allowed = transition is not None and their_before in transition.other_side
            try:
                frame = OUR_SENDS[action](connection)
            except UsageError:
                assert not allowed, (our_before, their_before, action)
                assert (connection.our_state, connection.their_state) == (our_before, their_before)
                continue
            assert allowed, (our_before, their_before, action)
            assert transition is not None
            assert connection.our_state is transition.next_state
            assert connection.their_state is their_before
            if action == "hello":
                our_hello = frame[4:]
            continue

        was_closed = connection.closed
        if action == "eof":
            events = connection.receive_data(b"")
        else:
            events = connection.receive_data(peer.frame(action, our_hello))
        check_events(events)
        assert connection.our_state is our_before
        if was_closed:
            assert events == []
            assert connection.their_state is their_before
            continue
        assert len(events) == 1
        event = events[0]
        if action == "eof":
            assert isinstance(event, PeerClosed)
            assert connection.their_state is State.CLOSED
            continue
        transition = TRANSITIONS.get((their_before, action))
        allowed = transition is not None and our_before in transition.other_side
        # Every scripted message is valid, so only the table can reject it.
        assert not isinstance(event, HandshakeFailed)
        if isinstance(event, ProtocolViolation):
            assert connection.their_state is State.ERROR
            if action == "garbage":
                assert event.code == "invalid_frame"
            else:
                assert event.code == "unexpected_message"
                assert not allowed, (their_before, our_before, action)
            continue
        assert allowed, (their_before, our_before, action)
        assert transition is not None
        assert connection.their_state is transition.next_state


# Ways to reach each pair of states, as steps of HANDSHAKE_STEPS plus our
# own closing: (our state, their state) -> steps.
STATE_PAIRS: dict[tuple[State, State], list[tuple[str, str]]] = {
    (State.AWAIT_HELLO, State.AWAIT_HELLO): [],
    (State.AWAIT_AUTH, State.AWAIT_HELLO): [("us", "hello")],
    (State.AWAIT_HELLO, State.AWAIT_AUTH): [("peer", "hello")],
    (State.AWAIT_AUTH, State.AWAIT_AUTH): [("us", "hello"), ("peer", "hello")],
    (State.READY, State.AWAIT_AUTH): [("us", "hello"), ("peer", "hello"), ("us", "auth")],
    (State.AWAIT_AUTH, State.READY): [("us", "hello"), ("peer", "hello"), ("peer", "auth")],
    (State.READY, State.READY): HANDSHAKE_STEPS,
    (State.CLOSED, State.READY): [*HANDSHAKE_STEPS, ("us", "bye")],
    (State.READY, State.CLOSED): [*HANDSHAKE_STEPS, ("peer", "bye")],
    (State.AWAIT_HELLO, State.ERROR): [("peer", "garbage")],
}


def reach(pair: tuple[State, State]) -> tuple[Connection, ScriptedPeer, bytes | None]:
    connection = Connection(Role.RESPONDER, INITIATOR_KEY, PROFILE)
    peer = ScriptedPeer()
    our_hello = None
    for actor, action in STATE_PAIRS[pair]:
        if actor == "us":
            frame = OUR_SENDS[action](connection)
            if action == "hello":
                our_hello = frame[4:]
        else:
            connection.receive_data(peer.frame(action, our_hello))
    assert (connection.our_state, connection.their_state) == pair
    return connection, peer, our_hello


# The event each peer message yields when the table allows it.
ACCEPTED_EVENTS = {
    "hello": HelloReceived,
    "auth": PeerAuthenticated,
    "announce": EventsAnnounced,
    "want": EventsRequested,
    "items": ItemsReceived,
    "reconcile": ReconcileReceived,
    "peers": PeersReceived,
    "ping": PingReceived,
    "pong": PongReceived,
    "error": PeerError,
    "bye": PeerClosed,
}


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
@pytest.mark.parametrize("pair", list(STATE_PAIRS), ids=lambda pair: f"{pair[0].name}-{pair[1].name}")
def test_received_pair_follows_table(pair: tuple[State, State], message_type: str) -> None:
    connection, peer, our_hello = reach(pair)
    our_state, their_state = pair
    events = connection.receive_data(peer.frame(message_type, our_hello))

    if our_state is State.CLOSED or their_state in (State.CLOSED, State.ERROR):
        assert events == []
        return
    transition = TRANSITIONS.get((their_state, message_type))
    if transition is None or our_state not in transition.other_side:
        assert [event.code for event in events] == ["unexpected_message"]
        assert connection.their_state is State.ERROR
        return
    assert [type(event) for event in events] == [ACCEPTED_EVENTS[message_type]]
    assert connection.their_state is transition.next_state
    assert connection.our_state is our_state


@pytest.mark.parametrize("message_type", MESSAGE_TYPES)
@pytest.mark.parametrize("pair", list(STATE_PAIRS), ids=lambda pair: f"{pair[0].name}-{pair[1].name}")
def test_sent_pair_follows_table(pair: tuple[State, State], message_type: str) -> None:
    connection, _, _ = reach(pair)
    our_state, their_state = pair
    transition = TRANSITIONS.get((our_state, message_type))
    if transition is None or their_state not in transition.other_side:
        with pytest.raises(UsageError):
            OUR_SENDS[message_type](connection)
        assert (connection.our_state, connection.their_state) == pair
        return
    frame = OUR_SENDS[message_type](connection)
    assert decode_message(frame[4:])["type"] == message_type
    assert connection.our_state is transition.next_state
    assert connection.their_state is their_state


def test_table_rows() -> None:
    # The table as a list of (state, message type, other side's states, next state).
    rows = {
        (state.name, message_type, tuple(sorted(s.name for s in rule.other_side)), rule.next_state.name)
        for (state, message_type), rule in TRANSITIONS.items()
    }
    every = tuple(sorted(s.name for s in State))
    open_states = ("AWAIT_AUTH", "AWAIT_HELLO", "READY")
    session = {
        ("READY", message_type, ("READY",), "READY")
        for message_type in ("announce", "want", "items", "reconcile", "peers", "ping", "pong")
    }
    assert rows == {
        ("AWAIT_HELLO", "hello", open_states, "AWAIT_AUTH"),
        ("AWAIT_HELLO", "error", every, "CLOSED"),
        ("AWAIT_AUTH", "auth", ("AWAIT_AUTH", "READY"), "READY"),
        ("AWAIT_AUTH", "error", every, "CLOSED"),
        ("READY", "bye", every, "CLOSED"),
        ("READY", "error", every, "CLOSED"),
        *session,
    }


# --- reconciliation keys ----------------------------------------------------------


def test_reconcile_key_same_on_both_sides() -> None:
    initiator, responder = ready_pair()
    assert initiator.reconcile_key(5) == responder.reconcile_key(5)


def test_reconcile_key_formula() -> None:
    initiator, _ = ready_pair()
    expected = hashlib.sha256(
        b"pith-mirror-reconcile-key-v1\n" + INITIATOR_NONCE + RESPONDER_NONCE + (5).to_bytes(8, "big")
    ).digest()
    assert initiator.reconcile_key(5) == expected


def test_reconcile_key_differs_per_session() -> None:
    initiator, _ = ready_pair()
    assert initiator.reconcile_key(0) != initiator.reconcile_key(1)


def test_reconcile_key_before_ready_is_usage_error() -> None:
    initiator, responder = new_pair()
    responder.receive_data(initiator.send_hello(INITIATOR_NONCE))
    with pytest.raises(UsageError):
        responder.reconcile_key(0)


def test_reconcile_key_session_range() -> None:
    initiator, _ = ready_pair()
    with pytest.raises(UsageError):
        initiator.reconcile_key(2**32)


# Field values of any msgpack type, so that each schema check meets wrong types.
FIELD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=40)
    | st.sampled_from([ID_A, b"\x00" * 8, b"\x00" * 64, "127.0.0.1:1", "busy"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=10,
)
FIELD_NAMES = st.sampled_from(
    ["ids", "items", "more", "session", "round", "payload", "addresses", "nonce", "code", "reason", "signature"]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message_type=st.sampled_from([*MESSAGE_TYPES, "other"]),
    fields=st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=4),
)
def test_random_messages_only_documented_events(message_type: str, fields: dict[str, Any]) -> None:
    payload = msgpack.packb({"type": message_type, **fields}, use_bin_type=True)
    try:
        decode_message(payload)
    except WireError:
        pass
    _, responder = ready_pair()
    events = responder.receive_data(encode_frame(payload))
    check_events(events)
    assert len(events) == 1
