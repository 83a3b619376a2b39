"""The flexibility gateway's edges in the aiohttp app: WebSocket request handlers
(``flex_*`` messages), operator REST routes under ``/api/operator/flexibility``,
Prometheus metrics in the app's registry, and the operator feed topic
``flexibility``. ``add_flexibility(app)`` wires everything (called by
exchange/gateway/app.py)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Literal

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt

from exchange.core.units import US_PER_MIN, to_us
from exchange.gateway.keys import MARKET, MARKET_DATA, METRICS, OPERATOR_FEED, WS_HANDLERS
from exchange.gateway.operator import ApiError, _body, _json, _operator_only
from exchange.flexibility.core import DeliveryKind, Direction, FlexConfig
from exchange.flexibility.market import BalancingMarket
from exchange.flexibility.service import FlexError, FlexService

log = logging.getLogger(__name__)

FLEX: web.AppKey[FlexService] = web.AppKey("flexibility")


# --------------------------------------------------------------------------- WebSocket


async def _offer(flex: FlexService, member: str, msg) -> dict:
    start = to_us(msg.period_start)
    end = start + msg.period_minutes * US_PER_MIN
    energy = msg.energy_wh
    if msg.duration_minutes is not None:
        if msg.duration_minutes > msg.period_minutes:
            raise FlexError("INVALID_DURATION", "duration_minutes exceeds the period")
        energy = msg.power_w * msg.duration_minutes // 60
        if energy < 1:
            raise FlexError("INVALID_DURATION", "power x duration is less than 1 Wh")
    o = await flex.declare_offer(member, start, end, Direction(msg.direction), msg.power_w, msg.price,
                                 DeliveryKind(msg.kind), energy)
    from exchange.flexibility.service import _offer_json
    return {"offer": _offer_json(o, "open")}


async def _offer_cancel(flex: FlexService, member: str, msg) -> dict:
    await flex.cancel_offer(member, msg.offer_id)
    return {"offer_id": msg.offer_id, "status": "cancelled"}


async def _baseline(flex: FlexService, member: str, msg) -> dict:
    n = await flex.submit_baseline(member, [(to_us(s.start), s.consumption_wh, s.generation_wh) for s in msg.slots])
    return {"slots": n}


async def _meter(flex: FlexService, member: str, msg) -> dict:
    n = await flex.report_meter(member, [(to_us(r.interval_start), r.consumption_wh, r.generation_wh)
                                         for r in msg.readings])
    return {"readings": n}


async def _respond(flex: FlexService, member: str, msg) -> dict:
    return await flex.respond(member, msg.invitation_id, msg.accept)


async def _status(flex: FlexService, member: str, msg) -> dict:
    return {"offers": flex.offers_view(member), "invitations": flex.invitations_view(member=member),
            "activations": flex.activations_view(member=member), "delivery": flex.delivery_view(member=member),
            "shares": flex.shares_view(member=member)}


WS = {"flex_offer": _offer, "flex_offer_cancel": _offer_cancel, "flex_baseline": _baseline, "flex_meter": _meter,
      "flex_respond": _respond, "flex_status": _status}


# --------------------------------------------------------------------------- operator REST


class OpenEventIn(BaseModel):
    """Open a demand-response event by hand for the period starting at ``period_start``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    period_start: AwareDatetime
    direction: Literal["up", "down"] = "up"
    target_w: Annotated[StrictInt, Field(ge=1, le=10**10)] | None = Field(
        None, description="power to invite for (W); default: invite every eligible offer")


def _int_query(request: web.Request, name: str) -> int | None:
    v = request.query.get(name)
    if v is None:
        return None
    if not v.isdigit():
        raise ApiError(422, "INVALID_REQUEST", f"{name} must be a non-negative integer")
    return int(v)


def _svc(request: web.Request) -> FlexService:
    return request.config_dict[FLEX]


async def overview(request: web.Request) -> web.Response:
    f = _svc(request)
    c = f.config
    r = c.rules
    return _json({"market": f.market.name, "policy": c.policy.value, "split": c.split.value,
                  "share_rule": c.share_rule.value, "reserve_margin_ppm": c.reserve_margin_ppm,
                  "auto_events": f.auto_events,
                  "product": {"name": r.name, "direction": r.direction.value, "min_bid_w": r.min_bid_w,
                              "granularity_w": r.granularity_w, "max_bid_w": r.max_bid_w, "divisible": r.divisible,
                              "validity_minutes": r.validity_minutes,
                              "full_activation_minutes": r.full_activation_minutes,
                              "capacity_price": r.capacity_price, "penalty_price": r.penalty_price},
                  "counts": {k: int(v) for k, v in f.stats.items()}})


