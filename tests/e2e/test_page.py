"""The operator page in a real headless Chromium (Debian's, driven by Playwright)
against a real server: login, live ladder and trades, halt/resume with
confirmation, the P2P matrix against the trades table, settlement and
flexibility views, and the refusals (wrong token, feed without the cookie).
Screenshots of the main views are taken on every run; with VOLTBOURSE_UPDATE_SCREENSHOTS=1
they replace docs/screenshots/."""

from __future__ import annotations

import asyncio
import time
from decimal import ROUND_HALF_EVEN, Decimal

import aiohttp
import pytest
from playwright.async_api import expect
from support.keys import KEYS, OPERATOR_TOKEN
from support.page import LAPTOP, PAGE_SERVER, PHONE, cookie_session, login, seed, shot
from support.wsclient import WSClient

from exchange.core.model import OrderAccepted

pytestmark = [pytest.mark.e2e, pytest.mark.server(**PAGE_SERVER)]
TOKEN = OPERATOR_TOKEN


def kwh(wh: int) -> str:
    return f"{Decimal(wh).scaleb(-3):,.3f}"


def eur(money: int) -> str:
    cents = (Decimal(money) / Decimal(10**6)).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return f"{cents.scaleb(-2):,.2f}"


# --------------------------------------------------------------------------- refusals (no browser needed)


