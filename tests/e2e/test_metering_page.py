"""The metering panel of the operator page in a real headless Chromium against a real
server: it appears through the page's generic subsystem panels (``panel.metering`` on the
operator feed), shows KPIs from meters, a chart with its table alternative, and the issued
bills; on a phone too. Screenshots like the other page tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest
from support.keys import AUTH, KEYS
from support.page import PAGE_SERVER, PHONE, login, shot

from exchange.core.units import iso

pytestmark = [pytest.mark.e2e, pytest.mark.server(**PAGE_SERVER)]
P = "/api/operator/metering"


def kwh1(wh: int) -> str:
    return f"{Decimal(wh).scaleb(-3):.1f}"
DAY = datetime(2026, 11, 20, tzinfo=UTC)


async def _setup(server) -> tuple[int, int]:
    """Points, a tariff and a UTC day of readings for three members: their total consumption
    and the part of it on local (Amsterdam) day 2026-11-20, i.e. before 23:00 UTC (Wh)."""
    rows, total, local = ["point_id,interval_start,energy_wh"], 0, 0
    points = []
    for i in range(3):
        points.append({"point_id": f"m{i}-imp", "member": KEYS[i].address, "kind": "import"})
        for q in range(96):
            wh = 50 + 10 * i + q % 7
            total += wh
            local += wh if q < 92 else 0
            rows.append(f"m{i}-imp,{iso(int((DAY + timedelta(minutes=15 * q)).timestamp()) * 10**6)},{wh}")
    async with aiohttp.ClientSession(base_url=server.http, headers=AUTH) as s:
        async with s.post(f"{P}/points", json={"points": points}) as r:
            assert r.status == 201, await r.text()
        async with s.put(f"{P}/tariffs/default", json={"name": "Retail", "prices": [
                {"valid_from": "2026-01-01T00:00:00Z", "import_ct_per_kwh": "30", "feed_in_ct_per_kwh": "8"}]}) as r:
            assert r.status == 200, await r.text()
        async with s.put(f"{P}/fees", json={"effective_from": "2026-01-01T00:00:00Z", "per_kwh": [
                {"name": "service_fee", "ct_per_kwh": "0.2", "basis": "import", "payee": "community"}]}) as r:
            assert r.status == 200, await r.text()
        async with s.post(f"{P}/readings", data=("\n".join(rows) + "\n").encode(),
                          headers={"Content-Type": "text/csv"}) as r:
            assert r.status == 201, await r.text()
        async with s.post(f"{P}/bills/run", json={"start": iso(int(DAY.timestamp()) * 10**6),
                                                   "end": iso(int((DAY + timedelta(days=1)).timestamp()) * 10**6)}) as r:
            assert r.status == 200, await r.text()
    return total, local


async def test_metering_panel_shows_kpis_chart_table_and_bills(server, browser):
    page = await login(browser, server)
    total, local = await _setup(server)
    panel = page.locator('section[data-panel="panel.metering"]')
    await panel.wait_for(timeout=10_000)
    consumption = panel.locator('[data-card="consumption"] strong')
    await page.wait_for_function(
        "want => document.querySelector('section[data-panel=\"panel.metering\"] [data-card=\"consumption\"] strong')"
        "?.textContent === want", arg=kwh1(total), timeout=10_000)
    assert await consumption.text_content() == kwh1(total)
    assert await panel.locator('[data-card="self_sufficiency"] strong').text_content() == "0.0"
    # the chart and its table alternative
    assert await panel.locator("svg[role=img]").count() == 1
    label = await panel.locator("svg[role=img]").get_attribute("aria-label")
    assert "consumption" in label and "grid import" in label
    day_row = panel.locator('table[data-table="metering-days"] tbody tr', has_text="2026-11-20")
    assert await day_row.locator("td").first.text_content() == kwh1(local)
    bills = panel.locator('table[data-table="metering-bills"] tbody tr')
    assert await bills.count() == 3
    # the nav links to it
    assert await page.locator('#panel-links a[href="#panel-metering"]').count() == 1
    assert page.js_errors == []
    await shot(page, "operator-metering.png", selector='section[data-panel="panel.metering"]')
    # a phone
    phone = await login(browser, server, viewport=PHONE)
    await phone.locator('section[data-panel="panel.metering"] [data-card="consumption"]').wait_for(timeout=10_000)
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] + 1, width  # nothing overflows sideways
    await shot(phone, "operator-metering-phone.png", selector='section[data-panel="panel.metering"]')
    assert phone.js_errors == []
