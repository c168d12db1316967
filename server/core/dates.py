"""Dates and times typed by users (``from``, ``to``, ``since`` filters): one parser, one range.

Python's datetimes end at years 1 and 9999, so a bound such as ``to=9999-12-31`` (made
exclusive by adding a day) or ``0001-01-01T00:00+01:00`` (converted to UTC) overflows, and
the databases have narrower ranges still. Every filter therefore goes through
``parse_moment``, which answers a 422 naming the field for anything malformed or outside
``EARLIEST`` .. ``LATEST``, a range wider than any history this product will hold.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from server.core.errors import ValidationError

EARLIEST = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(3000, 1, 1, tzinfo=timezone.utc)  # exclusive
MAX_LEN = 40
_IN_RANGE = "^(19|2[0-9])[0-9][0-9]-"  # EARLIEST..LATEST by year
# The OpenAPI side of parse_moment (api/openapi.py documents from/to filters with it).
MOMENT_SCHEMA = {"maxLength": MAX_LEN, "description": "ISO date or date-time, years 1900-2999", "anyOf": [
    {"type": "string", "format": "date", "pattern": _IN_RANGE},
    {"type": "string", "format": "date-time", "pattern": "^(19[0-9][1-9]|19[1-9][0-9]|2[0-9][0-9][0-9])-"
                                                          ".*[0-9](Z|[+-][0-9][0-9]:?[0-9][0-9])?$"}]}


def parse_moment(value: str, name: str, *, end: bool = False) -> datetime:
    """An ISO date (a whole UTC day) or an ISO datetime (naive = UTC), as an aware UTC
    datetime. ``end`` makes a date inclusive by moving to the next midnight (the bound
    itself is then exclusive). Malformed or out of range: ``ValidationError`` on ``name``."""
    raw = (value or "").strip()
    if not raw or len(raw) > MAX_LEN or not raw.isprintable():
        raise _malformed(name)
    try:
        if len(raw) == 10:
            moment = datetime.combine(date.fromisoformat(raw), time.min, tzinfo=timezone.utc)
        else:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "T"))
            moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    except ValueError:
        raise _malformed(name) from None
    except OverflowError:  # an offset that takes it past year 1 or 9999 in UTC
        raise _out_of_range(name) from None
    if not EARLIEST <= moment < LATEST:
        raise _out_of_range(name)
    return moment + timedelta(days=1) if end and len(raw) == 10 else moment


def _malformed(name: str) -> ValidationError:
    return ValidationError(f"'{name}' must be an ISO date (YYYY-MM-DD) or datetime (YYYY-MM-DDTHH:MM[:SS][+HH:MM])",
                           field=name)


def _out_of_range(name: str) -> ValidationError:
    return ValidationError(f"'{name}' must lie between {EARLIEST.date()} and {(LATEST - timedelta(days=1)).date()}",
                           field=name)
