"""Two communities with different rules trading at once on one server (issue 15): "roll"
trades continuously up to a rolling gate, "auction" collects orders for a day-ahead uniform
price auction at D-1 12:00 and trades continuously after it. Peers of both trade over their
own WebSockets (/m/roll/ws, /m/auction/ws) at the same time, through one group commit; a
restart of the whole deployment recovers both markets to the identical state."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from support.keys import AUTH, KEYS, OPERATOR_TOKEN
from support.market import open_products
from support.times import GATE, T0
from support.wsclient import WSClient

from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.tools.server import start_deployment

pytestmark = pytest.mark.e2e


async def call(http, method: str, url: str, body=None, headers=AUTH):
    async with http.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def peer(http, ws_base: str, mid: str, i: int) -> WSClient:
    c = await WSClient.connect(http, f"{ws_base}/m/{mid}/ws", KEYS[i].key)
    r = await c.login()
    assert r["type"] == "response", r
    return c


async def test_two_communities_trade_at_once_with_different_rules_and_recover(pool, pg_dsn):
    clock = ManualClock(T0)
    settings = load_settings(database_url=pg_dsn, market_id="root", operator_token=OPERATOR_TOKEN)
    d = await start_deployment(pg_dsn, settings, "127.0.0.1", 0, clock=clock)
    try:
        async with aiohttp.ClientSession() as http:
            base, ws = f"http://127.0.0.1:{d.port}", f"ws://127.0.0.1:{d.port}"
            tokens = {}
            for mid, rules in (("roll", {"gate": "rolling", "gate_rolling_minutes": 30}),
                               ("auction", {"gate": "rolling", "mechanism": "call_then_continuous"})):
                status, body = await call(http, "POST", f"{base}/api/platform/markets",
                                          {"market_id": mid, "name": mid.title(), "settings": rules})
                assert status == 201, body
                tokens[mid] = body["operator_token"]
                for i in range(4):
                    status, body = await call(http, "POST", f"{base}/m/{mid}/api/operator/members", {
                        "address": KEYS[i].address, "role": "prosumer", "export_capacity_w": 10**6,
                        "retail_tariff_ticks": 25_000, "feed_in_tariff_ticks": 7_000, "collateral": 10**15},
                        headers={"Authorization": f"Bearer {tokens[mid]}"})
                    assert status == 201, body
            markets = {mid: d.platform.tenants[mid].market for mid in ("roll", "auction")}
            assert markets["roll"].engine.config.mechanism.value == "continuous"
            assert markets["auction"].engine.config.mechanism.value == "call_then_continuous"
            pid = "20261122T1000Z-60"  # tomorrow: before the day-ahead auction at GATE
            assert pid in open_products(markets["roll"].engine)
            assert pid in markets["auction"].engine.products  # same delivery hours, other rules
            clients = {(mid, i): await peer(http, ws, mid, i) for mid in markets for i in range(4)}

            async def trade(mid: str, n: int) -> None:
                """Sellers 0-1 and buyers 2-3 of ``mid`` place n crossing pairs, all four at once
                (each client's own requests one after the other)."""

                async def side(i: int) -> None:
                    c = clients[(mid, i)]
                    for k in range(i % 2, n, 2):
                        order = ({"side": "sell", "price": 9000 + k} if i < 2 else {"side": "buy", "price": 9100 + k})
                        r = await c.request({"type": "place", "product_id": pid, "quantity": 100, **order})
                        assert r["type"] == "response", r

                await asyncio.gather(*(side(i) for i in range(4)))

            commits = d.committer.commits
            await asyncio.gather(trade("roll", 20), trade("auction", 20))
            assert d.committer.groups > d.committer.commits > commits  # groups of both shared commits
            # continuous: traded at once; call_then_continuous: collected for the day-ahead auction
            status, roll_trades = await call(http, "GET", f"{base}/m/roll/api/trades?limit=1000", headers={})
            assert status == 200 and len(roll_trades) == 20
            status, auction_trades = await call(http, "GET", f"{base}/m/auction/api/trades", headers={})
            assert auction_trades == []
            status, book = await call(http, "GET", f"{base}/m/auction/api/products/{pid}/book", headers={})
            assert sum(lv["volume"] for lv in book["bids"]) == 2000
            # the day-ahead time: the auction clears at one price; roll trades on
            clock.set(GATE)
            fill = await clients[("auction", 2)].next_of(lambda m: m.get("exec") == "fill", timeout=10)
            assert fill["liquidity"] == "auction"
            for _ in range(100):
                status, auction_trades = await call(http, "GET", f"{base}/m/auction/api/trades?limit=1000",
                                                    headers={})
                if auction_trades:
                    break
                await asyncio.sleep(0.05)
            assert len({t["price_ticks"] for t in auction_trades}) == 1  # uniform price
            assert sum(t["energy_wh"] for t in auction_trades) == 2000
            await trade("roll", 5)
            await trade("auction", 5)  # continuous after the auction
            # each community's trades are its own (its members' own memberships, its own journal)
            status, roll_trades = await call(http, "GET", f"{base}/m/roll/api/trades?limit=1000", headers={})
            assert len(roll_trades) == 25 and len({t["price_ticks"] for t in roll_trades}) > 1
            assert await pool.fetchval("SELECT count(*) FROM trades WHERE market_id = 'auction'") == \
                len(auction_trades) + 5
            for c in clients.values():
                await c.ws.close()
        hashes = {mid: m.engine.state_hash() for mid, m in markets.items()}
        seqs = {mid: m.runtime.committed_seq for mid, m in markets.items()}
    finally:
        await d.close()
    # restart: the registry starts both again, each recovered from its own journal
    d = await start_deployment(pg_dsn, settings, "127.0.0.1", 0, clock=clock)
    try:
        assert set(d.platform.tenants) == {"roll", "auction"}
        for mid, t in d.platform.tenants.items():
            assert t.market.engine.state_hash() == hashes[mid]
            assert t.market.runtime.committed_seq == seqs[mid]
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{d.port}"
            status, view = await call(http, "GET", f"{base}/m/auction/api/operator/market",
                                      headers={"Authorization": f"Bearer {tokens['auction']}"})
            assert status == 200 and view["config"]["mechanism"] == "call_then_continuous"
            status, trades = await call(http, "GET", f"{base}/m/roll/api/trades?limit=1000", headers={})
            assert len(trades) == 25
    finally:
        await d.close()
