"""Field types shared by the wire messages of the gateway and its subsystems."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _in_range(t: datetime) -> datetime:
    """A time the exchange can compute with: between 2000 and 2200, as UTC. (A time at
    the edge of Python's range, such as 9999-12-31T23:45-14:00, cannot even be moved to
    UTC: refused here with a precise message instead of failing later.)"""
    try:
        utc = t.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range: give a time between 2000 and 2200") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError("time out of range: give a time between 2000 and 2200")
    return utc


UtcTime = Annotated[AwareDatetime, AfterValidator(_in_range),
                    Field(description="ISO 8601 with offset, e.g. 2026-11-22T17:00:00Z (years 2000-2199)")]
