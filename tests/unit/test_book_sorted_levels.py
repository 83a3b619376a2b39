"""The book's sides (exchange.core.book.SortedLevels) keep their keys sorted through any mix of
inserts and deletes, chunk splits and emptied chunks included (a tiny chunk size forces them),
and the book built on them answers best prices, levels in order and priority like a sorted dict."""

from __future__ import annotations

import random

import pytest

from exchange.core import book as book_mod
from exchange.core.book import Level, Order, OrderBook, SortedLevels
from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import Side, TimeInForce

pytestmark = pytest.mark.unit


def _check(side: SortedLevels, ref: dict[int, Level]) -> None:
    keys = sorted(ref)
    assert dict(side) == ref
    assert [lvl for lvl in side.in_order()] == [ref[k] for k in keys]
    assert side.first_key() == (keys[0] if keys else None)
    assert side.first() is (ref[keys[0]] if keys else None)
    chunks, maxes = side._chunks, side._maxes
    assert all(chunks) and [c[-1] for c in chunks] == maxes
    assert [k for c in chunks for k in c] == keys
    assert all(len(c) <= 2 * book_mod._CHUNK for c in chunks)


@pytest.mark.parametrize("chunk", [1, 2, 3, 512])
@pytest.mark.parametrize("seed", range(4))
def test_sorted_levels_match_a_sorted_dict(monkeypatch, chunk, seed):
    monkeypatch.setattr(book_mod, "_CHUNK", chunk)
    r = random.Random(seed)
    side = SortedLevels()
    ref: dict[int, Level] = {}
    span = r.choice([5, 50, 3000])
    for step in range(3000):
        key = r.randrange(-span, span)
        if key in ref and r.random() < 0.6:
            side.delete(key)
            del ref[key]
        elif key not in ref:
            lvl = Level(key, side, key)
            side.insert(key, lvl)
            ref[key] = lvl
        if r.random() < 0.01:  # drain from the best end, as matching does
            while ref and r.random() < 0.9:
                k = min(ref)
                side.delete(k)
                del ref[k]
        if step % 97 == 0:
            _check(side, ref)
    _check(side, ref)
    for k in list(ref):
        side.delete(k)
        del ref[k]
    _check(side, ref)


def _order(oid: int, side: Side, price: int, qty: int = 10) -> Order:
    return Order(OrderId(oid), MemberId("m"), ProductId("p"), side, price, qty, TimeInForce.GTC, None, None, oid)


def test_book_best_prices_levels_and_priority(monkeypatch):
    monkeypatch.setattr(book_mod, "_CHUNK", 2)
    b = OrderBook(ProductId("p"))
    assert b.best_bid() is None and b.best_ask() is None and b.best_level(Side.BUY) is None
    r = random.Random(7)
    orders = [_order(i, r.choice([Side.BUY, Side.SELL]), r.randrange(90, 110) + (0 if i % 2 else 30), 10)
              for i in range(1, 400)]
    for o in orders:
        b.add(o)
    live = list(orders)
    for o in r.sample(orders, 250):
        b.remove(o)
        live.remove(o)
    bids = sorted({o.price for o in live if o.side is Side.BUY}, reverse=True)
    asks = sorted({o.price for o in live if o.side is Side.SELL})
    assert b.best_bid() == bids[0] and b.best_ask() == asks[0]
    assert [p for p, _ in b.side_levels(Side.BUY)] == bids
    assert [p for p, _ in b.side_levels(Side.SELL)] == asks
    want = ([o for p in bids for o in live if o.side is Side.BUY and o.price == p]
            + [o for p in asks for o in live if o.side is Side.SELL and o.price == p])
    assert list(b.orders()) == want  # price, then time priority
    for side, prices in ((Side.BUY, bids), (Side.SELL, asks)):
        assert b.depth(side) == [(p, 10 * sum(1 for o in live if o.side is side and o.price == p),
                                  sum(1 for o in live if o.side is side and o.price == p)) for p in prices]
        lvl = b.best_level(side)
        assert lvl is not None and lvl.price == prices[0]
