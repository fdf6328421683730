"""The one timestamp form that events and aliases use.

A timestamp is UTC with second precision, written ``YYYY-MM-DDTHH:MM:SSZ``
(20 ASCII characters), for example ``2026-05-18T00:22:39Z``. No offsets, no
fractions, no lowercase ``t`` or ``z`` and no leap second 60. Years run
from 1970 to 9999, except where a caller passes another ``earliest_year``:
a record's ``submitted_at`` may be any four-digit year. The parser is a regular expression plus a calendar check, so it
behaves the same on every Python version, unlike ``datetime.fromisoformat``,
which accepts more forms from 3.11 on.

Because every timestamp has one spelling, string order equals time order, and
the merge compares timestamps as strings.
"""

from __future__ import annotations

import calendar
import functools
import re
import time

from .errors import InvalidInput, UsageError, quote_value

__all__ = [
    "MAX_FUTURE_SKEW_SECONDS",
    "parse_timestamp",
    "format_timestamp",
    "check_not_future",
]

# An event dated further than this after the receiving node's clock is
# rejected at ingest. The merge never reads a clock, so this bound is applied
# by node/ when an event arrives, not by merge().
MAX_FUTURE_SKEW_SECONDS = 600

# 9999-12-31T23:59:59Z, the last second the four-digit form can write.
_MAX_UNIX_SECONDS = 253_402_300_799

_TIMESTAMP = re.compile(r"\A(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z\Z", re.ASCII)


def parse_timestamp(text: object, field: str = "created_at", *, earliest_year: int = 1970) -> int:
    """Return the Unix time in seconds of a strict UTC timestamp.

    Raises:
        InvalidInput: ``text`` is not text in the form ``YYYY-MM-DDTHH:MM:SSZ``
            or names a date that does not exist.
    """
    if not isinstance(text, str):
        raise InvalidInput(field, f"timestamp must be text, got {type(text).__name__}")
    if len(text) != 20:
        raise InvalidInput(
            field, f"timestamp {quote_value(text)} is not in the form YYYY-MM-DDTHH:MM:SSZ"
        )
    result = _parse_valid_length(text, earliest_year)
    if isinstance(result, str):
        raise InvalidInput(field, result)
    return result


# Many events share a timestamp, and parsing is a pure function of the text,
# so results are cached. Errors are returned, not raised, so the message can
# name each caller's field.
@functools.lru_cache(maxsize=8192)
def _parse_valid_length(text: str, earliest_year: int) -> int | str:
    match = _TIMESTAMP.match(text)
    if match is None:
        return f"timestamp {quote_value(text)} is not in the form YYYY-MM-DDTHH:MM:SSZ"
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    if not earliest_year <= year <= 9999:
        return f"timestamp {text!r} has a year outside {earliest_year}..9999"
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return f"timestamp {text!r} names a date that does not exist"
    if hour > 23 or minute > 59 or second > 59:
        return f"timestamp {text!r} names a time that does not exist"
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def format_timestamp(unix_seconds: int | float) -> str:
    """Return the strict UTC form of a Unix time, truncated to whole seconds.

    Raises:
        UsageError: the time is before 1970 or after 9999, where the strict
            form does not exist.
    """
    if not 0 <= unix_seconds < _MAX_UNIX_SECONDS + 1:
        raise UsageError(f"Unix time {unix_seconds!r} is outside 1970..9999 and has no timestamp form")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(unix_seconds)))


def check_not_future(text: str, now_unix_seconds: int | float, field: str = "created_at") -> None:
    """Raise InvalidInput if ``text`` is later than ``now`` plus the allowed skew.

    The caller passes the clock reading, so this stays free of I/O.
    """
    when = parse_timestamp(text, field)
    limit = int(now_unix_seconds) + MAX_FUTURE_SKEW_SECONDS
    if when > limit:
        raise InvalidInput(
            field,
            f"timestamp {text} is more than {MAX_FUTURE_SKEW_SECONDS} seconds "
            f"after this node's clock ({format_timestamp(now_unix_seconds)})",
        )
