"""The committed book mirror: open orders, aggregated levels, product states and the
halt flag as of the last committed event (never the engine's live state, which may
run one group ahead). Built from the engine right after recovery, then kept by
:meth:`BookMirror.apply` from each committed event. No sessions, no I/O."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from exchange.core.engine import MarketEngine
from exchange.core.levels import LevelBook
from exchange.core.model import (
    Event,
    MarketHalted,
    MarketResumed,
    MemberUpdated,
    OrderAccepted,
    OrderCancelled,
    OrderExpired,
    OrderModified,
    ProductListed,
    ProductStateChanged,
    TradeEvent,
)

Touched = set[tuple[str, str, int]]  # (product, side, price) of levels changed by a group


@dataclass(slots=True)
class MirrorOrder:
    order_id: int
    member: str
    product_id: str
    side: str
    price: int
    remaining: int
    quantity: int
    client_order_id: str | None

    def view(self) -> dict:
        return {"order_id": self.order_id, "product_id": self.product_id, "side": self.side, "price": self.price,
                "quantity": self.quantity, "remaining": self.remaining, "client_order_id": self.client_order_id}


class BookMirror:
    def __init__(self) -> None:
        self.orders: dict[int, MirrorOrder] = {}
        self.by_member: dict[str, set[int]] = defaultdict(set)
        self.books: dict[str, LevelBook] = {}
        self.product_states: dict[str, str] = {}
        self.halted: tuple[bool, str] = (False, "")
        self.suspended: set[str] = set()  # members suspended as of the last committed event
        self.seq = 0  # last committed event seq applied

    def bootstrap(self, engine: MarketEngine) -> None:
        """Copy the engine's state right after recovery (engine == committed state)."""
        for pid, pb in engine.products.items():
            self.product_states[pid] = pb.state.value
            for o in pb.book.orders():
                self._add(MirrorOrder(o.order_id, o.member, pid, o.side.value, o.price, o.remaining, o.quantity,
                                      o.client_order_id), set())
            self.book(pid).seq = engine.seq
        self.halted = (engine.halted, engine.halt_reason)
        self.suspended = {m for m, a in engine.accounts.items() if a.suspended}
        self.seq = engine.seq

    # ------------------------------------------------------------------ views
    def book(self, pid: str) -> LevelBook:
        b = self.books.get(pid)
        if b is None:
            b = self.books[pid] = LevelBook(pid)
        return b

    def snapshot(self, pid: str, depth: int | None = None) -> dict:
        """The committed book (its best ``depth`` levels per side, or all)."""
        b = self.books.get(pid) or LevelBook(pid)
        return {"type": "book_snapshot", "product_id": pid, "seq": b.seq or 0,
                "bids": [list(r) for r in b.depth("buy", depth)], "asks": [list(r) for r in b.depth("sell", depth)]}

    def best(self, pid: str) -> tuple[int | None, int | None]:
        """Best committed bid and ask of a product."""
        b = self.books.get(pid)
        return (b.best_bid(), b.best_ask()) if b is not None else (None, None)

    def member_orders(self, member: str, product_id: str | None = None) -> list[dict]:
        out = [self.orders[i] for i in sorted(self.by_member.get(member, ()))]
        return [o.view() for o in out if product_id is None or o.product_id == product_id]

    def products_view(self) -> list[dict]:
        return [{"product_id": pid, "state": st} for pid, st in sorted(self.product_states.items())]

    # ------------------------------------------------------------------ changes
    def _add(self, o: MirrorOrder, touched: Touched) -> None:
        self.orders[o.order_id] = o
        self.by_member[o.member].add(o.order_id)
        self.book(o.product_id).shift(o.side, o.price, o.remaining, 1)
        touched.add((o.product_id, o.side, o.price))

    def _change(self, o: MirrorOrder, remaining: int, touched: Touched) -> None:
        gone = remaining == 0
        self.book(o.product_id).shift(o.side, o.price, remaining - o.remaining, -1 if gone else 0)
        o.remaining = remaining
        touched.add((o.product_id, o.side, o.price))
        if gone:
            del self.orders[o.order_id]
            ids = self.by_member[o.member]
            ids.discard(o.order_id)
            if not ids:
                del self.by_member[o.member]

    def apply(self, ev: Event, touched: Touched, book_last: dict[str, int]) -> MirrorOrder | None:
        """Apply one committed event. Returns the order it concerns as the mirror knew it
        (for a trade: None; see :meth:`apply_trade`), so reports can name its client id."""
        t = type(ev)
        if t is OrderAccepted:
            assert isinstance(ev, OrderAccepted)
            o = MirrorOrder(ev.order_id, ev.member, ev.product_id, ev.side.value, ev.price, ev.quantity,
                            ev.quantity, ev.client_order_id)
            self._add(o, touched)
            book_last[ev.product_id] = ev.seq
            return o
        if t is OrderCancelled or t is OrderExpired:
            assert isinstance(ev, (OrderCancelled, OrderExpired))
            found = self.orders.get(ev.order_id)
            if found is not None:
                self._change(found, 0, touched)
                book_last[ev.product_id] = ev.seq
            return found
        if t is OrderModified:
            assert isinstance(ev, OrderModified)
            found = self.orders.get(ev.order_id)
            if found is not None:
                if ev.priority_kept:
                    self._change(found, ev.quantity, touched)
                else:  # re-queued at the new price: filled part + new remaining
                    filled = found.quantity - found.remaining
                    self._change(found, 0, touched)
                    found = MirrorOrder(ev.order_id, ev.member, ev.product_id, found.side, ev.price, ev.quantity,
                                        filled + ev.quantity, found.client_order_id)
                    self._add(found, touched)
                book_last[ev.product_id] = ev.seq
            return found
        if t is ProductStateChanged or t is ProductListed:
            assert isinstance(ev, (ProductStateChanged, ProductListed))
            self.product_states[ev.product_id] = ev.state
            if ev.state == "delivered":
                b = self.books.get(ev.product_id)
                if b is not None:
                    b.clear()
            return None
        if t is MemberUpdated:
            assert isinstance(ev, MemberUpdated)
            if ev.suspended:
                self.suspended.add(ev.member)
            else:
                self.suspended.discard(ev.member)
        elif t is MarketHalted:
            assert isinstance(ev, MarketHalted)
            self.halted = (True, ev.reason)
        elif t is MarketResumed:
            self.halted = (False, "")
        return None

    def apply_trade(self, ev: TradeEvent, touched: Touched, book_last: dict[str, int]) -> tuple[str | None, str | None]:
        """Apply a trade; returns the client order ids of its buy and sell orders."""
        book_last[ev.product_id] = ev.seq
        coids: list[str | None] = []
        for oid, remaining in ((ev.buy_order_id, ev.buy_remaining), (ev.sell_order_id, ev.sell_remaining)):
            o = self.orders.get(oid)
            coids.append(o.client_order_id if o is not None else None)
            if o is not None:
                self._change(o, remaining, touched)
        return coids[0], coids[1]

    def level_changes(self, touched: Touched) -> dict[str, list[list]]:
        """``[side, price, volume, orders]`` of every touched level, per product, sorted."""
        changes: dict[str, list[list]] = defaultdict(list)
        for pid, side, price in touched:
            b = self.books.get(pid)
            v, n = b.level(side, price) if b is not None else (0, 0)
            changes[pid].append([side, price, v, n])
        for ch in changes.values():
            ch.sort(key=lambda c: (c[0], c[1]))
        return changes
