"""The operator feed hub: live state for the operator page (``/ws/operator``).

:class:`OperatorFeed` keeps the last message of every topic and fans messages
out to the connected operator pages, each through a bounded queue (a page that
does not keep up is disconnected with 1013, never waited for).

Any subsystem publishes with :meth:`OperatorFeed.publish` (from the event-loop
thread; :meth:`OperatorFeed.publish_threadsafe` from another thread)::

    feed = app[OPERATOR_FEED]
    feed.publish("settlement", {"batches": [...], "last_anchored_block": 12, ...})

A message on the socket is ``{"topic": topic, **payload}`` (one JSON text
frame). A newly connected page first gets the last message of every topic.

**Panels.** A subsystem that wants a section of its own on the page publishes a
``panel.<name>`` topic; the page renders it without knowing the subsystem (display
strings only, formatted by the publisher)::

    feed.publish("panel.metering", {
        "title": "Meters and bills", "note": "optional line under the title",
        "cards": [{"id": "ss", "label": "Self-sufficiency", "value": "72.7", "unit": "%", "note": "..."}],
        "chart": {"label": "Energy per day", "unit": "kWh", "x": ["1 Nov", "2 Nov"],
                  "series": [{"name": "consumption", "values": ["12.5", "13.1"]}]},
        "tables": [{"id": "days", "caption": "...", "columns": ["Day", "kWh"], "rows": [["1 Nov", "12.5"]]}]})

(the chart's table alternative is one of the ``tables``).

The market topics are built here from the committed stream (a runtime
subscriber; book levels come from the committed mirror of
:class:`~.marketdata.MarketData`), coalesced and sent at most every
``flush_s`` seconds:

``market``   market id, timezone, halted/reason, committed seq, market time
``products`` every listed product not delivered (plus the delivered ones of a
             delivery day still trading): calendar, engine state, ``display``
             (``pre_open``/``open``/``closing_soon``/``closed``/``delivered``),
             last price, volume, trade count, best bid/ask
``book``     per product (one message each): ladder levels ``[price, Wh, orders]``
``trades``   new trades (with buyer and seller); on connect the recent ones with
             ``"snapshot": true``
``members``  address, name, role of every member
``p2p``      seller x buyer matrix: energy (Wh), value (money units), trades
``kpis``     traded energy, trades, traded value, P2P energy/value, members
             trading, volume-weighted average price, savings vs grid-only
``history``  (on request ``{"type": "history", "product_id": ...}``) the
             product's trades ``[ts, price, Wh]`` for the price/volume chart

Units are the exchange's integers: Wh, ticks of 0.01 EUR/MWh, and money in
units of 1e-8 EUR, which are sent as **decimal strings** (they can exceed the
2^53 a JavaScript number holds exactly); the page formats them (BigInt).
Nothing here computes with floats.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from exchange.core.ids import ProductId
from exchange.core.model import (
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderModified,
    ProductListed,
    ProductStateChanged,
)
from exchange.core.units import US_PER_MIN, div_half_even, iso, iso_dt, to_us
from exchange.gateway.encoding import aggressor
from exchange.gateway.encoding import encode as _encode
from exchange.gateway.marketdata import MarketData
from exchange.runtime.journal import Entry
from exchange.runtime.members import MemberRegistry
from exchange.runtime.service import Market

log = logging.getLogger(__name__)

class FeedClient:
    """One operator page socket: a bounded queue drained by its own task."""

    def __init__(self, ws: web.WebSocketResponse, maxsize: int) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self.dropped = False
        self.task: asyncio.Task | None = None

    def send_raw(self, data: str) -> bool:
        if self.dropped:
            return False
        try:
            self.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            self.dropped = True
            log.warning("operator page too slow (%d messages queued): disconnecting it", self.queue.qsize())
            asyncio.get_running_loop().create_task(self.ws.close(code=1013, message=b"too slow"))
            return False

    async def pump(self) -> None:
        ws = self.ws
        while True:
            data = await self.queue.get()
            if ws.closed:
                return
            await ws.send_str(data)


class ProductStats:
    __slots__ = ("last_price", "volume", "trades", "history")

    def __init__(self, history: int) -> None:
        self.last_price: int | None = None
        self.volume = 0
        self.trades = 0
        self.history: deque = deque(maxlen=history)  # [ts iso, price, qty]


class OperatorFeed:
    def __init__(self, market: Market, md: MarketData | None = None, registry: MemberRegistry | None = None, *,
                 queue_size: int = 1024, flush_s: float = 0.1, slow_s: float = 0.5, recent: int = 200,
                 history: int = 2000, book_depth: int = 30, closing_soon_min: int = 60,
                 timezone: str = "UTC") -> None:
        self.market = market
        self.md = md
        self.registry = registry
        self.queue_size = queue_size
        self.flush_s = flush_s
        self.slow_s = slow_s  # p2p / kpis / products at most this often
        self.book_depth = book_depth
        self.closing_soon_us = closing_soon_min * US_PER_MIN
        self.timezone = timezone
        self.history_len = history
        self.clients: set[FeedClient] = set()
        self.state: dict[str, str] = {}  # "topic" or "topic:key" -> last encoded message
        self.recent: deque = deque(maxlen=recent)
        self.stats: dict[str, ProductStats] = {}
        self.calendar: dict[str, dict] = {}  # product_id -> product.to_dict()
        self.pairs: dict[tuple[str, str], list[int]] = {}  # (seller, buyer) -> [Wh, money, trades]
        self.members: dict[str, dict] = {}  # address -> {address, name, role, retail, feed_in}
        self.kpi_source: Callable[[], dict] | None = None
        self.seq = 0
        self._dirty_books: set[str] = set()
        self._new_trades: list[dict] = []
        self._dirty_slow = True
        self._dirty_market = True
        self._members_dirty = False
        self._last_slow = 0.0
        self._tasks: list[asyncio.Task] = []
        self._started = False
        self._buffer: list | None = None  # committed groups held back while start() loads history

    # ------------------------------------------------------------------ publish API
    def publish(self, topic: str, payload: dict, key: str | None = None) -> None:
        """Publish ``payload`` under ``topic`` to every page and keep it as the topic's last
        state (per ``key`` if given, e.g. a product id). Call from the event-loop thread."""
        msg = {**payload, "topic": topic}
        if key is not None:
            msg.setdefault("key", key)
        data = _encode(msg)
        self.state[topic if key is None else f"{topic}:{key}"] = data
        self._broadcast(data)

    def publish_threadsafe(self, loop: asyncio.AbstractEventLoop, topic: str, payload: dict) -> None:
        loop.call_soon_threadsafe(self.publish, topic, payload)

    def _broadcast(self, data: str) -> None:
        for c in list(self.clients):
            if not c.send_raw(data):
                self.clients.discard(c)

    # ------------------------------------------------------------------ pages
    def attach(self, client: FeedClient) -> None:
        """Register a page and queue the last state of every topic for it (brought up to
        date first if no page was watching: nothing is computed for nobody)."""
        if not self.clients and self._started:
            self._flush(force=True)
        client.send_raw(_encode({"topic": "hello", "market_id": self.market.journal.market_id,
                                 "timezone": self.timezone}))
        order = ("market", "members", "products")
        for key in order:
            if key in self.state:
                client.send_raw(self.state[key])
        for key, data in self.state.items():
            if key not in order:
                client.send_raw(data)
        client.send_raw(_encode({"topic": "trades", "snapshot": True, "trades": list(self.recent)}))
        self.clients.add(client)

    def detach(self, client: FeedClient) -> None:
        self.clients.discard(client)

    def request(self, client: FeedClient, msg: Any) -> None:
        """A message from a page: ``{"type": "history", "product_id": ...}``."""
        if not isinstance(msg, dict) or msg.get("type") != "history":
            client.send_raw(_encode({"topic": "error", "message": "unknown request"}))
            return
        pid = msg.get("product_id")
        st = self.stats.get(pid) if isinstance(pid, str) else None
        client.send_raw(_encode({"topic": "history", "product_id": pid,
                                 "trades": list(st.history) if st is not None else []}))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Subscribe to the committed stream, load what was committed before (trades,
        members), then flush on a timer."""
        if self._started:
            return
        self._started = True
        rt = self.market.runtime
        # No await between reading committed_seq and subscribing: every later group has seq > upto.
        upto = rt.committed_seq
        buffered: list = []
        self._buffer = buffered
        rt.subscribers.append(self.on_commit)
        for pid, pb in rt.engine.products.items():
            self.calendar[pid] = pb.product.to_dict()
        try:
            await self._load_trades(upto)
            await self._load_members()
        except Exception:  # noqa: BLE001 - the page must never keep the exchange from starting
            log.exception("operator feed: could not load the committed history; following from seq %d", upto)
        finally:
            self._buffer = None
        self.seq = max(self.seq, upto)
        for entries in buffered:
            self.on_commit(entries)
        self._flush(force=True)
        self._tasks.append(asyncio.create_task(self._flusher(), name="operator-feed"))

    async def stop(self) -> None:
        rt = self.market.runtime
        if self.on_commit in rt.subscribers:
            rt.subscribers.remove(self.on_commit)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _load_trades(self, upto: int) -> None:
        store = self.market.trades
        for pair in await store.pairs(upto):
            self.pairs[(pair.seller, pair.buyer)] = [pair.energy_wh, pair.money, pair.trades]
        for ps in await store.product_stats(upto):
            st = self._stats(ps.product_id)
            st.volume, st.trades, st.last_price = ps.energy_wh, ps.trades, ps.last_price
        for r in await store.history(upto, self.history_len):
            self._stats(r["product_id"]).history.append(
                [iso_dt(r["ts"]), r["price_ticks"], r["energy_wh"]])
        for r in reversed(await store.recent(upto, self.recent.maxlen or 0)):
            self.recent.append({"trade_id": r["trade_id"], "seq": r["seq"], "product_id": r["product_id"],
                                "price": r["price_ticks"], "quantity": r["energy_wh"], "buyer": r["buyer"],
                                "seller": r["seller"], "aggressor": None,
                                "ts": iso_dt(r["ts"])})

    async def _load_members(self) -> None:
        self._members_dirty = False
        if self.registry is None:
            return
        try:
            members = await self.registry.list()
        except Exception:  # noqa: BLE001 - the page shows addresses without names then
            log.warning("operator feed: could not load members", exc_info=True)
            return
        self.members = {m.address: {"address": m.address, "name": m.name, "role": m.role,
                                    "retail": m.retail_tariff_ticks, "feed_in": m.feed_in_tariff_ticks,
                                    "suspended": m.suspended} for m in members}
        self._dirty_slow = True
        self.publish("members", {"members": [
            {"address": m["address"], "name": m["name"], "role": m["role"], "suspended": m["suspended"]}
            for m in self.members.values()]})

    def _stats(self, pid: str) -> ProductStats:
        st = self.stats.get(pid)
        if st is None:
            st = self.stats[pid] = ProductStats(self.history_len)
        return st

    # ------------------------------------------------------------------ the subscriber
    def on_commit(self, entries: list[Entry]) -> None:
        if self._buffer is not None:
            self._buffer.append(entries)
            return
        for e in entries:
            for ev in e.events:
                t = ev.type
                if ev.seq <= self.seq:
                    continue
                if t == "trade":
                    self._on_trade(ev)
                elif isinstance(ev, (OrderAccepted, OrderCancelled, OrderExpired, OrderModified)):
                    self._dirty_books.add(ev.product_id)
                elif isinstance(ev, ProductListed):
                    pb = self.market.runtime.engine.products.get(ev.product_id)
                    if pb is not None:
                        self.calendar[ev.product_id] = pb.product.to_dict()
                    self._dirty_slow = True
                elif isinstance(ev, ProductStateChanged):
                    self._dirty_slow = True
                    self._dirty_books.add(ev.product_id)
                elif t in ("market_halted", "market_resumed"):
                    self._dirty_market = True
                elif t == "member_updated":
                    if not self._members_dirty:
                        self._members_dirty = True
                        asyncio.get_running_loop().create_task(self._load_members())
            if e.events:
                self.seq = max(self.seq, e.events[-1].seq)
        self._dirty_market = True

    def _on_trade(self, ev) -> None:
        pid, price, qty = ev.product_id, ev.price, ev.quantity
        ts = iso(ev.ts)
        st = self._stats(pid)
        st.last_price = price
        st.volume += qty
        st.trades += 1
        st.history.append([ts, price, qty])
        pair = self.pairs.get((ev.seller, ev.buyer))
        if pair is None:
            pair = self.pairs[(ev.seller, ev.buyer)] = [0, 0, 0]
        pair[0] += qty
        pair[1] += qty * price
        pair[2] += 1
        t = {"trade_id": ev.trade_id, "seq": ev.seq, "product_id": pid, "price": price, "quantity": qty,
             "buyer": ev.buyer, "seller": ev.seller, "aggressor": aggressor(ev), "ts": ts}
        self.recent.append(t)
        self._new_trades.append(t)
        self._dirty_books.add(pid)
        self._dirty_slow = True

    # ------------------------------------------------------------------ flushing
    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - the feed must keep running
                log.exception("operator feed flush failed")

    def _flush(self, force: bool = False) -> None:
        if not self.clients and not force:
            # No page is watching: keep the books and views marked dirty (the first page
            # to attach gets a forced flush); the trades it would need are in ``recent``.
            self._new_trades.clear()
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._dirty_market or force:
            self._dirty_market = False
            self.publish("market", self.market_view())
        if self._new_trades:
            trades, self._new_trades = self._new_trades, []
            self._broadcast(_encode({"topic": "trades", "trades": trades}))
        books, self._dirty_books = self._dirty_books, set()
        if force:
            books = set(self.calendar) | set(self.md.product_states if self.md else ())
        for pid in sorted(books):
            self.publish("book", self.book_view(pid), key=pid)
        # products (market time moves: "closing soon"), matrix and KPIs: at most every slow_s
        if force or now - self._last_slow >= self.slow_s:
            self._last_slow = now
            self.publish("products", self.products_view())
            if self._dirty_slow or force:
                self._dirty_slow = False
                self.publish("p2p", self.p2p_view())
                self.publish("kpis", self.kpis_view())

    # ------------------------------------------------------------------ views
    def now_us(self) -> int:
        return self.market.runtime.clock.now_us()

    def market_view(self) -> dict:
        md = self.md
        halted, reason = md.halted if md is not None else (self.market.engine.halted, self.market.engine.halt_reason)
        return {"market_id": self.market.journal.market_id, "timezone": self.timezone, "halted": halted,
                "halt_reason": reason, "seq": self.seq, "now": iso(self.now_us())}

    def book_view(self, pid: str) -> dict:
        if self.md is None:
            return {"product_id": pid, "seq": self.seq, "bids": [], "asks": []}
        snap = self.md.snapshot(pid)
        d = self.book_depth
        return {"product_id": pid, "seq": snap["seq"], "state": self.md.product_states.get(pid),
                "bids": snap["bids"][:d], "asks": snap["asks"][:d],
                "bid_levels": len(snap["bids"]), "ask_levels": len(snap["asks"])}

    def products_view(self) -> dict:
        now = self.now_us()
        states = self.md.product_states if self.md is not None else {
            pid: pb.state.value for pid, pb in self.market.engine.products.items()}
        live_days = {self.calendar[pid]["delivery_day"] for pid, s in states.items()
                     if s != "delivered" and pid in self.calendar}
        out = []
        for pid, cal in sorted(self.calendar.items(), key=lambda kv: kv[1]["start"]):
            state = states.get(ProductId(pid))
            if state is None or cal["delivery_day"] not in live_days:
                continue
            display = state
            gate_us = _iso_us(cal["gate"])
            if state == "open" and gate_us - now <= self.closing_soon_us:
                display = "closing_soon"
            st = self.stats.get(pid)
            bid, ask = self.md.best(pid) if self.md is not None else (None, None)
            out.append({**cal, "state": state, "display": display, "gate_in_s": max(0, (gate_us - now) // 1_000_000),
                        "last_price": st.last_price if st else None, "volume_wh": st.volume if st else 0,
                        "trades": st.trades if st else 0, "best_bid": bid, "best_ask": ask})
        return {"now": iso(now), "closing_soon_min": self.closing_soon_us // US_PER_MIN, "products": out}

    def p2p_view(self) -> dict:
        cells = [{"seller": s, "buyer": b, "energy_wh": v[0], "money": str(v[1]), "trades": v[2]}
                 for (s, b), v in sorted(self.pairs.items())]
        wh = sum(v[0] for v in self.pairs.values())
        money = sum(v[1] for v in self.pairs.values())
        return {"cells": cells, "total_energy_wh": wh, "total_money": str(money),
                "trades": sum(v[2] for v in self.pairs.values())}

    def kpis_view(self) -> dict:
        wh = money = n = p2p_wh = p2p_money = savings = 0
        traders: set[str] = set()
        members = self.members
        for (s, b), (e, m, k) in self.pairs.items():
            wh += e
            money += m
            n += k
            traders.add(s)
            traders.add(b)
            if s != b:
                p2p_wh += e
                p2p_money += m
            # vs grid-only: the buyer would have imported at its retail tariff, the seller
            # exported at its feed-in tariff; the trade price cancels out of the sum.
            ms, mb = members.get(s), members.get(b)
            if ms is not None and mb is not None:
                savings += e * (mb["retail"] - ms["feed_in"])
        out = {"traded_energy_wh": wh, "trades": n, "traded_money": str(money), "p2p_energy_wh": p2p_wh,
               "p2p_money": str(p2p_money), "members_trading": len(traders), "members": len(members),
               "vwap_ticks": div_half_even(money, wh) if wh else None, "savings_money": str(savings)}
        if self.kpi_source is not None:
            try:
                extra = self.kpi_source()
                out["community"] = extra if isinstance(extra, dict) else {}
            except Exception:  # noqa: BLE001 - an external KPI source must not break the feed
                log.exception("kpi source failed")
        return out


OPERATOR_FEED: web.AppKey[OperatorFeed] = web.AppKey("operator_feed", OperatorFeed)


def _iso_us(s: str) -> int:
    return to_us(datetime.fromisoformat(s))


__all__ = ["OPERATOR_FEED", "FeedClient", "OperatorFeed"]
