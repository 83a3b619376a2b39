"""One member's portal session cannot read (or touch) another member's data: no browser,
real HTTP and WebSocket on loopback. Member A signs in with Sign-In with Ethereum (the
portal's cookie), members B and C trade, are metered and billed, and B has a flexibility
offer and invitation. A's session, over the peer WebSocket it opens with the cookie, asks for
B's orders, trades, positions, bill, energy, points, proofs and invitations in every way a
message allows (B's ids, B's client order ids, B's address in any field): it only ever gets
its own data or a refusal, and B's orders stay untouched."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from support.keys import AUTH, KEYS
from support.wsclient import peer

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="iso", members=KEYS[:3])]

A, B, C = KEYS[:3]
DAY = datetime(2026, 11, 20, tzinfo=UTC)  # before the test clock (T0): measured
MP = "/api/operator/metering"


def _at(minutes: int) -> str:
    return (DAY + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def siwe_text(f: dict, address: str) -> str:
    """The EIP-4361 message the page builds from GET /portal/siwe/nonce's fields."""
    return (f"{f['domain']} wants you to sign in with your Ethereum account:\n{address}\n\n{f['statement']}\n\n"
            f"URI: {f['uri']}\nVersion: {f['version']}\nChain ID: {f['chain_id']}\nNonce: {f['nonce']}\n"
            f"Issued At: {f['issued_at']}\nExpiration Time: {f['expiration_time']}")


async def portal_session(server, key) -> tuple[aiohttp.ClientSession, dict]:
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.get(server.http + "/portal/siwe/nonce") as r:
        assert r.status == 200
        fields = await r.json()
    text = siwe_text(fields, key.address)
    sig = Account.sign_message(encode_defunct(text=text), key.key).signature.hex()
    async with s.post(server.http + "/portal/siwe/login",
                      json={"message": text, "signature": "0x" + sig.removeprefix("0x")}) as r:
        body = await r.json()
        assert r.status == 200 and body["member"] == key.address, body
    return s, body


class Portal:
    """The peer WebSocket opened with a portal cookie."""

    def __init__(self, ws) -> None:
        self.ws, self.n, self.inbox = ws, 0, []

    async def request(self, msg: dict) -> dict:
        self.n += 1
        rid = f"iso-{self.n}"
        await self.ws.send_json({**msg, "id": rid})
        while True:
            m = await self.ws.receive_json(timeout=10)
            if m.get("id") == rid and m["type"] in ("response", "error"):
                return m
            self.inbox.append(m)


def mentions(obj, address: str) -> bool:
    return address.lower() in json.dumps(obj).lower()


async def _setup(server) -> dict:
    """B and C trade and rest orders, A rests one; metering and a bill run for everyone; a
    flexibility offer and invitation of B's."""
    pid = server.open_products[2]
    out: dict = {"pid": pid}
    async with aiohttp.ClientSession() as http:
        b, a = await peer(http, server, 1), await peer(http, server, 0)
        r = await b.request({"type": "place", "product_id": pid, "side": "buy", "price": 8_000, "quantity": 1_000,
                             "client_order_id": "b-rest"})
        out["b_order"] = r["result"]["order_id"]
        r = await b.request({"type": "place", "product_id": pid, "side": "sell", "price": 9_500, "quantity": 600})
        out["b_sell"] = r["result"]["order_id"]
        await server.place(2, "buy", 9_500, 600, pid)  # C takes B's ask: a trade between B and C
        r = await a.request({"type": "place", "product_id": pid, "side": "buy", "price": 7_000, "quantity": 500,
                             "client_order_id": "a-rest"})
        out["a_order"] = r["result"]["order_id"]
        r = await b.request({"type": "trades", "after": 0, "limit": 100})
        out["b_trades"] = [t["trade_id"] for t in r["result"]["trades"]]
        assert out["b_trades"]
        # flexibility: B's baseline and offer, then an event that invites B
        period = datetime(2026, 11, 21, 14, tzinfo=UTC)
        slots = [{"start": (period - timedelta(hours=1) + timedelta(minutes=15 * i)).isoformat(),
                  "consumption_wh": 200_000, "generation_wh": 0} for i in range(8)]
        assert (await b.request({"type": "flex_baseline", "slots": slots}))["type"] == "response"
        r = await b.request({"type": "flex_offer", "period_start": period.isoformat(), "period_minutes": 60,
                             "direction": "up", "power_w": 300_000, "price": 5_000, "kind": "reduction"})
        out["b_offer"] = r["result"]["offer"]["offer_id"]
        await a.ws.close()
        async with http.post(f"{server.http}/api/operator/flexibility/events", headers=AUTH,
                             json={"period_start": period.isoformat(), "target_w": 200_000}) as r:
            assert r.status == 201, await r.text()
        inv = await b.next_of(lambda m: m.get("type") == "flex_invitation", timeout=10)
        out["b_invitation"] = inv["invitation_id"]
        await b.ws.close()
    async with aiohttp.ClientSession(base_url=server.http, headers=AUTH) as s:
        async def call(method, path, body=None, data=None, ctype=None):
            async with s.request(method, path, json=body, data=data,
                                 headers={"Content-Type": ctype} if ctype else {}) as r:
                assert r.status in (200, 201), (path, await r.text())
                return await r.json()
        await call("POST", f"{MP}/points", {"points": [{"point_id": f"{k}-imp", "member": m.address, "kind": "import"}
                                                      for k, m in (("A", A), ("B", B), ("C", C))]})
        await call("PUT", f"{MP}/tariffs/default", {"name": "Default", "prices": [
            {"valid_from": "2026-01-01T00:00:00Z", "import_ct_per_kwh": "30", "feed_in_ct_per_kwh": "8"}]})
        await call("PUT", f"{MP}/fees", {"effective_from": "2026-01-01T00:00:00Z", "per_kwh": [], "periodic": []})
        rows = "".join(f"{k}-imp,{_at(15 * i)},{100 + n * 50 + i}\n" for n, k in enumerate("ABC") for i in range(8))
        await call("POST", f"{MP}/readings", data=("point_id,interval_start,energy_wh\n" + rows).encode(),
                   ctype="text/csv")
        await call("POST", f"{MP}/bills/run", {"start": _at(0), "end": _at(120)})
    return out


