"""The managed trading agent with the bots' planners (strategies ``prosumer`` and
``battery``, exchange.tools.agent_planners) against a real server: metering's outlook (the
member's own meter readings of the last days and its tariff) is the forecast; the agent
sells no more than the expected surplus, charges a battery in the cheap hours of a
time-of-use tariff and sells only what it stored, all within the signed limits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from support.keys import AUTH, KEYS
from support.times import T0
from test_portal_agent import _call, _enable, _wait
from test_portal_auth import sign_in

from exchange.core.model import OrderDelegated, PlaceOrder, Side
from exchange.core.units import from_us, iso, to_us

pytestmark = [pytest.mark.integration, pytest.mark.server(market_id="planm", members=KEYS[:3])]
A, B, C = KEYS[0], KEYS[1], KEYS[2]
P = "/api/operator/metering"
BASE = {"max_buy_price_eur_mwh": "100", "min_sell_price_eur_mwh": "120", "max_order_kwh": "2",
        "daily_budget_eur": "100", "expires_in_hours": 24}


async def _op(http, server, method: str, path: str, body=None, data: bytes | None = None):
    headers = dict(AUTH) | ({"Content-Type": "text/csv"} if data is not None else {})
    async with http.request(method, server.http + path, json=body, data=data, headers=headers) as r:
        return r.status, await r.json()


async def _history(http, server) -> None:
    """A's meter for the week before T0: 750 Wh exported and 50 Wh imported each quarter-hour
    (a 2 800 Wh surplus an hour); C has an import point; C's tariff is time-of-use."""
    st, body = await _op(http, server, "POST", f"{P}/points", {"points": [
        {"point_id": "A-imp", "member": A.address, "kind": "import"},
        {"point_id": "A-exp", "member": A.address, "kind": "export"},
        {"point_id": "C-imp", "member": C.address, "kind": "import"}]})
    assert st == 201, body
    start = from_us(T0) - timedelta(days=7)
    rows = ["point_id,interval_start,energy_wh"]
    for i in range(7 * 96):
        t = iso(to_us(start + timedelta(minutes=15 * i)))
        rows += [f"A-exp,{t},750", f"A-imp,{t},50", f"C-imp,{t},100"]
    st, body = await _op(http, server, "POST", f"{P}/readings", data=("\n".join(rows) + "\n").encode())
    assert st == 201, body
    flat = [{"valid_from": "2026-01-01T00:00:00Z", "import_ct_per_kwh": "30", "feed_in_ct_per_kwh": "8"}]
    st, body = await _op(http, server, "PUT", f"{P}/tariffs/default", {"name": "Flat", "prices": flat})
    assert st == 200, body
    day = datetime(2026, 11, 21, 23, tzinfo=UTC)  # local day 2026-11-22 (Amsterdam), the open products
    tou = [{"valid_from": "2026-01-01T00:00:00Z", "import_ct_per_kwh": "20", "feed_in_ct_per_kwh": "8"}]
    for h, ct in ((0, "10"), (6, "20"), (17, "40"), (21, "20")):
        tou.append({"valid_from": iso(to_us(day + timedelta(hours=h))), "import_ct_per_kwh": ct,
                    "feed_in_ct_per_kwh": "8"})
    st, body = await _op(http, server, "PUT", f"{P}/tariffs/tou", {"name": "Time of use", "prices": tou})
    assert st == 200, body
    st, body = await _op(http, server, "PUT", f"{P}/members/{C.address}/tariff",
                         {"effective_from": "2026-01-01T00:00:00Z", "tariff_id": "tou"})
    assert st == 200, body


def _mine(server, member: str):
    return [o for o in server.market.engine.orders.values() if o.member == member]


def _local_hour(server, pid: str) -> int:
    pb = server.market.engine.products[pid]
    return from_us(pb.product.start_us).astimezone(server.settings.tz).hour


