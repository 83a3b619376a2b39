"""The service shell over real HTTP on loopback, and the demo as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from exchange.core.model import PlaceOrder, RegisterMember, Side
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.service import open_market
from exchange.tools.bench import BENCH_T0
from exchange.tools.server import start_http

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


async def test_http_views(pool, pg_dsn):
    settings = load_settings(database_url=pg_dsn, market_id="http")
    market = await open_market(pg_dsn, settings, ManualClock(BENCH_T0))
    runner = await start_http(market, settings, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    try:
        rt = market.runtime
        await rt.submit(RegisterMember(0, "a", collateral=10**15, export_capacity_w=10**6))
        pid = sorted(p for p, pb in rt.engine.products.items() if pb.state.value == "open")[0]
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
            assert info["state_hash"] == rt.engine.state_hash() and info["seq"] == rt.committed_seq
    finally:
        await runner.cleanup()
        await market.close()


@pytest.mark.slow
def test_demo_runs_trades_and_closes_gates(tmp_path_factory):
    import platformdirs

    data = platformdirs.user_data_path("voltbourse") / f"test-demo-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    # as a user runs it: settlement on the in-process EVM included
    env = dict(os.environ, VOLTBOURSE_DATA_DIR=str(data), VOLTBOURSE_PORT="0", VOLTBOURSE_SETTLEMENT_ENABLED="true")
    try:
        out = subprocess.run([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "demo",
                              "--duration", "10", "--speed", "900", "--members", "12"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "gate closed" in text and "opened 24 products" in text
    done = next(line for line in text.splitlines() if line.startswith("Done:"))
    trades = int(done.split(",")[1].split()[0])
    assert trades > 0, done  # trades happened
    assert "operator page: http://" in text and "SettlementRegistry 0x" in text
    # every trade anchored on chain and reconciled at the end
    settled = next(line for line in text.splitlines() if line.startswith("Settlement:"))
    assert f"for {trades} trades (0 pending); reconciliation OK" in settled, settled
    assert "[settlement]" in text and "batches anchored" in text
