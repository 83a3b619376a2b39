"""The service shell over real HTTP on loopback: health, readiness and the public views.
(The demo as a user runs it is tests/e2e/test_demo.py.)"""

from __future__ import annotations

import aiohttp
import pytest

from exchange.core.model import PlaceOrder, RegisterMember, Side

pytestmark = pytest.mark.integration


async def test_http_views(serve):
    async with serve(market_id="http") as server:
        base = server.http
        rt = server.market.runtime
        await rt.submit(RegisterMember(0, "a", collateral=10**15, export_capacity_w=10**6))
        pid = server.open_products[0]
        await rt.submit(PlaceOrder(0, "a", pid, Side.SELL, 9000, 300))
        await rt.submit(PlaceOrder(0, "a", pid, Side.SELL, 9100, 200))
        await rt.submit(RegisterMember(0, "b", collateral=10**15))
        await rt.submit(PlaceOrder(0, "b", pid, Side.BUY, 9000, 100))
        async with aiohttp.ClientSession() as s:
            assert (await (await s.get(f"{base}/health")).json()) == {"status": "ok"}
            r = await s.get(f"{base}/ready")
            assert r.status == 200 and (await r.json())["ready"] is True
            products = await (await s.get(f"{base}/api/products")).json()
            assert any(p["product_id"] == pid and p["state"] == "open" and p["best_ask"] == 9000 for p in products)
            book = await (await s.get(f"{base}/api/products/{pid}/book")).json()
            assert book["asks"] == [{"price": 9000, "volume": 200, "orders": 1}, {"price": 9100, "volume": 200, "orders": 1}]
            assert book["bids"] == []
            r = await s.get(f"{base}/api/products/nope/book")
            assert r.status == 404 and (await r.json())["error"] == "UNKNOWN_PRODUCT"
            trades = await (await s.get(f"{base}/api/trades")).json()
            assert [(t["energy_wh"], t["price_ticks"]) for t in trades] == [(100, 9000)]
            r = await s.get(f"{base}/api/trades?after=x")
            assert r.status == 422 and (await r.json())["error"] == "INVALID_REQUEST"
            info = await (await s.get(f"{base}/api/market")).json()
            assert info["seq"] == rt.committed_seq
            assert "state_hash" not in info  # O(state): the operator's view only (GET /api/operator/market)