async def list_offers(request: web.Request) -> web.Response:
    return _json(_svc(request).offers_view(request.query.get("member")))


async def list_events(request: web.Request) -> web.Response:
    return _json(_svc(request).events_view())


async def open_event(request: web.Request) -> web.Response:
    body = await _body(request, OpenEventIn)
    f = _svc(request)
    try:
        ev = await f.open_event(to_us(body.period_start), direction=Direction(body.direction), target_w=body.target_w)
    except FlexError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    view = next(e for e in f.events_view() if e["event_id"] == ev.event_id)
    return _json({**view, "invitations": f.invitations_view(ev.event_id)}, 201)


async def get_event(request: web.Request) -> web.Response:
    f = _svc(request)
    try:
        eid = int(request.match_info["event_id"])
    except ValueError:
        raise ApiError(422, "INVALID_REQUEST", "event_id must be an integer") from None
    view = next((e for e in f.events_view() if e["event_id"] == eid), None)
    if view is None:
        raise ApiError(404, "UNKNOWN_EVENT", f"no event {eid}")
    return _json({**view, "invitations": f.invitations_view(eid), "bids": f.bids_view(eid),
                  "activations": f.activations_view(eid), "delivery": f.delivery_view(eid),
                  "shares": f.shares_view(eid)})


async def viability(request: web.Request) -> web.Response:
    raw = request.query.get("period_start")
    try:
        start = to_us(datetime.fromisoformat(raw.replace("Z", "+00:00"))) if raw else None
    except ValueError:
        start = None
    if start is None:
        raise ApiError(422, "INVALID_REQUEST", "period_start=ISO 8601 time with offset is required")
    f = _svc(request)
    return _json({"period_start": raw, **f.assess_period(start, start + f.config.rules.validity_minutes * US_PER_MIN)})


async def list_bids(request: web.Request) -> web.Response:
    return _json(_svc(request).bids_view(_int_query(request, "event_id")))


async def list_activations(request: web.Request) -> web.Response:
    return _json(_svc(request).activations_view(_int_query(request, "event_id"), request.query.get("member")))


async def list_delivery(request: web.Request) -> web.Response:
    return _json(_svc(request).delivery_view(_int_query(request, "event_id"), request.query.get("member")))


async def list_shares(request: web.Request) -> web.Response:
    return _json(_svc(request).shares_view(_int_query(request, "event_id"), request.query.get("member")))


async def list_payouts(request: web.Request) -> web.Response:
    f = _svc(request)
    rows = await f.store.pool.fetch(
        "SELECT payout_id, event_id, member, amount_units, status, batch_id FROM flex_payouts WHERE market_id = $1 "
        "ORDER BY payout_id", f.market_id)
    return _json([dict(r) for r in rows])


ROUTES = (
    ("GET", "/api/operator/flexibility", overview),
    ("GET", "/api/operator/flexibility/offers", list_offers),
    ("GET", "/api/operator/flexibility/events", list_events),
    ("POST", "/api/operator/flexibility/events", open_event),
    ("GET", "/api/operator/flexibility/events/{event_id}", get_event),
    ("GET", "/api/operator/flexibility/viability", viability),
    ("GET", "/api/operator/flexibility/bids", list_bids),
    ("GET", "/api/operator/flexibility/activations", list_activations),
    ("GET", "/api/operator/flexibility/delivery", list_delivery),
    ("GET", "/api/operator/flexibility/shares", list_shares),
    ("GET", "/api/operator/flexibility/payouts", list_payouts),
)


# --------------------------------------------------------------------------- metrics


