"""The operator page of a platform with many communities, in Debian's headless Chromium
against a real deployment (``start_deployment``: the default market at the root and hosted
markets under /m/{id}/): the community switcher and the isolation of page sessions between
communities, the platform operator's Communities panel (create with the server's validation,
open the new community's page, suspend, resume, a new manager token, archive), and which page
sessions reach the platform routes. Screenshot docs/screenshots/operator-communities.png."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from playwright.async_api import expect
from support.keys import AUTH, OPERATOR_TOKEN
from support.page import LAPTOP, PHONE, shot
from support.times import T0

from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.tools.server import Deployment, start_deployment

pytestmark = pytest.mark.e2e

ROOT = "root"
PAGE = {"X-Voltbourse-Page": "1", "Accept": "application/json"}


@asynccontextmanager
async def deployment(pg_dsn: str) -> AsyncIterator[Deployment]:
    settings = load_settings(database_url=pg_dsn, market_id=ROOT, operator_token=OPERATOR_TOKEN)
    d = await start_deployment(pg_dsn, settings, "127.0.0.1", 0, clock=ManualClock(T0))
    try:
        yield d
    finally:
        await d.close()


async def call(http: aiohttp.ClientSession, method: str, url: str, body=None, headers=AUTH):
    async with http.request(method, url, json=body, headers=headers) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


@pytest.fixture
async def platform(pool, pg_dsn):
    """The root market and two hosted communities a and b (created over REST); their tokens."""
    async with deployment(pg_dsn) as d, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{d.port}"
        tokens = {}
        for mid, settings in (("a", {}), ("b", {"gate": "rolling", "mechanism": "call_then_continuous"})):
            status, body = await call(http, "POST", f"{base}/api/platform/markets",
                                      {"market_id": mid, "name": f"Community {mid.upper()}", "settings": settings})
            assert status == 201, body
            tokens[mid] = body["operator_token"]
        yield d, base, tokens


def watch(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    return errors


async def log_in(page, token: str, market_id: str) -> None:
    """On a login form: log in with ``token``, land on the market's page with its feed live."""
    await expect(page.locator("#login-market")).to_have_text(market_id)
    await page.fill("#token", token)
    await page.click("#login-submit")
    await page.wait_for_url("**/operator")
    await page.wait_for_selector("#conn.ok", timeout=5000)
    await expect(page.locator("#market-id")).to_have_text(market_id)


async def confirm(page, ok: bool = True) -> str:
    await page.wait_for_selector("#confirm[open]")
    text = await page.inner_text("#confirm-text")
    await page.click("#confirm-ok" if ok else "#confirm-cancel")
    return text


# --------------------------------------------------------------------------- the switcher


