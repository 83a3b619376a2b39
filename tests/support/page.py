"""The operator page tests' pieces: Debian's headless Chromium driven by Playwright, the
page's members, login, screenshots and a seeded market. (The server is the ``server``
fixture with ``PAGE_SERVER``'s options; the browser is the ``browser`` fixture of
tests/e2e/conftest.py.)"""

from __future__ import annotations

import os
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from support.keys import KEYS, OPERATOR_TOKEN
from support.paths import DOCS
from support.server import Member, TestServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The test run always takes the screenshots (a view that fails to render fails the test);
# they replace the ones in docs/ only when asked (VOLTBOURSE_UPDATE_SCREENSHOTS=1), so a
# plain `make test` leaves the checkout clean.
SCREENSHOTS = (DOCS / "screenshots"
               if os.environ.get("VOLTBOURSE_UPDATE_SCREENSHOTS") == "1"
               else Path(tempfile.gettempdir()) / f"voltbourse-screenshots-{os.getpid()}")
LAPTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

NAMES = ["Anna (PV roof)", "Bakery Janssen", "School battery", "De Vries family", "Community hall"]
ROLES = ["prosumer", "consumer", "battery", "consumer", "prosumer"]
MEMBERS = [Member(KEYS[i], role=ROLES[i], name=NAMES[i], export_capacity_w=10**7 if ROLES[i] != "consumer" else 0)
           for i in range(5)]
# the options of the page tests' server: registered as an operator would, with names and roles
PAGE_SERVER = {"market_id": "page", "members": MEMBERS, "via": "operator"}


@asynccontextmanager
async def chromium():
    """Debian's Chromium under Playwright; fails (never skips) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium package "
                    "(apt-get install chromium); nothing downloads a browser")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def login(browser, server: TestServer, viewport=LAPTOP):
    """A new browser page logged in to the operator page, with the feed live."""
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # console errors, except the browser's own note on an HTTP error answer (the page shows those)
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.js_errors = errors
    await page.goto(server.http + "/operator")
    assert page.url.endswith("/operator/login")
    await page.fill("#token", OPERATOR_TOKEN)
    await page.click("#login-submit")
    await page.wait_for_url("**/operator")
    await page.wait_for_selector("#conn.ok", timeout=5000)
    return page


async def shot(page, name: str, full_page: bool = False, selector: str | None = None) -> None:
    """A screenshot into SCREENSHOTS (docs/screenshots/ only when asked)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.wait_for_timeout(150)  # let the last frame render
    if selector:
        await page.locator(selector).screenshot(path=str(SCREENSHOTS / name))
    else:
        await page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


async def cookie_session(server: TestServer) -> aiohttp.ClientSession:
    """An HTTP client logged in to the page (JSON login), keeping the session cookie."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.post(server.http + "/operator/login", json={"token": OPERATOR_TOKEN}) as r:
        assert r.status == 200, await r.text()
    return s


async def seed(server: TestServer) -> None:
    """Resting orders on a few products and trades between several members."""
    pids = server.open_products
    for k, pid in enumerate(pids[:6]):
        base = 8_000 + 350 * k
        for j in range(4):
            await server.place(j % 5, "buy", base - 150 * (j + 1), 500 + 250 * j, pid)
            await server.place((0, 2, 4)[j % 3], "sell", base + 150 * (j + 1), 400 + 300 * j, pid)
        # trades: sellers hit by buyers at a few prices
        await server.place(0, "sell", base, 1_200 + 100 * k, pid)
        await server.place(1, "buy", base, 700, pid)
        await server.place(3, "buy", base + 10, 500 + 100 * k, pid)
        await server.place(4, "sell", base - 50, 900, pid)
        await server.place(2, "buy", base, 600, pid)
    # explicit pairs on a product of their own (each sell fully taken by its buy)
    pid = pids[6]
    for n, (s, b, qty) in enumerate([(2, 1, 800), (4, 3, 1_500), (0, 4, 650), (2, 0, 300), (4, 1, 2_200)]):
        await server.place(s, "sell", 7_000 + 100 * n, qty, pid)
        await server.place(b, "buy", 7_000 + 100 * n, qty, pid)
