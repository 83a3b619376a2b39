"""Order status (``order_status``, ``orders`` with ``status``) and the heartbeat's close code:
a real server (embedded PostgreSQL, runtime, journal) and real WebSocket connections."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from pydantic import ValidationError
from support.keys import KEYS
from support.times import T0
from support.wsclient import WSClient, peer

from clients.sdk import OrderRejected, VoltbourseClient
from exchange.core.engine import LISTING_LEAD_US
from exchange.core.ids import MemberId, OrderId, ProductId
from exchange.core.model import CancelReason, OrderAccepted, OrderCancelled, Side, TimeInForce, event_to_dict
from exchange.core.units import US_PER_MIN, from_us
from exchange.gateway.marketdata import MARKET_DATA
from exchange.gateway.orderstatus import OrderStatusView, _journal_range
from exchange.runtime.journal import JOURNAL_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="ostatus", members=KEYS[:3])]


async def _place(c: WSClient, pid: str, side: str, price: int, qty: int, **kw) -> dict:
    r = await c.request({"type": "place", "product_id": pid, "side": side, "price": price, "quantity": qty, **kw})
    assert r["type"] == "response", r
    return r["result"]


async def _status(c: WSClient, **ref) -> dict:
    r = await c.request({"type": "order_status", **ref})
    assert r["type"] == "response", r
    return r["result"]


async def _both(c: WSClient, order_id: int, client_order_id: str) -> dict:
    """The status by order id, checked equal to the status by client order id."""
    by_id = await _status(c, order_id=order_id)
    assert by_id == await _status(c, client_order_id=client_order_id)
    assert by_id["order_id"] == order_id and by_id["client_order_id"] == client_order_id
    return by_id


async def _orders(c: WSClient, status: str | None = None, **kw) -> list[dict]:
    msg = {"type": "orders", **kw}
    if status is not None:
        msg["status"] = status
    r = await c.request(msg)
    assert r["type"] == "response", r
    return r["result"]["orders"]


async def _expire_all(server, watcher: WSClient, pid: str, oid: int) -> None:
    """Move the market's clock past ``pid``'s gate; wait for the expiry of ``oid``."""
    server.clock.set(server.market.engine.products[pid].product.gate_us + US_PER_MIN)
    await watcher.next_of(lambda m: m.get("exec") == "expired" and m.get("order_id") == oid, timeout=5)


async def test_status_of_open_partly_filled_filled_cancelled_and_expired_orders(server, http):
    a, b = await peer(http, server, 0), await peer(http, server, 1)
    p1, p2, p3 = server.open_products[:3]

    opened = await _place(a, p1, "buy", 8000, 1000, client_order_id="open-1")
    s = await _both(a, opened["order_id"], "open-1")
    assert {k: s[k] for k in ("product_id", "side", "price", "quantity", "remaining", "filled", "status", "reason",
                              "tif", "fills", "seq")} == {
        "product_id": p1, "side": "buy", "price": 8000, "quantity": 1000, "remaining": 1000, "filled": 0,
        "status": "open", "reason": None, "tif": "gtc", "fills": [], "seq": opened["seq"]}
    assert s["ts"].endswith("Z")

    part = await _place(a, p2, "sell", 9000, 1000, client_order_id="part-1")
    hit = await _place(b, p2, "buy", 9000, 400)
    s = await _both(a, part["order_id"], "part-1")
    assert (s["status"], s["quantity"], s["remaining"], s["filled"]) == ("open", 1000, 600, 400)
    assert s["fills"] == [{"trade_id": hit["fills"][0]["trade_id"], "price": 9000, "quantity": 400}]
    assert s["seq"] > hit["seq"]  # the trade, after b's order was accepted

    full = await _place(a, p3, "sell", 9500, 300, client_order_id="fill-1")
    await _place(b, p3, "buy", 9500, 200)
    await _place(b, p3, "buy", 9600, 100)
    s = await _both(a, full["order_id"], "fill-1")
    assert (s["status"], s["remaining"], s["filled"]) == ("filled", 0, 300)
    assert [f["quantity"] for f in s["fills"]] == [200, 100] and {f["price"] for f in s["fills"]} == {9500}

    cxl = await _place(a, p1, "buy", 7000, 100, client_order_id="cxl-1")
    dup = await a.request({"type": "place", "product_id": p1, "side": "buy", "price": 7000, "quantity": 100,
                           "client_order_id": "cxl-1"})  # a resend: the same order, nothing new
    assert dup["result"]["order_id"] == cxl["order_id"]
    assert (await a.request({"type": "cancel", "client_order_id": "cxl-1"}))["type"] == "response"
    s = await _both(a, cxl["order_id"], "cxl-1")
    assert (s["status"], s["reason"], s["remaining"], s["filled"], s["quantity"]) == ("cancelled", "user", 100, 0, 100)

    ioc = await _place(a, p1, "sell", 9900, 100, tif="ioc", client_order_id="ioc-1")  # nothing to match
    s = await _both(a, ioc["order_id"], "ioc-1")
    assert (s["status"], s["reason"], s["tif"]) == ("cancelled", "not_filled", "ioc")

    mod = await _place(a, p1, "buy", 7100, 500, client_order_id="mod-1")
    assert (await a.request({"type": "modify", "order_id": mod["order_id"], "price": 7200}))["type"] == "response"
    s = await _both(a, mod["order_id"], "mod-1")
    assert (s["status"], s["price"], s["quantity"], s["remaining"]) == ("open", 7200, 500, 500)

    await _expire_all(server, a, p1, opened["order_id"])
    s = await _both(a, opened["order_id"], "open-1")
    assert (s["status"], s["remaining"], s["filled"], s["reason"]) == ("expired", 1000, 0, None)
    s = await _both(a, part["order_id"], "part-1")
    assert (s["status"], s["remaining"], s["filled"], len(s["fills"])) == ("expired", 600, 400, 1)
    assert (await _both(a, mod["order_id"], "mod-1"))["status"] == "expired"


async def test_another_members_or_an_unknown_order_is_unknown(server, http):
    a, b = await peer(http, server, 0), await peer(http, server, 1)
    pid = server.open_products[0]
    mine = await _place(a, pid, "buy", 8000, 100, client_order_id="secret-1")
    answers = [await b.request({"type": "order_status", "order_id": mine["order_id"]}),
               await b.request({"type": "order_status", "client_order_id": "secret-1"}),
               await b.request({"type": "order_status", "order_id": 999_999})]
    assert [x["code"] for x in answers] == ["UNKNOWN_ORDER"] * 3
    assert all("secret" not in x["message"] and "8000" not in x["message"] for x in answers[:1])
    # the refusal does not depend on whether the order exists (nothing leaks)
    assert answers[0]["message"].replace(str(mine["order_id"]), "N") == answers[2]["message"].replace("999999", "N")
    # exactly one of the two references
    for bad in ({}, {"order_id": mine["order_id"], "client_order_id": "secret-1"}):
        assert (await a.request({"type": "order_status", **bad}))["code"] == "INVALID_MESSAGE"
    assert (await a.request({"type": "orders", "status": "gone"}))["code"] == "INVALID_MESSAGE"
    assert (await _status(a, client_order_id="secret-1"))["order_id"] == mine["order_id"]
    assert await _orders(b, "all") == []


async def test_orders_lists_open_closed_or_all(server, http):
    a, b = await peer(http, server, 0), await peer(http, server, 1)
    p1, p2 = server.open_products[:2]
    rest = await _place(a, p1, "buy", 8000, 100, client_order_id="rest")
    gone = await _place(a, p1, "buy", 8100, 100, client_order_id="gone")
    await a.request({"type": "cancel", "order_id": gone["order_id"]})
    sold = await _place(a, p2, "sell", 9000, 100)
    await _place(b, p2, "buy", 9000, 100)

    default = await _orders(a)
    assert default == await _orders(a, "open")
    assert [o["order_id"] for o in default] == [rest["order_id"]]
    assert set(default[0]) == {"order_id", "product_id", "side", "price", "quantity", "remaining", "client_order_id"}

    closed = await _orders(a, "closed")
    assert [(o["order_id"], o["status"]) for o in closed] == [(gone["order_id"], "cancelled"),
                                                              (sold["order_id"], "filled")]
    assert "fills" not in closed[0] and closed[0]["reason"] == "user"
    every = await _orders(a, "all")
    assert [o["order_id"] for o in every] == sorted([rest["order_id"], gone["order_id"], sold["order_id"]])
    assert [o["status"] for o in every] == ["open", "cancelled", "filled"]
    for o in every:  # each as order_status answers it, without the fills
        full = await _status(a, order_id=o["order_id"])
        assert {k: v for k, v in full.items() if k != "fills"} == o
    assert [o["order_id"] for o in await _orders(a, "closed", product_id=p2)] == [sold["order_id"]]
    assert [o["order_id"] for o in await _orders(b, "closed")] != []


async def test_closed_orders_are_bounded_per_member_and_forgotten_at_delivery(server, http):
    a = await peer(http, server, 0)
    await a.request({"type": "subscribe", "channel": "products"})
    view = server.app[MARKET_DATA].order_status
    view.max_closed = 3
    pid = server.open_products[0]
    ids = []
    for i in range(5):
        r = await _place(a, pid, "buy", 7000 + i, 10, client_order_id=f"b-{i}")
        await a.request({"type": "cancel", "order_id": r["order_id"]})
        ids.append(r["order_id"])
    assert [o["order_id"] for o in await _orders(a, "closed")] == ids[2:]
    for oid, coid in ((ids[0], "b-0"), (ids[1], "b-1")):
        assert (await a.request({"type": "order_status", "order_id": oid}))["code"] == "UNKNOWN_ORDER"
        assert (await a.request({"type": "order_status", "client_order_id": coid}))["code"] == "UNKNOWN_ORDER"
    assert (await _status(a, client_order_id="b-4"))["status"] == "cancelled"

    end = server.market.engine.products[pid].product.end_us
    server.clock.set(end + US_PER_MIN)
    await a.next_of(lambda m: m.get("type") == "product_state" and m["product_id"] == pid
                    and m["state"] == "delivered", timeout=5)
    assert (await a.request({"type": "order_status", "order_id": ids[4]}))["code"] == "UNKNOWN_ORDER"
    assert await _orders(a, "all", product_id=pid) == []


async def test_status_survives_a_restart(serve, http):
    async with serve(market_id="ostatus-restart") as server:
        a, b = await peer(http, server, 0), await peer(http, server, 1)
        p1, p2, p3 = server.open_products[:3]  # p1 is delivered first
        kept = await _place(a, p2, "sell", 9000, 1000, client_order_id="kept")
        await _place(b, p2, "buy", 9000, 400)
        filled = await _place(a, p3, "sell", 9000, 200, client_order_id="filled")
        await _place(b, p3, "buy", 9000, 200)
        cxl = await _place(a, p1, "buy", 7000, 100, client_order_id="cxl")
        await a.request({"type": "cancel", "order_id": cxl["order_id"]})
        refs = [(kept["order_id"], "kept"), (filled["order_id"], "filled"), (cxl["order_id"], "cxl")]
        before = [await _both(a, oid, coid) for oid, coid in refs]
        listed = await _orders(a, "all")
        assert [s["status"] for s in before] == ["open", "filled", "cancelled"]
    async with serve(market_id="ostatus-restart") as server:
        a, b = await peer(http, server, 0), await peer(http, server, 1)
        assert [await _both(a, oid, coid) for oid, coid in refs] == before
        assert await _orders(a, "all") == listed
        # the history read from the journal goes on with the live stream
        hit = await _place(b, p2, "buy", 9000, 600)
        s = await _both(a, kept["order_id"], "kept")
        assert (s["status"], s["remaining"], s["filled"]) == ("filled", 0, 1000)
        assert [f["quantity"] for f in s["fills"]] == [400, 600] and s["seq"] > hit["seq"]
        # deliver p1, restart again: its orders are gone, the others are still known
        await a.request({"type": "subscribe", "channel": "products"})
        server.clock.set(server.market.engine.products[p1].product.end_us + US_PER_MIN)
        await a.next_of(lambda m: m.get("type") == "product_state" and m["product_id"] == p1
                        and m["state"] == "delivered", timeout=5)
    async with serve(market_id="ostatus-restart") as server:
        a = await peer(http, server, 0)
        assert (await a.request({"type": "order_status", "order_id": cxl["order_id"]}))["code"] == "UNKNOWN_ORDER"
        assert (await _status(a, client_order_id="filled"))["status"] == "filled"
        assert (await _status(a, client_order_id="kept"))["fills"][-1]["trade_id"] == hit["fills"][0]["trade_id"]


async def test_the_sdk_asks_for_order_status(server):
    p1 = server.open_products[0]
    async with VoltbourseClient(server.url, KEYS[0].key) as a, VoltbourseClient(server.url, KEYS[1].key) as b:
        coid = a.new_client_order_id()
        r = await a.place(p1, "sell", price=9000, quantity=1000, client_order_id=coid)
        await b.place(p1, "buy", price=9000, quantity=250)
        s = await a.order_status(client_order_id=coid)
        assert s == await a.order_status(order_id=r.order_id)
        assert (s.status, s.quantity, s.remaining, s.filled, s.side) == ("open", 1000, 750, 250, "sell")
        assert [(f.price, f.quantity) for f in s.fills] == [(9000, 250)]
        await a.cancel(r.order_id)
        closed = await a.orders(status="closed")
        assert [(o.order_id, o.status, o.reason, o.remaining) for o in closed] == [(r.order_id, "cancelled", "user",
                                                                                   750)]
        assert await a.orders() == [] and [o.order_id for o in await a.orders(status="all")] == [r.order_id]
        with pytest.raises(OrderRejected) as e:
            await b.order_status(order_id=r.order_id)
        assert e.value.code == "UNKNOWN_ORDER"
        with pytest.raises(ValidationError):
            await a.order_status()


async def test_the_journal_is_read_from_where_the_products_could_be_listed(pool):
    """The start-up read of the journal: the first row is found by bisection over the
    primary key (gaps in cmd_seq included), and only the given products' events are kept."""
    base = T0
    rows = []
    for cmd_seq in [c for c in range(1, 51) if not 20 <= c < 25]:
        ev = OrderAccepted(cmd_seq, base + cmd_seq * US_PER_MIN, OrderId(cmd_seq), MemberId(KEYS[0].address),
                           ProductId("A" if cmd_seq % 2 else "B"), Side.BUY, 100, 10, TimeInForce.GTC,
                           f"c{cmd_seq}", None)
        rows.append(("jr", cmd_seq, cmd_seq, cmd_seq, from_us(ev.ts), {"type": "tick", "ts": ev.ts},
                     [event_to_dict(ev)]))
    await pool.copy_records_to_table("journal", records=rows, columns=JOURNAL_COLUMNS)
    assert await _journal_range(pool, "jr", base + 30 * US_PER_MIN, 40) == (30, 40)
    assert await _journal_range(pool, "jr", base, 50) == (1, 50)
    assert await _journal_range(pool, "jr", base + 51 * US_PER_MIN, 50) == (0, 0)
    first, last = await _journal_range(pool, "jr", base + 22 * US_PER_MIN, 50)  # in the gap: from 25 on
    assert 20 <= first <= 25 and last == 50
    view = OrderStatusView()
    view.follow(40)
    view.apply(OrderCancelled(41, base + 41 * US_PER_MIN, OrderId(39), MemberId(KEYS[0].address), ProductId("A"),
                              10, CancelReason.USER))  # arrives while loading: held, then applied
    open_us = base + (30 * US_PER_MIN) + LISTING_LEAD_US  # listed at the earliest 30 minutes after base
    read = await view.load(pool, "jr", [("A", open_us)], upto=40, chunk=4)
    assert read == 5 and sorted(view.orders) == [31, 33, 35, 37, 39]
    assert view.get(KEYS[0].address, client_order_id="c39").status == "cancelled"
    assert view.get(KEYS[1].address, order_id=31) is None and view.seq == 41


