"""run_flex_demo on an accelerated clock: one event from offers to payouts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from eth_account import Account

from exchange.core.model import RegisterMember
from exchange.runtime.clock import SimClock
from exchange.runtime.config import load_settings
from exchange.runtime.service import open_market
from exchange.tools.flex_demo import run_flex_demo
from exchange.tools.server import start_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_run_flex_demo(pg_dsn, pool):
    clock = SimClock(datetime(2026, 11, 22, 12, 3, tzinfo=UTC), speed=400)
    settings = load_settings(database_url=pg_dsn, market_id="flex-demo", operator_token="op")
    market = await open_market(pg_dsn, settings, clock)
    keys = [Account.from_key(bytes([40 + i]) * 32) for i in range(6)]
    for k in keys:
        await market.runtime.submit(RegisterMember(0, k.address, collateral=10**15, export_capacity_w=10**7))
    runner = await start_http(market, settings, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    lines = []
    try:
        view = await run_flex_demo(runner.app, f"ws://{host}:{port}/ws", [k.key for k in keys], clock,
                                   timeout_s=40, out=lines.append)
    finally:
        await runner.cleanup()
        await market.close()
    assert view["phase"] == "settled", lines
    assert view["revenue_units"] > 0
    assert await pool.fetchval("SELECT count(*) FROM flex_payouts WHERE market_id = 'flex-demo'") > 0
