"""What every bot shares: the market view and the :class:`Bot` base class.

:class:`MarketWatch` polls ``/api/products`` and ``/api/market`` (public REST)
and estimates the exchange's (simulated) time from the last engine time it saw
plus wall time x ``speed``; :class:`ProductView` is what it knows of one
product. :class:`Bot` is one member over the SDK: its connection, its open
orders (from the execution stream), its fills, and the requote loop that
reconciles the book with what its planner (:mod:`clients.bots.strategies`)
wants. The concrete bots (:mod:`~clients.bots.prosumer`,
:mod:`~clients.bots.battery`, :mod:`~clients.bots.zic_bot`) subclass it;
:mod:`clients.bots.runner` builds and runs them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import aiohttp

from clients.bots.strategies import Intent, MarketView
from clients.sdk import OrderRejected, OutcomeUnknown, RequestError, VoltbourseClient
from clients.sdk.errors import ClientClosed
from exchange.core.units import US_PER_MIN

__all__ = ["Bot", "BotStats", "MarketWatch", "OpenOrder", "ProductView"]

log = logging.getLogger(__name__)


def _us(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


# --------------------------------------------------------------------------- market view


@dataclass
class ProductView:
    product_id: str
    state: str
    start_us: int
    gate_us: int
    delivery_day: date
    best_bid: int | None = None
    best_ask: int | None = None
    last_price: int | None = None


class MarketWatch:
    """Products (state, gate, best prices, last trade price) and the market's time, from the
    public REST API plus the trades each bot sees."""

    def __init__(self, http_url: str, speed: float, poll_s: float = 1.0) -> None:
        self.http_url = http_url.rstrip("/")
        self.speed = speed
        self.poll_s = poll_s
        self.products: dict[str, ProductView] = {}
        self.config: dict = {}
        self.market_id: str | None = None
        self._anchor = (0, time.monotonic())  # (market us, wall monotonic)
        self._task: asyncio.Task | None = None
        self.changed = asyncio.Event()

    def now_us(self) -> int:
        us, t = self._anchor
        return us + int((time.monotonic() - t) * 1e6 * self.speed)

    def observe_time(self, us: int) -> None:
        """Re-anchor on a time the exchange reported (never move backwards)."""
        if us > self.now_us():
            self._anchor = (us, time.monotonic())

    def open_products(self) -> list[ProductView]:
        now = self.now_us()
        return sorted((p for p in self.products.values() if p.state == "open" and p.gate_us > now),
                      key=lambda p: p.start_us)

    def days(self) -> list[date]:
        return sorted({p.delivery_day for p in self.products.values() if p.state in ("pre_open", "open")})

    def day_products(self, day: date) -> list[str]:
        return sorted(p.product_id for p in self.products.values() if p.delivery_day == day)

    async def refresh(self, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{self.http_url}/api/market") as r:
            m = await r.json()
        self.market_id = m["market_id"]
        self.config = m["config"]
        if m.get("now"):
            self.observe_time(_us(m["now"]))
        async with http.get(f"{self.http_url}/api/products") as r:
            rows = await r.json()
        for row in rows:
            pid = row["product_id"]
            pv = self.products.get(pid)
            if pv is None:
                pv = self.products[pid] = ProductView(pid, row["state"], _us(row["start"]), _us(row["gate"]),
                                                      date.fromisoformat(row["delivery_day"]))
                self.changed.set()
            pv.state = row["state"]
            pv.best_bid, pv.best_ask = row.get("best_bid"), row.get("best_ask")

    async def run(self, http: aiohttp.ClientSession) -> None:
        while True:
            try:
                await self.refresh(http)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                log.warning("market watch: %r", exc)
            await asyncio.sleep(self.poll_s)

    def on_trade(self, product_id: str, price: int, ts: str | None) -> None:
        pv = self.products.get(product_id)
        if pv is not None:
            pv.last_price = price
        if ts:
            self.observe_time(_us(ts))


# --------------------------------------------------------------------------- bots


@dataclass
class BotStats:
    placed: int = 0
    cancelled: int = 0
    fills: int = 0
    bought_wh: int = 0
    sold_wh: int = 0
    paid: int = 0  # money units (Wh x ticks): buys - sells
    rejected: Counter = field(default_factory=Counter)
    lost: int = 0  # requests whose answer was lost (connection)


@dataclass
class OpenOrder:
    order_id: int
    product_id: str
    side: str
    price: int
    remaining: int


class Bot:
    """One member: a connection, its open orders (from the execution stream) and planners.

    Subclasses implement :meth:`planner_for` (the planner of a product, or None) and
    :meth:`wanted_products` (which open products to quote now)."""

    role = "prosumer"

    def __init__(self, key, name: str = "") -> None:
        self.key = key
        self.address: str = key.address
        self.name = name or self.address[:10]
        self.client: VoltbourseClient | None = None
        self.open: dict[int, OpenOrder] = {}
        self.stats = BotStats()
        self.fill_count = 0
        self.trade_ids: set[int] = set()
        self.fill_log: dict[int, tuple[str, str, int, int]] = {}  # trade id -> (product, side, Wh, price)
        self.last_trade_seq = 0
        self._coids = itertools.count(1)

    # -- to implement
    def planner_for(self, product_id: str) -> Any:
        raise NotImplementedError

    def wanted_products(self, watch: MarketWatch) -> list[ProductView]:
        return [p for p in watch.open_products() if self.planner_for(p.product_id) is not None]

    def on_new_day(self, day: date, product_ids: list[str], watch: MarketWatch) -> None:
        """A delivery day appeared in the calendar: build its planner(s)."""

    def registration(self) -> dict:
        """The member's row for the operator REST API (``POST /api/operator/members``)."""
        return {"address": self.address, "name": self.name, "role": self.role, "export_capacity_w": 0,
                "retail_tariff_ticks": 30_000, "feed_in_tariff_ticks": 8_000,
                "collateral": 100_000 * 10**8}

    # -- connection
    async def connect(self, url: str, http: aiohttp.ClientSession, watch: MarketWatch) -> VoltbourseClient:
        self.client = c = VoltbourseClient(url, self.key, session=http, backoff_max=5.0)
        c.on("execution", self._on_execution)
        c.on("trade", lambda m: watch.on_trade(m["product_id"], m["price"], m.get("ts")))
        c.on_connect(self._on_connect)
        await c.connect()
        return c

    async def _on_connect(self, c: VoltbourseClient) -> None:
        if c.connects == 0:  # first login (the hook runs before the counter moves)
            return
        # reconnected: rebuild open orders and report missed fills from the committed state (not by
        # replaying the private stream: that does not cover a restart of the exchange)
        try:
            self.open = {o.order_id: OpenOrder(o.order_id, o.product_id, o.side, o.price, o.remaining)
                         for o in await c.orders()}
            while True:
                page = await c.my_trades(after=self.last_trade_seq, limit=1000)
                for t in page:
                    self._fill(t.trade_id, t.seq, t.product_id, t.side, t.quantity, t.price)
                if len(page) < 1000:
                    break
        except (RequestError, OutcomeUnknown) as exc:
            log.warning("%s: resync after reconnection failed: %s", self.name, exc)

    def _fill(self, trade_id: int, seq: int, product_id: str, side: str, qty: int, price: int) -> None:
        if trade_id in self.trade_ids:
            return
        self.trade_ids.add(trade_id)
        self.fill_log[trade_id] = (product_id, side, qty, price)
        self.last_trade_seq = max(self.last_trade_seq, seq)
        self.fill_count += 1
        s = self.stats
        s.fills += 1
        if side == "buy":
            s.bought_wh += qty
            s.paid += qty * price
        else:
            s.sold_wh += qty
            s.paid -= qty * price
        planner = self.planner_for(product_id)
        if planner is not None:
            planner.on_fill(side, product_id, qty, price)

    def _on_execution(self, m: dict) -> None:
        kind = m["exec"]
        oid = m["order_id"]
        if kind == "accepted":
            rem = m.get("remaining", m.get("quantity"))
            if rem:
                self.open[oid] = OpenOrder(oid, m["product_id"], m["side"], m["price"], rem)
        elif kind == "fill":
            self._fill(m["trade_id"], m["seq"], m["product_id"], m["side"], m["quantity"], m["price"])
            o = self.open.get(oid)
            if o is not None:
                o.remaining = m["remaining"]
                if not o.remaining:
                    del self.open[oid]
        elif kind in ("cancelled", "expired"):
            self.open.pop(oid, None)
        elif kind == "modified":
            o = self.open.get(oid)
            if o is not None:
                o.price, o.remaining = m["price"], m["remaining"]

    # -- trading
    def _view(self, p: ProductView) -> MarketView:
        return MarketView(None, p.best_bid, p.best_ask, p.last_price)

    async def requote(self, p: ProductView, now_us: int) -> None:
        """Make the member's resting orders in ``p`` equal to what its planner wants."""
        planner = self.planner_for(p.product_id)
        client = self.client
        if planner is None or client is None:
            return
        mtg = max(0, (p.gate_us - now_us) // US_PER_MIN)
        intents = planner.plan(now_us, p.product_id, mtg, self._view(p))
        mine = [o for o in self.open.values() if o.product_id == p.product_id]
        todo, stale = self._match(intents, mine)
        if stale:
            before = self.fill_count
            await asyncio.gather(*(self._cancel(client, o) for o in stale))
            if self.fill_count != before:  # fills came in meanwhile: the plan is out of date
                intents = planner.plan(now_us, p.product_id, mtg, self._view(p))
                kept = [o for o in mine if o not in stale and o.order_id in self.open]
                todo, _ = self._match(intents, kept)
        for it in todo:
            await self._place(client, p.product_id, it)

    @staticmethod
    def _match(intents, mine: list[OpenOrder]):
        todo = []
        free = list(mine)
        for it in intents:
            side = it.side.value if hasattr(it.side, "value") else it.side
            hit = next((o for o in free if o.side == side and o.price == it.price_ticks
                        and o.remaining == it.quantity_wh), None)
            if hit is not None:
                free.remove(hit)
            else:
                todo.append(it)
        return todo, free

    async def _cancel(self, client: VoltbourseClient, o: OpenOrder) -> None:
        try:
            await client.cancel(o.order_id)
            self.stats.cancelled += 1
        except OrderRejected as exc:  # filled or expired meanwhile
            self.stats.rejected[exc.code] += 1
        except OutcomeUnknown:
            self.stats.lost += 1
        except RequestError as exc:
            self.stats.rejected[exc.code] += 1

    async def _place(self, client: VoltbourseClient, product_id: str, it: Intent) -> None:
        side = it.side.value if hasattr(it.side, "value") else it.side
        coid = f"bot-{self.address[2:10]}-{int(time.time() * 1000) % 10**10}-{next(self._coids)}"
        try:
            await client.place(product_id, side, it.price_ticks, it.quantity_wh, client_order_id=coid,
                                    retries=1)
            self.stats.placed += 1
        except OutcomeUnknown:
            self.stats.lost += 1
        except RequestError as exc:
            self.stats.rejected[exc.code] += 1

    async def run(self, watch: MarketWatch, requote_wall_s: float, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(0, requote_wall_s))  # spread the bots out
        while True:
            now = watch.now_us()
            for p in self.wanted_products(watch):
                try:
                    await self.requote(p, now)
                except ClientClosed:
                    return
                except Exception as exc:  # a planner or protocol surprise must not stop the member
                    self.stats.rejected[f"bot error: {type(exc).__name__}"] += 1
                    log.warning("%s: requote of %s failed: %r", self.name, p.product_id, exc)
            await asyncio.sleep(requote_wall_s * rng.uniform(0.8, 1.2))
