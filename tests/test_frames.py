"""Frames of the peer wire: the length-prefix reader, its buffer bound and the payload decoder.

The C06 and C07 vectors are bare msgpack values. They are tested both as
frame payloads, behind a correct length prefix, and as raw stream bytes,
where their first 4 bytes are read as our length prefix.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.canonical import MAX_SAFE_INTEGER
from protocol.errors import UsageError, WireError
from protocol.frames import (
    FRAME_HEADER_BYTES,
    MAX_FRAME_BYTES,
    MAX_FRAME_CONTAINERS,
    MAX_FRAME_DEPTH,
    FrameReader,
    decode_payload,
    encode_frame,
    encode_payload,
)

from conftest import load_case

BUFFER_BOUND = MAX_FRAME_BYTES + FRAME_HEADER_BYTES


def prefix(payload: bytes) -> bytes:
    """Return ``payload`` behind a 4-byte big-endian length, without encode_frame's checks."""
    return len(payload).to_bytes(4, "big") + payload


def framed_chunks(chunks: list[bytes], before: bytes = b"", after: bytes = b"") -> list[bytes]:
    """Give each bare msgpack value in ``chunks`` its length prefix, keeping the chunk boundaries.

    The prefix and ``before`` go into the chunk that contains the value's
    first byte, and ``after`` into the chunk with its last byte, so a value
    can be wrapped in a message. A value cut off at the end of the stream
    gets no ``after`` and is declared one byte longer than what is left of
    it, so its frame stays incomplete.
    """
    stream = b"".join(chunks)
    starts: dict[int, int] = {}
    ends: set[int] = set()
    unpacker = msgpack.Unpacker()
    unpacker.feed(stream)
    position = 0
    for _ in unpacker:
        starts[position] = len(before) + unpacker.tell() - position + len(after)
        ends.add(unpacker.tell() - 1)
        position = unpacker.tell()
    if position < len(stream):
        starts[position] = len(before) + len(stream) - position + 1

    framed: list[bytes] = []
    offset = 0
    for chunk in chunks:
        out = bytearray()
        for index, byte in enumerate(chunk):
            if offset + index in starts:
                out += starts[offset + index].to_bytes(4, "big") + before
            out.append(byte)
            if offset + index in ends:
                out += after
        framed.append(bytes(out))
        offset += len(chunk)
    return framed


def drain(reader: FrameReader, data: bytes) -> list[bytes]:
    """Feed ``data`` and return every payload it completes."""
    reader.feed(data)
    payloads = []
    while (payload := reader.next_frame()) is not None:
        payloads.append(payload)
    return payloads


def vectors(case_id: str, kind: str) -> list[Any]:
    return [
        pytest.param(vector, id=vector["name"]) for vector in load_case(case_id)["vectors"] if kind in vector
    ]


# --- the frame reader ---------------------------------------------------------


def test_one_frame_fed_whole() -> None:
    reader = FrameReader()
    assert drain(reader, b"\x00\x00\x00\x03abc") == [b"abc"]
    assert reader.buffered == 0
    assert reader.at_frame_boundary


def test_one_frame_byte_by_byte() -> None:
    reader = FrameReader()
    data = b"\x00\x00\x00\x03abc"
    results = [drain(reader, data[index : index + 1]) for index in range(len(data))]
    assert results == [[], [], [], [], [], [], [b"abc"]]


def test_frame_split_at_every_position() -> None:
    data = prefix(b"hello") + prefix(b"x")
    for cut in range(len(data) + 1):
        reader = FrameReader()
        payloads = drain(reader, data[:cut]) + drain(reader, data[cut:])
        assert payloads == [b"hello", b"x"], cut
        assert reader.buffered == 0, cut


def test_trailing_partial_frame_is_kept() -> None:
    reader = FrameReader()
    assert drain(reader, prefix(b"one") + b"\x00\x00\x00\x05tw") == [b"one"]
    assert reader.buffered == 6
    assert not reader.at_frame_boundary
    assert drain(reader, b"o") == []
    assert drain(reader, b"!!") == [b"two!!"]
    assert reader.at_frame_boundary


def test_zero_length_frame_rejected() -> None:
    reader = FrameReader()
    reader.feed(b"\x00\x00\x00\x00")
    with pytest.raises(WireError) as caught:
        reader.next_frame()
    assert caught.value.field == "frame"
    assert "length 0" in caught.value.reason


def test_frame_of_exactly_cap_accepted() -> None:
    payload = b"\xc0" * MAX_FRAME_BYTES
    assert drain(FrameReader(), prefix(payload)) == [payload]


