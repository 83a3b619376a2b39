"""Bots on the SDK trading against each other on a real exchange over loopback."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import pytest

from clients.bots.runner import BotRunner, make_bots
from clients.cli import add_commands, parse_price, parse_quantity
from exchange.clock import ManualClock, SimClock
from exchange.bench import BENCH_T0
from exchange.core.model import TradeEvent
from sdk_fixtures import OPERATOR_TOKEN, exchange

pytestmark = pytest.mark.integration


def _trades(ex) -> list:
    return list(ex.market.engine.trades) if hasattr(ex.market.engine, "trades") else []


async def test_zic_bots_trade_with_each_other_never_at_a_loss(pool, pg_dsn):
    bots = make_bots(10, seed="t", strategy="zic")
    async with exchange(pg_dsn, market_id="bots-zic", clock=ManualClock(BENCH_T0), register=[]) as ex:
        runner = BotRunner(ex.url, bots, speed=60, requote_minutes=0.5, operator_token=OPERATOR_TOKEN)
        lines: list[str] = []
        summary = await runner.run(duration=4, report_every=2, out=lines.append)
        assert lines[0] == "members: 10 registered, 0 already registered"
        assert summary["fills"] > 0 and summary["bought_wh"] == summary["sold_wh"] > 0
        assert summary["lost"] == 0 and summary["placed"] > 10
        rows = await ex.market.pool.fetch("SELECT buyer, seller, energy_wh, price_ticks FROM trades "
                                          "WHERE market_id = 'bots-zic'")
        assert sum(r["energy_wh"] for r in rows) == summary["bought_wh"]
        by_addr = {b.address: b for b in bots}
        for b in bots:
            # ZI-C: never trade at a loss, never beyond the endowment
            assert all(s >= 0 for s in b.planner.surplus.values())
            assert all(q <= b.unit_wh * len(b.planner.limits) for q in b.planner.filled.values())
        assert all(r["buyer"] in by_addr and r["seller"] in by_addr for r in rows)
        # the runner leaves nothing resting behind
        assert all(o.member not in by_addr for o in ex.market.engine.orders.values())
        # a rerun with the same seed reuses the members (already registered)
        again = BotRunner(ex.url, make_bots(10, seed="t", strategy="zic"), speed=60,
                          operator_token=OPERATOR_TOKEN)
        lines.clear()
        await again.run(duration=0.5, report_every=10, out=lines.append)
        assert lines[0] == "members: 0 registered, 10 already registered"


@pytest.mark.slow
async def test_community_bots_trade_a_simulated_morning(pool, pg_dsn):
    # 2026-06-21 09:00 Berlin on a sim clock x900, rolling gate: the sunny hours are open
    start = datetime(2026, 6, 21, 7, 0, tzinfo=timezone.utc)
    bots = make_bots(24, seed="morning", strategy="community")
    async with exchange(pg_dsn, market_id="bots-community", clock=SimClock(start, speed=900), register=[],
                        gate="rolling", gate_rolling_minutes=60, timezone="Europe/Berlin") as ex:
        runner = BotRunner(ex.url, bots, speed=900, requote_minutes=10, operator_token=OPERATOR_TOKEN)
        summary = await runner.run(duration=8, report_every=100, out=lambda s: None)
        assert summary["fills"] > 0 and summary["bought_wh"] == summary["sold_wh"] > 0, summary
        for b in bots:
            for day, planner in getattr(b, "planners", {}).items():
                if hasattr(planner, "surplus"):  # prosumers never sell beyond their forecast surplus
                    for pid, sold in planner.fills.sold.items():
                        assert sold <= planner.surplus(pid)
                    for pid, bought in planner.fills.bought.items():
                        assert bought <= planner.deficit(pid)


def test_cli_parses_human_units_exactly():
    assert parse_price("85.50") == 8550 and parse_price("-12") == -1200 and parse_price("0.01") == 1
    with pytest.raises(argparse.ArgumentTypeError):
        parse_price("85.555")
    assert parse_quantity("2500") == 2500 and parse_quantity("2.5kWh") == 2500 and parse_quantity("1MWh") == 10**6
    for bad in ("0.5", "-3", "abc", "0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_quantity(bad)
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_commands(sub, None)
    a = parser.parse_args(["client", "--seed", "1", "place", "P-1", "sell", "90.25", "3kWh", "--sign"])
    assert (a.price, a.quantity, a.sign, a.action) == (9025, 3000, True, "place")
    b = parser.parse_args(["bots", "run", "--members", "200", "--speed", "600", "--duration", "60"])
    assert (b.members, b.speed, b.duration, b.strategy) == (200, 600, 60, "community")
