"""One order book per product: price levels kept sorted per side, FIFO queues per level.

Bids are keyed by ``-price`` so that the best level of either side is the
first key. A side (:class:`SortedLevels`) is a dict ``key -> Level`` that also keeps
its keys sorted, in chunks (a two-level sorted list, as ``sortedcontainers`` keeps
them, with only what the book needs: adding or removing a level is a few C-level
bisections and list operations, and the best level is the first key of the first
chunk). A :class:`Level` is a deque of orders in time priority plus its
live count and volume. Cancelled or re-prioritised orders are marked dead and
removed lazily when they reach the head of their queue, so cancel is O(1)
apart from the dictionary look-up.

The book owns these invariants: a level's ``count`` and ``volume`` are the
number and the remaining quantity of its live orders, a level with no live
order is not in the book, an order is ``live`` exactly while it rests in it.
Only the methods below change them; matching goes through
:meth:`OrderBook.best_level`, :meth:`Level.head` and :meth:`Level.fill`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Iterator

from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import Side, TimeInForce

#: An order's entry in :meth:`OrderBook.orders` snapshots (the state hash).
OrderSnapshot = list[int | str | None]

_BUY = Side.BUY  # bound once: reading an enum member runs a descriptor on Python 3.11


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
        "expire_at",
    )

    def __init__(self, order_id: OrderId, member: MemberId, product_id: ProductId, side: Side, price: int,
                 quantity: int, tif: TimeInForce, client_order_id: str | None, signature: str | None,
                 ts: int) -> None:
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
        self.expire_at: int | None = None  # good till this time (us), else till gate closure

    def exposure(self) -> int:
        """Money (1e-8 EUR) this order could cost its owner if fully filled at its limit:
        a buy at a positive price, or a sell at a negative price."""
        p = self.price if self.side is _BUY else -self.price
        return self.remaining * p if p > 0 else 0

    def clone(self) -> Order:
        o = Order(
            self.order_id, self.member, self.product_id, self.side, self.price, self.quantity,
            self.tif, self.client_order_id, self.signature, self.ts,
        )
        o.remaining = self.remaining
        o.expire_at = self.expire_at
        return o

    def snapshot(self) -> OrderSnapshot:
        snap: OrderSnapshot = [self.order_id, self.member, self.side.value, self.price, self.remaining, self.quantity,
                               self.tif.value, self.client_order_id, self.ts]
        if self.expire_at is not None:
            snap.append(self.expire_at)
        return snap


class Level:
    """The orders resting at one price of one side, in time priority.

    ``price``, ``count`` (live orders) and ``volume`` (their remaining Wh) are for
    reading; the level changes only through its methods, and leaves its side of
    the book when its last live order goes.
    """

    __slots__ = ("price", "queue", "count", "volume", "_side", "_key")

    def __init__(self, price: int, side: SortedLevels, key: int) -> None:
        self.price = price
        self.queue: deque[Order] = deque()
        self.count = 0
        self.volume = 0
        self._side = side  # the book's side this level is in, under ``key``
        self._key = key

    def live_orders(self) -> Iterator[Order]:
        """The live orders, in time priority."""
        return (o for o in self.queue if o.live)

    def head(self) -> Order | None:
        """The first live order (the next to trade); None once the level is empty."""
        if not self.count:
            return None
        q = self.queue
        o = q[0]
        while not o.live:  # dead orders are dropped when they reach the head
            q.popleft()
            o = q[0]
        return o

    def append(self, order: Order) -> None:
        self.queue.append(order)
        order.live = True
        self.count += 1
        self.volume += order.remaining

    def fill(self, order: Order, qty: int) -> bool:
        """Account a fill of ``qty`` on one of the level's live orders, whose ``remaining``
        was already lowered by ``qty``. True if that filled it: it left the book."""
        self.volume -= qty
        if order.remaining:
            return False
        self._drop(order)
        return True

    def remove(self, order: Order) -> None:
        """Take one of the level's live orders out (lazily: it is marked dead)."""
        self.volume -= order.remaining
        self._drop(order)

    def reduce(self, order: Order, new_remaining: int) -> None:
        """Lower a live order's remaining quantity in place (it keeps its priority)."""
        self.volume -= order.remaining - new_remaining
        order.remaining = new_remaining

    def _drop(self, order: Order) -> None:
        order.live = False
        self.count -= 1
        if self.count == 0:
            self._side.delete(self._key)
        elif self.queue[0] is order:
            self.queue.popleft()


#: A chunk of sorted keys is split in two halves of this size when it grows above twice it.
_CHUNK = 512


