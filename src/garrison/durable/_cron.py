"""A small cron parser: standard five fields, names, steps, ranges, macros, time zones.

Why not a library: the semantics needed fit in one page (Vixie cron's, including its rule that
when both day-of-month and day-of-week are restricted a day matching *either* fires), and the
usual candidate, croniter, was announced as unmaintained by its author in 2024 before moving to
new hands; a dependency at the heart of a scheduler should be boring. This module is fully
covered by tests, including DST transitions.

Fields: ``minute hour day-of-month month day-of-week``; each ``*``, ``N``, ``A-B``, a list of
them joined by ``,``, any with a ``/STEP``; months ``jan``-``dec`` and days ``sun``-``sat`` by
name; day-of-week 0 or 7 is Sunday. Macros: ``@yearly`` (``@annually``), ``@monthly``,
``@weekly``, ``@daily`` (``@midnight``), ``@hourly``. Times are computed on the wall clock of
``tz``: a time that a DST change skips does not fire that day; one it repeats fires once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from garrison.core import InvalidInput

__all__ = ["Cron"]

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)


def _field(
    text: str, name: str, lo: int, hi: int, names: dict[str, int], expr: str
) -> frozenset[int]:
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"cron {expr!r}: {name} field {text!r}: {why}")

    def num(s: str) -> int:
        v = names.get(s.lower())
        if v is None:
            if not s.isdigit():
                raise bad(f"{s!r} is not a number" + (" or a name" if names else ""))
            v = int(s)
        if not lo <= v <= hi:
            raise bad(f"{v} is outside {lo}-{hi}")
        return v

    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise bad(f"step {step_s!r} must be a positive integer")
            step = int(step_s)
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a_s, _, b_s = rng.partition("-")
            a, b = num(a_s), num(b_s)
            if a > b:
                raise bad(f"range {rng!r} runs backwards")
        else:
            a = num(rng)
            b = hi if step_s else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression; :meth:`next_after` gives its fire times."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday ... 6 = Saturday."""
    dom_star: bool
    dow_star: bool
    tz: str = "UTC"

    @classmethod
    def parse(cls, expr: str, tz: str = "UTC") -> Cron:
        """Parse ``expr``; :class:`InvalidInput` naming the field that is wrong."""
        text = _MACROS.get(expr.strip().lower(), expr.strip())
        parts = text.split()
        if len(parts) != 5:
            raise InvalidInput(
                f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week) "
                f"or a macro such as @daily, got {len(parts)} field(s)"
            )
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"cron time zone {tz!r} is unknown") from None
        sets = [_field(p, *spec, expr=expr) for p, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])
        return cls(
            expr,
            sets[0],
            sets[1],
            sets[2],
            sets[3],
            weekdays,
            dom_star=parts[2].startswith("*"),
            dow_star=parts[4].startswith("*"),
            tz=tz,
        )

    def _day_ok(self, d: datetime) -> bool:
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.dom_star or self.dow_star:
            return dom and dow
        return dom or dow

    def next_after(self, t: float) -> float:
        """The first fire time strictly after ``t`` (epoch seconds)."""
        zone = ZoneInfo(self.tz)
        local = datetime.fromtimestamp(t, zone).replace(tzinfo=None, second=0, microsecond=0)
        d = local + timedelta(minutes=1)
        limit = d + timedelta(days=366 * 5)
        while d < limit:
            if d.month not in self.months:
                d = (d.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0)
                continue
            if not self._day_ok(d):
                d = (d + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if d.hour not in self.hours:
                d = (d + timedelta(hours=1)).replace(minute=0)
                continue
            if d.minute not in self.minutes:
                d += timedelta(minutes=1)
                continue
            aware = d.replace(tzinfo=zone)
            # a wall time skipped by DST does not exist: it round-trips to another time
            if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != d:
                d += timedelta(minutes=1)
                continue
            ts = aware.timestamp()
            if ts > t:
                return ts
            d += timedelta(minutes=1)
        raise InvalidInput(f"cron {self.expr!r} never fires (within five years)")
