"""Pending block orders (``place_block``, waiting for the day-ahead auction) in the order-status
view and in cancels by ``client_order_id``, before and after a restart: a real server and
database, real WebSocket connections (docs/websocket.md: cancel names an order by either id;
after a restart the same orders are known)."""

from __future__ import annotations

import asyncio

import pytest
from support.keys import KEYS
from support.times import GATE
from support.wsclient import WSClient, peer

pytestmark = [pytest.mark.integration,
              pytest.mark.server(market_id="blkstatus", members=KEYS[:3], mechanism="call_then_continuous",
                                 gate="rolling")]

QTY = 1000  # per hour


def _auction_hours(server) -> list[str]:
    """Tomorrow's products, in the day-ahead auction until GATE."""
    return sorted(p for p, pb in server.market.engine.products.items() if pb.state.value == "auction")


async def _place_block(c: WSClient, hours: list[str], coid: str, price: int = 9000) -> int:
    r = await c.request({"type": "place_block", "product_ids": hours, "side": "buy", "price": price,
                         "quantity": QTY, "client_order_id": coid})
    assert r["type"] == "response" and r["result"]["status"] == "pending", r
    oid = r["result"]["order_id"]
    acc = await c.next_of(lambda m: m.get("exec") == "block_accepted" and m.get("order_id") == oid)
    assert acc["client_order_id"] == coid
    return oid


async def _status(c: WSClient, **ref) -> dict:
    r = await c.request({"type": "order_status", **ref})
    assert r["type"] == "response", r
    return r["result"]


async def _all_orders(c: WSClient) -> list[dict]:
    r = await c.request({"type": "orders", "status": "all"})
    assert r["type"] == "response", r
    return r["result"]["orders"]


async def _known(c: WSClient, oids: list[int], coids: list[str]) -> tuple[list[dict], list[dict]]:
    """What the member sees of its orders: ``orders`` (all), and each one's ``order_status``,
    by order id and (the same answer) by client order id."""
    listed = await _all_orders(c)
    statuses = []
    for oid, coid in zip(oids, coids, strict=True):
        st = await _status(c, order_id=oid)
        assert st == await _status(c, client_order_id=coid), (oid, coid)
        statuses.append(st)
    return listed, statuses


async def test_a_pending_block_is_known_alike_after_a_restart(serve, http):
    async with serve() as server:
        b = await peer(http, server, 1)
        hours = _auction_hours(server)[8:10]
        oid = await _place_block(b, hours, "blk-r")
        member = KEYS[1].address
        exposure = server.market.engine.accounts[member].open_exposure
        assert exposure > 0
        listed, (st,) = await _known(b, [oid], ["blk-r"])
        assert [o["order_id"] for o in listed] == [oid]
        assert {k: st[k] for k in ("client_order_id", "product_id", "quantity", "remaining", "filled", "status",
                                   "tif", "fills")} == \
            {"client_order_id": "blk-r", "product_id": hours[0], "quantity": 2 * QTY, "remaining": 2 * QTY,
             "filled": 0, "status": "open", "tif": "block", "fills": []}

        await server.restart()
        b = await peer(http, server, 1)
        assert oid in server.market.engine.blocks  # the engine still holds it, its money reserved
        assert server.market.engine.accounts[member].open_exposure == exposure
        assert await _known(b, [oid], ["blk-r"]) == (listed, [st])  # field by field
        dup = await b.request({"type": "place_block", "product_ids": hours, "side": "buy", "price": 9000,
                               "quantity": QTY, "client_order_id": "blk-r"})
        assert dup["type"] == "response" and dup["result"]["duplicate"] is True, dup
        assert (dup["result"]["order_id"], dup["result"]["remaining"], dup["result"]["filled"]) == (oid, 2 * QTY, 0)
        assert dup["result"]["status"] == "pending", dup  # as the original answer said (it said "resting")

        r = await b.request({"type": "cancel", "order_id": oid})
        # the answer and the report count the block's whole quantity, and name its client order id
        # (the engine's event counts one hour; the book mirror never held the block)
        assert r["type"] == "response" and r["result"]["status"] == "cancelled", r
        assert r["result"]["remaining"] == 2 * QTY, r
        rep = await b.next_of(lambda m: m.get("exec") == "cancelled" and m.get("order_id") == oid)
        assert (rep["reason"], rep["remaining"], rep["client_order_id"]) == ("user", 2 * QTY, "blk-r"), rep
        assert oid not in server.market.engine.blocks
        assert server.market.engine.accounts[member].open_exposure == 0
        done = await _status(b, client_order_id="blk-r")
        assert (done["order_id"], done["status"], done["reason"], done["remaining"], done["client_order_id"]) == \
            (oid, "cancelled", "user", 2 * QTY, "blk-r")
        assert [o["status"] for o in await _all_orders(b)] == ["cancelled"]

        await server.restart()  # and the cancelled block is known alike too
        b = await peer(http, server, 1)
        assert await _status(b, order_id=oid) == done
        assert await _status(b, client_order_id="blk-r") == done