class SortedLevels(dict[int, Level]):
    """One side of a book: ``key -> Level`` (a dict: look-ups are plain dict look-ups), its
    keys also kept in ascending order in chunks of at most ``2 * _CHUNK`` (``_maxes[i]`` is
    the last key of ``_chunks[i]``). Levels enter through :meth:`insert` and leave through
    :meth:`delete` only."""

    __slots__ = ("_chunks", "_maxes")

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[list[int]] = []
        self._maxes: list[int] = []

    def first(self) -> Level | None:
        """The level of the lowest key (the best of the side), None if the side is empty."""
        chunks = self._chunks
        return self[chunks[0][0]] if chunks else None

    def first_key(self) -> int | None:
        chunks = self._chunks
        return chunks[0][0] if chunks else None

    def in_order(self) -> Iterator[Level]:
        """The levels by ascending key (the side's best first)."""
        for chunk in self._chunks:
            for key in chunk:
                yield self[key]

    def insert(self, key: int, level: Level) -> None:
        """Add a level under a key not in the side."""
        self[key] = level
        maxes = self._maxes
        chunks = self._chunks
        if not maxes:
            chunks.append([key])
            maxes.append(key)
            return
        i = bisect_right(maxes, key)
        if i == len(maxes):  # above every key: the end of the last chunk
            i -= 1
            chunk = chunks[i]
            chunk.append(key)
            maxes[i] = key
        else:
            chunk = chunks[i]
            insort(chunk, key)
        if len(chunk) > 2 * _CHUNK:
            half = chunk[_CHUNK:]
            del chunk[_CHUNK:]
            maxes[i] = chunk[-1]
            chunks.insert(i + 1, half)
            maxes.insert(i + 1, half[-1])

    def delete(self, key: int) -> None:
        """Remove the level under ``key`` (in the side)."""
        del self[key]
        maxes = self._maxes
        i = bisect_left(maxes, key)
        chunk = self._chunks[i]
        j = bisect_left(chunk, key)
        del chunk[j]
        if not chunk:
            del self._chunks[i]
            del maxes[i]
        elif j == len(chunk):  # it was the chunk's last key
            maxes[i] = chunk[-1]


class OrderBook:
    __slots__ = ("product_id", "bids", "asks")

    def __init__(self, product_id: ProductId) -> None:
        self.product_id = product_id
        self.bids = SortedLevels()  # -price -> Level
        self.asks = SortedLevels()  # price -> Level

    # -- queries
    def best_bid(self) -> int | None:
        key = self.bids.first_key()
        return None if key is None else -key

    def best_ask(self) -> int | None:
        return self.asks.first_key()

    def is_crossed(self) -> bool:
        b, a = self.best_bid(), self.best_ask()
        return b is not None and a is not None and b >= a

    def best_level(self, side: Side) -> Level | None:
        """The best level of ``side`` (the highest bid or the lowest ask), None if the side is empty."""
        return (self.bids if side is _BUY else self.asks).first()

    def side_levels(self, side: Side) -> Iterator[tuple[int, Level]]:
        """(price, level) of one side, best first."""
        levels = self.bids if side is _BUY else self.asks
        return ((lvl.price, lvl) for lvl in levels.in_order())

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

    def level_of(self, order: Order) -> Level:
        """The level a live order rests in."""
        if order.side is _BUY:
            return self.bids[-order.price]
        return self.asks[order.price]

    # -- mutation
    def add(self, order: Order) -> None:
        """Rest ``order`` at the back of its price level."""
        if order.side is _BUY:
            levels, key = self.bids, -order.price
        else:
            levels, key = self.asks, order.price
        lvl = levels.get(key)
        if lvl is None:
            lvl = Level(order.price, levels, key)
            levels.insert(key, lvl)
        lvl.queue.append(order)  # lvl.append(order), inline
        order.live = True
        lvl.count += 1
        lvl.volume += order.remaining

    def remove(self, order: Order) -> None:
        """Take a live order out of the book (lazily: it is marked dead)."""
        self.level_of(order).remove(order)

    def fill(self, order: Order, qty: int) -> bool:
        """Account a fill of ``qty`` on a resting order whose ``remaining`` was already
        lowered by ``qty``. True if that filled it: it left the book."""
        return self.level_of(order).fill(order, qty)

    def reduce(self, order: Order, new_remaining: int) -> None:
        """Lower a resting order's remaining quantity in place (keeps priority)."""
        self.level_of(order).reduce(order, new_remaining)
