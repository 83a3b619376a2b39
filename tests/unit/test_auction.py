"""Uniform-price call auction: ``auction.clearing`` and ``auction.allocate`` (pure)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core.auction import Clearing, allocate, clearing
from exchange.core.book import Order
from exchange.core.model import Side, TimeInForce

pytestmark = pytest.mark.unit

_ids = itertools.count(1)


def order(side: Side, price: int, qty: int, member: str = "m", ts: int | None = None) -> Order:
    oid = next(_ids)
    return Order(oid, member, "p", side, price, qty, TimeInForce.GTC, None, None, oid if ts is None else ts)


def bid(price, qty, **kw):
    return order(Side.BUY, price, qty, **kw)


def ask(price, qty, **kw):
    return order(Side.SELL, price, qty, **kw)


def priority(orders: list[Order]) -> list[Order]:
    """Price-time priority (best first): bids highest first, asks lowest first, then earlier."""
    if not orders:
        return []
    sign = -1 if orders[0].side is Side.BUY else 1
    return sorted(orders, key=lambda o: (sign * o.price, o.ts))


def demand(bids, p):
    return sum(o.remaining for o in bids if o.price >= p)


def supply(asks, p):
    return sum(o.remaining for o in asks if o.price <= p)


def brute_force(bids, asks) -> Clearing:
    """The documented rule, by brute force over every candidate (order) price:
    max volume, then min |demand - supply|, then the lower median of the ties."""
    prices = sorted({o.price for o in (*bids, *asks)})
    scored = [(min(demand(bids, p), supply(asks, p)), -abs(demand(bids, p) - supply(asks, p)), p) for p in prices]
    if not scored:
        return Clearing(None, 0, 0, 0)
    best = max((v, i) for v, i, _ in scored)
    if best[0] == 0:
        return Clearing(None, 0, 0, 0)
    tied = [p for v, i, p in scored if (v, i) == best]
    p = tied[(len(tied) - 1) // 2]
    return Clearing(p, best[0], demand(bids, p), supply(asks, p))


# --------------------------------------------------------------------------- clearing


def test_simple_crossing_curves():
    bids = [bid(110, 10), bid(100, 10), bid(90, 10)]
    asks = [ask(80, 5), ask(95, 10), ask(120, 10)]
    c = clearing(bids, asks)
    # at 95: demand 20 (110, 100), supply 15 (80, 95) -> 15; at 100: demand 20, supply 15 -> 15, imbalance 5
    # at 90: demand 30, supply 5 -> 5.  Both 95 and 100 give volume 15 / imbalance 5 -> lower median = 95.
    assert c == Clearing(95, 15, 20, 15)


def test_single_pair_crossing_clears_at_lower_median_of_the_two_limits():
    c = clearing([bid(100, 10)], [ask(90, 10)])
    # 90 and 100 both give volume 10, imbalance 0 -> lower median of [90, 100] = 90
    assert c == Clearing(90, 10, 10, 10)


def test_exact_match_at_one_price():
    c = clearing([bid(100, 7)], [ask(100, 7)])
    assert c == Clearing(100, 7, 7, 7)


def test_no_overlap_gives_no_price():
    c = clearing([bid(90, 10), bid(80, 5)], [ask(91, 10), ask(100, 3)])
    assert c.price is None and c.volume == 0


@pytest.mark.parametrize(("bids", "asks"), [([], []), ([(100, 1)], []), ([], [(100, 1)])])
def test_one_empty_side_gives_no_price(bids, asks):
    c = clearing([bid(*b) for b in bids], [ask(*a) for a in asks])
    assert c == Clearing(None, 0, 0, 0)


def test_tie_broken_by_smallest_imbalance():
    bids = [bid(100, 10), bid(96, 4)]
    asks = [ask(95, 10), ask(97, 3)]
    # 95: d=14 s=10 v=10 imb 4; 96: d=14 s=10 v=10 imb 4; 97: d=10 s=13 v=10 imb 3; 100: d=10 s=13 v=10 imb 3
    # -> volume ties everywhere from 95..100; smallest imbalance 3 at 97 and 100; lower median -> 97
    c = clearing(bids, asks)
    assert c == Clearing(97, 10, 10, 13)


def test_tie_broken_by_lower_median_of_tied_prices():
    # volume 10 with imbalance 0 at 90, 93, 95, 100 (all order prices between the two quantities)
    bids = [bid(100, 10), bid(93, 0 + 1)]
    asks = [ask(90, 10), ask(95, 1)]
    # 90: d=11 s=10 v=10 imb1; 93: d=11 s=10 v=10 imb1; 95: d=10 s=11 v10 imb1; 100: d=10 s=11 imb1
    # all tied -> 4 prices, lower median = index 1 -> 93
    c = clearing(bids, asks)
    assert c.price == 93 and c.volume == 10
    assert c == brute_force(bids, asks)


def test_odd_number_of_ties_picks_the_median():
    bids = [bid(100, 5), bid(98, 1), bid(96, 0 + 1)]
    asks = [ask(90, 5), ask(97, 1), ask(99, 1)]
    c = clearing(bids, asks)
    assert c == brute_force(bids, asks)


def test_clearing_is_independent_of_input_order():
    bids = [bid(100, 10), bid(98, 5), bid(97, 3), bid(95, 8)]
    asks = [ask(94, 4), ask(96, 6), ask(97, 2), ask(99, 9)]
    c = clearing(bids, asks)
    assert clearing(list(reversed(bids)), list(reversed(asks))) == c
    assert c == brute_force(bids, asks)


def test_clearing_uses_remaining_not_original_quantity():
    b = bid(100, 10)
    b.remaining = 4
    c = clearing([b], [ask(100, 10)])
    assert c == Clearing(100, 4, 4, 10)


def test_negative_prices():
    c = clearing([bid(-100, 10)], [ask(-300, 10), ask(-50, 10)])
    assert c == brute_force([bid(-100, 10)], [ask(-300, 10), ask(-50, 10)])
    assert c.price in (-300, -100) and c.volume == 10


# --------------------------------------------------------------------------- allocate


def test_allocate_nothing_without_price():
    assert allocate([bid(90, 1)], [ask(100, 1)], Clearing(None, 0, 0, 0)) == []


def test_allocation_follows_price_time_priority_and_fills_exactly_the_volume():
    b1 = bid(110, 5, ts=3)
    b2 = bid(100, 5, ts=1)
    b3 = bid(100, 5, ts=2)
    b4 = bid(90, 50, ts=0)  # below the clearing price: never allocated
    a1 = ask(80, 4, ts=5)
    a2 = ask(95, 8, ts=4)
    a3 = ask(95, 8, ts=9)
    bids = priority([b1, b2, b3, b4])
    asks = priority([a1, a2, a3])
    c = clearing(bids, asks)
    assert c.volume == min(demand(bids, c.price), supply(asks, c.price))
    pairs = allocate(bids, asks, c)
    assert sum(q for _, _, q in pairs) == c.volume
    filled_b = {}
    filled_s = {}
    for b, s, q in pairs:
        assert q > 0
        assert b.price >= c.price >= s.price
        filled_b[b.order_id] = filled_b.get(b.order_id, 0) + q
        filled_s[s.order_id] = filled_s.get(s.order_id, 0) + q
    assert b4.order_id not in filled_b
    # 15 Wh demand at >= 95 (b1, b2, b3), supply at <= 95 is 20 -> volume 15
    # c.price: 95 (d 15, s 20, imb 5) vs 100 (d 15, s 20, imb 5) vs 90 (d 65, s 4) -> 95
    assert c == Clearing(95, 15, 15, 20)
    assert filled_b == {b1.order_id: 5, b2.order_id: 5, b3.order_id: 5}
    # asks: a1 (80) first, then a2 (95, earlier) fully, then a3 gets the rest
    assert filled_s == {a1.order_id: 4, a2.order_id: 8, a3.order_id: 3}
    # allocation order: bids best first, asks best first
    assert [(b.order_id, s.order_id, q) for b, s, q in pairs] == [
        (b1.order_id, a1.order_id, 4),
        (b1.order_id, a2.order_id, 1),
        (b2.order_id, a2.order_id, 5),
        (b3.order_id, a2.order_id, 2),
        (b3.order_id, a3.order_id, 3),
    ]


def test_allocate_does_not_mutate_orders():
    bids = [bid(100, 5)]
    asks = [ask(100, 3)]
    allocate(bids, asks, clearing(bids, asks))
    assert bids[0].remaining == 5 and asks[0].remaining == 3


def test_marginal_order_at_same_price_time_priority():
    early = bid(100, 6, ts=1)
    late = bid(100, 6, ts=2)
    s = ask(100, 8)
    bids = [early, late]
    pairs = allocate(bids, [s], clearing(bids, [s]))
    assert [(b.order_id, q) for b, _, q in pairs] == [(early.order_id, 6), (late.order_id, 2)]


# --------------------------------------------------------------------------- properties


def _orders(side):
    return st.lists(st.tuples(st.integers(90, 110), st.integers(1, 20)), max_size=8).map(
        lambda xs: [order(side, p, q) for p, q in xs])


@settings(max_examples=300, deadline=None, database=None)
@given(_orders(Side.BUY), _orders(Side.SELL))
def test_clearing_matches_brute_force_and_allocation_is_consistent(bids, asks):
    c = clearing(bids, asks)
    assert c == brute_force(bids, asks)
    # the volume is the maximum executable over every integer price, not just order prices
    best = max((min(demand(bids, p), supply(asks, p)) for p in range(80, 121)), default=0)
    assert c.volume == best
    pb, pa = priority(bids), priority(asks)
    pairs = allocate(pb, pa, c)
    assert sum(q for _, _, q in pairs) == c.volume
    fb: dict[int, int] = {}
    fs: dict[int, int] = {}
    for b, s, q in pairs:
        assert q > 0 and b.price >= c.price >= s.price
        fb[b.order_id] = fb.get(b.order_id, 0) + q
        fs[s.order_id] = fs.get(s.order_id, 0) + q
    for side_orders, filled in ((pb, fb), (pa, fs)):
        # price-time priority: filled amounts are a prefix of the priority order, at most one partial
        seen_partial = False
        for o in side_orders:
            f = filled.get(o.order_id, 0)
            assert f <= o.remaining
            if seen_partial:
                assert f == 0
            elif f < o.remaining:
                seen_partial = True