def test_frame_over_cap_rejected_at_header() -> None:
    reader = FrameReader()
    header = (MAX_FRAME_BYTES + 1).to_bytes(4, "big")
    assert drain(reader, header[:3]) == []
    reader.feed(header[3:])
    with pytest.raises(WireError) as caught:
        reader.next_frame()
    expected = f"frame length {MAX_FRAME_BYTES + 1} exceeds the limit of {MAX_FRAME_BYTES} bytes"
    assert caught.value.reason == expected
    assert reader.buffered == 0


def test_header_near_100_mib_rejected_at_once() -> None:
    reader = FrameReader()
    reader.feed((100 * 1024 * 1024 - 16).to_bytes(4, "big") + b"\x00" * 1000)
    with pytest.raises(WireError):
        reader.next_frame()
    assert reader.buffered == 0


def test_failed_reader_refuses_more_data() -> None:
    reader = FrameReader()
    reader.feed(b"\xff\xff\xff\xff")
    with pytest.raises(WireError):
        reader.next_frame()
    with pytest.raises(UsageError):
        reader.feed(b"\x00\x00\x00\x01a")
    with pytest.raises(UsageError):
        reader.next_frame()


def test_feed_before_drain_is_usage_error() -> None:
    reader = FrameReader()
    reader.feed(prefix(b"a") + prefix(b"b"))
    assert reader.next_frame() == b"a"
    with pytest.raises(UsageError):
        reader.feed(b"more")


def test_smaller_cap_is_enforced() -> None:
    reader = FrameReader(max_frame_bytes=16)
    reader.feed(prefix(b"x" * 17))
    with pytest.raises(WireError):
        reader.next_frame()


def test_cap_above_protocol_limit_rejected() -> None:
    with pytest.raises(UsageError):
        FrameReader(max_frame_bytes=MAX_FRAME_BYTES + 1)


def test_buffer_bounded_while_feeding_cap_frame() -> None:
    reader = FrameReader()
    data = prefix(b"\x01" * MAX_FRAME_BYTES)
    chunk_size = 64 * 1024
    sizes = []
    payloads: list[bytes] = []
    for start in range(0, len(data), chunk_size):
        payloads += drain(reader, data[start : start + chunk_size])
        sizes.append(reader.buffered)
    # 16 chunks of 64 KiB leave the last 4 bytes of the frame to come.
    assert max(sizes) == MAX_FRAME_BYTES
    assert sizes[-1] == 0
    assert len(payloads) == 1


def test_buffer_bounded_for_one_huge_chunk() -> None:
    # Four full frames and a 5th cut short, all in one 5 MiB chunk.
    frame = prefix(b"\x02" * MAX_FRAME_BYTES)
    reader = FrameReader()
    reader.feed(frame * 4 + frame[: MAX_FRAME_BYTES // 2])
    count = 0
    while reader.next_frame() is not None:
        count += 1
        assert reader.buffered <= BUFFER_BOUND
    assert count == 4
    assert reader.buffered == MAX_FRAME_BYTES // 2


def test_at_frame_boundary_tracks_position() -> None:
    reader = FrameReader()
    assert reader.at_frame_boundary
    drain(reader, b"\x00\x00")
    assert not reader.at_frame_boundary
    drain(reader, b"\x00\x01z")
    assert reader.at_frame_boundary


def test_discard_drops_partial_frame() -> None:
    reader = FrameReader()
    drain(reader, b"\x00\x00\x00\x09abc")
    reader.discard()
    assert reader.buffered == 0
    assert reader.at_frame_boundary


def test_encode_frame_prefix() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_encode_frame_rejects_empty() -> None:
    with pytest.raises(UsageError):
        encode_frame(b"")


def test_encode_frame_rejects_oversize() -> None:
    with pytest.raises(UsageError):
        encode_frame(b"\x00" * (MAX_FRAME_BYTES + 1))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), cuts=st.lists(st.integers(0, 64), max_size=8))
def test_reader_fuzz_only_frames_or_wire_error(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut <= len(data))})
    reader = FrameReader(max_frame_bytes=32)
    for start, end in zip(bounds, bounds[1:]):
        try:
            for payload in drain(reader, data[start:end]):
                assert 1 <= len(payload) <= 32
        except WireError:
            return
        assert reader.buffered <= 32 + FRAME_HEADER_BYTES


# --- C07: header bombs and chunked input ----------------------------------------


@pytest.mark.parametrize("vector", vectors("C07", "input_hex"))
def test_c07_as_payload_rejected(vector: dict[str, Any]) -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex(vector["input_hex"]))
    assert caught.value.field == "frame"


C07_RAW_HEADER_BOMBS = [
    pytest.param(vector, id=vector["name"])
    for vector in load_case("C07")["vectors"]
    if len(vector.get("input_hex", "")) >= 8
]


def test_c07_has_five_raw_header_bombs() -> None:
    assert len(C07_RAW_HEADER_BOMBS) == 5


