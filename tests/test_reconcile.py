"""Range-based set reconciliation: exact results, traffic, limits and hostile peers.

Ids are SHA-256 values of a counter, so every run gets the same sets, the
same messages and the same byte counts. Both sides run in memory and pass
payloads directly, as the node would through ``reconcile`` frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import UsageError, WireError
from protocol.reconcile import (
    BRANCH_FACTOR,
    DEFAULT_FRAME_BUDGET,
    DEFAULT_MAX_PEER_IDS,
    MAX_ID_LIST,
    MAX_MESSAGE_BYTES,
    MIN_FRAME_BUDGET,
    Mode,
    Range,
    Reconciler,
    SessionState,
    SortedIds,
    decode_message,
    encode_message,
    round_limit,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ZERO = bytes(32)
INFINITY = b"\xff" * 33
# Hypothesis runs many sessions, so these settings keep the run short.
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, database=None)


def make_id(number: int) -> bytes:
    return hashlib.sha256(b"reconcile-test-id:%d" % number).digest()


def make_ids(numbers: Iterable[int]) -> list[bytes]:
    return [make_id(number) for number in numbers]


def sync(
    initiator_ids: Iterable[bytes],
    responder_ids: Iterable[bytes],
    *,
    frame_budget: int = DEFAULT_FRAME_BUDGET,
    max_peer_ids: int = DEFAULT_MAX_PEER_IDS,
    initiator_key: bytes = KEY,
    responder_key: bytes = KEY,
    max_messages: int = 10_000,
    need_limit: int | None = None,
) -> tuple[Reconciler, Reconciler, list[bytes]]:
    """Run one session to its end and return both sides and every payload in order; ``need_limit`` applies to the initiator."""
    initiator = Reconciler(
        SortedIds(initiator_ids), initiator_key, frame_budget=frame_budget, max_peer_ids=max_peer_ids, need_limit=need_limit
    )
    responder = Reconciler(SortedIds(responder_ids), responder_key, frame_budget=frame_budget, max_peer_ids=max_peer_ids)
    payloads = [initiator.initiate()]
    receivers = (responder, initiator)
    while not (initiator.done and responder.done):
        assert len(payloads) < max_messages
        reply = receivers[(len(payloads) - 1) % 2].receive(payloads[-1])
        if reply is None:
            break
        payloads.append(reply)
    return initiator, responder, payloads


def assert_exact(initiator: Reconciler, responder: Reconciler, a: set[bytes], b: set[bytes]) -> None:
    assert initiator.have_ids == a - b
    assert initiator.need_ids == b - a
    assert responder.have_ids == b - a
    assert responder.need_ids == a - b


def differing_pair(size: int, only_initiator: int, only_responder: int) -> tuple[set[bytes], set[bytes]]:
    shared = set(make_ids(range(size)))
    a = shared | set(make_ids(range(10**7, 10**7 + only_initiator)))
    b = shared | set(make_ids(range(2 * 10**7, 2 * 10**7 + only_responder)))
    return a, b


def fingerprint_range(lower: bytes, upper: bytes, fingerprint: bytes = bytes(16)) -> Range:
    return Range(lower, upper, Mode.FINGERPRINT, fingerprint=fingerprint)


# --- Exact results ------------------------------------------------------------


@pytest.mark.parametrize(
    ("only_initiator", "only_responder"),
    [(0, 0), (1, 0), (0, 1), (100, 0), (0, 100), (50, 50), (100, 100)],
)
def test_exact_sets_for_differences(only_initiator: int, only_responder: int) -> None:
    a, b = differing_pair(2_000, only_initiator, only_responder)
    initiator, responder, _ = sync(a, b)
    assert initiator.done
    assert responder.done
    assert_exact(initiator, responder, a, b)


def test_both_empty_one_round_trip() -> None:
    initiator, responder, payloads = sync([], [])
    assert payloads == [b"\x01\x80\x00", b"\x01\x00"]
    assert initiator.have_ids == frozenset()
    assert initiator.need_ids == frozenset()
    assert responder.done


def test_initiator_empty_needs_everything() -> None:
    b = set(make_ids(range(500)))
    initiator, responder, _ = sync([], b)
    assert_exact(initiator, responder, set(), b)


def test_responder_empty_needs_everything() -> None:
    a = set(make_ids(range(500)))
    initiator, responder, _ = sync(a, [])
    assert_exact(initiator, responder, a, set())


def test_one_side_empty_small_budget() -> None:
    a = set(make_ids(range(3_000)))
    initiator, responder, payloads = sync(a, [], frame_budget=MIN_FRAME_BUDGET)
    assert_exact(initiator, responder, a, set())
    assert max(len(payload) for payload in payloads) <= MIN_FRAME_BUDGET
    assert len(payloads) == 67


def test_disjoint_sets_small_budget() -> None:
    a = set(make_ids(range(2_000)))
    b = set(make_ids(range(2_000, 4_000)))
    initiator, responder, payloads = sync(a, b, frame_budget=MIN_FRAME_BUDGET)
    assert_exact(initiator, responder, a, b)
    assert max(len(payload) for payload in payloads) <= MIN_FRAME_BUDGET


def test_need_limit_stops_session_early() -> None:
    b = set(make_ids(range(20_000)))
    initiator, responder, payloads = sync([], b, frame_budget=MIN_FRAME_BUDGET, need_limit=1_000)
    assert initiator.stopped_early is True
    assert initiator.done is True
    assert responder.done is True
    assert initiator.need_ids <= b
    # One message of at most MIN_FRAME_BUDGET bytes may overshoot the limit.
    assert 1_000 <= len(initiator.need_ids) < 1_000 + MIN_FRAME_BUDGET // 32
    assert decode_message(payloads[-1]) == [Range(ZERO, INFINITY, Mode.SKIP)]


def test_need_limit_sessions_converge() -> None:
    # Each session fetches what it learned; repeated sessions finish the job.
    a: set[bytes] = set()
    b = set(make_ids(range(5_000)))
    sessions = 0
    while a != b:
        assert sessions < 20
        initiator, _, _ = sync(a, b, frame_budget=MIN_FRAME_BUDGET, need_limit=1_000)
        a |= initiator.need_ids
        sessions += 1
    assert sessions == 5


def test_need_limit_must_be_positive() -> None:
    with pytest.raises(UsageError, match="need_limit must be at least 1, got 0"):
        Reconciler(SortedIds([]), KEY, need_limit=0)


def test_identical_large_sets_one_round_trip() -> None:
    ids = make_ids(range(100_000))
    initiator, responder, payloads = sync(ids, ids)
    assert len(payloads) == 2
    assert [len(payload) for payload in payloads] == [306, 2]
    assert initiator.have_ids == frozenset()
    assert responder.need_ids == frozenset()
    assert initiator.done
    assert responder.done


def test_one_difference_in_large_sets() -> None:
    a, b = differing_pair(100_000, 0, 1)
    initiator, responder, payloads = sync(a, b)
    assert_exact(initiator, responder, a, b)
    assert len(payloads) == 5
    assert sum(len(payload) for payload in payloads) == 1_767


def test_mismatched_keys_still_exact() -> None:
    # Every fingerprint differs, so the sides fall back to id lists
    # everywhere: slower, but the result never depends on a fingerprint match.
    a, b = differing_pair(300, 3, 4)
    initiator, responder, _ = sync(a, b, responder_key=OTHER_KEY)
    assert_exact(initiator, responder, a, b)


# Fingerprints from docs/reconciliation.md under KEY (bytes 0x00 to 0x1f).
EMPTY_FINGERPRINT = bytes.fromhex("a9fc8102f23dc8c39a3af5c5d5965461")
ID_ZERO_FINGERPRINT = bytes.fromhex("c3f3703633d6adc44512389a36459b25")


@pytest.mark.parametrize(
    ("ids", "fingerprint"),
    [([], EMPTY_FINGERPRINT), (make_ids([0]), ID_ZERO_FINGERPRINT)],
)
def test_fingerprint_vectors_match(ids: list[bytes], fingerprint: bytes) -> None:
    responder = Reconciler(SortedIds(ids), KEY)
    reply = responder.receive(encode_message([fingerprint_range(ZERO, INFINITY, fingerprint)]))
    assert reply == b"\x01\x00"
    assert responder.done


def test_fingerprint_follows_formula() -> None:
    ids = sorted(make_ids(range(1_000)))
    first = decode_message(Reconciler(SortedIds(ids), KEY).initiate())[0]
    in_range = [item for item in ids if item < first.upper]
    total = 0
    for item in in_range:
        digest = hashlib.blake2b(item, digest_size=32, key=KEY, person=b"pith-rec-item").digest()
        total = (total + int.from_bytes(digest, "little")) % 2**256
    data = len(in_range).to_bytes(8, "little") + total.to_bytes(32, "little")
    expected = hashlib.blake2b(data, digest_size=16, key=KEY, person=b"pith-rec-fp").digest()
    assert len(in_range) == 62
    assert first.fingerprint == expected


def test_equal_id_sums_still_differ() -> None:
    # The two sets have the same size and the same sum of ids mod 2**256,
    # the only inputs of an unkeyed sum fingerprint.
    first = 2**255 + 12345
    second = 2**254 + 999
    delta = 777
    shared = make_ids(range(100))
    a = shared + [first.to_bytes(32, "little"), second.to_bytes(32, "little")]
    b = shared + [(first + delta).to_bytes(32, "little"), (second - delta).to_bytes(32, "little")]
    sum_a = sum(int.from_bytes(item, "little") for item in a) % 2**256
    sum_b = sum(int.from_bytes(item, "little") for item in b) % 2**256
    assert sum_a == sum_b

    initiator, responder, _ = sync(a, b)
    assert_exact(initiator, responder, set(a), set(b))
    assert len(initiator.have_ids) == 2


def test_have_need_grow_before_done() -> None:
    a = set(make_ids(range(2_000)))
    initiator = Reconciler(SortedIds(a), KEY, frame_budget=MIN_FRAME_BUDGET)
    responder = Reconciler(SortedIds([]), KEY, frame_budget=MIN_FRAME_BUDGET)
    first_reply = responder.receive(initiator.initiate())
    assert first_reply is not None
    second_reply = initiator.receive(first_reply)
    assert second_reply is not None
    responder.receive(second_reply)
    assert not responder.done
    assert 0 < len(responder.need_ids) < 2_000


# --- Properties ---------------------------------------------------------------


@st.composite
def set_pairs(draw: st.DrawFn) -> tuple[set[bytes], set[bytes]]:
    pool = draw(st.integers(min_value=0, max_value=600))
    numbers = st.sets(st.integers(min_value=0, max_value=max(pool - 1, 0)), max_size=pool)
    return set(make_ids(draw(numbers))), set(make_ids(draw(numbers)))


@PROPERTY_SETTINGS
@given(pair=set_pairs(), small_budget=st.booleans())
def test_unions_equal_after_session(pair: tuple[set[bytes], set[bytes]], small_budget: bool) -> None:
    a, b = pair
    budget = MIN_FRAME_BUDGET if small_budget else DEFAULT_FRAME_BUDGET
    # The round limit is as tight as it gets: the peer may hold exactly its
    # real number of ids.
    initiator = Reconciler(SortedIds(a), KEY, frame_budget=budget, max_peer_ids=len(b))
    responder = Reconciler(SortedIds(b), KEY, frame_budget=budget, max_peer_ids=len(a))
    payload: bytes | None = initiator.initiate()
    sides = (responder, initiator)
    turn = 0
    while payload is not None and not sides[turn % 2].done:
        assert len(payload) <= budget
        payload = sides[turn % 2].receive(payload)
        turn += 1

    assert initiator.done
    assert responder.done
    assert a | initiator.need_ids == b | responder.need_ids
    assert a | responder.have_ids == a | b
    assert b | initiator.have_ids == a | b
    assert initiator.have_ids == responder.need_ids


# --- Messages -----------------------------------------------------------------


def test_message_round_trips_through_codec() -> None:
    ids = make_ids(range(3))
    middle = max(ids)[:2] + bytes(30)
    ranges = [
        Range(ZERO, min(ids), Mode.SKIP),
        Range(min(ids), middle, Mode.FINGERPRINT, fingerprint=b"\x07" * 16),
        Range(middle, INFINITY, Mode.ID_LIST, ids=(max(ids),)),
    ]
    assert decode_message(encode_message(ranges)) == ranges


def test_skip_everything_is_two_bytes() -> None:
    assert encode_message([Range(ZERO, INFINITY, Mode.SKIP)]) == b"\x01\x00"


def test_every_truncation_rejected() -> None:
    a, b = differing_pair(200, 3, 3)
    _, _, payloads = sync(a, b)
    modes = {item.mode for payload in payloads for item in decode_message(payload)}
    assert modes == set(Mode)
    for payload in payloads:
        for length in range(len(payload)):
            with pytest.raises(WireError):
                decode_message(payload[:length])


def test_trailing_byte_rejected() -> None:
    with pytest.raises(WireError) as info:
        decode_message(b"\x01\x00\x00")
    assert info.value.field == "payload"


def test_wrong_version_rejected() -> None:
    with pytest.raises(WireError) as info:
        decode_message(b"\x02\x00")
    assert info.value.field == "payload.version"


def test_oversized_payload_rejected() -> None:
    with pytest.raises(WireError) as info:
        decode_message(b"\x01" + bytes(MAX_MESSAGE_BYTES))
    assert info.value.field == "payload"


def test_missing_final_range_rejected() -> None:
    payload = encode_message([Range(ZERO, b"\x80" + bytes(31), Mode.SKIP)])
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges"


def test_decreasing_bounds_rejected() -> None:
    payload = encode_message(
        [
            fingerprint_range(ZERO, b"\x80" + bytes(31)),
            fingerprint_range(b"\x80" + bytes(31), b"\x40" + bytes(31)),
            Range(b"\x40" + bytes(31), INFINITY, Mode.SKIP),
        ]
    )
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[1].upper_bound"


def test_repeated_bound_rejected() -> None:
    bound = b"\x80" + bytes(31)
    payload = encode_message(
        [fingerprint_range(ZERO, bound), fingerprint_range(bound, bound), Range(bound, INFINITY, Mode.SKIP)]
    )
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[1].upper_bound"


def test_infinity_before_end_rejected() -> None:
    payload = encode_message([fingerprint_range(ZERO, INFINITY)]) + b"\x00"
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload"


def test_bound_with_trailing_zero_rejected() -> None:
    payload = b"\x01" + bytes([0x42, 0x80, 0x00]) + bytes(16) + b"\x00"
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].upper_bound"


def test_bound_longer_than_id_rejected() -> None:
    payload = b"\x01" + bytes([0x40 | 33]) + b"\x01" * 33 + bytes(16) + b"\x00"
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].upper_bound"


def test_adjacent_skips_rejected() -> None:
    payload = encode_message([Range(ZERO, b"\x80" + bytes(31), Mode.SKIP), Range(b"\x80" + bytes(31), INFINITY, Mode.SKIP)])
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[1]"


def test_id_list_count_over_limit_rejected() -> None:
    payload = b"\x01" + bytes([0x80, MAX_ID_LIST + 1]) + bytes(32 * (MAX_ID_LIST + 1))
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].count"


def test_huge_resolved_count_rejected() -> None:
    payload = b"\x01" + bytes([0xC0]) + b"\xff\xff" + bytes(64)
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].count"


def test_unordered_ids_rejected() -> None:
    ids = sorted(make_ids(range(2)))
    payload = encode_message([Range(ZERO, INFINITY, Mode.ID_LIST, ids=(ids[1], ids[0]))])
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].ids[1]"


def test_duplicate_ids_rejected() -> None:
    item = make_id(1)
    payload = encode_message([Range(ZERO, INFINITY, Mode.ID_LIST, ids=(item, item))])
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].ids[1]"


def test_id_outside_range_rejected() -> None:
    bound = b"\x80" + bytes(31)
    payload = encode_message(
        [Range(ZERO, bound, Mode.ID_LIST, ids=(b"\x90" + bytes(31),)), Range(bound, INFINITY, Mode.SKIP)]
    )
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].ids[0]"


def test_long_bitmap_rejected() -> None:
    payload = b"\x01" + bytes([0xC0]) + b"\x00\x00" + b"\x05" + bytes(5)
    with pytest.raises(WireError) as info:
        decode_message(payload)
    assert info.value.field == "payload.ranges[0].bitmap"


@FUZZ_SETTINGS
@given(payload=st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_responder(payload: bytes) -> None:
    responder = Reconciler(SortedIds(make_ids(range(200))), KEY)
    try:
        reply = responder.receive(payload)
    except WireError:
        assert responder.state is SessionState.FAILED
        return
    assert reply is None or len(reply) <= DEFAULT_FRAME_BUDGET


@FUZZ_SETTINGS
@given(body=st.binary(max_size=400))
def test_fuzz_versioned_bytes_initiator(body: bytes) -> None:
    initiator = Reconciler(SortedIds(make_ids(range(200))), KEY)
    initiator.initiate()
    try:
        reply = initiator.receive(b"\x01" + body)
    except WireError:
        assert initiator.state is SessionState.FAILED
        return
    assert reply is None or len(reply) <= DEFAULT_FRAME_BUDGET


def _session_payloads() -> list[bytes]:
    a, b = differing_pair(300, 5, 5)
    return sync(a, b)[2]


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_mutated_session_messages(data: st.DataObject) -> None:
    # Replays a real session up to one message, then changes one byte of it.
    a, b = differing_pair(300, 5, 5)
    payloads = _session_payloads()
    index = data.draw(st.integers(min_value=1, max_value=len(payloads) - 1))
    initiator = Reconciler(SortedIds(a), KEY)
    responder = Reconciler(SortedIds(b), KEY)
    assert initiator.initiate() == payloads[0]
    sides = (responder, initiator)
    for position in range(index - 1):
        assert sides[position % 2].receive(payloads[position]) == payloads[position + 1]

    original = payloads[index - 1]
    offset = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    value = data.draw(st.integers(min_value=0, max_value=255))
    mutated = original[:offset] + bytes([value]) + original[offset + 1 :]
    receiver = sides[(index - 1) % 2]
    try:
        receiver.receive(mutated)
    except WireError:
        assert receiver.state is SessionState.FAILED


def test_every_byte_flip_handled() -> None:
    a, b = differing_pair(300, 5, 5)
    first = _session_payloads()[0]
    for offset in range(len(first)):
        for flip in (0x01, 0x80, 0xFF):
            mutated = first[:offset] + bytes([first[offset] ^ flip]) + first[offset + 1 :]
            responder = Reconciler(SortedIds(b), KEY)
            try:
                responder.receive(mutated)
            except WireError:
                assert responder.state is SessionState.FAILED


# --- Hostile peers ------------------------------------------------------------


def _liar_reply(payload: bytes) -> bytes:
    """Return a reply with a wrong fingerprint for every range of ``payload``."""
    ranges = decode_message(payload)
    return encode_message(fingerprint_range(item.lower, item.upper, b"\xee" * 16) for item in ranges)


def test_wrong_fingerprints_hit_round_limit() -> None:
    honest = Reconciler(SortedIds(make_ids(range(1_000))), KEY, frame_budget=MIN_FRAME_BUDGET, max_peer_ids=100)
    limit = honest.max_rounds
    payload = honest.initiate()
    for _ in range(limit):
        reply = honest.receive(_liar_reply(payload))
        assert reply is not None
        payload = reply
    with pytest.raises(WireError) as info:
        honest.receive(_liar_reply(payload))
    assert info.value.field == "payload"
    assert honest.state is SessionState.FAILED
    assert honest.messages_received == limit + 1


def test_round_limit_for_small_peer() -> None:
    honest = Reconciler(SortedIds(make_ids(range(1_000))), KEY, frame_budget=MIN_FRAME_BUDGET, max_peer_ids=100)
    assert honest.max_rounds == 56


def test_wrong_fingerprints_only_lengthen_session() -> None:
    # The responder corrupts every fingerprint in its first two replies and
    # is honest after that; the result is still exact.
    a, b = differing_pair(3_000, 7, 9)
    initiator = Reconciler(SortedIds(a), KEY)
    responder = Reconciler(SortedIds(b), KEY)
    payload: bytes | None = initiator.initiate()
    replies = 0
    while payload is not None and not initiator.done:
        reply = responder.receive(payload)
        if reply is None:
            break
        replies += 1
        if replies <= 2:
            reply = encode_message(
                Range(item.lower, item.upper, item.mode, b"\xee" * 16 if item.fingerprint else b"", item.ids, item.bitmap)
                for item in decode_message(reply)
            )
        payload = initiator.receive(reply)
    assert_exact(initiator, responder, a, b)


def _rejected_reply(honest: Reconciler, ranges: list[Range]) -> WireError:
    with pytest.raises(WireError) as info:
        honest.receive(encode_message(ranges))
    assert honest.state is SessionState.FAILED
    return info.value


def test_resolved_without_id_list_rejected() -> None:
    honest = Reconciler(SortedIds(make_ids(range(1_000))), KEY)
    honest.initiate()
    error = _rejected_reply(honest, [Range(ZERO, INFINITY, Mode.RESOLVED, ids=(), bitmap=b"")])
    assert error.field == "payload.ranges[0]"


def test_first_message_resolved_rejected() -> None:
    responder = Reconciler(SortedIds(make_ids(range(10))), KEY)
    error = _rejected_reply(responder, [Range(ZERO, INFINITY, Mode.RESOLVED)])
    assert error.field == "payload"


def test_first_message_skip_rejected() -> None:
    responder = Reconciler(SortedIds(make_ids(range(10))), KEY)
    error = _rejected_reply(responder, [Range(ZERO, INFINITY, Mode.SKIP)])
    assert error.field == "payload"


def test_resolved_with_held_id_rejected() -> None:
    ids = make_ids(range(5))
    honest = Reconciler(SortedIds(ids), KEY)
    honest.initiate()
    error = _rejected_reply(honest, [Range(ZERO, INFINITY, Mode.RESOLVED, ids=(min(ids),), bitmap=b"\x00")])
    assert error.field == "payload.ranges[0].ids[0]"


def test_resolved_wrong_bitmap_length_rejected() -> None:
    honest = Reconciler(SortedIds(make_ids(range(5))), KEY)
    honest.initiate()
    error = _rejected_reply(honest, [Range(ZERO, INFINITY, Mode.RESOLVED, bitmap=b"\x00\x00")])
    assert error.field == "payload.ranges[0].bitmap"


def test_resolved_padding_bits_rejected() -> None:
    honest = Reconciler(SortedIds(make_ids(range(5))), KEY)
    honest.initiate()
    error = _rejected_reply(honest, [Range(ZERO, INFINITY, Mode.RESOLVED, bitmap=b"\x04")])
    assert error.field == "payload.ranges[0].bitmap"


def test_resolved_bitmap_marks_have() -> None:
    ids = sorted(make_ids(range(5)))
    honest = Reconciler(SortedIds(ids), KEY)
    honest.initiate()
    assert honest.receive(encode_message([Range(ZERO, INFINITY, Mode.RESOLVED, bitmap=b"\x88")])) is None
    assert honest.have_ids == frozenset({ids[0], ids[4]})
    assert honest.done


def test_too_many_peer_ids_rejected() -> None:
    honest = Reconciler(SortedIds([]), KEY, max_peer_ids=2)
    honest.initiate()
    offered = tuple(sorted(make_ids(range(3))))
    error = _rejected_reply(honest, [Range(ZERO, INFINITY, Mode.RESOLVED, ids=offered)])
    assert error.field == "payload"
    assert honest.need_ids == frozenset()


def test_peer_skip_ends_session_early() -> None:
    # A peer can always withhold ids; the session then ends with what the
    # peer chose to report.
    honest = Reconciler(SortedIds(make_ids(range(1_000))), KEY)
    honest.initiate()
    assert honest.receive(encode_message([Range(ZERO, INFINITY, Mode.SKIP)])) is None
    assert honest.done
    assert honest.have_ids == frozenset()


# --- Sessions and storage ------------------------------------------------------


def test_initiate_twice_is_usage_error() -> None:
    session = Reconciler(SortedIds([]), KEY)
    session.initiate()
    with pytest.raises(UsageError):
        session.initiate()


def test_receive_after_done_is_usage_error() -> None:
    initiator, _, payloads = sync([], [])
    assert initiator.done
    with pytest.raises(UsageError):
        initiator.receive(payloads[-1])


def test_receive_after_failure_is_usage_error() -> None:
    responder = Reconciler(SortedIds([]), KEY)
    with pytest.raises(WireError):
        responder.receive(b"")
    with pytest.raises(UsageError):
        responder.receive(b"\x01\x80\x00")


def test_roles_and_states_follow_table() -> None:
    initiator = Reconciler(SortedIds(make_ids(range(40))), KEY)
    responder = Reconciler(SortedIds(make_ids(range(41))), KEY)
    assert initiator.state is SessionState.NEW
    first = initiator.initiate()
    assert initiator.is_initiator
    assert initiator.state is SessionState.AWAITING_REPLY
    reply = responder.receive(first)
    assert not responder.is_initiator
    assert responder.state is SessionState.AWAITING_REPLY
    assert reply is not None
    final = initiator.receive(reply)
    assert final is not None
    assert initiator.state is SessionState.DONE
    assert responder.receive(final) is None
    assert responder.state is SessionState.DONE
    assert initiator.need_ids == frozenset({make_id(40)})


def test_counters_match_payloads() -> None:
    a, b = differing_pair(1_000, 2, 3)
    initiator, responder, payloads = sync(a, b)
    sent_by_initiator = sum(len(payload) for payload in payloads[0::2])
    sent_by_responder = sum(len(payload) for payload in payloads[1::2])
    assert initiator.bytes_sent == sent_by_initiator
    assert responder.bytes_received == sent_by_initiator
    assert responder.bytes_sent == sent_by_responder
    assert initiator.messages_sent + responder.messages_sent == len(payloads)


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "x" * 32])
def test_bad_session_key_is_usage_error(key: object) -> None:
    with pytest.raises(UsageError):
        Reconciler(SortedIds([]), key)  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", [MIN_FRAME_BUDGET - 1, MAX_MESSAGE_BYTES + 1])
def test_budget_out_of_range_is_usage_error(budget: int) -> None:
    with pytest.raises(UsageError):
        Reconciler(SortedIds([]), KEY, frame_budget=budget)


def test_key_changes_fingerprints() -> None:
    ids = make_ids(range(1_000))
    first = Reconciler(SortedIds(ids), KEY).initiate()
    second = Reconciler(SortedIds(ids), OTHER_KEY).initiate()
    assert first != second
    assert len(first) == len(second)


def test_sorted_ids_drops_duplicates() -> None:
    ids = make_ids([3, 1, 2, 1, 3])
    storage = SortedIds(ids)
    assert len(storage) == 3
    assert list(storage.ids_between(0, 3)) == sorted(set(ids))
    assert make_id(2) in storage


@pytest.mark.parametrize("item", [b"short", bytes(33), "a" * 32, 7])
def test_sorted_ids_rejects_bad_ids(item: object) -> None:
    with pytest.raises(UsageError):
        SortedIds([item])  # type: ignore[list-item]


class _UnsortedStorage:
    def __init__(self, ids: list[bytes]) -> None:
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def bisect_left(self, bound: bytes) -> int:
        return 0

    def id_at(self, index: int) -> bytes:
        return self._ids[index]

    def ids_between(self, start: int, stop: int) -> list[bytes]:
        return self._ids[start:stop]


def test_unsorted_storage_is_usage_error() -> None:
    ids = sorted(make_ids(range(3)), reverse=True)
    with pytest.raises(UsageError):
        Reconciler(_UnsortedStorage(ids), KEY)


def test_round_limit_values() -> None:
    # 2 * (split levels + 4) + 4 * ceil(40 bytes * all ids / budget)
    assert round_limit(0, DEFAULT_FRAME_BUDGET, 0) == 8
    assert round_limit(10**6, DEFAULT_FRAME_BUDGET, 10**6) == 2 * (4 + 4) + 4 * 153
    assert round_limit(0) == 2 * (5 + 4) + 4 * 1280


def test_split_uses_branch_factor() -> None:
    first = Reconciler(SortedIds(make_ids(range(1_000))), KEY).initiate()
    ranges = decode_message(first)
    assert len(ranges) == BRANCH_FACTOR
    assert {item.mode for item in ranges} == {Mode.FINGERPRINT}


def test_small_set_sends_id_list() -> None:
    first = Reconciler(SortedIds(make_ids(range(MAX_ID_LIST))), KEY).initiate()
    (only,) = decode_message(first)
    assert only.mode is Mode.ID_LIST
    assert len(only.ids) == MAX_ID_LIST

