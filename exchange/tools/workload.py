"""Seeded, reproducible order flow for benchmarks, demos and tests (pure).

The mix follows the issue: about 55 % resting limit orders, 25 % crossing
orders (a quarter of them IOC), 20 % cancels and modifies, spread over a
day's products, from a population of registered members. Prices are drawn
around a per-product reference price so books build depth and trade often.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import CancelOrder, Command, ModifyOrder, PlaceOrder, RegisterMember, Side, TimeInForce

BIG_COLLATERAL = 10**18
BIG_CAPACITY_W = 10**9


def members(n: int) -> list[MemberId]:
    return [MemberId(f"m{i:04d}") for i in range(n)]


def registrations(names: Sequence[str], ts: int) -> list[Command]:
    return [RegisterMember(ts, MemberId(m), collateral=BIG_COLLATERAL, export_capacity_w=BIG_CAPACITY_W)
            for m in names]


class OrderFlow:
    """Generates commands; tracks the order ids it expects the engine to assign
    (order ids are sequential per market, so a fresh engine fed this stream
    assigns exactly these)."""

    def __init__(self, products: Sequence[str], names: Sequence[str], seed: int = 1, first_order_id: int = 1) -> None:
        self.rng = random.Random(seed)
        self.products = [ProductId(p) for p in products]
        self.names = [MemberId(m) for m in names]
        self.ref = {p: 800_0 + self.rng.randrange(-2000, 2000) for p in self.products}  # ticks, ~80 EUR/MWh
        self.next_oid = first_order_id
        self.open: list[tuple[OrderId, MemberId]] = []  # (order id, member) possibly still open

    def place(self, ts: int, crossing: bool) -> PlaceOrder:
        r = self.rng
        p = r.choice(self.products)
        side = Side.BUY if r.random() < 0.5 else Side.SELL
        ref = self.ref[p]
        off = r.randrange(1, 1500)
        if crossing:
            price = ref + off if side is Side.BUY else ref - off
            tif = TimeInForce.IOC if r.random() < 0.25 else TimeInForce.GTC
        else:
            price = ref - off if side is Side.BUY else ref + off
            tif = TimeInForce.GTC
        qty = r.randrange(1, 50) * 100
        m = r.choice(self.names)
        oid = OrderId(self.next_oid)
        self.next_oid += 1
        if tif is TimeInForce.GTC:
            self.open.append((oid, m))
        return PlaceOrder(ts, m, p, side, price, qty, tif)

    def next(self, ts: int) -> Command:
        r = self.rng
        x = r.random()
        if x < 0.20 and self.open:
            i = r.randrange(len(self.open))
            oid, m = self.open[i]
            self.open[i] = self.open[-1]
            self.open.pop()
            if r.random() < 0.5:
                return CancelOrder(ts, m, oid)
            self.open.append((oid, m))
            return ModifyOrder(ts, m, oid, quantity=r.randrange(1, 20) * 100)
        return self.place(ts, crossing=x >= 0.75)

    def stream(self, n: int, t0: int, step_us: int = 10) -> Iterator[Command]:
        for i in range(n):
            yield self.next(t0 + i * step_us)
