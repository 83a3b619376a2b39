"""The operator REST API (``/api/operator/...``) and the OpenAPI document.

Every operator route requires ``Authorization: Bearer <OPERATOR_TOKEN>``:
no/malformed header -> 401 ``UNAUTHENTICATED``; any other token -> 403
``FORBIDDEN``; no operator token configured -> 503 ``OPERATOR_DISABLED``.
Errors are JSON ``{"error": CODE, "message": text}``.

Engine commands (halt, resume, cancel-all, member registration) go through
``market.runtime.submit`` and answer after their commit. The read views
(market, products, book, positions, member accounts) read the engine's live
state, which may include the effects of commands whose commit is still in
flight (the engine runs at most one group ahead of the journal); trades come
from the committed ``trades`` table.

``python -m exchange.gateway.operator [PATH]`` writes the OpenAPI document
(default ``docs/openapi.json``).
"""

from __future__ import annotations

import functools
import hmac
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from pydantic.json_schema import models_json_schema

from exchange import __version__
from exchange.core.model import CancelAll, CancelAllDone, Command, Halt, Rejected, Resume, Side
from exchange.core.units import iso
from exchange.runtime.members import (
    CommandRejected,
    Member,
    MemberIn,
    MemberPatch,
    MemberRegistry,
    RegistryError,
    UnknownMember,
    checksum_address,
)
from exchange.runtime.market import MarketBusy, MarketUnavailable, Result
from exchange.gateway.keys import MARKET, MEMBERS, SETTINGS
from exchange.gateway.views import market_summary, product_summary, products_sorted

__all__ = ["OPERATOR_ROUTES", "add_operator_routes", "make_registry", "openapi"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_registry(market, *, chain_collateral: bool = False) -> MemberRegistry:
    """The member registry of ``market`` (an ``exchange.runtime.service.Market``); with
    ``chain_collateral`` the chain (settlement) owns collateral, not the registry."""
    return MemberRegistry(market.pool, market.journal.market_id, market.runtime, chain_collateral=chain_collateral)


# --------------------------------------------------------------------------- request bodies


class HaltIn(BaseModel):
    """Halt the market: no new orders or modifies (cancels still work; the calendar runs on)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    reason: Annotated[StrictStr, Field(min_length=1, max_length=200)]


class ResumeIn(BaseModel):
    """Resume a halted market (the body may be empty or ``{}``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CancelAllIn(BaseModel):
    """Cancel a member's resting orders, of one product or (no ``product_id``) all."""

    model_config = ConfigDict(extra="forbid", strict=True)
    product_id: Annotated[StrictStr, Field(max_length=64)] | None = None


class PageQuery(BaseModel):
    """``?after=SEQ&limit=N`` (query strings: digits only)."""

    model_config = ConfigDict(extra="forbid")
    after: Annotated[int, Field(ge=0)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 100


class BookQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: Annotated[int, Field(ge=1, le=10_000)] | None = None


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


def _validation_error(exc: ValidationError) -> web.Response:
    errs = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errs):
        return error(400, "INVALID_JSON", "the request body is not valid JSON")
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errs]
    message = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errs)
    return error(422, "INVALID_REQUEST", message, details=details)


