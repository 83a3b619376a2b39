"""Changing a hosted community's settings (PATCH /api/platform/markets/{id}) over real HTTP,
against a real PostgreSQL: what a running market may change (its name at once; the settings
its services read, applied by restarting the market, state kept), what it may not (its engine
rules and metering interval: SETTING_FIXED, naming the fields), precise refusals with a
request id and no state change, the platform token only, durable across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from support.keys import AUTH, OPERATOR_TOKEN
from support.times import T0

from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.tools.server import Deployment, start_deployment

pytestmark = pytest.mark.integration

ROOT = "root"


@asynccontextmanager
async def deployment(pg_dsn: str, clock: ManualClock) -> AsyncIterator[Deployment]:
    settings = load_settings(database_url=pg_dsn, market_id=ROOT, operator_token=OPERATOR_TOKEN)
    d = await start_deployment(pg_dsn, settings, "127.0.0.1", 0, clock=clock)
    try:
        yield d
    finally:
        await d.close()


async def call(http: aiohttp.ClientSession, method: str, url: str, body=None, headers=AUTH, data=None):
    kw = {"json": body} if data is None else {"data": data}
    async with http.request(method, url, headers=headers, **kw) as r:
        got = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, got, r.headers.get("X-Request-Id")


async def row(pool, market_id: str):
    r = await pool.fetchrow("SELECT name, status, overrides, token_sha256, updated_at FROM platform_markets "
                            "WHERE market_id = $1", market_id)
    return dict(r)


@pytest.fixture
async def env(pool, pg_dsn):
    clock = ManualClock(T0)
    async with deployment(pg_dsn, clock) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        tokens = {}
        for mid, settings in (("a", {}), ("b", {"gate": "rolling", "mechanism": "call_then_continuous"})):
            status, body, _ = await call(http, "POST", f"{base}/api/platform/markets",
                                         {"market_id": mid, "name": mid.upper(), "settings": settings})
            assert status == 201, body
            tokens[mid] = body["operator_token"]
        yield d, http, base, tokens, clock


async def test_name_at_once_and_service_settings_by_a_restart(env, pool, pg_dsn):
    d, http, base, tokens, clock = env
    url = f"{base}/api/platform/markets/a"
    before = d.platform.tenants["a"]
    status, body, rid = await call(http, "PATCH", url, {"name": "Alpine cooperative"})
    assert status == 200, body
    assert body["name"] == "Alpine cooperative" and body["changed"] == [] and body["restarted"] is False
    assert rid and d.platform.tenants["a"] is before  # no restart for a name
    status, directory, _ = await call(http, "GET", f"{base}/api/markets", headers={})
    assert {m["market_id"]: m["name"] for m in directory}["a"] == "Alpine cooperative"

    state = before.market.engine.state_hash()
    status, body, _ = await call(http, "PATCH", url, {"settings": {"settlement_batch_size": 500,
                                                                    "settlement_max_age_s": 2.5}})
    assert status == 200, body
    assert body["changed"] == ["settlement_batch_size", "settlement_max_age_s"] and body["restarted"] is True
    assert body["running"] and body["settings"] == {"settlement_batch_size": 500, "settlement_max_age_s": 2.5}
    after = d.platform.tenants["a"]
    assert after is not before and after.settings.settlement_batch_size == 500
    assert after.market.engine.state_hash() == state  # recovered, nothing lost
    assert (await row(pool, "a"))["overrides"] == {"settlement_batch_size": 500, "settlement_max_age_s": 2.5}
    status, m, _ = await call(http, "GET", f"{base}/m/a/api/market", headers={})
    assert status == 200 and m["market_id"] == "a"
    # its community manager's token still opens its operator API after the restart
    async with http.get(f"{base}/m/a/api/operator/market", headers={"Authorization": f"Bearer {tokens['a']}"}) as r:
        assert r.status == 200

    # the same values again: no change, no restart; null: back to the deployment's value
    status, body, _ = await call(http, "PATCH", url, {"settings": {"settlement_batch_size": 500}})
    assert (status, body["changed"], body["restarted"]) == (200, [], False)
    status, body, _ = await call(http, "PATCH", url, {"settings": {"settlement_max_age_s": None}})
    assert status == 200 and body["changed"] == ["settlement_max_age_s"] and body["restarted"]
    assert body["settings"] == {"settlement_batch_size": 500}
    base_age = load_settings().settlement_max_age_s
    assert d.platform.tenants["a"].settings.settlement_max_age_s == base_age
    # an engine rule equal to the current one is no change (the page may send the whole form)
    status, body, _ = await call(http, "PATCH", f"{base}/api/platform/markets/b",
                                 {"settings": {"gate": "rolling", "mechanism": "call_then_continuous"}})
    assert (status, body["changed"], body["restarted"]) == (200, [], False), body
    # turning counterparty disclosure off is allowed (more private)
    status, body, _ = await call(http, "PATCH", f"{base}/api/platform/markets/b",
                                 {"settings": {"disclose_counterparty": False}})
    assert status == 200 and body["changed"] == [], body  # already off: no change


async def test_durable_and_applied_after_a_restart_of_the_deployment(pool, pg_dsn):
    clock = ManualClock(T0)
    async with deployment(pg_dsn, clock) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        status, body, _ = await call(http, "POST", f"{base}/api/platform/markets", {"market_id": "c"})
        assert status == 201, body
        status, body, _ = await call(http, "PATCH", f"{base}/api/platform/markets/c",
                                     {"name": "Cee", "settings": {"settlement_batch_size": 64}})
        assert status == 200 and body["restarted"], body
        # an archived market: stored now, used when it starts again
        status, _, _ = await call(http, "POST", f"{base}/api/platform/markets/c/archive")
        assert status == 200
        status, body, _ = await call(http, "PATCH", f"{base}/api/platform/markets/c",
                                     {"settings": {"settlement_batch_size": 128}})
        assert status == 200 and body["changed"] == ["settlement_batch_size"] and not body["restarted"], body
        assert body["status"] == "archived" and "c" not in d.platform.tenants
        status, body, _ = await call(http, "POST", f"{base}/api/platform/markets/c/resume")
        assert status == 200 and body["running"], body
        assert d.platform.tenants["c"].settings.settlement_batch_size == 128
    async with deployment(pg_dsn, clock) as d:
        t = d.platform.tenants["c"]
        assert t.record.name == "Cee" and t.settings.settlement_batch_size == 128 and t.market is not None


@pytest.mark.parametrize(("market", "body", "status", "code", "words"), [
    ("a", {"settings": {"price_max_ticks": 300_000}}, 409, "SETTING_FIXED", "price_max_ticks cannot change"),
    ("a", {"settings": {"gate": "rolling", "price_min_ticks": 0, "settlement_batch_size": 9}}, 409,
     "SETTING_FIXED", "gate, price_min_ticks cannot change"),
    ("b", {"settings": {"mechanism": "continuous"}}, 409, "SETTING_FIXED", "mechanism cannot change"),
    ("a", {"settings": {"timezone": "Europe/Madrid"}}, 409, "SETTING_FIXED", "timezone"),
    ("a", {"settings": {"metering_interval_minutes": 60}}, 409, "SETTING_FIXED", "metering_interval_minutes"),
    ("a", {"settings": {"disclose_counterparty": True}}, 409, "SETTING_FIXED", "may only be turned off"),
    ("a", {"settings": {"operator_token": "x"}}, 422, "INVALID_REQUEST", "settings a market may not set"),
    ("a", {"settings": {"settlement_batch_size": 0}}, 422, "INVALID_REQUEST", "settlement_batch_size"),
    ("a", {"settings": {"settlement_batch_size": "many"}}, 422, "INVALID_REQUEST", "settlement_batch_size"),
    ("a", {"settings": {"product_minutes": 7}}, 422, "INVALID_REQUEST", "product_minutes"),
    ("a", {}, 422, "INVALID_REQUEST", "nothing to change"),
    ("a", {"name": 5}, 422, "INVALID_REQUEST", "name"),
    ("a", {"name": "x" * 201}, 422, "INVALID_REQUEST", "name"),
    ("a", {"status": "archived"}, 422, "INVALID_REQUEST", "status"),
    ("a", {"settings": []}, 422, "INVALID_REQUEST", "settings"),
    ("a", "{not json", 400, "MALFORMED_JSON", "not valid JSON"),
    (ROOT, {"name": "x"}, 409, "BAD_MARKET_STATE", "default market"),
    ("zz", {"name": "x"}, 404, "UNKNOWN_MARKET", "zz"),
    ("Bad!", {"name": "x"}, 404, "UNKNOWN_MARKET", "Bad!"),
])
async def test_refusals_are_precise_and_change_nothing(env, pool, market, body, status, code, words):
    d, http, base, tokens, clock = env
    before = {m: await row(pool, m) for m in ("a", "b")}
    tenants = dict(d.platform.tenants)
    hashes = {m: t.market.engine.state_hash() for m, t in tenants.items()}
    kw = {"data": body.encode(), "headers": {**AUTH, "Content-Type": "application/json"}} if isinstance(body, str) \
        else {"body": body}
    got, answer, rid = await call(http, "PATCH", f"{base}/api/platform/markets/{market}", **kw)
    assert (got, answer["error"]) == (status, code), answer
    assert words in answer["message"], answer
    assert answer["request_id"] == rid and rid
    if code == "SETTING_FIXED":
        assert answer["fields"] and all(f in answer["message"] for f in answer["fields"])
    assert {m: await row(pool, m) for m in ("a", "b")} == before
    assert d.platform.tenants == tenants  # the same running markets, not restarted
    assert {m: t.market.engine.state_hash() for m, t in tenants.items()} == hashes
    assert all(t.market.runtime.running for t in tenants.values())


async def test_request_id_is_the_callers_or_a_new_one(env):
    d, http, base, tokens, clock = env
    url = f"{base}/api/platform/markets/a"
    status, body, rid = await call(http, "PATCH", url, {"settings": {"price_max_ticks": 1}},
                                   headers={**AUTH, "X-Request-Id": "ops-42"})
    assert (status, body["request_id"], rid) == (409, "ops-42", "ops-42")
    status, body, rid = await call(http, "PATCH", url, {"name": "A"}, headers={**AUTH, "X-Request-Id": "no spaces!"})
    assert status == 200 and rid and rid != "no spaces!"
    status, body, rid2 = await call(http, "GET", f"{base}/api/platform/markets")
    assert status == 200 and rid2 and rid2 != rid


async def test_only_the_platform_operator(env, pool):
    d, http, base, tokens, clock = env
    before = await row(pool, "a")
    for headers, status, code in (({}, 401, "UNAUTHENTICATED"),
                                  ({"Authorization": f"Bearer {tokens['a']}"}, 403, "FORBIDDEN"),
                                  ({"Authorization": f"Bearer {tokens['b']}"}, 403, "FORBIDDEN"),
                                  ({"Authorization": f"Bearer {OPERATOR_TOKEN}x"}, 403, "FORBIDDEN")):
        got, answer, rid = await call(http, "PATCH", f"{base}/api/platform/markets/a", {"name": "taken over"},
                                      headers=headers)
        assert (got, answer["error"]) == (status, code)
        assert answer["request_id"] == rid and rid
    # nor under a hosted market, with any token
    for token in (tokens["a"], OPERATOR_TOKEN):
        got, _, _ = await call(http, "PATCH", f"{base}/m/a/api/platform/markets/a", {"name": "taken over"},
                               headers={"Authorization": f"Bearer {token}"})
        assert got == 404
    assert await row(pool, "a") == before
