"""Members' orders as of the last committed event, open and closed, for ``order_status`` and
``orders`` with ``status`` ``closed``/``all``: each order's price, quantity as placed,
remaining, fills, status (``open``, ``filled``, ``cancelled`` with its reason, ``expired``),
last seq and time of its last change. In memory, kept from the committed stream like the
book mirror and the positions (never the engine's live state, never the journal writer's pool).

What is kept: every order of a product not yet delivered, except that only the last
:data:`MAX_CLOSED_PER_MEMBER` closed orders of each member are kept (older closed ones are
forgotten first). A product's orders are forgotten when it is delivered (``product_state``
``delivered``). Rejected orders are never orders (nothing to keep).

After a restart the view is rebuilt from the journal through the read pool
(:meth:`OrderStatusView.load`): only order and trade events of the products not yet
delivered (and block orders none of whose hours is delivered, with their verdicts), read in
bounded chunks from the journal rows since those products could first be listed, so the same
orders are known before and after a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from exchange.core.engine import LISTING_LEAD_US
from exchange.core.ids import ProductId
from exchange.core.model import (
    BlockAccepted,
    BlockResult,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderModified,
    ProductStateChanged,
    TradeEvent,
    event_from_dict,
)
from exchange.core.units import from_us, iso

log = logging.getLogger(__name__)

MAX_CLOSED_PER_MEMBER = 1000
"""Closed orders kept per member (the oldest closed are forgotten first)."""

LOAD_CHUNK = 5000
"""Journal rows (commands) read per query when the view is rebuilt at start."""

_LOADED_TYPES = [OrderAccepted.type, OrderCancelled.type, OrderExpired.type, OrderModified.type, TradeEvent.type,
                 BlockAccepted.type, BlockResult.type]
BLOCK = "block"  # the tif shown for a block order: its quantity is the total over its hours
OPEN, FILLED, CANCELLED, EXPIRED = "open", "filled", "cancelled", "expired"
DELIVERED = "delivered"  # the product state


@dataclass(slots=True)
class OrderRecord:
    order_id: int
    member: str
    product_id: str
    side: str
    price: int
    quantity: int  # as placed
    tif: str
    client_order_id: str | None
    remaining: int  # open: in the book; cancelled/expired: what was left when it closed; filled: 0
    filled: int = 0
    status: str = OPEN
    reason: str | None = None  # cancelled: why
    fills: list[tuple[int, int, int]] = field(default_factory=list)  # (trade_id, price, quantity)
    seq: int = 0  # of the last change
    ts: int = 0

    def view(self, fills: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "order_id": self.order_id, "client_order_id": self.client_order_id, "product_id": self.product_id,
            "side": self.side, "price": self.price, "quantity": self.quantity, "remaining": self.remaining,
            "filled": self.filled, "status": self.status, "reason": self.reason, "tif": self.tif,
            "seq": self.seq, "ts": iso(self.ts)}
        if fills:
            out["fills"] = [{"trade_id": t, "price": p, "quantity": q} for t, p, q in self.fills]
        return out


class OrderStatusView:
    def __init__(self, max_closed: int = MAX_CLOSED_PER_MEMBER) -> None:
        self.max_closed = max_closed
        self.orders: dict[int, OrderRecord] = {}
        self.open_by_member: dict[str, set[int]] = {}
        self.closed_by_member: dict[str, dict[int, None]] = {}  # in closing order (oldest first)
        self.by_client_id: dict[tuple[str, str], int] = {}
        self.by_product: dict[str, set[int]] = {}
        self.seq = 0  # last committed event applied
        self._pending: list[Event] | None = None  # committed events that arrive while loading

    # ------------------------------------------------------------------ reads
    def get(self, member: str, order_id: int | None = None, client_order_id: str | None = None) -> OrderRecord | None:
        """One of ``member``'s orders by id or client order id; None when unknown or another's."""
        if order_id is None:
            if client_order_id is None:
                return None
            found = self.by_client_id.get((member, client_order_id))
            if found is None:
                return None
            order_id = found
        o = self.orders.get(order_id)
        return o if o is not None and o.member == member else None

    def block(self, order_id: int) -> OrderRecord | None:
        """The block order ``order_id`` while it is kept (None: not a block, or forgotten). Its
        ``remaining`` and ``filled`` are totals over its hours (an engine event counts one)."""
        o = self.orders.get(order_id)
        return o if o is not None and o.tif == BLOCK else None

    def pending_block(self, member: str, client_order_id: str) -> OrderRecord | None:
        """``member``'s block order with that client order id while it waits for its auction
        (open); None otherwise."""
        o = self.get(member, client_order_id=client_order_id)
        return o if o is not None and o.tif == BLOCK and o.status == OPEN else None

    def closed(self, member: str, product_id: str | None = None) -> list[OrderRecord]:
        ids = self.closed_by_member.get(member, {})
        return [o for o in (self.orders[i] for i in sorted(ids)) if product_id is None or o.product_id == product_id]

    def of_member(self, member: str, product_id: str | None = None) -> list[OrderRecord]:
        """Open and closed orders of ``member`` (of one product, or all), by order id."""
        ids = sorted([*self.open_by_member.get(member, ()), *self.closed_by_member.get(member, {})])
        return [o for o in (self.orders[i] for i in ids) if product_id is None or o.product_id == product_id]

    # ------------------------------------------------------------------ the committed stream
    def apply(self, ev: Event) -> None:
        """Apply one committed event (order events, trades, product deliveries; others are ignored)."""
        if self._pending is not None:
            self._pending.append(ev)
        else:
            self._apply(ev)

    def _apply(self, ev: Event) -> None:
        if ev.seq <= self.seq:
            return
        t = type(ev)
        if t is TradeEvent:
            assert isinstance(ev, TradeEvent)
            self._fill(ev.buy_order_id, ev, ev.buy_remaining)
            self._fill(ev.sell_order_id, ev, ev.sell_remaining)
        elif t is OrderAccepted:
            assert isinstance(ev, OrderAccepted)
            self._accept(ev)
        elif t is BlockAccepted:
            assert isinstance(ev, BlockAccepted)
            self._accept_block(ev)
        elif t is BlockResult:
            assert isinstance(ev, BlockResult)
            o = self.orders.get(ev.order_id)
            if o is not None and o.status == OPEN:
                if ev.executed:
                    o.remaining = 0
                    self._close(o, FILLED, ev)
                else:
                    o.reason = "not_executed"
                    self._close(o, CANCELLED, ev)
        elif t is OrderCancelled:
            assert isinstance(ev, OrderCancelled)
            o = self.orders.get(ev.order_id)
            if o is not None and o.status == OPEN:
                o.remaining = o.quantity - o.filled if o.tif == BLOCK else ev.remaining
                o.reason = ev.reason.value
                self._close(o, CANCELLED, ev)
        elif t is OrderExpired:
            assert isinstance(ev, OrderExpired)
            o = self.orders.get(ev.order_id)
            if o is not None and o.status == OPEN:
                o.remaining = ev.remaining
                self._close(o, EXPIRED, ev)
        elif t is OrderModified:
            assert isinstance(ev, OrderModified)
            o = self.orders.get(ev.order_id)
            if o is not None and o.status == OPEN:
                o.price, o.remaining, o.seq, o.ts = ev.price, ev.quantity, ev.seq, ev.ts
        elif t is ProductStateChanged:
            assert isinstance(ev, ProductStateChanged)
            if ev.state == DELIVERED:  # a delivered product's orders are forgotten
                for oid in self.by_product.pop(ev.product_id, set()):
                    self._forget(oid)
        self.seq = ev.seq

    def _accept(self, ev: OrderAccepted) -> None:
        o = OrderRecord(ev.order_id, ev.member, ev.product_id, ev.side.value, ev.price, ev.quantity, ev.tif.value,
                        ev.client_order_id, ev.quantity, seq=ev.seq, ts=ev.ts)
        self._index(o, [ev.product_id])

    def _index(self, o: OrderRecord, product_ids: list[ProductId]) -> None:
        self.orders[o.order_id] = o
        ids = self.open_by_member.get(o.member)
        if ids is None:
            ids = self.open_by_member[o.member] = set()
        ids.add(o.order_id)
        for pid in product_ids:  # forgotten when the first of them is delivered
            prod = self.by_product.get(pid)
            if prod is None:
                prod = self.by_product[pid] = set()
            prod.add(o.order_id)
        if o.client_order_id is not None:
            self.by_client_id[(o.member, o.client_order_id)] = o.order_id

    def _accept_block(self, ev: BlockAccepted) -> None:
        total = ev.quantity * len(ev.product_ids)
        o = OrderRecord(ev.order_id, ev.member, ev.product_ids[0], ev.side.value, ev.price, total, BLOCK,
                        ev.client_order_id, total, seq=ev.seq, ts=ev.ts)
        self._index(o, ev.product_ids)

    def _fill(self, oid: int, ev: TradeEvent, remaining: int) -> None:
        o = self.orders.get(oid)
        if o is None:
            return
        o.fills.append((ev.trade_id, ev.price, ev.quantity))
        o.filled += ev.quantity
        o.seq, o.ts = ev.seq, ev.ts
        if o.tif == BLOCK:  # hour by hour; its verdict (block_result) closes it
            o.remaining = o.quantity - o.filled
            return
        o.remaining = remaining
        if remaining == 0 and o.status == OPEN:
            self._close(o, FILLED, ev)

    def _close(self, o: OrderRecord, status: str, ev: Event) -> None:
        o.status, o.seq, o.ts = status, ev.seq, ev.ts
        ids = self.open_by_member.get(o.member)
        if ids is not None:
            ids.discard(o.order_id)
            if not ids:
                del self.open_by_member[o.member]
        closed = self.closed_by_member.get(o.member)
        if closed is None:
            closed = self.closed_by_member[o.member] = {}
        closed[o.order_id] = None
        while len(closed) > self.max_closed:
            self._forget(next(iter(closed)))

    def _forget(self, oid: int) -> None:
        o = self.orders.pop(oid, None)
        if o is None:
            return
        opened = self.open_by_member.get(o.member)
        if opened is not None and oid in opened:
            opened.discard(oid)
            if not opened:
                del self.open_by_member[o.member]
        closed = self.closed_by_member.get(o.member)
        if closed is not None and oid in closed:
            del closed[oid]
            if not closed:
                del self.closed_by_member[o.member]
        prod = self.by_product.get(o.product_id)
        if prod is not None:
            prod.discard(oid)
            if not prod:
                del self.by_product[o.product_id]
        if o.client_order_id is not None and self.by_client_id.get((o.member, o.client_order_id)) == oid:
            del self.by_client_id[(o.member, o.client_order_id)]

    # ------------------------------------------------------------------ start
    def follow(self, seq: int) -> None:
        """Start following the committed stream after ``seq`` (the bootstrap seq): events that
        arrive before :meth:`load` has read the history are held, then applied in order."""
        self.seq = seq
        self._pending = []

    async def load(self, pool: asyncpg.Pool, market_id: str, products: Iterable[tuple[str, int]], upto: int,
                   chunk: int = LOAD_CHUNK) -> int:
        """Rebuild the orders of the products not yet delivered (``products``: their id and
        opening time, µs) from the journal's committed events with ``seq <= upto``, then apply
        what was held meanwhile (see :meth:`follow`). Reads only the journal rows stamped since
        those products could first be listed, ``chunk`` commands per query, and of them only the
        order and trade events of those products (a block order's when all its hours are among
        them, and block verdicts), applied as the live stream applies them. Returns the number
        of events read."""
        read = 0
        self.seq = 0
        try:
            pids = {pid: open_us for pid, open_us in products}
            if pids:
                first, last = await _journal_range(pool, market_id, min(pids.values()) - LISTING_LEAD_US, upto)
                start = first
                while first and start <= last:
                    rows = await pool.fetch(
                        "SELECT e.ev FROM journal j CROSS JOIN LATERAL jsonb_array_elements(j.events) "
                        "WITH ORDINALITY AS e(ev, n) WHERE j.market_id = $1 AND j.cmd_seq >= $2 AND j.cmd_seq < $3 "
                        "AND (e.ev->>'seq')::bigint <= $4 AND e.ev->>'type' = ANY($5::text[]) "
                        "AND (e.ev->>'product_id' = ANY($6::text[]) "
                        # a block names its hours (product_ids): read when none of them is delivered
                        # (live, a block is forgotten when the first of them is)
                        "OR e.ev->'product_ids' <@ to_jsonb($6::text[]) "
                        # a block's verdict names no product (one of a block not read changes nothing)
                        "OR e.ev->>'type' = $7) ORDER BY j.cmd_seq, e.n",
                        market_id, start, start + chunk, upto, _LOADED_TYPES, list(pids), BlockResult.type)
                    for r in rows:
                        self._apply(event_from_dict(r["ev"]))
                    read += len(rows)
                    start += chunk
        finally:
            # no await from here on: nothing can arrive between the held events and the live ones
            self.seq = max(self.seq, upto)
            pending, self._pending = self._pending or [], None
            for ev in pending:
                self._apply(ev)
        log.info("order status: %d orders of %d products rebuilt from %d journal events", len(self.orders),
                 len(self.by_product), read)
        return read


async def _journal_range(pool: asyncpg.Pool, market_id: str, since_us: int, upto: int) -> tuple[int, int]:
    """The first and last ``cmd_seq`` of the journal rows stamped at or after ``since_us`` whose
    events end at or before ``upto``; (0, 0) when there are none. The journal's times grow with
    ``cmd_seq`` (the runtime never stamps a command earlier than the engine's clock), so the
    first is found by bisection over the primary key, never by scanning the journal."""
    last = await pool.fetchval("SELECT cmd_seq FROM journal WHERE market_id = $1 AND last_seq <= $2 "
                               "ORDER BY last_seq DESC LIMIT 1", market_id, upto)
    if last is None:
        return 0, 0
    since = from_us(since_us)

    async def at_or_after(cmd_seq: int) -> asyncpg.Record | None:
        return await pool.fetchrow("SELECT cmd_seq, ts FROM journal WHERE market_id = $1 AND cmd_seq >= $2 "
                                   "ORDER BY cmd_seq LIMIT 1", market_id, cmd_seq)

    lo, hi = 1, last  # the answer is in [lo, hi], or there is none
    row = await at_or_after(hi)
    if row is None or row["ts"] < since:
        return 0, 0
    while lo < hi:
        mid = (lo + hi) // 2
        row = await at_or_after(mid)
        if row is not None and row["ts"] >= since:
            hi = mid
        else:
            lo = mid + 1
    return lo, last
