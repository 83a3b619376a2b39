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
    BlockAccepted,
    BlockResult,
    CancelOrder,
    Mechanism,
    OrderAccepted,
    PlaceBlock,
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


block = st.tuples(st.sampled_from(MEMBERS), st.integers(0, 3), st.integers(2, 4), st.sampled_from(list(Side)),
                  st.integers(850, 1150), st.integers(1, 40), st.booleans())


@settings(max_examples=150, deadline=None)
@given(hourly=st.lists(st.tuples(order, st.integers(0, 5)), max_size=40), blocks=st.lists(block, max_size=8))
def test_block_orders_are_all_or_none_across_their_hours(hourly, blocks):
    e = MarketEngine(MarketConfig(mechanism=Mechanism.CALL_THEN_CONTINUOUS,
                                  calendar=CalendarConfig(gate=GateMode.ROLLING)))
    e.process(Tick(T0))
    for m in MEMBERS:
        e.process(RegisterMember(T0, m, collateral=10**15, export_capacity_w=10**9))
    hours = sorted(p for p, pb in e.products.items() if pb.state is ProductState.AUCTION)[6:12]
    t = T0
    for (m, side, price, qty), h in hourly:
        t += 1000
        e.process(PlaceOrder(t, m, hours[h], side, price, qty))
    placed: dict[int, tuple] = {}
    for m, first, n, side, price, qty, cancel in blocks:
        t += 1000
        (ev,) = e.process(PlaceBlock(t, m, hours[first:first + n], side, price, qty))
        assert isinstance(ev, BlockAccepted)
        placed[ev.order_id] = (m, hours[first:first + n], side, price, qty)
        if cancel and len(placed) % 3 == 0:
            t += 1000
            e.process(CancelOrder(t, m, ev.order_id))
            del placed[ev.order_id]
    e.check_invariants()
    evs = e.process(Tick(GATE))
    e.check_invariants()
    results = {x.order_id: x for x in evs if isinstance(x, BlockResult)}
    assert set(results) == set(placed)  # each pending block gets exactly one verdict
    cleared = {x.product_id: x.price for x in evs if isinstance(x, AuctionCleared)}
    for oid, (_m, hrs, side, price, qty) in placed.items():
        mine = [x for x in evs if isinstance(x, TradeEvent) and oid in (x.buy_order_id, x.sell_order_id)]
        if results[oid].executed:
            # every hour, exactly its quantity, at that hour's clearing price; the average within the limit
            assert {p: sum(x.quantity for x in mine if x.product_id == p) for p in hrs} == {p: qty for p in hrs}
            assert all(x.price == cleared[x.product_id] for x in mine)
            total = sum(cleared[p] for p in hrs)
            assert total <= price * len(hrs) if side is Side.BUY else total >= price * len(hrs)
        else:
            assert mine == []  # never partly filled
    assert not e.blocks and all(a.open_exposure == sum(o.exposure() for o in e.orders.values() if o.member == a.member)
                                for a in e.accounts.values())
