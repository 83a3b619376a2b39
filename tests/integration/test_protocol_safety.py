"""The protocol a power-exchange developer expects (issue 13, first part): cancel and modify
by client order id, cancel on disconnect, a dead man's switch, rate-limit usage, a numbered
private stream with rejections and replay. Real server, real WebSockets over 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from support.keys import KEYS
from support.wsclient import WSClient, peer

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="safety", members=KEYS[:3])]


def _execs(c: WSClient) -> list[dict]:
    return [m for m in c.inbox if m.get("type") == "execution"]


async def test_cancel_and_modify_by_client_order_id(serve, http):
    async with serve() as server:
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        placed = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10,
                                  "client_order_id": "mine-1"})
        oid = placed["result"]["order_id"]
        mod = await c.request({"type": "modify", "client_order_id": "mine-1", "price": 120})
        assert mod["type"] == "response" and mod["result"]["order_id"] == oid and mod["result"]["price"] == 120
        gone = await c.request({"type": "cancel", "client_order_id": "mine-1"})
        assert gone["result"] == {"order_id": oid, "status": "cancelled", "remaining": 10}
        again = await c.request({"type": "cancel", "client_order_id": "mine-1"})
        assert again["code"] == "UNKNOWN_ORDER"
        both = await c.request({"type": "cancel", "order_id": oid, "client_order_id": "mine-1"})
        assert both["code"] == "INVALID_MESSAGE"
        # another member's client order id names nothing of mine
        other = await peer(http, server, 1)
        await other.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10,
                             "client_order_id": "theirs"})
        assert (await c.request({"type": "cancel", "client_order_id": "theirs"}))["code"] == "UNKNOWN_ORDER"


async def test_cancel_on_disconnect_is_opt_in(serve, http):
    async with serve() as server:
        pid = server.open_products[0]
        keep = await peer(http, server, 0)
        await keep.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10})
        await keep.ws.close()  # no option: the order stays
        cod = await peer(http, server, 1)
        assert (await cod.request({"type": "session_options", "cancel_on_disconnect": True}))["result"] == \
            {"cancel_on_disconnect": True}
        await cod.request({"type": "place", "product_id": pid, "side": "buy", "price": 101, "quantity": 10})
        await cod.ws.close()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if KEYS[1].address not in {o.member for o in server.market.engine.orders.values()}:
                break
        members = {o.member for o in server.market.engine.orders.values()}
        assert KEYS[0].address in members and KEYS[1].address not in members


async def test_dead_man_switch_cancels_unless_refreshed(serve, http):
    async with serve() as server:
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10})
        armed = await c.request({"type": "dead_man", "timeout_s": 1})
        assert armed["result"]["armed"] is True and armed["result"]["expires_at"].endswith("Z")
        for _ in range(3):  # refreshed in time: nothing happens
            await asyncio.sleep(0.5)
            await c.request({"type": "dead_man", "timeout_s": 1})
        assert len(server.market.engine.orders) == 1
        fired = await c.next_of(lambda m: m.get("type") == "dead_man_triggered", timeout=5)
        assert fired["ts"].endswith("Z")
        cancelled = await c.next_of(lambda m: m.get("exec") == "cancelled", timeout=5)
        assert cancelled["reason"] == "cancel_all"
        assert not server.market.engine.orders
        assert (await c.request({"type": "dead_man", "timeout_s": 0}))["result"]["armed"] is False


async def test_rate_usage_in_ping_and_retry_after_in_rate_limited(serve, http):
    async with serve(ws_rate_per_s=50.0, ws_burst=20) as server:
        c = await peer(http, server, 0)
        rate = (await c.request({"type": "ping"}))["result"]["rate"]
        assert rate["limit_per_s"] == 50.0 and rate["burst"] == 20 and 0 <= rate["remaining"] <= 20
        for i in range(30):  # 20 in the burst, then some dropped (fewer than a burst: the session stays)
            await c.send({"type": "ping", "id": f"p{i}"})
        answers = [await c.answer(f"p{i}") for i in range(30)]
        limited = [a for a in answers if a["type"] == "error"]
        assert limited and all(a["code"] == "RATE_LIMITED" and a["retry_after_ms"] >= 1 for a in limited)


async def test_private_stream_is_numbered_has_rejections_and_replays(serve, http):
    async with serve() as server:
        c = await WSClient.connect(http, server.url, KEYS[0].key)
        login = await c.login()
        login_pseq = login["result"]["pseq"]
        assert login["result"]["pstream"]
        pid = server.open_products[0]
        await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10})
        bad = await c.request({"type": "cancel", "order_id": 999_999})
        assert bad["code"] == "UNKNOWN_ORDER"
        await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 101, "quantity": 10})
        await c.drain(0.3)
        execs = _execs(c)
        assert [e["pseq"] for e in execs] == list(range(login_pseq + 1, login_pseq + 1 + len(execs)))
        rejected = [e for e in execs if e["exec"] == "rejected"]
        assert rejected and rejected[0]["command"] == "cancel" and rejected[0]["reason"] == "UNKNOWN_ORDER"
        # a second session of the member (a reconnect) replays what it missed from a pseq on
        other = await WSClient.connect(http, server.url, KEYS[0].key)
        assert (await other.login())["result"]["pseq"] == execs[-1]["pseq"]
        replay = await other.request({"type": "replay", "from_pseq": execs[1]["pseq"]})
        assert replay["result"] == {"replayed": len(execs) - 1, "pseq": execs[-1]["pseq"]}
        assert [e["pseq"] for e in _execs(other)] == [e["pseq"] for e in execs[1:]]
        assert (await other.request({"type": "replay", "from_pseq": execs[-1]["pseq"] + 1}))["result"]["replayed"] == 0


async def test_a_refused_place_reports_no_order_even_when_its_client_id_names_one(serve, http):
    """CLIENT_ORDER_ID_REUSED: the engine names the order that holds the id; the member's
    rejected report must not, or a client applying reports by order_id would close it."""
    async with serve() as server:
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        first = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100, "quantity": 10,
                                 "client_order_id": "reuse-1"})
        oid = first["result"]["order_id"]
        again = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 101, "quantity": 10,
                                 "client_order_id": "reuse-1"})
        assert again["type"] == "error" and again["code"] == "CLIENT_ORDER_ID_REUSED"
        report = await c.next_of(lambda m: m.get("exec") == "rejected", timeout=5)
        assert report["command"] == "place" and report["reason"] == "CLIENT_ORDER_ID_REUSED"
        assert report["order_id"] is None and report["client_order_id"] == "reuse-1"
        assert str(oid) in report["detail"]
        # a refused cancel still names the order it was about
        await c.request({"type": "cancel", "order_id": 999_999})
        bad = await c.next_of(lambda m: m.get("exec") == "rejected" and m.get("command") == "cancel", timeout=5)
        assert bad["order_id"] == 999_999
        status = await c.request({"type": "order_status", "order_id": oid})
        assert status["result"]["status"] == "open" and status["result"]["remaining"] == 10


async def test_replay_beyond_the_window_asks_for_a_snapshot(serve, http):
    async with serve() as server:
        c = await peer(http, server, 0)
        pid = server.open_products[0]
        for i in range(140):  # 280 reports (accepted + cancelled): beyond the 256 kept
            r = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 100 + i, "quantity": 1})
            await c.request({"type": "cancel", "order_id": r["result"]["order_id"]})
        ans = await c.request({"type": "replay", "from_pseq": 1})
        assert ans["code"] == "REPLAY_UNAVAILABLE" and "orders" in ans["message"]
