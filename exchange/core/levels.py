"""Aggregated price levels of one product's book: ``price -> (volume Wh, orders)`` per
side, and the event ``seq`` they are current at. The one level-book type: the
gateway's committed mirror keeps one per product (from the committed events) and the
SDK's local book keeps one per product (from snapshots and deltas). Pure."""

from __future__ import annotations

BUY, SELL = "buy", "sell"
Level = tuple[int, int]  # (volume Wh, orders)
Row = tuple[int, int, int]  # (price, volume Wh, orders)


class LevelBook:
    __slots__ = ("product_id", "seq", "bids", "asks")

    def __init__(self, product_id: str, seq: int | None = 0) -> None:
        self.product_id = product_id
        self.seq = seq
        self.bids: dict[int, Level] = {}
        self.asks: dict[int, Level] = {}

    def side(self, side: str) -> dict[int, Level]:
        return self.bids if side == BUY else self.asks

    def set_level(self, side: str, price: int, volume: int, orders: int) -> None:
        """Replace one level; a zero volume removes it."""
        levels = self.side(side)
        if volume:
            levels[price] = (volume, orders)
        else:
            levels.pop(price, None)

    def shift(self, side: str, price: int, volume: int, orders: int) -> None:
        """Add ``volume`` and ``orders`` (either may be negative) to one level; a level left
        with no orders is removed."""
        levels = self.side(side)
        v, n = levels.get(price, (0, 0))
        v, n = v + volume, n + orders
        if n:
            levels[price] = (v, n)
        else:
            levels.pop(price, None)

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    # ------------------------------------------------------------------ views
    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None

    def mid(self) -> int | None:
        """Integer mid price (rounded down), or ``None`` without both sides."""
        b, a = self.best_bid(), self.best_ask()
        return (a + b) // 2 if a is not None and b is not None else None

    def depth(self, side: str, levels: int | None = None) -> list[Row]:
        """``[(price, volume, orders)]`` best first."""
        book = self.side(side)
        prices = sorted(book, reverse=(side == BUY))[:levels]
        return [(p, *book[p]) for p in prices]

    def level(self, side: str, price: int) -> Level:
        return self.side(side).get(price, (0, 0))
