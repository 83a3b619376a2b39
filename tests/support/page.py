"""Fixtures of the operator page tests: a real server (embedded PostgreSQL, runtime,
the full aiohttp app on 127.0.0.1) and Debian's headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import random
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from eth_account import Account

from exchange.core.model import PlaceOrder, Side
from exchange.gateway.feed import OPERATOR_FEED
from exchange.gateway.keys import MEMBERS
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.members import MemberIn
from exchange.runtime.service import open_market
from exchange.tools.bench import BENCH_T0
from exchange.tools.server import start_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "op-page-secret"
# The test run always takes the screenshots (a view that fails to render fails the test);
# they replace the ones in docs/ only when asked (VOLTBOURSE_UPDATE_SCREENSHOTS=1), so a
# plain `make test` leaves the checkout clean.
SCREENSHOTS = (Path(__file__).resolve().parents[1] / "docs" / "screenshots"
               if os.environ.get("VOLTBOURSE_UPDATE_SCREENSHOTS") == "1"
               else Path(tempfile.gettempdir()) / f"voltbourse-screenshots-{os.getpid()}")
LAPTOP = {"width": 1440, "height": 900}
PHONE = {"width": 390, "height": 844}

KEYS = [Account.from_key(random.Random(f"page-member-{i}").randbytes(32)) for i in range(5)]
NAMES = ["Anna (PV roof)", "Bakery Janssen", "School battery", "De Vries family", "Community hall"]
ROLES = ["prosumer", "consumer", "battery", "consumer", "prosumer"]


class Server:
    def __init__(self, market, runner, settings, clock):
        self.market, self.runner, self.settings, self.clock = market, runner, settings, clock
        host, port = runner.addresses[0][:2]
        self.http = f"http://{host}:{port}"
        self.ws = f"ws://{host}:{port}/ws"
        self.feed = runner.app[OPERATOR_FEED]

    @property
    def open_products(self) -> list[str]:
        return sorted(p for p, pb in self.market.engine.products.items() if pb.state.value == "open")

    async def place(self, i: int, side: str, price: int, qty: int, pid: str) -> list:
        res = await self.market.runtime.submit(PlaceOrder(0, KEYS[i].address, pid, Side(side), price, qty))
        return res.events


@asynccontextmanager
async def running(pg_dsn: str, market_id: str = "page"):
    clock = ManualClock(BENCH_T0)
    settings = load_settings(database_url=pg_dsn, market_id=market_id, operator_token=TOKEN)
    market = await open_market(pg_dsn, settings, clock)
    runner = await start_http(market, settings, "127.0.0.1", 0)
    registry = runner.app[MEMBERS]
    for i, k in enumerate(KEYS):
        await registry.create(MemberIn(address=k.address, name=NAMES[i], role=ROLES[i],
                                       export_capacity_w=10**7 if ROLES[i] != "consumer" else 0,
                                       retail_tariff_ticks=30_000, feed_in_tariff_ticks=8_000, collateral=10**15))
    try:
        yield Server(market, runner, settings, clock)
    finally:
        await runner.cleanup()
        await market.close()


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


async def login(browser, server: Server, viewport=LAPTOP):
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
    await page.fill("#token", TOKEN)
    await page.click("#login-submit")
    await page.wait_for_url("**/operator")
    await page.wait_for_selector("#conn.ok", timeout=5000)
    return page


async def cookie_session(server: Server) -> aiohttp.ClientSession:
    """An HTTP client logged in to the page (JSON login), keeping the session cookie."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.post(server.http + "/operator/login", json={"token": TOKEN}) as r:
        assert r.status == 200, await r.text()
    return s


async def seed(server: Server) -> None:
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
