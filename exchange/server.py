"""HTTP edge of the exchange service (aiohttp).

This is the service shell that ``voltbourse serve`` and the demo run: it owns
the embedded database (or connects to ``VOLTBOURSE_DATABASE_URL``), migrates,
recovers the market from its journal, runs its engine runtime, and serves
read-only market views plus liveness/readiness. The peer WebSocket API and the
operator API build on this app (see docs/).

Routes:

* ``GET /health`` - the process is alive.
* ``GET /ready`` - 200 when the database answers and the market runtime runs, else 503.
* ``GET /api/market`` - market id, config, sequence numbers, state hash, halted flag.
* ``GET /api/products`` - listed products with state and best bid/ask.
* ``GET /api/products/{product_id}/book`` - aggregated depth (price, volume, orders) per side.
* ``GET /api/trades?after=SEQ&limit=N`` - committed trades (from the journal's projection).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .config import Settings
from .core.model import Side
from .core.units import iso
from .db import database, upgrade
from .service import Market, open_market, run_async

log = logging.getLogger(__name__)

MARKET = web.AppKey("market", Market)


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    market = request.app[MARKET]
    try:
        await asyncio.wait_for(market.pool.fetchval("SELECT 1"), 2)
        db_ok = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        db_ok = False
    rt = market.runtime
    ok = db_ok and rt.running
    return _json({"ready": ok, "database": db_ok, "engine": rt.running,
                  "error": repr(rt.failed) if rt.failed else None}, 200 if ok else 503)


async def market_info(request: web.Request) -> web.Response:
    m = request.app[MARKET]
    e = m.engine
    return _json({
        "market_id": e.config.market_id,
        "config": e.config.to_dict(),
        "seq": m.runtime.committed_seq,
        "commands": m.runtime.cmd_seq,
        "halted": e.halted,
        "now": iso(e.now) if e.now else None,
        "state_hash": e.state_hash(),
    })


def _product_view(pb) -> dict:
    p = pb.product
    return {**p.to_dict(), "state": pb.state.value, "best_bid": pb.book.best_bid(), "best_ask": pb.book.best_ask()}


async def products(request: web.Request) -> web.Response:
    e = request.app[MARKET].engine
    return _json([_product_view(pb) for _, pb in sorted(e.products.items(), key=lambda kv: kv[1].product.start_us)])


async def book(request: web.Request) -> web.Response:
    e = request.app[MARKET].engine
    pid = request.match_info["product_id"]
    pb = e.products.get(pid)
    if pb is None:
        return _json({"error": "UNKNOWN_PRODUCT", "message": f"no product {pid}"}, 404)
    depth = int(request.query.get("depth", "20"))

    def levels(side):
        return [{"price": p, "volume": v, "orders": n} for p, v, n in pb.book.depth(side, depth)]

    return _json({"product_id": pid, "state": pb.state.value, "seq": request.app[MARKET].runtime.committed_seq,
                  "bids": levels(Side.BUY), "asks": levels(Side.SELL)})


async def trades(request: web.Request) -> web.Response:
    m = request.app[MARKET]
    try:
        after = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "100")), 1000)
    except ValueError:
        return _json({"error": "INVALID_VALUE", "message": "after and limit must be integers"}, 400)
    rows = await m.pool.fetch(
        "SELECT trade_id, seq, product_id, delivery_start, energy_wh, price_ticks, ts FROM trades "
        "WHERE market_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", m.engine.config.market_id, after, limit)
    return _json([{**dict(r), "delivery_start": r["delivery_start"].isoformat(), "ts": r["ts"].isoformat()}
                  for r in rows])


def make_app(market: Market) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[MARKET] = market
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/api/market", market_info)
    app.router.add_get("/api/products", products)
    app.router.add_get("/api/products/{product_id}/book", book)
    app.router.add_get("/api/trades", trades)
    return app


async def start_http(market: Market, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(market), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


async def _serve(dsn: str, settings: Settings) -> int:
    market = await open_market(dsn, settings)
    runner = await start_http(market, settings.host, settings.port)
    log.info("serving market %s on http://%s:%d", settings.market_id, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await market.close()
    return 0


def serve(settings: Settings) -> int:
    """Blocking: start (or connect to) the database, migrate, serve until SIGINT/SIGTERM."""
    with database(settings) as dsn:  # the embedded server starts before the event loop
        upgrade(dsn)
        return run_async(_serve(dsn, settings))
