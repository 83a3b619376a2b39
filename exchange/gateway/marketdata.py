"""The gateway's output side over the committed stream, in three pieces called in order
for each committed group (one runtime subscriber):

1. :class:`~exchange.gateway.ack.Acknowledger`: the one answer to each request;
2. :class:`~exchange.gateway.mirror.BookMirror`: the committed books, orders, states
   (and, next to it, :class:`~exchange.gateway.orderstatus.OrderStatusView`: members' open
   and closed orders with their fills, and :class:`~exchange.gateway.positions.PositionsView`);
3. :class:`~exchange.gateway.publish.Publisher`: execution reports to the members'
   sessions, then public market data (book deltas, trades, product/market states).

:class:`MarketData` wires them and is what sessions, views and the operator feed read
(committed state only: the engine may run one group ahead of the journal).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from exchange.core.model import (
    BlockAccepted,
    BlockResult,
    MarketHalted,
    MarketResumed,
    MemberUpdated,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderModified,
    ProductListed,
    ProductStateChanged,
    Rejected,
    TradeEvent,
    VolatilityInterruption,
)
from exchange.gateway.ack import Acknowledger, Peer, Pending
from exchange.gateway.mirror import BookMirror, MirrorOrder
from exchange.gateway.orderstatus import OrderStatusView
from exchange.gateway.peers import Peers
from exchange.gateway.positions import PositionsView
from exchange.gateway.publish import Public, Publisher
from exchange.runtime.journal import Entry
from exchange.runtime.service import Market

__all__ = ["MARKET_DATA", "MarketData", "MirrorOrder", "Pending"]

_ORDER_EVENTS = (OrderAccepted, OrderCancelled, OrderExpired, OrderModified)
_STATE_EVENTS = (ProductStateChanged, ProductListed, MarketHalted, MarketResumed)


class MarketData:
    def __init__(self, market: Market, peers: Peers | None = None, *, disclose_counterparty: bool = False,
                 metrics: Any = None) -> None:
        self.market = market
        self.peers = peers if peers is not None else Peers()
        self.mirror = BookMirror()
        self.acks = Acknowledger(metrics, self._order_state, self._block_remaining)
        self.publisher = Publisher(self.peers, disclose_counterparty=disclose_counterparty)
        # subscriptions (the session adds itself to these)
        self.book_subs = self.publisher.book_subs
        self.top_subs = self.publisher.top_subs
        self.trade_subs = self.publisher.trade_subs
        self.product_subs = self.publisher.product_subs
        self.sessions = self.peers.by_member
        self.positions = PositionsView()
        self.order_status = OrderStatusView()
        self.bootstrap_seq = 0

    async def bootstrap(self, timeout_s: float = 30.0) -> None:
        """Build the mirror from the engine at a moment it equals the committed state, then
        follow the committed stream. The market is already running (its clock's ticks, a
        hosted market started beside others): a command the engine processed may still be
        committing, so this waits for a moment with nothing in flight (the check and the
        copy run with no await between them)."""
        rt = self.market.runtime
        deadline = asyncio.get_running_loop().time() + timeout_s
        while rt.committed_seq != rt.engine.seq:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"market {self.market.journal.market_id}: commands kept committing for "
                                   f"{timeout_s:g} s, the market data could not start from a committed state")
            await asyncio.sleep(0.002)
        self.mirror.bootstrap(rt.engine)
        self.bootstrap_seq = self.mirror.seq
        self.order_status.follow(self.bootstrap_seq)
        rt.subscribers.append(self.on_commit)

    async def load_positions(self) -> None:
        """Members' positions up to the bootstrap seq (later trades come with the stream)."""
        await self.positions.load(self.market.trades, self.bootstrap_seq)

    async def load_order_status(self) -> None:
        """Members' orders of the products not delivered at the bootstrap, with their history,
        from the journal (read pool) up to the bootstrap seq; later events come with the stream."""
        market = self.market
        states = self.mirror.product_states
        products = [(pid, pb.product.open_us) for pid, pb in market.engine.products.items()
                    if states.get(pid, "delivered") != "delivered"]  # calendar data: immutable
        await self.order_status.load(market.read_pool, market.journal.market_id, products, self.bootstrap_seq)

    # ------------------------------------------------------------------ committed views
    @property
    def seq(self) -> int:
        return self.mirror.seq

    @property
    def product_states(self) -> dict[str, str]:
        return self.mirror.product_states

    @property
    def halted(self) -> tuple[bool, str]:
        return self.mirror.halted

    def snapshot(self, pid: str, depth: int | None = None) -> dict:
        return self.mirror.snapshot(pid, depth)

    def best(self, pid: str) -> tuple[int | None, int | None]:
        return self.mirror.best(pid)

    def member_orders(self, member: str, product_id: str | None = None) -> list[dict]:
        return self.mirror.member_orders(member, product_id)

    def products_view(self) -> list[dict]:
        return self.mirror.products_view()

    # ------------------------------------------------------------------ sessions
    def attach(self, s: Peer) -> None:
        assert s.member is not None
        self.peers.attach(s.member, s)

    def detach(self, s: Peer) -> None:
        if s.member is not None:
            self.peers.detach(s.member, s)
        self.publisher.detach(s)

    def _order_state(self, member: str, order_id: int) -> dict | None:
        rec = self.order_status.get(member, order_id=order_id)
        return None if rec is None else rec.view()

    def _block_remaining(self, order_id: int) -> int | None:
        blk = self.order_status.block(order_id)
        return None if blk is None else blk.quantity - blk.filled

    # ------------------------------------------------------------------ the subscriber
    def on_commit(self, entries: list[Entry]) -> None:
        self.acks.on_commit(entries)
        mirror, pub, orders = self.mirror, self.publisher, self.order_status
        touched: set[tuple[str, str, int]] = set()
        book_last: dict[str, int] = {}
        public: Public = []
        suspended: list[str] = []
        for e in entries:
            for ev in e.events:
                if isinstance(ev, TradeEvent):
                    self.positions.trade(ev)
                    orders.apply(ev)
                    pub.trade(ev, mirror.apply_trade(ev, touched, book_last), public)
                elif isinstance(ev, _ORDER_EVENTS):
                    orders.apply(ev)
                    blk = orders.block(ev.order_id) if type(ev) is OrderCancelled else None
                    pub.order_event(ev, mirror.apply(ev, touched, book_last),
                                    None if blk is None else (blk.remaining, blk.client_order_id))
                elif isinstance(ev, _STATE_EVENTS):
                    if type(ev) is ProductStateChanged:
                        orders.apply(ev)
                    mirror.apply(ev, touched, book_last)
                    pub.state(ev, mirror, public)
                elif isinstance(ev, Rejected):
                    pub.rejected(ev)
                elif isinstance(ev, (BlockAccepted, BlockResult)):
                    orders.apply(ev)
                    pub.block(ev)
                elif isinstance(ev, VolatilityInterruption):
                    pub.volatility(ev, public)
                elif isinstance(ev, MemberUpdated):
                    mirror.apply(ev, touched, book_last)
                    if ev.suspended:
                        suspended.append(ev.member)
            mirror.seq = e.events[-1].seq
        pub.books(mirror, touched, book_last)
        pub.flush(public)
        # a suspended member's sessions end once they have been sent the group's reports (the
        # cancellations of its orders come after its suspension in the same group)
        for m in suspended:
            pub.suspended(m)


MARKET_DATA: web.AppKey[MarketData] = web.AppKey("market_data", MarketData)
