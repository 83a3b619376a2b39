"""Metering and billing as a subsystem of the exchange (exchange.gateway.plugin): operator
REST routes under ``/api/operator/metering`` (points, uploads, tariffs, fees, settlement,
bills, KPIs), a signed REST push for members' gateways (``/api/metering/readings``),
peer WebSocket messages (exchange.metering.protocol) and its tables (migrations/).
:data:`SUBSYSTEM` is registered through the ``voltbourse.subsystems`` entry points."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from exchange.core.units import US_PER_MIN, UTC, from_us, iso, to_us
from exchange.gateway.feed import OPERATOR_FEED
from exchange.gateway.http import (
    ANY_OBJECT,
    ApiError,
    Route,
    array,
    json_response,
    read_body,
    read_query,
    validate_json_body,
)
from exchange.gateway.keys import BILL_ITEM_SOURCES, MARKET, OUTLOOK_SOURCES, PAYOUT_SOURCES, SETTINGS
from exchange.gateway.plugin import Subsystem, WsRequest
from exchange.metering import cli as metering_cli
from exchange.metering import protocol as msgs
from exchange.metering.core.model import MeterPoint, PointKind
from exchange.metering.fees import (
    FeeScheduleIn,
    exact,
    parse_tariff_csv,
    parse_tariff_rows,
    schedule_json,
    schedule_view,
)
from exchange.metering.readings import UploadRefused
from exchange.metering.service import (
    INVALID_PERIOD,
    INVALID_UPLOAD,
    UPLOAD_TOO_LARGE,
    MeteringService,
    money_json,
    upload_error,
)
from exchange.metering.statement import render_csv, render_html, render_pdf
from exchange.metering.store import MeteringStore
from exchange.protocol.auth import checksum, recover_login
from exchange.protocol.errors import VoltbourseError
from exchange.protocol.types import UtcTime

log = logging.getLogger(__name__)

METERING: web.AppKey[MeteringService] = web.AppKey("metering", MeteringService)
MAX_ENERGY_VIEW_US = 31 * 86_400_000_000

Address = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]
TariffId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")]


def _svc(request: web.Request) -> MeteringService:
    return request.config_dict[METERING]


def _now(request: web.Request) -> int:
    return request.config_dict[MARKET].runtime.clock.now_us()


# --------------------------------------------------------------------------- bodies and queries


class PointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    point_id: msgs.PointId
    member: Address
    kind: Literal["import", "export", "generation", "storage_charge", "storage_discharge"]


class PointsIn(BaseModel):
    """Register metering points (an existing point with the same member and kind is kept)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    points: Annotated[list[PointIn], Field(min_length=1, max_length=10_000)]


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    valid_from: UtcTime
    import_ct_per_kwh: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?$")]
    feed_in_ct_per_kwh: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?$")]


