"""Committed-event fan-out: responses, private execution reports, public market data.

:class:`MarketData` is a runtime subscriber: it sees each committed group of
commands, in order, after its COMMIT, and

1. answers the peer requests those commands came from (the response to a
   command always precedes the reports it causes),
2. keeps a mirror of the committed books (orders and aggregated levels) and
   sends execution reports on each member's orders to its sessions,
3. publishes book deltas (with per-product ``seq``/``prev_seq`` so a client
   detects a gap and resyncs from a snapshot), public trades and product/market
   state to the subscribed sessions.

It never reads the engine's live state after start: the engine may already be
processing commands that are not committed yet.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from exchange.core.model import command_outcome
from exchange.core.units import iso
from exchange.gateway.encoding import encode as _encode
from exchange.gateway.encoding import plain as _val
from exchange.gateway.peers import Peers
from exchange.runtime.journal import Entry
from exchange.runtime.service import Market


class Session(Protocol):
    """What market data needs of a peer session (exchange.gateway.session.Session)."""

    member: str | None

    def send(self, msg: dict) -> None: ...

    def send_raw(self, data: str) -> None: ...

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """The origin of a command: which session asked, with which request id, when."""

    session: Session
    request_id: Any
    kind: str
    received_ns: int


class MirrorOrder:
    __slots__ = ("order_id", "member", "product_id", "side", "price", "remaining", "quantity", "client_order_id")

    def __init__(self, order_id, member, product_id, side, price, remaining, quantity, client_order_id):
        self.order_id = order_id
        self.member = member
        self.product_id = product_id
        self.side = side
        self.price = price
        self.remaining = remaining
        self.quantity = quantity
        self.client_order_id = client_order_id

    def view(self) -> dict:
        return {"order_id": self.order_id, "product_id": self.product_id, "side": self.side, "price": self.price,
                "quantity": self.quantity, "remaining": self.remaining, "client_order_id": self.client_order_id}



class MarketData:
    def __init__(self, market: Market, peers: Peers | None = None, *, disclose_counterparty: bool = False,
                 metrics: Any = None) -> None:
        self.market = market
        self.disclose = disclose_counterparty
        self.metrics = metrics
        self.orders: dict[int, MirrorOrder] = {}
        self.by_member: dict[str, set[int]] = defaultdict(set)
        # product -> side -> price -> [volume, orders]
        self.levels: dict[str, dict[str, dict[int, list[int]]]] = {}
        self.book_seq: dict[str, int] = {}
        self.product_states: dict[str, str] = {}
        self.halted = (False, "")
        self.seq = 0  # last committed event seq seen
        self.peers = peers if peers is not None else Peers()
        self.sessions: dict[str, set[Any]] = self.peers.by_member  # member -> sessions
        self.book_subs: dict[str, set[Session]] = defaultdict(set)
        self.trade_subs: dict[str | None, set[Session]] = defaultdict(set)  # None: all products
        self.product_subs: set[Session] = set()

    # ------------------------------------------------------------------ start
    def bootstrap(self) -> None:
        """Build the mirror from the engine right after recovery (engine == committed state),
        then follow the committed stream."""
        rt = self.market.runtime
        engine = rt.engine
        assert rt.committed_seq == engine.seq, "bootstrap must run before new commands"
        for pid, pb in engine.products.items():
            self.product_states[pid] = pb.state.value
            for o in pb.book.orders():
                self._add(MirrorOrder(o.order_id, o.member, pid, o.side.value, o.price, o.remaining, o.quantity,
                                      o.client_order_id), set())
            self.book_seq[pid] = engine.seq
        self.halted = (engine.halted, engine.halt_reason)
        self.seq = engine.seq
        rt.subscribers.append(self.on_commit)

    # ------------------------------------------------------------------ mirror
    def _levels(self, pid: str) -> dict[str, dict[int, list[int]]]:
        lv = self.levels.get(pid)
        if lv is None:
            lv = self.levels[pid] = {"buy": {}, "sell": {}}
        return lv

    def _add(self, o: MirrorOrder, touched: set) -> None:
        self.orders[o.order_id] = o
        self.by_member[o.member].add(o.order_id)
        lvl = self._levels(o.product_id)[o.side].setdefault(o.price, [0, 0])
        lvl[0] += o.remaining
        lvl[1] += 1
        touched.add((o.product_id, o.side, o.price))

    def _change(self, o: MirrorOrder, remaining: int, touched: set) -> None:
        side = self._levels(o.product_id)[o.side]
        lvl = side[o.price]
        lvl[0] += remaining - o.remaining
        o.remaining = remaining
        touched.add((o.product_id, o.side, o.price))
        if remaining == 0:
            lvl[1] -= 1
            if lvl[1] == 0:
                del side[o.price]
            del self.orders[o.order_id]
            ids = self.by_member[o.member]
            ids.discard(o.order_id)
            if not ids:
                del self.by_member[o.member]

    def snapshot(self, pid: str) -> dict:
        lv = self.levels.get(pid, {"buy": {}, "sell": {}})
        bids = sorted(([p, v, n] for p, (v, n) in lv["buy"].items()), key=lambda x: -x[0])
        asks = sorted([p, v, n] for p, (v, n) in lv["sell"].items())
        return {"type": "book_snapshot", "product_id": pid, "seq": self.book_seq.get(pid, 0), "bids": bids,
                "asks": asks}

    def best(self, pid: str) -> tuple[int | None, int | None]:
        """Best committed bid and ask of a product."""
        lv = self.levels.get(pid)
        if lv is None:
            return None, None
        return (max(lv["buy"]) if lv["buy"] else None), (min(lv["sell"]) if lv["sell"] else None)

    def member_orders(self, member: str, product_id: str | None = None) -> list[dict]:
        out = [self.orders[i] for i in sorted(self.by_member.get(member, ()))]
        return [o.view() for o in out if product_id is None or o.product_id == product_id]

    # ------------------------------------------------------------------ the subscriber
    def on_commit(self, entries: list[Entry]) -> None:
        touched: set[tuple[str, str, int]] = set()
        book_last: dict[str, int] = {}
        public: list[tuple[set, str]] = []
        sessions = self.sessions
        now_ns = time.perf_counter_ns()
        for e in entries:
            origin = e.origin
            if origin is not None and type(origin) is Pending:
                origin.session.send(self._response(origin, e.events))
                if self.metrics is not None:
                    self.metrics.observe_command_latency((now_ns - origin.received_ns) / 1e9)
            for ev in e.events:
                t = ev.type
                if t == "trade":
                    self._on_trade(ev, touched, book_last, public, sessions)
                elif t == "order_accepted":
                    o = MirrorOrder(ev.order_id, ev.member, ev.product_id, _val(ev.side), ev.price, ev.quantity,
                                    ev.quantity, ev.client_order_id)
                    self._add(o, touched)
                    book_last[ev.product_id] = ev.seq
                    if ev.member in sessions:
                        self._private(ev.member, {"type": "execution", "exec": "accepted", "seq": ev.seq,
                                                  "ts": iso(ev.ts), **o.view()})
                elif t == "order_cancelled" or t == "order_expired":
                    o = self.orders.get(ev.order_id)
                    if o is not None:
                        self._change(o, 0, touched)
                        book_last[ev.product_id] = ev.seq
                    if ev.member in sessions:
                        msg = {"type": "execution", "exec": "cancelled" if t == "order_cancelled" else "expired",
                               "seq": ev.seq, "ts": iso(ev.ts), "order_id": ev.order_id, "product_id": ev.product_id,
                               "remaining": ev.remaining,
                               "client_order_id": o.client_order_id if o is not None else None}
                        if t == "order_cancelled":
                            msg["reason"] = _val(ev.reason)
                        self._private(ev.member, msg)
                elif t == "order_modified":
                    o = self.orders.get(ev.order_id)
                    if o is not None:
                        if ev.priority_kept:
                            self._change(o, ev.quantity, touched)
                        else:  # re-queued at the new price: filled part + new remaining
                            filled = o.quantity - o.remaining
                            self._change(o, 0, touched)
                            o = MirrorOrder(ev.order_id, ev.member, ev.product_id, o.side, ev.price, ev.quantity,
                                            filled + ev.quantity, o.client_order_id)
                            self._add(o, touched)
                        book_last[ev.product_id] = ev.seq
                    if ev.member in sessions:
                        self._private(ev.member, {"type": "execution", "exec": "modified", "seq": ev.seq,
                                                  "ts": iso(ev.ts), "order_id": ev.order_id,
                                                  "product_id": ev.product_id, "price": ev.price,
                                                  "remaining": ev.quantity, "priority_kept": ev.priority_kept})
                elif t == "product_state" or t == "product_listed":
                    self.product_states[ev.product_id] = ev.state
                    if ev.state == "delivered":
                        self.levels.pop(ev.product_id, None)
                    if self.product_subs:
                        public.append((self.product_subs, _encode(
                            {"type": "product_state", "product_id": ev.product_id, "state": ev.state,
                             "seq": ev.seq, "ts": iso(ev.ts)})))
                elif t == "market_halted" or t == "market_resumed":
                    self.halted = (t == "market_halted", getattr(ev, "reason", ""))
                    if self.product_subs:
                        public.append((self.product_subs, _encode(
                            {"type": "market_state", "halted": self.halted[0], "reason": self.halted[1],
                             "seq": ev.seq, "ts": iso(ev.ts)})))
            self.seq = e.events[-1].seq
        self._publish_books(touched, book_last)
        for subs, data in public:
            for s in list(subs):
                s.send_raw(data)

    def _on_trade(self, ev, touched, book_last, public, sessions) -> None:
        pid = ev.product_id
        book_last[pid] = ev.seq
        ts = iso(ev.ts)
        for oid, remaining, member, side, other in (
            (ev.buy_order_id, ev.buy_remaining, ev.buyer, "buy", ev.seller),
            (ev.sell_order_id, ev.sell_remaining, ev.seller, "sell", ev.buyer),
        ):
            o = self.orders.get(oid)
            coid = o.client_order_id if o is not None else None
            if o is not None:
                self._change(o, remaining, touched)
            if member in sessions:
                agg = _val(ev.aggressor)
                self._private(member, {
                    "type": "execution", "exec": "fill", "seq": ev.seq, "ts": ts, "order_id": oid,
                    "client_order_id": coid, "product_id": pid, "side": side, "price": ev.price,
                    "quantity": ev.quantity, "remaining": remaining, "trade_id": ev.trade_id,
                    "liquidity": "auction" if agg == "auction" else ("taker" if agg == side else "maker"),
                    "counterparty": other if self.disclose else None,
                })
        subs = self.trade_subs
        if subs:
            targets = subs.get(pid, set()) | subs.get(None, set())
            if targets:
                agg = _val(ev.aggressor)
                public.append((targets, _encode({"type": "trade", "product_id": pid, "trade_id": ev.trade_id,
                                                 "price": ev.price, "quantity": ev.quantity, "aggressor": agg,
                                                 "seq": ev.seq, "ts": ts})))

    def _private(self, member: str, msg: dict) -> None:
        data = _encode(msg)
        for s in list(self.sessions.get(member, ())):
            s.send_raw(data)

    def _publish_books(self, touched: set, book_last: dict[str, int]) -> None:
        changes: dict[str, list] = defaultdict(list)
        for pid, side, price in touched:
            lvl = self.levels.get(pid, {}).get(side, {}).get(price)
            changes[pid].append([side, price, lvl[0] if lvl else 0, lvl[1] if lvl else 0])
        for pid, seq in book_last.items():
            prev = self.book_seq.get(pid, 0)
            self.book_seq[pid] = seq
            subs = self.book_subs.get(pid)
            if subs:
                ch = sorted(changes.get(pid, []), key=lambda c: (c[0], c[1]))
                data = _encode({"type": "book", "product_id": pid, "seq": seq, "prev_seq": prev, "changes": ch})
                for s in list(subs):
                    s.send_raw(data)

    # ------------------------------------------------------------------ responses
    def _response(self, p: Pending, events: list) -> dict:
        first = command_outcome(events)
        t = first.type
        if t == "rejected":
            return {"type": "error", "id": p.request_id, "code": first.reason, "message": first.detail}
        if t == "duplicate":
            if first.order_id is None:
                return {"type": "error", "id": p.request_id, "code": first.reason,
                        "message": f"duplicate client_order_id {first.client_order_id!r}: the original order "
                                   f"was rejected ({first.reason})"}
            return {"type": "response", "id": p.request_id,
                    "result": {"order_id": first.order_id, "duplicate": True, "original_seq": first.original_seq}}
        if p.kind == "cancel_all":
            done = next(ev for ev in events if ev.type == "cancel_all_done")
            return {"type": "response", "id": p.request_id, "result": {"cancelled": done.cancelled}}
        if t == "order_accepted" or t == "order_modified":
            return {"type": "response", "id": p.request_id, "result": self._order_outcome(first, events)}
        if t == "order_cancelled":
            return {"type": "response", "id": p.request_id,
                    "result": {"order_id": first.order_id, "status": "cancelled", "remaining": first.remaining}}
        return {"type": "response", "id": p.request_id, "result": {"seq": events[-1].seq}}

    @staticmethod
    def _order_outcome(first, events: list) -> dict:
        oid = first.order_id
        fills = []
        remaining = first.quantity
        status = "resting"
        reason = None
        for ev in events:
            if ev.type == "trade" and (ev.buy_order_id == oid or ev.sell_order_id == oid):
                fills.append({"trade_id": ev.trade_id, "price": ev.price, "quantity": ev.quantity})
                remaining = ev.buy_remaining if ev.buy_order_id == oid else ev.sell_remaining
            elif ev.type == "order_cancelled" and ev.order_id == oid:
                status, reason, remaining = "cancelled", _val(ev.reason), ev.remaining
        if status == "resting" and remaining == 0:
            status = "filled"
        out = {"order_id": oid, "status": status, "remaining": remaining, "filled": sum(f["quantity"] for f in fills),
               "fills": fills, "seq": first.seq}
        if reason:
            out["reason"] = reason
        if first.type == "order_modified":
            out["priority_kept"] = first.priority_kept
            out["price"] = first.price
        return out

    # ------------------------------------------------------------------ sessions
    def attach(self, s: Session) -> None:
        assert s.member is not None
        self.peers.attach(s.member, s)

    def detach(self, s: Session) -> None:
        if s.member is not None:
            self.peers.detach(s.member, s)
        for subs in (*self.book_subs.values(), *self.trade_subs.values()):
            subs.discard(s)
        self.product_subs.discard(s)

    def products_view(self) -> list[dict]:
        return [{"product_id": pid, "state": st} for pid, st in sorted(self.product_states.items())]



MARKET_DATA: web.AppKey[MarketData] = web.AppKey("market_data", MarketData)
