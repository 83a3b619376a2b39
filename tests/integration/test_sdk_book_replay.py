"""The SDK's book feed resyncs by replay: after a gap or a reconnection it subscribes again
with ``from_seq`` = the seq of the book it holds and applies the deltas the server replays
(seq continuity checked), without a snapshot; beyond the server's window (the last 256 deltas
per product) it falls back to the snapshot the server sends. Real server over loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from support.keys import KEYS

from clients.sdk import BookUpdate, VoltbourseClient
from clients.sdk.client import BookFeed
from exchange.core.model import Side
from exchange.gateway.marketdata import MARKET_DATA
from exchange.gateway.publish import BOOK_REPLAY

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="sdkreplay", members=KEYS[:4])]


def _mirror(server, pid: str):
    return server.runner.app[MARKET_DATA].mirror.book(pid)


def _server_levels(server, pid: str) -> tuple[list, list]:
    book = server.market.engine.book(pid)
    return [tuple(x) for x in book.depth(Side.BUY)], [tuple(x) for x in book.depth(Side.SELL)]


async def _until_current(feed: BookFeed, server, pid: str, updates: list[BookUpdate], timeout: float = 10) -> None:
    """Read the feed until its book is synced at the server's committed seq of the product (and
    every update it queued is read)."""
    deadline = time.monotonic() + timeout
    while not (feed.book.synced and feed.book.seq == _mirror(server, pid).seq):
        assert time.monotonic() < deadline, (feed.book.seq, _mirror(server, pid).seq, feed.gaps, feed.replays)
        try:
            updates.append(await feed.get(0.05))
        except TimeoutError:
            pass
    while feed.pending():
        updates.append(await feed.get(1))


def _assert_equal_to_server(feed: BookFeed, server, pid: str) -> None:
    assert (feed.book.depth("buy"), feed.book.depth("sell")) == _server_levels(server, pid)
    snap = server.runner.app[MARKET_DATA].snapshot(pid)
    assert feed.book.seq == snap["seq"]
    assert [list(r) for r in feed.book.depth("buy")] == snap["bids"]
    assert [list(r) for r in feed.book.depth("sell")] == snap["asks"]


def _assert_chain(start_seq: int, updates: list[BookUpdate]) -> None:
    """Every delta the feed yielded follows the one before (no gap, nothing applied twice)."""
    seq = start_seq
    for u in updates:
        assert u.delta is not None, "no snapshot expected"
        assert u.delta.prev_seq == seq, (u.delta.prev_seq, seq)
        seq = u.seq


def _drop_book(product_id: str, n: int | None, dropped: list[dict]):
    """A drop filter: the next ``n`` book deltas of the product (all while ``n`` is None) are lost."""
    def drop(msg: dict) -> bool:
        if msg.get("type") == "book" and msg.get("product_id") == product_id and (n is None or len(dropped) < n):
            dropped.append(msg)
            return True
        return False
    return drop


async def test_a_gap_is_resynced_by_replay_without_a_snapshot(server):
    pid = server.open_products[0]
    async with VoltbourseClient(server.url, KEYS[3].key) as w:
        feed = await w.subscribe_book(pid)
        first = await feed.get(5)
        assert first.is_snapshot and feed.snapshots == 1
        updates: list[BookUpdate] = []
        for i in range(4):
            await server.place(0, "buy", 8000 + 10 * i, 100, pid)
            await server.place(1, "sell", 9000 + 10 * i, 100, pid)
        await _until_current(feed, server, pid, updates)

        dropped: list[dict] = []
        w.drop_filter = _drop_book(pid, 3, dropped)  # three deltas lost on the way in
        for i in range(6):
            await server.place(2, "buy", 7000 + i, 10 + i, pid)
        await server.place(1, "sell", 8010, 150, pid)  # trades against two bids
        await _until_current(feed, server, pid, updates)

        assert len(dropped) == 3 and feed.gaps == 1
        assert (feed.replays, feed.snapshots) == (1, 1)  # resynced by replay: no second snapshot
        assert not any(u.is_snapshot for u in updates)
        replayed = [u for u in updates if u.replayed]
        assert len(replayed) >= 3 and {d["seq"] for d in dropped} <= {u.seq for u in replayed}
        _assert_chain(first.seq, updates)
        _assert_equal_to_server(feed, server, pid)
        # and it goes on following the live stream
        await server.place(0, "buy", 8500, 5, pid)
        await _until_current(feed, server, pid, updates)
        assert not updates[-1].replayed
        _assert_chain(first.seq, updates)
        _assert_equal_to_server(feed, server, pid)


async def test_a_reconnection_is_resynced_by_replay_without_a_snapshot(server):
    pid = server.open_products[1]
    # a reconnection 0.5-1 s after the drop: the orders below are placed while disconnected
    async with VoltbourseClient(server.url, KEYS[3].key, backoff_initial=1.0, backoff_max=1.0) as w:
        feed = await w.subscribe_book(pid)
        first = await feed.get(5)
        updates: list[BookUpdate] = []
        await server.place(0, "buy", 8000, 100, pid)
        await _until_current(feed, server, pid, updates)

        await w._force_disconnect()
        await asyncio.sleep(0.01)
        assert not w.connected and not feed.book.synced
        missed_from = _mirror(server, pid).seq
        for i in range(5):
            await server.place(1, "sell", 9000 + i, 100, pid)
        await server.place(0, "buy", 9001, 150, pid)  # trades
        assert not w.connected, "the orders were to be placed while the client is disconnected"
        await w.wait_connected(5)
        await _until_current(feed, server, pid, updates)

        assert w.disconnects == 1 and (feed.replays, feed.snapshots, feed.gaps) == (1, 1, 0)
        assert not any(u.is_snapshot for u in updates)
        replayed = [u for u in updates if u.replayed]
        assert len(replayed) == 6 and replayed[0].delta is not None and replayed[0].delta.prev_seq == missed_from
        _assert_chain(first.seq, updates)
        _assert_equal_to_server(feed, server, pid)

        # reconnected with nothing missed: resynced at once, nothing replayed, no snapshot
        await w._force_disconnect()
        await asyncio.sleep(0.01)
        await w.wait_connected(5)
        await _until_current(feed, server, pid, updates)
        assert (feed.replays, feed.snapshots) == (2, 1)
        _assert_equal_to_server(feed, server, pid)


async def test_a_gap_beyond_the_replay_window_gets_a_snapshot(server):
    pid = server.open_products[2]
    async with VoltbourseClient(server.url, KEYS[3].key) as w:
        feed = await w.subscribe_book(pid)
        assert (await feed.get(5)).is_snapshot
        updates: list[BookUpdate] = []
        await server.place(0, "buy", 7000, 100, pid)
        await _until_current(feed, server, pid, updates)

        dropped: list[dict] = []
        w.drop_filter = _drop_book(pid, None, dropped)  # every delta lost for a while
        for i in range(BOOK_REPLAY + 5):
            await server.place(1, "sell", 9000 + i, 1, pid)
        async with asyncio.timeout(5):
            while len(dropped) < BOOK_REPLAY + 5:  # the last pushes may still be on their way
                await asyncio.sleep(0.01)
        w.drop_filter = None
        await server.place(0, "buy", 7001, 100, pid)  # the gap shows
        updates.clear()
        await _until_current(feed, server, pid, updates)

        assert feed.gaps == 1 and (feed.replays, feed.snapshots) == (0, 2)
        snaps = [u for u in updates if u.is_snapshot]
        assert len(snaps) == 1 and snaps[0].resync
        assert len(feed.book.asks) == BOOK_REPLAY + 5
        _assert_equal_to_server(feed, server, pid)
