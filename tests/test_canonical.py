"""Canonical JSON: the hostile-input vectors C01 to C04, values outside the model, and properties."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.canonical import (
    MAX_SAFE_INTEGER,
    Limits,
    canonical_bytes,
    canonical_sha256,
    parse_json,
)
from protocol.errors import CanonicalJSONError, InvalidInput, WireError
from protocol.frames import decode_payload

from conftest import load_case

CANONICAL_CASES = ("C01", "C02", "C03", "C04")

# Expected outcome of every JSON text vector: None to accept, or the field
# path and a phrase the rejection reason must contain.
EXPECTED_JSON_OUTCOMES: dict[tuple[str, str], tuple[str, str] | None] = {
    ("C01", "astral_key_vs_U+FFFF"): None,
    ("C01", "mixed_keys"): None,
    ("C02", "lone_high_surrogate_value"): ("note", "unpaired surrogate"),
    ("C02", "lone_low_surrogate_value"): ("note", "unpaired surrogate"),
    ("C02", "lone_surrogate_in_key"): ("['\\ud800']", "object key contains an unpaired surrogate"),
    ("C02", "reversed_pair"): ("note", "unpaired surrogate"),
    ("C02", "valid_escaped_pair"): None,
    ("C03", "int_one"): None,
    ("C03", "float_one"): ("n", "non-integer"),
    ("C03", "float_one_exponent"): ("n", "non-integer"),
    ("C03", "negative_zero"): ("n", "non-integer"),
    ("C03", "negative_zero_int_form"): ("n", "negative zero"),
    ("C03", "small_decimal"): ("n", "non-integer"),
    ("C03", "large_float"): ("n", "non-integer"),
    ("C03", "nan"): ("n", "not a finite number"),
    ("C03", "infinity"): ("n", "not a finite number"),
    ("C03", "neg_infinity"): ("n", "not a finite number"),
    ("C03", "max_safe"): None,
    ("C03", "two_pow_53"): ("n", "safe range"),
    ("C03", "two_pow_53_plus_1"): ("n", "safe range"),
    ("C03", "min_safe"): None,
    ("C03", "two_pow_64"): ("n", "safe range"),
    ("C03", "digits_4301"): ("n", "safe range"),
    ("C04", "dup_top_level"): ("url", "duplicate key 'url'"),
    ("C04", "dup_nested"): ("payload.a", "duplicate key 'a'"),
    ("C04", "dup_via_escape"): ("url", "duplicate key 'url'"),
    ("C04", "same_key_different_objects"): None,
}


def _vectors(kind: str) -> list[Any]:
    params = []
    for case_id in CANONICAL_CASES:
        for vector in load_case(case_id)["vectors"]:
            if kind in vector:
                params.append(pytest.param(case_id, vector, id=f"{case_id}-{vector['name']}"))
    return params


JSON_VECTORS = _vectors("input_json_text")
MSGPACK_VECTORS = _vectors("input_hex")


def test_vector_files_have_expected_counts() -> None:
    assert len(JSON_VECTORS) == 27
    assert len(MSGPACK_VECTORS) == 8
    assert len(EXPECTED_JSON_OUTCOMES) == len(JSON_VECTORS)


# --- JSON text vectors -------------------------------------------------------


@pytest.mark.parametrize(("case_id", "vector"), JSON_VECTORS)
def test_json_vector_outcome(case_id: str, vector: dict[str, Any]) -> None:
    expected = EXPECTED_JSON_OUTCOMES[(case_id, vector["name"])]
    data = vector["input_json_text"].encode("utf-8")

    if expected is None:
        value = parse_json(data)
        encoded = canonical_bytes(value)
        assert parse_json(encoded) == value
        assert canonical_bytes(parse_json(encoded)) == encoded
        if "expected_canonical_utf8_hex" in vector:
            assert encoded.hex() == vector["expected_canonical_utf8_hex"]
            assert hashlib.sha256(encoded).hexdigest() == vector["expected_sha256"]
            assert canonical_sha256(value) == vector["expected_sha256"]
        return

    field, phrase = expected
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json(data)
    assert caught.value.field == field
    assert phrase in caught.value.reason


@pytest.mark.parametrize(("case_id", "vector"), JSON_VECTORS)
def test_json_vector_same_as_text_input(case_id: str, vector: dict[str, Any]) -> None:
    # parse_json takes bytes or text; both must give the same outcome.
    text = vector["input_json_text"]
    try:
        from_bytes: Any = parse_json(text.encode("utf-8"))
    except CanonicalJSONError as error:
        from_bytes = (error.field, error.reason)
    try:
        from_text: Any = parse_json(text)
    except CanonicalJSONError as error:
        from_text = (error.field, error.reason)
    assert from_text == from_bytes


def test_astral_key_sorts_by_code_point() -> None:
    vector = load_case("C01")["vectors"][0]
    encoded = canonical_bytes(parse_json(vector["input_json_text"]))
    assert encoded.hex() != vector["divergent_utf16_order_utf8_hex"]
    assert hashlib.sha256(encoded).hexdigest() != vector["divergent_utf16_order_sha256"]


def test_mixed_keys_code_point_order() -> None:
    vector = load_case("C01")["vectors"][1]
    value = parse_json(vector["input_json_text"])
    order = [hex(ord(key)) for key in json.loads(canonical_bytes(value))]
    assert order == vector["expected_key_order_codepoints"]


def test_int_one_matches_python_today() -> None:
    vector = next(v for v in load_case("C03")["vectors"] if v["name"] == "int_one")
    encoded = canonical_bytes(parse_json(vector["input_json_text"]))
    assert encoded == vector["python_canonical_today"].encode("utf-8")
    assert hashlib.sha256(encoded).hexdigest() == vector["python_sha256_today"]


def test_rejection_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        parse_json(b'{"n":1.0}')


# --- msgpack vectors: input for the wire decoder ----------------------------


# These values arrive as frame payloads on the peer wire, not in JSON
# documents, so they go through the wire decoder. Expected outcome of each:
# None to accept, or the field path and a phrase the rejection reason must
# contain. A str with invalid UTF-8 fails inside msgpack, before any path
# exists, so the whole frame is named.
EXPECTED_MSGPACK_OUTCOMES: dict[tuple[str, str], tuple[str, str] | None] = {
    ("C02", "msgpack_str_with_cesu8_surrogate"): ("frame", "not valid UTF-8"),
    ("C03", "msgpack_float64_nan"): ("n", "non-finite number nan"),
    ("C03", "msgpack_float64_one"): ("n", "non-integer number 1.0"),
    ("C03", "msgpack_int_one"): None,
    ("C03", "msgpack_float32_1.1"): ("n", "non-integer number 1.100000023841858"),
    ("C03", "msgpack_uint64_max"): ("n", "safe range"),
    ("C03", "msgpack_int64_min"): ("n", "safe range"),
    ("C04", "msgpack_dup_map_key"): ("url", "duplicate map key 'url'"),
}


def test_msgpack_outcomes_cover_every_vector() -> None:
    assert len(EXPECTED_MSGPACK_OUTCOMES) == len(MSGPACK_VECTORS)


@pytest.mark.parametrize(("case_id", "vector"), MSGPACK_VECTORS)
def test_msgpack_vector_outcome(case_id: str, vector: dict[str, Any]) -> None:
    expected = EXPECTED_MSGPACK_OUTCOMES[(case_id, vector["name"])]
    payload = bytes.fromhex(vector["input_hex"])

    if expected is None:
        value = decode_payload(payload)
        assert canonical_bytes(value) == b'{"n":1}'
        return

    field, phrase = expected
    with pytest.raises(WireError) as caught:
        decode_payload(payload)
    assert caught.value.field == field
    assert phrase in caught.value.reason


def test_msgpack_int_one_same_as_json() -> None:
    vectors = {vector["name"]: vector for vector in load_case("C03")["vectors"]}
    from_msgpack = canonical_bytes(decode_payload(bytes.fromhex(vectors["msgpack_int_one"]["input_hex"])))
    assert from_msgpack == vectors["int_one"]["python_canonical_today"].encode("utf-8")
    assert hashlib.sha256(from_msgpack).hexdigest() == vectors["int_one"]["python_sha256_today"]


# --- Python values outside the model ----------------------------------------


def _nested_lists(depth: int) -> list[Any]:
    top: list[Any] = []
    current = top
    for _ in range(depth - 1):
        inner: list[Any] = []
        current.append(inner)
        current = inner
    return top


def _nested_objects(depth: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    current = top
    for _ in range(depth - 1):
        inner: dict[str, Any] = {}
        current["a"] = inner
        current = inner
    return top


OUTSIDE_MODEL = [
    pytest.param({"x": 1.5}, "x", "non-integer", id="float"),
    pytest.param({"x": float("nan")}, "x", "non-integer", id="nan"),
    pytest.param({"x": b"abc"}, "x", "type bytes", id="bytes"),
    pytest.param({"x": (1, 2)}, "x", "type tuple", id="tuple"),
    pytest.param({"x": {1, 2}}, "x", "type set", id="set"),
    pytest.param({"x": "a\ud800"}, "x", "unpaired surrogate", id="lone-surrogate-text"),
    pytest.param({"\udc00": 1}, "['\\udc00']", "unpaired surrogate", id="lone-surrogate-key"),
    pytest.param({"x": {1: "one"}}, "x", "object key 1 is not text", id="int-key"),
    pytest.param({"x": {None: 1}}, "x", "object key None is not text", id="none-key"),
    pytest.param({"x": 2**53}, "x", "safe range", id="two-pow-53"),
    pytest.param({"x": -(2**53)}, "x", "safe range", id="minus-two-pow-53"),
    pytest.param({"x": [0, 2**64]}, "x[1]", "safe range", id="two-pow-64-in-list"),
]


@pytest.mark.parametrize(("value", "field", "phrase"), OUTSIDE_MODEL)
def test_outside_model_rejected(value: Any, field: str, phrase: str) -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes(value)
    assert caught.value.field == field
    assert phrase in caught.value.reason


def test_safe_integer_bounds_accepted() -> None:
    assert canonical_bytes([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == b"[9007199254740991,-9007199254740991]"


def test_bool_stays_bool() -> None:
    assert canonical_bytes([True, False, 1, 0, None]) == b"[true,false,1,0,null]"


def test_deep_lists_rejected_by_depth() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes(_nested_lists(10_000))
    assert caught.value.field == "[0]" * 32
    assert caught.value.reason == "nesting is deeper than 32 levels"


def test_deep_objects_rejected_by_depth() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes(_nested_objects(10_000))
    assert caught.value.field == ".".join(["a"] * 32)


def test_deep_lists_with_huge_depth_limit() -> None:
    # The limit allows the nesting, but the standard encoder cannot recurse
    # that deep; the failure must still be a CanonicalJSONError.
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes(_nested_lists(10_000), Limits(max_depth=100_000))
    assert caught.value.reason == "nesting is too deep to encode"


def test_huge_list_beyond_max_values() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes(list(range(1_000_000)), Limits(max_values=10))
    assert caught.value.field == "[9]"
    assert caught.value.reason == "document contains more than 10 values"


def test_object_keys_count_as_values() -> None:
    # {"a": 1, "b": 2} contains 5 values: the object, two keys, two numbers.
    assert canonical_bytes({"a": 1, "b": 2}, Limits(max_values=5)) == b'{"a":1,"b":2}'
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes({"a": 1, "b": 2}, Limits(max_values=4))
    assert caught.value.field == "b"


def test_first_error_in_document_order() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        canonical_bytes({"a": [1, 1.5], "b": {2: 3}})
    assert caught.value.field == "a[1]"


def test_field_paths_quote_odd_keys() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json('{"x y":{"0":[{"a":1,"a":2}]}}')
    assert caught.value.field == "['x y']['0'][0].a"


# --- parse_json on hostile bytes --------------------------------------------


def test_parse_100k_open_brackets() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json(b"[" * 100_000)
    assert caught.value.field == ""


def test_parse_100k_balanced_brackets() -> None:
    with pytest.raises(CanonicalJSONError):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


def test_parse_33_levels_rejected() -> None:
    assert parse_json(b"[" * 32 + b"]" * 32) == _nested_lists(32)
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json(b"[" * 33 + b"]" * 33)
    assert caught.value.reason == "nesting is deeper than 32 levels"


BAD_DOCUMENTS = [
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b"\xef\xbb\xbf{}", "byte order mark", id="bom"),
    pytest.param(b'{"a":"\xff"}', "not valid UTF-8 at byte 6", id="invalid-utf8"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', "not valid UTF-8", id="cesu8-surrogate"),
    pytest.param(b"{}{}", "Extra data", id="two-documents"),
    pytest.param(b'{"a":1,}', "not valid JSON", id="trailing-comma"),
    pytest.param(b'"\x01"', "Invalid control character", id="raw-control-char"),
    pytest.param(b"[01]", "not valid JSON", id="leading-zero"),
    pytest.param(b"[1e400]", "non-integer", id="huge-exponent"),
    pytest.param(b"[-]", "not valid JSON", id="lone-minus"),
]


@pytest.mark.parametrize(("data", "phrase"), BAD_DOCUMENTS)
def test_bad_document_rejected(data: bytes, phrase: str) -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json(data)
    assert phrase in caught.value.reason


def test_max_bytes_counts_utf8_bytes_of_text() -> None:
    # Ten 4-byte characters and two quotes are 42 bytes but 12 characters.
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json('"' + "\U0001f600" * 10 + '"', Limits(max_bytes=41))
    assert caught.value.reason == "document of 42 bytes exceeds the limit of 41 bytes"


def test_max_bytes_exact_limit_accepted() -> None:
    assert parse_json('"' + "\U0001f600" * 10 + '"', Limits(max_bytes=42)) == "\U0001f600" * 10


def test_max_bytes_of_bytes_input() -> None:
    with pytest.raises(CanonicalJSONError) as caught:
        parse_json(b"[1, 2]", Limits(max_bytes=5))
    assert caught.value.reason == "document of 6 bytes exceeds the limit of 5 bytes"


def test_bytearray_and_memoryview_accepted() -> None:
    assert parse_json(bytearray(b"[1]")) == [1]
    assert parse_json(memoryview(b"[1]")) == [1]


# --- properties --------------------------------------------------------------

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(st.characters(codec="utf-8"), max_size=12)
)


def _model_values(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _LEAVES
    inner = _model_values(depth - 1)
    return (
        _LEAVES
        | st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=6), inner, max_size=4)
    )


MODEL_VALUES = _model_values(4)


@settings(max_examples=300, deadline=None)
@given(MODEL_VALUES)
def test_round_trip_of_model_values(value: Any) -> None:
    encoded = canonical_bytes(value)
    decoded = parse_json(encoded)
    assert decoded == value
    # == treats True as 1; the bytes tell them apart.
    assert canonical_bytes(decoded) == encoded


@settings(max_examples=200, deadline=None)
@given(MODEL_VALUES, st.booleans(), st.sampled_from([None, 1, "\t"]))
def test_any_spelling_gives_same_bytes(value: Any, ascii_only: bool, indent: int | str | None) -> None:
    # The same value written by another encoder (escaped, indented, keys in
    # insertion order) must canonicalise to the same bytes.
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert canonical_bytes(parse_json(text)) == canonical_bytes(value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        value = parse_json(data)
    except CanonicalJSONError:
        return
    assert canonical_bytes(value) == canonical_bytes(parse_json(data))


_JSON_ALPHABET = st.sampled_from(list('{}[]":,-+.0123456789eEtruefalsnul \\/bfnrtu\ud800\udc00\U0001f600aZ'))


@settings(max_examples=300, deadline=None)
@given(st.text(_JSON_ALPHABET, max_size=200))
def test_json_like_text_never_crashes(text: str) -> None:
    try:
        value = parse_json(text)
    except CanonicalJSONError:
        return
    assert canonical_bytes(value) == canonical_bytes(parse_json(text))