async def test_a_portal_session_only_ever_answers_for_its_member(server):
    data = await _setup(server)
    s, session = await portal_session(server, A)
    try:
        async with s.get(server.http + "/portal/session") as r:
            assert (await r.json())["member"] == A.address
        ws = await s.ws_connect(server.url, headers={"Origin": server.http})
        hello = await ws.receive_json(timeout=5)
        assert hello["type"] == "hello" and hello["auth"] == "portal" and hello["member"] == A.address
        p = Portal(ws)

        # my orders: only A's, open and closed
        for status in ("open", "closed", "all"):
            r = await p.request({"type": "orders", "status": status})
            ids = {o["order_id"] for o in r["result"]["orders"]}
            assert data["b_order"] not in ids and data["b_sell"] not in ids
        r = await p.request({"type": "orders"})
        assert [o["order_id"] for o in r["result"]["orders"]] == [data["a_order"]]
        # B's orders by id and by B's client order id: unknown to A; cancel/modify cannot touch them
        for msg in ({"type": "order_status", "order_id": data["b_order"]},
                    {"type": "order_status", "client_order_id": "b-rest"},
                    {"type": "cancel", "order_id": data["b_order"]},
                    {"type": "cancel", "client_order_id": "b-rest"},
                    {"type": "modify", "order_id": data["b_order"], "price": 8_100},
                    {"type": "modify", "client_order_id": "b-rest", "quantity": 10}):
            r = await p.request(msg)
            assert r["type"] == "error" and r["code"] == "UNKNOWN_ORDER", (msg, r)
        r = await p.request({"type": "cancel_all"})
        assert r["result"]["cancelled"] == 1  # A's own order only
        # B's order is still resting, untouched (asked by B itself)
        async with aiohttp.ClientSession() as http:
            b = await peer(http, server, 1)
            r = await b.request({"type": "order_status", "order_id": data["b_order"]})
            assert (r["result"]["status"], r["result"]["price"], r["result"]["remaining"]) == ("open", 8_000, 1_000)
            await b.ws.close()

        # trades and positions: A traded nothing; B's trades never show
        r = await p.request({"type": "trades", "after": 0, "limit": 1000})
        assert r["result"]["trades"] == []
        r = await p.request({"type": "positions", "delivered": True})
        assert all(x["bought"] == 0 and x["sold"] == 0 for x in r["result"]["positions"])
        for tid in data["b_trades"]:
            r = await p.request({"type": "trade_proof", "trade_id": tid})
            assert r["type"] == "error" and r["code"] in ("NOT_FOUND", "UNAVAILABLE"), r

        # metering: A's points, A's energy, A's bill only
        r = await p.request({"type": "meter_points"})
        assert [x["point_id"] for x in r["result"]["points"]] == ["A-imp"]
        r = await p.request({"type": "my_energy", "start": _at(0), "end": _at(120), "by": "interval"})
        assert r["result"]["member"] == A.address
        assert [x["import_wh"] for x in r["result"]["rows"]] == [100 + i for i in range(8)]
        r = await p.request({"type": "my_bills"})
        assert len(r["result"]["bills"]) == 1
        r = await p.request({"type": "my_bill", "start": _at(0), "end": _at(120)})
        assert r["result"]["member"] == A.address and not mentions(r["result"], B.address)
        r = await p.request({"type": "meter_readings", "readings": [
            {"point_id": "B-imp", "interval_start": _at(0), "energy_wh": 1}]})
        assert r["type"] == "error" and r["code"] == "NOT_YOUR_POINT", r

        # flexibility: B's offer and invitation are not A's
        r = await p.request({"type": "flex_status"})
        assert not mentions(r["result"], B.address)
        assert r["result"]["invitations"] == [] and r["result"]["offers"] == []
        r = await p.request({"type": "flex_respond", "invitation_id": data["b_invitation"], "accept": True})
        assert r["type"] == "error", r
        r = await p.request({"type": "flex_offer_cancel", "offer_id": data["b_offer"]})
        assert r["type"] == "error", r

        # the session is A's: logging in as B on it is refused
        r = await p.request({"type": "login", "address": B.address, "signature": "0x" + "00" * 65})
        assert r["type"] == "error" and r["code"] in ("ALREADY_AUTHENTICATED", "BAD_SIGNATURE"), r
        # the private stream replays only A's reports
        r = await p.request({"type": "replay", "from_pseq": 1})
        assert r["type"] in ("response", "error")
        assert not any(mentions(m, B.address) for m in p.inbox)

        # every request type, with B's address in every field a message could name a member by:
        # refused or answered for A, never with B's data
        async with s.get(server.http + "/api/schema/ws") as resp:
            schema = await resp.json()
        types = sorted(set(re.findall(r'"type": \{"const": "(\w+)"', json.dumps(schema["client_to_server"]))))
        assert {"orders", "my_bill", "flex_status", "trade_proof"} <= set(types)
        for t in types:
            if t in ("cancel_all", "session_options", "dead_man"):
                continue  # actions on A's own session (covered above), not reads
            for field in ("member", "address", "account", "owner"):
                r = await p.request({"type": t, field: B.address})
                assert not (r["type"] == "response" and mentions(r["result"], B.address)), (t, field, r)
        assert not any(mentions(m, B.address) for m in p.inbox if m.get("type") != "trade")
        await ws.close()

        # HTTP: the cookie is no operator credential, and no other member's bill is reachable with it
        for path in (f"{MP}/bills/{B.address}?start={_at(0)}&end={_at(120)}", "/api/operator/members",
                     f"/api/operator/positions/{B.address}", f"/api/trades/{data['b_trades'][0]}/proof"):
            async with s.get(server.http + path) as r:
                assert r.status in (401, 403, 404, 422), (path, r.status)
                assert not mentions(await r.text(), B.address) or r.status == 404, path
        # the cookie from another site's page opens no session as A
        try:
            ws = await s.ws_connect(server.url, headers={"Origin": "http://evil.example"})
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status in (401, 403)
        else:
            hello = await ws.receive_json(timeout=5)
            assert hello.get("member") != A.address and hello.get("auth") != "portal"
            r = await Portal(ws).request({"type": "orders"})
            assert r["type"] == "error" and r["code"] == "NOT_AUTHENTICATED"
            await ws.close()
        # sign-out ends the WebSocket's authority too: a new socket is not A's
        async with s.post(server.http + "/portal/logout", headers={"X-CSRF-Token": session["csrf_token"]}) as r:
            assert r.status == 200
        ws = await s.ws_connect(server.url, headers={"Origin": server.http})
        hello = await ws.receive_json(timeout=5)
        assert hello.get("member") != A.address
        await ws.close()
    finally:
        await s.close()