def _operator_only(handler: Handler) -> Handler:
    """Check the operator token, then run ``handler`` and turn its errors into JSON."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        secret = request.config_dict[SETTINGS].operator_token
        token = secret.get_secret_value() if secret is not None else ""
        if not token:
            return error(503, "OPERATOR_DISABLED", "the operator API is disabled (no operator token configured)")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return error(401, "UNAUTHENTICATED", "send Authorization: Bearer <operator token>")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error(403, "FORBIDDEN", "this token may not use the operator API")
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.status, exc.code, exc.message)
        except RegistryError as exc:
            return error(exc.status, exc.code, exc.message)
        except ValidationError as exc:
            return _validation_error(exc)
        except (MarketUnavailable, MarketBusy) as exc:
            return error(503, "MARKET_UNAVAILABLE", str(exc) or "the market is not running")
        except web.HTTPRequestEntityTooLarge:
            return error(413, "PAYLOAD_TOO_LARGE", "the request body is too large")

    return guarded


# --------------------------------------------------------------------------- helpers


async def _body(request: web.Request, model: type[BaseModel], optional: bool = False) -> Any:
    raw = await request.read()
    if optional and not raw.strip():
        return model()
    return model.model_validate_json(raw)


def _query(request: web.Request, model: type[BaseModel]) -> Any:
    return model.model_validate(dict(request.query))


def _address(request: web.Request) -> str:
    try:
        return checksum_address(request.match_info["address"])
    except ValueError as exc:
        raise ApiError(400, "INVALID_REQUEST", f"address: {exc}") from None


async def _submit(request: web.Request, cmd: Command) -> Result:
    res = await request.config_dict[MARKET].runtime.submit(cmd)
    for ev in res.events:
        if type(ev) is Rejected:
            raise CommandRejected(ev.detail, ev.reason)
    return res


def _product_book(request: web.Request):
    pid = request.match_info["product_id"]
    pb = request.config_dict[MARKET].engine.products.get(pid)
    if pb is None:
        raise ApiError(404, "UNKNOWN_PRODUCT", f"no product {pid}")
    return pb


def _account(engine, address: str) -> dict | None:
    a = engine.accounts.get(address)
    if a is None:
        return None
    return {"collateral": a.collateral, "export_capacity_w": a.export_capacity_w, "suspended": a.suspended,
            "open_exposure": a.open_exposure, "net_payable": a.net_payable}


def _member_view(request: web.Request, m: Member) -> dict:
    return {**m.model_dump(mode="json"), "account": _account(request.config_dict[MARKET].engine, m.address)}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# --------------------------------------------------------------------------- members


async def create_member(request: web.Request) -> web.Response:
    m = await _body(request, MemberIn)
    return _json(_member_view(request, await request.config_dict[MEMBERS].create(m)), 201)


async def list_members(request: web.Request) -> web.Response:
    return _json([_member_view(request, m) for m in await request.config_dict[MEMBERS].list()])


async def get_member(request: web.Request) -> web.Response:
    address = _address(request)
    m = await request.config_dict[MEMBERS].get(address)
    if m is None:
        raise UnknownMember(f"no member {address}")
    return _json(_member_view(request, m))


async def patch_member(request: web.Request) -> web.Response:
    address = _address(request)
    patch = await _body(request, MemberPatch)
    return _json(_member_view(request, await request.config_dict[MEMBERS].update(address, patch)))


async def member_positions(request: web.Request) -> web.Response:
    address = _address(request)
    market = request.config_dict[MARKET]
    engine = market.engine
    if address not in engine.accounts and await request.config_dict[MEMBERS].get(address) is None:
        raise UnknownMember(f"no member {address}")
    out: dict[str, dict] = {}
    for pid, pos in engine.positions.items():  # products not yet delivered
        p = pos.get(address)
        if p is not None:
            state = engine.products[pid].state.value
            out[pid] = {"product_id": pid, "state": state, "bought": p[0], "sold": p[1], "net": p[0] - p[1],
                        "payable": p[2], "final": state in ("closed", "delivered")}
    # Delivered products: the engine has freed their positions; the journal keeps position_final.
    rows = await market.pool.fetch(
        "SELECT ev FROM journal j, jsonb_array_elements(j.events) ev WHERE j.market_id = $1 AND j.events @> $2 "
        "AND ev->>'type' = 'position_final' AND ev->>'member' = $3 ORDER BY j.cmd_seq",
        market.journal.market_id, [{"type": "position_final", "member": address}], address)
    for r in rows:
        ev = r["ev"]
        pid = ev["product_id"]
        if pid not in out:
            pb = engine.products.get(pid)
            out[pid] = {"product_id": pid, "state": pb.state.value if pb else "delivered", "bought": ev["bought"],
                        "sold": ev["sold"], "net": ev["net"], "payable": ev["payable"], "final": True}
    return _json({"member": address, "account": _account(engine, address),
                  "positions": [out[pid] for pid in sorted(out)]})


async def member_cancel_all(request: web.Request) -> web.Response:
    address = _address(request)
    body = await _body(request, CancelAllIn, optional=True)
    if address not in request.config_dict[MARKET].engine.accounts:
        raise UnknownMember(f"member {address} has no account in the market")
    res = await _submit(request, CancelAll(0, address, body.product_id, by_operator=True))
    done = next(ev for ev in res.events if type(ev) is CancelAllDone)
    return _json({"member": address, "product_id": body.product_id, "cancelled": done.cancelled, "seq": done.seq})


# --------------------------------------------------------------------------- market


async def market_view(request: web.Request) -> web.Response:
    market = request.config_dict[MARKET]
    e, rt = market.engine, market.runtime
    return _json({**market_summary(market), "running": rt.running, "halt_reason": e.halt_reason,
                  "engine_seq": e.seq, "members": len(e.accounts), "open_orders": len(e.orders)})


async def halt(request: web.Request) -> web.Response:
    body = await _body(request, HaltIn)
    res = await _submit(request, Halt(0, body.reason))
    return _json({"halted": True, "reason": body.reason, "seq": res.events[-1].seq})


async def resume(request: web.Request) -> web.Response:
    await _body(request, ResumeIn, optional=True)
    res = await _submit(request, Resume(0))
    return _json({"halted": False, "seq": res.events[-1].seq})


def _open_orders(pb) -> int:
    return sum(lvl.count for side in (Side.BUY, Side.SELL) for _, lvl in pb.book.side_levels(side))


async def list_products(request: web.Request) -> web.Response:
    e = request.config_dict[MARKET].engine
    return _json([{**product_summary(pb, pb.book.best_bid(), pb.book.best_ask()), "open_orders": _open_orders(pb)}
                  for pb in products_sorted(e)])


def _order_view(o) -> dict:
    return {"order_id": o.order_id, "member": o.member, "side": o.side.value, "price": o.price,
            "remaining": o.remaining, "quantity": o.quantity, "tif": o.tif.value,
            "client_order_id": o.client_order_id, "ts": iso(o.ts)}


async def product_book(request: web.Request) -> web.Response:
    pb = _product_book(request)
    q = _query(request, BookQuery)
    out: dict[str, Any] = {"product_id": pb.product.product_id, "state": pb.state.value,
                           "seq": request.config_dict[MARKET].runtime.committed_seq}
    for side, key in ((Side.BUY, "bids"), (Side.SELL, "asks")):
        out[key] = [{"price": p, "volume": v, "orders": n} for p, v, n in pb.book.depth(side, q.depth)]
    for side, key in ((Side.BUY, "bid_orders"), (Side.SELL, "ask_orders")):
        orders = []
        for i, (_, lvl) in enumerate(pb.book.side_levels(side)):
            if q.depth is not None and i >= q.depth:
                break
            orders.extend(_order_view(o) for o in lvl.live_orders())
        out[key] = orders
    return _json(out)


async def product_trades(request: web.Request) -> web.Response:
    pb = _product_book(request)
    q = _query(request, PageQuery)
    market = request.config_dict[MARKET]
    rows = await market.pool.fetch(
        "SELECT trade_id, seq, product_id, delivery_start, buyer, seller, buy_order_id, sell_order_id, energy_wh, "
        "price_ticks, ts FROM trades WHERE market_id = $1 AND product_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        market.journal.market_id, pb.product.product_id, q.after, q.limit)
    return _json([{**dict(r), "delivery_start": r["delivery_start"].isoformat(), "ts": r["ts"].isoformat()}
                  for r in rows])


# --------------------------------------------------------------------------- routes + OpenAPI


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
OPT_INT, OPT_STR = {"type": ["integer", "null"]}, {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}


def _obj(required: bool = True, **props: dict) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(props)
    return out


def _array(items: dict) -> dict:
    return {"type": "array", "items": items}


@dataclass(frozen=True)
class Route:
    """One HTTP route and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Handler | None
    summary: str
    response: dict
    status: int = 200
    body: str | None = None  # component schema of the request body
    body_optional: bool = False
    query: tuple[tuple[str, dict, str], ...] = ()  # (name, schema, description)
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"
    description: str = ""
    tags: tuple[str, ...] = field(default=("operator",))


