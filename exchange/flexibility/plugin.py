"""The flexibility gateway as a subsystem of the exchange (exchange.gateway.plugin):
WebSocket requests (``flex_*`` messages, exchange.flexibility.protocol), operator
REST routes under ``/api/operator/flexibility``, its tables (migrations/),
Prometheus metrics in the app's registry, and the operator feed topic
``flexibility``. :data:`SUBSYSTEM` is registered in exchange.tools.platform."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from exchange.core.units import US_PER_MIN, to_us
from exchange.flexibility import cli as flex_cli
from exchange.flexibility import protocol as msgs
from exchange.flexibility.core import DeliveryKind, Direction, FlexConfig
from exchange.flexibility.market import BalancingMarket
from exchange.flexibility.service import FlexError, FlexService, offer_json
from exchange.flexibility.store import FlexStore
from exchange.gateway.feed import OPERATOR_FEED
from exchange.gateway.http import ANY_OBJECT, ApiError, Route, array, json_response, read_body, read_query
from exchange.gateway.keys import BILL_ITEM_SOURCES, MARKET, PAYOUT_SOURCES
from exchange.gateway.metrics import METRICS
from exchange.gateway.peers import PEERS
from exchange.gateway.plugin import Subsystem, WsRequest
from exchange.protocol.types import UtcTime

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
    return {"offer": offer_json(o, "open")}


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


WS = ((msgs.FlexOffer, _offer), (msgs.FlexOfferCancel, _offer_cancel), (msgs.FlexBaseline, _baseline),
      (msgs.FlexMeter, _meter), (msgs.FlexRespond, _respond), (msgs.FlexStatus, _status))


# --------------------------------------------------------------------------- operator REST


class OpenEventIn(BaseModel):
    """Open a demand-response event by hand for the period starting at ``period_start``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    period_start: UtcTime
    direction: Literal["up", "down"] = "up"
    target_w: Annotated[StrictInt, Field(ge=1, le=10**10)] | None = Field(
        None, description="power to invite for (W); default: invite every eligible offer")


def _int_query(request: web.Request, name: str) -> int | None:
    v = request.query.get(name)
    if v is None:
        return None
    if not (v.isascii() and v.isdigit() and len(v) <= 18):
        raise ApiError(422, "INVALID_REQUEST", f"{name} must be a non-negative integer")
    return int(v)


def _svc(request: web.Request) -> FlexService:
    return request.config_dict[FLEX]


async def overview(request: web.Request) -> web.Response:
    f = _svc(request)
    c = f.config
    r = c.rules
    return json_response({"market": f.market.name, "policy": c.policy.value, "split": c.split.value,
                  "share_rule": c.share_rule.value, "reserve_margin_ppm": c.reserve_margin_ppm,
                  "auto_events": f.auto_events,
                  "product": {"name": r.name, "direction": r.direction.value, "min_bid_w": r.min_bid_w,
                              "granularity_w": r.granularity_w, "max_bid_w": r.max_bid_w, "divisible": r.divisible,
                              "validity_minutes": r.validity_minutes,
                              "full_activation_minutes": r.full_activation_minutes,
                              "capacity_price": r.capacity_price, "penalty_price": r.penalty_price},
                  "counts": {k: int(v) for k, v in f.stats.items()}})


async def list_offers(request: web.Request) -> web.Response:
    return json_response(_svc(request).offers_view(request.query.get("member")))


async def list_events(request: web.Request) -> web.Response:
    return json_response(_svc(request).events_view())


async def open_event(request: web.Request) -> web.Response:
    body = await read_body(request, OpenEventIn)
    f = _svc(request)
    try:
        ev = await f.open_event(to_us(body.period_start), direction=Direction(body.direction), target_w=body.target_w)
    except FlexError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    view = next(e for e in f.events_view() if e["event_id"] == ev.event_id)
    return json_response({**view, "invitations": f.invitations_view(ev.event_id)}, 201)


async def get_event(request: web.Request) -> web.Response:
    f = _svc(request)
    raw = request.match_info["event_id"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 16):  # int() also takes "１" and " 1_0 "
        raise ApiError(422, "INVALID_REQUEST", "event_id must be a positive integer (ASCII digits)")
    eid = int(raw)
    view = next((e for e in f.events_view() if e["event_id"] == eid), None)
    if view is None:
        raise ApiError(404, "UNKNOWN_EVENT", f"no event {eid}")
    return json_response({**view, "invitations": f.invitations_view(eid), "bids": f.bids_view(eid),
                  "activations": f.activations_view(eid), "delivery": f.delivery_view(eid),
                  "shares": f.shares_view(eid)})


class ViabilityQuery(BaseModel):
    """``?period_start=ISO 8601 time with offset``."""

    model_config = ConfigDict(extra="forbid")
    period_start: UtcTime


async def viability(request: web.Request) -> web.Response:
    q = read_query(request, ViabilityQuery)
    start = to_us(q.period_start)
    f = _svc(request)
    return json_response({"period_start": request.query["period_start"],
                          **f.assess_period(start, start + f.config.rules.validity_minutes * US_PER_MIN)})


async def list_bids(request: web.Request) -> web.Response:
    return json_response(_svc(request).bids_view(_int_query(request, "event_id")))