class TariffIn(BaseModel):
    """A tariff's name and prices (each holds until the next one); prices given again for
    the same time replace the old ones."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    prices: Annotated[list[PriceIn], Field(max_length=200_000)] = Field(default_factory=list)


class MemberTariffIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tariff_id: TariffId
    effective_from: UtcTime
    contracted_power_kw: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?$")] = "0"


class IntensityIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    class Value(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        valid_from: UtcTime
        g_per_kwh: Annotated[int, Field(ge=0, le=5_000)]

    values: Annotated[list[Value], Field(min_length=1, max_length=100_000)]


class PeriodIn(BaseModel):
    """A billing period: ``month`` (YYYY-MM, the community's local month) or ``start`` and
    ``end``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    month: Annotated[str, StringConstraints(pattern=r"^20[0-9]{2}-(0[1-9]|1[0-2])$")] | None = None
    start: UtcTime | None = None
    end: UtcTime | None = None


class PeriodQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    month: Annotated[str, StringConstraints(pattern=r"^20[0-9]{2}-(0[1-9]|1[0-2])$")] | None = None
    start: UtcTime | None = None
    end: UtcTime | None = None
    member: Address | None = None
    by: Literal["period", "day"] = "period"
    format: Literal["json", "csv", "html", "pdf"] = "json"
    point_id: str | None = None


def period_of(svc: MeteringService, month: str | None, start: datetime | None, end: datetime | None) -> tuple[int, int]:
    if month is not None:
        if start is not None or end is not None:
            raise ApiError(422, "INVALID_REQUEST", "give month or start and end, not both")
        y, m = int(month[:4]), int(month[5:])
        first = datetime(y, m, 1, tzinfo=svc.tz)
        last = datetime(y + m // 12, m % 12 + 1, 1, tzinfo=svc.tz)
        return to_us(first.astimezone(UTC)), to_us(last.astimezone(UTC))
    if start is None or end is None:
        raise ApiError(422, "INVALID_REQUEST", "give month (YYYY-MM) or start and end")
    return to_us(start), to_us(end)


# --------------------------------------------------------------------------- operator routes


async def add_points(request: web.Request) -> web.Response:
    body = await read_body(request, PointsIn)
    accounts = request.config_dict[MARKET].engine.accounts
    strangers = sorted({checksum(p.member) for p in body.points} - set(accounts))
    if strangers:  # a mistyped address: its readings billed, its charges then written off on chain
        raise ApiError(404, "UNKNOWN_MEMBER", f"not members of this market: {', '.join(strangers[:10])}"
                                              f"{' …' if len(strangers) > 10 else ''} (register them first)")
    new = await _svc(request).add_points([MeterPoint(p.point_id, checksum(p.member), PointKind(p.kind))
                                          for p in body.points])
    return json_response({"new": new, "points": len(body.points)}, 201)


async def list_points(request: web.Request) -> web.Response:
    q = read_query(request, PeriodQuery)
    pts = await _svc(request).store.points(checksum(q.member) if q.member else None)
    return json_response([{"point_id": p.point_id, "member": p.member, "kind": p.kind.value} for p in pts])


async def _read_upload(request: web.Request) -> bytes:
    """The raw body, refused with 413 beyond ``metering_upload_max_mb`` (streamed to a
    temporary file, so a large upload never sits in memory twice)."""
    limit = request.config_dict[SETTINGS].metering_upload_max_mb * 1024 * 1024
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, UPLOAD_TOO_LARGE, f"the upload is {request.content_length} bytes; the limit is {limit}")
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as buf:
        async for chunk in request.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, UPLOAD_TOO_LARGE, f"the upload exceeds the limit of {limit} bytes")
            buf.write(chunk)
        if size == 0:
            raise ApiError(422, INVALID_UPLOAD, "the upload is empty", errors=[], error_count=1)
        buf.seek(0)
        return buf.read()


async def upload_readings(request: web.Request) -> web.Response:
    data = await _read_upload(request)
    name = request.query.get("filename", "upload")[:200]
    result = await _svc(request).import_file(data, name, now_us=_now(request))
    return json_response(result, 201)


async def list_uploads(request: web.Request) -> web.Response:
    return json_response(await _svc(request).store.uploads())


async def list_corrections(request: web.Request) -> web.Response:
    q = read_query(request, PeriodQuery)
    rows = await _svc(request).store.corrections(q.point_id)
    return json_response([{**r, "interval_start": iso(to_us(r["interval_start"])), "at": iso(to_us(r["at"]))}
                          for r in rows])


async def put_tariff(request: web.Request) -> web.Response:
    tariff_id = _tariff_id(request)
    if request.content_type == "text/csv":
        data = await _read_upload(request)
        name = request.query.get("name", tariff_id)[:100]
        try:
            prices = parse_tariff_csv(data)
        except UploadRefused as exc:
            raise upload_error(exc) from None
    else:
        body = await read_body(request, TariffIn)
        name = body.name
        try:
            prices = parse_tariff_rows([["valid_from", "import_ct_per_kwh", "feed_in_ct_per_kwh"]] + [
                [p.valid_from.isoformat(), p.import_ct_per_kwh, p.feed_in_ct_per_kwh] for p in body.prices])
        except UploadRefused as exc:
            raise upload_error(exc) from None
    n = await _svc(request).put_tariff(tariff_id, name, prices)
    return json_response({"tariff_id": tariff_id, "name": name, "prices": n})


