"""Many markets in one deployment (exchange.gateway.tenants) over real HTTP and WebSockets on
loopback, against a real PostgreSQL: the platform registry and its REST API, hosted markets
mounted under /m/{market_id}/, the default market's root routes unchanged, and tenant
isolation in both directions for every operator route, the operator page's session and the
peer WebSocket; suspend, resume, archive and a restart that brings every market back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from support.keys import AUTH, KEYS, OPERATOR_TOKEN
from support.market import open_products
from support.times import T0
from support.wsclient import WSClient, personal_sign, siwe_text

from exchange.gateway.operator import OPERATOR_ROUTES
from exchange.gateway.tenants import OPERATOR_PLATFORM_ROUTES
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.tools import platform
from exchange.tools.server import Deployment, start_deployment

pytestmark = pytest.mark.integration

ROOT = "root"


@asynccontextmanager
async def deployment(pg_dsn: str, clock: ManualClock | None = None, **overrides) -> AsyncIterator[Deployment]:
    settings = load_settings(database_url=pg_dsn, market_id=ROOT, operator_token=OPERATOR_TOKEN, **overrides)
    d = await start_deployment(pg_dsn, settings, "127.0.0.1", 0, clock=clock or ManualClock(T0))
    try:
        yield d
    finally:
        await d.close()


async def call(http: aiohttp.ClientSession, method: str, url: str, body=None, headers=AUTH, **kw):
    async with http.request(method, url, json=body, headers=headers, **kw) as r:
        ct = r.content_type
        return r.status, (await r.json() if ct == "application/json" else await r.text())


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def create(http, base: str, market_id: str, **settings) -> str:
    status, body = await call(http, "POST", f"{base}/api/platform/markets",
                              {"market_id": market_id, "name": market_id.upper(), "settings": settings})
    assert status == 201, body
    assert body["path"] == f"/m/{market_id}/" and body["status"] == "active" and body["running"]
    return body["operator_token"]


async def member(http, base: str, token: str, address: str) -> None:
    status, body = await call(http, "POST", f"{base}/api/operator/members", {
        "address": address, "role": "prosumer", "export_capacity_w": 10**6, "retail_tariff_ticks": 25_000,
        "feed_in_tariff_ticks": 7_000, "collateral": 10**15}, headers=bearer(token))
    assert status == 201, body


@pytest.fixture
async def platform_env(pool, pg_dsn):
    async with deployment(pg_dsn) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        tokens = {"a": await create(http, base, "a"), "b": await create(http, base, "b", gate="rolling",
                                                                          mechanism="call_then_continuous")}
        yield d, http, base, tokens


# --------------------------------------------------------------------------- registry and API


async def test_create_list_get_and_the_root_unchanged(platform_env):
    d, http, base, tokens = platform_env
    status, listed = await call(http, "GET", f"{base}/api/platform/markets")
    assert status == 200
    assert [(m["market_id"], m["default"], m["path"]) for m in listed] == [
        (ROOT, True, "/"), ("a", False, "/m/a/"), ("b", False, "/m/b/")]
    assert listed[2]["settings"] == {"gate": "rolling", "mechanism": "call_then_continuous"}
    status, got = await call(http, "GET", f"{base}/api/platform/markets/b")
    assert status == 200 and got["name"] == "B" and got["running"] and not got["halted"]
    assert got["created_at"].endswith("Z") and got["updated_at"].endswith("Z")
    status, products = await call(http, "GET", f"{base}/m/b/api/products", headers={})
    assert products and all(p[k].endswith("Z") for p in products for k in ("start", "end", "open", "gate"))
    # each market answers under its own path, the default one at the root as before
    for path, mid in (("", ROOT), ("/m/a", "a"), ("/m/b", "b")):
        status, m = await call(http, "GET", f"{base}{path}/api/market", headers={})
        assert status == 200 and m["market_id"] == mid, (path, m)
    status, m = await call(http, "GET", f"{base}/m/b/api/market", headers={})
    assert m["config"]["mechanism"] == "call_then_continuous"
    for path in ("/health", "/ready", "/metrics", "/api/products", "/api/trades", "/api/openapi.json"):
        for prefix in ("", "/m/a", "/m/b"):
            status, _ = await call(http, "GET", f"{base}{prefix}{path}", headers={})
            assert status == 200, (prefix, path)
    # each market's OpenAPI document names that market as its server: a client generated from it
    # calls that market's routes
    for prefix, mid in (("", ROOT), ("/m/a", "a")):
        status, doc = await call(http, "GET", f"{base}{prefix}/api/openapi.json", headers={})
        assert doc["servers"] == [{"url": base + prefix, "description": f"market {mid} of this deployment"}]
        assert "/api/market" in doc["paths"]
    # the switcher's directory, public, from the root and from a hosted market
    for prefix in ("", "/m/a"):
        status, directory = await call(http, "GET", f"{base}{prefix}/api/markets", headers={})
        assert status == 200 and [m["market_id"] for m in directory] == [ROOT, "a", "b"]
        assert set(directory[1]) == {"market_id", "name", "path", "default", "status"}
    status, body = await call(http, "GET", f"{base}/m/zz/api/market", headers={})
    assert (status, body["error"]) == (404, "UNKNOWN_MARKET")
    # one group commit for every market of the process
    assert {t.market.runtime.committer for t in d.platform.tenants.values()} == {d.committer}
    assert d.market.runtime.committer is d.committer


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"market_id": "a"}, 409, "MARKET_EXISTS"),
    ({"market_id": ROOT}, 409, "MARKET_EXISTS"),
    ({"market_id": "Bad Id"}, 422, "INVALID_REQUEST"),
    ({"market_id": "c", "settings": {"operator_token": "x"}}, 422, "INVALID_REQUEST"),
    ({"market_id": "c", "settings": {"database_url": "postgresql://elsewhere"}}, 422, "INVALID_REQUEST"),
    ({"market_id": "c", "settings": {"mechanism": "call_then_continuous"}}, 422, "INVALID_REQUEST"),
    ({"market_id": "c", "settings": {"price_min_ticks": 10, "price_max_ticks": 5}}, 422, "INVALID_REQUEST"),
    ({"market_id": "c", "settings": {"product_minutes": 7}}, 422, "INVALID_REQUEST"),
    ({"market_id": "c", "extra": 1}, 422, "INVALID_REQUEST"),
])
async def test_create_refusals(platform_env, body, status, code):
    d, http, base, _ = platform_env
    got, answer = await call(http, "POST", f"{base}/api/platform/markets", body)
    assert (got, answer["error"]) == (status, code), answer
    if code == "INVALID_REQUEST":  # every validation error says where, in details (rest.md)
        assert answer["details"] and all(d_["loc"] and d_["msg"] for d_ in answer["details"]), answer
    assert set(d.platform.tenants) == {"a", "b"}


@pytest.mark.parametrize("route", OPERATOR_PLATFORM_ROUTES, ids=[f"{r.method} {r.path}" for r in
                                                                 OPERATOR_PLATFORM_ROUTES])
async def test_platform_routes_need_the_platform_token(platform_env, route):
    d, http, base, tokens = platform_env
    path = base + route.path.replace("{market_id}", "a")
    for headers, status in (({}, 401), (bearer(tokens["a"]), 403), (bearer(tokens["b"]), 403),
                            (bearer(OPERATOR_TOKEN + "x"), 403)):
        got, body = await call(http, route.method, path, {}, headers=headers)
        assert got == status, (headers, body)
    # nor are they served under a hosted market
    got, _ = await call(http, route.method, base + "/m/a" + route.path.replace("{market_id}", "a"), {})
    assert got == 404
    assert set(d.platform.tenants) == {"a", "b"} and d.platform.tenants["a"].record.status == "active"


# --------------------------------------------------------------------------- isolation: operator API

SETTINGS = load_settings()
GUARDED = [*OPERATOR_ROUTES, *(r for s in platform.subsystems() if s.enabled(SETTINGS) for r in s.routes
                               if "operator" in r.tags)]


def _concrete(path: str) -> str:
    return (path.replace("{address}", KEYS[0].address).replace("{product_id}", "20261122T0000Z-60")
            .replace("{member}", KEYS[0].address).replace("{", "").replace("}", ""))


@pytest.mark.parametrize("route", GUARDED, ids=[f"{r.method} {r.path}" for r in GUARDED])
async def test_every_operator_route_of_a_hosted_market_takes_its_own_token_only(platform_env, route):
    d, http, base, tokens = platform_env
    path = _concrete(route.path)
    body = {"reason": "x"} if route.body else None
    for mid, other in (("a", "b"), ("b", "a")):
        # the other community's manager: refused, both ways; and at the root (the default market)
        got, answer = await call(http, route.method, f"{base}/m/{mid}{path}", body, headers=bearer(tokens[other]))
        assert (got, answer["error"]) == (403, "FORBIDDEN"), (mid, answer)
        got, answer = await call(http, route.method, f"{base}{path}", body, headers=bearer(tokens[mid]))
        assert (got, answer["error"]) == (403, "FORBIDDEN"), (mid, answer)
        got, answer = await call(http, route.method, f"{base}/m/{mid}{path}", body, headers={})
        assert (got, answer["error"]) == (401, "UNAUTHENTICATED")
    for t in d.platform.tenants.values():
        assert t.market.engine.accounts == {} and not t.market.engine.halted  # nothing happened
    # its own manager and the platform operator pass the guard (whatever the route answers then)
    for mid in ("a", "b"):
        for token in (tokens[mid], OPERATOR_TOKEN):
            got, answer = await call(http, route.method, f"{base}/m/{mid}{path}", body, headers=bearer(token))
            assert got not in (401, 403), (mid, answer)


async def test_operator_page_sessions_are_per_market(platform_env):
    d, http, base, tokens = platform_env
    page = {"X-Voltbourse-Page": "1", "Accept": "application/json"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        # b's manager cannot log in to a's page, nor the other way round
        for mid, other in (("a", "b"), ("b", "a")):
            got, _ = await call(browser, "POST", f"{base}/m/{mid}/operator/login", {"token": tokens[other]},
                                headers={})
            assert got == 401
        got, answer = await call(browser, "POST", f"{base}/m/a/operator/login", {"token": tokens["a"]}, headers={})
        assert got == 200 and answer["operator"], answer
        cookies = {c.key: c for c in browser.cookie_jar}
        assert set(cookies) == {"vb_operator_a"} and cookies["vb_operator_a"]["path"] == "/m/a/"
        got, view = await call(browser, "GET", f"{base}/m/a/api/operator/market", headers=page)
        assert got == 200 and view["market_id"] == "a"
        # a's page session opens nothing of b's or of the root
        for url in (f"{base}/m/b/api/operator/market", f"{base}/api/operator/market"):
            got, answer = await call(browser, "GET", url, headers=page)
            assert (got, answer["error"]) == (401, "UNAUTHENTICATED"), url
        got, html = await call(browser, "GET", f"{base}/m/a/operator", headers={})
        assert got == 200 and 'src="operator/static/app.js"' in html
        async with browser.get(f"{base}/m/b/operator", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/m/b/operator/login"
        got, _ = await call(browser, "GET", f"{base}/m/a/operator/static/app.js", headers={})
        assert got == 200
        # a new manager token (the old manager removed): the pages the old one opened end at once
        got, body = await call(http, "POST", f"{base}/api/platform/markets/a/token")
        assert got == 200
        for method, url in (("GET", f"{base}/m/a/api/operator/market"), ("POST", f"{base}/m/a/api/operator/market/halt")):
            got, answer = await call(browser, method, url, {"reason": "after rotation"} if method == "POST" else None,
                                     headers=page)
            assert (got, answer["error"]) == (401, "UNAUTHENTICATED"), (url, answer)
        assert not d.platform.tenants["a"].market.engine.halted
        got, answer = await call(browser, "POST", f"{base}/m/a/operator/login", {"token": body["operator_token"]},
                                 headers={})
        assert got == 200 and answer["operator"], answer


# --------------------------------------------------------------------------- isolation: peers


async def connect(http, url: str, i: int) -> WSClient:
    return await WSClient.connect(http, url, KEYS[i].key)


async def test_peer_websocket_per_market(platform_env):
    d, http, base, tokens = platform_env
    ws = base.replace("http", "ws")
    await member(http, f"{base}/m/a", tokens["a"], KEYS[0].address)  # in a only
    await member(http, f"{base}/m/a", tokens["a"], KEYS[1].address)  # in both: two memberships
    await member(http, f"{base}/m/b", tokens["b"], KEYS[1].address)
    ca = await connect(http, f"{ws}/m/a/ws", 0)
    assert ca.hello["market_id"] == "a" and ca.hello["siwe"]["uri"].endswith("/m/a/ws")
    assert "community a" in ca.hello["siwe"]["statement"]
    r = await ca.login()
    assert r["type"] == "response", r
    # a member of a only is no member of b (nor of the default market)
    for url in (f"{ws}/m/b/ws", f"{ws}/ws"):
        c = await connect(http, url, 0)
        r = await c.login()
        assert r["type"] == "error" and r["code"] == "UNKNOWN_MEMBER", r
        await c.ws.close()
    # a SIWE message made for a's connection does not sign in to b
    cb = await connect(http, f"{ws}/m/b/ws", 1)
    ca1 = await connect(http, f"{ws}/m/a/ws", 1)
    from_a = ca1.hello["siwe"]
    text = siwe_text(from_a, KEYS[1].address)
    r = await cb.request({"type": "login", "message": text, "signature": personal_sign(text, KEYS[1])})
    assert r["type"] == "error" and r["code"].startswith("SIWE_"), r
    await cb.ws.close()
    # nor does one with b's own nonce whose URI names another market's endpoint (or the root's)
    for uri in (from_a["uri"], f"{ws}/ws", f"{ws}/m/b/ws/../../a/ws"):
        cb = await connect(http, f"{ws}/m/b/ws", 1)
        text = siwe_text(cb.hello["siwe"], KEYS[1].address, uri=uri)
        r = await cb.request({"type": "login", "message": text, "signature": personal_sign(text, KEYS[1])})
        assert r["type"] == "error" and r["code"] == "SIWE_WRONG_DOMAIN" and "endpoint" in r["message"], r
        await cb.ws.close()
    cb = await connect(http, f"{ws}/m/b/ws", 1)
    assert (await cb.login())["type"] == "response"
    assert (await ca1.login())["type"] == "response"
    # an order signed for market a is refused in b
    pid_a = open_products(d.platform.tenants["a"].market.engine)[0]
    order = {"type": "place", "product_id": pid_a, "side": "buy", "price": 5000, "quantity": 100}
    r = await cb.request(ca1.sign_order(order, "a", 1))
    assert r["type"] == "error" and r["code"] == "BAD_SIGNATURE", r
    r = await ca1.request(ca1.sign_order(order, "a", 1))
    assert r["type"] == "response", r
    # what happens in a is nowhere in b
    r = await ca.request({"type": "place", "product_id": pid_a, "side": "sell", "price": 5000, "quantity": 100})
    assert r["type"] == "response", r
    status, trades_a = await call(http, "GET", f"{base}/m/a/api/trades", headers={})
    assert status == 200 and len(trades_a) == 1
    for prefix in ("/m/b", ""):
        status, trades = await call(http, "GET", f"{base}{prefix}/api/trades", headers={})
        assert trades == []
        status, members = await call(http, "GET", f"{base}{prefix}/api/operator/members")
        assert status == 200 and KEYS[0].address not in str(members), members
        status, body = await call(http, "GET", f"{base}{prefix}/api/operator/members/{KEYS[0].address}/positions")
        assert status == 404, body
        status, body = await call(http, "GET", f"{base}{prefix}/api/operator/products/{pid_a}/trades")
        assert status in (200, 404) and KEYS[0].address not in str(body), body
    assert d.platform.tenants["b"].market.engine.accounts.keys() == {KEYS[1].address}
    for c in (ca, ca1, cb):
        await c.ws.close()


# --------------------------------------------------------------------------- lifecycle


async def test_suspend_resume_archive_and_restart(pool, pg_dsn):
    clock = ManualClock(T0)
    async with deployment(pg_dsn, clock) as d, aiohttp.ClientSession() as http:
        base, ws = f"http://127.0.0.1:{d.port}", f"ws://127.0.0.1:{d.port}"
        tokens = {"a": await create(http, base, "a"), "b": await create(http, base, "b", gate="rolling")}
        await member(http, f"{base}/m/a", tokens["a"], KEYS[0].address)
        c = await connect(http, f"{ws}/m/a/ws", 0)
        assert (await c.login())["type"] == "response"
        status, view = await call(http, "POST", f"{base}/api/platform/markets/a/suspend", {"reason": "audit"})
        assert status == 200 and view["status"] == "suspended" and view["halted"]
        async with http.get(f"{ws}/m/a/ws") as r:  # no new peer sessions
            assert r.status == 503 and (await r.json())["error"] == "MARKET_SUSPENDED"
        status, m = await call(http, "GET", f"{base}/m/a/api/market", headers={})
        assert status == 200 and m["halted"]  # still readable
        status, view = await call(http, "POST", f"{base}/api/platform/markets/a/resume")
        assert status == 200 and view["status"] == "active" and not view["halted"]
        c2 = await connect(http, f"{ws}/m/a/ws", 0)
        await c2.ws.close()
        status, view = await call(http, "POST", f"{base}/api/platform/markets/b/suspend")
        assert status == 200 and view["halted"]
        hashes = {t.record.market_id: t.market.engine.state_hash() for t in d.platform.tenants.values()}
        status, view = await call(http, "POST", f"{base}/api/platform/markets/a/archive")
        assert status == 200 and view["status"] == "archived" and not view["running"]
        status, body = await call(http, "GET", f"{base}/m/a/api/market", headers={})
        assert (status, body["error"]) == (404, "UNKNOWN_MARKET")
        assert c.ws.closed or (await c.ws.receive(timeout=5)).type in (aiohttp.WSMsgType.CLOSE,
                                                                       aiohttp.WSMsgType.CLOSED)
        assert await pool.fetchval("SELECT count(*) FROM journal WHERE market_id = 'a'") > 0  # data kept
        status, body = await call(http, "POST", f"{base}/api/platform/markets/a/suspend")
        assert (status, body["error"]) == (404, "UNKNOWN_MARKET")
        # a new community manager token: the old one stops working at once
        status, body = await call(http, "POST", f"{base}/api/platform/markets/b/token")
        assert status == 200
        got, _ = await call(http, "GET", f"{base}/m/b/api/operator/market", headers=bearer(tokens["b"]))
        assert got == 403
        tokens["b"] = body["operator_token"]
        got, _ = await call(http, "GET", f"{base}/m/b/api/operator/market", headers=bearer(tokens["b"]))
        assert got == 200
    # a restart starts what the registry lists (b suspended: halted, no sessions); a stays archived
    async with deployment(pg_dsn, clock) as d, aiohttp.ClientSession() as http:
        base, ws = f"http://127.0.0.1:{d.port}", f"ws://127.0.0.1:{d.port}"
        assert set(d.platform.tenants) == {"b"}
        assert d.platform.tenants["b"].market.engine.state_hash() == hashes["b"]
        assert d.platform.tenants["b"].market.engine.halted
        async with http.get(f"{ws}/m/b/ws") as r:
            assert r.status == 503
        got, _ = await call(http, "GET", f"{base}/m/b/api/operator/market", headers=bearer(tokens["b"]))
        assert got == 200
        # an archived market comes back with resume, recovered from its journal
        status, view = await call(http, "POST", f"{base}/api/platform/markets/a/resume")
        assert status == 200 and view["running"] and view["status"] == "active", view
        assert d.platform.tenants["a"].market.engine.state_hash() == hashes["a"]
        got, _ = await call(http, "GET", f"{base}/m/a/api/operator/market", headers=bearer(tokens["a"]))
        assert got == 200


async def test_settings_that_cannot_be_stored_are_refused_and_a_bad_stored_row_stops_nothing(pool, pg_dsn):
    """An infinite duration (1e400 in JSON) was answered 422 after it had been stored as null:
    the market stopped, nothing through the API mended it, and the next start of the server
    failed. Now it is refused before anything is stored, and a row the settings refuse (written
    by hand, or by an older version) leaves its market listed with the error, mendable by a
    PATCH, while the server and the other markets start."""
    raw = {"Content-Type": "application/json", **AUTH}
    async with deployment(pg_dsn, disclose_counterparty=True) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        await create(http, base, "a", disclose_counterparty=False)
        status, body = await call(http, "POST", f"{base}/api/platform/markets", headers=raw,
                                  data='{"market_id": "zz", "settings": {"settlement_max_age_s": 1e400}}')
        assert (status, body["error"]) == (422, "INVALID_REQUEST") and body["details"], body
        status, body = await call(http, "GET", f"{base}/api/platform/markets/zz")
        assert status == 404, body
        # integers beyond 64 bits (answered 500 where they were stored) and rules the engine
        # refuses together (a smallest quantity above the largest: created, then never ran)
        for settings in ('{"min_quantity_wh": 99999999999999999999}', '{"max_order_value_eur": 99999999999999999999999}',
                         '{"min_quantity_wh": 2000000000}'):
            status, body = await call(http, "POST", f"{base}/api/platform/markets", headers=raw,
                                      data=f'{{"market_id": "zy", "settings": {settings}}}')
            assert (status, body["error"]) == (422, "INVALID_REQUEST"), (settings, body)
            assert "cannot run with" in body["message"] and body["request_id"], body
            status, body = await call(http, "GET", f"{base}/api/platform/markets/zy")
            assert status == 404, body
        before = await pool.fetchval("SELECT overrides FROM platform_markets WHERE market_id = 'a'")
        for patch in ('{"settings": {"settlement_max_age_s": 1e400}}', '{"settings": {"open_days_before": 1000000000}}',
                      '{"settings": {"gate_rolling_minutes": 99999999}}', '{"settings": {"min_quantity_wh": 2000000000}}'):
            status, body = await call(http, "PATCH", f"{base}/api/platform/markets/a", headers=raw, data=patch)
            assert (status, body["error"]) == (422, "INVALID_REQUEST"), (patch, body)
        assert await pool.fetchval("SELECT overrides FROM platform_markets WHERE market_id = 'a'") == before
        status, m = await call(http, "GET", f"{base}/m/a/api/market", headers={})
        assert status == 200 and d.platform.tenants["a"].market is not None
    await pool.execute("UPDATE platform_markets SET overrides = overrides || '{\"settlement_max_age_s\": null}' "
                       "WHERE market_id = 'a'")
    async with deployment(pg_dsn, disclose_counterparty=True) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        status, view = await call(http, "GET", f"{base}/api/platform/markets/a")
        assert status == 200 and not view["running"] and "settlement_max_age_s" in view["error"], view
        status, m = await call(http, "GET", f"{base}/api/market", headers={})
        assert status == 200  # the default market runs
        # the mend cannot pass a fixed setting off as unchanged: a's members traded with their
        # counterparties private, the deployment discloses them
        status, body = await call(http, "PATCH", f"{base}/api/platform/markets/a",
                                  {"settings": {"settlement_max_age_s": None, "disclose_counterparty": None}})
        assert (status, body["error"], body["fields"]) == (409, "SETTING_FIXED", ["disclose_counterparty"]), body
        status, view = await call(http, "PATCH", f"{base}/api/platform/markets/a",
                                  {"settings": {"settlement_max_age_s": None}})
        assert status == 200 and view["running"] and view["restarted"], view
        status, m = await call(http, "GET", f"{base}/m/a/api/market", headers={})
        assert status == 200 and m["market_id"] == "a"
        assert d.platform.tenants["a"].settings.disclose_counterparty is False


async def test_connection_limits_are_the_servers_whatever_the_number_of_markets(pool, pg_dsn):
    """WS_CONNECTIONS_PER_IP held per market: 64 at the root and 64 more on every hosted market."""
    async with deployment(pg_dsn, ws_connections_per_ip=3) as d, aiohttp.ClientSession() as http:
        base, ws = f"http://127.0.0.1:{d.port}", f"ws://127.0.0.1:{d.port}"
        await create(http, base, "a")
        await create(http, base, "b")
        held = [await http.ws_connect(url) for url in (f"{ws}/ws", f"{ws}/m/a/ws", f"{ws}/m/b/ws")]
        for url in (f"{ws}/ws", f"{ws}/m/a/ws", f"{ws}/m/b/ws"):
            async with http.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                              "Sec-WebSocket-Version": "13",
                                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as r:
                assert r.status == 429 and (await r.json())["error"] == "RATE_LIMITED", url
        await held[1].close()
        for _ in range(100):  # the slot is the server's again, for any market
            await asyncio.sleep(0.02)
            try:
                again = await http.ws_connect(f"{ws}/m/b/ws")
                break
            except aiohttp.WSServerHandshakeError:
                continue
        else:
            raise AssertionError("the closed connection's slot was not released")
        for c in (held[0], held[2], again):
            await c.close()


async def test_no_route_and_wrong_methods_answer_json_with_a_request_id(platform_env):
    d, http, base, tokens = platform_env
    for method, url, status, code in (
            ("GET", f"{base}/api/nope", 404, "NOT_FOUND"),
            ("GET", f"{base}/m/a/api/nope", 404, "NOT_FOUND"),
            ("DELETE", f"{base}/api/products", 405, "METHOD_NOT_ALLOWED"),
            ("DELETE", f"{base}/m/a/api/products", 405, "METHOD_NOT_ALLOWED"),
            ("GET", f"{base}/api/platform/nope", 404, "NOT_FOUND"),
            ("DELETE", f"{base}/api/platform/markets", 405, "METHOD_NOT_ALLOWED")):
        async with http.request(method, url, headers={**AUTH, "X-Request-Id": "probe-1"}) as r:
            assert r.status == status and r.content_type == "application/json", (url, await r.text())
            body = await r.json()
            assert body["error"] == code, (url, body)
            if status == 405:
                assert "GET" in r.headers["Allow"]
            assert body["request_id"] == "probe-1" and r.headers["X-Request-Id"] == "probe-1", body
    long_id = "x" * 5000
    async with http.get(f"{base}/m/{long_id}/api/market") as r:
        body = await r.json()
        assert r.status == 404 and body["error"] == "UNKNOWN_MARKET" and len(body["message"]) < 200, body
    async with http.post(f"{base}/api/platform/markets", data=b"{" + b" " * (70 * 1024) + b"}",
                         headers={**AUTH, "Content-Type": "application/json", "X-Request-Id": "big-1"}) as r:
        body = await r.json()
        assert r.status == 413 and body["error"] == "PAYLOAD_TOO_LARGE" and body["request_id"] == "big-1", body


async def test_a_row_refused_as_a_whole_cannot_pass_fixed_settings_off_as_unchanged(pool, pg_dsn):
    """A market whose settings are consistent only with the deployment's of its day (call then
    continuous needs a rolling gate) is refused as a whole once the deployment changes: its
    settings were then compared with the deployment's, so a PATCH nulling them looked like no
    change and turned counterparty disclosure on for members who traded with it off."""
    async with deployment(pg_dsn, gate="rolling", disclose_counterparty=True) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        await create(http, base, "c", mechanism="call_then_continuous", disclose_counterparty=False)
    async with deployment(pg_dsn, gate="day_ahead", disclose_counterparty=True) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        status, view = await call(http, "GET", f"{base}/api/platform/markets/c")
        assert status == 200 and not view["running"] and view["error"], view
        status, body = await call(http, "PATCH", f"{base}/api/platform/markets/c",
                                  {"settings": {"mechanism": None, "disclose_counterparty": None}})
        assert (status, body["error"]) == (409, "SETTING_FIXED"), body
        assert set(body["fields"]) >= {"mechanism"}, body
        assert d.platform.tenants["c"].market is None  # nothing started with disclosure on


async def test_wrong_operator_tokens_are_throttled_server_wide(platform_env):
    """Guessing the operator token on the API was not throttled at all (about 3 700 tries a
    second, every /api/operator route), and the page login's limit was per market (each hosted
    community another 10 a minute). Wrong tokens now count per address for the whole server,
    API and page logins alike; the right token is never refused."""
    d, http, base, tokens = platform_env
    seen = []
    for i in range(12):  # spread over the root's and the communities' routes and logins
        url = (f"{base}/api/operator/members", f"{base}/m/a/api/operator/members", f"{base}/m/b/operator/login",
               f"{base}/api/platform/markets")[i % 4]
        if url.endswith("/login"):
            status, _ = await call(http, "POST", url, {"token": f"guess-{i}"}, headers={})
        else:
            status, _ = await call(http, "GET", url, headers=bearer(f"guess-{i}"))
        seen.append(status)
    assert seen[:10] == [403, 403, 401, 403] * 2 + [403, 403] and seen[10:] == [429, 429], seen
    status, body = await call(http, "GET", f"{base}/m/b/api/operator/members", headers=bearer("guess-x"))
    assert (status, body["error"]) == (429, "TOO_MANY_ATTEMPTS") and body["request_id"], body
    # the right tokens still work from the same address
    for url, token in ((f"{base}/api/operator/members", OPERATOR_TOKEN), (f"{base}/m/a/api/operator/members",
                                                                          tokens["a"])):
        status, _ = await call(http, "GET", url, headers=bearer(token))
        assert status == 200, url
