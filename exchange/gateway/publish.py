"""Publication of the committed stream to peers: execution reports to every session of
the members concerned (through :class:`~exchange.gateway.peers.Peers`), and public
market data to subscribers (book deltas from the mirror's touched levels, trades,
product and market states). Sends only; the mirror is kept by
:class:`~exchange.gateway.mirror.BookMirror`."""

from __future__ import annotations

import secrets
from collections import defaultdict, deque

from exchange.core.model import (
    BlockAccepted,
    BlockResult,
    MarketHalted,
    MarketResumed,
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
from exchange.core.units import iso
from exchange.gateway.ack import Peer
from exchange.gateway.encoding import aggressor, encode
from exchange.gateway.mirror import BookMirror, MirrorOrder
from exchange.gateway.peers import Peers

Public = list[tuple[set[Peer], str]]
REPLAY_WINDOW = 256  # private reports kept per member for replay


class PrivateStream:
    """Each member's private reports numbered ``pseq`` 1, 2, 3 ... (for as long as this server
    runs: ``run_id`` names the run), the last :data:`REPLAY_WINDOW` kept for replay."""

    def __init__(self, window: int = REPLAY_WINDOW) -> None:
        self.window = window
        self.run_id = secrets.token_hex(8)
        self.pseq: dict[str, int] = {}
        self.recent: dict[str, deque[tuple[int, str]]] = {}

    def add(self, member: str, msg: dict) -> str:
        n = self.pseq.get(member, 0) + 1
        self.pseq[member] = n
        msg["pseq"] = n
        data = encode(msg)
        ring = self.recent.get(member)
        if ring is None:
            ring = self.recent[member] = deque(maxlen=self.window)
        ring.append((n, data))
        return data

    def since(self, member: str, from_pseq: int) -> list[str] | None:
        """The reports with ``pseq >= from_pseq``; None when some of them are no longer kept."""
        ring = self.recent.get(member)
        last = self.pseq.get(member, 0)
        if from_pseq > last:
            return []
        if ring is None or ring[0][0] > from_pseq:
            return None
        return [data for n, data in ring if n >= from_pseq]


#: book deltas kept per product for subscribers that resume from a seq
BOOK_REPLAY = 256


class Publisher:
    def __init__(self, peers: Peers, *, disclose_counterparty: bool = False) -> None:
        self.peers = peers
        self.disclose = disclose_counterparty
        self.book_subs: dict[str, set[Peer]] = defaultdict(set)
        # depth-limited book subscribers: product -> session -> depth (fresh top-N snapshots)
        self.top_subs: dict[str, dict[Peer, int]] = defaultdict(dict)
        self.trade_subs: dict[str | None, set[Peer]] = defaultdict(set)  # None: all products
        self.product_subs: set[Peer] = set()
        # product -> the last BOOK_REPLAY book deltas, (prev_seq, seq, encoded): a subscriber that
        # holds the book at some seq gets the deltas since instead of a snapshot
        self.book_history: dict[str, deque[tuple[int, int, str]]] = {}
        self.stream = PrivateStream()

    # ------------------------------------------------------------------ subscriptions
    def detach(self, s: Peer) -> None:
        for subs in (*self.book_subs.values(), *self.trade_subs.values()):
            subs.discard(s)
        for tops in self.top_subs.values():
            tops.pop(s, None)
        self.product_subs.discard(s)

    # ------------------------------------------------------------------ private reports
    def private(self, member: str, msg: dict) -> None:
        """Number the report in the member's private stream, keep it for replay, send it to
        the member's sessions (every report is numbered, connected or not, so a member that
        reconnects sees the gap and replays it)."""
        data = self.stream.add(member, msg)
        for s in self.peers.sessions(member):
            s.send_raw(data)

    def rejected(self, ev: Rejected) -> None:
        """Rejections of a member's order commands go to its private stream too."""
        if ev.member is None or ev.command not in ("place", "place_block", "modify", "cancel"):
            return
        # a refused place made no order: order_id is null even when the engine names another
        # one (CLIENT_ORDER_ID_REUSED names the order that holds the id, which stays as it is)
        placed = ev.command in ("place", "place_block")
        self.private(ev.member, {"type": "execution", "exec": "rejected", "seq": ev.seq, "ts": iso(ev.ts),
                                 "order_id": None if placed else ev.order_id, "client_order_id": ev.client_order_id,
                                 "command": ev.command, "reason": ev.reason, "detail": ev.detail})

    def block(self, ev: BlockAccepted | BlockResult) -> None:
        """Execution reports of a block order: accepted for its auction, then its verdict (its
        fills, if executed, come as ``fill`` reports before the verdict)."""
        if isinstance(ev, BlockAccepted):
            self.private(ev.member, {"type": "execution", "exec": "block_accepted", "seq": ev.seq, "ts": iso(ev.ts),
                                     "order_id": ev.order_id, "client_order_id": ev.client_order_id,
                                     "product_ids": ev.product_ids, "side": ev.side.value, "price": ev.price,
                                     "quantity": ev.quantity})
        else:
            self.private(ev.member, {"type": "execution", "exec": "block_result", "seq": ev.seq, "ts": iso(ev.ts),
                                     "order_id": ev.order_id, "executed": ev.executed, "prices": ev.prices,
                                     "detail": ev.detail})

    def order_event(self, ev: OrderAccepted | OrderCancelled | OrderExpired | OrderModified,
                    o: MirrorOrder | None, block: tuple[int, str | None] | None = None) -> None:
        """The execution report of an order event (``o``: the order as the mirror knew it;
        ``block``: a block order's remaining quantity over all its hours and client order id,
        for its cancel, which the engine's event counts per hour and the mirror never held)."""
        if isinstance(ev, OrderAccepted):
            assert o is not None
            self.private(ev.member, {"type": "execution", "exec": "accepted", "seq": ev.seq, "ts": iso(ev.ts),
                                     **o.view()})
        elif isinstance(ev, OrderModified):
            self.private(ev.member, {"type": "execution", "exec": "modified", "seq": ev.seq, "ts": iso(ev.ts),
                                     "order_id": ev.order_id, "product_id": ev.product_id, "price": ev.price,
                                     "remaining": ev.quantity, "priority_kept": ev.priority_kept})
        else:
            cancelled = isinstance(ev, OrderCancelled)
            msg = {"type": "execution", "exec": "cancelled" if cancelled else "expired", "seq": ev.seq,
                   "ts": iso(ev.ts), "order_id": ev.order_id, "product_id": ev.product_id,
                   "remaining": ev.remaining, "client_order_id": o.client_order_id if o is not None else None}
            if block is not None:
                msg["remaining"], msg["client_order_id"] = block
            if isinstance(ev, OrderCancelled):
                msg["reason"] = ev.reason.value
            self.private(ev.member, msg)

    def trade(self, ev: TradeEvent, coids: tuple[str | None, str | None], public: Public) -> None:
        pid = ev.product_id
        ts = iso(ev.ts)
        agg = aggressor(ev)
        for oid, coid, remaining, member, side, other in (
            (ev.buy_order_id, coids[0], ev.buy_remaining, ev.buyer, "buy", ev.seller),
            (ev.sell_order_id, coids[1], ev.sell_remaining, ev.seller, "sell", ev.buyer),
        ):
            self.private(member, {
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
                public.append((targets, encode({"type": "trade", "product_id": pid, "trade_id": ev.trade_id,
                                                "price": ev.price, "quantity": ev.quantity, "aggressor": agg,
                                                "seq": ev.seq, "ts": ts})))

    def suspended(self, member: str) -> None:
        """A suspended member's live sessions end (a kill switch): told why, then closed."""
        for s in self.peers.sessions(member):
            s.send({"type": "error", "id": None, "code": "MEMBER_SUSPENDED",
                    "message": f"{member} is suspended by the operator; this session ends"})
            s.close(4003, "member suspended", flush=True)

    # ------------------------------------------------------------------ public
    def book_since(self, pid: str, from_seq: int, current: int) -> list[str] | None:
        """The book deltas after ``from_seq`` (a book the client holds at that seq), in order;
        [] when it is current; None when they are not all kept any more (then: a snapshot)."""
        if from_seq == current:
            return []
        hist = self.book_history.get(pid, ())
        out: list[str] = []
        for prev, _seq, data in hist:
            if out or prev == from_seq:
                out.append(data)
        return out or None

    def state(self, ev: ProductStateChanged | ProductListed | MarketHalted | MarketResumed, mirror: BookMirror,
              public: Public) -> None:
        if isinstance(ev, ProductStateChanged) and ev.state == "delivered":
            self.book_history.pop(ev.product_id, None)  # nothing to replay for a delivered product
        if not self.product_subs:
            return
        if isinstance(ev, (ProductStateChanged, ProductListed)):
            public.append((self.product_subs, encode({"type": "product_state", "product_id": ev.product_id,
                                                      "state": ev.state, "seq": ev.seq, "ts": iso(ev.ts)})))
        else:
            public.append((self.product_subs, encode({"type": "market_state", "halted": mirror.halted[0],
                                                      "reason": mirror.halted[1], "seq": ev.seq,
                                                      "ts": iso(ev.ts)})))

    def volatility(self, ev: VolatilityInterruption, public: Public) -> None:
        if self.product_subs:
            public.append((self.product_subs, encode({
                "type": "volatility_interruption", "product_id": ev.product_id, "price": ev.price,
                "reference": ev.reference, "until": iso(ev.until), "seq": ev.seq, "ts": iso(ev.ts)})))

    def books(self, mirror: BookMirror, touched: set[tuple[str, str, int]], book_last: dict[str, int]) -> None:
        """One book delta per product touched by the group (its levels after the group)."""
        changes = mirror.level_changes(touched)
        for pid, seq in book_last.items():
            book = mirror.book(pid)
            prev = book.seq or 0
            book.seq = seq
            data = encode({"type": "book", "product_id": pid, "seq": seq, "prev_seq": prev,
                           "changes": changes.get(pid, [])})
            hist = self.book_history.get(pid)
            if hist is None:
                hist = self.book_history[pid] = deque(maxlen=BOOK_REPLAY)
            hist.append((prev, seq, data))
            subs = self.book_subs.get(pid)
            if subs:
                for s in list(subs):
                    s.send_raw(data)
            tops = self.top_subs.get(pid)
            if tops:  # one snapshot per depth asked for, bounded in size whatever the book's
                by_depth: dict[int, str] = {}
                for s, depth in list(tops.items()):
                    top = by_depth.get(depth)
                    if top is None:
                        top = by_depth[depth] = encode(mirror.snapshot(pid, depth))
                    s.send_raw(top)

    @staticmethod
    def flush(public: Public) -> None:
        for subs, data in public:
            for s in list(subs):
                s.send_raw(data)
