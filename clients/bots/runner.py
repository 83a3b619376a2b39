"""Run many bot members in one process against an exchange, over the SDK.

``voltbourse bots run --members 200 --speed 600 --duration 150`` starts a local
exchange (embedded PostgreSQL + ``voltbourse serve`` subprocess, simulated
clock at ``--speed``), registers the members over the operator REST API and
lets them trade. With ``--url ws://HOST:PORT/ws`` the bots join a running
exchange instead; give ``--operator-token`` to have the runner register its
members there (otherwise the operator must have registered them). Member keys
are derived from ``--seed`` (:func:`clients.sdk.member_key`), so a rerun uses
the same members.

Each member is one :class:`Bot` with its own :class:`~clients.sdk.VoltbourseClient`
(one WebSocket, sharing one aiohttp session). A bot holds a pure planner
(:mod:`clients.bots.strategies`) per delivery day; every ``requote`` simulated
minutes it asks the planner for the orders it wants resting in each open
product and reconciles the book with them (contract in strategies.py: cancel
what differs, wait for the acks, re-plan if fills arrived meanwhile, place
the rest). Fills reach the planner from the execution reports, in stream
order; after a reconnection the missed fills are fetched with ``trades``.

Market time: the runner's :class:`MarketWatch` polls ``/api/products`` and
``/api/market`` (public REST) and estimates the exchange's (simulated) time
from the last engine time it saw plus wall time × ``speed``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from clients.sdk import OrderRejected, OutcomeUnknown, RequestError, VoltbourseClient
from clients.sdk.errors import ClientClosed

log = logging.getLogger(__name__)

US_PER_MIN = 60_000_000


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
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
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
    async def connect(self, url: str, http: aiohttp.ClientSession, watch: MarketWatch) -> None:
        self.client = c = VoltbourseClient(url, self.key, session=http, backoff_max=5.0)
        c.on("execution", self._on_execution)
        c.on("trade", lambda m: watch.on_trade(m["product_id"], m["price"], m.get("ts")))
        c.on_connect(self._on_connect)
        await c.connect()

    async def _on_connect(self, c: VoltbourseClient) -> None:
        if c.connects == 0:  # first login (the hook runs before the counter moves)
            return
        # reconnected: execution reports sent meanwhile are lost; rebuild open orders, report missed fills
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
    def _view(self, p: ProductView):
        from clients.bots.strategies import MarketView

        return MarketView(None, p.best_bid, p.best_ask, p.last_price)

    async def requote(self, p: ProductView, now_us: int) -> None:
        """Make the member's resting orders in ``p`` equal to what its planner wants."""
        planner = self.planner_for(p.product_id)
        if planner is None or self.client is None:
            return
        mtg = max(0, (p.gate_us - now_us) // US_PER_MIN)
        intents = planner.plan(now_us, p.product_id, mtg, self._view(p))
        mine = [o for o in self.open.values() if o.product_id == p.product_id]
        todo, stale = self._match(intents, mine)
        if stale:
            before = self.fill_count
            await asyncio.gather(*(self._cancel(o) for o in stale))
            if self.fill_count != before:  # fills came in meanwhile: the plan is out of date
                intents = planner.plan(now_us, p.product_id, mtg, self._view(p))
                kept = [o for o in mine if o not in stale and o.order_id in self.open]
                todo, _ = self._match(intents, kept)
        for it in todo:
            await self._place(p.product_id, it)

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

    async def _cancel(self, o: OpenOrder) -> None:
        try:
            await self.client.cancel(o.order_id)
            self.stats.cancelled += 1
        except OrderRejected as exc:  # filled or expired meanwhile
            self.stats.rejected[exc.code] += 1
        except OutcomeUnknown:
            self.stats.lost += 1
        except RequestError as exc:
            self.stats.rejected[exc.code] += 1

    async def _place(self, product_id: str, it) -> None:
        side = it.side.value if hasattr(it.side, "value") else it.side
        coid = f"bot-{self.address[2:10]}-{int(time.time() * 1000) % 10**10}-{next(self._coids)}"
        try:
            await self.client.place(product_id, side, it.price_ticks, it.quantity_wh, client_order_id=coid,
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


# --------------------------------------------------------------------------- the runner


class BotRunner:
    """Bots of one process against one exchange."""

    def __init__(self, url: str, bots: list[Bot], *, speed: float = 1, requote_minutes: float = 15,
                 operator_token: str | None = None, concurrency: int = 50) -> None:
        self.url = url
        self.http_url = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rsplit("/ws", 1)[0]
        self.bots = bots
        self.speed = speed
        self.requote_wall_s = max(0.2, requote_minutes * 60 / speed)
        self.operator_token = operator_token
        self.concurrency = concurrency
        self.watch = MarketWatch(self.http_url, speed)
        self._days: set[date] = set()

    async def register(self, http: aiohttp.ClientSession) -> tuple[int, int]:
        created = existing = 0
        headers = {"Authorization": f"Bearer {self.operator_token}"}
        sem = asyncio.Semaphore(8)

        async def one(bot: Bot) -> None:
            nonlocal created, existing
            async with sem, http.post(f"{self.http_url}/api/operator/members", json=bot.registration(),
                                      headers=headers) as r:
                if r.status in (200, 201):
                    created += 1
                elif r.status == 409 and (await r.json()).get("error") == "MEMBER_EXISTS":
                    existing += 1
                else:
                    raise RuntimeError(f"registering {bot.address} failed: {r.status} {await r.text()}")

        await asyncio.gather(*(one(b) for b in self.bots))
        return created, existing

    def _new_days(self) -> None:
        for day in self.watch.days():
            if day not in self._days:
                self._days.add(day)
                pids = self.watch.day_products(day)
                for b in self.bots:
                    b.on_new_day(day, pids, self.watch)

    async def run(self, duration: float, report_every: float = 10.0, out=print, kpis: bool = True) -> dict:
        """Trade for ``duration`` wall seconds (<= 0: until cancelled); return the summary, with
        ``summary["kpis"]`` (:meth:`kpis`, after the bots' orders are cancelled) when ``kpis``."""
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await self.watch.refresh(http)
            if self.operator_token:
                created, existing = await self.register(http)
                out(f"members: {created} registered, {existing} already registered")
            self._new_days()
            sem = asyncio.Semaphore(self.concurrency)

            async def connect(b: Bot) -> None:
                async with sem:
                    await b.connect(self.url, http, self.watch)

            await asyncio.gather(*(connect(b) for b in self.bots))
            # one bot follows all public trades (last prices and the market's time)
            await self.bots[0].client.subscribe_trades()
            out(f"{len(self.bots)} bots logged in to {self.watch.market_id} at {self.url}; "
                f"requote every {self.requote_wall_s:.2f} s wall")
            rng = random.Random(7)
            tasks = [asyncio.create_task(self.watch.run(http))]
            tasks += [asyncio.create_task(b.run(self.watch, self.requote_wall_s, random.Random(rng.random())))
                      for b in self.bots]
            t0 = time.monotonic()
            last = t0
            completed = False
            try:
                while duration <= 0 or time.monotonic() - t0 < duration:
                    await asyncio.sleep(min(1.0, max(0.05, duration - (time.monotonic() - t0))) if duration > 0
                                        else 1.0)
                    self._new_days()
                    for t in tasks:
                        if t.done() and not t.cancelled() and t.exception() is not None:
                            raise t.exception()
                    if time.monotonic() - last >= report_every:
                        last = time.monotonic()
                        out(self._line(t0))
                completed = True
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                summary = self.summary(time.monotonic() - t0)
                try:
                    await asyncio.wait_for(asyncio.gather(
                        *(b.client.cancel_all(timeout=5) for b in self.bots if b.client is not None
                          and b.client.connected), return_exceptions=True), 15)
                except asyncio.TimeoutError:
                    log.warning("cancelling the bots' orders timed out")
                if completed and kpis:
                    try:
                        summary["kpis"] = await asyncio.wait_for(self.kpis(http), 120)
                    except Exception as exc:  # the run's own summary must still come back
                        log.warning("community KPIs failed: %r", exc)
                        summary["kpis"] = None
                try:
                    await asyncio.wait_for(asyncio.gather(*(b.client.close() for b in self.bots
                                                            if b.client is not None), return_exceptions=True), 15)
                except asyncio.TimeoutError:
                    log.warning("closing the bots' connections timed out")
        return summary

    async def market_trades(self, http: aiohttp.ClientSession) -> tuple[list[dict], str]:
        """The committed trades (with buyer and seller) of every product the runner saw, and where
        they come from: the operator REST API (``GET /api/operator/products/{id}/trades``, paged)
        with an operator token, else the bots' own fills paired by trade id (a counterparty
        outside the bots stays ``None``)."""
        fills = trades_from_fills(self.bots)
        if not self.operator_token:
            return fills, "bot fills"
        headers = {"Authorization": f"Bearer {self.operator_token}"}
        sem = asyncio.Semaphore(8)

        async def one(pid: str) -> list[dict] | None:
            rows: list[dict] = []
            after = 0
            while True:
                async with sem, http.get(f"{self.http_url}/api/operator/products/{pid}/trades",
                                         params={"after": after, "limit": 1000}, headers=headers) as r:
                    if r.status != 200:
                        log.warning("trades of %s: %s %s", pid, r.status, await r.text())
                        return None
                    page = await r.json()
                rows += page
                if len(page) < 1000:
                    return rows
                after = page[-1]["seq"]

        pids = sorted(self.watch.products)
        pages = await asyncio.gather(*(one(pid) for pid in pids))
        out: list[dict] = []
        source = "market trades"
        for pid, page in zip(pids, pages):
            if page is None:  # that product from the bots' fills instead
                source = "market trades + bot fills"
                page = [t for t in fills if t["product_id"] == pid]
            out += page
        return sorted(out, key=lambda t: t["trade_id"]), source

    async def kpis(self, http: aiohttp.ClientSession) -> dict | None:
        """The community KPIs of the delivery hours the bots traded (:func:`community_kpis_of`);
        None for bots without community profiles (``--strategy zic``)."""
        if getattr(self.bots[0], "data", None) is None:
            return None
        trades, source = await self.market_trades(http)
        tz = self.watch.config.get("calendar", {}).get("timezone")
        days = {pid: p.delivery_day for pid, p in self.watch.products.items()}
        still_open = {pid for pid, p in self.watch.products.items() if p.state in ("pre_open", "open")}
        return community_kpis_of(self.bots, trades, days, source=source, tz=tz, still_open=still_open)

    def _line(self, t0: float) -> str:
        s = self.summary(time.monotonic() - t0)
        tz = self.watch.config.get("calendar", {}).get("timezone")
        now = datetime.fromtimestamp(self.watch.now_us() / 1e6, ZoneInfo(tz) if tz else None)
        return (f"  [{now:%a %H:%M}] {s['placed']} placed, {s['cancelled']} cancelled, {s['fills']} fills, "
                f"{s['traded_wh'] / 1000:.1f} kWh traded, {s['open_orders']} open, rejected {s['rejected']}")

    def summary(self, seconds: float) -> dict:
        tot = BotStats()
        open_orders = 0
        for b in self.bots:
            s = b.stats
            tot.placed += s.placed
            tot.cancelled += s.cancelled
            tot.fills += s.fills
            tot.bought_wh += s.bought_wh
            tot.sold_wh += s.sold_wh
            tot.lost += s.lost
            tot.rejected.update(s.rejected)
            open_orders += len(b.open)
        return {"bots": len(self.bots), "seconds": round(seconds, 1), "placed": tot.placed,
                "cancelled": tot.cancelled, "fills": tot.fills, "traded_wh": tot.bought_wh,
                "bought_wh": tot.bought_wh, "sold_wh": tot.sold_wh, "open_orders": open_orders,
                "lost": tot.lost, "rejected": dict(tot.rejected),
                "reconnects": sum(max(0, b.client.connects - 1) for b in self.bots if b.client is not None)}


# --------------------------------------------------------------------------- community KPIs


def trades_from_fills(bots: list[Bot]) -> list[dict]:
    """The trades the bots filled, buyer and seller paired by trade id (``None``: not a bot)."""
    by_id: dict[int, dict] = {}
    for b in bots:
        for tid, (pid, side, qty, price) in b.fill_log.items():
            t = by_id.setdefault(tid, {"trade_id": tid, "product_id": pid, "energy_wh": qty, "price_ticks": price,
                                       "buyer": None, "seller": None})
            t["buyer" if side == "buy" else "seller"] = b.address
    return [by_id[k] for k in sorted(by_id)]


def community_kpis_of(bots: list[Bot], trades: list[dict], days: dict[str, date], *, source: str = "",
                      tz: str | None = None, still_open: set[str] = frozenset(), top: int = 5) -> dict:
    """:func:`clients.community.kpis.community_kpis` over the bots' community, for the delivery
    hours with at least one trade between two bots: the members' profiles
    (``bots[i].data.table(day)``, battery-free as in the KPI definitions) restricted to those
    hours, and those trades. Trades with a member outside the bots are left out (counted under
    ``external``). A battery's charging and discharging are not in the profiles, so what battery
    owners buy and sell counts in their grid flows (``batteries``: their P2P Wh). Adds ``hours``,
    ``hours_still_open``, ``no_p2p`` (grid import/export and cost without the trades),
    ``top_pairs`` (largest P2P flows by energy), ``p2p_pairs``, ``source`` and ``timezone``.
    Exact integers."""
    from clients.community.kpis import Tariffs, community_kpis

    from clients.bots.prosumer import FEED_IN_TICKS, RETAIL_TICKS

    members = {b.address: b for b in bots}
    batteries = {b.address for b in bots if getattr(getattr(b, "member", None), "battery", None) is not None}
    inside, outside = [], []
    for t in trades:
        if t["buyer"] in members and t["seller"] in members:
            inside.append(t)
        elif t["buyer"] in members or t["seller"] in members:
            outside.append(t)
    hours = sorted({t["product_id"] for t in inside})
    data = bots[0].data
    hourly: dict[str, dict[str, tuple[int, int]]] = {b.address: {} for b in bots}
    for day in sorted({days[pid] for pid in hours}):
        table = data.table(day)
        for addr, row in hourly.items():
            prof = table.get(addr, {})
            row.update((pid, prof[pid]) for pid in hours if days[pid] == day and pid in prof)
    tariffs = Tariffs(RETAIL_TICKS, FEED_IN_TICKS)
    k = community_kpis(hourly, inside, tariffs)
    k0 = community_kpis(hourly, [], tariffs)
    pairs = sorted(((e, v, s, b) for s, row in k["p2p_matrix"].items() for b, (e, v) in row.items()),
                   key=lambda x: (-x[0], x[2], x[3]))
    k.update(
        source=source, timezone=tz, hours=hours, hours_still_open=sorted(still_open & set(hours)),
        no_p2p={"import_wh": k0["import_wh"], "export_wh": k0["export_wh"], "cost": k0["cost"]},
        p2p_pairs=len(pairs),
        top_pairs=[{"seller": s, "buyer": b, "seller_name": members[s].name, "buyer_name": members[b].name,
                    "energy_wh": e, "money": v} for e, v, s, b in pairs[:top]],
        external={"trades": len(outside), "energy_wh": sum(t["energy_wh"] for t in outside)},
        batteries={"bought_wh": sum(t["energy_wh"] for t in inside if t["buyer"] in batteries),
                   "sold_wh": sum(t["energy_wh"] for t in inside if t["seller"] in batteries)},
    )
    return k


def _fixed(n: int, d: int, places: int) -> str:
    """``n / d`` with ``places`` decimals, rounded half to even, from integers (display only)."""
    q, r = divmod(n * 10**places, d)
    if 2 * r > d or (2 * r == d and q % 2):
        q += 1
    sign, q = ("-" if q < 0 else ""), abs(q)
    whole, frac = divmod(q, 10**places)
    return f"{sign}{whole}.{frac:0{places}d}" if places else f"{sign}{whole}"


def _kwh(wh: int) -> str:
    return _fixed(wh, 1000, 1) + " kWh"


def _eur(money: int) -> str:  # money units: 1e-8 EUR
    return "EUR " + _fixed(money, 10**8, 2)


def _pct(bp: int) -> str:
    return _fixed(bp, 100, 2) + " %"


def format_kpis(k: dict | None) -> list[str]:
    """The KPI block (:func:`community_kpis_of`) as readable lines."""
    if not k:
        return []
    hours = k["hours"]
    if not hours:
        return ["community KPIs: no trade between the bots, nothing to report"]
    zone = ZoneInfo(k["timezone"]) if k.get("timezone") else None

    def start(pid: str) -> datetime:
        return datetime.strptime(pid.split("-")[0], "%Y%m%dT%H%MZ").replace(tzinfo=ZoneInfo("UTC")).astimezone(zone)

    first = start(hours[0])
    last = start(hours[-1])
    last_end = (last + timedelta(minutes=int(hours[-1].rsplit("-", 1)[1]))).astimezone(zone)
    span = f"{first:%a %Y-%m-%d %H:%M} to {last_end:%H:%M %Z}"
    still = f", {len(k['hours_still_open'])} still open" if k.get("hours_still_open") else ""
    t = k["tariffs"]
    income = "; negative: net income" if min(k["cost"], k["baseline_no_p2p"], k["baseline_grid_only"]) < 0 else ""
    lines = [
        f"community KPIs: {k['members']} members, {len(hours)} delivery hours traded ({span}{still}), "
        f"from the {k['source']}",
        f"  self-sufficiency  {_pct(k['self_sufficiency_bp'])} with P2P, "
        f"{_pct(k['self_sufficiency_no_p2p_bp'])} without (own PV only)",
        f"  grid import       {_kwh(k['import_wh'])} with P2P, {_kwh(k['no_p2p']['import_wh'])} without",
        f"  grid export       {_kwh(k['export_wh'])} with P2P, {_kwh(k['no_p2p']['export_wh'])} without",
        f"  consumption       {_kwh(k['consumption_wh'])}, PV generation {_kwh(k['generation_wh'])}",
        f"  community cost    {_eur(k['cost'])} with P2P, {_eur(k['baseline_no_p2p'])} without P2P, "
        f"{_eur(k['baseline_grid_only'])} grid-only (retail {_fixed(t['retail_ticks'], 100, 2)}, "
        f"feed-in {_fixed(t['feed_in_ticks'], 100, 2)} EUR/MWh{income})",
        f"  savings           {_eur(k['savings_vs_no_p2p'])} vs no P2P, {_eur(k['savings_vs_grid_only'])} vs grid-only",
        f"  P2P               {_kwh(k['traded_wh'])} in {k['trades']} trades, {_eur(k['traded_money'])} "
        f"(average {_fixed(k['traded_money'], k['traded_wh'] * 100, 2)} EUR/MWh), {k['p2p_pairs']} seller->buyer pairs",
    ]
    bat = k["batteries"]
    if bat["bought_wh"] or bat["sold_wh"]:
        lines.append(f"  batteries         {_kwh(bat['bought_wh'])} bought, {_kwh(bat['sold_wh'])} sold P2P by battery "
                     f"owners; charging/discharging is not in the profiles, so it counts as their grid export/import")
    if k["top_pairs"]:
        lines.append("  top pairs (seller -> buyer):")
        ws = max(len(p["seller_name"]) for p in k["top_pairs"])
        wb = max(len(p["buyer_name"]) for p in k["top_pairs"])
        lines += [f"    {p['seller_name']:<{ws}} -> {p['buyer_name']:<{wb}} {_kwh(p['energy_wh']):>11}  "
                  f"{_eur(p['money'])}" for p in k["top_pairs"]]
    if k["external"]["trades"]:
        lines.append(f"  left out: {k['external']['trades']} trades ({_kwh(k['external']['energy_wh'])}) "
                     f"with members outside the bots")
    return lines


# --------------------------------------------------------------------------- building the bots


def make_bots(members: int, seed: str | int = 1, strategy: str = "community", zic_units: int = 3) -> list[Bot]:
    """``members`` bots with keys from ``seed``: ``community`` (prosumers/consumers with
    forecasts from the community profiles, batteries, the aggregator's battery),
    or ``zic`` (ZI-C buyers and sellers)."""
    from clients.sdk import member_keys

    keys = member_keys(f"bots-{seed}", members)
    if strategy == "zic":
        from clients.bots.zic_bot import ZicBot

        rng = random.Random(f"zic-bots-{seed}")
        return [ZicBot.random(k, "buy" if i % 2 == 0 else "sell", rng, units=zic_units, seed=i)
                for i, k in enumerate(keys)]
    if strategy != "community":
        raise ValueError(f"unknown strategy {strategy!r}")
    from clients.bots.battery import BatteryBot
    from clients.bots.prosumer import CommunityData, ProsumerBot

    data = CommunityData([k.address for k in keys], seed=seed)
    bots: list[Bot] = []
    for k, m in zip(keys, data.members):
        if m.battery is not None:
            bots.append(BatteryBot(k, m, data))
        else:
            bots.append(ProsumerBot(k, m, data))
    return bots


def run_bots(*, members: int = 200, speed: float = 600, duration: float = 150, url: str | None = None,
             operator_token: str | None = None, seed: str | int = 1, strategy: str = "community",
             requote_minutes: float = 15, report_every: float = 10, out=print) -> dict:
    """Blocking entry point of ``voltbourse bots run``: with ``url`` join that exchange, else
    start a local one on a simulated clock (rolling gate 60 min before delivery, starting at
    22:50 local time so the next day's products are open)."""
    import secrets

    from exchange.runtime.service import run_async

    bots = make_bots(members, seed, strategy)
    if url is not None:
        runner = BotRunner(url, bots, speed=speed, requote_minutes=requote_minutes, operator_token=operator_token)
        return run_async(runner.run(duration, report_every, out))

    from datetime import timezone as tz
    from zoneinfo import ZoneInfo

    from clients.sdk.local import LocalExchange

    zone = ZoneInfo("Europe/Berlin")
    today = datetime.now(zone).date()
    start = datetime(today.year, today.month, today.day, 22, 50, tzinfo=zone).astimezone(tz.utc)
    token = secrets.token_urlsafe(16)
    market_id = f"bots-{datetime.now(tz.utc):%Y%m%d%H%M%S}"
    with LocalExchange(market_id=market_id, operator_token=token, clock="sim", sim_speed=int(speed),
                       sim_start=start.isoformat(), gate="rolling", gate_rolling_minutes=60,
                       timezone="Europe/Berlin") as ex:
        out(f"local exchange {market_id} at {ex.ws_url} (clock x{int(speed)} from {start.astimezone(zone):%H:%M %Z}); "
            f"log {ex.log_path}")
        runner = BotRunner(ex.ws_url, bots, speed=speed, requote_minutes=requote_minutes, operator_token=token)
        return run_async(runner.run(duration, report_every, out))
