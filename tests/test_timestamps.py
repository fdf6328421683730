"""The strict timestamp form YYYY-MM-DDTHH:MM:SSZ and the future-skew check."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import InvalidInput, UsageError
from protocol.timestamps import (
    MAX_FUTURE_SKEW_SECONDS,
    check_not_future,
    format_timestamp,
    parse_timestamp,
)

# 2026-05-18T00:22:39Z, the created_at of the published registry events.
PUBLISHED_TIME = 1_779_063_759
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z

ACCEPTED = [
    ("2026-05-18T00:22:39Z", PUBLISHED_TIME),
    ("1970-01-01T00:00:00Z", 0),
    ("9999-12-31T23:59:59Z", LAST_SECOND),
    ("2024-02-29T12:00:00Z", 1_709_208_000),
    ("2000-02-29T00:00:00Z", 951_782_400),
    ("2017-11-01T18:04:31Z", 1_509_559_471),
]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED)
def test_strict_timestamp_accepted(text: str, seconds: int) -> None:
    assert parse_timestamp(text) == seconds


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED)
def test_format_inverts_parse(text: str, seconds: int) -> None:
    assert format_timestamp(seconds) == text


REJECTED = [
    pytest.param("2026-05-18T00:22:39.5Z", "form", id="fraction"),
    pytest.param("2026-05-18T00:22:39.281193Z", "form", id="receipt-microseconds"),
    pytest.param("2026-05-18T00:22:39+00:00", "form", id="offset"),
    pytest.param("2026-05-18T00:22:39-00:00", "form", id="negative-offset"),
    pytest.param("2026-05-18T00:22:39", "form", id="no-zone"),
    pytest.param("2026-05-18t00:22:39Z", "form", id="lowercase-t"),
    pytest.param("2026-05-18T00:22:39z", "form", id="lowercase-z"),
    pytest.param("2026-05-18 00:22:39Z", "form", id="space-separator"),
    pytest.param("20260518T002239Z", "form", id="basic-format"),
    pytest.param("2026-5-18T00:22:39Z", "form", id="one-digit-month"),
    pytest.param("2026-05-18T00:22:39Z\n", "form", id="trailing-newline"),
    pytest.param(" 2026-05-18T00:22:39Z", "form", id="leading-space"),
    pytest.param("２026-05-18T00:22:39Z", "form", id="fullwidth-digit"),
    pytest.param("+2026-05-18T00:22:39Z", "form", id="signed-year"),
    pytest.param("2026-02-30T00:00:00Z", "date that does not exist", id="february-30"),
    pytest.param("2023-02-29T00:00:00Z", "date that does not exist", id="february-29-common-year"),
    pytest.param("1900-02-29T00:00:00Z", "year outside", id="year-1900"),
    pytest.param("2026-04-31T00:00:00Z", "date that does not exist", id="april-31"),
    pytest.param("2026-00-10T00:00:00Z", "date that does not exist", id="month-0"),
    pytest.param("2026-13-10T00:00:00Z", "date that does not exist", id="month-13"),
    pytest.param("2026-05-00T00:00:00Z", "date that does not exist", id="day-0"),
    pytest.param("2026-05-18T24:00:00Z", "time that does not exist", id="hour-24"),
    pytest.param("2026-05-18T00:60:00Z", "time that does not exist", id="minute-60"),
    pytest.param("2016-12-31T23:59:60Z", "time that does not exist", id="leap-second"),
    pytest.param("1969-12-31T23:59:59Z", "year outside 1970..9999", id="year-1969"),
    pytest.param("0000-01-01T00:00:00Z", "year outside 1970..9999", id="year-0"),
]


@pytest.mark.parametrize(("text", "phrase"), REJECTED)
def test_loose_timestamp_rejected(text: str, phrase: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_timestamp(text, "payload.signed_at")
    assert caught.value.field == "payload.signed_at"
    assert phrase in caught.value.reason


@pytest.mark.parametrize("value", [None, 1_779_063_759, b"2026-05-18T00:22:39Z", ["2026-05-18T00:22:39Z"]])
def test_non_text_timestamp_rejected(value: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_timestamp(value)
    assert caught.value.field == "created_at"
    assert "must be text" in caught.value.reason


def test_long_text_quoted_short() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_timestamp("2" * 1_000_000)
    assert len(str(caught.value)) < 200


# --- format_timestamp -----------------------------------------------------------


def test_format_truncates_fraction() -> None:
    assert format_timestamp(PUBLISHED_TIME + 0.999) == "2026-05-18T00:22:39Z"


@pytest.mark.parametrize("seconds", [-1, -0.5, LAST_SECOND + 1, float("nan"), float("inf")])
def test_format_outside_range_raises(seconds: float) -> None:
    # Before 1970 or after 9999 the result would not parse, so it raises.
    with pytest.raises(UsageError):
        format_timestamp(seconds)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=LAST_SECOND))
def test_format_parse_round_trip(seconds: int) -> None:
    assert parse_timestamp(format_timestamp(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=LAST_SECOND), st.integers(min_value=0, max_value=LAST_SECOND))
def test_text_order_is_time_order(first: int, second: int) -> None:
    # The merge compares timestamps as text, which is right only if the
    # one spelling sorts like the time it names.
    assert (format_timestamp(first) < format_timestamp(second)) == (first < second)


# --- check_not_future -----------------------------------------------------------


def test_past_timestamp_passes() -> None:
    check_not_future("2026-05-18T00:22:39Z", PUBLISHED_TIME + 86_400)


def test_skew_limit_is_inclusive() -> None:
    assert MAX_FUTURE_SKEW_SECONDS == 600
    check_not_future("2026-05-18T00:32:39Z", PUBLISHED_TIME)


def test_one_second_past_skew_rejected() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_not_future("2026-05-18T00:32:40Z", PUBLISHED_TIME, "created_at")
    assert caught.value.field == "created_at"
    assert caught.value.reason == (
        "timestamp 2026-05-18T00:32:40Z is more than 600 seconds after "
        "this node's clock (2026-05-18T00:22:39Z)"
    )


def test_fractional_now_truncated() -> None:
    check_not_future("2026-05-18T00:32:39Z", PUBLISHED_TIME + 0.9)
    with pytest.raises(InvalidInput):
        check_not_future("2026-05-18T00:32:40Z", PUBLISHED_TIME + 0.9)


def test_malformed_time_checked_first() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_not_future("2026-05-18T00:22:39.5Z", PUBLISHED_TIME, "payload.created_at")
    assert caught.value.field == "payload.created_at"
    assert "form" in caught.value.reason
