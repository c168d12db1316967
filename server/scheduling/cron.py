"""Cron expressions read and matched as cronie (Debian's cron) reads and matches them.

Pure: no clock, no database, no time zones beyond the rules below. ``schedules.py`` turns
the wall-clock matches of this module into instants with :func:`wall_to_instants`.

Syntax (as cronie does): five fields ``minute hour day-of-month month day-of-week``; each
a list of ``*``, ``n``, ``a-b``, ``*/s`` or ``a-b/s``; month names ``jan``..``dec`` and day
names ``sun``..``sat`` (any case); day-of-week ``0``-``7`` with both ``0`` and ``7``
Sunday; ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``,
``@hourly``. ``n/s`` (read as ``n-max/s``) is accepted as croniter accepted it, so that
schedules stored before this module keep their meaning; ``?``, ``L``, ``W`` and ``#`` are
not cron syntax and are refused.

Which days (as cronie does): when the day-of-month *or* the day-of-week field starts with
``*`` (so ``*/2`` counts as a star), a day must match both; only when both are restricted
does a day match either. ``0 0 */2 * 1`` fires on Mondays that are odd days of the month;
``0 0 1,15 * 1`` fires on the 1st, the 15th and every Monday. February 29th exists only in
leap years.

Daylight saving time (as cronie's main loop does, which wakes every minute and compares
the local wall clock with the minute it expected):

* a *wildcard job* is one whose minute or hour field starts with ``*``; it follows real
  time. In a spring-forward gap it does not run for the skipped minutes (``*/15 2 * * *``
  in Europe/Berlin on 2027-03-28 fires neither in the gap nor at 03:00); in a repeated
  (fall-back) hour it runs in both passes (``*/30 2 * * *`` fires 02:00 and 02:30 twice,
  ``30 * * * *`` twice in Lord Howe's 30-minute repeat);
* a *fixed-time job* (neither field starts with ``*``) runs once for each wall-clock
  match: in a repeated hour at its first occurrence only; a skipped time runs at the
  first valid instant after the gap (02:30 on a Berlin spring-forward day runs at 03:00
  summer time). Where cronie then runs the job once per skipped match (``0-10/5 2 * * *``
  three times at 03:00), a schedule fires once per instant: one execution, not three.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Iterator
from zoneinfo import ZoneInfo

UTC = timezone.utc
ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, low, high, names) per field, in crontab order
FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
SEARCH_YEARS = 400  # the Gregorian calendar repeats every 400 years: no match in them, none ever


class CronError(ValueError):
    """An expression cron would refuse; the message names the field."""


@dataclass(frozen=True)
class Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 folded onto 0)
    minute_star: bool
    hour_star: bool
    day_star: bool
    weekday_star: bool

    @property
    def wildcard(self) -> bool:
        """A job that follows real time across DST changes (see the module doc)."""
        return self.minute_star or self.hour_star

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.day_star or self.weekday_star:
            return dom and dow
        return dom or dow

    def matches(self, wall: datetime) -> bool:
        return (wall.minute in self.minutes and wall.hour in self.hours
                and self.day_matches(wall.date()))

    def after(self, wall: datetime, until: date = date.max) -> Iterator[datetime]:
        """Wall-clock matches strictly after ``wall`` (naive), ascending, up to ``until``."""
        day = wall.date()
        floor = wall.replace(second=0, microsecond=0)
        while day <= until:
            if day.month not in self.months:
                day = _next_month(day)
                if day is None:
                    return
                continue
            if self.day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        candidate = datetime(day.year, day.month, day.day, hour, minute)
                        if candidate > floor:
                            yield candidate
            if day == date.max:
                return
            day += timedelta(days=1)

    def first_match(self, start: datetime = datetime(2000, 1, 1)) -> datetime | None:
        """The first match after ``start`` within a full calendar cycle; None: never."""
        until = date(min(start.year + SEARCH_YEARS, date.max.year), 12, 31)
        return next(self.after(start, until), None)


def _next_month(day: date) -> date | None:
    if day.month == 12:
        return None if day.year == date.max.year else date(day.year + 1, 1, 1)
    return date(day.year, day.month + 1, 1)


def _number(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.lower()) if names else None
    if value is None:
        if not text.isdigit() or len(text) > 2:
            raise CronError(f"{name}: {text!r} is not a number from {low} to {high}")
        value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name}: {value} is outside {low}-{high}")
    return value


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{name}: empty list element")
        span, _, step_text = part.partition("/")
        step = 1
        if step_text or part.endswith("/"):
            if not step_text.isdigit() or not 1 <= int(step_text) <= high - low + 1:
                raise CronError(f"{name}: step {step_text!r} must be a number from 1 to {high - low + 1}")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _number(a, name, low, high, names), _number(b, name, low, high, names)
            if first > last:
                raise CronError(f"{name}: range {span!r} runs backwards")
        else:
            first = _number(span, name, low, high, names)
            last = high if step_text else first
        out.update(range(first, last + 1, step))
    return out


def parse(expr: str) -> Cron:
    """The expression read as cronie reads it; :class:`CronError` names what is wrong."""
    text = " ".join(str(expr).split())
    text = ALIASES.get(text.lower(), text)
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(f"must have 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    sets = [_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = sets
    return Cron(
        minutes=tuple(sorted(minutes)), hours=tuple(sorted(hours)), days=frozenset(days),
        months=frozenset(months), weekdays=frozenset(d % 7 for d in weekdays),
        minute_star=parts[0].startswith("*"), hour_star=parts[1].startswith("*"),
        day_star=parts[2].startswith("*"), weekday_star=parts[4].startswith("*"),
    )


def _transition(z: ZoneInfo, lo: datetime, hi: datetime) -> datetime:
    """The first instant in (lo, hi] that has ``hi``'s UTC offset: where a DST gap ends."""
    want = hi.astimezone(z).utcoffset()
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())
    while hi_s - lo_s > 1:
        mid = (lo_s + hi_s) // 2
        if datetime.fromtimestamp(mid, z).utcoffset() == want:
            hi_s = mid
        else:
            lo_s = mid
    return datetime.fromtimestamp(hi_s, UTC)


def wall_to_instants(wall: datetime, z: ZoneInfo, *, wildcard: bool = False) -> list[datetime]:
    """UTC instants at which a match at wall-clock ``wall`` fires, in order (module doc)."""
    first = wall.replace(tzinfo=z, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=z, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first.astimezone(z).replace(tzinfo=None) == wall:  # exists twice (fall back)
        return [first, second] if wildcard else [first]
    # Does not exist (spring forward): zoneinfo maps it on either side of the gap.
    if wildcard:
        return []
    return [_transition(z, min(first, second), max(first, second))]
