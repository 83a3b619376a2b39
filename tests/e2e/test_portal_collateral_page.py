"""The portal's "My collateral" view in headless Chromium, with the test wallet, against a real
server with settlement on (in-process EVM, the real worker): after a deposit on chain the page
shows the member's collateral equal to the registry's, the engine's figures (free to trade,
reserved by open orders, unsettled), the deposits and a withdrawal request with its state; it
refreshes after an execution report; on a phone nothing sticks out; without settlement it says
so. Screenshot: docs/screenshots/portal-collateral.png (VOLTBOURSE_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import pytest
from playwright.async_api import expect
from support.keys import KEYS
from support.page import PHONE, shot
from support.server import member
from support.waiting import until as _until
from test_portal_page import close, new_page, sign_in

from settlement.plugin import SETTLEMENT

pytestmark = pytest.mark.e2e

A, B = KEYS[:2]
SETTLED = {"market_id": "portal-coll", "settlement_enabled": True, "settlement_process": "inline", "settlement_poll_s": 0.05,
           "settlement_batch_size": 10_000, "settlement_max_age_s": 3600,
           "members": [member(k, collateral=None) for k in KEYS[:3]], "via": "runtime"}


async def _units(page, sel: str) -> str:
    return await page.locator(sel).get_attribute("data-units")


@pytest.mark.server(**SETTLED)
async def test_the_page_shows_the_collateral_on_chain_after_a_deposit(server, browser, pool):
    worker = server.app[SETTLEMENT]
    chain = worker.chain
    engine = server.market.engine
    page = await sign_in(browser, server)
    await page.click('nav a[href="#collateral-section"]')
    # nothing deposited yet
    await expect(page.locator("#coll-chain")).to_have_attribute("data-units", "0", timeout=10_000)
    await expect(page.locator("#deposits tbody")).to_contain_text("No deposit on chain yet.")

    await worker._chain(chain.fund_member, A, 12_345_678_901_234)  # 123 456.78901234 EUR
    await worker._chain(chain.fund_member, B, 10**13)
    worker.wake()
    await _until(lambda: _true(engine.accounts[A.address].collateral == 12_345_678_901_234))
    on_chain = await worker._chain(chain.collateral, A.address)
    # the 10 s refresh shows it (the section is on screen)
    await expect(page.locator("#coll-chain")).to_have_attribute("data-units", str(on_chain), timeout=15_000)
    await expect(page.locator("#coll-chain .kpi-value")).to_have_text("123,456.79 EUR")
    await expect(page.locator("#deposits tbody tr[data-tx]")).to_have_count(1)
    assert await page.locator("#deposits tbody tr[data-tx]").get_attribute("data-units") == str(on_chain)

    # a trade and a resting buy: the execution report refreshes the engine's figures
    pid = server.open_products[0]
    await server.place(1, "sell", 9_000, 1_000, pid)
    await server.place(0, "buy", 9_000, 1_000, pid)
    await server.place(0, "buy", 8_000, 2_000, pid)
    acct = engine.accounts[A.address]
    await expect(page.locator("#coll-orders")).to_have_attribute("data-units", str(acct.open_exposure), timeout=5_000)
    await expect(page.locator("#coll-unsettled")).to_have_attribute("data-units", str(acct.net_payable))
    await expect(page.locator("#coll-unsettled .kpi-label")).to_have_text("unsettled: you owe")
    free = acct.collateral - acct.open_exposure - max(acct.net_payable, 0)
    await expect(page.locator("#coll-free")).to_have_attribute("data-units", str(free))

    # a withdrawal request on chain: listed with its state once the worker decided it
    await worker._chain(chain.member_transact, A, chain.registry.functions.requestWithdrawal(345_678_901_234))
    worker.wake()
    row = page.locator('#withdrawals tbody tr[data-request-id="1"]')
    await expect(row).to_have_attribute("data-state", "executed", timeout=15_000)
    await expect(row).to_contain_text("paid out")
    await expect(page.locator("#coll-chain")).to_have_attribute(
        "data-units", str(await worker._chain(chain.collateral, A.address)))
    assert await _units(page, "#coll-chain") == str(12 * 10**12)
    # nothing of B's is on A's page
    assert B.address.lower() not in (await page.locator("#collateral-section").inner_text()).lower()
    await shot(page, "portal-collateral.png", selector="#collateral-section")
    await close(page)

    # the phone layout: one column, nothing sticks out of the viewport
    phone = await new_page(browser, server, viewport=PHONE)
    await phone.click("#signin-btn")
    await phone.wait_for_selector("#conn.ok", timeout=10_000)
    await phone.locator("#collateral-section").scroll_into_view_if_needed()
    await expect(phone.locator("#withdrawals tbody tr[data-request-id]")).to_have_count(1, timeout=15_000)
    wide = await phone.evaluate("""() => [...document.querySelectorAll('#collateral-section *')]
        .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll'))
        .map((e) => e.tagName + '#' + e.id + '.' + e.className)""")
    assert wide == [], wide
    await close(phone)


@pytest.mark.server(market_id="portal-coll-off", members=KEYS[:2])
async def test_without_settlement_the_page_says_so(server, browser):
    page = await sign_in(browser, server)
    status = page.locator("#collateral-status")
    await expect(status).to_contain_text("runs without on-chain settlement", timeout=10_000)
    await expect(page.locator("#collateral-body")).to_be_hidden()
    await close(page)


async def _true(x):
    return x