@pytest.mark.parametrize("vector", C07_RAW_HEADER_BOMBS)
def test_c07_as_stream_rejected_at_header(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["input_hex"])
    length = int.from_bytes(data[:4], "big")
    reader = FrameReader()
    reader.feed(data)
    with pytest.raises(WireError) as caught:
        reader.next_frame()
    assert caught.value.reason == f"frame length {length} exceeds the limit of {MAX_FRAME_BYTES} bytes"
    assert reader.buffered == 0


def test_c07_reserved_byte_stream_waits() -> None:
    # Two bytes are not yet a length prefix, so the reader must wait.
    vector = next(v for v in load_case("C07")["vectors"] if v["name"] == "reserved_byte_0xc1")
    reader = FrameReader()
    assert drain(reader, bytes.fromhex(vector["input_hex"])) == []
    assert reader.buffered == 2


def test_c07_reserved_byte_payload_rejected() -> None:
    vector = next(v for v in load_case("C07")["vectors"] if v["name"] == "reserved_byte_0xc1")
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex(vector["input_hex"]))
    assert caught.value.reason == "not valid msgpack (reserved type byte)"


def test_c07_byte_by_byte_one_frame_at_end() -> None:
    vector = next(v for v in load_case("C07")["vectors"] if v["name"] == "one_frame_byte_by_byte")
    chunks = framed_chunks([bytes.fromhex(chunk) for chunk in vector["chunks_hex"]])
    reader = FrameReader()
    results = [drain(reader, chunk) for chunk in chunks]
    assert all(result == [] for result in results[:-1])
    assert len(results[-1]) == 1
    assert decode_payload(results[-1][0]) == {
        "type": "event",
        "event": {"kind": "note", "payload": {"text": "x" * 40}},
    }


@pytest.mark.parametrize(
    ("name", "expected_counts"),
    [("two_frames_one_chunk", [2]), ("frame_plus_half", [1, 1]), ("eof_with_partial_frame", [0])],
)
def test_c07_chunked_frame_counts(name: str, expected_counts: list[int]) -> None:
    vector = next(v for v in load_case("C07")["vectors"] if v["name"] == name)
    chunks = framed_chunks([bytes.fromhex(chunk) for chunk in vector["chunks_hex"]])
    reader = FrameReader()
    assert [len(drain(reader, chunk)) for chunk in chunks] == expected_counts


def test_c07_chunks_as_raw_stream_rejected() -> None:
    # Unframed, the first four bytes 82 a4 74 79 read as a length of 2.2 GB.
    vector = next(v for v in load_case("C07")["vectors"] if v["name"] == "one_frame_byte_by_byte")
    reader = FrameReader()
    chunks = [bytes.fromhex(chunk) for chunk in vector["chunks_hex"]]
    for chunk in chunks[:3]:
        assert drain(reader, chunk) == []
    reader.feed(chunks[3])
    with pytest.raises(WireError):
        reader.next_frame()


# --- the payload decoder: C06 and the value model ---------------------------------

# Outcome of each C06 vector as a frame payload: the decoded value, or the
# field and reason of the rejection. Bytes are allowed at this layer; the
# message schema decides where (see test_wire.py).
C06_OUTCOMES: dict[str, Any] = {
    "bin_value_where_str_expected": {"id": b"abc"},
    "bin_key": ("frame", "map key b'id' must be text, got bytes"),
    "int_key": ("frame", "map key must be text, got int"),
    "nil_key": ("frame", "map key must be text, got NoneType"),
    "array_key": ("frame", "map key must be text, got list"),
    "invalid_utf8_str": ("frame", "text is not valid UTF-8 (invalid continuation byte at byte 0 of a string)"),
    "overlong_utf8_str": ("frame", "text is not valid UTF-8 (invalid start byte at byte 0 of a string)"),
    "valid_reference": {"id": "ab" * 32, "note": "ok"},
}


def test_c06_outcomes_cover_every_vector() -> None:
    assert sorted(C06_OUTCOMES) == sorted(vector["name"] for vector in load_case("C06")["vectors"])


@pytest.mark.parametrize("vector", vectors("C06", "input_hex"))
def test_c06_payload_outcome(vector: dict[str, Any]) -> None:
    expected = C06_OUTCOMES[vector["name"]]
    payload = bytes.fromhex(vector["input_hex"])
    if isinstance(expected, dict):
        assert decode_payload(payload) == expected
        return
    with pytest.raises(WireError) as caught:
        decode_payload(payload)
    assert (caught.value.field, caught.value.reason) == expected


def test_depth_bomb_rejected_cleanly() -> None:
    # 100,000 nested fixarrays: msgpack 1.x stops at its own 1024-level stack.
    with pytest.raises(WireError) as caught:
        decode_payload(b"\x91" * 100_000 + b"\xc0")
    assert caught.value.field == "frame"
    assert caught.value.reason == f"nesting is deeper than {MAX_FRAME_DEPTH} levels"


