"""Seeded, reproducible order flow for benchmarks, demos and tests (pure).

The default mix follows the engine issue: about 55 % resting limit orders, 25 %
crossing orders (a quarter of them IOC), 20 % cancels and modifies, spread over a
day's products, from a population of registered members. Prices are drawn
around a per-product reference price so books build depth and trade often.

A :class:`Mix` adds the later order types: post-only and good-till-date among the
resting orders, a minimum quantity on IOC orders, and block orders (for a market
whose day-ahead auction takes them). :data:`ENGINE_MIX` is what ``bench engine``
runs. A flow that may be refused (a post-only order that would trade, a block)
cannot predict the order ids the engine assigns: with ``feedback=True`` it learns
them from the engine's events (:meth:`OrderFlow.record`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from exchange.core.engine import MarketEngine
from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import (
    BlockAccepted,
    CancelOrder,
    Command,
    Event,
    ModifyOrder,
    OrderAccepted,
    PlaceBlock,
    PlaceOrder,
    RegisterMember,
    Side,
    TimeInForce,
)

BIG_COLLATERAL = 10**18
BIG_CAPACITY_W = 10**9
_SECOND_US = 1_000_000


@dataclass(frozen=True)
class Mix:
    """What an :class:`OrderFlow` sends, as probabilities. ``cancel_modify``, ``block`` and
    ``crossing`` are shares of all commands (the rest: resting limit orders); ``ioc`` is a
    share of the crossing orders, ``min_quantity`` of the IOC ones; ``post_only`` and
    ``good_till_date`` are shares of the resting orders. The defaults are the original mix
    (and draw exactly the random numbers they always drew: same seed, same stream)."""

    cancel_modify: float = 0.20
    crossing: float = 0.25
    ioc: float = 0.25
    min_quantity: float = 0.0
    post_only: float = 0.0
    good_till_date: float = 0.0
    block: float = 0.0
    #: a good-till-date order expires this many whole seconds after its entry, drawn in [1, max]
    gtd_max_s: int = 3

    def __post_init__(self) -> None:
        if self.cancel_modify + self.block + self.crossing > 1 or self.post_only + self.good_till_date > 1:
            raise ValueError("the shares of a mix add up to more than 1")

    def fractions(self) -> dict[str, float]:
        """Each kind of command's expected share of the stream (they add up to 1)."""
        resting = 1 - self.cancel_modify - self.block - self.crossing
        ioc = self.crossing * self.ioc
        out = {
            "limit_resting": resting * (1 - self.post_only - self.good_till_date),
            "post_only": resting * self.post_only,
            "good_till_date": resting * self.good_till_date,
            "limit_crossing": self.crossing - ioc,
            "ioc": ioc * (1 - self.min_quantity),
            "ioc_min_quantity": ioc * self.min_quantity,
            "cancel": self.cancel_modify / 2,
            "modify": self.cancel_modify / 2,
            "block": self.block,
        }
        return {k: round(v, 4) for k, v in out.items()}


#: The original mix (every flow's default).
BASIC_MIX = Mix()
#: ``bench engine``'s continuous market: the original shares, a fifth of the resting orders
#: post-only and a fifth good till a date a few seconds ahead, half the IOC orders with a
#: minimum quantity. (Blocks are refused by a continuous market: the bench measures them in a
#: day-ahead auction of their own, with :data:`AUCTION_MIX`.)
ENGINE_MIX = Mix(post_only=0.2, good_till_date=0.2, min_quantity=0.5)
#: Orders collected by a day-ahead auction: resting orders only (IOC is refused there), 1 % blocks.
AUCTION_MIX = Mix(crossing=0.25, ioc=0.0, post_only=0.2, good_till_date=0.1, block=0.01)


def members(n: int) -> list[MemberId]:
    return [MemberId(f"m{i:04d}") for i in range(n)]


def registrations(names: Sequence[str], ts: int) -> list[Command]:
    return [RegisterMember(ts, MemberId(m), collateral=BIG_COLLATERAL, export_capacity_w=BIG_CAPACITY_W)
            for m in names]