class FlexCollector:
    """Read from the service at scrape time (no work on the event path)."""

    def __init__(self, flex: FlexService) -> None:
        self.flex = flex

    def collect(self):
        s = self.flex.stats
        for name, key, doc in (
                ("voltbourse_flex_offers", "offers", "Flexibility offers declared."),
                ("voltbourse_flex_invitations", "invitations", "Invitations sent (incl. reserve invitations)."),
                ("voltbourse_flex_bids_built", "bids_built", "Balancing bids built by the pooler."),
                ("voltbourse_flex_bids_submitted", "bids_submitted", "Bids accepted by the balancing market."),
                ("voltbourse_flex_no_bid_events", "no_bid", "Events that produced no bid."),
                ("voltbourse_flex_activations", "activations", "Bid activations by the balancing market."),
                ("voltbourse_flex_activated_power_w", "activated_w", "Activated power, W (summed over activations)."),
                ("voltbourse_flex_delivered_energy_wh", "delivered_wh", "Delivered energy (checked), Wh."),
                ("voltbourse_flex_shortfall_energy_wh", "shortfall_wh", "Under-delivered energy (checked), Wh."),
                ("voltbourse_flex_reserve_calls", "reserve_calls", "Reserve dispatch instructions."),
                ("voltbourse_flex_revenue_units", "revenue_units", "Gross flexibility revenue, 1e-8 EUR."),
                ("voltbourse_flex_penalty_units", "penalty_units", "Shortfall penalties, 1e-8 EUR."),
                ("voltbourse_flex_payouts", "payouts", "Member payouts written for settlement.")):
            yield CounterMetricFamily(name, doc, value=s.get(key, 0))
        g = GaugeMetricFamily("voltbourse_flex_events", "Flexibility events by phase.", labels=["phase"])
        phases: dict[str, int] = {}
        for ev in self.flex.events.values():
            phases[ev.phase] = phases.get(ev.phase, 0) + 1
        for phase, n in sorted(phases.items()):
            g.add_metric([phase], n)
        yield g


# --------------------------------------------------------------------------- wiring


class _FeedPublisher:
    """Coalesce changes: publish the ``flexibility`` topic at most every ``interval`` s."""

    def __init__(self, app: web.Application, interval: float = 0.3) -> None:
        self.app = app
        self.interval = interval
        self.handle: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        if self.handle is None:
            try:
                self.handle = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:
                pass

    def flush(self) -> None:
        self.handle = None
        feed = self.app.get(OPERATOR_FEED)
        if feed is not None and FLEX in self.app:
            feed.publish("flexibility", feed_payload(self.app[FLEX]))


def feed_payload(flex: FlexService) -> dict:
    """The operator page's ``flexibility`` topic: flat dicts; money as decimal strings
    (the feed's convention: they may exceed 2^53)."""
    snap = flex.snapshot()
    for rows in snap.values():
        for row in rows:
            for k in list(row):
                if k.endswith("_units") and row[k] is not None:
                    row[k] = str(row[k])
    return snap


def add_flexibility(app: web.Application, *, config: FlexConfig | None = None, market: BalancingMarket | None = None,
                    auto_events: bool = False, poll_s: float = 0.25, check_grace_s: int = 60) -> None:
    """Register the flexibility gateway on ``app`` (before it starts): WS handlers, operator
    routes, metrics, feed; the service loads its state and starts stepping on startup."""
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, _operator_only(handler))
    for kind, fn in WS.items():
        app[WS_HANDLERS][kind] = _bound(app, fn)
    publisher = _FeedPublisher(app)
    opts = {"config": config, "market": market, "auto_events": auto_events, "check_grace_s": check_grace_s}

    async def startup(app: web.Application) -> None:
        m = app[MARKET]
        md = app[MARKET_DATA]

        def send(member: str, msg: dict) -> None:
            for s in list(md.sessions.get(member, ())):
                s.send(msg)

        flex = FlexService(m.pool, m.journal.market_id, m.runtime.clock, send=send, on_change=publisher, **opts)
        await flex.load()
        app[FLEX] = flex
        metrics = app.get(METRICS)
        if metrics is not None:
            metrics.registry.register(FlexCollector(flex))
        if poll_s > 0:
            flex.start(poll_s)
        publisher()

    async def cleanup(app: web.Application) -> None:
        if FLEX in app:
            await app[FLEX].stop()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)


def _bound(app: web.Application, fn):
    async def handler(session, msg) -> None:
        flex = app.get(FLEX)
        if flex is None:
            return session.error(msg.id, "UNAVAILABLE", "the flexibility gateway is starting")
        try:
            result = await fn(flex, session.member, msg)
        except FlexError as exc:
            return session.error(msg.id, exc.code, exc.message)
        session.send({"type": "response", "id": msg.id, "result": result})

    return handler