_ADDRESS_ERRORS = (400, 404)
_SUBMIT_ERRORS = (409, 503)
PAGE = (("after", {"type": "integer", "minimum": 0, "default": 0}, "only trades with seq > after"),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "at most this many"))

OPERATOR_ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/operator/members", create_member, "Create a member", _ref("MemberView"), 201,
          body="MemberIn", errors=(400, 409, 422, 503),
          description="Stores the member and registers it with the engine (RegisterMember)."),
    Route("GET", "/api/operator/members", list_members, "List members", _array(_ref("MemberView"))),
    Route("GET", "/api/operator/members/{address}", get_member, "A member, with its engine account",
          _ref("MemberView"), errors=_ADDRESS_ERRORS),
    Route("PATCH", "/api/operator/members/{address}", patch_member, "Change a member", _ref("MemberView"),
          body="MemberPatch", errors=(400, 404, 409, 422, 503),
          description="Only the given fields change. Suspending cancels the member's resting orders."),
    Route("GET", "/api/operator/members/{address}/positions", member_positions, "A member's positions per product",
          _ref("Positions"), errors=_ADDRESS_ERRORS,
          description="Live products from the engine; delivered products from the journal's position_final "
                      "events (a scan of the market's journal)."),
    Route("POST", "/api/operator/members/{address}/cancel-all", member_cancel_all, "Cancel a member's orders",
          _obj(member=STR, product_id=OPT_STR, cancelled=INT, seq=INT), body="CancelAllIn", body_optional=True,
          errors=(400, 404, 409, 422, 503)),
    Route("GET", "/api/operator/market", market_view, "Market state", _ref("MarketView")),
    Route("POST", "/api/operator/market/halt", halt, "Halt the market",
          _obj(halted=BOOL, reason=STR, seq=INT), body="HaltIn", errors=(400, 409, 422, 503)),
    Route("POST", "/api/operator/market/resume", resume, "Resume the market", _obj(halted=BOOL, seq=INT),
          body="ResumeIn", body_optional=True, errors=(400, 409, 422, 503)),
    Route("GET", "/api/operator/products", list_products, "Listed products",
          _array(_ref("OperatorProduct"))),
    Route("GET", "/api/operator/products/{product_id}/book", product_book,
          "Order book: levels and individual resting orders in priority order", _ref("OperatorBook"),
          query=(("depth", {"type": "integer", "minimum": 1}, "price levels per side (default: all)"),),
          errors=(404, 422)),
    Route("GET", "/api/operator/products/{product_id}/trades", product_trades, "A product's committed trades",
          _array(_ref("OperatorTrade")), query=PAGE, errors=(404, 422)),
)