async def test_switcher_opens_the_other_community_behind_its_own_login(platform, browser):
    d, base, tokens = platform
    ctx = await browser.new_context(viewport=LAPTOP)
    page = await ctx.new_page()
    errors = watch(page)
    await page.goto(base + "/m/a/operator")
    assert page.url == base + "/m/a/operator/login"
    await log_in(page, tokens["a"], "a")
    # the switcher lists the platform's communities, this one selected; no Communities panel here
    switch = page.locator("#market-switch")
    await expect(page.locator("#market-switcher")).to_be_visible()
    await expect(switch.locator("option")).to_have_count(3)
    assert await switch.input_value() == "/m/a/"
    assert [t.strip() for t in await switch.locator("option").all_inner_texts()] == [
        "root (default)", "Community A — a", "Community B — b"]
    assert await page.locator("#platform-section").is_hidden()
    # a's session opens nothing of b's: the browser does not send a's cookie (path /m/a/) there,
    # and a's session id under b's cookie name is no session of b's
    status = await page.evaluate("fetch('../b/api/operator/market', {headers: {'X-Voltbourse-Page': '1'}})"
                                 ".then((r) => r.status)")
    assert status == 401
    sid = next(c["value"] for c in await ctx.cookies() if c["name"] == "vb_operator_a")
    await ctx.add_cookies([{"name": "vb_operator_b", "value": sid, "domain": "127.0.0.1", "path": "/m/b/"}])
    # switching to b lands on b's login (a's session is not b's), which refuses a's token
    await switch.select_option("/m/b/")
    await page.wait_for_url(base + "/m/b/operator/login")
    await expect(page.locator("#login-market")).to_have_text("b")
    await page.fill("#token", tokens["a"])
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("Wrong operator token")
    # b's own token opens b's page, which shows b's market
    await log_in(page, tokens["b"], "b")
    assert page.url == base + "/m/b/operator"
    assert await page.locator("#market-switch").input_value() == "/m/b/"
    # back to a: its session is still open, no login
    await page.locator("#market-switch").select_option("/m/a/")
    await page.wait_for_url(base + "/m/a/operator")
    await page.wait_for_selector("#conn.ok", timeout=5000)
    await expect(page.locator("#market-id")).to_have_text("a")
    # to the root: the default market's page needs the platform token (a's and b's are refused)
    await page.locator("#market-switch").select_option("/")
    await page.wait_for_url(base + "/operator/login")
    await page.fill("#token", tokens["b"])
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("Wrong operator token")
    await log_in(page, OPERATOR_TOKEN, ROOT)
    assert not errors, errors
    await ctx.close()

    # the platform operator's token opens a hosted community's page too (a session of that
    # community only, without the Communities panel)
    ctx = await browser.new_context(viewport=LAPTOP)
    page = await ctx.new_page()
    await page.goto(base + "/m/b/operator")
    await log_in(page, OPERATOR_TOKEN, "b")
    await page.wait_for_timeout(300)
    assert await page.locator("#platform-section").is_hidden()
    assert [c["name"] for c in await ctx.cookies()] == ["vb_operator_b"]
    await ctx.close()


# --------------------------------------------------------------------------- the Communities panel