class OrderFlow:
    """Generates commands and tracks the orders it may cancel or modify. By default it
    predicts the order ids the engine assigns (they are sequential per market, so a fresh
    engine fed this stream assigns exactly these, as long as no order is refused); with
    ``feedback`` it learns them from the engine instead (:meth:`observe`, :meth:`record`).

    ``products`` are in delivery order (a block takes consecutive ones)."""

    def __init__(self, products: Sequence[str], names: Sequence[str], seed: int = 1, first_order_id: int = 1,
                 mix: Mix = BASIC_MIX, feedback: bool = False) -> None:
        self.rng = random.Random(seed)
        self.products = [ProductId(p) for p in products]
        self.names = [MemberId(m) for m in names]
        self.ref = {p: 800_0 + self.rng.randrange(-2000, 2000) for p in self.products}  # ticks, ~80 EUR/MWh
        self.next_oid = first_order_id
        self.open: list[tuple[OrderId, MemberId]] = []  # (order id, member) possibly still open
        self.mix = mix
        self.feedback = feedback
        self._placed: tuple[MemberId, bool] | None = None  # (member, may rest) of the last order sent

    def _sent(self, m: MemberId, rests: bool) -> None:
        if self.feedback:
            self._placed = (m, rests)
            return
        oid = OrderId(self.next_oid)
        self.next_oid += 1
        if rests:
            self.open.append((oid, m))

    def observe(self, events: Sequence[Event]) -> None:
        """(``feedback``) The engine's answer to the last command: an accepted order's id."""
        placed, self._placed = self._placed, None
        if placed is None:
            return
        for ev in events:
            if type(ev) is OrderAccepted or type(ev) is BlockAccepted:
                self.next_oid = ev.order_id + 1
                if placed[1]:
                    self.open.append((ev.order_id, placed[0]))
                return

    def place(self, ts: int, crossing: bool) -> PlaceOrder:
        r = self.rng
        mix = self.mix
        p = r.choice(self.products)
        side = Side.BUY if r.random() < 0.5 else Side.SELL
        ref = self.ref[p]
        off = r.randrange(1, 1500)
        post_only = False
        expire_at = None
        if crossing:
            price = ref + off if side is Side.BUY else ref - off
            tif = TimeInForce.IOC if mix.ioc and r.random() < mix.ioc else TimeInForce.GTC
        else:
            price = ref - off if side is Side.BUY else ref + off
            tif = TimeInForce.GTC
            if mix.post_only or mix.good_till_date:
                y = r.random()
                if y < mix.post_only:
                    post_only = True
                elif y < mix.post_only + mix.good_till_date:
                    expire_at = (ts // _SECOND_US + r.randint(1, mix.gtd_max_s)) * _SECOND_US  # whole seconds
        qty = r.randrange(1, 50) * 100
        min_quantity = None
        if tif is TimeInForce.IOC and mix.min_quantity and r.random() < mix.min_quantity:
            min_quantity = max(100, qty * r.randrange(2, 10) // 10 // 100 * 100)
        m = r.choice(self.names)
        self._sent(m, tif is TimeInForce.GTC)
        return PlaceOrder(ts, m, p, side, price, qty, tif, post_only=post_only, expire_at=expire_at,
                          min_quantity=min_quantity)

    def block(self, ts: int) -> PlaceBlock:
        """``quantity`` in each of 2 to 8 consecutive products, priced around their references'
        average on the willing side (a buy a little above it, a sell a little below)."""
        r = self.rng
        n = min(len(self.products), r.randint(2, 8))
        first = r.randrange(len(self.products) - n + 1)
        hours = self.products[first:first + n]
        avg = sum(self.ref[p] for p in hours) // n
        side = Side.BUY if r.random() < 0.5 else Side.SELL
        off = r.randrange(0, 1000)
        price = avg + off if side is Side.BUY else avg - off
        m = r.choice(self.names)
        self._sent(m, False)
        return PlaceBlock(ts, m, list(hours), side, price, r.randrange(1, 20) * 100)

    def next(self, ts: int) -> Command:
        r = self.rng
        mix = self.mix
        x = r.random()
        if x < mix.cancel_modify and self.open:
            i = r.randrange(len(self.open))
            oid, m = self.open[i]
            self.open[i] = self.open[-1]
            self.open.pop()
            if r.random() < 0.5:
                return CancelOrder(ts, m, oid)
            self.open.append((oid, m))
            return ModifyOrder(ts, m, oid, quantity=r.randrange(1, 20) * 100)
        if mix.block and mix.cancel_modify <= x < mix.cancel_modify + mix.block and len(self.products) > 1:
            return self.block(ts)
        return self.place(ts, crossing=x >= 1 - mix.crossing)

    def stream(self, n: int, t0: int, step_us: int = 10) -> Iterator[Command]:
        for i in range(n):
            yield self.next(t0 + i * step_us)

    def record(self, engine: MarketEngine, n: int, t0: int, step_us: int = 10) -> list[Command]:
        """(``feedback``) ``n`` commands, each processed by ``engine`` as it is made so that the
        flow learns the order ids: the same list fed to a fresh engine in the same state as
        ``engine`` was gives the same events (the engine is deterministic)."""
        out: list[Command] = []
        for i in range(n):
            cmd = self.next(t0 + i * step_us)
            self.observe(engine.process(cmd))
            out.append(cmd)
        return out
