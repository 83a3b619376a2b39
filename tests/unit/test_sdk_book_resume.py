"""The SDK's local book keeps the seq of the levels it holds across a gap, so a subscription
``from_seq`` resumes it from the deltas the server replays (no socket here: the integration
side is tests/integration/test_sdk_book_replay.py)."""

from __future__ import annotations

import pytest

from clients.sdk import BookDelta, BookSnapshot, LocalBook, wire
from clients.sdk.book import BookGap

pytestmark = pytest.mark.unit


def _delta(seq: int, prev: int, *changes) -> BookDelta:
    return BookDelta(type="book", product_id="p", seq=seq, prev_seq=prev, changes=list(changes))


def test_a_book_resumes_from_the_seq_it_holds():
    book = LocalBook("p")
    with pytest.raises(BookGap):
        book.resume()  # nothing held yet: only a snapshot starts a book
    book.reset(BookSnapshot(type="book_snapshot", product_id="p", seq=2, bids=[(90, 7, 2)], asks=[]))
    assert book.follow(_delta(3, 2, ("buy", 100, 5, 1)))
    with pytest.raises(BookGap):
        book.follow(_delta(6, 5))
    assert not book.synced and book.held_seq == 3  # the levels of seq 3 are kept
    assert not book.follow(_delta(4, 3, ("sell", 120, 1, 1)))  # not synced: not applied
    book.resume()  # the server answered from_seq=3 with the deltas since
    assert book.synced and book.seq == 3
    assert book.follow(_delta(4, 3, ("sell", 120, 1, 1))) and book.follow(_delta(6, 4, ("buy", 90, 0, 0)))
    assert (book.seq, book.held_seq, book.depth("buy"), book.depth("sell")) == (6, 6, [(100, 5, 1)], [(120, 1, 1)])


def test_subscribe_from_a_seq():
    assert wire.subscribe(1, "book", "p", from_seq=42) == {"type": "subscribe", "id": 1, "channel": "book",
                                                           "product_id": "p", "from_seq": 42}
    assert "from_seq" not in wire.subscribe(2, "book", "p")
    with pytest.raises(ValueError):
        wire.subscribe(3, "trades", None, from_seq=1)