_PUBLIC = ("public",)
PUBLIC_ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", None, "Liveness", _obj(status=STR), tags=_PUBLIC),
    Route("GET", "/ready", None, "Readiness: database answers and the market runtime runs",
          _obj(ready=BOOL, database=BOOL, engine=BOOL, error=OPT_STR), errors=(503,), tags=_PUBLIC),
    Route("GET", "/metrics", None, "Prometheus metrics", STR, content_type="text/plain", tags=_PUBLIC),
    Route("GET", "/api/market", None, "Market id, config, sequence numbers, state hash, halted flag",
          _obj(required=False, market_id=STR, config={"type": "object"}, seq=INT, commands=INT, halted=BOOL,
               now=OPT_STR, state_hash=STR), tags=_PUBLIC),
    Route("GET", "/api/products", None, "Listed products with state and best bid/ask", _array(_ref("Product")),
          tags=_PUBLIC),
    Route("GET", "/api/products/{product_id}/book", None, "Aggregated depth per side", _ref("Book"),
          query=(("depth", {"type": "integer", "minimum": 1, "default": 20}, "price levels per side"),),
          errors=(400, 404), tags=_PUBLIC),
    Route("GET", "/api/trades", None, "Committed trades", _array(_ref("Trade")), query=PAGE, errors=(400,),
          tags=_PUBLIC),
    Route("GET", "/api/schema/ws", None, "JSON Schema of the peer WebSocket messages",
          {"type": "object", "description": "a JSON Schema document"}, tags=_PUBLIC),
    Route("GET", "/ws", None, "Peer WebSocket (upgrade)", {}, status=101, tags=_PUBLIC,
          description="HTTP GET with `Upgrade: websocket`; the server answers 101 Switching Protocols. "
                      "Messages are JSON text frames described by the JSON Schema at /api/schema/ws."),
    Route("GET", "/api/openapi.json", None, "This OpenAPI document", {"type": "object"}, tags=_PUBLIC),
)

