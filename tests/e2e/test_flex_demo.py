"""run_flex_demo on an accelerated clock: one event from offers to payouts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support.keys import KEYS

from exchange.runtime.clock import SimClock
from exchange.tools.flex_demo import run_flex_demo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_run_flex_demo(serve, pool):
    clock = SimClock(datetime(2026, 11, 22, 12, 3, tzinfo=UTC), speed=400)
    keys = KEYS[:6]
    lines = []
    async with serve(market_id="flex-demo", clock=clock, members=keys) as server:
        view = await run_flex_demo(server.app, server.url, [k.key for k in keys], clock,
                                   timeout_s=40, out=lines.append)
    assert view["phase"] == "settled", lines
    assert view["revenue_units"] > 0
    assert await pool.fetchval("SELECT count(*) FROM flex_payouts WHERE market_id = 'flex-demo'") > 0
