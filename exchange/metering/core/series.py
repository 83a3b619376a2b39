"""Series on an interval grid: prices that hold until the next change, positions spread
over their product's intervals, estimates for missing readings. Pure and exact."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from exchange.metering.core.model import Grid

#: a gap of at most this many intervals is filled by linear interpolation
INTERPOLATE_MAX = 8
#: a longer gap takes the same interval this many intervals earlier (one week of 15 min)
WEEK_INTERVALS_15 = 7 * 96


def step_series(changes: Sequence[tuple[int, int]], grid: Grid, default: int | None = None) -> list[int]:
    """The value in force at each interval's start: ``changes`` is ``(from_us, value)``
    sorted by time; before the first change ``default`` (a missing price is an error)."""
    times = [t for t, _ in changes]
    out: list[int] = []
    for i in range(grid.n):
        t = grid.start_us + i * grid.step_us
        k = bisect_right(times, t)
        if k == 0:
            if default is None:
                raise ValueError(f"no value in force at interval {i} ({t} µs)")
            out.append(default)
        else:
            out.append(changes[k - 1][1])
    return out


def spread_flat(energy_wh: int, k: int) -> list[int]:
    """A product's position delivered at constant power over its ``k`` intervals (how a
    power exchange product is delivered): ``energy_wh // k`` each, the remainder 1 Wh at a
    time to the earliest intervals, sign kept. The parts sum to ``energy_wh`` exactly."""
    if k <= 0:
        raise ValueError("a product has at least one interval")
    sign = -1 if energy_wh < 0 else 1
    q, r = divmod(abs(energy_wh), k)
    return [sign * (q + 1 if i < r else q) for i in range(k)]


def positions_on_grid(positions: Sequence[tuple[int, int, int]], grid: Grid) -> list[int]:
    """Net bought energy per interval from ``(product_start_us, product_end_us, net_wh)``
    (bought minus sold) of every product of one member. A product must cover whole
    intervals; the part of a product outside the grid is not counted."""
    out = [0] * grid.n
    for start, end, net in positions:
        if (end - start) % grid.step_us or (start - grid.start_us) % grid.step_us:
            raise ValueError("a product does not cover whole metering intervals")
        k = (end - start) // grid.step_us
        first = (start - grid.start_us) // grid.step_us
        for j, part in enumerate(spread_flat(net, k)):
            i = first + j
            if 0 <= i < grid.n:
                out[i] += part
    return out


def estimate(values: Sequence[int | None], *, interpolate_max: int = INTERPOLATE_MAX,
             lookback: int = WEEK_INTERVALS_15) -> tuple[list[int], list[bool]]:
    """Fill missing readings (None); returns the values and which were estimated.

    The rule (docs/metering.md, "Missing readings"):
    1. a gap of at most ``interpolate_max`` intervals between two readings is filled by
       linear interpolation (integer Wh, floor, the remainder 1 Wh at a time to the
       earliest intervals of the gap, so the gap's total is exact);
    2. otherwise each missing interval takes the value ``lookback`` intervals earlier
       (the same quarter-hour one week before) when that one is known (read or estimated);
    3. otherwise 0.
    """
    n = len(values)
    out: list[int] = [0] * n
    est = [False] * n
    i = 0
    while i < n:
        v = values[i]
        if v is not None:
            out[i] = v
            i += 1
            continue
        j = i
        while j < n and values[j] is None:
            j += 1
        gap = j - i
        left = values[i - 1] if i > 0 else None
        right = values[j] if j < n else None
        if left is not None and right is not None and gap <= interpolate_max:
            # interpolate between left (at i-1) and right (at j): the value at i-1+s is
            # left + (right-left) * s / (gap+1); the gap's total is kept exact
            total_num = sum((left * (gap + 1 - s) + right * s) for s in range(1, gap + 1))
            total = total_num // (gap + 1)
            parts = [(left * (gap + 1 - s) + right * s) // (gap + 1) for s in range(1, gap + 1)]
            for s in range(total - sum(parts)):
                parts[s] += 1
            for s, p in enumerate(parts):
                out[i + s] = p
                est[i + s] = True
        else:
            for s in range(i, j):
                out[s] = out[s - lookback] if s - lookback >= 0 and (values[s - lookback] is not None
                                                                     or est[s - lookback]) else 0
                est[s] = True
        i = j
    return out, est