_LEVEL = _obj(price=INT, volume=INT, orders=INT)
_PRODUCT = _obj(product_id=STR, delivery_day={"type": "string", "format": "date"}, start=TIME, end=TIME,
                open=TIME, gate=TIME, state={"enum": ["pre_open", "open", "closed", "delivered"]},
                best_bid=OPT_INT, best_ask=OPT_INT)
_TRADE = _obj(trade_id=INT, seq=INT, product_id=STR, delivery_start=TIME, energy_wh=INT, price_ticks=INT, ts=TIME)
_ACCOUNT = {"type": ["object", "null"], "description": "the engine's account (null: not registered)",
            "properties": {"collateral": INT, "export_capacity_w": INT, "suspended": BOOL, "open_exposure": INT,
                           "net_payable": INT}}
_ORDER = _obj(order_id=INT, member=STR, side={"enum": ["buy", "sell"]}, price=INT, remaining=INT, quantity=INT,
              tif={"enum": ["gtc", "ioc", "fok"]}, client_order_id=OPT_STR, ts=TIME)
_POSITION = _obj(product_id=STR, state=STR, bought=INT, sold=INT, net=INT, payable=INT, final=BOOL)
_STATIC_SCHEMAS = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string", "description": "machine-readable code"},
                             "message": {"type": "string", "description": "human-readable text"},
                             "details": {"type": "array", "items": {"type": "object"},
                                         "description": "validation errors (INVALID_REQUEST)"}}},
    "MemberView": {"allOf": [_ref("Member"), _obj(account=_ACCOUNT)]},
    "Positions": _obj(member=STR, account=_ACCOUNT, positions=_array(_POSITION)),
    "MarketView": _obj(market_id=STR, config={"type": "object"}, running=BOOL, halted=BOOL, halt_reason=STR,
                       seq=INT, engine_seq=INT, commands=INT, now=OPT_STR, members=INT, open_orders=INT,
                       state_hash=STR),
    "Product": _PRODUCT,
    "OperatorProduct": {"allOf": [_ref("Product"), _obj(open_orders=INT)]},
    "Book": _obj(product_id=STR, state=STR, seq=INT, bids=_array(_LEVEL), asks=_array(_LEVEL)),
    "OperatorBook": {"allOf": [_ref("Book"), _obj(bid_orders=_array(_ORDER), ask_orders=_array(_ORDER))]},
    "Trade": _TRADE,
    "OperatorTrade": {"allOf": [_ref("Trade"), _obj(buyer=STR, seller=STR, buy_order_id=INT, sell_order_id=INT)]},
}
_ERROR_TEXT = {400: "Invalid JSON or parameter", 401: "No operator token (UNAUTHENTICATED)",
               403: "Not the operator token (FORBIDDEN)", 404: "Unknown member or product",
               409: "Conflict: member exists, or the engine rejected the command (its reason code)",
               413: "Body too large", 422: "Body or query failed validation (INVALID_REQUEST)",
               503: "Operator API disabled, or market unavailable"}