def test_nesting_below_msgpack_stack_rejected() -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(b"\x91" * 1000 + b"\xc0")
    assert caught.value.reason == f"nesting is deeper than {MAX_FRAME_DEPTH} levels"
    assert caught.value.field == "[0]" * MAX_FRAME_DEPTH


def test_nesting_at_limit_accepted() -> None:
    value = decode_payload(b"\x91" * (MAX_FRAME_DEPTH - 1) + b"\x90")
    depth = 1
    while value:
        value = value[0]
        depth += 1
    assert depth == MAX_FRAME_DEPTH


def test_nesting_one_past_limit_rejected() -> None:
    with pytest.raises(WireError):
        decode_payload(b"\x91" * MAX_FRAME_DEPTH + b"\x90")


def test_float64_one_stays_float() -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex("81a16ecb3ff0000000000000"))
    assert caught.value.field == "n"
    assert caught.value.reason == "non-integer number 1.0 is not allowed (msgpack float)"


def test_float_in_array_named_by_index() -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(encode_payload({"a": [1, 2, 0.5]}))
    assert caught.value.field == "a[2]"


@pytest.mark.parametrize(
    ("hex_payload", "reason"),
    [
        ("d40100", "msgpack ext type 1 is not allowed"),
        ("c7000a", "msgpack ext type 10 is not allowed"),
        ("d6ff00000000", "msgpack timestamp (ext type -1) is not allowed"),
    ],
    ids=["fixext1", "ext8-empty", "timestamp"],
)
def test_ext_types_rejected(hex_payload: str, reason: str) -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex("81a178" + hex_payload))
    assert caught.value.field == "x"
    assert caught.value.reason == reason


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(b"\x01\x02")
    assert caught.value.reason == "frame contains bytes after its msgpack value"


def test_truncated_value_rejected() -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex("82a16101"))
    assert caught.value.reason == "msgpack value is truncated: the frame ends inside it"


def test_array_header_longer_than_frame_rejected() -> None:
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex("ddffffffff"))
    assert "larger than the frame could hold" in caught.value.reason


def test_safe_integer_bounds() -> None:
    assert decode_payload(encode_payload([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER])) == [
        MAX_SAFE_INTEGER,
        -MAX_SAFE_INTEGER,
    ]
    with pytest.raises(WireError) as caught:
        decode_payload(encode_payload({"big": MAX_SAFE_INTEGER + 1}))
    assert caught.value.field == "big"


def test_duplicate_nested_key_named() -> None:
    # {"payload": {"a": 1, "a": 2}}
    with pytest.raises(WireError) as caught:
        decode_payload(bytes.fromhex("81a77061796c6f616482a16101a16102"))
    assert caught.value.field == "payload.a"
    assert caught.value.reason == "duplicate map key 'a'"


def test_oversize_payload_rejected() -> None:
    with pytest.raises(WireError):
        decode_payload(b"\xc0" * (MAX_FRAME_BYTES + 1))


# Values of the wire model: the canonical JSON model plus bytes.
WIRE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=WIRE_VALUES)
def test_wire_value_round_trip(value: Any) -> None:
    assert decode_payload(encode_payload(value)) == value


# Any msgpack value, also outside our model.
MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=MSGPACK_VALUES)
def test_any_msgpack_value_decodes_or_wire_error(value: Any) -> None:
    try:
        decode_payload(msgpack.packb(value, use_bin_type=True))
    except WireError:
        pass


@settings(max_examples=500, deadline=None)
@given(payload=st.binary(min_size=1, max_size=64))
def test_arbitrary_bytes_decode_or_wire_error(payload: bytes) -> None:
    try:
        decode_payload(payload)
    except WireError:
        pass


def test_million_empty_arrays_rejected() -> None:
    # One byte per empty array: the cheapest values to send and the costliest to check.
    count = MAX_FRAME_BYTES - 5
    payload = b"\xdd" + count.to_bytes(4, "big") + b"\x90" * count
    with pytest.raises(WireError) as raised:
        decode_payload(payload)

    assert raised.value.field == "frame"
    assert str(raised.value.reason) == f"frame contains more than {MAX_FRAME_CONTAINERS} arrays and maps"


def test_containers_at_limit_accepted() -> None:
    # The message map plus an items array of 65,534 empty maps: 65,536 containers.
    payload = encode_payload({"type": "items", "items": [{}] * (MAX_FRAME_CONTAINERS - 2)})
    assert len(decode_payload(payload)["items"]) == MAX_FRAME_CONTAINERS - 2


def test_containers_over_limit_rejected() -> None:
    payload = encode_payload({"type": "items", "items": [{}] * (MAX_FRAME_CONTAINERS - 1)})
    with pytest.raises(WireError, match="more than 65536 arrays and maps"):
        decode_payload(payload)
