"""Bots on the SDK trading against each other on a real exchange over loopback (they
register themselves through the operator API). (The command line's parsing:
tests/unit/test_client_cli.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest
from support.keys import OPERATOR_TOKEN
from support.times import T0

from clients.bots.battery import BatteryBot
from clients.bots.runner import BotRunner, community_kpis_of, format_kpis, make_bots, trades_from_fills
from exchange.runtime.clock import ManualClock, SimClock

pytestmark = pytest.mark.e2e


def _trades(ex) -> list:
    return list(ex.market.engine.trades) if hasattr(ex.market.engine, "trades") else []


async def test_zic_bots_trade_with_each_other_never_at_a_loss(serve):
    bots = make_bots(10, seed="t", strategy="zic")
    async with serve(market_id="bots-zic", clock=ManualClock(T0)) as ex:
        runner = BotRunner(ex.url, bots, speed=60, requote_minutes=0.5, operator_token=OPERATOR_TOKEN)
        lines: list[str] = []
        summary = await runner.run(duration=4, report_every=2, out=lines.append)
        assert lines[0] == "members: 10 registered, 0 already registered"
        assert summary["fills"] > 0 and summary["bought_wh"] == summary["sold_wh"] > 0
        assert summary["lost"] == 0 and summary["placed"] > 10
        assert summary["kpis"] is None  # ZI-C traders have no community profiles
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
async def test_community_bots_trade_a_simulated_morning(serve):
    # 2026-06-21 09:00 Berlin on a sim clock x900, rolling gate: the sunny hours are open
    start = datetime(2026, 6, 21, 7, 0, tzinfo=UTC)
    bots = make_bots(24, seed="morning", strategy="community")
    async with serve(market_id="bots-community", clock=SimClock(start, speed=900),
                     gate="rolling", gate_rolling_minutes=60, timezone="Europe/Berlin") as ex:
        runner = BotRunner(ex.url, bots, speed=900, requote_minutes=10, operator_token=OPERATOR_TOKEN)
        summary = await runner.run(duration=8, report_every=100, out=lambda s: None)
        assert summary["fills"] > 0 and summary["bought_wh"] == summary["sold_wh"] > 0, summary
        for b in bots:
            for planner in getattr(b, "planners", {}).values():
                if hasattr(planner, "surplus"):  # prosumers never sell beyond their forecast surplus
                    for pid, sold in planner.fills.sold.items():
                        assert sold <= planner.surplus(pid)
                    for pid, bought in planner.fills.bought.items():
                        assert bought <= planner.deficit(pid)

        # the community KPIs of the run: consistent with the market's trades and the bots' fills
        k = summary["kpis"]
        rows = await ex.market.pool.fetch("SELECT trade_id, product_id, buyer, seller, energy_wh, price_ticks "
                                          "FROM trades WHERE market_id = 'bots-community'")
        assert k["source"] == "market trades" and k["external"] == {"trades": 0, "energy_wh": 0}
        assert k["trades"] == len(rows) > 0
        assert k["traded_wh"] == sum(r["energy_wh"] for r in rows) == sum(b.stats.bought_wh for b in bots)
        assert k["traded_money"] == sum(r["energy_wh"] * r["price_ticks"] for r in rows)
        assert k["hours"] == sorted({r["product_id"] for r in rows}) and k["members"] == len(bots)
        matrix = k["p2p_matrix"]
        assert sum(e for row in matrix.values() for e, _ in row.values()) == k["traded_wh"]
        for b in bots:  # row sums: what each member sold; column sums: what it bought
            assert sum(e for e, _ in matrix.get(b.address, {}).values()) == b.stats.sold_wh
            assert sum(row[b.address][0] for row in matrix.values() if b.address in row) == b.stats.bought_wh
        ss = Fraction(*k["self_sufficiency"])
        assert 0 <= ss <= 1 and k["self_sufficiency_bp"] == round(ss * 10_000)
        assert k["consumption_wh"] > 0 and k["generation_wh"] > 0
        # P2P only lowers grid import, except for battery-to-battery trades (batteries are not in the
        # profiles: a battery's sale counts as its grid import)
        batteries = {b.address for b in bots if isinstance(b, BatteryBot)}
        b2b = sum(r["energy_wh"] for r in rows if r["buyer"] in batteries and r["seller"] in batteries)
        assert k["import_wh"] <= k["no_p2p"]["import_wh"] + b2b
        if b2b == 0:
            assert k["self_sufficiency_bp"] >= k["self_sufficiency_no_p2p_bp"]
        # P2P payments cancel inside the community: the cost only moves with the grid flows
        assert k["cost"] == k["import_wh"] * 30_000 - k["export_wh"] * 8_000
        assert k["savings_vs_no_p2p"] == k["no_p2p"]["cost"] - k["cost"] == k["baseline_no_p2p"] - k["cost"]
        assert k["top_pairs"][0]["energy_wh"] == max(e for row in matrix.values() for e, _ in row.values())
        # the same KPIs from the bots' own fills (what the runner uses without an operator token)
        days = {pid: p.delivery_day for pid, p in runner.watch.products.items()}
        k2 = community_kpis_of(bots, trades_from_fills(bots), days, source="market trades",
                               tz=k["timezone"], still_open=set(k["hours_still_open"]))
        assert k2 == k
        block = format_kpis(k)
        assert block[0].startswith(f"community KPIs: {len(bots)} members, {len(k['hours'])} delivery hours")
        ss_bp, ss0_bp = k["self_sufficiency_bp"], k["self_sufficiency_no_p2p_bp"]
        assert f"  self-sufficiency  {ss_bp // 100}.{ss_bp % 100:02d} % with P2P, " \
               f"{ss0_bp // 100}.{ss0_bp % 100:02d} % without (own PV only)" in block