async def test_a_pending_block_is_cancelled_by_client_order_id(serve, http):
    async with serve() as server:
        b = await peer(http, server, 1)
        hours = _auction_hours(server)
        first = await _place_block(b, hours[8:10], "blk-t")
        second = await _place_block(b, hours[12:15], "blk-u")

        r = await b.request({"type": "cancel", "client_order_id": "blk-t"})
        assert r["type"] == "response" and (r["result"]["order_id"], r["result"]["status"]) == \
            (first, "cancelled"), r
        await b.next_of(lambda m: m.get("exec") == "cancelled" and m.get("order_id") == first)
        assert first not in server.market.engine.blocks and second in server.market.engine.blocks
        st = await _status(b, client_order_id="blk-t")
        assert (st["order_id"], st["status"], st["reason"], st["remaining"]) == (first, "cancelled", "user", 2 * QTY)
        # a closed one is no open order: named again, it is unknown (nothing else is cancelled)
        r = await b.request({"type": "cancel", "client_order_id": "blk-t"})
        assert r["type"] == "error" and r["code"] == "UNKNOWN_ORDER", r
        # another member's block is not mine
        c = await peer(http, server, 2)
        r = await c.request({"type": "cancel", "client_order_id": "blk-u"})
        assert r["type"] == "error" and r["code"] == "UNKNOWN_ORDER", r
        assert second in server.market.engine.blocks
        # a block cannot be modified: named by its client order id, it is no order to modify (the
        # gateway answers; nothing reaches the engine, no rejected report)
        seq = server.market.engine.seq
        r = await b.request({"type": "modify", "client_order_id": "blk-u", "price": 1})
        assert r["type"] == "error" and r["code"] == "UNKNOWN_ORDER" and "client_order_id" in r["message"], r
        assert server.market.engine.seq == seq

        await server.restart()
        b = await peer(http, server, 1)
        r = await b.request({"type": "cancel", "client_order_id": "blk-u"})
        assert r["type"] == "response" and (r["result"]["order_id"], r["result"]["status"]) == \
            (second, "cancelled"), r
        await b.next_of(lambda m: m.get("exec") == "cancelled" and m.get("order_id") == second)
        assert not server.market.engine.blocks
        assert server.market.engine.accounts[KEYS[1].address].open_exposure == 0
        st = await _status(b, client_order_id="blk-u")
        assert (st["order_id"], st["status"], st["reason"], st["remaining"]) == (second, "cancelled", "user", 3 * QTY)


async def test_blocks_decided_by_their_auction_are_known_alike_after_a_restart(serve, http):
    async with serve() as server:
        a, b = await peer(http, server, 0), await peer(http, server, 1)
        hours = _auction_hours(server)
        for p in hours[8:10]:
            await a.request({"type": "place", "product_id": p, "side": "sell", "price": 8000, "quantity": QTY})
        executed = await _place_block(b, hours[8:10], "blk-x", price=9000)
        unfilled = await _place_block(b, hours[12:14], "blk-n", price=9000)  # no seller there
        server.clock.set(GATE)  # the day-ahead auction clears, deciding both blocks
        verdicts = {}
        for _ in range(2):
            m = await b.next_of(lambda m: m.get("exec") == "block_result", timeout=10)
            verdicts[m["order_id"]] = m["executed"]
        assert verdicts == {executed: True, unfilled: False}
        before = await _known(b, [executed, unfilled], ["blk-x", "blk-n"])
        listed, (x, n) = before
        assert [o["order_id"] for o in listed] == [executed, unfilled]
        assert (x["status"], x["filled"], x["remaining"], len(x["fills"])) == ("filled", 2 * QTY, 0, 2)
        assert (n["status"], n["reason"], n["remaining"]) == ("cancelled", "not_executed", 2 * QTY)

        await server.restart()
        b = await peer(http, server, 1)
        assert await _known(b, [executed, unfilled], ["blk-x", "blk-n"]) == before

        # the first of the executed block's hours is delivered: the block is forgotten (its id is
        # kept by the engine until its last hour is), and a restart does not bring it back (only
        # blocks none of whose hours is delivered are rebuilt); the other block stays known
        first = server.market.engine.products[hours[8]].product
        server.clock.set(first.end_us + 1)
        for _ in range(100):
            if server.market.engine.products[hours[8]].state.value == "delivered":
                break
            await asyncio.sleep(0.05)
        assert server.market.engine.products[hours[8]].state.value == "delivered"
        await asyncio.sleep(0.3)  # its commit reaches the views
        gone = await b.request({"type": "order_status", "order_id": executed})
        assert gone["type"] == "error" and gone["code"] == "UNKNOWN_ORDER", gone
        kept = await _status(b, order_id=unfilled)
        await server.restart()
        b = await peer(http, server, 1)
        again = await b.request({"type": "order_status", "order_id": executed})
        assert again["type"] == "error" and again["code"] == "UNKNOWN_ORDER", again
        assert await _status(b, order_id=unfilled) == kept