async def test_communities_panel_create_open_suspend_archive(platform, browser):
    d, base, tokens = platform
    ctx = await browser.new_context(viewport=LAPTOP)
    page = await ctx.new_page()
    errors = watch(page)
    await page.goto(base + "/operator")
    await log_in(page, OPERATOR_TOKEN, ROOT)
    section = page.locator("#platform-section")
    await expect(section).to_be_visible()
    await expect(page.locator("#platform-link")).to_be_visible()
    rows = page.locator("#platform-markets tbody tr")
    await expect(rows).to_have_count(3)
    assert [await r.get_attribute("data-market-id") for r in await rows.all()] == [ROOT, "a", "b"]
    b_row = page.locator('#platform-markets tr[data-market-id="b"]')
    assert [c.strip() for c in await b_row.locator("th, td").all_inner_texts()][:6] == [
        "b", "Community B", "active", "/m/b/", "yes", "gate=rolling, mechanism=call_then_continuous"]
    assert await page.locator('#platform-markets tr[data-market-id="root"] button').count() == 0

    # create: the server validates, the page shows its precise refusals and keeps the form
    err = page.locator("#platform-create-error")

    async def create(market_id: str, name: str = "", gate: str = "", mechanism: str = "") -> None:
        await page.fill("#new-market-id", market_id)
        await page.fill("#new-market-name", name)
        await page.select_option("#new-market-gate", gate)
        await page.select_option("#new-market-mechanism", mechanism)
        await page.click("#platform-create-btn")

    await create("north", "North", mechanism="call_then_continuous")  # the deployment's gate is day_ahead
    await expect(err).to_be_visible()
    await expect(err).to_contain_text("422 INVALID_REQUEST")
    await expect(err).to_contain_text("call_then_continuous needs gate=rolling")
    await create("North Side", "North")
    await expect(err).to_contain_text("market_id: String should match pattern")
    await create("a", "Another A")
    await expect(err).to_contain_text("409 MARKET_EXISTS: market a exists")
    await create(ROOT)
    await expect(err).to_contain_text("409 MARKET_EXISTS: root is the deployment's default market")
    assert await page.input_value("#new-market-id") == ROOT  # a refusal keeps what was typed
    await create("north", "North", gate="rolling", mechanism="call_then_continuous")
    await expect(page.locator("#platform-token")).to_be_visible()
    await expect(err).to_be_hidden()
    await expect(page.locator("#platform-status")).to_have_text("Community north created and running at /m/north/.")
    token = await page.input_value("#platform-token-value")
    assert len(token) >= 24
    assert await page.evaluate("document.activeElement.id") == "platform-token-value"
    north = page.locator('#platform-markets tr[data-market-id="north"]')
    await expect(north.locator(".status")).to_have_text("active")
    await expect(north.locator(".running")).to_have_text("yes")
    assert await page.input_value("#new-market-id") == ""
    async with aiohttp.ClientSession() as http:
        status, got = await call(http, "GET", f"{base}/api/platform/markets/north")
        assert status == 200 and got["settings"] == {"gate": "rolling", "mechanism": "call_then_continuous"}
    # the switcher lists it at once
    await expect(page.locator("#market-switch option")).to_have_count(4)
    await page.click("#platform-token-done")
    await expect(page.locator("#platform-token")).to_be_hidden()
    assert await page.input_value("#platform-token-value") == ""

    # open its page from the panel: its login, with the token shown once
    await north.locator("a[data-open]").click()
    await page.wait_for_url(base + "/m/north/operator/login")
    await log_in(page, token, "north")
    await expect(page.locator("#market-state")).to_have_text("Trading")
    assert await page.locator("#platform-section").is_hidden()
    await page.goto(base + "/operator")  # the root's session is still open
    await page.wait_for_selector("#conn.ok", timeout=5000)
    await expect(north.locator(".status")).to_have_text("active")

    # suspend: cancelled once, then confirmed; the status and the market follow
    await north.locator('button[data-action="suspend"]').click()
    assert "Suspend community north (North)?" in await confirm(page, ok=False)
    await expect(page.locator("#platform-status")).to_have_text("Cancelled: nothing was changed.")
    assert d.platform.tenants["north"].record.status == "active"
    await north.locator('button[data-action="suspend"]').click()
    await confirm(page)
    await expect(north.locator(".status")).to_have_text("suspended")
    await expect(north.locator(".running")).to_have_text("yes, halted")
    await expect(page.locator("#platform-status")).to_have_text("Community north suspended.")
    assert d.platform.tenants["north"].market.engine.halted
    await expect(page.locator('#market-switch option[value="/m/north/"]')).to_contain_text("suspended")
    await shot(page, "operator-communities.png", selector="#platform-section")
    # resume
    await north.locator('button[data-action="resume"]').click()
    assert "Resume trading on community north (North)?" in await confirm(page)
    await expect(north.locator(".status")).to_have_text("active")
    await expect(north.locator(".running")).to_have_text("yes")
    assert not d.platform.tenants["north"].market.engine.halted

    # a new community manager token: shown once; the old one stops working
    await north.locator('button[data-action="new-token"]').click()
    await confirm(page)
    await expect(page.locator("#platform-token")).to_be_visible()
    new_token = await page.input_value("#platform-token-value")
    assert new_token and new_token != token
    async with aiohttp.ClientSession() as http:
        for given, expected in ((token, 401), (new_token, 200)):
            status, _ = await call(http, "POST", f"{base}/m/north/operator/login", {"token": given}, headers={})
            assert status == expected

    # archive: stopped and unmounted, listed as archived (no link), gone from the switcher
    await north.locator('button[data-action="archive"]').click()
    assert "Archive community north (North)?" in await confirm(page)
    await expect(north.locator(".status")).to_have_text("archived")
    await expect(north.locator(".running")).to_have_text("no")
    assert await north.locator("a[data-open]").count() == 0
    await expect(north.locator('button[data-action="start-again"]')).to_be_visible()
    await expect(page.locator("#market-switch option")).to_have_count(3)
    async with aiohttp.ClientSession() as http:
        status, body = await call(http, "GET", f"{base}/m/north/api/market", headers={})
        assert (status, body["error"]) == (404, "UNKNOWN_MARKET")
    assert "north" not in d.platform.tenants
    # a refusal of the server is shown: a stale row's action on a market archived behind its back
    # (archived by the page's own session, then the stale row's button clicked in the same task)
    status = await page.evaluate(
        "fetch('api/platform/markets/a/archive', {method: 'POST', headers: {'X-Voltbourse-Page': '1'}})"
        ".then((r) => { document.querySelector('#platform-markets tr[data-market-id=\"a\"] "
        "button[data-action=\"suspend\"]').click(); return r.status; })")
    assert status == 200
    await confirm(page)
    await expect(page.locator("#platform-status")).to_have_text(re.compile(
        r"^Suspend a community failed: 404 UNKNOWN_MARKET: no market a on this platform \(request [0-9a-f]{16}\)$"))
    await expect(page.locator('#platform-markets tr[data-market-id="a"] .status')).to_have_text("archived")
    # at phone width the panel fits (the table scrolls inside its card)
    await page.set_viewport_size(PHONE)
    await page.wait_for_timeout(200)
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert not errors, errors
    await ctx.close()


