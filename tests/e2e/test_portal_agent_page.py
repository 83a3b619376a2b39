"""The portal's "My agent" view in a real headless Chromium against a real server, with the
test wallet (tests/support/wallet.py: real EIP-712 signatures): the member types limits,
reviews exactly what will be signed, signs the Delegation in the wallet and the platform's
agent rests orders within those limits (checked in the engine); another member's sell below
the cap trades with the agent's bid and shows in the page's "My trades"; "Revoke now" (after
a confirmation) stops the agent and leaves no resting order, and none is placed afterwards;
refusals are shown precisely (the page's own exact parsing, the exchange's 422 for a floor
below the cap, a declined signature, a prepared delegation that differs from what was typed);
the phone layout has no horizontal scroll. The page module's exact decimals are checked
against Python's Decimal. Screenshots docs/screenshots/portal-agent*.png (with
VOLTBOURSE_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from playwright.async_api import expect
from support.keys import KEYS
from support.page import PHONE, shot
from test_portal_page import close, new_page, sign_in

from exchange.core.model import OrderDelegated, PlaceOrder, Side
from exchange.core.units import from_us

MARKET = "agentpage"
pytestmark = [pytest.mark.e2e, pytest.mark.server(market_id=MARKET, members=KEYS[:3])]

A, B = KEYS[0], KEYS[1]
CAP, FLOOR, MAX_WH = 9_500, 14_000, 2_000  # what the limits below mean in ticks and Wh
BUDGET_UNITS = 100_000_000  # 1 EUR in 1e-8 EUR


def agent_orders(server, member: str = A.address) -> list:
    return [o for o in server.market.engine.orders.values() if o.member == member]


def local_hour(server, pid: str) -> int:
    start_us = server.market.engine.products[pid].product.start_us
    return from_us(start_us).astimezone(server.settings.tz).hour


async def until(pred, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def delegated_events(server) -> list[dict]:
    rows = await server.market.pool.fetch("SELECT events FROM journal WHERE market_id = $1", MARKET)
    return [e for r in rows for e in r["events"] if e["type"] == OrderDelegated.type]


async def fill_limits(page, buy="95", sell="140", max_kwh="2", budget="1", reserve="0", hours=(), expiry="24"):
    await page.locator("#agent-section").scroll_into_view_if_needed()
    await page.fill("#ag-buy", buy)
    await page.fill("#ag-sell", sell)
    await page.fill("#ag-max", max_kwh)
    await page.fill("#ag-budget", budget)
    await page.fill("#ag-reserve", reserve)
    await page.fill("#ag-expiry", expiry)
    for h in range(24):
        await page.locator(f"#ag-hour-{h}").set_checked(h in hours)


def typed_signed(page) -> list:
    return [s for s in page.wallet.signed if s.method == "eth_signTypedData_v4"]


# --------------------------------------------------------------------------- the module's exact units


async def test_the_agent_module_parses_exactly(server, browser):
    page = await new_page(browser, server, wallet=False)
    cases = [("95", "140", "2", "1", "0"), ("95.5", "140.05", "0.001", "0.00000001", "12.345"),
             ("0", "0.01", "1000000", "90000000", ""), ("95.001", "140", "2", "1", "0"),
             ("95", "-1", "2", "1", "0"), ("95", "140", "0", "1", "0"), ("95", "140", "2.0005", "1", "0"),
             ("95", "140", "2", "1.000000001", "0"), ("1e3", "140", "2", "1", "0"), ("1000000000", "1", "1", "1", "1")]
    got = await page.evaluate("""async (cases) => {
        const a = await import('/portal/static/agent.js');
        return cases.map(([buy, sell, max, budget, reserve]) => {
            const r = a.limitsFromForm({buy, sell, max, budget, reserve, expiry: "24", hours: [5, 3, 3]});
            return r.errors ? {errors: r.errors.map((e) => e.field + ': ' + e.message)}
                            : {body: r.body, values: Object.fromEntries(Object.entries(r.values)
                                                                         .map(([k, v]) => [k, v.toString()]))};
        });
    }""", [list(c) for c in cases])
    for (buy, sell, max_kwh, budget, reserve), r in zip(cases[:3], got[:3], strict=True):
        reserve = reserve or "0"
        assert r["body"]["excluded_hours"] == [3, 5] and r["body"]["expires_in_hours"] == 24
        # the decimal strings sent are exactly what was typed, and the integers the delegation must carry
        for key, text, scale, vkey in (("max_buy_price_eur_mwh", buy, 100, "buy"),
                                       ("min_sell_price_eur_mwh", sell, 100, "sell"),
                                       ("max_order_kwh", max_kwh, 1000, "max"),
                                       ("daily_budget_eur", budget, 10**8, "budget"),
                                       ("battery_reserve_kwh", reserve, 1000, "reserve")):
            assert Decimal(r["body"][key]) == Decimal(text)
            assert int(r["values"][vkey]) == Decimal(text) * scale
    errors = [r["errors"] for r in got[3:]]
    assert errors == [
        ["buy: Buy price cap: at most 2 decimals (the unit is 0.01 EUR/MWh)"],
        ["sell: Sell price floor cannot be negative"],
        ["max: Largest order must be at least 0.001 kWh (1 Wh)"],
        ["max: Largest order: at most 3 decimals (the unit is 1 Wh = 0.001 kWh)"],
        ["budget: Daily budget: at most 8 decimals (the unit is 0.00000001 EUR)"],
        ["buy: Buy price cap: enter a plain decimal number, like 95.50"],
        ["buy: Buy price cap is too large (at most 9 digits before the decimal point)"],
    ]
    shown = await page.evaluate("""async () => {
        const a = await import('/portal/static/agent.js');
        return [a.eurExact(100000000), a.eurExact('12345678'), a.eurExact(150000000), a.decimalText(9550n, 2)];
    }""")
    assert shown == ["1.00", "0.12345678", "1.50", "95.5"]
    await close(page)


# --------------------------------------------------------------------------- enable, trade, revoke


async def test_enable_the_agent_see_it_trade_and_revoke_it(server, browser):
    pids = server.open_products
    excluded = local_hour(server, pids[0])  # the agent must leave the first open hour alone
    page = await sign_in(browser, server)
    await page.locator("#agent-section").scroll_into_view_if_needed()
    await expect(page.locator("#agent-state")).to_have_text("Off")
    status = await (await page.request.get(server.http + "/portal/agent")).json()
    await expect(page.locator("#agent-summary")).to_contain_text(status["agent"])
    await expect(page.locator("#agent-revoke")).to_be_hidden()

    await fill_limits(page, hours=(excluded,))
    await page.click("#ag-review")
    # the review shows what will be signed, in the member's units; nothing is signed yet
    review = page.locator("#ag-review-list")
    await expect(review).to_be_visible()
    for text in ("95.00 EUR/MWh", "140.00 EUR/MWh", "2.000 kWh", "1.00 EUR", "0.000 kWh", status["agent"],
                 f"{excluded:02d}:00–{(excluded + 1) % 24:02d}:00"):
        await expect(review).to_contain_text(text)
    assert typed_signed(page) == []
    await page.click("#ag-sign")
    await expect(page.locator("#agent-state")).to_have_text("Active", timeout=10_000)
    await expect(page.locator("#ag-result")).to_contain_text("The agent is on")
    typed = typed_signed(page)[-1].payload
    assert typed["primaryType"] == "Delegation"
    m = typed["message"]
    assert (m["market"], m["delegate"], m["strategy"], m["maxBuyPrice"], m["minSellPrice"], m["maxOrderWh"],
            m["dailyBudget"], m["batteryReserveWh"], m["excludedHours"]) == (
        MARKET, status["agent"], "limits", CAP, FLOOR, MAX_WH, BUDGET_UNITS, 0, str(excluded))

    # the agent's orders, in the engine: within the limits, none in the excluded hour
    await until(lambda: len(agent_orders(server)) >= 4)
    mine = agent_orders(server)
    assert all(o.price == CAP if o.side is Side.BUY else o.price == FLOOR for o in mine), mine
    assert all(0 < o.remaining <= MAX_WH for o in mine)
    assert all(local_hour(server, o.product_id) != excluded for o in mine)
    assert pids[0] not in {o.product_id for o in mine}
    # ... placed under the delegation (the journal's order_delegated events)
    st = await (await page.request.get(server.http + "/portal/agent")).json()
    delegation_id = st["delegation"]["delegation_id"]
    events = await delegated_events(server)
    assert events and all(e["delegation"] == delegation_id and e["member"] == A.address for e in events)
    # ... and on the page: the status lists them, "My open orders" marks them
    await expect(page.locator("#agent-orders tbody tr[data-order-id]")).to_have_count(len(st["orders"]),
                                                                                     timeout=10_000)
    await expect(page.locator("#agent-summary")).to_contain_text(delegation_id)
    await expect(page.locator("#orders tbody")).to_contain_text("(agent)")

    # another member sells below the cap: it trades with the agent's bid, at the bid's price
    bid = next(o for o in mine if o.side is Side.BUY)
    res = await server.market.runtime.submit(PlaceOrder(0, B.address, bid.product_id, Side.SELL, 9_000, 1_000))
    trades = [e for e in res.events if e.type == "trade"]
    assert len(trades) == 1 and trades[0].buyer == A.address and trades[0].price == CAP
    row = page.locator("#my-trades tbody tr[data-trade-id]")
    await expect(row).to_have_count(1, timeout=10_000)
    await expect(row).to_contain_text("95.00")
    await expect(row).to_contain_text("1.000")
    await expect(row).to_contain_text("buy")
    # the agent's bid is half filled: 2 kWh placed, 1 kWh still open
    bid_row = page.locator(f'#agent-orders tr[data-order-id="{bid.order_id}"]')
    await expect(bid_row.locator("td").nth(4)).to_have_text("2.000")
    await expect(bid_row.locator("td").nth(5)).to_have_text("1.000", timeout=10_000)
    # spending today stays within the budget (buys are counted at their full limit value)
    st = await (await page.request.get(server.http + "/portal/agent")).json()
    assert 0 < int(st["spent_today_units"]) <= BUDGET_UNITS
    await expect(page.locator("#agent-summary")).to_contain_text("Spent today")
    await page.wait_for_timeout(3_500)  # one refresh of the status view
    await shot(page, "portal-agent.png", selector="#agent-section")

    # "Revoke now" asks first; "Keep it on" changes nothing
    await page.click("#agent-revoke")
    await expect(page.locator("#agent-confirm")).to_be_visible()
    await page.click("#agent-confirm-cancel")
    await expect(page.locator("#ag-result")).to_contain_text("Not revoked")
    assert agent_orders(server)
    # ... then revoke: the agent stops, its orders are cancelled
    await page.click("#agent-revoke")
    await page.click("#agent-confirm-ok")
    await expect(page.locator("#ag-result")).to_contain_text("Revoked: the agent stopped")
    await expect(page.locator("#agent-state")).to_have_text("Off")
    assert agent_orders(server) == []
    n = len(await delegated_events(server))
    await asyncio.sleep(2.5)  # two and a half agent periods: nothing new
    assert agent_orders(server) == []
    assert len(await delegated_events(server)) == n
    await expect(page.locator("#agent-orders tbody tr[data-order-id]")).to_have_count(0)
    await expect(page.locator("#orders tbody tr[data-order-id]")).to_have_count(0)
    await expect(page.locator("#my-trades tbody tr[data-trade-id]")).to_have_count(1)  # the trade stays
    await close(page)


async def test_new_limits_replace_the_old_orders(server, browser):
    """Signing new limits while the agent is on: the page revokes the old delegation first, so
    no order placed under the old (wider) limits keeps resting."""
    page = await sign_in(browser, server)
    await fill_limits(page)
    await page.click("#ag-review")
    await expect(page.locator("#ag-replace-note")).to_be_hidden()
    await page.click("#ag-sign")
    await expect(page.locator("#agent-state")).to_have_text("Active", timeout=10_000)
    await until(lambda: len(agent_orders(server)) >= 8)
    first = (await (await page.request.get(server.http + "/portal/agent")).json())["delegation"]["delegation_id"]
    # a lower cap, a higher floor, a smaller order (and more budget: the day's buys so far still count)
    await fill_limits(page, buy="90", sell="150.5", max_kwh="1.25", budget="5")
    await page.click("#ag-review")
    await expect(page.locator("#ag-replace-note")).to_be_visible()
    await expect(page.locator("#ag-review-list")).to_contain_text("90.00 EUR/MWh")
    await page.click("#ag-sign")
    await expect(page.locator("#ag-result")).to_contain_text("The agent is on", timeout=10_000)
    st = await (await page.request.get(server.http + "/portal/agent")).json()
    assert st["active"] and st["delegation"]["delegation_id"] != first
    await until(lambda: len(agent_orders(server)) >= 8)
    mine = agent_orders(server)
    assert {(o.side, o.price, o.remaining) for o in mine} == {(Side.BUY, 9_000, 1_250), (Side.SELL, 15_050, 1_250)}
    await expect(page.locator("#agent-summary")).to_contain_text("150.50 EUR/MWh")
    await close(page)


# --------------------------------------------------------------------------- refusals


async def test_refusals_are_shown_precisely(server, browser):
    page = await sign_in(browser, server)
    prepares: list[str] = []
    page.on("request", lambda r: prepares.append(r.url) if r.url.endswith("/portal/agent/prepare") else None)
    errors = page.locator("#ag-errors")

    # the page's own exact parsing: too many decimals, before anything reaches the exchange
    await fill_limits(page, buy="95.001", max_kwh="0")
    await page.click("#ag-review")
    await expect(errors).to_contain_text("Buy price cap: at most 2 decimals (the unit is 0.01 EUR/MWh).")
    await expect(errors).to_contain_text("Largest order must be at least 0.001 kWh (1 Wh).")
    await expect(page.locator("#ag-buy")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#ag-sell")).to_have_attribute("aria-invalid", "false")
    assert prepares == []

    # the exchange's refusal: the sell floor below the buy cap
    await fill_limits(page, buy="95", sell="90")
    await page.click("#ag-review")
    await expect(errors).to_contain_text("AGENT_DELEGATION_INVALID")
    await expect(errors).to_contain_text("the sell floor must be above the buy cap (the agent would trade with itself)")
    await expect(page.locator("#ag-result")).to_contain_text("the exchange refused these limits")
    await expect(page.locator("#ag-sell")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#ag-review-box")).to_be_hidden()
    assert len(prepares) == 1

    # declined in the wallet
    await fill_limits(page)
    await page.click("#ag-review")
    await expect(errors).to_be_hidden()
    page.wallet.refuse = True
    await page.click("#ag-sign")
    await expect(page.locator("#ag-result")).to_contain_text("You declined the delegation signature")
    page.wallet.refuse = False
    await expect(page.locator("#agent-state")).to_have_text("Off")

    # a prepared delegation that says something else than what was typed is never signed
    async def raise_cap(route):
        resp = await route.fetch()
        body = await resp.json()
        body["typed_data"]["message"]["maxBuyPrice"] = 12_000
        await route.fulfill(response=resp, json=body)
    await page.route("**/portal/agent/prepare", raise_cap)
    await page.click("#ag-review")
    await expect(errors).to_contain_text("differs from your limits (maxBuyPrice 12000, typed 9500)")
    await expect(page.locator("#ag-review-box")).to_be_hidden()
    await page.unroute("**/portal/agent/prepare")
    assert typed_signed(page) == []
    await asyncio.sleep(1.2)
    assert agent_orders(server) == []
    await expect(page.locator("#agent-state")).to_have_text("Off")
    await close(page)


async def test_choose_the_battery_strategy_from_the_page(server, browser):
    """The strategy and the battery are part of what is signed; the page refuses a battery
    strategy without a battery itself, and the status says plainly why the agent rests
    nothing (no tariff or prices that vary over the day here)."""
    page = await sign_in(browser, server)
    prepares: list[str] = []
    page.on("request", lambda r: prepares.append(r.url) if r.url.endswith("/portal/agent/prepare") else None)
    await fill_limits(page, sell="250", reserve="2")
    await page.select_option("#ag-strategy", "battery")
    await page.click("#ag-review")
    await expect(page.locator("#ag-errors")).to_contain_text("The battery strategy needs your battery's capacity "
                                                             "and power")
    await expect(page.locator("#ag-capacity")).to_have_attribute("aria-invalid", "true")
    assert prepares == []
    await page.fill("#ag-capacity", "10")
    await page.fill("#ag-power", "5")
    await page.click("#ag-review")
    review = page.locator("#ag-review-list")
    await expect(review).to_contain_text("battery: charges in the cheap hours")
    await expect(review).to_contain_text("10.000 kWh, 5.000 kW")
    await page.click("#ag-sign")
    await expect(page.locator("#agent-state")).to_have_text("Active", timeout=10_000)
    m = typed_signed(page)[-1].payload["message"]
    assert (m["strategy"], m["batteryCapacityWh"], m["batteryPowerW"], m["batteryReserveWh"]) == (
        "battery", 10_000, 5_000, 2_000)
    await expect(page.locator("#agent-summary")).to_contain_text("no price differences over the day",
                                                                 timeout=10_000)
    assert agent_orders(server) == []
    await close(page)


# --------------------------------------------------------------------------- phone


async def test_phone_layout_of_my_agent(server, browser):
    page = await sign_in(browser, server, viewport=PHONE)
    await page.click('.tabs a[href="#agent-section"]')
    await fill_limits(page, buy="92.5", sell="150", max_kwh="1.5", budget="2.50", reserve="3", hours=(2, 3, 22, 23))
    await page.click("#ag-review")
    await expect(page.locator("#ag-review-box")).to_be_visible()
    await page.click("#ag-sign")
    await expect(page.locator("#agent-state")).to_have_text("Active", timeout=10_000)
    await until(lambda: len(agent_orders(server)) >= 2)
    await expect(page.locator("#agent-orders tbody tr[data-order-id]").first).to_be_visible(timeout=10_000)
    wide = await page.evaluate("""() => [...document.querySelectorAll('#agent-section *')]
        .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll'))
        .map((e) => e.tagName + '#' + e.id + '.' + e.className)""")
    assert wide == [], wide
    width = await page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth]")
    assert max(width) <= PHONE["width"], width
    # the hour toggles are real checkboxes in a fieldset with a legend
    assert await page.locator("#ag-hours legend").inner_text() == "Hours the agent leaves alone"
    await expect(page.locator("#ag-hour-3")).to_be_checked()
    await shot(page, "portal-agent-phone.png", selector="#agent-section")
    await close(page)