async def test_the_prosumer_agent_sells_its_forecast_surplus_and_no_more(server, http):
    await _history(http, server)
    sid, csrf, typed, st, body = await _enable(http, server, A, {**BASE, "strategy": "prosumer"})
    assert st == 201 and body["active"], body
    assert {"limits", "prosumer", "battery"} <= set(body["strategies"])
    a = A.address
    assert await _wait(lambda: len(_mine(server, a)) >= 10)
    mine = _mine(server, a)
    # a surplus every hour: sells only, 2 kWh each (its max order), at or above its floor and the feed-in
    assert all(o.side is Side.SELL and o.remaining == 2_000 and o.price >= 12_000 for o in mine)
    pid = mine[0].product_id
    price = mine[0].price
    # B buys 1.5 kWh: the rest of the order stays as it is (its time priority kept), 1.3 kWh of
    # the 2.8 kWh surplus are left to sell
    res = await server.market.runtime.submit(PlaceOrder(0, B.address, pid, Side.BUY, price, 1_500))
    assert any(e.type == "trade" and e.seller == a for e in res.events)
    rest = next(o for o in _mine(server, a) if o.product_id == pid)

    def resting_in(p):
        return sorted(o.remaining for o in _mine(server, a) if o.product_id == p)

    await asyncio.sleep(1.5)
    assert resting_in(pid) == [500] and server.market.engine.orders.get(rest.order_id) is rest
    # B takes everything there: A sold exactly its forecast surplus, and the agent rests nothing more
    await server.market.runtime.submit(PlaceOrder(0, B.address, pid, Side.BUY, 30_000, 5_000))
    await asyncio.sleep(2.5)
    assert server.market.engine.position(pid, a)[1] == 2_800 and resting_in(pid) == []
    rows = await server.market.pool.fetch("SELECT events FROM journal WHERE market_id = 'planm'")
    delegated = {e["order_id"] for r in rows for e in r["events"] if e["type"] == OrderDelegated.type}
    assert {o.order_id for o in _mine(server, a)} <= delegated
    st, status = await _call(http, server, "GET", "/portal/agent", sid, None)
    assert status["active"] and status["note"] is None and status["delegation"]["limits"]["strategy"] == "prosumer"


async def test_the_battery_agent_charges_cheap_and_sells_dear_only_what_it_stored(server, http):
    await _history(http, server)
    limits = {**BASE, "strategy": "battery", "max_buy_price_eur_mwh": "150", "min_sell_price_eur_mwh": "250",
              "max_order_kwh": "5", "battery_capacity_kwh": "10", "battery_power_kw": "5",
              "battery_reserve_kwh": "2"}
    sid, csrf, typed, st, body = await _enable(http, server, C, limits)
    assert st == 201 and body["active"], body
    c = C.address
    assert await _wait(lambda: len(_mine(server, c)) >= 1)
    await asyncio.sleep(1.5)
    buys = _mine(server, c)
    # buys only (nothing stored yet), in the cheap hours (00-06 local), at the tariff there (10 ct)
    assert buys and all(o.side is Side.BUY and _local_hour(server, o.product_id) < 6 and o.price == 10_000
                        for o in buys)
    assert sum(o.remaining for o in buys) * 9 // 10 <= 8_000  # room between the reserve and the capacity
    # B sells into every charge: the battery is full; now it sells in the dear hours (17-21 local)
    for o in buys:
        await server.market.runtime.submit(PlaceOrder(0, B.address, o.product_id, Side.SELL, 10_000, o.remaining))
    stored = sum(server.market.engine.position(o.product_id, c)[0] for o in buys) * 9 // 10
    assert await _wait(lambda: any(o.side is Side.SELL for o in _mine(server, c)))
    await asyncio.sleep(1.5)
    sells = _mine(server, c)
    assert sells and all(o.side is Side.SELL and 17 <= _local_hour(server, o.product_id) < 21 and
                         o.price == 40_000 for o in sells)
    assert sum(o.remaining for o in sells) <= stored
    # revoke: it stops and its orders go
    st, rev = await _call(http, server, "DELETE", "/portal/agent", sid, csrf)
    assert st == 200 and rev["cancelled_orders"] == len(sells) and not _mine(server, c)


async def test_a_battery_strategy_without_a_battery_is_refused(server, http):
    sid, login = await sign_in(http, server, A)
    st, body = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"],
                           {**BASE, "strategy": "battery"})
    assert st == 422 and "capacity and power" in body["message"]
    st, body = await _call(http, server, "POST", "/portal/agent/prepare", sid, login["csrf_token"],
                           {**BASE, "strategy": "martingale"})
    assert st == 422
