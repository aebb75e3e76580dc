"""EVE timestamp formatting (core/records.py format_ts) against datetime's own."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from appliance.core import records
from appliance.core.records import format_ts


def _reference(ts: float) -> str:
    usec = round(ts * 1_000_000)
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=usec)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f+0000")


def test_known_timestamp() -> None:
    assert format_ts(1714854993.342168) == "2024-05-04T20:36:33.342168+0000"
    assert format_ts(0.0) == "1970-01-01T00:00:00.000000+0000"


def test_rounding_boundaries_and_negative_times_match_datetime() -> None:
    # Microsecond rounding that carries into the next second, and times before 1970
    # (divmod floors as datetime does).
    for ts in (0.9999995, 0.9999994, 59.9999999, 86399.9999996, -0.5, -1e-7, -1.0,
               1714854993.9999999, 2**31 + 0.25, 253402300799.25):
        assert format_ts(ts) == _reference(ts), ts


def test_many_seconds_past_the_cache_bound_match_datetime() -> None:
    r = random.Random(7)
    values = [r.uniform(0, 4e9) for _ in range(records._SECONDS_MAX + 500)]
    values += values[:50]  # seconds seen before (cached, or evicted by the clear)
    for ts in values:
        assert format_ts(ts) == _reference(ts), ts
    assert len(records._SECONDS) <= records._SECONDS_MAX
