"""Property tests of every decoder of outside bytes: any input gives a value or our own error type.

Each decoder gets arbitrary bytes and seeded mutations: a seed from
``bench.fuzz`` (the vectors of tests/data/cases, the published files and
signed events, bundles, states, frames and handshakes) with a byte range
replaced by drawn bytes. Anything raised outside the decoder's own error
types fails the test. The long runs with a million inputs per decoder are
``python -m bench.fuzz``; the last test runs its smoke mode.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import (
    DECODERS,
    SMOKE_COUNT,
    ConfigTarget,
    DocumentsTarget,
    EventsTarget,
    HttpTarget,
    Rejected,
    WireTarget,
    built_seeds,
    chunks_of,
    fixture_seeds,
    json_seeds_from_cases,
    msgpack_seeds_from_cases,
    run_smoke,
)
from node.config import ConfigError, load_config
from protocol import (
    CanonicalJSONError,
    EventError,
    WireError,
    canonical_bytes,
    default_trust,
    parse_json,
    read_document,
    validate_event,
)
from protocol.frames import FrameReader, decode_payload, encode_frame
from protocol.wire import ProtocolViolation

FUZZ_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """Return seeds with one byte range replaced by drawn bytes, or arbitrary bytes."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        seed = draw(st.sampled_from(seeds))
        start = draw(st.integers(0, len(seed)))
        end = draw(st.integers(start, min(len(seed), start + 16)))
        return seed[:start] + draw(st.binary(max_size=12)) + seed[end:]

    return st.one_of(build(), st.binary(max_size=256))


@functools.cache
def json_seeds() -> list[bytes]:
    built = built_seeds()
    return [
        *json_seeds_from_cases(),
        *fixture_seeds(),
        canonical_bytes(built.bundle),
        canonical_bytes(built.state),
        *(canonical_bytes(event) for event in built.events),
    ]


@functools.cache
def frame_seeds() -> list[bytes]:
    return [encode_frame(payload) for payload in msgpack_seeds_from_cases()]


@functools.cache
def wire_target() -> WireTarget:
    return WireTarget()


# --- protocol decoders -------------------------------------------------------


@FUZZ_SETTINGS
@given(data=mutated(json_seeds()))
def test_parse_json_value_or_own_error(data: bytes) -> None:
    try:
        value = parse_json(data)
    except CanonicalJSONError:
        return
    assert parse_json(canonical_bytes(value)) == value


@FUZZ_SETTINGS
@given(stream=mutated(frame_seeds()), chunk=st.integers(1, 64))
def test_frames_value_or_wire_error(stream: bytes, chunk: int) -> None:
    reader = FrameReader()
    try:
        for start in range(0, len(stream), chunk):
            reader.feed(stream[start : start + chunk])
            while (payload := reader.next_frame()) is not None:
                decode_payload(payload)
    except WireError:
        return


@FUZZ_SETTINGS
@given(data=st.data())
def test_receive_data_never_raises(data: st.DataObject) -> None:
    target = wire_target()
    state = data.draw(st.sampled_from(target.states), label="state")
    frames = state.frames or [encode_frame(payload) for payload in msgpack_seeds_from_cases()[:3]]
    stream = data.draw(mutated([b"".join(frames), *frames]), label="stream")
    selector = data.draw(st.integers(0, 255), label="selector")
    # A shallow copy with a fresh reader is independent of the template,
    # because the rest of a connection's state is enums and bytes.
    connection = copy.copy(state.connection)
    connection._reader = FrameReader()  # noqa: SLF001

    events = []
    for chunk in chunks_of(stream, selector):
        events.extend(connection.receive_data(chunk))
    events.extend(connection.receive_data(b""))
    violations = [event for event in events if isinstance(event, ProtocolViolation)]
    for violation in violations:
        assert violation.code in ("invalid_frame", "invalid_message", "unexpected_message")


def test_wire_states_cover_both_roles() -> None:
    names = [state.name for state in wire_target().states]
    assert names == [
        f"{role}/{state}"
        for role in ("initiator", "responder")
        for state in ("fresh", "peer_hello_first", "hello_sent", "hellos_exchanged", "auth_sent", "ready", "our_side_closed")
    ]


