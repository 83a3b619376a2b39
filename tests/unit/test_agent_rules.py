"""The trading agent's rules (exchange.portal.agent_rules) and the engine's record of an
order placed under a delegation."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.times import T0

from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import OrderAccepted, OrderDelegated, PlaceOrder, RegisterMember, Side, Tick
from exchange.portal.agent_rules import (
    STRATEGIES,
    AgentView,
    Limits,
    LimitsStrategy,
    Slot,
    budget_cost,
    changes,
    check_order,
    fit,
    strategies,
)

pytestmark = pytest.mark.unit

L = Limits("limits", max_buy_price=9_500, min_sell_price=14_000, max_order_wh=2_000, daily_budget=100_000_000,
           battery_reserve_wh=0, excluded_hours=frozenset({3}), expiry=2_000_000_000)


@given(side=st.sampled_from(["buy", "sell"]), price=st.integers(-50_000, 50_000), qty=st.integers(1, 10_000),
       hour=st.integers(0, 23), spent=st.integers(0, 200_000_000))
def test_an_accepted_order_is_within_every_limit(side, price, qty, hour, spent):
    if check_order(L, side, price, qty, hour, 1_900_000_000, spent) is None:
        assert hour not in L.excluded_hours and qty <= L.max_order_wh
        if side == "buy":
            assert price <= L.max_buy_price and spent + price * qty <= L.daily_budget
        else:
            assert price >= L.min_sell_price


@given(buys=st.lists(st.tuples(st.integers(-50_000, 9_500), st.integers(1, 2_000)), max_size=40))
def test_a_days_accepted_buys_at_positive_prices_never_exceed_the_budget(buys):
    """Buys at negative prices (placed, maybe cancelled unfilled) lowered the day's count, so
    that later buys at positive prices could exceed the signed budget."""
    spent = 0
    accepted = []
    for price, qty in buys:
        if check_order(L, "buy", price, qty, 10, 1_900_000_000, spent) is None:
            spent += budget_cost("buy", price, qty)
            accepted.append((price, qty))
    # what the accepted buys at positive prices are worth, whatever was placed at negative ones
    assert sum(p * q for p, q in accepted if p > 0) <= L.daily_budget
    assert budget_cost("buy", -5_000, 100) == 0 and budget_cost("sell", 9_000, 100) == 0


def test_refusals_name_the_limit():
    assert "expired" in check_order(L, "buy", 9_000, 100, 10, 2_000_000_000, 0)
    assert "excluded" in check_order(L, "buy", 9_000, 100, 3, 0, 0)
    assert "cap" in check_order(L, "buy", 9_600, 100, 10, 0, 0)
    assert "floor" in check_order(L, "sell", 13_000, 100, 10, 0, 0)
    assert "budget" in check_order(L, "buy", 9_000, 2_000, 10, 0, 90_000_000)
    assert "per order" in check_order(L, "sell", 15_000, 2_001, 10, 0, 0)


def _slot(pid: str, hour: int, tradable: bool = True) -> Slot:
    return Slot(pid, hour * 3_600_000_000, (hour + 1) * 3_600_000_000, 0, date(2026, 1, 1), hour, tradable, None, None,
                None, 0, 0, None)


def test_the_limits_strategy_rests_a_buy_at_the_cap_and_a_sell_at_the_floor_in_the_next_four_products():
    view = AgentView(0, tuple(_slot(f"p{h:02d}", h, tradable=h != 3) for h in range(8)))
    plan = LimitsStrategy(L).plan(view)
    assert sorted(plan) == ["p00", "p01", "p02", "p04"]
    assert all(v == [("buy", 9_500, 2_000), ("sell", 14_000, 2_000)] for v in plan.values())
    assert LimitsStrategy(L).status() is None


@given(orders=st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(-50_000, 50_000),
                                 st.integers(-5, 10_000)), max_size=6))
def test_fit_brings_any_order_within_the_cap_floor_and_size(orders):
    for side, price, qty in fit(L, orders):
        assert 0 < qty <= L.max_order_wh
        assert price <= L.max_buy_price if side == "buy" else price >= L.min_sell_price


@given(orders=st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(-50_000, 50_000),
                                 st.integers(-5, 10_000)), max_size=6), cap=st.integers(1, 10**8))
def test_fit_keeps_every_order_within_the_markets_order_value_cap(orders, cap):
    fitted = fit(L, orders, cap)
    for _side, price, qty in fitted:
        assert 0 < qty <= L.max_order_wh and abs(price) * qty <= cap
    # an order within the cap is as without it; a bigger one is cut to the most the cap allows (gone if none)
    cut = [o if abs(o[1]) * o[2] <= cap else (o[0], o[1], cap // abs(o[1])) for o in fit(L, orders)]
    assert fitted == [o for o in cut if o[2] > 0]


def test_limits_whose_largest_order_the_market_would_refuse_are_refused_with_the_size_that_fits():
    # 2 000 Wh at the sell floor of 14 000 ticks is worth 28 000 000 money units
    assert L.problems(1_999_000_000, -50_000, 300_000, max_order_value=28_000_000) == []
    assert L.problems(1_999_000_000, -50_000, 300_000, max_order_value=27_999_999) == [
        "an order of 2000 Wh at these prices is worth 28000000 money units, above the market's maximum order "
        "value 27999999: at most 1999 Wh per order"]
    # a negative buy cap counts by its size too
    neg = Limits("limits", -30_000, 14_000, 2_000, 0, 0, frozenset(), 2_000_000_000)
    assert "at most 1000 Wh" in neg.problems(1_999_000_000, -50_000, 300_000, max_order_value=30_000_000)[0]


@given(target=st.lists(st.tuples(st.sampled_from(["buy", "sell"]), st.integers(1, 5), st.integers(1, 3)),
                       max_size=5),
       resting=st.dictionaries(st.integers(1, 50), st.tuples(st.sampled_from(["buy", "sell"]), st.integers(1, 5),
                                                             st.integers(1, 3)), max_size=5))
def test_changes_meet_the_target_and_keep_what_can_stay(target, resting):
    cancel, place = changes(target, resting)
    assert set(cancel) <= set(resting)
    kept = [o for oid, o in resting.items() if oid not in cancel]
    # every wanted order is met once: by an order kept (same side and price, no more than
    # wanted) or by one placed exactly as wanted
    left = list(target)
    for side, price, rem in kept:
        i = next(i for i, (s, p, q) in enumerate(left) if (s, p) == (side, price) and rem <= q)
        del left[i]
    assert sorted(left) == sorted(place)
    # nothing cancelled that could have stayed
    for oid in cancel:
        side, price, rem = resting[oid]
        assert not any((s, p) == (side, price) and rem <= q for s, p, q in place)


def test_problems():
    assert L.problems(1_999_000_000, -50_000, 300_000) == []
    bad = Limits("other", 20_000, 10_000, 0, -1, 0, frozenset({24}), 1)
    assert len(bad.problems(1_999_000_000, -50_000, 300_000)) == 6
    # a strategy this deployment does not run; the battery strategy needs a battery
    assert any("one of limits" in p for p in Limits("prosumer", *_REST).problems(1_999_000_000, -50_000, 300_000))
    assert Limits("prosumer", *_REST).problems(1_999_000_000, -50_000, 300_000, STRATEGIES) == []
    no_battery = Limits("battery", *_REST).problems(1_999_000_000, -50_000, 300_000, STRATEGIES)
    assert no_battery == ["the battery strategy needs the battery's capacity and power"]
    big_reserve = Limits("battery", *_REST[:4], 10_000, *_REST[5:], 10_000, 5_000)
    assert big_reserve.problems(1_999_000_000, -50_000, 300_000, STRATEGIES) == [
        "the battery reserve must be below the battery's capacity"]
    with pytest.raises(ValueError, match="unknown agent strategy"):
        strategies({"martingale": LimitsStrategy})


_REST = (9_500, 14_000, 2_000, 100_000_000, 0, frozenset(), 2_000_000_000)


def test_the_engine_records_the_delegation_of_an_order():
    e = MarketEngine(MarketConfig())
    e.process(Tick(T0))
    e.process(RegisterMember(0, "a", collateral=10**15))
    pid = next(p for p, pb in e.products.items() if pb.state.value == "open")
    evs = e.process(PlaceOrder(0, "a", pid, Side.BUY, 9_000, 1_000, delegation="0x" + "ab" * 32))
    acc = next(x for x in evs if isinstance(x, OrderAccepted))
    dlg = next(x for x in evs if isinstance(x, OrderDelegated))
    assert dlg.order_id == acc.order_id and dlg.seq == acc.seq + 1 and dlg.delegation == "0x" + "ab" * 32
    evs = e.process(PlaceOrder(0, "a", pid, Side.BUY, 9_000, 1_000))
    assert not any(isinstance(x, OrderDelegated) for x in evs)