# --------------------------------------------------------------------------- which sessions reach the platform routes


async def test_platform_routes_take_the_platform_page_session_only(platform):
    d, base, tokens = platform
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as s:
        # a community manager's page session: no platform flag, no platform route
        status, info = await call(s, "POST", f"{base}/m/a/operator/login", {"token": tokens["a"]}, headers={})
        assert status == 200 and info["platform"] is False
        status, info = await call(s, "GET", f"{base}/m/a/operator/session", headers={})
        assert status == 200 and info["platform"] is False and info["market_id"] == "a"
        a_sid = next(c.value for c in jar if c.key == "vb_operator_a")
        for cookie in ({"vb_operator_a": a_sid}, {"vb_operator": a_sid}):
            async with aiohttp.ClientSession(cookies=cookie) as other:
                status, body = await call(other, "GET", f"{base}/api/platform/markets", headers=PAGE)
                assert (status, body["error"]) == (401, "UNAUTHENTICATED"), cookie
        # the platform token on a hosted community's page: a session of that community, not
        # the platform's (its platform routes are at the root; /m/a/api/platform is nothing)
        status, info = await call(s, "POST", f"{base}/m/b/operator/login", {"token": OPERATOR_TOKEN}, headers={})
        assert status == 200 and info["platform"] is False
        status, _ = await call(s, "GET", f"{base}/m/b/api/platform/markets", headers=PAGE)
        assert status == 404
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        # the platform token on the root's page: the platform routes take the session (with the
        # page header, same origin), like the operator routes
        status, info = await call(s, "POST", f"{base}/operator/login", {"token": OPERATOR_TOKEN}, headers={})
        assert status == 200 and info["platform"] is True
        status, info = await call(s, "GET", f"{base}/operator/session", headers={})
        assert info["platform"] is True and info["market_id"] == ROOT
        status, listed = await call(s, "GET", f"{base}/api/platform/markets", headers=PAGE)
        assert status == 200 and [m["market_id"] for m in listed] == [ROOT, "a", "b"]
        status, _ = await call(s, "GET", f"{base}/api/platform/markets", headers={"Accept": "application/json"})
        assert status == 401  # the cookie alone authorises nothing
        status, _ = await call(s, "POST", f"{base}/api/platform/markets/a/suspend", {},
                               headers={**PAGE, "Origin": "http://evil.example"})
        assert status == 403 and d.platform.tenants["a"].record.status == "active"
        status, got = await call(s, "POST", f"{base}/api/platform/markets/a/suspend", {}, headers=PAGE)
        assert status == 200 and got["status"] == "suspended"
        # logged out: the session reaches nothing
        status, _ = await call(s, "POST", f"{base}/operator/logout", headers={"Accept": "application/json"})
        assert status == 200
        status, _ = await call(s, "GET", f"{base}/api/platform/markets", headers=PAGE)
        assert status == 401
