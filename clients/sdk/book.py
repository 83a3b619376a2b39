"""A local copy of one product's order book, kept from a snapshot and deltas."""

from __future__ import annotations

from dataclasses import dataclass, field

from clients.sdk.models import BookDelta, BookSnapshot

__all__ = ["BookGap", "BookUpdate", "LocalBook"]


class BookGap(Exception):
    """A delta's ``prev_seq`` is not the ``seq`` held: a message was missed."""


class LocalBook:
    """Aggregated price levels (``price -> (volume Wh, orders)``) of one product.

    ``seq`` is ``None`` until a snapshot arrives (and again while resyncing).
    """

    def __init__(self, product_id: str) -> None:
        self.product_id = product_id
        self.seq: int | None = None
        self.bids: dict[int, tuple[int, int]] = {}
        self.asks: dict[int, tuple[int, int]] = {}

    @property
    def synced(self) -> bool:
        return self.seq is not None

    def reset(self, snap: BookSnapshot) -> None:
        self.bids = {p: (v, n) for p, v, n in snap.bids}
        self.asks = {p: (v, n) for p, v, n in snap.asks}
        self.seq = snap.seq

    def invalidate(self) -> None:
        self.seq = None

    def apply(self, delta: BookDelta) -> bool:
        """Apply ``delta``; False if it is stale (already included), raises :class:`BookGap`
        if one was missed (or no snapshot is held)."""
        if self.seq is None:
            raise BookGap(f"{self.product_id}: no snapshot held")
        if delta.prev_seq != self.seq:
            if delta.seq <= self.seq:
                return False
            raise BookGap(f"{self.product_id}: delta prev_seq {delta.prev_seq} != held seq {self.seq}")
        for side, price, volume, n in delta.changes:
            levels = self.bids if side == "buy" else self.asks
            if volume:
                levels[price] = (volume, n)
            else:
                levels.pop(price, None)
        self.seq = delta.seq
        return True

    # ------------------------------------------------------------------ views
    def best_bid(self) -> int | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> int | None:
        return min(self.asks) if self.asks else None

    def mid(self) -> int | None:
        """Integer mid price (rounded down), or ``None`` without both sides."""
        b, a = self.best_bid(), self.best_ask()
        return (a + b) // 2 if a is not None and b is not None else None

    def depth(self, side: str, levels: int | None = None) -> list[tuple[int, int, int]]:
        """``[(price, volume, orders)]`` best first."""
        book = self.bids if side == "buy" else self.asks
        prices = sorted(book, reverse=(side == "buy"))[:levels]
        return [(p, *book[p]) for p in prices]

    def as_dict(self) -> dict:
        return {"product_id": self.product_id, "seq": self.seq, "bids": self.depth("buy"), "asks": self.depth("sell")}


@dataclass(frozen=True)
class BookUpdate:
    """What a book feed yields: the local ``book`` after a snapshot (``delta is None``) or a
    delta. ``resync`` marks a snapshot that replaced the book after a gap or a reconnection."""

    product_id: str
    book: LocalBook = field(repr=False)
    seq: int
    delta: BookDelta | None = None
    resync: bool = False

    @property
    def is_snapshot(self) -> bool:
        return self.delta is None
