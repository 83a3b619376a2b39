"""Bots on the SDK trading against each other on a real exchange over loopback (they
register themselves through the operator API); the community bots' meters push readings
and the runner's KPIs come from the exchange's metering. (The command line's parsing:
tests/unit/test_client_cli.py; the readings' arithmetic: tests/unit/test_bot_meters.py.)"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

import aiohttp
import pytest
from support.keys import OPERATOR_TOKEN
from support.times import T0

from clients.bots.battery import BatteryBot
from clients.bots.runner import BotRunner, community_kpis_of, format_kpis, make_bots, trades_from_fills
from clients.community.meters import member_readings, point_ids
from exchange.core.units import US_PER_MIN, to_us
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
    # 2026-06-21 09:00 Berlin on a sim clock x1800 (8 s: about 4 hours), rolling gate: the sunny
    # hours are open; the first ones traded are delivered (and metered) before the run ends
    start = datetime(2026, 6, 21, 7, 0, tzinfo=UTC)
    bots = make_bots(24, seed="morning", strategy="community")
    for b in bots:
        b.meter.keep_sent = True
    async with serve(market_id="bots-community", clock=SimClock(start, speed=1800),
                     gate="rolling", gate_rolling_minutes=60, timezone="Europe/Berlin") as ex:
        runner = BotRunner(ex.url, bots, speed=1800, requote_minutes=10, operator_token=OPERATOR_TOKEN)
        lines: list[str] = []
        summary = await runner.run(duration=8, report_every=100, out=lines.append)
        n_points = sum(3 if b.member.pv_wp else 2 for b in bots)
        assert lines[1].startswith(f"metering: {n_points} points registered (0 already), tariff 'default' set "
                                   "(30 ct/kWh import, 8 ct/kWh feed-in), fee schedule set"), lines
        assert summary["fills"] > 0 and summary["bought_wh"] == summary["sold_wh"] > 0, summary
        for b in bots:
            for planner in getattr(b, "planners", {}).values():
                if hasattr(planner, "surplus"):  # prosumers never sell beyond their forecast surplus
                    for pid, sold in planner.fills.sold.items():
                        assert sold <= planner.surplus(pid)
                    for pid, bought in planner.fills.bought.items():
                        assert bought <= planner.deficit(pid)

        await _check_meter_kpis(ex, bots, runner, summary["kpis"])

        # the forecast KPIs of the run (profiles, for comparison): consistent with the market's
        # trades and the bots' fills
        k = summary["kpis"]["forecast"]
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
        assert block[0].startswith(f"forecast KPIs: {len(bots)} members, {len(k['hours'])} delivery hours")
        ss_bp, ss0_bp = k["self_sufficiency_bp"], k["self_sufficiency_no_p2p_bp"]
        assert f"  self-sufficiency  {ss_bp // 100}.{ss_bp % 100:02d} % with P2P, " \
               f"{ss0_bp // 100}.{ss0_bp % 100:02d} % without (own PV only)" in block


async def _check_meter_kpis(ex, bots, runner, kpis) -> None:
    """The runner's KPIs come from the readings its bots' meters pushed: the exchange stored
    them (per member, every interval, none estimated), billed every member and computed the
    community's KPIs from them."""
    assert kpis["source"] == "meters" and kpis["note"] is None, kpis
    start_us = to_us(datetime.fromisoformat(kpis["start"]))
    end_us = to_us(datetime.fromisoformat(kpis["end"]))
    step = 15 * US_PER_MIN
    # from the first interval after the bots started (the clock runs while they log in)
    assert to_us(datetime(2026, 6, 21, 7, 0, tzinfo=UTC)) <= start_us < runner.meter_until_us
    assert start_us % step == 0 == end_us % step and end_us == runner.meter_until_us
    assert kpis["intervals"] == (end_us - start_us) // step >= 8  # at least 2 hours delivered
    # what the meters pushed: the profile plus the seeded error, recomputed independently
    data = bots[0].data
    pushed: dict[tuple[str, str], int] = {}
    for b in bots:
        for r in b.meter.sent:
            assert pushed.setdefault((r["point_id"], r["interval_start"]), r["energy_wh"]) == r["energy_wh"]
        pts = point_ids(b.address, b.member.pv_wp > 0)
        expected = member_readings(b.address, pts, lambda h, a=b.address: data.hour_energy(a, h), start_us, end_us,
                                   data.seed)
        assert {(r["point_id"], r["interval_start"]): r["energy_wh"] for r in expected} == \
            {key: v for key, v in pushed.items() if key[0] in pts.values()}
    readings = kpis["readings"]
    assert readings["members"] == len(bots) and readings["failures"] == 0 and not readings["disabled"]
    assert readings["pushed"] >= len(pushed) == sum(3 if b.member.pv_wp else 2 for b in bots) * kpis["intervals"]
    assert readings["messages"] > len(bots)  # pushed as the hours were delivered, not only at the end

    def total(b, kind: str) -> int:
        pid = point_ids(b.address, True)[kind]
        return sum(v for (p, _), v in pushed.items() if p == pid)

    c = kpis["community"]
    async with aiohttp.ClientSession(base_url=ex.http, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as s:
        async with s.get("/api/operator/metering/uploads") as r:
            uploads = await r.json()
        assert uploads and all(u["format"] == "push" for u in uploads)
        async with s.get("/api/operator/metering/kpis", params={"start": kpis["start"], "end": kpis["end"]}) as r:
            k = await r.json()
        async with s.get("/api/operator/metering/bills") as r:
            bills = await r.json()
    assert k["community"] == c  # what the runner reported is the exchange's KPIs of the period
    for b in bots:  # every member's meters as pushed: consumption = import + generation - export
        m = k["members"][b.address]
        assert (m["grid_import_wh"], m["grid_export_wh"], m["generation_wh"], m["estimated_intervals"]) == \
            (total(b, "import"), total(b, "export"), total(b, "generation"), 0)
        assert m["consumption_wh"] == total(b, "import") + total(b, "generation") - total(b, "export")
    assert c["consumption_wh"] == sum(k["members"][b.address]["consumption_wh"] for b in bots)
    # the community behind one connection: per interval, the members' imports and exports net out
    net: dict[str, int] = {}
    for b in bots:
        ids = point_ids(b.address, True)
        for (p, t), v in pushed.items():
            if p == ids["import"]:
                net[t] = net.get(t, 0) + v
            elif p == ids["export"]:
                net[t] = net.get(t, 0) - v
    assert c["grid_import_wh"] == sum(max(v, 0) for v in net.values())
    assert c["grid_export_wh"] == sum(max(-v, 0) for v in net.values())
    assert c["peak_import_wh"] == max(max(v, 0) for v in net.values())
    assert c["p2p_bought_wh"] > 0  # hours traded P2P were delivered and settled against the meters
    # every member billed for the period
    assert kpis["bills"]["count"] == len(bots) == kpis["members"]
    # billed: the whole products of the period (a bill period ends on product edges)
    b0, b1 = (to_us(datetime.fromisoformat(kpis["bills"][k])) for k in ("start", "end"))
    assert start_us <= b0 < b1 <= end_us and b0 % (60 * US_PER_MIN) == 0 == b1 % (60 * US_PER_MIN)
    assert b0 - start_us < 60 * US_PER_MIN and end_us - b1 < 60 * US_PER_MIN
    mine = [x for x in bills if x["start"] == kpis["bills"]["start"] and x["end"] == kpis["bills"]["end"]]
    assert sorted(x["member"] for x in mine) == sorted(b.address for b in bots)
    assert sum(int(x["total"]["units"]) for x in mine) == int(kpis["bills"]["total"]["units"])
    block = format_kpis(kpis)
    assert block[0].startswith(f"community KPIs from meters: {len(bots)} members, {kpis['intervals']} intervals "
                               "of 15 min (Sun 2026-06-21 ")
    ss = (Decimal(c["self_sufficiency_ppm"]) / 10_000).quantize(Decimal("0.01"), ROUND_HALF_EVEN)
    assert block[1].startswith(f"  self-sufficiency  {ss} % (consumption ")
    assert any(line.startswith("forecast comparison") for line in block)


async def test_without_operator_token_the_bots_still_meter_but_report_no_kpis_from_meters(serve):
    # the operator registered the members and their metering points; the runner has no token
    start = datetime(2026, 6, 21, 7, 0, tzinfo=UTC)
    bots = make_bots(4, seed="no-token", strategy="community")
    async with serve(market_id="bots-meters", clock=SimClock(start, speed=1800),
                     gate="rolling", gate_rolling_minutes=60, timezone="Europe/Berlin") as ex:
        operator = BotRunner(ex.url, bots, speed=1800, operator_token=OPERATOR_TOKEN)
        async with aiohttp.ClientSession() as http:
            await operator.register(http)
            await operator.setup_metering(http)
        runner = BotRunner(ex.url, bots, speed=1800, requote_minutes=10)
        summary = await runner.run(duration=3, report_every=100, out=lambda s: None)
        k = summary["kpis"]
        assert k["source"] is None and "operator token" in k["note"] and "community" not in k
        assert k["readings"]["members"] == 4 and k["readings"]["pushed"] > 0 and k["readings"]["failures"] == 0
        assert all(b.meter.points == point_ids(b.address, b.member.pv_wp > 0) for b in bots)  # learnt over WS
        assert format_kpis(k)[0].startswith("community KPIs from meters: none (the KPIs from meters need an "
                                            "operator token")
        async with aiohttp.ClientSession(base_url=ex.http,
                                         headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as s:
            async with s.get("/api/operator/metering/uploads") as r:
                uploads = await r.json()
        assert sum(u["rows"] for u in uploads) == k["readings"]["pushed"]