@functools.cache
def documents_target() -> DocumentsTarget:
    return DocumentsTarget()


@FUZZ_SETTINGS
@given(data=mutated(documents_target().seeds()))
def test_documents_value_or_own_error(data: bytes) -> None:
    try:
        documents_target().run(data)
    except Rejected as rejected:
        assert rejected.label in ("CanonicalJSONError", "DocumentError")


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53 - 1), 2**53 - 1),
        st.text(max_size=20),
        st.sampled_from(["sha256:" + "0" * 64, "2026-05-18T00:22:39Z", "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY", "https://a.example/"]),
    )
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _replace(value: Any, path: list[Any], new: Any) -> Any:
    if not path:
        return new
    head = path[0]
    copied = dict(value) if isinstance(value, dict) else list(value)
    copied[head] = _replace(value[head], path[1:], new)
    return copied


@st.composite
def hostile_events(draw: st.DrawFn) -> Any:
    """Return a signed seed event with one node anywhere in it replaced by a drawn JSON value."""
    event = draw(st.sampled_from(built_seeds().events))
    path: list[Any] = []
    node: Any = event
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    return _replace(event, path, draw(json_values()))


@FUZZ_SETTINGS
@given(raw=hostile_events())
def test_validate_event_value_or_event_error(raw: Any) -> None:
    try:
        validate_event(raw, "pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY", default_trust())
    except EventError:
        return


@FUZZ_SETTINGS
@given(data=mutated(EventsTarget().seeds()))
def test_events_bytes_value_or_own_error(data: bytes) -> None:
    try:
        EventsTarget().run(data)
    except Rejected as rejected:
        assert rejected.label.split("/")[0] in ("CanonicalJSONError", "EventError")


# --- node decoders -----------------------------------------------------------


@pytest.fixture(scope="module")
def http_target() -> Any:
    target = HttpTarget()
    yield target
    target.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=mutated(json_seeds()))
def test_post_events_never_5xx(http_target: HttpTarget, body: bytes) -> None:
    try:
        label = trio.run(http_target.arun, body)
    except Rejected as rejected:
        label = rejected.label
    assert not label.startswith("HTTP 5")


# Without "~": a "~name" path expands against this machine's user database.
_TOML_TEXT = st.text(st.characters(blacklist_characters="~", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(text=_TOML_TEXT, seed_index=st.integers(0, 3))
def test_config_file_value_or_config_error(text: str, seed_index: int) -> None:
    target = ConfigTarget()
    try:
        seed = target.seeds()[seed_index].decode("utf-8").replace("~", "")
        try:
            target.run((seed + text).encode("utf-8"))
        except Rejected as rejected:
            assert rejected.label == "ConfigError"
    finally:
        target.close()


def test_config_unknown_user_home(tmp_path: Path) -> None:
    # The reproducer the fuzzer found, reduced: "~name" for a user that does
    # not exist must be a ConfigError naming data_dir.
    path = tmp_path / "config.toml"
    path.write_text('data_dir = "~nosuchuser-pith-fuzz/pith"\n', "utf-8")
    with pytest.raises(ConfigError, match="data_dir.*cannot expand ~nosuchuser-pith-fuzz: no such user or no home directory"):
        load_config({}, {"HOME": str(tmp_path)}, path)


# --- the bench runner --------------------------------------------------------


def test_fuzz_smoke_finds_nothing(tmp_path: Path) -> None:
    reports = run_smoke(tmp_path)
    assert [report.decoder for report in reports] == list(DECODERS)
    for report in reports:
        assert report.count == SMOKE_COUNT
        assert sum(report.uncaught.values()) == 0
        assert sum(report.accepted.values()) + sum(report.rejected.values()) == SMOKE_COUNT
    assert list(tmp_path.iterdir()) == []


def test_documents_seed_state_accepted() -> None:
    assert documents_target().run(canonical_bytes(built_seeds().state)) == "accepted/state"


def test_read_document_of_seed_bundle() -> None:
    assert read_document(canonical_bytes(built_seeds().bundle))["bundle_type"] == "pith_open_graph_bundle"
