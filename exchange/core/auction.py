"""Uniform-price call auction (pay-as-clear), pure.

The clearing price is the order price that maximises executed volume; ties are
broken by the smallest imbalance |demand - supply|, and remaining ties by the
lower median of the tied prices (deterministic, an integer tick). Every trade
of the auction is at that one price. Orders are allocated in price-time
priority: bids from the highest limit, asks from the lowest, earlier orders
first at the same price; the marginal order may be partly filled.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from exchange.core.book import Order


@dataclass(frozen=True, slots=True)
class Clearing:
    price: int | None
    volume: int
    demand: int
    supply: int


def clearing(bids: Sequence[Order], asks: Sequence[Order], takers: Collection[Order] = ()) -> Clearing:
    """Find the uniform clearing price for resting bids and asks (any order). ``takers``
    (orders of block bids, at the extreme price) add their volume at every price but do
    not set one: the price comes from the other orders' limits."""
    taking = {id(o) for o in takers}
    prices = sorted({o.price for o in bids if id(o) not in taking} | {o.price for o in asks if id(o) not in taking})
    if not bids or not asks or not prices:
        return Clearing(None, 0, 0, 0)
    bid_at: dict[int, int] = {}
    ask_at: dict[int, int] = {}
    must_buy = must_sell = 0  # the takers' volume: demanded (offered) at every price
    for o in bids:
        if id(o) in taking:
            must_buy += o.remaining
        else:
            bid_at[o.price] = bid_at.get(o.price, 0) + o.remaining
    for o in asks:
        if id(o) in taking:
            must_sell += o.remaining
        else:
            ask_at[o.price] = ask_at.get(o.price, 0) + o.remaining
    # demand(p) = bids with price >= p, supply(p) = asks with price <= p
    demand = []
    acc = must_buy
    for p in reversed(prices):
        acc += bid_at.get(p, 0)
        demand.append(acc)
    demand.reverse()
    best_key = None
    tied: list[tuple[int, int, int]] = []
    supply = must_sell
    for i, p in enumerate(prices):
        supply += ask_at.get(p, 0)
        d = demand[i]
        v = min(d, supply)
        key = (v, -abs(d - supply))
        if best_key is None or key > best_key:
            best_key, tied = key, [(p, d, supply)]
        elif key == best_key:
            tied.append((p, d, supply))
    assert best_key is not None
    if best_key[0] == 0:
        return Clearing(None, 0, 0, 0)
    p, d, s = tied[(len(tied) - 1) // 2]
    return Clearing(p, best_key[0], d, s)


def allocate(bids: Sequence[Order], asks: Sequence[Order], c: Clearing) -> list[tuple[Order, Order, int]]:
    """Pair bids and asks at the clearing price: (buy, sell, quantity) in allocation order.

    ``bids`` and ``asks`` must be given in price-time priority (best first).
    """
    if c.price is None:
        return []
    buys = [o for o in bids if o.price >= c.price]
    sells = [o for o in asks if o.price <= c.price]
    out = []
    bi = si = 0
    left_b = buys[0].remaining if buys else 0
    left_s = sells[0].remaining if sells else 0
    volume = c.volume
    while volume > 0:
        q = min(left_b, left_s, volume)
        out.append((buys[bi], sells[si], q))
        volume -= q
        left_b -= q
        left_s -= q
        if left_b == 0 and volume:
            bi += 1
            left_b = buys[bi].remaining
        if left_s == 0 and volume:
            si += 1
            left_s = sells[si].remaining
    return out
