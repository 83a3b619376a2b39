"""A member's expected grid exchange in a coming interval, from its own metered history:
the mean of the same interval on each of the last ``days`` days that are wholly in the
past (a naive seasonal forecast: households repeat their days; PV follows the sun).
Pure and exact: integer Wh, the mean floored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exchange.metering.core.model import Grid

DAY_US = 86_400_000_000
#: how many earlier days the forecast averages
FORECAST_DAYS = 7


@dataclass(frozen=True, slots=True)
class Expected:
    import_wh: int
    export_wh: int
    days: int  # how many earlier days were averaged (0: nothing known; both 0)


def history_span(intervals: Sequence[tuple[int, int]], now_us: int, step_us: int,
                 days: int = FORECAST_DAYS) -> tuple[int, int]:
    """The grid-aligned ``[start, end)`` of history the forecast of ``intervals`` reads:
    from ``days`` days before the earliest interval to the end of the last past copy
    (never past ``now_us``); empty (start >= end) when nothing of it is in the past."""
    first = min(s for s, _ in intervals) - days * DAY_US
    last = min(max(e for _, e in intervals) - DAY_US, now_us)
    return first - first % step_us, last - last % step_us


def expected(imp: Sequence[int], exp: Sequence[int], grid: Grid, start_us: int, end_us: int, now_us: int,
             days: int = FORECAST_DAYS) -> Expected:
    """The mean import and export of ``[start - k days, end - k days)`` for ``k = 1..days``,
    over the copies that lie wholly on ``grid`` and end by ``now_us``."""
    if len(imp) != grid.n or len(exp) != grid.n:
        raise ValueError("the series must cover the grid")
    if (end_us - start_us) % grid.step_us or (start_us - grid.start_us) % grid.step_us:
        raise ValueError("the interval must be whole grid steps")
    n = (end_us - start_us) // grid.step_us
    total_i = total_e = used = 0
    for k in range(1, days + 1):
        s, e = start_us - k * DAY_US, end_us - k * DAY_US
        if s < grid.start_us or e > grid.end_us or e > now_us:
            continue
        i = (s - grid.start_us) // grid.step_us
        total_i += sum(imp[i:i + n])
        total_e += sum(exp[i:i + n])
        used += 1
    if not used:
        return Expected(0, 0, 0)
    return Expected(total_i // used, total_e // used, used)