def _member(request: web.Request) -> str:
    m = request.match_info["member"]
    if not (len(m) == 42 and m.startswith("0x") and all(c in "0123456789abcdefABCDEF" for c in m[2:])):
        raise ApiError(422, "INVALID_REQUEST", "member must be a 0x address (40 hex digits)")
    return checksum(m)


def _tariff_id(request: web.Request) -> str:
    tid = request.match_info["tariff_id"]
    if not (0 < len(tid) <= 64 and all(c.isalnum() or c in "._-" for c in tid) and tid.isascii()):
        raise ApiError(422, "INVALID_REQUEST", "tariff_id: 1-64 characters of A-Z a-z 0-9 . _ -")
    return tid


async def list_tariffs(request: web.Request) -> web.Response:
    rows = await _svc(request).store.tariffs()
    return json_response([{**r, "first": r["first"] and iso(to_us(r["first"])),
                           "last": r["last"] and iso(to_us(r["last"]))} for r in rows])


async def put_member_tariff(request: web.Request) -> web.Response:
    member = _member(request)
    body = await read_body(request, MemberTariffIn)
    try:
        watts = exact(body.contracted_power_kw, 1000, "contracted_power_kw")
    except ValueError as exc:
        raise ApiError(422, "INVALID_REQUEST", str(exc)) from None
    await _svc(request).assign_tariff(member, to_us(body.effective_from), body.tariff_id, watts)
    return json_response({"member": member, "tariff_id": body.tariff_id,
                          "effective_from": iso(to_us(body.effective_from)), "contracted_power_w": watts})


async def list_member_tariffs(request: web.Request) -> web.Response:
    rows = await _svc(request).store.member_tariffs()
    return json_response([{"member": m, "effective_from": iso(t), "tariff_id": tid, "contracted_power_w": w}
                          for m, t, tid, w in rows])


async def put_fees(request: web.Request) -> web.Response:
    body = await read_body(request, FeeScheduleIn)
    try:
        schedule = body.schedule()
    except ValueError as exc:
        raise ApiError(422, "INVALID_REQUEST", str(exc)) from None
    stored = schedule_json(schedule)
    await _svc(request).store.put_fee_schedule(to_us(body.effective_from), stored)
    return json_response({"effective_from": iso(to_us(body.effective_from)), **schedule_view(stored)})


async def list_fees(request: web.Request) -> web.Response:
    rows = await _svc(request).store.fee_schedules()
    return json_response([{"effective_from": iso(t), **schedule_view(s)} for t, s in rows])


async def put_intensity(request: web.Request) -> web.Response:
    body = await read_body(request, IntensityIn)
    await _svc(request).store.put_intensity([(to_us(v.valid_from), v.g_per_kwh) for v in body.values])
    return json_response({"values": len(body.values)})


async def settlement(request: web.Request) -> web.Response:
    """Delivery settlement of a period or of one product (``product_id``): every member's
    flows, the community's totals and the balance checks (they passed, or this is a 500)."""
    svc = _svc(request)
    product = request.query.get("product_id")
    if product is not None:
        start, end = _product_period(product)
    else:
        q = read_query(request, PeriodQuery)
        start, end = period_of(svc, q.month, q.start, q.end)
    s = await svc.settle(start, end)
    total: dict[str, int] = {}
    for f in s.flows.values():
        for k, v in f.as_dict().items():
            total[k] = total.get(k, 0) + v
    return json_response({"start": iso(start), "end": iso(end), "balanced": True,
                          "community": total, "members": {m: f.as_dict() for m, f in sorted(s.flows.items())}})


def _product_period(product_id: str) -> tuple[int, int]:
    try:
        stamp, minutes = product_id.rsplit("-", 1)
        start = datetime.strptime(stamp, "%Y%m%dT%H%MZ").replace(tzinfo=UTC)
        n = int(minutes)
    except ValueError:
        raise ApiError(422, "INVALID_REQUEST", f"{product_id[:40]!r} is not a product id like 20261122T2300Z-60") from None
    if n not in (15, 30, 60):
        raise ApiError(422, "INVALID_REQUEST", "a product lasts 15, 30 or 60 minutes")
    return to_us(start), to_us(start) + n * US_PER_MIN


