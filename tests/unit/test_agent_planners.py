"""The bots' prosumer and battery planners as the portal agent's strategies
(exchange.tools.agent_planners): they sell no more than the forecast surplus or the
battery's charge, buy no more than the deficit or the battery's room, never below the
reserve, and price within the member's tariff."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.portal.agent_rules import AgentView, Expectation, Limits, Slot
from exchange.tools.agent_planners import EFFICIENCY, BatteryStrategy, ProsumerStrategy

pytestmark = pytest.mark.unit

H = 3_600_000_000
DAY = date(2026, 6, 1)


def limits(strategy: str, **kw) -> Limits:
    base = dict(max_buy_price=25_000, min_sell_price=12_000, max_order_wh=50_000, daily_budget=10**15,
                battery_reserve_wh=0, excluded_hours=frozenset(), expiry=2_000_000_000)
    base.update(kw)
    return Limits(strategy, **base)


def slot(h: int, imp: int = 0, exp: int = 0, *, days: int = 7, import_price: int | None = 30_000,
         feed_in: int | None = 8_000, bought: int = 0, sold: int = 0, tradable: bool = True,
         last: int | None = None) -> Slot:
    e = Expectation(imp, exp, days, import_price, feed_in)
    return Slot(f"p{h:02d}", h * H, (h + 1) * H, h * H - H, DAY, h, tradable, last, None, None, bought, sold, e)


def test_the_prosumer_sells_its_surplus_and_buys_its_deficit_within_tariff_and_limits():
    lim = limits("prosumer")
    view = AgentView(0, (slot(11, imp=200, exp=3_200), slot(19, imp=2_500, exp=0), slot(3, imp=300, exp=300)))
    plan = ProsumerStrategy(lim).plan(view)
    assert plan["p03"] == []  # nothing to trade
    [(side, price, qty)] = plan["p11"]
    assert side == "sell" and qty == 3_000 and price >= max(lim.min_sell_price, 8_000)
    [(side, price, qty)] = plan["p19"]
    assert side == "buy" and qty == 2_500 and price <= min(lim.max_buy_price, 30_000)


def test_the_prosumer_counts_its_fills_and_waits_without_history():
    lim = limits("prosumer")
    view = AgentView(0, (slot(11, imp=200, exp=3_200, sold=1_000),))
    assert ProsumerStrategy(lim).plan(view)["p11"][0][2] == 2_000
    s = ProsumerStrategy(lim)
    assert s.plan(AgentView(0, (slot(11, imp=200, exp=3_200, days=0),))) == {}
    assert "no metered history" in s.status()


@given(imp=st.integers(0, 10_000), exp=st.integers(0, 10_000), bought=st.integers(0, 12_000),
       sold=st.integers(0, 12_000), import_price=st.integers(5_000, 60_000), feed_in=st.integers(0, 20_000),
       last=st.none() | st.integers(-5_000, 60_000))
def test_the_prosumer_never_wants_more_than_its_forecast(imp, exp, bought, sold, import_price, feed_in, last):
    lim = limits("prosumer")
    s = slot(12, imp=imp, exp=exp, bought=bought, sold=sold, import_price=import_price, feed_in=feed_in, last=last)
    for side, price, qty in ProsumerStrategy(lim).plan(AgentView(0, (s,)))["p12"]:
        if side == "sell":
            assert sold + qty <= max(exp - imp, 0) and price >= feed_in and price >= lim.min_sell_price
        else:
            assert bought + qty <= max(imp - exp, 0) and price <= import_price and price <= lim.max_buy_price


def _tou(h: int) -> int:
    return 10_000 if h < 6 else 40_000 if 17 <= h <= 20 else 20_000


def _day(bought=None, sold=None) -> AgentView:
    bought, sold = bought or {}, sold or {}
    return AgentView(0, tuple(slot(h, import_price=_tou(h), bought=bought.get(h, 0), sold=sold.get(h, 0))
                              for h in range(24)))


BAT = dict(battery_capacity_wh=10_000, battery_power_w=5_000, battery_reserve_wh=2_000)


def _sides(plan):
    buys = {int(p[1:]): q for p, orders in plan.items() for side, _, q in orders if side == "buy"}
    sells = {int(p[1:]): q for p, orders in plan.items() for side, _, q in orders if side == "sell"}
    return buys, sells


def test_the_battery_charges_in_cheap_hours_then_discharges_in_dear_ones_what_it_stored():
    lim = limits("battery", **BAT)
    strategy = BatteryStrategy(lim)
    plan = strategy.plan(_day())
    buys, sells = _sides(plan)
    assert buys and not sells  # nothing to sell before a charge filled
    assert all(h < 6 for h in buys) and all(q <= 5_000 for q in buys.values())  # power limit, one hour
    stored = sum(q * EFFICIENCY.numerator // EFFICIENCY.denominator for q in buys.values())
    assert stored <= 10_000 - 2_000  # between the reserve and the capacity
    for orders in plan.values():
        assert all(price <= min(10_000, lim.max_buy_price) for side, price, _ in orders)
    # the charges fill: now it sells, in the dear hours, no more than it stored
    buys2, sells = _sides(strategy.plan(_day(bought=buys)))
    assert not buys2 and sells and all(17 <= h <= 20 for h in sells)
    assert sum(sells.values()) <= stored
    for orders in strategy.plan(_day(bought=buys)).values():
        assert all(price >= max(40_000, lim.min_sell_price) for side, price, _ in orders if side == "sell")


def test_a_flat_tariff_leaves_the_battery_idle_and_says_why():
    s = BatteryStrategy(limits("battery", **BAT))
    flat = AgentView(0, tuple(slot(h, import_price=20_000) for h in range(24)))
    assert all(v == [] for v in s.plan(flat).values())
    assert "no price differences" in s.status()


@settings(max_examples=40, deadline=None)
@given(fill=st.lists(st.tuples(st.integers(0, 23), st.integers(0, 100)), max_size=12))
def test_whatever_fills_the_battery_never_goes_below_its_reserve_nor_above_its_capacity(fill):
    """Fill parts of what the agent wants, round after round: the state of charge implied by
    the fills stays within [reserve, capacity] hour by hour."""
    lim = limits("battery", **BAT)
    strategy = BatteryStrategy(lim)
    bought: dict[int, int] = {}
    sold: dict[int, int] = {}
    for h, pct in fill:
        plan = strategy.plan(_day(bought, sold))
        for side, _, qty in plan.get(f"p{h:02d}", []):
            q = qty * pct // 100
            if q:
                book = bought if side == "buy" else sold
                book[h] = book.get(h, 0) + q
    soc = 2_000
    for h in range(24):
        soc += bought.get(h, 0) * EFFICIENCY.numerator // EFFICIENCY.denominator - sold.get(h, 0)
        assert 2_000 <= soc <= 10_000
