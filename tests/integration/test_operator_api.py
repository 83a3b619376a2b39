"""The operator REST API over real HTTP on loopback, against a real market (embedded
PostgreSQL, runtime, journal): authentication of every route, the member registry
(and its reconciliation with the engine), halt/resume, book/trades/positions views,
cancel-all, and the OpenAPI document."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from eth_utils import to_checksum_address
from support.keys import AUTH, OPERATOR_TOKEN
from support.market import open_products
from support.paths import DOCS

from exchange.core.model import OrderAccepted, PlaceOrder, Rejected, Side, Tick
from exchange.core.units import to_us
from exchange.gateway.operator import OPERATOR_ROUTES
from exchange.runtime.members import MemberRegistry
from exchange.runtime.service import Market
from exchange.tools.platform import openapi

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="op")]
TOKEN = OPERATOR_TOKEN


def addr(i: int) -> str:
    return to_checksum_address(f"0x{0xA11CE000 + i:040x}")


A, B, C = addr(1), addr(2), addr(3)


@dataclass
class Api:
    market: Market
    registry: MemberRegistry
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body=None, *, headers=AUTH, data=None):
        async with self.session.request(method, path, json=body, data=data, headers=headers) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

    async def member(self, address: str, collateral: int = 10**15, capacity: int = 10**6, **kw) -> dict:
        status, body = await self.call("POST", "/api/operator/members", {
            "address": address, "role": "prosumer", "export_capacity_w": capacity, "retail_tariff_ticks": 25_000,
            "feed_in_tariff_ticks": 7_000, "collateral": collateral, **kw})
        assert status == 201, body
        return body

    async def place(self, member: str, side: Side, price: int, qty: int, pid: str | None = None):
        res = await self.market.runtime.submit(PlaceOrder(0, member, pid or self.pid, side, price, qty))
        return res.events

    @property
    def pid(self) -> str:
        return open_products(self.market.engine)[0]


@pytest.fixture
async def api(server):
    async with aiohttp.ClientSession(base_url=server.http) as session:
        yield Api(server.market, server.registry, session)


@pytest.fixture
async def api_disabled(serve):
    async with serve(operator_token=None) as server, aiohttp.ClientSession(base_url=server.http) as session:
        yield Api(server.market, server.registry, session)


def _concrete(path: str) -> str:
    return path.replace("{address}", A).replace("{product_id}", "20261122T0000Z-60")


ROUTE_IDS = [f"{r.method} {r.path}" for r in OPERATOR_ROUTES]


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("route", OPERATOR_ROUTES, ids=ROUTE_IDS)
async def test_every_operator_route_refuses_without_the_token(api, route):
    path = _concrete(route.path)
    for headers, status, code in [
        ({}, 401, "UNAUTHENTICATED"),
        ({"Authorization": "Basic b3A6c2VjcmV0"}, 401, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer "}, 401, "UNAUTHENTICATED"),
        ({"Authorization": "Bearer peer-session-token"}, 403, "FORBIDDEN"),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403, "FORBIDDEN"),
    ]:
        got, body = await api.call(route.method, path, {"reason": "x"} if route.body else None, headers=headers)
        assert (got, body["error"]) == (status, code), (headers, body)
        assert body["message"]
    assert api.market.engine.accounts == {} and not api.market.engine.halted  # nothing happened


@pytest.mark.parametrize("route", OPERATOR_ROUTES, ids=ROUTE_IDS)
async def test_operator_api_disabled_without_a_configured_token(api_disabled, route):
    got, body = await api_disabled.call(route.method, _concrete(route.path), headers=AUTH)
    assert (got, body["error"]) == (503, "OPERATOR_DISABLED")


async def test_auth_does_not_touch_other_routes(api):
    status, _ = await api.call("GET", "/metrics", headers={})
    assert status == 200
    status, _ = await api.call("GET", "/api/openapi.json", headers={})
    assert status == 200


# --------------------------------------------------------------------------- members


async def test_create_list_get_patch_member(api):
    engine = api.market.engine
    body = await api.member(A.lower(), collateral=5_000, capacity=3_000, name="Alice")
    assert body["address"] == A  # normalised to the checksum form
    assert body["role"] == "prosumer" and body["name"] == "Alice" and body["suspended"] is False
    assert body["account"] == {"collateral": 5_000, "export_capacity_w": 3_000, "suspended": False,
                               "open_exposure": 0, "net_payable": 0}
    assert body["created_at"].endswith("Z")
    a = engine.accounts[A]
    assert (a.collateral, a.export_capacity_w, a.suspended) == (5_000, 3_000, False)

    status, err = await api.call("POST", "/api/operator/members", {
        "address": A.upper().replace("0X", "0x"), "role": "consumer", "retail_tariff_ticks": 1,
        "feed_in_tariff_ticks": 1})
    assert (status, err["error"]) == (409, "MEMBER_EXISTS")

    await api.member(B, role="battery")
    status, listed = await api.call("GET", "/api/operator/members")
    assert status == 200 and [m["address"] for m in listed] == [A, B]

    status, got = await api.call("GET", f"/api/operator/members/{A.lower()}")
    assert status == 200 and got == body
    status, err = await api.call("GET", f"/api/operator/members/{C}")
    assert (status, err["error"]) == (404, "UNKNOWN_MEMBER")
    status, err = await api.call("GET", "/api/operator/members/0x1234")
    assert (status, err["error"]) == (400, "INVALID_REQUEST")

    status, patched = await api.call("PATCH", f"/api/operator/members/{A}", {
        "collateral": 7_000, "export_capacity_w": 0, "name": "Alice B.", "role": "consumer",
        "retail_tariff_ticks": 26_000, "feed_in_tariff_ticks": -100})
    assert status == 200, patched
    assert (patched["collateral"], patched["export_capacity_w"], patched["name"], patched["role"],
            patched["retail_tariff_ticks"], patched["feed_in_tariff_ticks"]) == (7_000, 0, "Alice B.", "consumer",
                                                                                26_000, -100)
    assert patched["account"]["collateral"] == 7_000 and engine.accounts[A].export_capacity_w == 0
    assert datetime.fromisoformat(patched["updated_at"]) >= datetime.fromisoformat(body["updated_at"])
    assert patched["created_at"] == body["created_at"]
    row = await api.market.pool.fetchrow("SELECT * FROM members WHERE address = $1", A)
    assert row["collateral"] == 7_000 and row["market_id"] == "op"

    status, err = await api.call("PATCH", f"/api/operator/members/{C}", {"collateral": 1})
    assert (status, err["error"]) == (404, "UNKNOWN_MEMBER")


VALID = {"address": C, "role": "consumer", "retail_tariff_ticks": 25_000, "feed_in_tariff_ticks": 7_000}


@pytest.mark.parametrize("change, field", [
    ({"address": "0x1234"}, "address"),
    ({"address": "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed00"}, "address"),
    ({"address": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"}, "address"),  # mixed case, wrong checksum
    ({"address": 12}, "address"),
    ({"export_capacity_w": 1000.0}, "export_capacity_w"),
    ({"export_capacity_w": "1000"}, "export_capacity_w"),
    ({"export_capacity_w": -1}, "export_capacity_w"),
    ({"collateral": True}, "collateral"),
    ({"collateral": 10**19}, "collateral"),
    ({"retail_tariff_ticks": 1.5}, "retail_tariff_ticks"),
    ({"role": "miner"}, "role"),
    ({"name": "x" * 101}, "name"),
    ({"colour": "blue"}, "colour"),
    ({"feed_in_tariff_ticks": None}, "feed_in_tariff_ticks"),
])
async def test_create_member_validation(api, change, field):
    status, err = await api.call("POST", "/api/operator/members", {**VALID, **change})
    assert (status, err["error"]) == (422, "INVALID_REQUEST"), err
    assert [d["loc"] for d in err["details"]] == [[field]], err
    assert field in err["message"]
    assert await api.market.pool.fetchval("SELECT count(*) FROM members") == 0
    assert api.market.engine.accounts == {}


async def test_bad_bodies(api):
    await api.member(A)
    for method, path in [("POST", "/api/operator/members"), ("PATCH", f"/api/operator/members/{A}"),
                         ("POST", "/api/operator/market/halt")]:
        status, err = await api.call(method, path, data=b"{not json")
        assert (status, err["error"]) == (400, "MALFORMED_JSON"), (path, err)
        status, err = await api.call(method, path, data=b"")
        assert (status, err["error"]) == (400, "MALFORMED_JSON"), (path, err)
        status, err = await api.call(method, path, [1, 2])
        assert (status, err["error"]) == (422, "INVALID_REQUEST"), (path, err)
    for patch in [{}, {"collateral": None}, {"suspended": "yes"}, {"address": B}, {"collateral": -5}]:
        status, err = await api.call("PATCH", f"/api/operator/members/{A}", patch)
        assert (status, err["error"]) == (422, "INVALID_REQUEST"), (patch, err)
    status, err = await api.call("POST", f"/api/operator/members/{A}/cancel-all", {"product": "x"})
    assert (status, err["error"]) == (422, "INVALID_REQUEST")
    status, err = await api.call("POST", "/api/operator/market/resume", {"why": 1})
    assert (status, err["error"]) == (422, "INVALID_REQUEST")
    status, err = await api.call("POST", "/api/operator/market/halt", {"reason": ""})
    assert (status, err["error"]) == (422, "INVALID_REQUEST")
    status, err = await api.call("GET", f"/api/operator/products/{api.pid}/trades?after=x")
    assert (status, err["error"]) == (422, "INVALID_REQUEST")
    status, err = await api.call("GET", f"/api/operator/products/{api.pid}/trades?limit=0")
    assert (status, err["error"]) == (422, "INVALID_REQUEST")


async def test_suspending_cancels_resting_orders(api):
    await api.member(A)
    await api.member(B)
    for price in (5000, 5100):
        assert type((await api.place(A, Side.BUY, price, 100))[0]) is OrderAccepted
    await api.place(B, Side.BUY, 4900, 50)
    assert len(api.market.engine.orders) == 3

    status, body = await api.call("PATCH", f"/api/operator/members/{A}", {"suspended": True})
    assert status == 200 and body["suspended"] is True and body["account"]["suspended"] is True
    assert body["account"]["open_exposure"] == 0
    _, book = await api.call("GET", f"/api/operator/products/{api.pid}/book")
    assert [o["member"] for o in book["bid_orders"]] == [B]
    cancelled = await api.market.pool.fetchval(
        "SELECT count(*) FROM journal, jsonb_array_elements(events) ev WHERE ev->>'type' = 'order_cancelled' "
        "AND ev->>'reason' = 'suspended'")
    assert cancelled == 2  # journaled, not just in memory
    ev = (await api.place(A, Side.BUY, 5000, 10))[0]
    assert type(ev) is Rejected and ev.reason == "MEMBER_SUSPENDED"

    status, body = await api.call("PATCH", f"/api/operator/members/{A}", {"suspended": False})
    assert status == 200 and body["account"]["suspended"] is False
    assert type((await api.place(A, Side.BUY, 5000, 10))[0]) is OrderAccepted


# --------------------------------------------------------------------------- market


async def test_halt_and_resume(api):
    await api.member(A)
    status, body = await api.call("POST", "/api/operator/market/halt", {"reason": "grid incident"})
    assert status == 200 and body["halted"] is True and body["reason"] == "grid incident"
    status, view = await api.call("GET", "/api/operator/market")
    assert view["halted"] is True and view["halt_reason"] == "grid incident" and view["seq"] == body["seq"]
    ev = (await api.place(A, Side.BUY, 5000, 10))[0]
    assert type(ev) is Rejected and ev.reason == "MARKET_HALTED"
    status, err = await api.call("POST", "/api/operator/market/halt", {"reason": "again"})
    assert (status, err["error"]) == (409, "NO_CHANGE")

    status, body = await api.call("POST", "/api/operator/market/resume")
    assert status == 200 and body["halted"] is False
    status, err = await api.call("POST", "/api/operator/market/resume", {})
    assert (status, err["error"]) == (409, "NO_CHANGE")
    assert type((await api.place(A, Side.BUY, 5000, 10))[0]) is OrderAccepted

    rt, e = api.market.runtime, api.market.engine
    status, view = await api.call("GET", "/api/operator/market")
    assert status == 200
    assert view["halted"] is False and view["running"] is True
    assert view["seq"] == rt.committed_seq == e.seq and view["commands"] == rt.cmd_seq
    assert view["state_hash"] == e.state_hash() and view["market_id"] == "op"
    assert view["config"] == e.config.to_dict() and view["members"] == 1 and view["open_orders"] == 1


async def test_products_book_trades_positions_cancel_all(api):
    await api.member(A)
    await api.member(B)
    pid = api.pid
    await api.place(A, Side.SELL, 9000, 100)
    await api.place(B, Side.SELL, 9000, 50)
    await api.place(A, Side.SELL, 8900, 20)
    await api.place(B, Side.BUY, 8000, 10)
    await api.place(A, Side.BUY, 8500, 30)

    status, products = await api.call("GET", "/api/operator/products")
    assert status == 200
    p = next(p for p in products if p["product_id"] == pid)
    assert (p["state"], p["best_bid"], p["best_ask"], p["open_orders"]) == ("open", 8500, 8900, 5)
    assert [q["start"] for q in products] == sorted(q["start"] for q in products)

    status, book = await api.call("GET", f"/api/operator/products/{pid}/book")
    assert status == 200
    assert book["asks"] == [{"price": 8900, "volume": 20, "orders": 1}, {"price": 9000, "volume": 150, "orders": 2}]
    assert book["bids"] == [{"price": 8500, "volume": 30, "orders": 1}, {"price": 8000, "volume": 10, "orders": 1}]
    assert [(o["member"], o["price"], o["remaining"]) for o in book["ask_orders"]] == [
        (A, 8900, 20), (A, 9000, 100), (B, 9000, 50)]  # price, then time priority
    assert [(o["member"], o["price"]) for o in book["bid_orders"]] == [(A, 8500), (B, 8000)]
    ids = [o["order_id"] for o in book["ask_orders"]]
    assert ids[1] < ids[2] and book["ask_orders"][0]["tif"] == "gtc"
    _, top = await api.call("GET", f"/api/operator/products/{pid}/book?depth=1")
    assert len(top["asks"]) == 1 and [o["price"] for o in top["ask_orders"]] == [8900]
    status, err = await api.call("GET", "/api/operator/products/nope/book")
    assert (status, err["error"]) == (404, "UNKNOWN_PRODUCT")

    # C buys 130: crosses 20 @ 8900 (A), 100 @ 9000 (A), 10 @ 9000 (B)
    await api.member(C)
    await api.place(C, Side.BUY, 9000, 130)
    status, trades = await api.call("GET", f"/api/operator/products/{pid}/trades")
    assert status == 200
    assert [(t["buyer"], t["seller"], t["energy_wh"], t["price_ticks"]) for t in trades] == [
        (C, A, 20, 8900), (C, A, 100, 9000), (C, B, 10, 9000)]
    assert all(t["product_id"] == pid and t["buy_order_id"] and t["sell_order_id"] for t in trades)
    _, page = await api.call("GET", f"/api/operator/products/{pid}/trades?after={trades[0]['seq']}&limit=1")
    assert [t["trade_id"] for t in page] == [trades[1]["trade_id"]]
    status, err = await api.call("GET", "/api/operator/products/nope/trades")
    assert (status, err["error"]) == (404, "UNKNOWN_PRODUCT")

    status, pos = await api.call("GET", f"/api/operator/members/{C}/positions")
    assert status == 200
    assert pos["positions"] == [{"product_id": pid, "state": "open", "bought": 130, "sold": 0, "net": 130,
                                 "payable": 20 * 8900 + 110 * 9000, "final": False}]
    assert pos["account"]["net_payable"] == 20 * 8900 + 110 * 9000
    _, pos_a = await api.call("GET", f"/api/operator/members/{A}/positions")
    assert pos_a["positions"][0]["sold"] == 120 and pos_a["positions"][0]["net"] == -120
    status, err = await api.call("GET", f"/api/operator/members/{addr(99)}/positions")
    assert (status, err["error"]) == (404, "UNKNOWN_MEMBER")

    # cancel-all: A has its bid at 8500 left; B its ask 40 @ 9000 and its bid at 8000
    status, done = await api.call("POST", f"/api/operator/members/{B}/cancel-all", {"product_id": pid})
    assert status == 200 and (done["cancelled"], done["product_id"], done["member"]) == (2, pid, B)
    status, done = await api.call("POST", f"/api/operator/members/{A}/cancel-all")
    assert status == 200 and done["cancelled"] == 1 and done["product_id"] is None
    status, done = await api.call("POST", f"/api/operator/members/{A}/cancel-all", {})
    assert status == 200 and done["cancelled"] == 0
    assert api.market.engine.orders == {}
    reasons = await api.market.pool.fetchval(
        "SELECT array_agg(DISTINCT ev->>'reason') FROM journal, jsonb_array_elements(events) ev "
        "WHERE ev->>'type' = 'order_cancelled'")
    assert reasons == ["operator"]
    status, err = await api.call("POST", f"/api/operator/members/{A}/cancel-all", {"product_id": "nope"})
    assert (status, err["error"]) == (404, "UNKNOWN_PRODUCT")  # the catalogue's status (it said 409)
    status, err = await api.call("POST", f"/api/operator/members/{addr(99)}/cancel-all")
    assert (status, err["error"]) == (404, "UNKNOWN_MEMBER")

    # After delivery the engine frees the product's positions; the journal's position_final remains.
    api.market.runtime.clock.set(to_us(datetime(2026, 11, 23, 12, 0, tzinfo=UTC)))
    await api.market.runtime.submit(Tick(0))
    assert pid not in api.market.engine.positions
    _, pos = await api.call("GET", f"/api/operator/members/{C}/positions")
    assert pos["positions"] == [{"product_id": pid, "state": "delivered", "bought": 130, "sold": 0, "net": 130,
                                 "payable": 20 * 8900 + 110 * 9000, "final": True}]


async def test_market_unavailable_is_503(api):
    await api.market.runtime.stop()
    status, err = await api.call("POST", "/api/operator/market/halt", {"reason": "x"})
    assert (status, err["error"]) == (503, "UNAVAILABLE")
    status, err = await api.call("POST", "/api/operator/members", VALID)
    assert (status, err["error"]) == (503, "UNAVAILABLE")


# --------------------------------------------------------------------------- reconcile


async def test_reconcile_heals_rows_the_engine_missed(api):
    engine = api.market.engine
    await api.member(A, collateral=1_000)
    # a crash between the row and the engine command: the row is there, the account is not
    await api.market.pool.execute(
        "INSERT INTO members (market_id, address, role, export_capacity_w, retail_tariff_ticks, "
        "feed_in_tariff_ticks, collateral) VALUES ('op', $1, 'battery', 500, 1, 1, 42)", B)
    # ... or the row was updated and the engine command never ran
    await api.market.pool.execute("UPDATE members SET collateral = 2000, suspended = true WHERE address = $1", A)
    await api.market.pool.execute(  # another market's member is not ours
        "INSERT INTO members (market_id, address, role, retail_tariff_ticks, feed_in_tariff_ticks) "
        "VALUES ('other', $1, 'consumer', 1, 1)", C)
    assert B not in engine.accounts
    assert await api.registry.reconcile() == 2
    b, a = engine.accounts[B], engine.accounts[A]
    assert (b.collateral, b.export_capacity_w, b.suspended) == (42, 500, False)
    assert (a.collateral, a.suspended) == (2000, True)
    assert C not in engine.accounts
    assert await api.registry.reconcile() == 0
    # and it is journaled: a restart rebuilds the same accounts
    cmds = await api.market.pool.fetchval(
        "SELECT count(*) FROM journal WHERE command->>'type' = 'register_member' AND command->>'member' = $1", B)
    assert cmds == 1


# --------------------------------------------------------------------------- OpenAPI


async def test_openapi_document_is_served_and_committed(api):
    status, doc = await api.call("GET", "/api/openapi.json", headers={})
    assert status == 200
    # served with the server it was asked of (its origin), the rest as generated and committed
    [server] = doc.pop("servers")
    assert server["description"] == "market op of this deployment"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server["url"]), server
    generated = openapi()
    assert generated.pop("servers") == [{"url": "http://127.0.0.1:8080"}]
    assert doc == generated
    committed = json.loads((DOCS / "openapi.json").read_text())
    committed.pop("servers")
    assert committed == doc, "docs/openapi.json is stale: run voltbourse docs"
    assert doc["openapi"].startswith("3.1")
    for r in OPERATOR_ROUTES:
        op = doc["paths"][r.path][r.method.lower()]
        assert op["security"] == [{"operatorToken": []}] and {"401", "403"} <= set(op["responses"])
    for path in ("/health", "/ready", "/metrics", "/api/market", "/api/products", "/api/products/{product_id}/book",
                 "/api/trades", "/api/schema/ws", "/ws"):
        assert "security" not in doc["paths"][path]["get"]
    schemas = doc["components"]["schemas"]
    assert schemas["MemberIn"]["additionalProperties"] is False
    assert schemas["MemberIn"]["properties"]["export_capacity_w"]["type"] == "integer"
    assert doc["paths"]["/api/operator/members"]["post"]["requestBody"]["content"]["application/json"]["schema"] \
        == {"$ref": "#/components/schemas/MemberIn"}
    # every $ref resolves
    refs = set()

    def walk(x):
        if isinstance(x, dict):
            if "$ref" in x:
                refs.add(x["$ref"].rsplit("/", 1)[1])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    assert refs <= set(schemas)
