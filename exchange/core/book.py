"""One order book per product: price levels in a SortedDict, FIFO queues per level.

Bids are keyed by ``-price`` so that the best level of either side is the
first key. A level is a deque of orders in time priority plus its live count
and volume. Cancelled or re-prioritised orders are marked dead and removed
lazily when they reach the head of their queue, so cancel is O(1) apart from
the dictionary look-up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from sortedcontainers import SortedDict

from exchange.core.model import Side


class Order:
    __slots__ = (
        "order_id",
        "member",
        "product_id",
        "side",
        "price",
        "quantity",
        "remaining",
        "tif",
        "client_order_id",
        "signature",
        "ts",
        "live",
    )

    def __init__(self, order_id, member, product_id, side, price, quantity, tif, client_order_id, signature, ts):
        self.order_id = order_id
        self.member = member
        self.product_id = product_id
        self.side = side
        self.price = price
        self.quantity = quantity
        self.remaining = quantity
        self.tif = tif
        self.client_order_id = client_order_id
        self.signature = signature
        self.ts = ts
        self.live = False  # True while resting in a book

    def exposure(self) -> int:
        """Money (1e-8 EUR) this order could cost its owner if fully filled at its limit:
        a buy at a positive price, or a sell at a negative price."""
        p = self.price if self.side is Side.BUY else -self.price
        return self.remaining * p if p > 0 else 0

    def clone(self) -> Order:
        o = Order(
            self.order_id, self.member, self.product_id, self.side, self.price, self.quantity,
            self.tif, self.client_order_id, self.signature, self.ts,
        )
        o.remaining = self.remaining
        return o

    def snapshot(self) -> list:
        return [self.order_id, self.member, self.side.value, self.price, self.remaining, self.quantity, self.tif.value,
                self.client_order_id, self.ts]


class Level:
    __slots__ = ("queue", "count", "volume")

    def __init__(self) -> None:
        self.queue: deque[Order] = deque()
        self.count = 0
        self.volume = 0

    def live_orders(self) -> Iterator[Order]:
        return (o for o in self.queue if o.live)


class OrderBook:
    __slots__ = ("product_id", "bids", "asks")

    def __init__(self, product_id: str) -> None:
        self.product_id = product_id
        self.bids: SortedDict = SortedDict()  # -price -> Level
        self.asks: SortedDict = SortedDict()  # price -> Level

    # -- queries
    def best_bid(self) -> int | None:
        return -self.bids.keys()[0] if self.bids else None

    def best_ask(self) -> int | None:
        return self.asks.keys()[0] if self.asks else None

    def is_crossed(self) -> bool:
        b, a = self.best_bid(), self.best_ask()
        return b is not None and a is not None and b >= a

    def side_levels(self, side: Side) -> Iterator[tuple[int, Level]]:
        """(price, level) of one side, best first."""
        if side is Side.BUY:
            return ((-k, lvl) for k, lvl in self.bids.items())
        return iter(self.asks.items())

    def depth(self, side: Side, limit: int | None = None) -> list[tuple[int, int, int]]:
        """Aggregated (price, volume, order count) levels, best first."""
        out = []
        for price, lvl in self.side_levels(side):
            out.append((price, lvl.volume, lvl.count))
            if limit is not None and len(out) >= limit:
                break
        return out

    def orders(self) -> Iterator[Order]:
        """Live orders in priority order: bids best first, then asks best first."""
        for side in (Side.BUY, Side.SELL):
            for _, lvl in self.side_levels(side):
                yield from lvl.live_orders()

    # -- mutation
    def add(self, order: Order) -> None:
        book = self.bids if order.side is Side.BUY else self.asks
        key = -order.price if order.side is Side.BUY else order.price
        lvl = book.get(key)
        if lvl is None:
            lvl = book[key] = Level()
        lvl.queue.append(order)
        order.live = True
        lvl.count += 1
        lvl.volume += order.remaining

    def remove(self, order: Order) -> None:
        """Take a live order out of the book (lazily: it is marked dead)."""
        book = self.bids if order.side is Side.BUY else self.asks
        key = -order.price if order.side is Side.BUY else order.price
        lvl = book[key]
        order.live = False
        lvl.count -= 1
        lvl.volume -= order.remaining
        if lvl.count == 0:
            del book[key]
        elif lvl.queue[0] is order:
            lvl.queue.popleft()

    def filled(self, order: Order, qty: int) -> None:
        """Account a fill of ``qty`` on a resting order whose ``remaining`` was already
        lowered by ``qty``; a fully filled order leaves the book."""
        book = self.bids if order.side is Side.BUY else self.asks
        key = -order.price if order.side is Side.BUY else order.price
        lvl = book[key]
        lvl.volume -= qty
        if order.remaining == 0:
            order.live = False
            lvl.count -= 1
            if lvl.count == 0:
                del book[key]
            elif lvl.queue[0] is order:
                lvl.queue.popleft()

    def reduce(self, order: Order, new_remaining: int) -> None:
        """Lower a resting order's remaining quantity in place (keeps priority)."""
        book = self.bids if order.side is Side.BUY else self.asks
        lvl = book[-order.price if order.side is Side.BUY else order.price]
        lvl.volume -= order.remaining - new_remaining
        order.remaining = new_remaining
