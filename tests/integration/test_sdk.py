"""The SDK against a real exchange over loopback (real PostgreSQL, real runtime)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError
from support.keys import KEYS

from clients.sdk import (
    AuthenticationError,
    ClientClosed,
    ConnectionLost,
    OrderRejected,
    VoltbourseClient,
    member_key,
)
from exchange.core.model import Side
from exchange.gateway.marketdata import MARKET_DATA

# members registered as an operator would (the SDK's own wire and book, without a socket:
# tests/unit/test_sdk_wire.py)
pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="sdk", members=KEYS[:4], via="operator")]


async def test_login_place_ack_fills_and_queries(server):
    pid = server.open_products[0]
    async with VoltbourseClient(server.url, KEYS[0].key) as a, VoltbourseClient(server.url, KEYS[1].key.hex()) as b:
        assert a.member == KEYS[0].address and a.market_id == "sdk" and a.hello.eip712_domain["chainId"] == 1337
        ra, rb = a.executions(), b.executions()
        coid = a.new_client_order_id()
        r = await a.place(pid, "sell", price=9000, quantity=1000, client_order_id=coid)
        assert (r.status, r.remaining, r.filled, r.duplicate) == ("resting", 1000, 0, False)
        acc = await ra.get(5)
        assert (acc.exec, acc.order_id, acc.client_order_id) == ("accepted", r.order_id, coid)
        # concurrent requests each get their own answer
        m, buy = await asyncio.gather(a.modify(r.order_id, quantity=800),
                                      b.place(pid, "buy", price=9100, quantity=300, sign=True))
        assert m.priority_kept is True and m.remaining == 800
        assert buy.status == "filled" and [(f.price, f.quantity) for f in buy.fills] == [(9000, 300)]
        execs_a = [await ra.get(5) for _ in range(2)]
        assert [e.exec for e in execs_a] == ["modified", "fill"]
        fill_a = execs_a[1]
        assert (fill_a.side, fill_a.liquidity, fill_a.remaining, fill_a.client_order_id) == ("sell", "maker", 500, coid)
        fills_b = [e async for e in _take(rb, 2)]
        assert [e.exec for e in fills_b] == ["accepted", "fill"] and fills_b[1].trade_id == fill_a.trade_id
        # queries
        assert [(o.order_id, o.remaining) for o in await a.orders()] == [(r.order_id, 500)]
        t = await b.my_trades()
        assert [(x.side, x.price, x.quantity) for x in t] == [("buy", 9000, 300)]
        assert (await b.all_my_trades())[0].trade_id == t[0].trade_id
        pos = await b.positions()
        assert (pos[0].product_id, pos[0].net, pos[0].payable) == (pid, 300, 300 * 9000)
        # idempotent resubmission: same client order id -> the original order, no second one
        again = await a.place(pid, "sell", price=9000, quantity=1000, client_order_id=coid)
        assert again.duplicate and again.order_id == r.order_id
        c = await a.cancel(r.order_id)
        assert (c.status, c.remaining) == ("cancelled", 500)
        await a.place(pid, "buy", price=100, quantity=10)
        await a.place(server.open_products[1], "buy", price=100, quantity=10)
        assert await a.cancel_all(pid) == 1
        assert await a.cancel_all() == 1
        products = await a.products()
        assert pid in a.open_products() and any(p.product_id == pid for p in products.products)
        assert (await a.ping())["pong"] is True


async def _take(feed, n):
    for _ in range(n):
        yield await feed.get(5)


async def test_errors_raise_typed_exceptions_with_codes(server):
    pid = server.open_products[0]
    async with VoltbourseClient(server.url, KEYS[0].key) as a:
        with pytest.raises(OrderRejected) as e:
            await a.place(pid, "buy", price=10**8, quantity=10)
        assert e.value.code == "PRICE_OUT_OF_BOUNDS" and e.value.message
        with pytest.raises(OrderRejected) as e:
            await a.cancel(987654)
        assert e.value.code == "UNKNOWN_ORDER"
        with pytest.raises(ValidationError):  # refused locally, never sent
            await a.place(pid, "buy", price=1.5, quantity=10)  # type: ignore[arg-type]
        # the generic request hook: a type this exchange does not serve
        with pytest.raises(Exception) as e:
            await a.request({"type": "trade_proof", "trade_id": 1})
        assert getattr(e.value, "code", None) in ("UNAVAILABLE", "UNKNOWN_ORDER", "UNKNOWN_TRADE")
        assert (await a.request({"type": "ping"}))["pong"] is True
    # an unregistered key cannot log in
    with pytest.raises(AuthenticationError) as e:
        async with VoltbourseClient(server.url, member_key("nobody", 0).key):
            pass
    assert e.value.code == "UNKNOWN_MEMBER"


async def test_signed_orders_use_growing_nonces(server):
    pid = server.open_products[0]
    async with VoltbourseClient(server.url, KEYS[2].key, sign_orders=True) as c:
        r1 = await c.place(pid, "buy", price=5000, quantity=100)
        r2 = await c.place(pid, "buy", price=5001, quantity=100, client_order_id="signed-2")
        assert r1.status == r2.status == "resting"
        n = c.last_nonce
        row = await server.market.pool.fetchrow(
            "SELECT events FROM journal WHERE market_id='sdk' AND events @> $1::jsonb",
            [{"type": "order_accepted", "order_id": r2.order_id}])
        assert row["events"][0]["signature"].startswith("0x")
    # a new client object (a restarted program) still signs above the last nonce
    async with VoltbourseClient(server.url, KEYS[2].key, sign_orders=True) as c2:
        await c2.place(pid, "buy", price=5002, quantity=100)
        assert c2.last_nonce > n
    async with VoltbourseClient(server.url, KEYS[2].key, sign_orders=True, nonce_start=5) as c3:
        with pytest.raises(OrderRejected) as e:
            await c3.place(pid, "buy", price=5003, quantity=100)
        assert e.value.code == "NONCE_REUSED"


async def test_book_feed_keeps_a_local_book_and_resyncs_after_a_gap(server):
    pid = server.open_products[2]
    async with VoltbourseClient(server.url, KEYS[2].key) as w, VoltbourseClient(server.url, KEYS[0].key) as a, \
            VoltbourseClient(server.url, KEYS[1].key) as b:
        feed = await w.subscribe_book(pid)
        first = await feed.get(5)
        assert first.is_snapshot and not first.resync and first.book.best_bid() is None
        for i in range(10):
            await a.place(pid, "buy", price=8000 + i * 10, quantity=100)
            await b.place(pid, "sell", price=9000 + i * 10, quantity=100)
        await b.place(pid, "sell", price=8050, quantity=150)  # trades against two bids
        while feed.book.seq != _book_seq(server, pid):
            await feed.get(5)
        assert _engine_levels(server, pid) == (feed.book.depth("buy"), feed.book.depth("sell"))
        assert feed.book.best_bid() == 8080 and feed.book.best_ask() == 9000

        # drop one delta on the way in: the feed notices the gap and resyncs by itself, from the
        # seq it holds: the server replays the deltas since (no snapshot; more in
        # tests/integration/test_sdk_book_replay.py)
        dropped = []

        def drop_one(msg):
            if msg.get("type") == "book" and not dropped:
                dropped.append(msg)
                return True
            return False

        w.drop_filter = drop_one
        for i in range(4):
            await a.place(pid, "buy", price=7000 + i, quantity=10)
        upd = await feed.get(5)
        while not upd.replayed:
            upd = await feed.get(5)
        assert dropped and feed.gaps == 1 and feed.replays == 1 and not upd.is_snapshot
        while feed.book.seq != _book_seq(server, pid):
            await feed.get(5)
        assert feed.snapshots == 1
        assert _engine_levels(server, pid) == (feed.book.depth("buy"), feed.book.depth("sell"))
        await feed.close()

        # public trades feed
        trades = await w.subscribe_trades(pid)
        await b.place(pid, "sell", price=7000, quantity=5)
        t = await trades.get(5)
        assert (t.product_id, t.quantity, t.aggressor) == (pid, 5, "sell")


def _book_seq(server, pid):
    return server.runner.app[MARKET_DATA].mirror.book(pid).seq


def _engine_levels(server, pid):
    book = server.market.engine.book(pid)
    return [tuple(x) for x in book.depth(Side.BUY)], [tuple(x) for x in book.depth(Side.SELL)]


async def test_reconnects_after_a_drop_and_after_a_server_restart(server):
    pid = server.open_products[3]
    async with VoltbourseClient(server.url, KEYS[0].key, backoff_initial=0.05, backoff_max=0.5) as a, \
            VoltbourseClient(server.url, KEYS[1].key) as b:
        reconnected = []
        a.on_connect(lambda c: reconnected.append(c.connects))
        feed = await a.subscribe_book(pid)
        assert (await feed.get(5)).is_snapshot
        # 1. the socket drops: the feed resumes from its seq (nothing missed: no snapshot)
        await a._force_disconnect()
        await asyncio.sleep(0.01)
        await a.wait_connected(5)
        assert feed.book.synced and feed.replays == 1 and feed.snapshots == 1 and reconnected == [2]
        r = await a.place(pid, "buy", price=6000, quantity=100)
        assert r.status == "resting"

        # 2. the exchange restarts: a request in flight fails with ConnectionLost (not resent),
        # the client reconnects, logs in again and re-subscribes
        await server.stop()
        with pytest.raises(ConnectionLost):
            await a.place(pid, "buy", price=6001, quantity=100, timeout=1)
        await server.start()
        await a.wait_connected(10)
        # a restarted server keeps no deltas: resumed at once if the book held is current,
        # else from a snapshot
        async with asyncio.timeout(5):
            while not (feed.book.synced and feed.book.seq == _book_seq(server, pid)):
                await asyncio.sleep(0.01)
        assert feed.book.best_bid() == 6000  # recovered from the journal
        assert _engine_levels(server, pid) == (feed.book.depth("buy"), feed.book.depth("sell"))
        assert [o.order_id for o in await a.orders()] == [r.order_id]
        assert a.disconnects == 2 and a.connects == 3
        await b.wait_connected(10)
        # an order whose answer was lost can be resent safely with its client order id
        coid = a.new_client_order_id()
        first = await a.place(pid, "buy", price=6002, quantity=100, client_order_id=coid)
        again = await a.place(pid, "buy", price=6002, quantity=100, client_order_id=coid, retries=2)
        assert again.duplicate and again.order_id == first.order_id
    with pytest.raises(ClientClosed):
        await a.ping()


async def test_extension_hooks(server):
    async with VoltbourseClient(server.url, KEYS[0].key) as a, VoltbourseClient(server.url, KEYS[1].key) as b:
        pid = server.open_products[0]
        seen = []
        remove = a.on("execution", seen.append)
        raw = a.messages("execution")
        await a.place(pid, "sell", price=9999, quantity=10)
        m = await raw.get(5)
        assert m["type"] == "execution" and m["exec"] == "accepted" and seen == [m]
        remove()
        await b.place(pid, "buy", price=9999, quantity=10)
        assert (await raw.get(5))["exec"] == "fill" and len(seen) == 1
        await raw.close()
