"""The cron parser: fields, names, steps, macros, the day-of-month/day-of-week rule, DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from garrison.core import InvalidInput
from garrison.durable import Cron


def ts(s: str, tz: str = "UTC") -> float:
    return datetime.fromisoformat(s).replace(tzinfo=ZoneInfo(tz)).timestamp()


def nxt(expr: str, after: str, tz: str = "UTC") -> str:
    t = Cron.parse(expr, tz).next_after(ts(after, tz))
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %a")


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("* * * * *", "2026-01-01 10:00:30", "2026-01-01 10:01 Thu"),
        ("*/15 * * * *", "2026-01-01 10:01", "2026-01-01 10:15 Thu"),
        ("0 9-17/4 * * mon-fri", "2026-01-02 17:00", "2026-01-05 09:00 Mon"),
        ("30 2 1 * *", "2026-01-15 00:00", "2026-02-01 02:30 Sun"),
        ("0 0 29 feb *", "2026-03-01 00:00", "2028-02-29 00:00 Tue"),
        ("0 12 13 * fri", "2026-02-01 00:00", "2026-02-06 12:00 Fri"),  # dom OR dow
        ("0 0 * * 7", "2026-01-01 00:00", "2026-01-04 00:00 Sun"),
        ("@hourly", "2026-01-01 10:59", "2026-01-01 11:00 Thu"),
        ("@daily", "2026-01-01 10:59", "2026-01-02 00:00 Fri"),
        ("@weekly", "2026-01-01 10:59", "2026-01-04 00:00 Sun"),
        ("@monthly", "2026-01-31 10:59", "2026-02-01 00:00 Sun"),
        ("@yearly", "2026-01-01 00:00", "2027-01-01 00:00 Fri"),
        ("5,10 1 * jan,dec *", "2026-01-31 02:00", "2026-12-01 01:05 Tue"),
    ],
)
def test_next_fire_times(expr: str, after: str, expected: str) -> None:
    assert nxt(expr, after) == expected


def test_dst_gap_skips_and_repeat_fires_once() -> None:
    # Europe/Berlin: 2026-03-29 02:00 -> 03:00 (02:30 does not exist); 2026-10-25 03:00 -> 02:00
    assert nxt("30 2 * * *", "2026-03-28 03:00", "Europe/Berlin") == "2026-03-30 02:30 Mon"
    c = Cron.parse("30 2 * * *", "Europe/Berlin")
    first = c.next_after(ts("2026-10-25 00:00", "Europe/Berlin"))
    second = c.next_after(first)
    assert second - first > 23 * 3600  # not twice in the repeated hour


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * *", "expected 5 fields"),
        ("60 * * * *", "minute field '60': 60 is outside 0-59"),
        ("* * * foo *", "month field 'foo'"),
        ("*/0 * * * *", "step '0'"),
        ("5-1 * * * *", "runs backwards"),
        ("0 0 31 feb *", "never fires"),
    ],
)
def test_errors_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Cron.parse(expr).next_after(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def test_unknown_time_zone() -> None:
    with pytest.raises(InvalidInput, match="time zone"):
        Cron.parse("* * * * *", "Mars/Olympus")
