"""The trading agent's rules (exchange.portal.agent_rules) and the engine's record of an
order placed under a delegation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.times import T0

from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import OrderAccepted, OrderDelegated, PlaceOrder, RegisterMember, Side, Tick
from exchange.portal.agent_rules import Limits, check_order, wanted

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


def test_refusals_name_the_limit():
    assert "expired" in check_order(L, "buy", 9_000, 100, 10, 2_000_000_000, 0)
    assert "excluded" in check_order(L, "buy", 9_000, 100, 3, 0, 0)
    assert "cap" in check_order(L, "buy", 9_600, 100, 10, 0, 0)
    assert "floor" in check_order(L, "sell", 13_000, 100, 10, 0, 0)
    assert "budget" in check_order(L, "buy", 9_000, 2_000, 10, 0, 90_000_000)
    assert "per order" in check_order(L, "sell", 15_000, 2_001, 10, 0, 0)


def test_wanted_and_problems():
    assert wanted(L, {}, 10) == [("buy", 9_500, 2_000), ("sell", 14_000, 2_000)]
    assert wanted(L, {"buy": 2_000}, 10) == [("sell", 14_000, 2_000)]
    assert wanted(L, {}, 3) == []
    assert L.problems(1_999_000_000, -50_000, 300_000) == []
    bad = Limits("other", 20_000, 10_000, 0, -1, 0, frozenset({24}), 1)
    assert len(bad.problems(1_999_000_000, -50_000, 300_000)) == 6


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