def _operation(r: Route) -> dict:
    op: dict[str, Any] = {"summary": r.summary, "tags": list(r.tags),
                          "operationId": r.handler.__name__ if r.handler else
                          r.path.strip("/").replace("/", "_").replace(".", "_").replace("{", "").replace("}", "")}
    if r.description:
        op["description"] = r.description
    params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
              for n in ("address", "product_id") if "{" + n + "}" in r.path]
    params += [{"name": n, "in": "query", "required": False, "schema": s, "description": d} for n, s, d in r.query]
    if params:
        op["parameters"] = params
    if r.body:
        op["requestBody"] = {"required": not r.body_optional, "content": {"application/json": {"schema": _ref(r.body)}}}
    ok: dict[str, Any] = {"description": "Switching Protocols" if r.status == 101 else "OK"}
    if r.response:
        ok["content"] = {r.content_type: {"schema": r.response}}
    responses: dict[str, Any] = {str(r.status): ok}
    statuses = set(r.errors)
    if "operator" in r.tags:
        op["security"] = [{"operatorToken": []}]
        statuses |= {401, 403, 503}
    for s in sorted(statuses):
        responses[str(s)] = {"description": _ERROR_TEXT[s], "content": {"application/json": {"schema": _ref("Error")}}}
    op["responses"] = responses
    return op


def openapi() -> dict:
    """The OpenAPI 3.1 document of the HTTP API (public and operator routes)."""
    models = [(MemberIn, "validation"), (MemberPatch, "validation"), (HaltIn, "validation"),
              (ResumeIn, "validation"), (CancelAllIn, "validation"), (Member, "serialization")]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = {**defs.get("$defs", {}), **_STATIC_SCHEMAS}
    paths: dict[str, dict] = {}
    for r in (*PUBLIC_ROUTES, *OPERATOR_ROUTES):
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Voltbourse HTTP API", "version": __version__,
                 "description": "Public market views and the operator API of a Voltbourse market. Units: energy "
                                "in Wh, power in W, prices in ticks of 0.01 EUR/MWh, money in units of 1e-8 EUR, "
                                "times UTC. Errors: {\"error\": CODE, \"message\": text}. See docs/rest.md."},
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "tags": [{"name": "public", "description": "no authentication"},
                 {"name": "operator", "description": "Authorization: Bearer <operator token>"}],
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer",
                                                             "description": "the OPERATOR_TOKEN setting"}}},
    }


@functools.cache
def _openapi_bytes() -> bytes:
    return json.dumps(openapi()).encode()


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=_openapi_bytes(), content_type="application/json")


def add_operator_routes(app: web.Application) -> None:
    """Add the operator routes (each guarded by the operator token) and the public
    ``GET /api/openapi.json``. Needs ``app[MARKET]``, ``app[SETTINGS]``, ``app[MEMBERS]``."""
    for r in OPERATOR_ROUTES:
        app.router.add_route(r.method, r.path, _operator_only(r.handler))
    app.router.add_get("/api/openapi.json", openapi_handler)


def write_openapi(path: Path | str) -> None:
    Path(path).write_text(json.dumps(openapi(), indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "docs" / "openapi.json")
    write_openapi(target)
    print(f"wrote {target}")