async def test_a_session_of_b_sees_b_and_not_a(server):
    """The other way round, briefly: B's session reads B's trades and bill, never A's order."""
    data = await _setup(server)
    s, _ = await portal_session(server, B)
    try:
        ws = await s.ws_connect(server.url, headers={"Origin": server.http})
        assert (await ws.receive_json(timeout=5))["member"] == B.address
        p = Portal(ws)
        r = await p.request({"type": "trades", "after": 0, "limit": 1000})
        assert [t["trade_id"] for t in r["result"]["trades"]] == data["b_trades"]
        r = await p.request({"type": "order_status", "order_id": data["a_order"]})
        assert r["type"] == "error" and r["code"] == "UNKNOWN_ORDER"
        r = await p.request({"type": "my_bill", "start": _at(0), "end": _at(120)})
        assert r["result"]["member"] == B.address
        # B's energy and money over the hour its trade delivers in: B's side of the trade alone
        # (the community's checks, which need both sides, failed it: INTERNAL)
        start = datetime.strptime(data["pid"].split("-")[0], "%Y%m%dT%H%MZ").replace(tzinfo=UTC)
        r = await p.request({"type": "my_energy", "start": start.isoformat().replace("+00:00", "Z"),
                             "end": (start + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                             "by": "interval"})
        assert r["type"] == "response", r
        flows = r["result"]["flows"]
        assert (flows["sold_wh"], flows["bought_wh"], flows["p2p_received_units"]) == (600, 0, 600 * 9_500), flows
        await ws.close()
    finally:
        await s.close()
