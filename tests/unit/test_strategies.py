"""Bot planners: pure, integer, never beyond their limits (forecast surplus, SoC, units)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.bots.strategies import (
    BatteryPlanner,
    BatterySpec,
    Intent,
    MarketView,
    ProsumerPlanner,
    ZicPlanner,
    apply_bp,
    feasible,
    ramp_bp,
    soc_trajectory,
)
from clients.community.profiles import Member, hourly_table, member_profile
from exchange.core.model import Side

pytestmark = pytest.mark.unit

PIDS = [f"20261122T{h:02d}00Z-60" for h in range(24)]
V = MarketView()


def test_intent_is_integer_and_frozen():
    i = Intent(Side.BUY, 100, 5)
    with pytest.raises(AttributeError):
        i.quantity_wh = 5
    with pytest.raises(ValueError):
        Intent(Side.BUY, 0, 5)
    with pytest.raises(ValueError):
        Intent(Side.BUY, 10, 5.0)


def test_apply_bp_and_ramp():
    assert apply_bp(10_000, 11_500, True) == 11_500
    assert apply_bp(10_001, 8_500, False) == 8_500  # 8500.85 rounded down
    assert apply_bp(10_001, 8_500, True) == 8_501
    assert apply_bp(-10_000, 11_000, True) == -9_000  # above the reference also when negative
    assert ramp_bp(11_500, 10_000, 500, 180) == 11_500
    assert ramp_bp(11_500, 10_000, 90, 180) == 10_750
    assert ramp_bp(11_500, 10_000, 0, 180) == 10_000
    assert ramp_bp(11_500, 10_000, -5, 180) == 10_000


# =========================================================================== prosumer


def test_prosumer_sells_surplus_buys_deficit_and_reprices_toward_reference():
    pp = ProsumerPlanner({"x": (500, 3000), "y": (2000, 100), "z": (1000, 1050)}, reference=15_000)
    sells = [pp.plan(0, "x", m, V) for m in (600, 180, 90, 0)]
    assert all(len(s) == 1 and s[0].side is Side.SELL and s[0].quantity_wh == 2500 for s in sells)
    prices = [s[0].price_ticks for s in sells]
    assert prices == [17_250, 17_250, 16_125, 15_000]
    buys = [pp.plan(0, "y", m, V)[0] for m in (600, 90, 0)]
    assert [b.side for b in buys] == [Side.BUY] * 3 and [b.quantity_wh for b in buys] == [1900] * 3
    assert [b.price_ticks for b in buys] == [12_750, 13_875, 15_000]
    assert pp.plan(0, "z", 0, V) == []  # 50 Wh surplus: below the minimum order
    assert pp.plan(0, "nope", 0, V) == []
    # the runner's reference overrides the configured one
    assert pp.plan(0, "x", 0, MarketView(reference_price_ticks=9_000))[0].price_ticks == 9_000
    pp.on_fill(Side.SELL, "x", 2000, 17_000)
    assert pp.plan(0, "x", 0, V)[0].quantity_wh == 500
    pp.on_fill("sell", "x", 500, 16_000)
    assert pp.plan(0, "x", 0, V) == []
    assert pp.fills.paid["x"] == -(2000 * 17_000 + 500 * 16_000)


def test_prosumer_tariff_clamps_and_profile_forecast():
    pp = ProsumerPlanner({"x": (0, 5000), "y": (5000, 0)}, reference=5_000, sell_floor_ticks=8_000,
                         buy_cap_ticks=30_000)
    assert pp.plan(0, "x", 0, V)[0].price_ticks == 8_000  # never below feed-in
    pp2 = ProsumerPlanner({"y": (5000, 0)}, reference=40_000, buy_cap_ticks=30_000)
    assert pp2.plan(0, "y", 0, V)[0].price_ticks == 30_000  # never above retail
    forecast = hourly_table({"p": member_profile(Member("p", "prosumer", "h0", 3500, pv_wp=6000),
                                                 __import__("datetime").date(2026, 6, 21))})["p"]
    pp3 = ProsumerPlanner(forecast)
    sides = {pid: [i.side for i in pp3.plan(0, pid, 60, V)] for pid in pp3.products()}
    assert any(s == [Side.SELL] for s in sides.values()) and any(s == [Side.BUY] for s in sides.values())


@given(st.dictionaries(st.sampled_from(PIDS[:6]), st.tuples(st.integers(0, 8000), st.integers(0, 8000)), min_size=1),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 300), st.integers(0, 1000)), max_size=40))
@settings(max_examples=150, deadline=None)
def test_property_prosumer_never_oversells_nor_overbuys(forecast, steps):
    pp = ProsumerPlanner(forecast, reference=12_000)
    ids = sorted(forecast)
    for k, minutes, fill_permille in steps:
        pid = ids[k % len(ids)]
        for it in pp.plan(0, pid, minutes, V):
            assert it.quantity_wh > 0
            q = it.quantity_wh * fill_permille // 1000  # any partial fill of what rests
            if q:
                pp.on_fill(it.side, pid, q, it.price_ticks)
    for pid, (c, g) in forecast.items():
        sold, bought = pp.fills.sold.get(pid, 0), pp.fills.bought.get(pid, 0)
        assert sold <= max(g - c, 0) and bought <= max(c - g, 0)
        assert not (sold and bought)


# =========================================================================== battery


DAY = [8000, 7000, 6000, 6000, 7000, 9000, 12000, 15000, 14000, 11000, 9000, 8000,
       7000, 7500, 9000, 12000, 16000, 19000, 18000, 15000, 12000, 10000, 9000, 8500]


def test_battery_buys_cheap_sells_dear_and_is_feasible():
    spec = BatterySpec(10_000, 5_000, Fraction(9, 10), min_soc_wh=1_000, initial_soc_wh=5_000)
    bp = BatteryPlanner(spec, dict(zip(PIDS, DAY)))
    ch, dis = bp.charge_plan, bp.discharge_plan
    assert feasible(spec, ch, dis, bp.hour_wh)
    assert soc_trajectory(spec, ch, dis)[-1] >= spec.initial_soc_wh
    assert bp.planned_profit() > 0
    buy_prices = [DAY[h] for h in range(24) if ch[h]]
    sell_prices = [DAY[h] for h in range(24) if dis[h]]
    assert max(buy_prices) < max(sell_prices) and min(buy_prices) <= 7_000 and 19_000 in sell_prices
    assert not any(c and d for c, d in zip(ch, dis))
    # two cycles a day: the morning and the evening peak
    assert dis[7] and dis[17]
    # quoted in delivery order and fully filled, the intents realise the plan exactly
    for pid in bp.products():
        for it in bp.plan(0, pid, 60, V):
            bp.on_fill(it.side, pid, it.quantity_wh, it.price_ticks)
    assert bp.filled() == (ch, dis)
    assert all(spec.min_soc_wh <= s <= spec.hi for s in bp.soc())
    # sells wait for the energy: quoted before any buy filled, only the initial SoC above the reserve is offered
    fresh = BatteryPlanner(spec, dict(zip(PIDS, DAY)))
    assert fresh.plan(0, PIDS[17], 60, V)[0].quantity_wh <= spec.initial_soc_wh - spec.min_soc_wh


def test_battery_flat_prices_do_nothing():
    bp = BatteryPlanner(BatterySpec(10_000, 5_000, initial_soc_wh=5_000), dict.fromkeys(PIDS, 10_000))
    assert not any(bp.charge_plan) and not any(bp.discharge_plan) and bp.products() == []


@given(st.lists(st.integers(-5_000, 40_000), min_size=4, max_size=24),
       st.integers(2_000, 50_000), st.integers(500, 20_000), st.sampled_from([Fraction(1), Fraction(9, 10),
                                                                               Fraction(17, 20), Fraction(3, 4)]),
       st.integers(0, 1000), st.integers(0, 1000),
       st.lists(st.tuples(st.integers(0, 23), st.integers(0, 1000)), max_size=60))
@settings(max_examples=120, deadline=None)
def test_property_battery_soc_within_bounds_whatever_fills(prices, cap, power, eff, min_pm, init_pm, fills):
    lo = cap * min_pm // 4000  # up to 25 % reserve
    init = lo + (cap - lo) * init_pm // 1000
    spec = BatterySpec(cap, power, eff, min_soc_wh=lo, initial_soc_wh=init)
    ids = PIDS[:len(prices)]
    bp = BatteryPlanner(spec, dict(zip(ids, prices)), min_order_wh=1)
    assert feasible(spec, bp.charge_plan, bp.discharge_plan, bp.hour_wh)
    assert bp.planned_profit() >= 0  # doing nothing is always possible
    for h, permille in fills:  # the runner quotes products in any order and gets partial fills
        pid = ids[h % len(ids)]
        for it in bp.plan(0, pid, 30, V):
            q = it.quantity_wh * permille // 1000
            if q:
                bp.on_fill(it.side, pid, q, it.price_ticks)
    bought, sold = bp.filled()
    assert all(b <= bp.hour_wh and s <= bp.hour_wh and not (b and s) for b, s in zip(bought, sold))
    assert all(spec.min_soc_wh <= s <= spec.hi for s in bp.soc())


# =========================================================================== ZI-C


def test_zic_planner_random_prices_within_private_limits():
    buyer = ZicPlanner(Side.BUY, [150 * 100, 120 * 100], seed=1)
    seller = ZicPlanner("sell", [60 * 100, 90 * 100], seed=1)
    for _ in range(200):
        (b,) = buyer.plan(0, "p", 10, V)
        (s,) = seller.plan(0, "p", 10, V)
        assert 100 <= b.price_ticks <= 15_000 and 6_000 <= s.price_ticks <= 20_000
        assert b.quantity_wh == s.quantity_wh == 1000
    buyer.on_fill("buy", "p", 400, 10_000)
    assert buyer.plan(0, "p", 5, V)[0].quantity_wh == 600
    buyer.on_fill("buy", "p", 1000, 11_000)  # the rest of unit 1 and 400 Wh of unit 2
    (b,) = buyer.plan(0, "p", 5, V)
    assert b.quantity_wh == 600 and b.price_ticks <= 12_000
    assert buyer.surplus["p"] == 400 * 5_000 + 600 * 4_000 + 400 * 1_000
    buyer.on_fill("buy", "p", 600, 12_000)
    assert buyer.plan(0, "p", 5, V) == [] and buyer.plan(0, "other", 5, V)  # endowment per product
    with pytest.raises(ValueError):
        buyer.on_fill("sell", "p", 1, 1)
    with pytest.raises(ValueError):
        ZicPlanner(Side.BUY, [100, 200])  # values must come most valuable first
    a, b2 = ZicPlanner(Side.SELL, [5000], seed=3), ZicPlanner(Side.SELL, [5000], seed=3)
    assert [a.plan(0, "p", 0, V) for _ in range(5)] == [b2.plan(0, "p", 0, V) for _ in range(5)]