# ------------------------------------------------------------------ heartbeat


async def _read_for(c: WSClient, seconds: float) -> None:
    """Read (and so answer pings) for ``seconds``; the connection must stay open."""
    try:
        async with asyncio.timeout(seconds):  # not receive(timeout=): each ping would restart that one
            while True:
                m = await c.ws.receive()
                assert m.type == aiohttp.WSMsgType.TEXT, m
                c.inbox.append(m.json())
    except TimeoutError:
        return


async def test_a_peer_that_does_not_answer_pings_is_closed_with_4008(serve, http):
    async with serve(ws_heartbeat_s=0.5) as server:
        good = await peer(http, server, 0)  # aiohttp answers pings while it reads: it reads all along
        reading = asyncio.create_task(_read_for(good, 3.0))
        ws = await http.ws_connect(server.url, autoping=False)  # never answers a ping
        assert (await ws.receive_json(timeout=5))["type"] == "hello"
        pings = 0
        async with asyncio.timeout(5):
            while (m := await ws.receive()).type == aiohttp.WSMsgType.PING:
                pings += 1
        assert m.type == aiohttp.WSMsgType.CLOSE, m
        assert (m.data, m.extra) == (4008, "heartbeat timeout")
        assert pings == 1 and ws.close_code == 4008
        # a peer that answers stays, over several intervals
        await reading
        assert (await good.request({"type": "ping"}))["result"]["pong"] is True
        # a peer that pings the server gets its pong (the server answers pings itself)
        raw = await http.ws_connect(server.url, autoping=False)
        await raw.receive_json(timeout=5)
        await raw.ping(b"hi")
        m = await raw.receive(timeout=5)
        assert (m.type, m.data) == (aiohttp.WSMsgType.PONG, b"hi")
        await raw.close()
