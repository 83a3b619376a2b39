"""The aiohttp application: public market views, the peer WebSocket API, the
operator REST API, the published schemas and metrics, over one market."""

from __future__ import annotations

import asyncio

from aiohttp import web

from exchange.runtime.config import Settings
from exchange.flexibility.plugin import add_flexibility
from exchange.gateway.metrics import Metrics, add_metrics_route
from exchange.runtime.service import Market
from exchange.gateway.keys import MARKET, MARKET_DATA, MEMBERS, METRICS, SETTINGS, SOCKETS, WS_HANDLERS
from exchange.gateway.marketdata import MarketData
from exchange.gateway.operator import add_operator_routes, make_registry
from exchange.gateway.page import add_page_routes
from exchange.protocol.messages import json_schema
from exchange.gateway.session import close_sockets, ws_handler
from exchange.gateway.views import market_summary, product_summary, products_sorted


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
    return _json(market_summary(request.app[MARKET]))


async def products(request: web.Request) -> web.Response:
    """Calendar data from the engine (immutable); state and best prices from the committed mirror."""
    md = request.app[MARKET_DATA]
    out = []
    for pb in products_sorted(request.app[MARKET].engine):
        pid = pb.product.product_id
        bid, ask = md.best(pid)
        out.append(product_summary(pb, bid, ask, md.product_states.get(pid)))
    return _json(out)


async def book(request: web.Request) -> web.Response:
    """Aggregated depth of the committed book (the market-data mirror)."""
    md = request.app[MARKET_DATA]
    pid = request.match_info["product_id"]
    if pid not in md.product_states:
        return _json({"error": "UNKNOWN_PRODUCT", "message": f"no product {pid}"}, 404)
    try:
        depth = max(1, min(int(request.query.get("depth", "20")), 1000))
    except ValueError:
        return _json({"error": "INVALID_VALUE", "message": "depth must be an integer"}, 400)
    snap = md.snapshot(pid)

    def levels(rows):
        return [{"price": p, "volume": v, "orders": n} for p, v, n in rows[:depth]]

    return _json({"product_id": pid, "state": md.product_states[pid], "seq": snap["seq"],
                  "bids": levels(snap["bids"]), "asks": levels(snap["asks"])})


async def trades(request: web.Request) -> web.Response:
    m = request.app[MARKET]
    try:
        after = int(request.query.get("after", "0"))
        limit = max(1, min(int(request.query.get("limit", "100")), 1000))
    except ValueError:
        return _json({"error": "INVALID_VALUE", "message": "after and limit must be integers"}, 400)
    rows = await m.pool.fetch(
        "SELECT trade_id, seq, product_id, delivery_start, energy_wh, price_ticks, ts FROM trades "
        "WHERE market_id = $1 AND seq > $2 ORDER BY seq LIMIT $3", m.engine.config.market_id, after, limit)
    return _json([{**dict(r), "delivery_start": r["delivery_start"].isoformat(), "ts": r["ts"].isoformat()}
                  for r in rows])


async def ws_schema(request: web.Request) -> web.Response:
    return _json(json_schema())


async def make_app(market: Market, settings: Settings) -> web.Application:
    """Build the app over a started market: members reconciled, market data following
    the committed stream, metrics attached."""
    app = web.Application(client_max_size=64 * 1024)
    app[MARKET] = market
    app[SETTINGS] = settings
    metrics = Metrics()
    metrics.attach(market.runtime)
    app[METRICS] = metrics
    md = MarketData(market, disclose_counterparty=settings.disclose_counterparty, metrics=metrics)
    md.bootstrap()
    app[MARKET_DATA] = md
    registry = make_registry(market, chain_collateral=settings.settlement_enabled)
    app[MEMBERS] = registry
    await registry.reconcile()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/api/market", market_info)
    app.router.add_get("/api/products", products)
    app.router.add_get("/api/products/{product_id}/book", book)
    app.router.add_get("/api/trades", trades)
    app.router.add_get("/api/schema/ws", ws_schema)
    app.router.add_get("/ws", ws_handler)
    app[SOCKETS] = set()
    app[WS_HANDLERS] = {}
    app.on_shutdown.append(close_sockets)
    add_operator_routes(app)
    add_metrics_route(app)
    add_page_routes(app)
    add_flexibility(app)  # exchange/flexibility: flex_* WS messages, /api/operator/flexibility/...
    if settings.settlement_enabled:
        from settlement.plugin import add_settlement  # web3/py-evm: imported only when used

        add_settlement(app)  # worker, trade proofs (WS + REST), /api/operator/settlement
    return app

