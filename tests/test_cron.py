"""Cron as cronie fires it. Every expectation comes from a minute-by-minute model of cronie's
main loop (cron.c) and its matcher (entry.c), written here independently of
``server/scheduling/cron.py``, or from the calendar itself; ``fire_times`` must agree."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from server.core.errors import ValidationError
from server.scheduling.schedules import fire_times, normalise_cron

U = timezone.utc
EPOCH = datetime(1970, 1, 1)
NAMES = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
NAMES.update({n: i + 1 for i, n in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])})


# ------------------------------------------------------------------ the model


def bits(field: str, low: int, high: int) -> set[int]:
    """entry.c's get_list: a bit per value, ``*`` the whole range, ``/`` a step."""
    out = set()
    for item in field.split(","):
        rng, _, step = item.partition("/")
        if rng == "*":
            a, b = low, high
        else:
            a_s, _, b_s = rng.partition("-")
            a = NAMES.get(a_s.lower(), None) if not a_s.isdigit() else int(a_s)
            b = (NAMES.get(b_s.lower()) if not b_s.isdigit() else int(b_s)) if b_s else (high if step else a)
        out |= set(range(a, b + 1, int(step or 1)))
    return out


class Entry:
    """One crontab line with cronie's flags: MIN_STAR, HR_STAR, DOM_STAR, DOW_STAR."""

    def __init__(self, line: str):
        minute, hour, dom, month, dow = line.split()
        self.minute, self.hour = bits(minute, 0, 59), bits(hour, 0, 23)
        self.dom, self.month = bits(dom, 1, 31), bits(month, 1, 12)
        self.dow = {d % 7 for d in bits(dow, 0, 7)}
        self.wild = minute[0] == "*" or hour[0] == "*"
        self.dom_star, self.dow_star = dom[0] == "*", dow[0] == "*"

    def due(self, local_minute: int) -> bool:
        """find_jobs' test for one virtual minute (local wall clock, minutes since 1970)."""
        t = EPOCH + timedelta(minutes=local_minute)
        dow = (t.weekday() + 1) % 7
        if self.dom_star or self.dow_star:
            day = t.day in self.dom and dow in self.dow
        else:
            day = t.day in self.dom or dow in self.dow
        return t.minute in self.minute and t.hour in self.hour and t.month in self.month and day


