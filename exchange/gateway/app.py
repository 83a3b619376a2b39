"""The aiohttp application: public market views, the peer WebSocket API, the operator
REST API and page, the published schemas and metrics, plus every registered
subsystem (exchange.gateway.plugin) over one market."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from exchange.gateway.http import (
    BOOL,
    INT,
    OPT_STR,
    PUBLIC,
    STR,
    TOKEN_FAILURES,
    PageQuery,
    Route,
    add_routes,
    array,
    error_middleware,
    json_response,
    obj,
    read_query,
    ref,
    shown,
)
from exchange.gateway.keys import (
    BASE_PATH,
    BILL_ITEM_SOURCES,
    MARKET,
    MEMBERS,
    OPERATOR_TOKEN_HASHES,
    OUTLOOK_SOURCES,
    PAYOUT_SOURCES,
    PEER_AUTHENTICATORS,
    PROTOCOL,
    SETTINGS,
    SOCKETS,
    WS_REQUESTS,
)
from exchange.gateway.marketdata import MARKET_DATA, MarketData
from exchange.gateway.metrics import METRICS, Metrics, add_metrics_route
from exchange.gateway.openapi import build_openapi
from exchange.gateway.operator import MODELS, OPERATOR_ROUTES, SCHEMAS, make_registry
from exchange.gateway.page import add_page_routes
from exchange.gateway.peers import PEERS, Peers
from exchange.gateway.plugin import Subsystem, wire_protocol
from exchange.gateway.session import LIMITS, ConnectionCounts, Limits, close_sockets, ws_handler
from exchange.gateway.tenants import (
    PLATFORM_ROUTES,
    PLATFORM_SCHEMAS,
    PUBLIC_PLATFORM_ROUTES,
    Platform,
    add_platform,
)
from exchange.gateway.views import market_summary, product_summary, products_sorted
from exchange.runtime.config import Settings
from exchange.runtime.service import Market


class DepthQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: int = Field(20, ge=1, le=1000)


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    market = request.app[MARKET]
    try:
        await asyncio.wait_for(market.pool.fetchval("SELECT 1"), 2)
        db_ok = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        db_ok = False
    rt = market.runtime
    ok = db_ok and rt.running
    return json_response({"ready": ok, "database": db_ok, "engine": rt.running,
                          "error": repr(rt.failed) if rt.failed else None}, 200 if ok else 503)


async def market_info(request: web.Request) -> web.Response:
    return json_response(market_summary(request.app[MARKET]))


async def products(request: web.Request) -> web.Response:
    """Calendar data from the engine (immutable); state and best prices from the committed mirror."""
    md = request.app[MARKET_DATA]
    out = []
    for pb in products_sorted(request.app[MARKET].engine):
        pid = pb.product.product_id
        bid, ask = md.best(pid)
        out.append(product_summary(pb, bid, ask, md.product_states.get(pid)))
    return json_response(out)


async def book(request: web.Request) -> web.Response:
    """Aggregated depth of the committed book (the market-data mirror)."""
    md = request.app[MARKET_DATA]
    pid = request.match_info["product_id"]
    if pid not in md.product_states:
        return json_response({"error": "UNKNOWN_PRODUCT", "message": f"no product {shown(pid)}"}, 404)
    depth = read_query(request, DepthQuery).depth
    snap = md.snapshot(pid)

    def levels(rows: list) -> list[dict]:
        return [{"price": p, "volume": v, "orders": n} for p, v, n in rows[:depth]]

    return json_response({"product_id": pid, "state": md.product_states[pid], "seq": snap["seq"],
                          "bids": levels(snap["bids"]), "asks": levels(snap["asks"])})


async def trades(request: web.Request) -> web.Response:
    q = read_query(request, PageQuery)
    return json_response(await request.app[MARKET].trades.public(q.after, q.limit))


async def ws_schema(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_SCHEMA_BYTES], content_type="application/json")


async def openapi_handler(request: web.Request) -> web.Response:
    """The document with this market's own server: the public origin (``PUBLIC_ORIGIN``, the
    origin behind a proxy; else the one the request came to) and the market's base path, so
    that a client generated from ``/m/{id}/api/openapi.json`` calls that market (the committed
    docs/openapi.json names the default market on the default port)."""
    app = request.app
    settings = app[SETTINGS]
    origin = settings.public_origin.rstrip("/") if settings.public_origin else f"{request.scheme}://{request.host}"
    servers = json.dumps({"servers": [{"url": origin + app[BASE_PATH],
                                       "description": f"market {settings.market_id} of this deployment"}]})
    body = app[_OPENAPI_BYTES].replace(_SERVERS_AS_GENERATED, servers[1:-1].encode(), 1)
    return web.Response(body=body, content_type="application/json")


PAGE = (("after", {"type": "integer", "minimum": 0, "default": 0}, "only trades with seq > after"),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "at most this many"))
PUBLIC_ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, "Liveness", obj(status=STR), tags=PUBLIC),
    Route("GET", "/ready", ready, "Readiness: database answers and the market runtime runs",
          obj(ready=BOOL, database=BOOL, engine=BOOL, error=OPT_STR), errors=(503,), tags=PUBLIC),
    Route("GET", "/metrics", None, "Prometheus metrics", STR, content_type="text/plain", tags=PUBLIC),
    Route("GET", "/api/market", market_info, "Market id, config, sequence numbers, halted flag",
          obj(required=False, market_id=STR, config={"type": "object"}, seq=INT, commands=INT, halted=BOOL,
              now=OPT_STR), tags=PUBLIC),
    Route("GET", "/api/products", products, "Listed products with state and best bid/ask", array(ref("Product")),
          tags=PUBLIC),
    Route("GET", "/api/products/{product_id}/book", book, "Aggregated depth per side", ref("Book"),
          query=(("depth", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 20},
                  "price levels per side"),), errors=(404, 422), tags=PUBLIC),
    Route("GET", "/api/trades", trades, "Committed trades", array(ref("Trade")), query=PAGE, errors=(422,),
          tags=PUBLIC),
    Route("GET", "/api/schema/ws", ws_schema, "JSON Schema of the peer WebSocket messages",
          {"type": "object", "description": "a JSON Schema document"}, tags=PUBLIC),
    Route("GET", "/ws", None, "Peer WebSocket (upgrade)", {}, status=101, tags=PUBLIC,
          description="HTTP GET with `Upgrade: websocket`; the server answers 101 Switching Protocols. "
                      "Messages are JSON text frames described by the JSON Schema at /api/schema/ws."),
    Route("GET", "/api/openapi.json", openapi_handler, "This OpenAPI document", {"type": "object"}, tags=PUBLIC),
)

_SCHEMA_BYTES: web.AppKey[bytes] = web.AppKey("ws_schema_bytes", bytes)
_OPENAPI_BYTES: web.AppKey[bytes] = web.AppKey("openapi_bytes", bytes)
#: the ``servers`` member of the generated document, as json.dumps writes it (replaced when served)
_SERVERS_AS_GENERATED = json.dumps({"servers": [{"url": "http://127.0.0.1:8080"}]})[1:-1].encode()


def openapi_document(subsystems: Sequence[Subsystem]) -> dict:
    """The OpenAPI document of the gateway with ``subsystems`` (enabled or not)."""
    routes = [*PUBLIC_ROUTES, *OPERATOR_ROUTES, *PLATFORM_ROUTES, *(r for s in subsystems for r in s.routes)]
    return build_openapi(routes, schemas={**SCHEMAS, **PLATFORM_SCHEMAS}, models=MODELS)


def ws_schema_document(subsystems: Sequence[Subsystem]) -> dict:
    return wire_protocol(subsystems).json_schema()


async def make_app(market: Market, settings: Settings, subsystems: Sequence[Subsystem] = (), *,
                   base_path: str = "", operator_token_hashes: set[bytes] | None = None,
                   platform: Platform | None = None, connections: ConnectionCounts | None = None) -> web.Application:
    """Build the app over a started market: members reconciled, market data following
    the committed stream, metrics attached, then every enabled subsystem registered.

    ``base_path`` (``/m/<market_id>``): a market the platform hosts, every route under it
    (exchange.gateway.tenants), whose operator API also takes the tokens whose sha256 is in
    ``operator_token_hashes`` (its community manager's). ``platform``: this app is the
    deployment's root (its default market) and hosts the platform's markets. ``connections``:
    the server's peer connection counts, shared by every market app of the process (else its own)."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[error_middleware])
    app[MARKET] = market
    app[SETTINGS] = settings
    app[BASE_PATH] = base_path
    app[OPERATOR_TOKEN_HASHES] = operator_token_hashes if operator_token_hashes is not None else set()
    metrics = Metrics()
    metrics.attach(market.runtime)
    app[METRICS] = metrics
    peers = Peers()
    app[PEERS] = peers
    md = MarketData(market, peers, disclose_counterparty=settings.disclose_counterparty, metrics=metrics)
    await md.bootstrap()
    await md.load_positions()
    await md.load_order_status()
    app[MARKET_DATA] = md
    registry = make_registry(market, chain_collateral=settings.settlement_enabled)
    app[MEMBERS] = registry
    await registry.reconcile()
    protocol = wire_protocol(subsystems)
    app[PROTOCOL] = protocol
    app[_SCHEMA_BYTES] = json.dumps(protocol.json_schema()).encode()
    app[_OPENAPI_BYTES] = json.dumps(openapi_document(subsystems)).encode()
    if _SERVERS_AS_GENERATED not in app[_OPENAPI_BYTES]:  # pragma: no cover - build_openapi changed its servers
        raise RuntimeError("the generated OpenAPI document's servers are not the expected ones")
    add_routes(app, PUBLIC_ROUTES)
    app.router.add_get("/ws", ws_handler)
    app[SOCKETS] = set()
    app[LIMITS] = Limits(connections)
    app[TOKEN_FAILURES] = app[LIMITS].counts.token_failures
    app[WS_REQUESTS] = {}
    app[PAYOUT_SOURCES] = []
    app[BILL_ITEM_SOURCES] = []
    app[OUTLOOK_SOURCES] = []
    app[PEER_AUTHENTICATORS] = []  # subsystems that sign /ws connections in from their request (the portal)
    app.on_shutdown.append(close_sockets)
    add_routes(app, OPERATOR_ROUTES)
    add_metrics_route(app)
    add_page_routes(app)
    for s in subsystems:
        if not s.enabled(settings):
            continue
        add_routes(app, s.routes)
        for r in s.ws_requests:
            app[WS_REQUESTS][r.type] = r
        if s.lifecycle is not None:
            app.cleanup_ctx.append(s.lifecycle)
    add_routes(app, PUBLIC_PLATFORM_ROUTES)
    if platform is not None:
        add_platform(app, platform)
    if base_path:  # mounted under /m/<market_id> (as aiohttp's add_subapp prefixes a sub-application)
        for resource in app.router.resources():  # re-indexed: its canonical path changes
            app.router.unindex_resource(resource)
            resource.add_prefix(base_path)
            app.router.index_resource(resource)
    return app
