"""call_then_continuous: the day-ahead auction's uniform price clears the books it sees,
and continuous trading starts from exactly what is left (hypothesis, against the pure
auction module as the reference)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.times import GATE, T0

from exchange.core import auction
from exchange.core.calendar import CalendarConfig, GateMode, ProductState
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import (
    AuctionCleared,
    Mechanism,
    OrderAccepted,
    PlaceOrder,
    RegisterMember,
    SelfTradePrevention,
    Side,
    Tick,
    TimeInForce,
    TradeEvent,
)

pytestmark = pytest.mark.unit

MEMBERS = ("a", "b", "c", "d")
order = st.tuples(st.sampled_from(MEMBERS), st.sampled_from(list(Side)), st.integers(900, 1100), st.integers(1, 50))


@settings(max_examples=150, deadline=None)
@given(collected=st.lists(order, max_size=40), later=st.lists(order, max_size=30),
       stp=st.sampled_from(list(SelfTradePrevention)))
def test_the_auction_clears_what_it_sees_and_continuous_trading_starts_from_what_is_left(collected, later, stp):
    e = MarketEngine(MarketConfig(mechanism=Mechanism.CALL_THEN_CONTINUOUS, self_trade_prevention=stp,
                                  calendar=CalendarConfig(gate=GateMode.ROLLING)))
    e.process(Tick(T0))
    for m in MEMBERS:
        e.process(RegisterMember(T0, m, collateral=10**15, export_capacity_w=10**9))
    pid = sorted(p for p, pb in e.products.items() if pb.state is ProductState.AUCTION)[0]
    t = T0
    for m, side, price, qty in collected:
        t += 1000
        evs = e.process(PlaceOrder(t, m, pid, side, price, qty))
        assert [type(x) for x in evs] == [OrderAccepted]  # collected, never matched before the auction
    book = e.book(pid)
    bids = [o.clone() for o in book.orders() if o.side is Side.BUY]
    asks = [o.clone() for o in book.orders() if o.side is Side.SELL]
    expected = auction.clearing(bids, asks)
    allocated: dict[int, int] = {}
    if expected.price is not None:
        for b, s, q in auction.allocate(bids, asks, expected):
            allocated[b.order_id] = allocated.get(b.order_id, 0) + q
            allocated[s.order_id] = allocated.get(s.order_id, 0) + q
    before = {o.order_id: o.remaining for o in e.book(pid).orders()}

    evs = [x for x in e.process(Tick(GATE)) if getattr(x, "product_id", None) == pid]
    (ac,) = [x for x in evs if isinstance(x, AuctionCleared)]
    assert (ac.price, ac.volume) == (expected.price, expected.volume)
    fills = [x for x in evs if isinstance(x, TradeEvent)]
    assert all(x.price == expected.price and x.aggressor == "auction" for x in fills)
    assert sum(x.quantity for x in fills) == expected.volume
    left = {o.order_id: o.remaining for o in e.book(pid).orders()}
    assert left == {oid: r - allocated.get(oid, 0) for oid, r in before.items() if r - allocated.get(oid, 0)}
    assert e.product_state(pid) is ProductState.OPEN and not e.book(pid).is_crossed()
    e.check_invariants()

    # continuous trading from what is left: each new order trades against the best resting price
    for m, side, price, qty in later:
        t = max(t, GATE) + 1000
        # the best resting price it may trade with (not its own, unless self-trades are allowed)
        prices = [o.price for o in e.book(pid).orders() if o.side is not side
                  and (o.member != m or stp is SelfTradePrevention.ALLOW)]
        best = (min(prices) if side is Side.BUY else max(prices)) if prices else None
        evs = e.process(PlaceOrder(t, m, pid, side, price, qty, TimeInForce.GTC))
        trades = [x for x in evs if isinstance(x, TradeEvent)]
        if trades:
            assert trades[0].price == best and trades[0].aggressor == side
        e.check_invariants()
