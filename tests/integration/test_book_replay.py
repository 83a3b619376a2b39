"""Book recovery without a snapshot: a subscriber that holds a product's book at some seq
asks for the deltas since (`from_seq`), kept for the last 256 changes per product; an
unknown or forgotten seq gets a snapshot instead. Real server, real WebSocket."""

from __future__ import annotations

import pytest
from support.keys import KEYS
from support.wsclient import peer

from exchange.gateway.publish import BOOK_REPLAY

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="bookreplay", members=KEYS[:3])]


def _apply(levels: dict, delta: dict) -> None:
    for side, price, volume, _orders in delta["changes"]:
        book = levels[side]
        if volume:
            book[price] = volume
        else:
            book.pop(price, None)


def _levels(snapshot: dict) -> dict:
    return {"buy": {p: v for p, v, _ in snapshot["bids"]}, "sell": {p: v for p, v, _ in snapshot["asks"]}}


async def test_a_client_rebuilds_its_book_from_the_deltas_it_missed(serve, http):
    async with serve() as server:
        pid = server.open_products[0]
        c = await peer(http, server, 2)
        await c.request({"type": "subscribe", "channel": "book", "product_id": pid})
        snap = await c.next_of(lambda m: m.get("type") == "book_snapshot")
        held = _levels(snap)
        await c.request({"type": "unsubscribe", "channel": "book", "product_id": pid})  # as if disconnected
        for i, (who, side, price) in enumerate([(0, "sell", 9100), (1, "buy", 8900), (0, "sell", 9050),
                                                (1, "buy", 9050)]):
            await server.place(who, side, price, 100 + i, pid)
        r = await c.request({"type": "subscribe", "channel": "book", "product_id": pid, "from_seq": snap["seq"]})
        assert r["result"]["replayed"] == 4, r
        prev = snap["seq"]
        for _ in range(4):
            d = await c.next_of(lambda m: m.get("type") in ("book", "book_snapshot"))
            assert d["type"] == "book" and d["prev_seq"] == prev  # a chain from the seq held: no gap
            _apply(held, d)
            prev = d["seq"]
        f = await peer(http, server, 0)
        await f.request({"type": "subscribe", "channel": "book", "product_id": pid})
        now = await f.next_of(lambda m: m.get("type") == "book_snapshot")
        assert held == _levels(now) and prev == now["seq"]
        # up to date: nothing to replay, and no snapshot either
        r = await c.request({"type": "subscribe", "channel": "book", "product_id": pid, "from_seq": prev})
        assert r["result"]["replayed"] == 0
        await c.drain(0.2)
        assert not [m for m in c.inbox if m.get("type") in ("book", "book_snapshot")]


async def test_a_seq_no_longer_kept_gets_a_snapshot(serve, http):
    async with serve() as server:
        pid = server.open_products[1]
        c = await peer(http, server, 2)
        await c.request({"type": "subscribe", "channel": "book", "product_id": pid})
        snap = await c.next_of(lambda m: m.get("type") == "book_snapshot")
        await c.request({"type": "unsubscribe", "channel": "book", "product_id": pid})
        for i in range(BOOK_REPLAY + 5):
            await server.place(0, "sell", 9000 + i, 1, pid)
        r = await c.request({"type": "subscribe", "channel": "book", "product_id": pid, "from_seq": snap["seq"]})
        assert r["result"]["replayed"] is None
        again = await c.next_of(lambda m: m.get("type") == "book_snapshot")
        assert len(again["asks"]) == BOOK_REPLAY + 5
        bad = await c.request({"type": "subscribe", "channel": "trades", "from_seq": 1})
        assert bad["code"] == "INVALID_MESSAGE"