async def test_refusals_without_a_session(server):
    base = server.http
    async with aiohttp.ClientSession() as s:
        # the page redirects to the login form; the feed refuses a cookie-less (or bogus-cookie) upgrade
        async with s.get(base + "/operator", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/operator/login"
        for cookies in (None, {"vb_operator": "forged"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(base + "/ws/operator", headers={"Cookie": f"vb_operator={cookies['vb_operator']}"}
                                   if cookies else None)
            assert exc.value.status == 401
        # a peer's credentials are no operator login: the peer WebSocket login does not open the feed
        peer = await WSClient.connect(s, server.url, KEYS[0].key)
        assert (await peer.login())["type"] == "response"
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(base + "/ws/operator")
        assert exc.value.status == 401
        await peer.ws.close()
        # wrong token: refused (JSON and form), no cookie set
        async with s.post(base + "/operator/login", json={"token": "wrong"}) as r:
            assert r.status == 401 and (await r.json())["error"] == "UNAUTHENTICATED"
            assert "vb_operator" not in r.cookies
        async with s.post(base + "/operator/login", data={"token": TOKEN + "x"}) as r:
            assert r.status == 401 and "Wrong operator token" in await r.text()
        # the cookie alone does not authorise the operator REST API without the page header
        async with s.post(base + "/api/operator/market/halt", json={"reason": "x"}) as r:
            assert r.status == 401
    s = await cookie_session(server)
    try:
        cookie = next(c for c in s.cookie_jar if c.key == "vb_operator")
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        # cross-site WebSocket (another Origin) is refused even with the cookie
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(base + "/ws/operator", headers={"Origin": "http://evil.example"})
        assert exc.value.status == 403
        ws = await s.ws_connect(base + "/ws/operator")
        first = await ws.receive_json(timeout=5)
        assert first == {"topic": "hello", "market_id": "page", "timezone": "Europe/Amsterdam"}
        topics = set()
        while "trades" not in topics:
            topics.add((await ws.receive_json(timeout=5))["topic"])
        assert {"market", "members", "products", "book", "p2p", "kpis"} <= topics
        # page header + cookie: the operator REST API answers
        hdr = {"X-Voltbourse-Page": "1"}
        async with s.get(base + "/api/operator/market", headers=hdr) as r:
            assert r.status == 200 and (await r.json())["market_id"] == "page"
        async with s.get(base + "/api/operator/market", headers={**hdr, "Origin": "http://evil.example"}) as r:
            assert r.status == 403
        # logout ends the session and closes its feed socket
        async with s.post(base + "/operator/logout", headers={"Accept": "application/json"}) as r:
            assert r.status == 200
        msg = await ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await ws.receive(timeout=5)
        assert ws.closed
        async with s.get(base + "/operator/session") as r:
            assert r.status == 401
    finally:
        await s.close()


# --------------------------------------------------------------------------- in the browser


async def test_login_and_a_bot_trade_appears_live(server, browser):
    # a wrong token first: refused, still on the login form
    ctx = await browser.new_context(viewport=LAPTOP)
    p0 = await ctx.new_page()
    await p0.goto(server.http + "/operator")
    await p0.fill("#token", "not-the-token")
    await p0.click("#login-submit")
    await p0.wait_for_selector("#login-error")
    assert "Wrong operator token" in await p0.inner_text("#login-error")
    assert p0.url.endswith("/operator/login")
    await shot(p0, "login.png")
    await ctx.close()

    await seed(server)
    page = await login(browser, server)
    pid = server.open_products[7]  # a product the seed left alone
    await page.click(f'#products [data-product-id="{pid}"]')
    await page.wait_for_selector(f'#products [data-product-id="{pid}"][aria-pressed="true"]')
    await page.wait_for_selector("#ladder td.empty")
    async with aiohttp.ClientSession() as http:
        seller = await WSClient.connect(http, server.url, KEYS[0].key)
        buyer = await WSClient.connect(http, server.url, KEYS[1].key)
        await seller.login()
        await buyer.login()
        r = await seller.request({"type": "place", "product_id": pid, "side": "sell", "price": 9_150, "quantity": 1_000})
        assert r["result"]["status"] == "resting", r
        t0 = time.monotonic()
        await page.wait_for_selector('#ladder tr[data-side="ask"][data-price="9150"][data-wh="1000"]', timeout=1000)
        r = await buyer.request({"type": "place", "product_id": pid, "side": "buy", "price": 9_150, "quantity": 400})
        assert r["result"]["status"] == "filled", r
        trade_id = r["result"]["fills"][0]["trade_id"]
        t0 = time.monotonic()
        row = page.locator(f'#trades tr[data-trade-id="{trade_id}"]')
        await row.wait_for(timeout=1000)
        await page.wait_for_selector('#ladder tr[data-side="ask"][data-price="9150"][data-wh="600"]', timeout=1000)
        assert time.monotonic() - t0 < 1.0
        cells = await row.locator("td").all_inner_texts()
        assert cells[2] == "91.50" and cells[3] == "0.400"
        assert "Anna (PV roof) → Bakery Janssen" == cells[4]
        # the product tile shows the last price, the price/volume chart has the trade
        tile = page.locator(f'#products [data-product-id="{pid}"]')
        await expect(tile.locator(".tile-price")).to_have_text("91.50", timeout=2000)
        assert "open" in (await tile.get_attribute("aria-label"))
        await page.wait_for_selector("#pv svg")
        # a second trade on the bid side, then the laptop screenshots
        await buyer.request({"type": "place", "product_id": pid, "side": "buy", "price": 9_000, "quantity": 800})
        await seller.request({"type": "place", "product_id": pid, "side": "sell", "price": 9_000, "quantity": 300})
        await page.wait_for_selector('#ladder tr[data-side="bid"][data-price="9000"][data-wh="500"]', timeout=1000)
    assert not page.js_errors, page.js_errors
    # the screenshots show a product with some depth
    await page.click(f'#products [data-product-id="{server.open_products[1]}"]')
    await page.wait_for_selector('#ladder tr[data-side="bid"]')
    await page.wait_for_selector("#pv svg")
    await shot(page, "laptop-market.png")
    await shot(page, "laptop-overview.png", full_page=True)


async def test_halt_and_resume_from_the_page(server, browser):
    page = await login(browser, server)
    badge = page.locator("#market-state")
    await page.wait_for_selector('#market-state[data-halted="false"]')
    assert await badge.inner_text() == "Trading"
    await page.fill("#halt-reason", "grid incident")
    # cancelling the confirmation changes nothing
    await page.click("#halt-btn")
    await page.wait_for_selector("#confirm[open]")
    assert "grid incident" in await page.inner_text("#confirm-text")
    await page.click("#confirm-cancel")
    await page.wait_for_selector("#action-status.ok")
    assert not server.market.engine.halted
    # confirmed: halted, the badge follows the committed state
    await page.click("#halt-btn")
    await page.wait_for_selector("#confirm[open]")
    await shot(page, "laptop-confirm-halt.png")
    await page.click("#confirm-ok")
    await page.wait_for_selector('#market-state[data-halted="true"]', timeout=2000)
    assert await badge.inner_text() == "Halted: grid incident"
    assert server.market.engine.halted and server.market.engine.halt_reason == "grid incident"
    assert "Market halted" in await page.inner_text("#action-status")
    assert await page.is_disabled("#halt-btn") and await page.is_enabled("#resume-btn")
    # a peer's order is refused while halted
    pid = server.open_products[0]
    async with aiohttp.ClientSession() as http:
        c = await WSClient.connect(http, server.url, KEYS[1].key)
        await c.login()
        r = await c.request({"type": "place", "product_id": pid, "side": "buy", "price": 5_000, "quantity": 100})
        assert r["code"] == "MARKET_HALTED"
    await page.click("#resume-btn")
    await page.wait_for_selector("#confirm[open]")
    await page.click("#confirm-ok")
    await page.wait_for_selector('#market-state[data-halted="false"]', timeout=2000)
    assert not server.market.engine.halted
    assert not page.js_errors, page.js_errors


async def test_p2p_matrix_matches_the_trades(server, browser):
    await seed(server)
    rows = await server.market.pool.fetch(
        "SELECT seller, buyer, sum(energy_wh)::bigint AS wh, sum(energy_wh::numeric * price_ticks) AS money, "
        "count(*) AS n FROM trades WHERE market_id = 'page' GROUP BY seller, buyer")
    assert len(rows) >= 4
    total_wh = sum(r["wh"] for r in rows)
    total_money = sum(int(r["money"]) for r in rows)
    page = await login(browser, server)
    grand = page.locator("#p2p-grand")
    await page.wait_for_selector(f'#p2p-grand[data-wh="{total_wh}"]', timeout=3000)
    assert await grand.get_attribute("data-money") == str(total_money)
    assert await grand.inner_text() == f"{kwh(total_wh)} kWh / {eur(total_money)} EUR"
    for r in rows:
        cell = page.locator(f'td.heat[data-seller="{r["seller"]}"][data-buyer="{r["buyer"]}"]')
        assert await cell.get_attribute("data-wh") == str(r["wh"])
        assert await cell.get_attribute("data-money") == str(int(r["money"]))
        assert f"{kwh(r['wh'])} kWh" in await cell.get_attribute("aria-label")
    for who, key in (("seller", "row"), ("buyer", "col")):
        sums: dict[str, int] = {}
        for r in rows:
            sums[r[who]] = sums.get(r[who], 0) + r["wh"]
        for addr, wh in sums.items():
            tot = page.locator(f'[data-{key}-total="{addr}"]')
            assert await tot.get_attribute("data-wh") == str(wh)
            assert await tot.inner_text() == kwh(wh)
    # KPIs from the same trades
    kpi = page.locator('[data-kpi="traded_energy"] strong')
    assert await kpi.inner_text() == kwh(total_wh)
    traders = {r["seller"] for r in rows} | {r["buyer"] for r in rows}
    assert await page.locator('[data-kpi="members_trading"] strong').inner_text() == f"{len(traders)} / 5"
    # hover/focus shows the numbers; the table alternative lists every pair
    first = page.locator("td.heat[data-tip]").first
    await first.focus()
    await page.wait_for_selector("#p2p-tip:not([hidden])")
    assert "kWh" in await page.inner_text("#p2p-tip") and "EUR" in await page.inner_text("#p2p-tip")
    await shot(page, "laptop-community.png", selector="#community-section")
    await page.click("#p2p-toggle")
    assert await page.locator("#p2p-pairs tbody tr").count() == len(rows)
    assert await page.is_hidden("#p2p-heat")
    assert not page.js_errors, page.js_errors


SETTLEMENT = {
    "batches": [
        {"batch_id": 3, "trade_count": 412, "first_trade_id": 801, "last_trade_id": 1212,
         "root": "0x" + "ab" * 32, "tx_hash": None, "block": None, "state": "prepared", "anchored_at": None},
        {"batch_id": 2, "trade_count": 400, "first_trade_id": 401, "last_trade_id": 800,
         "root": "0x" + "cd" * 32, "tx_hash": "0x" + "12" * 32, "block": 57, "state": "anchored",
         "anchored_at": "2026-11-21T08:01:10+00:00"},
        {"batch_id": 1, "trade_count": 400, "first_trade_id": 1, "last_trade_id": 400,
         "root": "0x" + "ef" * 32, "tx_hash": "0x" + "34" * 32, "block": 41, "state": "anchored",
         "anchored_at": "2026-11-21T08:00:40+00:00"},
    ],
    "last_anchored_block": 57, "pending_trades": 37, "alert": None,
    "reconcile": {"ok": True, "checked_at": "2026-11-21T08:01:30+00:00", "differences": []},
}
FLEX = {
    "offers": [{"member": KEYS[0].address, "product_id": "20261122T1600Z-60", "direction": "up", "power_w": 3_500,
                "price_ticks": 12_000, "duration_min": 60}],
    "events": [], "bids": [], "activations": [], "delivery": [], "shares": [],
}


async def test_phone_width_settlement_flexibility_and_actions(server, browser):
    await seed(server)
    server.clock.set(server.market.engine.products[server.open_products[0]].product.gate_us - 45 * 60 * 10**6)
    page = await login(browser, server, viewport=PHONE)
    # settlement and flexibility: empty states until published, then rendered
    assert "No settlement status" in await page.inner_text("#settlement")
    # (the flexibility service publishes its empty state at start)
    await expect(page.locator('#flex [data-flex="offers"]')).to_contain_text("None yet.")
    server.feed.publish("settlement", SETTLEMENT)
    server.feed.publish("flexibility", FLEX)
    await page.wait_for_selector('#batches tr[data-batch="2"]')
    assert await page.locator("#batches tbody tr").count() == 3
    assert "✓ consistent" in await page.inner_text("#reconcile")
    assert "57" in await page.inner_text("#settlement")
    offers = page.locator('[data-flex="offers"]')
    assert "3.500 kW" in await offers.inner_text() and "120.00 EUR/MWh" in await offers.inner_text()
    assert "Anna (PV roof)" in await offers.inner_text()
    assert "None yet." in await page.inner_text('[data-flex="events"]')
    # an alert and a failed reconciliation show up as such
    server.feed.publish("settlement", {**SETTLEMENT, "alert": "batch 3: transaction reverted",
                                       "reconcile": {"ok": False, "checked_at": "2026-11-21T08:02:00+00:00",
                                                     "differences": ["member 0xabc: chain 5 != ledger 6"]}})
    await page.wait_for_selector("#settlement .alert")
    assert "✗ differences" in await page.inner_text("#reconcile")
    # every product is at hand; the market clock shows the gate coming: "closing soon"
    await page.wait_for_selector('#products [data-display="closing_soon"]', timeout=3000)
    assert await page.locator("#products .tile").count() >= 24
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"horizontal overflow at phone width: {width}px"
    await shot(page, "phone-market.png")
    await shot(page, "phone-overview.png", full_page=True)
    # cancel all of a member's orders, confirmed
    member = KEYS[1].address
    assert any(o.member == member for o in server.market.engine.orders.values())
    await page.select_option("#cancel-member", member)
    await page.click("#cancel-btn")
    await page.wait_for_selector("#confirm[open]")
    assert member in await page.inner_text("#confirm-text")
    await page.click("#confirm-ok")
    await page.wait_for_selector("#action-status.ok", timeout=3000)
    assert "Cancelled" in await page.inner_text("#action-status")
    assert not any(o.member == member for o in server.market.engine.orders.values())
    # a flexibility event: the route's answer (an error until the flexibility service has it) is shown
    await page.fill("#flex-power", "12.5")
    await page.click("#flex-btn")
    await page.wait_for_selector("#confirm[open]")
    assert "12.500 kW" in await page.inner_text("#confirm-text")
    await page.click("#confirm-ok")
    await expect(page.locator("#action-status")).to_contain_text("lexibility event", timeout=3000)
    text = await page.inner_text("#action-status")
    assert "opened" in text or "failed: " in text, text
    await page.locator("#settlement-section").scroll_into_view_if_needed()
    await shot(page, "phone-settlement.png", selector="#settlement-section")
    assert not page.js_errors, page.js_errors


async def test_feed_drops_a_slow_page_and_keeps_last_state(server):
    feed = server.feed
    feed.publish("settlement", SETTLEMENT)
    s = await cookie_session(server)
    try:
        ws = await s.ws_connect(server.http + "/ws/operator")
        seen = {}
        while "settlement" not in seen:
            m = await ws.receive_json(timeout=5)
            seen[m["topic"]] = m
        assert seen["settlement"]["last_anchored_block"] == 57
        # a page that never reads: its queue fills and it is disconnected, the exchange never waits
        (client,) = feed.clients
        client.task.cancel()  # simulate a page that stopped reading
        await asyncio.sleep(0)
        for i in range(feed.queue_size + 10):
            feed.publish("flexibility", {"offers": [{"i": i}]})
        assert client.dropped and client not in feed.clients
        await asyncio.sleep(0.1)
    finally:
        await s.close()


async def test_history_request_and_feed_bootstrap_after_restart(server, pg_dsn):
    """Trades committed before the page connects (and before a restart) are in the feed."""
    pid = server.open_products[0]
    ev = await server.place(0, "sell", 9_000, 1_000, pid)
    assert isinstance(ev[0], OrderAccepted)
    await server.place(1, "buy", 9_000, 250, pid)
    s = await cookie_session(server)
    try:
        ws = await s.ws_connect(server.http + "/ws/operator")
        await ws.send_json({"type": "history", "product_id": pid})
        while True:
            m = await ws.receive_json(timeout=5)
            if m["topic"] == "history":
                break
        assert [t[1:] for t in m["trades"]] == [[9_000, 250]]
    finally:
        await s.close()
    # a fresh app over the same journal loads the committed trades
    from exchange.gateway.feed import OperatorFeed

    feed = OperatorFeed(server.market, server.feed.md, server.feed.registry)
    await feed.start()
    try:
        assert feed.p2p_view()["total_energy_wh"] == 250
        assert feed.kpis_view()["savings_money"] == str(250 * (30_000 - 8_000))
        assert [t["quantity"] for t in feed.recent] == [250]
    finally:
        await feed.stop()
