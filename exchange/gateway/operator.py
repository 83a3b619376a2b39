"""The operator REST API (``/api/operator/...``).

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

The routes are :class:`~exchange.gateway.http.Route` values (``OPERATOR_ROUTES``);
the OpenAPI document is generated from them (exchange.gateway.openapi).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from exchange.core.ids import MemberId, ProductId
from exchange.core.model import CancelAll, CancelAllDone, Command, Halt, Rejected, Resume, Side
from exchange.core.units import iso
from exchange.gateway.http import (
    BOOL,
    INT,
    OPT_INT,
    OPT_STR,
    STR,
    TIME,
    ApiError,
    PageQuery,
    Route,
    add_routes,
    array,
    json_response,
    obj,
    read_body,
    read_query,
    ref,
    shown,
)
from exchange.gateway.keys import MARKET, MEMBERS
from exchange.gateway.views import market_summary, product_summary, products_sorted
from exchange.runtime.market import Result
from exchange.runtime.members import (
    CommandRejected,
    Member,
    MemberIn,
    MemberPatch,
    MemberRegistry,
    UnknownMember,
    checksum_address,
)

__all__ = ["MODELS", "OPERATOR_ROUTES", "SCHEMAS", "add_operator_routes", "make_registry"]


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


class BookQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    depth: Annotated[int, Field(ge=1, le=10_000)] | None = None


# --------------------------------------------------------------------------- helpers


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
    pb = request.config_dict[MARKET].engine.products.get(ProductId(pid))
    if pb is None:
        raise ApiError(404, "UNKNOWN_PRODUCT", f"no product {shown(pid)}")
    return pb


def _account(engine, address: str) -> dict | None:
    a = engine.accounts.get(address)
    if a is None:
        return None
    return {"collateral": a.collateral, "export_capacity_w": a.export_capacity_w, "suspended": a.suspended,
            "open_exposure": a.open_exposure, "net_payable": a.net_payable}


def _member_view(request: web.Request, m: Member) -> dict:
    return {**m.model_dump(mode="json"), "account": _account(request.config_dict[MARKET].engine, m.address)}


# --------------------------------------------------------------------------- members


async def create_member(request: web.Request) -> web.Response:
    m = await read_body(request, MemberIn)
    return json_response(_member_view(request, await request.config_dict[MEMBERS].create(m)), 201)


async def list_members(request: web.Request) -> web.Response:
    return json_response([_member_view(request, m) for m in await request.config_dict[MEMBERS].list()])


async def get_member(request: web.Request) -> web.Response:
    address = _address(request)
    m = await request.config_dict[MEMBERS].get(address)
    if m is None:
        raise UnknownMember(f"no member {address}")
    return json_response(_member_view(request, m))


async def patch_member(request: web.Request) -> web.Response:
    address = _address(request)
    patch = await read_body(request, MemberPatch)
    return json_response(_member_view(request, await request.config_dict[MEMBERS].update(address, patch)))


async def member_positions(request: web.Request) -> web.Response:
    address = _address(request)
    market = request.config_dict[MARKET]
    engine = market.engine
    if address not in engine.accounts and await request.config_dict[MEMBERS].get(address) is None:
        raise UnknownMember(f"no member {address}")
    out: dict[str, dict] = {}
    for pid, pos in engine.positions.items():  # products not yet delivered
        p = pos.get(MemberId(address))
        if p is not None:
            state = engine.products[pid].state.value
            out[pid] = {"product_id": pid, "state": state, "bought": p[0], "sold": p[1], "net": p[0] - p[1],
                        "payable": p[2], "final": state in ("closed", "delivered")}
    # Delivered products: the engine has freed their positions; the journal keeps position_final.
    rows = await market.read_pool.fetch(
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
    return json_response({"member": address, "account": _account(engine, address),
                  "positions": [out[pid] for pid in sorted(out)]})


async def member_cancel_all(request: web.Request) -> web.Response:
    address = _address(request)
    body = await read_body(request, CancelAllIn, optional=True)
    if address not in request.config_dict[MARKET].engine.accounts:
        raise UnknownMember(f"member {address} has no account in the market")
    res = await _submit(request, CancelAll(0, MemberId(address), body.product_id, by_operator=True))
    done = next(ev for ev in res.events if type(ev) is CancelAllDone)
    return json_response({"member": address, "product_id": body.product_id, "cancelled": done.cancelled, "seq": done.seq})


# --------------------------------------------------------------------------- market


async def market_view(request: web.Request) -> web.Response:
    market = request.config_dict[MARKET]
    e, rt = market.engine, market.runtime
    return json_response({**market_summary(market, with_hash=True), "running": rt.running, "halt_reason": e.halt_reason,
                  "engine_seq": e.seq, "members": len(e.accounts), "open_orders": len(e.orders)})


async def halt(request: web.Request) -> web.Response:
    body = await read_body(request, HaltIn)
    res = await _submit(request, Halt(0, body.reason))
    return json_response({"halted": True, "reason": body.reason, "seq": res.events[-1].seq})


async def resume(request: web.Request) -> web.Response:
    await read_body(request, ResumeIn, optional=True)
    res = await _submit(request, Resume(0))
    return json_response({"halted": False, "seq": res.events[-1].seq})


def _open_orders(pb) -> int:
    return sum(lvl.count for side in (Side.BUY, Side.SELL) for _, lvl in pb.book.side_levels(side))


async def list_products(request: web.Request) -> web.Response:
    e = request.config_dict[MARKET].engine
    return json_response([{**product_summary(pb, pb.book.best_bid(), pb.book.best_ask()), "open_orders": _open_orders(pb)}
                  for pb in products_sorted(e)])


def _order_view(o) -> dict:
    return {"order_id": o.order_id, "member": o.member, "side": o.side.value, "price": o.price,
            "remaining": o.remaining, "quantity": o.quantity, "tif": o.tif.value,
            "client_order_id": o.client_order_id, "ts": iso(o.ts)}


async def product_book(request: web.Request) -> web.Response:
    pb = _product_book(request)
    q = read_query(request, BookQuery)
    out: dict[str, Any] = {"product_id": pb.product.product_id, "state": pb.state.value,
                           "seq": request.config_dict[MARKET].runtime.committed_seq}
    for side, key in ((Side.BUY, "bids"), (Side.SELL, "asks")):
        out[key] = [{"price": p, "volume": v, "orders": n} for p, v, n in pb.book.depth(side, q.depth)]
    for side, key in ((Side.BUY, "bid_orders"), (Side.SELL, "ask_orders")):
        orders: list[dict] = []
        for i, (_, lvl) in enumerate(pb.book.side_levels(side)):
            if q.depth is not None and i >= q.depth:
                break
            orders.extend(_order_view(o) for o in lvl.live_orders())
        out[key] = orders
    return json_response(out)


async def product_trades(request: web.Request) -> web.Response:
    pb = _product_book(request)
    q = read_query(request, PageQuery)
    return json_response(await request.config_dict[MARKET].trades.of_product(pb.product.product_id, q.after, q.limit))


# --------------------------------------------------------------------------- routes + OpenAPI


_ADDRESS_ERRORS = (400, 404)
_SUBMIT_ERRORS = (409, 503)
PAGE = (("after", {"type": "integer", "minimum": 0, "default": 0}, "only trades with seq > after"),
        ("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "at most this many"))

OPERATOR_ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/operator/members", create_member, "Create a member", ref("MemberView"), 201,
          body=MemberIn, errors=(400, 409, 422, 503),
          description="Stores the member and registers it with the engine (RegisterMember)."),
    Route("GET", "/api/operator/members", list_members, "List members", array(ref("MemberView"))),
    Route("GET", "/api/operator/members/{address}", get_member, "A member, with its engine account",
          ref("MemberView"), errors=_ADDRESS_ERRORS),
    Route("PATCH", "/api/operator/members/{address}", patch_member, "Change a member", ref("MemberView"),
          body=MemberPatch, errors=(400, 404, 409, 422, 503),
          description="Only the given fields change. Suspending cancels the member's resting orders."),
    Route("GET", "/api/operator/members/{address}/positions", member_positions, "A member's positions per product",
          ref("Positions"), errors=_ADDRESS_ERRORS,
          description="Live products from the engine; delivered products from the journal's position_final "
                      "events (a scan of the market's journal)."),
    Route("POST", "/api/operator/members/{address}/cancel-all", member_cancel_all, "Cancel a member's orders",
          obj(member=STR, product_id=OPT_STR, cancelled=INT, seq=INT), body=CancelAllIn, body_optional=True,
          errors=(400, 404, 409, 422, 503)),
    Route("GET", "/api/operator/market", market_view, "Market state", ref("MarketView")),
    Route("POST", "/api/operator/market/halt", halt, "Halt the market",
          obj(halted=BOOL, reason=STR, seq=INT), body=HaltIn, errors=(400, 409, 422, 503)),
    Route("POST", "/api/operator/market/resume", resume, "Resume the market", obj(halted=BOOL, seq=INT),
          body=ResumeIn, body_optional=True, errors=(400, 409, 422, 503)),
    Route("GET", "/api/operator/products", list_products, "Listed products",
          array(ref("OperatorProduct"))),
    Route("GET", "/api/operator/products/{product_id}/book", product_book,
          "Order book: levels and individual resting orders in priority order", ref("OperatorBook"),
          query=(("depth", {"type": "integer", "minimum": 1}, "price levels per side (default: all)"),),
          errors=(404, 422)),
    Route("GET", "/api/operator/products/{product_id}/trades", product_trades, "A product's committed trades",
          array(ref("OperatorTrade")), query=PAGE, errors=(404, 422)),
)

_LEVEL = obj(price=INT, volume=INT, orders=INT)
_PRODUCT = obj(product_id=STR, delivery_day={"type": "string", "format": "date"}, start=TIME, end=TIME,
                open=TIME, gate=TIME, state={"enum": ["pre_open", "open", "auction", "closed", "delivered"]},
                best_bid=OPT_INT, best_ask=OPT_INT)
_TRADE = obj(trade_id=INT, seq=INT, product_id=STR, delivery_start=TIME, energy_wh=INT, price_ticks=INT, ts=TIME)
_ACCOUNT = {"type": ["object", "null"], "description": "the engine's account (null: not registered)",
            "properties": {"collateral": INT, "export_capacity_w": INT, "suspended": BOOL, "open_exposure": INT,
                           "net_payable": INT}}
_ORDER = obj(order_id=INT, member=STR, side={"enum": ["buy", "sell"]}, price=INT, remaining=INT, quantity=INT,
              tif={"enum": ["gtc", "ioc", "fok"]}, client_order_id=OPT_STR, ts=TIME)
_POSITION = obj(product_id=STR, state=STR, bought=INT, sold=INT, net=INT, payable=INT, final=BOOL)
SCHEMAS = {
    "MemberView": {"allOf": [ref("Member"), obj(account=_ACCOUNT)]},
    "Positions": obj(member=STR, account=_ACCOUNT, positions=array(_POSITION)),
    "MarketView": obj(market_id=STR, config={"type": "object"}, running=BOOL, halted=BOOL, halt_reason=STR,
                       seq=INT, engine_seq=INT, commands=INT, now=OPT_STR, members=INT, open_orders=INT,
                       state_hash=STR),
    "Product": _PRODUCT,
    "OperatorProduct": {"allOf": [ref("Product"), obj(open_orders=INT)]},
    "Book": obj(product_id=STR, state=STR, seq=INT, bids=array(_LEVEL), asks=array(_LEVEL)),
    "OperatorBook": {"allOf": [ref("Book"), obj(bid_orders=array(_ORDER), ask_orders=array(_ORDER))]},
    "Trade": _TRADE,
    "OperatorTrade": {"allOf": [ref("Trade"), obj(buyer=STR, seller=STR, buy_order_id=INT, sell_order_id=INT)]},
}
# serialization models the operator routes return (components of the OpenAPI document)
MODELS: tuple[tuple[type[BaseModel], str], ...] = ((Member, "serialization"),)


def add_operator_routes(app: web.Application) -> None:
    """Add the operator routes (each guarded by the operator token). Needs ``app[MARKET]``,
    ``app[SETTINGS]``, ``app[MEMBERS]``."""
    add_routes(app, OPERATOR_ROUTES)