async def run_bills(request: web.Request) -> web.Response:
    body = await read_body(request, PeriodIn)
    svc = _svc(request)
    start, end = period_of(svc, body.month, body.start, body.end)
    now = _now(request)
    if end > now:  # billed from estimates, charged at once, then fixed: not before its end
        raise VoltbourseError(INVALID_PERIOD, f"the period ends {iso(end)}, after the market's now ({iso(now)}): "
                                              "bill a period once it has ended")
    bills = await svc.run_bills(start, end)
    return json_response({"start": iso(start), "end": iso(end), "bills": bills,
                          "total": money_json(sum(int(b["total"]["units"]) for b in bills)),
                          "community": money_json(sum(int(b["community"]["units"]) for b in bills))})


async def list_bills(request: web.Request) -> web.Response:
    q = read_query(request, PeriodQuery)
    rows = await _svc(request).store.bills(checksum(q.member) if q.member else None)
    return json_response([{"member": r["member"], "start": iso(to_us(r["period_start"])),
                           "end": iso(to_us(r["period_end"])), "version": r["version"], "digest": r["digest"],
                           "total": money_json(int(r["total_units"])),
                           "community": money_json(int(r["community_units"]))} for r in rows])


async def get_bill(request: web.Request) -> web.StreamResponse:
    member = _member(request)
    q = read_query(request, PeriodQuery)
    svc = _svc(request)
    start, end = period_of(svc, q.month, q.start, q.end)
    b = await svc.bill_for(member, start, end)
    return statement_response(request, b, q.format)


