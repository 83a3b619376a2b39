"""A local copy of one product's order book, kept from a snapshot and deltas (over the
one level-book type, :class:`exchange.core.levels.LevelBook`, that the exchange's own
market-data mirror keeps too)."""

from __future__ import annotations

from dataclasses import dataclass, field

from clients.sdk.models import BookDelta, BookSnapshot
from exchange.core.levels import LevelBook

__all__ = ["BookGap", "BookUpdate", "LocalBook"]


class BookGap(Exception):
    """A delta's ``prev_seq`` is not the ``seq`` held: a message was missed."""


class LocalBook(LevelBook):
    """Aggregated price levels (``price -> (volume Wh, orders)``) of one product, with the
    views of :class:`~exchange.core.levels.LevelBook` (``best_bid``, ``best_ask``, ``mid``,
    ``depth``, ``level``).

    ``seq`` is ``None`` until a snapshot arrives (and again while resyncing). ``held_seq`` is
    the seq of the levels held, kept while resyncing: a resubscription with ``from_seq =
    held_seq`` gets the deltas since (:meth:`resume`, then :meth:`apply` them) instead of a
    snapshot while the server still keeps them.
    """

    __slots__ = ("held_seq",)

    def __init__(self, product_id: str) -> None:
        super().__init__(product_id, None)
        self.held_seq: int | None = None

    @property
    def synced(self) -> bool:
        return self.seq is not None

    def reset(self, snap: BookSnapshot) -> None:
        self.bids = {p: (v, n) for p, v, n in snap.bids}
        self.asks = {p: (v, n) for p, v, n in snap.asks}
        self.seq = self.held_seq = snap.seq

    def invalidate(self) -> None:
        """Not current any more (a gap, a lost connection); the levels and ``held_seq`` stay."""
        self.seq = None

    def resume(self) -> None:
        """Current again at ``held_seq``: the server answered a subscription ``from_seq =
        held_seq`` with the deltas since (they follow, chained from ``held_seq``)."""
        if self.held_seq is None:
            raise BookGap(f"{self.product_id}: no book held to resume")
        self.seq = self.held_seq

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
            self.set_level(side, price, volume, n)
        self.seq = self.held_seq = delta.seq
        return True

    def follow(self, delta: BookDelta) -> bool:
        """Follow the book with a pushed delta: :meth:`apply` it once a snapshot is held (False
        before: the snapshot to come already includes it). On a gap the book is invalidated
        and :class:`BookGap` raised: re-subscribe from ``held_seq`` (replayed deltas after
        :meth:`resume`) or for a fresh snapshot (:meth:`reset`)."""
        if not self.synced:
            return False
        try:
            return self.apply(delta)
        except BookGap:
            self.invalidate()
            raise

    def as_dict(self) -> dict:
        return {"product_id": self.product_id, "seq": self.seq, "bids": self.depth("buy"), "asks": self.depth("sell")}


@dataclass(frozen=True)
class BookUpdate:
    """What a book feed yields: the local ``book`` after a snapshot (``delta is None``) or a
    delta. ``resync`` marks a snapshot that replaced the book after a gap or a reconnection
    (the server no longer kept the deltas missed); ``replayed`` a delta the server sent again
    because the feed missed it (a gap or a reconnection resynced without a snapshot)."""

    product_id: str
    book: LocalBook = field(repr=False)
    seq: int
    delta: BookDelta | None = None
    resync: bool = False
    replayed: bool = False

    @property
    def is_snapshot(self) -> bool:
        return self.delta is None
