"""The Communities panel's "Change…" form, in Debian's headless Chromium against a real
deployment: rename a community (at once), change the settings its services read (behind the
confirmation dialog; the market restarts, its state kept), and the server's refusals shown as
they are, with their request id, changing nothing (an engine rule of a started community:
SETTING_FIXED; a bad value: INVALID_REQUEST). Screenshot docs/screenshots/operator-community-change.png."""

from __future__ import annotations

import aiohttp
import pytest
from playwright.async_api import expect
from support.keys import AUTH, OPERATOR_TOKEN
from support.page import LAPTOP, PHONE, shot
from support.times import T0

from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.tools.server import start_deployment

pytestmark = pytest.mark.e2e

ROOT = "root"


@pytest.fixture
async def platform(pool, pg_dsn):
    settings = load_settings(database_url=pg_dsn, market_id=ROOT, operator_token=OPERATOR_TOKEN)
    d = await start_deployment(pg_dsn, settings, "127.0.0.1", 0, clock=ManualClock(T0))
    try:
        base = f"http://127.0.0.1:{d.port}"
        async with aiohttp.ClientSession() as http:
            for mid, rules in (("a", {}), ("b", {"gate": "rolling", "mechanism": "call_then_continuous"})):
                async with http.post(f"{base}/api/platform/markets", headers=AUTH, json={
                        "market_id": mid, "name": f"Community {mid.upper()}", "settings": rules}) as r:
                    assert r.status == 201, await r.text()
        yield d, base
    finally:
        await d.close()


async def open_change(page, market_id: str) -> None:
    await page.click(f'#platform-markets tr[data-market-id="{market_id}"] button[data-action="change"]')
    await expect(page.locator("#platform-edit")).to_be_visible()
    await expect(page.locator("#edit-market-id")).to_have_text(market_id)


async def test_change_a_community_from_the_panel(platform, browser, pool):
    d, base = platform
    ctx = await browser.new_context(viewport=LAPTOP)
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(base + "/operator")
    await page.fill("#token", OPERATOR_TOKEN)
    await page.click("#login-submit")
    await page.wait_for_url("**/operator")
    await expect(page.locator("#platform-section")).to_be_visible()
    assert await page.locator(f'#platform-markets tr[data-market-id="{ROOT}"] button').count() == 0
    status = page.locator("#platform-status")
    err = page.locator("#platform-edit-error")
    a_row = page.locator('#platform-markets tr[data-market-id="a"]')

    # a name only: at once, no dialog, no restart
    await open_change(page, "a")
    assert await page.input_value("#edit-market-name") == "Community A"
    await expect(page.locator("#edit-fixed")).to_contain_text("Fixed once the community has started")
    before = d.platform.tenants["a"]
    await page.fill("#edit-market-name", "Alpine cooperative")
    await page.click("#platform-edit-btn")
    await expect(status).to_have_text("Community a updated (no setting changed).")
    await expect(page.locator("#platform-edit")).to_be_hidden()
    await expect(a_row.locator("td").first).to_have_text("Alpine cooperative")
    assert d.platform.tenants["a"] is before

    # a bad value: the server's refusal, as it is, with its request id; the form keeps it
    await open_change(page, "a")
    await page.fill("#edit-settlement-batch", "many")
    await page.click("#platform-edit-btn")
    await page.click("#confirm-ok")
    await expect(err).to_contain_text("Community a was not changed: 422 INVALID_REQUEST")
    await expect(err).to_contain_text("settlement_batch_size")
    await expect(err).to_contain_text("(request ")
    assert await page.input_value("#edit-settlement-batch") == "many"

    # the confirmation dialog: cancelled, nothing changes
    await page.fill("#edit-settlement-batch", "500")
    await page.click("#platform-edit-btn")
    await page.wait_for_selector("#confirm[open]")
    assert "restarts" in await page.inner_text("#confirm-text")
    await page.click("#confirm-cancel")
    await expect(status).to_have_text("Cancelled: nothing was changed.")
    assert (await pool.fetchval("SELECT overrides FROM platform_markets WHERE market_id = 'a'")) == {}

    # confirmed: stored, the market restarted with it, its state kept
    state = d.platform.tenants["a"].market.engine.state_hash()
    await page.fill("#edit-settlement-age", "2.5")
    await page.click("#platform-edit-btn")
    await page.click("#confirm-ok")
    await expect(status).to_have_text("Community a updated (settings changed: settlement_batch_size, "
                                      "settlement_max_age_s; its market restarted).")
    await expect(a_row.locator("td.small")).to_contain_text("settlement_batch_size=500")
    await expect(a_row.locator("td.small")).to_contain_text("settlement_max_age_s=2.5")
    t = d.platform.tenants["a"]
    assert t.settings.settlement_batch_size == 500 and t.market.engine.state_hash() == state
    assert (await pool.fetchval("SELECT overrides FROM platform_markets WHERE market_id = 'a'")) == {
        "settlement_batch_size": 500, "settlement_max_age_s": 2.5}

    # a started community's trading rules stay: the precise refusal; emptied field resets
    await open_change(page, "b")
    await page.select_option("#edit-disclose", "true")
    await page.click("#platform-edit-btn")
    await page.click("#confirm-ok")
    await expect(err).to_contain_text("409 SETTING_FIXED: market b has started: disclose_counterparty may only be "
                                      "turned off")
    await shot(page, "operator-community-change.png", selector="#platform-section")
    await page.select_option("#edit-disclose", "")
    await page.click("#platform-edit-btn")
    await expect(status).to_have_text("Community b: nothing to change.")
    await page.click("#platform-edit-cancel")
    await expect(page.locator("#platform-edit")).to_be_hidden()
    await open_change(page, "a")
    assert await page.input_value("#edit-settlement-batch") == "500"
    await page.fill("#edit-settlement-age", "")
    await page.click("#platform-edit-btn")
    await page.click("#confirm-ok")
    await expect(status).to_have_text("Community a updated (settings changed: settlement_max_age_s; its market "
                                      "restarted).")
    assert d.platform.tenants["a"].record.overrides == {"settlement_batch_size": 500}

    # phone: the form fits
    await page.set_viewport_size(PHONE)
    await open_change(page, "b")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] + 1, width
    assert errors == []
    await ctx.close()
