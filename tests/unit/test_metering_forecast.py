"""The trading agent's forecast from a member's metered history (exchange.metering.core.forecast)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.metering.core.forecast import DAY_US, expected, history_span
from exchange.metering.core.model import Grid

pytestmark = pytest.mark.unit

STEP = 15 * 60_000_000
H = 3_600_000_000
T = 100 * DAY_US  # a midnight


def test_the_mean_of_the_same_hour_on_the_last_seven_days():
    grid = Grid(T - 8 * DAY_US, STEP, 8 * 96)
    imp = [0] * grid.n
    exp = [0] * grid.n
    for k in range(1, 8):  # day T-k, 12:00-13:00: import 100*k over four quarter-hours, export 1 000
        i = (T - k * DAY_US + 12 * H - grid.start_us) // STEP
        for q in range(4):
            imp[i + q] = 25 * k
            exp[i + q] = 250
    e = expected(imp, exp, grid, T + 12 * H, T + 13 * H, now_us=T)
    assert (e.import_wh, e.export_wh, e.days) == (400, 1_000, 7)  # (100+...+700)/7 = 400
    # only days wholly in the past count; nothing known -> 0 days
    assert expected(imp, exp, grid, T + 12 * H, T + 13 * H, now_us=T - 7 * DAY_US + 12 * H + STEP).days == 0
    assert expected(imp, exp, grid, T + 12 * H, T + 13 * H, now_us=T - 5 * DAY_US).days == 2
    with pytest.raises(ValueError):
        expected(imp[:-1], exp, grid, T, T + H, now_us=T)


@given(start_h=st.integers(0, 40), hours=st.integers(1, 24), now_h=st.integers(-200, 60))
def test_the_history_span_never_reaches_past_now_and_covers_every_past_copy(start_h, hours, now_h):
    start, now = T + start_h * H, T + now_h * H
    intervals = [(start + i * H, start + (i + 1) * H) for i in range(hours)]
    h0, h1 = history_span(intervals, now, STEP)
    assert h0 % STEP == 0 and h1 % STEP == 0 and h1 <= now
    if h0 < h1:
        grid = Grid(h0, STEP, (h1 - h0) // STEP)
        zeros = [0] * grid.n
        for s, e in intervals:
            copies = sum(1 for k in range(1, 8) if e - k * DAY_US <= now)
            assert expected(zeros, zeros, grid, s, e, now).days == copies