async def list_activations(request: web.Request) -> web.Response:
    return json_response(_svc(request).activations_view(_int_query(request, "event_id"), request.query.get("member")))


async def list_delivery(request: web.Request) -> web.Response:
    return json_response(_svc(request).delivery_view(_int_query(request, "event_id"), request.query.get("member")))


async def list_shares(request: web.Request) -> web.Response:
    return json_response(_svc(request).shares_view(_int_query(request, "event_id"), request.query.get("member")))


async def list_payouts(request: web.Request) -> web.Response:
    return json_response(await _svc(request).store.payouts())


_EVENT_Q = (("event_id", {"type": "integer", "minimum": 0}, "only this event"),)
_MEMBER_Q = (("member", {"type": "string"}, "only this member (address)"),)
_LIST = array(ANY_OBJECT)
_TAGS = ("operator", "flexibility")
ROUTES = (
    Route("GET", "/api/operator/flexibility", overview, "Flexibility gateway: policy, product rules, counts",
          ANY_OBJECT, tags=_TAGS),
    Route("GET", "/api/operator/flexibility/offers", list_offers, "Members' flexibility offers", _LIST,
          query=_MEMBER_Q, tags=_TAGS),
    Route("GET", "/api/operator/flexibility/events", list_events, "Demand-response events", _LIST, tags=_TAGS),
    Route("POST", "/api/operator/flexibility/events", open_event, "Open a demand-response event by hand",
          ANY_OBJECT, status=201, body=OpenEventIn, errors=(409,), tags=_TAGS),
    Route("GET", "/api/operator/flexibility/events/{event_id}", get_event,
          "One event with its invitations, bids, activations, delivery checks and shares", ANY_OBJECT,
          errors=(404, 422), tags=_TAGS, path_params={"event_id": {"type": "integer"}}),
    Route("GET", "/api/operator/flexibility/viability", viability, "Is a period viable for a balancing bid",
          ANY_OBJECT, query=(("period_start", {"type": "string", "format": "date-time"}, "period start"),),
          errors=(422,), tags=_TAGS),
    Route("GET", "/api/operator/flexibility/bids", list_bids, "Balancing bids built by the pooler", _LIST,
          query=_EVENT_Q, errors=(422,), tags=_TAGS),
    Route("GET", "/api/operator/flexibility/activations", list_activations, "Bid activations", _LIST,
          query=_EVENT_Q + _MEMBER_Q, errors=(422,), tags=_TAGS),
    Route("GET", "/api/operator/flexibility/delivery", list_delivery, "Delivery checks per interval", _LIST,
          query=_EVENT_Q + _MEMBER_Q, errors=(422,), tags=_TAGS),
    Route("GET", "/api/operator/flexibility/shares", list_shares, "Revenue shares and penalties", _LIST,
          query=_EVENT_Q + _MEMBER_Q, errors=(422,), tags=_TAGS),
    Route("GET", "/api/operator/flexibility/payouts", list_payouts, "Member payouts and their settlement", _LIST,
          tags=_TAGS),
)


# --------------------------------------------------------------------------- metrics


class FlexCollector:
    """Read from the service at scrape time (no work on the event path)."""

    def __init__(self, flex: FlexService) -> None:
        self.flex = flex

    def collect(self) -> Iterator[Metric]:
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


def flexibility_subsystem(*, config: FlexConfig | None = None, market: BalancingMarket | None = None,
                          auto_events: bool = False, poll_s: float = 0.25, check_grace_s: int = 60) -> Subsystem:
    """The flexibility gateway as a subsystem (tests pass their own balancing market or config)."""
    opts: dict[str, Any] = {"config": config, "market": market, "auto_events": auto_events,
                            "check_grace_s": check_grace_s}

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        m = app[MARKET]
        publisher = _FeedPublisher(app)
        flex = FlexService(m.pool, m.journal.market_id, m.runtime.clock, send=app[PEERS].send,
                           on_change=publisher, **opts)
        await flex.load()
        app[FLEX] = flex
        app[PAYOUT_SOURCES].append(flex.store)  # settlement pays members' shares on chain
        app[BILL_ITEM_SOURCES].append(flex.store)  # and they appear on members' bills
        metrics = app.get(METRICS)
        if metrics is not None:
            metrics.registry.register(FlexCollector(flex))
        if poll_s > 0:
            flex.start(poll_s)
        publisher()
        yield
        await flex.stop()

    return Subsystem(
        name="flexibility",
        summary="members' demand response pooled into balancing bids (docs/flexibility.md)",
        routes=ROUTES,
        ws_requests=tuple(WsRequest(model, _bound(fn)) for model, fn in WS),
        ws_pushes=msgs.PUSHES,
        migrations=Path(__file__).resolve().parent / "migrations",
        lifecycle=lifecycle,
        commands=flex_cli.add_commands,
        payout_source=FlexStore,  # settlement's own process pays the same rows
    )


def _bound(fn: Any) -> Any:
    async def handler(app: web.Application, member: str, msg: Any) -> Any:
        return await fn(app[FLEX], member, msg)

    return handler


SUBSYSTEM = flexibility_subsystem()