def cronie(line: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Real instants (UTC) at which cronie's main loop runs ``line`` in (start, end].

    The loop wakes once per real minute, reads the wall clock (``timeRunning``) and
    compares it with the minute it expected (``virtualTime``): +1 is normal; a jump of up to
    5 minutes runs everything for each skipped minute; a jump forward of up to 3 hours (DST)
    runs wildcard jobs for the current minute and fixed-time jobs for every skipped minute; a
    jump back of up to 3 hours runs wildcard jobs only, until the clock catches up.
    Where cronie catches up several skipped matches in one minute, a schedule fires once."""
    z, job, fired = ZoneInfo(tz), Entry(line), []

    def wall(real: datetime) -> int:
        return int((real.astimezone(z).replace(tzinfo=None) - EPOCH).total_seconds() // 60)

    def find_jobs(minute: int, real: datetime, do_wild: bool, do_fixed: bool) -> None:
        if ((do_wild and job.wild) or (do_fixed and not job.wild)) and job.due(minute):
            fired.append(real)

    real = start.replace(second=0, microsecond=0)
    virtual = wall(real)
    while real < end:
        real += timedelta(minutes=1)
        running = wall(real)
        diff = running - virtual
        if diff == 1:
            virtual = running
            find_jobs(virtual, real, True, True)
        elif 0 < diff <= 5:
            while virtual < running:
                virtual += 1
                find_jobs(virtual, real, True, True)
        elif 5 < diff <= 180:
            find_jobs(running, real, True, False)
            while virtual < running:
                virtual += 1
                find_jobs(virtual, real, False, True)
        elif -180 <= diff <= 0:
            find_jobs(running, real, True, False)
        else:
            virtual = running
            find_jobs(running, real, True, True)
    return list(dict.fromkeys(fired))  # several skipped times caught up at one instant: one fire


def ours(line: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for inst in fire_times(normalise_cron(line), tz, start):
        if inst > end:
            return out
        out.append(inst)
    return out


def local(times: list[datetime], tz: str) -> list[str]:
    return [t.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M%z") for t in times]


# ------------------------------------------------------------------ DST, zone by zone

# 2027 changes: Berlin 28 Mar 02->03, 31 Oct 03->02; London 28 Mar 01->02, 31 Oct 02->01;
# New York 14 Mar 02->03, 7 Nov 02->01; Lord Howe 4 Apr 02:00->01:30, 3 Oct 02:00->02:30;
# Chatham 4 Apr 03:45->02:45, 26 Sep 02:45->03:45.
CHANGES = {
    "Europe/Berlin": [datetime(2027, 3, 27, 20, tzinfo=U), datetime(2027, 10, 30, 20, tzinfo=U)],
    "Europe/London": [datetime(2027, 3, 27, 20, tzinfo=U), datetime(2027, 10, 30, 20, tzinfo=U)],
    "America/New_York": [datetime(2027, 3, 14, 2, tzinfo=U), datetime(2027, 11, 7, 1, tzinfo=U)],
    "Australia/Lord_Howe": [datetime(2027, 4, 3, 10, tzinfo=U), datetime(2027, 10, 2, 10, tzinfo=U)],
    "Pacific/Chatham": [datetime(2027, 4, 3, 8, tzinfo=U), datetime(2027, 9, 25, 8, tzinfo=U)],
}
LINES = [
    "30 2 * * *", "0 2 * * *", "45 2 * * *", "15 3 * * *", "0 1 * * *", "30 1 * * *",  # fixed times
    "*/15 2 * * *", "*/30 2 * * *", "*/30 3 * * *", "* 1 * * *",  # minute wildcards in one hour
    "0 * * * *", "30 * * * *", "45 * * * *", "0 */2 * * *", "5,50 * * * *",  # hour wildcards
    "0-10/5 2,3 * * *", "30 2 * * 0", "30 2 28 * *", "30 2 * * 7",
]


@pytest.mark.parametrize("tz", sorted(CHANGES))
def test_fires_like_cronie_around_both_2027_changes(tz):
    for start in CHANGES[tz]:
        end = start + timedelta(hours=14)
        for line in LINES:
            assert local(ours(line, tz, start, end), tz) == local(cronie(line, tz, start, end), tz), (tz, line)


def test_berlin_wildcards_skip_the_gap_and_run_twice_in_the_repeated_hour():
    tz = "Europe/Berlin"
    spring, fall = CHANGES[tz]
    assert local(ours("*/15 2 * * *", tz, spring, spring + timedelta(hours=12)), tz) == []
    assert local(ours("*/30 2 * * *", tz, fall, fall + timedelta(hours=12)), tz) == [
        "10-31 02:00+0200", "10-31 02:30+0200", "10-31 02:00+0100", "10-31 02:30+0100"]
    assert local(ours("30 2 * * *", tz, spring, spring + timedelta(hours=12)), tz) == ["03-28 03:00+0200"]
    assert local(ours("30 2 * * *", tz, fall, fall + timedelta(hours=12)), tz) == ["10-31 02:30+0200"]


def test_lord_howe_half_hour_repeat_runs_minute_30_twice():
    tz = "Australia/Lord_Howe"
    fall = CHANGES[tz][0]
    got = local(ours("30 * * * *", tz, fall + timedelta(hours=3), fall + timedelta(hours=6)), tz)
    assert got == ["04-04 00:30+1100", "04-04 01:30+1100", "04-04 01:30+1030", "04-04 02:30+1030"]


def test_chatham_skipped_fixed_time_runs_when_the_gap_ends():
    tz = "Pacific/Chatham"
    spring = CHANGES[tz][1]
    assert local(ours("0 3 * * *", tz, spring, spring + timedelta(hours=20)), tz) == ["09-26 03:45+1345"]
    assert local(ours("*/20 3 * * *", tz, spring, spring + timedelta(hours=20)), tz) == []


def test_new_york_and_london_hourly_jobs_follow_real_time():
    for tz, (spring, fall) in (("America/New_York", CHANGES["America/New_York"]),
                               ("Europe/London", CHANGES["Europe/London"])):
        for start in (spring, fall):
            end = start + timedelta(hours=10)
            got = ours("0 * * * *", tz, start, end)
            assert all(b - a == timedelta(hours=1) for a, b in zip(got, got[1:], strict=False)), (tz, local(got, tz))


# ------------------------------------------------------------------ which days


@pytest.mark.parametrize("line,tz,start,days", [
    # day-of-month starts with '*': AND (Mondays that are odd days of the month)
    ("0 0 */2 * 1", "Europe/Berlin", datetime(2027, 1, 1), 10),
    # both restricted: OR
    ("0 0 1,15 * 1", "America/New_York", datetime(2027, 1, 1), 62),
    ("0 0 1-7 * */3", "Europe/London", datetime(2027, 1, 1), 62),  # '*/3' is a star: AND
    ("0 12 29 2 *", "Pacific/Chatham", datetime(2027, 1, 1), 2 * 366),  # leap days only
    ("0 6 * * 7", "Australia/Lord_Howe", datetime(2027, 1, 1), 40),  # 7 is Sunday
    ("0 6 * jan,feb sun-tue", "Europe/Berlin", datetime(2027, 1, 1), 70),  # names
    ("@weekly", "America/New_York", datetime(2027, 1, 1), 40),
])
def test_days_like_cronie(line, tz, start, days):
    begin = start.replace(tzinfo=ZoneInfo(tz)).astimezone(U)
    end = begin + timedelta(days=days)
    got = ours(line, tz, begin, end)
    if days > 400:  # too long for a minute-by-minute model: the calendar says it
        assert local(got, tz) == ["02-29 12:00+1345"] and got[0].year == 2028
        return
    assert local(got, tz) == local(cronie(normalise_cron(line), tz, begin, end), tz)


def test_dom_star_step_with_a_weekday_is_an_and():
    tz = "Europe/Berlin"
    begin = datetime(2027, 1, 1, tzinfo=ZoneInfo(tz))
    got = [t.astimezone(ZoneInfo(tz)).date().isoformat() for t in ours("0 0 */2 * 1", tz, begin, begin + timedelta(days=40))]
    assert got == ["2027-01-11", "2027-01-25", "2027-02-01"]


@pytest.mark.parametrize("line", ["0 0 ? * *", "0 0 L * *", "0 0 * * 1#2", "5-1 * * * *", "*/0 * * * *",
                                  "0 0 31 2 *", "0 24 * * *", "0 0 * * 8", "@reboot"])
def test_what_cronie_refuses_or_never_fires_is_refused(line):
    with pytest.raises(ValidationError):
        normalise_cron(line)