def statement_response(request: web.Request, b: dict, fmt: str) -> web.StreamResponse:
    community = request.config_dict[SETTINGS].market_id
    tz = request.config_dict[METERING].tz
    stem = f"bill-{b['member'][:10]}-{b['start'][:10]}"
    if fmt == "csv":
        return web.Response(text=render_csv(b), content_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'})
    if fmt == "html":
        return web.Response(text=render_html(b, community=community, tz=tz), content_type="text/html")
    if fmt == "pdf":
        return web.Response(body=render_pdf(b, community=community, tz=tz), content_type="application/pdf",
                            headers={"Content-Disposition": f'attachment; filename="{stem}.pdf"'})
    return json_response(b)


async def list_payouts(request: web.Request) -> web.Response:
    q = read_query(request, PeriodQuery)
    rows = await _svc(request).store.payouts(checksum(q.member) if q.member else None)
    return json_response([{"payout_id": r["payout_id"], "event_id": r["event_id"], "member": r["member"],
                           "start": iso(to_us(r["period_start"])), "end": iso(to_us(r["period_end"])),
                           "version": r["version"], "amount": money_json(int(r["amount_units"])),
                           "settled_batch": r["settled_batch"]} for r in rows])


async def kpis(request: web.Request) -> web.Response:
    q = read_query(request, PeriodQuery)
    svc = _svc(request)
    start, end = period_of(svc, q.month, q.start, q.end)
    return json_response(await svc.kpis(start, end, by_day=q.by == "day"))


async def info(request: web.Request) -> web.Response:
    """What a member's gateway or a client needs to meter for this community (public)."""
    svc = _svc(request)
    s = request.config_dict[SETTINGS]
    return json_response({"market_id": s.market_id, "interval_minutes": svc.interval_minutes,
                          "timezone": s.timezone, "readings_per_push": msgs.MAX_PUSH,
                          "readings_per_rest_push": msgs.MAX_REST_PUSH,
                          "max_energy_wh": 10**9, "upload_max_mb": s.metering_upload_max_mb,
                          "point_kinds": [k.value for k in PointKind]})


# --------------------------------------------------------------------------- member push (REST, signed)


REST_PUSH_MAX_BYTES = 1024 * 1024


async def push_signed(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > REST_PUSH_MAX_BYTES:
        raise ApiError(413, UPLOAD_TOO_LARGE, f"a push is at most {REST_PUSH_MAX_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        raw += chunk
        if len(raw) > REST_PUSH_MAX_BYTES:
            raise ApiError(413, UPLOAD_TOO_LARGE, f"a push is at most {REST_PUSH_MAX_BYTES} bytes")
    body = validate_json_body(bytes(raw), msgs.SignedReadings)
    svc = _svc(request)
    market = request.config_dict[SETTINGS].market_id
    message = msgs.push_message(market, body.member, body.nonce, msgs.readings_digest(body.readings))
    try:
        signer = recover_login(message, body.signature)
    except ValueError as exc:
        raise ApiError(401, "UNAUTHENTICATED", str(exc)) from None
    if signer.lower() != body.signer.lower():
        raise ApiError(401, "UNAUTHENTICATED", "the signature is not the signer's (sign push_message exactly)")
    readings = [(r.point_id, to_us(r.interval_start), r.energy_wh) for r in body.readings]
    member = checksum(body.member)
    # who may push first: the readings' checks below answer only a signer of the member's (else
    # NOT_YOUR_POINT and the upload errors would tell anybody which points are whose)
    reason = await svc.store.may_push(member, checksum(signer))
    if reason is not None:
        raise ApiError(403, "FORBIDDEN", reason)
    await svc.check_push(member, readings, now_us=_now(request))
    reason = await svc.store.use_nonce(member, checksum(signer), body.nonce)
    if reason is not None:
        raise ApiError(403, "FORBIDDEN", reason)
    return json_response(await svc.push_readings(member, readings, now_us=_now(request), source=f"rest:{signer}"),
                         201)


# --------------------------------------------------------------------------- peer WebSocket


async def _ws_readings(app: web.Application, member: str, msg: msgs.MeterReadings) -> dict:
    svc = app[METERING]
    readings = [(r.point_id, to_us(r.interval_start), r.energy_wh) for r in msg.readings]
    return await svc.push_readings(member, readings, now_us=app[MARKET].runtime.clock.now_us(),
                                   source="ws")


async def _ws_points(app: web.Application, member: str, msg: msgs.MeterPoints) -> dict:
    pts = await app[METERING].store.points(member)
    devices = await app[METERING].store.devices(member)
    return {"points": [{"point_id": p.point_id, "kind": p.kind.value} for p in pts],
            "devices": [{"device": d["device"], "label": d["label"], "revoked": d["revoked"]} for d in devices]}


async def _ws_device(app: web.Application, member: str, msg: msgs.MeterDeviceRegister) -> dict:
    await app[METERING].store.register_device(member, checksum(msg.device), msg.label)
    return {"device": checksum(msg.device), "registered": True}


async def _ws_device_revoke(app: web.Application, member: str, msg: msgs.MeterDeviceRevoke) -> dict:
    done = await app[METERING].store.revoke_device(member, checksum(msg.device))
    return {"device": checksum(msg.device), "revoked": done}


async def _ws_energy(app: web.Application, member: str, msg: msgs.MyEnergy) -> dict:
    svc = app[METERING]
    start, end = to_us(msg.start), to_us(msg.end)
    if end - start > MAX_ENERGY_VIEW_US:
        raise VoltbourseError(INVALID_PERIOD, "at most 31 days per request")
    return await svc.member_energy(member, start, end, by=msg.by)


async def _ws_bills(app: web.Application, member: str, msg: msgs.MyBills) -> dict:
    rows = await app[METERING].store.bills(member)
    return {"bills": [{"start": iso(to_us(r["period_start"])), "end": iso(to_us(r["period_end"])),
                       "version": r["version"], "total": money_json(int(r["total_units"]))} for r in rows]}


async def _ws_bill(app: web.Application, member: str, msg: msgs.MyBill) -> dict:
    return await app[METERING].bill_for(member, to_us(msg.start), to_us(msg.end))


WS = ((msgs.MeterReadings, _ws_readings), (msgs.MeterPoints, _ws_points), (msgs.MeterDeviceRegister, _ws_device),
      (msgs.MeterDeviceRevoke, _ws_device_revoke), (msgs.MyEnergy, _ws_energy), (msgs.MyBills, _ws_bills),
      (msgs.MyBill, _ws_bill))


# --------------------------------------------------------------------------- routes

_TAGS = ("operator", "metering")
_LIST = array(ANY_OBJECT)
_P = "/api/operator/metering"
_PERIOD_Q = (("month", {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])$"}, "a local month, YYYY-MM"),
             ("start", {"type": "string", "format": "date-time"}, "period start (with end)"),
             ("end", {"type": "string", "format": "date-time"}, "period end (exclusive)"))
_MEMBER_Q = (("member", {"type": "string"}, "only this member (0x address)"),)
_UPLOAD = ("Raw CSV (text/csv) or xlsx body; columns point_id, interval_start[, interval_end], energy_wh "
           "(docs/metering.md). Refused as a whole with every error (line, column, reason) when any row is invalid.")
ROUTES = (
    Route("POST", f"{_P}/points", add_points, "Register metering points", ANY_OBJECT, status=201, body=PointsIn,
          errors=(409, 422), tags=_TAGS),
    Route("GET", f"{_P}/points", list_points, "Metering points", _LIST, query=_MEMBER_Q, errors=(422,), tags=_TAGS),
    Route("POST", f"{_P}/readings", upload_readings, "Upload meter readings (CSV or xlsx)", ANY_OBJECT, status=201,
          query=(("filename", {"type": "string"}, "the file's name, for the upload log"),), errors=(413, 422),
          description=_UPLOAD, content_type="text/csv", tags=_TAGS),
    Route("GET", f"{_P}/uploads", list_uploads, "Uploads of readings and what each changed", _LIST, tags=_TAGS),
    Route("GET", f"{_P}/corrections", list_corrections, "Audit trail: every stored reading that was changed", _LIST,
          query=(("point_id", {"type": "string"}, "only this point"),), errors=(422,), tags=_TAGS),
    Route("PUT", f"{_P}/tariffs/{{tariff_id}}", put_tariff, "Create or update a tariff and its prices", ANY_OBJECT,
          body=TariffIn, errors=(413, 422), tags=_TAGS,
          description="JSON (TariffIn) or a CSV body (Content-Type: text/csv, columns valid_from, "
                      "import_ct_per_kwh, feed_in_ct_per_kwh; ?name=...)."),
    Route("GET", f"{_P}/tariffs", list_tariffs, "Tariffs", _LIST, tags=_TAGS),
    Route("PUT", f"{_P}/members/{{member}}/tariff", put_member_tariff, "Assign a member's tariff from a date",
          ANY_OBJECT, body=MemberTariffIn, errors=(404, 422), tags=_TAGS),
    Route("GET", f"{_P}/member-tariffs", list_member_tariffs, "Members' tariff assignments", _LIST, tags=_TAGS),
    Route("PUT", f"{_P}/fees", put_fees, "Set the fee schedule from a date", ANY_OBJECT, body=FeeScheduleIn,
          errors=(422,), tags=_TAGS),
    Route("GET", f"{_P}/fees", list_fees, "Fee schedules", _LIST, tags=_TAGS),
    Route("PUT", f"{_P}/intensity", put_intensity, "Grid CO2 intensity series (g/kWh)", ANY_OBJECT, body=IntensityIn,
          errors=(422,), tags=_TAGS),
    Route("GET", f"{_P}/settlement", settlement, "Delivery settlement of a period or a product, with its checks",
          ANY_OBJECT, query=_PERIOD_Q + (("product_id", {"type": "string"}, "one product instead of a period"),),
          errors=(409, 422), tags=_TAGS),
    Route("POST", f"{_P}/bills/run", run_bills, "Bill every member for a period (issue new versions on change)",
          ANY_OBJECT, body=PeriodIn, errors=(409, 422), tags=_TAGS),
    Route("GET", f"{_P}/bills", list_bills, "Issued bills (latest version of each)", _LIST, query=_MEMBER_Q,
          errors=(422,), tags=_TAGS),
    Route("GET", f"{_P}/bills/{{member}}", get_bill, "A member's bill: JSON, CSV, printable HTML or PDF", ANY_OBJECT,
          query=_PERIOD_Q + (("format", {"type": "string", "enum": ["json", "csv", "html", "pdf"]}, "default json"),),
          errors=(404, 422), tags=_TAGS),
    Route("GET", f"{_P}/payouts", list_payouts, "Community charges of issued bills and their settlement on chain "
          "(negative: the member pays the community)", _LIST, query=_MEMBER_Q, errors=(422,), tags=_TAGS),
    Route("GET", f"{_P}/kpis", kpis, "KPIs from meters: community and members, per period or day", ANY_OBJECT,
          query=_PERIOD_Q + (("by", {"type": "string", "enum": ["period", "day"]}, "period or day"),),
          errors=(409, 422), tags=_TAGS),
    Route("GET", "/api/metering", info, "Metering rules of this community: interval length, time zone, limits",
          ANY_OBJECT, tags=("metering",)),
    Route("POST", "/api/metering/readings", push_signed, "Push a member's readings (signed by the member or its "
          "device key)", ANY_OBJECT, status=201, body=msgs.SignedReadings, errors=(401, 403, 404, 422),
          tags=("metering",)),
)


# --------------------------------------------------------------------------- operator page panel


def _kwh(wh: int) -> str:
    return f"{Decimal(wh).scaleb(-3):.1f}"


def _pct(ratio: str | None) -> str:
    return "–" if ratio is None else f"{(Decimal(ratio) * 100).quantize(Decimal('0.1'))}"


def _eur2(units: int) -> str:
    return f"{Decimal(units).scaleb(-8).quantize(Decimal('0.01'))}"


async def panel(svc: MeteringService, now_us: int) -> dict:
    """The operator page's ``panel.metering``: this local month so far, from meters (KPIs,
    energy per day, the latest bills). Display strings only."""
    local = from_us(now_us).astimezone(svc.tz)
    start = to_us(datetime(local.year, local.month, 1, tzinfo=svc.tz).astimezone(UTC))
    end = now_us // svc.step_us * svc.step_us
    title = "Meters and bills"
    if end <= start:
        return {"title": title, "note": "No metering interval of this month has ended yet."}
    try:
        k = await svc.kpis(start, end, by_day=True)
    except VoltbourseError as exc:
        return {"title": title, "note": f"KPIs from meters need a tariff: {exc.message}"}
    c = k["community"]
    cards = [
        {"id": "consumption", "label": "Consumption", "value": _kwh(c["consumption_wh"]), "unit": "kWh"},
        {"id": "generation", "label": "Generation", "value": _kwh(c["generation_wh"]), "unit": "kWh"},
        {"id": "self_sufficiency", "label": "Self-sufficiency", "value": _pct(c["self_sufficiency"]), "unit": "%",
         "note": "(consumption − grid import) / consumption"},
        {"id": "self_consumption", "label": "Self-consumption", "value": _pct(c["self_consumption"]), "unit": "%"},
        {"id": "p2p_share", "label": "P2P share", "value": _pct(c["p2p_share"]), "unit": "%",
         "note": "bought on the exchange / consumption"},
        {"id": "grid", "label": "Grid import / export", "value": f"{_kwh(c['grid_import_wh'])} / "
                                                                 f"{_kwh(c['grid_export_wh'])}", "unit": "kWh"},
        {"id": "peak", "label": "Peak import", "value": _kwh(c["peak_import_w"]), "unit": "kW"},
        {"id": "savings", "label": "Savings vs grid only", "value": _eur2(int(c["savings"]["units"])), "unit": "EUR"},
        {"id": "co2", "label": "CO₂ avoided", "value": _kwh(c["co2_avoided_g"]), "unit": "kg"},
        {"id": "estimated", "label": "Estimated readings", "value": str(c["estimated_intervals"])},
    ]
    days = k.get("days", [])
    labels = [d["day"] for d in days]
    series = [("consumption", "consumption_wh"), ("grid import", "grid_import_wh"), ("generation", "generation_wh")]
    chart = {"label": "Energy per day (kWh)", "unit": "kWh", "x": labels,
             "series": [{"name": n, "values": [_kwh(d[key]) for d in days]} for n, key in series]}
    day_rows = [[lab, _kwh(d["consumption_wh"]), _kwh(d["grid_import_wh"]), _kwh(d["generation_wh"]),
                 _pct(d["self_sufficiency"])] for lab, d in zip(labels, days, strict=True)]
    bills = await svc.store.bills(limit=50)
    bill_rows = [[r["member"], iso(to_us(r["period_start"]))[:16], iso(to_us(r["period_end"]))[:16], str(r["version"]),
                  _eur2(int(r["total_units"])), _eur2(int(r["community_units"]))] for r in bills]
    tables = [{"id": "metering-days", "caption": "Energy per day from meters (the chart as a table)",
               "columns": ["Day", "Consumption kWh", "Grid import kWh", "Generation kWh", "Self-sufficiency %"],
               "rows": day_rows},
              {"id": "metering-bills", "caption": "Issued bills (latest version)",
               "columns": ["Member", "From", "To", "Version", "Total EUR", "To the community EUR"],
               "rows": bill_rows}]
    shown = f"{from_us(start).astimezone(svc.tz):%Y-%m-%d} to {from_us(end).astimezone(svc.tz):%Y-%m-%d %H:%M %Z}"
    return {"title": title, "note": f"This month so far ({shown}), from meter readings; missing readings are "
                                    "estimated (docs/metering.md).",
            "cards": cards, "chart": chart, "tables": tables}


class PanelPublisher:
    """Publishes the panel at start, after every upload, push or bill run (coalesced), and
    every ``every_s`` seconds (the month moves on)."""

    def __init__(self, app: web.Application, every_s: float = 60.0) -> None:
        self.app = app
        self.every_s = every_s
        self.dirty = asyncio.Event()
        self.task: asyncio.Task | None = None

    def touch(self) -> None:
        self.dirty.set()

    async def run(self) -> None:
        while True:
            feed = self.app.get(OPERATOR_FEED)
            if feed is not None:
                try:
                    feed.publish("panel.metering", await panel(self.app[METERING], _clock_now(self.app)))
                except Exception:  # a failing panel must not stop the subsystem
                    log.exception("metering: the operator panel failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dirty.wait(), self.every_s)
            self.dirty.clear()
            await asyncio.sleep(0.5)  # coalesce bursts


def _clock_now(app: web.Application) -> int:
    return app[MARKET].runtime.clock.now_us()


PANEL: web.AppKey[PanelPublisher] = web.AppKey("metering_panel", PanelPublisher)


# --------------------------------------------------------------------------- wiring


def metering_subsystem() -> Subsystem:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        m = app[MARKET]
        s = app[SETTINGS]
        store = MeteringStore(m.read_pool, m.journal.market_id)
        app[METERING] = MeteringService(store, m.trades, interval_minutes=s.metering_interval_minutes, tz=s.tz,
                                        product_minutes=s.product_minutes, default_tariff=s.metering_default_tariff)
        app[PAYOUT_SOURCES].append(store)  # settlement collects members' community charges on chain
        app[METERING].bill_item_sources = app[BILL_ITEM_SOURCES]  # flexibility's payouts on the bills
        app[OUTLOOK_SOURCES].append(app[METERING])  # members' forecasts for the portal's trading agent
        publisher = app[PANEL] = PanelPublisher(app)
        app[METERING].on_change = publisher.touch
        publisher.task = asyncio.create_task(publisher.run(), name="metering-panel")
        yield
        publisher.task.cancel()
        await asyncio.gather(publisher.task, return_exceptions=True)

    return Subsystem(
        name="metering",
        summary="meter readings, delivery settlement, tariffs, fees, bills and KPIs (docs/metering.md)",
        routes=ROUTES,
        ws_requests=tuple(WsRequest(model, fn) for model, fn in WS),
        migrations=Path(__file__).resolve().parent / "migrations",
        lifecycle=lifecycle,
        commands=metering_cli.add_commands,
        payout_source=MeteringStore,  # settlement's own process collects the same charges
    )


SUBSYSTEM = metering_subsystem()
__all__ = ["METERING", "SUBSYSTEM"]
