"""natsgw.adapter.jetstream.parse_time reads RFC 3339 times as NATS writes them (any number of
fraction digits, cut to microseconds; ``Z`` or an offset) into aware UTC datetimes."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from natsgw.adapter.jetstream import parse_time

UTC = datetime.UTC


@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30)
    ),
    digits=st.text("0123456789", max_size=12),
    offset_minutes=st.one_of(st.none(), st.integers(-23 * 60 - 59, 23 * 60 + 59)),
)
def test_the_time_nats_wrote_comes_back_in_utc(
    moment: datetime.datetime, digits: str, offset_minutes: int | None
) -> None:
    moment = moment.replace(microsecond=0)
    if offset_minutes is None:
        zone, offset = "Z", datetime.timedelta(0)
    else:
        sign = "-" if offset_minutes < 0 else "+"
        hours, minutes = divmod(abs(offset_minutes), 60)
        zone = f"{sign}{hours:02d}:{minutes:02d}"
        offset = datetime.timedelta(minutes=offset_minutes)
    fraction = f".{digits}" if digits else ""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0") + fraction + zone
    micros = int(digits[:6].ljust(6, "0")) if digits else 0
    expected = (moment.replace(microsecond=micros) - offset).replace(tzinfo=UTC)
    try:
        parsed = parse_time(text)
    except OverflowError:  # an offset past year 1 or 9999 in UTC
        return
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


def test_zero_and_malformed_times_are_none() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("") is None and parse_time(None) is None
    for text in ["2026-11-30", "2026-11-30 19:01:10Z", "20261130T190110Z", "2026-11-30T19:01Z"]:
        assert parse_time(text) is None
