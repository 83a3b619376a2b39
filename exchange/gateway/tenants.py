"""Many markets in one deployment: the platform's registry of hosted communities, their
mounting under ``/m/{market_id}/`` and the platform operator's REST API.

Each hosted community is one complete single-market application, exactly as
:func:`exchange.gateway.app.make_app` builds it for the deployment's default market: its own
:class:`~exchange.runtime.market.MarketRuntime`, member registry, market data, operator API
and page, and every subsystem (settlement, flexibility, metering, portal) whose lifecycle
builds its services from that app's ``MARKET``/``SETTINGS``. The default market keeps the
root routes (``/ws``, ``/api/...``, ``/operator``, ``/portal``).

Mounting. aiohttp freezes an application's router when it starts, so a sub-application
cannot be added to a running root with ``add_subapp``. Every hosted market is therefore an
aiohttp application of its own, with its routes prefixed by ``/m/{market_id}`` (as
``add_subapp`` prefixes them), started and stopped by its own ``web.AppRunner`` (its
``on_startup``/``cleanup_ctx``/``on_shutdown``/``on_cleanup``: the subsystems' lifecycles),
and never bound to a socket: the root application has one route, ``/m/{market_id}/{tail}``,
whose handler (:meth:`Platform.dispatch`) hands the request to that market's application
(its router, its middlewares). Markets registered in the platform's table are started
when the root application starts; a market created later is started and mounted at once;
an archived one is stopped and unmounted (its data stay). The root application's
lifecycle stops them all. Inside a hosted market's application ``request.path`` is the full
path (``/m/a/api/...``); ``BASE_PATH`` (``/m/a``) tells the page and the peer sign-in where
they are.

Isolation. A hosted market's application accepts two operator tokens: the platform's
(``settings.operator_token``, which administers every market) and its community manager's,
stored as a sha256 digest in ``platform_markets`` and known to that application only
(``OPERATOR_TOKEN_HASHES``). Its members, journal, trades and subsystems' rows are keyed by
its market id; orders are signed for its ``market`` (EIP-712) and its SIWE offer names
``/m/{id}/ws``. All markets of the process share one writer pool, one readers' pool and
one :class:`~exchange.runtime.committer.GroupCommitter` (one journal transaction per
commit for every market).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, model_validator

from exchange.core.model import Halt, Rejected, Resume
from exchange.core.units import iso_dt
from exchange.gateway.http import (
    BOOL,
    OPERATOR,
    OPT_STR,
    PUBLIC,
    STR,
    ApiError,
    Route,
    add_routes,
    array,
    json_response,
    obj,
    read_body,
    ref,
)
from exchange.gateway.keys import CREDENTIALS_REVOKED, MARKET, SETTINGS
from exchange.protocol.errors import register
from exchange.runtime.clock import Clock
from exchange.runtime.committer import GroupCommitter
from exchange.runtime.config import Settings
from exchange.runtime.service import Market, market_config, open_market

log = logging.getLogger(__name__)

UNKNOWN_MARKET = register("UNKNOWN_MARKET", 404, "no such market on this platform (or it is archived)", "platform")
MARKET_EXISTS = register("MARKET_EXISTS", 409, "a market with this id exists (hosted, archived or the default)",
                         "platform")
MARKET_SUSPENDED = register("MARKET_SUSPENDED", 503, "the platform operator suspended this market: it is halted "
                            "and takes no new peer sessions", "platform")
MARKET_NOT_RUNNING = register("MARKET_NOT_RUNNING", 503, "this hosted market failed to start (see the platform's "
                              "market list for the error)", "platform")
BAD_MARKET_STATE = register("BAD_MARKET_STATE", 409, "the market is not in a state that allows this", "platform")
SETTING_FIXED = register("SETTING_FIXED", 409, "this setting of a market that has started cannot be changed (its "
                         "engine rules are stored with its journal; see docs/architecture.md, 'Changing a "
                         "community's settings')", "platform")

MARKET_ID_RE = r"^[a-z0-9][a-z0-9_-]{0,39}$"
STATUSES = ("active", "suspended", "archived")

#: The settings a hosted market may set for itself (the rest is the deployment's): its
#: calendar, gate, mechanism, price bounds and controls, privacy, metering. Fees and tariffs
#: are set per market through its own operator API (/m/{id}/api/operator/metering/...).
MARKET_SETTINGS = (
    "timezone", "product_minutes", "gate", "gate_day_ahead_local_time", "gate_rolling_minutes",
    "open_days_before", "price_min_ticks", "price_max_ticks", "min_quantity_wh", "self_trade_prevention",
    "mechanism", "risk_checks", "price_band_bp", "price_band_min_ticks", "max_order_value_eur", "volatility_bp",
    "volatility_min_ticks", "volatility_auction_s", "otr_max", "otr_free", "disclose_counterparty",
    "metering_interval_minutes", "metering_default_tariff", "settlement_batch_size", "settlement_max_age_s",
)


#: What ``PATCH /api/platform/markets/{id}`` may change once a market has started (its rules
#: are stored with its journal on first start). These are read by the market's services when
#: they start (the settlement worker, metering, the trade publisher), so a change restarts the
#: market's application: its engine recovers from its newest snapshot, peer sessions are
#: closed and reconnect, nothing committed is lost.
RESTART_SETTINGS = ("settlement_batch_size", "settlement_max_age_s", "metering_default_tariff",
                    "disclose_counterparty")
#: The rest of ``MARKET_SETTINGS`` is fixed once the market has started: the engine's rules
#: (calendar, gate, mechanism, price bounds and controls, quantities, self-trade prevention,
#: risk checks), which replay and snapshots must run under unchanged, and the metering
#: interval its readings and bills are kept at. ``disclose_counterparty`` may only be turned
#: off: the members traded under the promise that their counterparties stay private.
FIXED_SETTINGS = tuple(k for k in MARKET_SETTINGS if k not in RESTART_SETTINGS)


def market_settings(base: Settings, market_id: str, overrides: dict[str, Any], *, new_rules: bool = True) -> Settings:
    """The settings of hosted market ``market_id``: the deployment's, with its overrides,
    validated as a whole (a pydantic ``ValidationError`` names what is wrong); with
    ``new_rules`` (a market created or changed, not one started from its stored row, whose
    journal keeps its rules) also as its engine's rules and as stored JSON."""
    unknown = sorted(set(overrides) - set(MARKET_SETTINGS))
    if unknown:
        raise ApiError(422, "INVALID_REQUEST", f"settings a market may not set: {', '.join(unknown)} (allowed: "
                       f"{', '.join(MARKET_SETTINGS)})",
                       details=[{"loc": ["settings", k], "msg": "not a per-market setting", "type": "extra_forbidden"}
                                for k in unknown])
    settings = Settings.model_validate({**base.model_dump(), **overrides, "market_id": market_id})
    if not new_rules:
        return settings
    try:
        # the rules the market's engine gets, checked together (e.g. the smallest quantity within
        # the largest), and every value within what is stored as JSON (integers of 64 bits)
        orjson.dumps(market_config(settings).to_dict())
        orjson.dumps(settings.model_dump(mode="json", include=set(overrides)))
    except (ValueError, TypeError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise ApiError(422, "INVALID_REQUEST", f"settings a market cannot run with: {exc}") from None
    return settings


def _as_stored(base: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """A market's settings as stored (JSON), the deployment's where it has no override of its
    own: no validation, so that a row the settings refuse still says what the market ran with."""
    return {**base.model_dump(mode="json", include=set(MARKET_SETTINGS)), **overrides}


def _shown(market_id: str) -> str:
    """A market id as an answer shows it: as sent if it could be one, else quoted and cut."""
    if re.fullmatch(MARKET_ID_RE, market_id):
        return market_id
    return repr(market_id[:64]) + ("…" if len(market_id) > 64 else "")


def _storable(base: Settings, market_id: str, settings: Settings, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides as stored (JSON), checked to give the same settings when read back: what
    is stored is what starts the market, at once and at every later start of the server."""
    stored = settings.model_dump(mode="json", include=set(overrides))
    again = market_settings(base, market_id, json.loads(json.dumps(stored, allow_nan=False)))
    if again != settings:  # pragma: no cover - a setting whose JSON form does not read back
        raise ApiError(422, "INVALID_REQUEST", "settings: these values cannot be stored as given")
    return stored


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class HostedMarket:
    """A row of ``platform_markets``."""

    market_id: str
    name: str
    status: str
    overrides: dict[str, Any]
    token_sha256: bytes
    created_at: datetime
    updated_at: datetime


class MarketExists(Exception):
    pass


class TenantStore:
    """The ``platform_markets`` table (alembic ``0008``)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @staticmethod
    def _row(r: asyncpg.Record) -> HostedMarket:
        return HostedMarket(r["market_id"], r["name"], r["status"], dict(r["overrides"]), bytes(r["token_sha256"]),
                            r["created_at"], r["updated_at"])

    async def create(self, market_id: str, name: str, overrides: dict[str, Any], token_sha256: bytes) -> HostedMarket:
        try:
            r = await self.pool.fetchrow(
                "INSERT INTO platform_markets (market_id, name, status, overrides, token_sha256) "
                "VALUES ($1, $2, 'active', $3, $4) RETURNING *", market_id, name, overrides, token_sha256)
        except asyncpg.UniqueViolationError as exc:
            raise MarketExists(market_id) from exc
        return self._row(r)

    async def all(self) -> list[HostedMarket]:
        return [self._row(r) for r in await self.pool.fetch("SELECT * FROM platform_markets ORDER BY market_id")]

    async def get(self, market_id: str) -> HostedMarket | None:
        r = await self.pool.fetchrow("SELECT * FROM platform_markets WHERE market_id = $1", market_id)
        return None if r is None else self._row(r)

    async def configure(self, market_id: str, name: str, overrides: dict[str, Any]) -> HostedMarket:
        r = await self.pool.fetchrow(
            "UPDATE platform_markets SET name = $2, overrides = $3, updated_at = now() WHERE market_id = $1 "
            "RETURNING *", market_id, name, overrides)
        return self._updated(r, market_id)

    async def update(self, market_id: str, *, status: str | None = None,
                     token_sha256: bytes | None = None) -> HostedMarket:
        r = await self.pool.fetchrow(
            "UPDATE platform_markets SET status = coalesce($2, status), token_sha256 = coalesce($3, token_sha256), "
            "updated_at = now() WHERE market_id = $1 RETURNING *", market_id, status, token_sha256)
        return self._updated(r, market_id)

    def _updated(self, r: Any, market_id: str) -> HostedMarket:
        """The market an UPDATE ... RETURNING changed (404 when there is none)."""
        if r is None:
            raise ApiError(404, UNKNOWN_MARKET, f"no market {_shown(market_id)}")
        return self._row(r)


# --------------------------------------------------------------------------- hosting

#: ``async (market, settings, base_path, token_hashes) -> app``: one market's complete
#: application (exchange.gateway.app.make_app with the installed subsystems).
BuildApp = Callable[[Market, Settings, str, set[bytes]], Awaitable[web.Application]]


@dataclass
class Tenant:
    """A hosted market while it is mounted."""

    record: HostedMarket
    settings: Settings
    market: Market | None = None
    app: web.Application | None = None
    runner: web.AppRunner | None = None
    token_hashes: set[bytes] = field(default_factory=set)
    error: str | None = None

    @property
    def base_path(self) -> str:
        return f"/m/{self.record.market_id}"


class Platform:
    """The markets this process hosts besides its default market (see the module's text)."""

    def __init__(self, base: Settings, store: TenantStore, build_app: BuildApp, *, dsn: str, pool: asyncpg.Pool,
                 read_pool: asyncpg.Pool, committer: GroupCommitter | None, clock: Clock | None = None,
                 default_market: Market | None = None) -> None:
        self.base = base
        self.store = store
        self.build_app = build_app
        self.dsn = dsn
        self.pool = pool
        self.read_pool = read_pool
        self.committer = committer
        self.clock = clock
        self.default_market = default_market
        self.tenants: dict[str, Tenant] = {}
        self._lock = asyncio.Lock()  # one platform change at a time

    # -- lifecycle

    async def start_all(self) -> None:
        """Start every registered market that is not archived (a market that fails to start is
        logged and listed with its error; the others run)."""
        for rec in await self.store.all():
            if rec.status != "archived":
                await self._start(rec)

    async def stop_all(self) -> None:
        for mid in list(self.tenants):
            await self._stop(self.tenants.pop(mid))

    async def _start(self, rec: HostedMarket) -> Tenant:
        try:
            settings = market_settings(self.base, rec.market_id, rec.overrides, new_rules=False)
        except (ValidationError, ApiError) as exc:  # a stored row the settings refuse: listed, not run
            log.error("hosted market %s not started: its stored settings are refused: %s", rec.market_id, exc)
            t = Tenant(rec, self.base, token_hashes={rec.token_sha256})
            t.error = f"its stored settings are refused (PATCH them): {exc}"[:2000]
            self.tenants[rec.market_id] = t
            return t
        t = Tenant(rec, settings, token_hashes={rec.token_sha256})
        self.tenants[rec.market_id] = t
        try:
            t.market = await open_market(self.dsn, settings, self.clock, pool=self.pool, read_pool=self.read_pool,
                                         committer=self.committer)
            t.app = await self.build_app(t.market, settings, t.base_path, t.token_hashes)
            t.app[PLATFORM] = self  # its /api/markets lists the platform's markets (the page's switcher)
            t.runner = web.AppRunner(t.app, access_log=None)
            await t.runner.setup()
            if rec.status == "suspended" and not t.market.engine.halted:
                await t.market.runtime.submit(Halt(0, "suspended by the platform operator"))
        except Exception as exc:  # noqa: BLE001 - one market's failure must not stop the platform
            log.exception("hosted market %s failed to start", rec.market_id)
            t.error = repr(exc)
            await self._close(t)
        return t

    async def _close(self, t: Tenant) -> None:
        if t.runner is not None:
            runner, t.runner = t.runner, None
            await runner.cleanup()
        t.app = None
        if t.market is not None:
            market, t.market = t.market, None
            await market.close()

    async def _stop(self, t: Tenant) -> None:
        try:
            await self._close(t)
        except Exception:  # noqa: BLE001 - stop the others anyway
            log.exception("hosted market %s did not stop cleanly", t.record.market_id)

    # -- platform operations

    def _running(self, market_id: str) -> Tenant:
        t = self.tenants.get(market_id)
        if t is None:
            raise ApiError(404, UNKNOWN_MARKET, f"no market {_shown(market_id)} on this platform")
        return t

    async def create(self, market_id: str, name: str, overrides: dict[str, Any]) -> tuple[Tenant, str]:
        """Register, start and mount a market; returns it and its community manager's operator
        token (shown once: only its sha256 is kept)."""
        async with self._lock:
            settings = market_settings(self.base, market_id, overrides)
            if market_id == self.base.market_id:
                raise ApiError(409, MARKET_EXISTS, f"{market_id} is the deployment's default market")
            stored = _storable(self.base, market_id, settings, overrides)
            token = secrets.token_urlsafe(24)
            try:
                rec = await self.store.create(market_id, name, stored, token_digest(token))
            except MarketExists:
                raise ApiError(409, MARKET_EXISTS, f"market {market_id} exists") from None
            t = await self._start(rec)
            return t, token

    async def suspend(self, market_id: str, reason: str) -> Tenant:
        async with self._lock:
            t = self._running(market_id)
            if t.market is None:
                raise ApiError(503, MARKET_NOT_RUNNING, f"market {market_id} is not running: {t.error}")
            t.record = await self.store.update(market_id, status="suspended")
            if not t.market.engine.halted:
                await _submit(t.market, Halt(0, reason))
            return t

    async def resume(self, market_id: str) -> Tenant:
        """A suspended market resumes trading; an archived one (or one that failed to start)
        starts again."""
        async with self._lock:
            t = self.tenants.get(market_id)
            if t is None or t.market is None:
                rec = await self.store.get(market_id)
                if rec is None:
                    raise ApiError(404, UNKNOWN_MARKET, f"no market {_shown(market_id)} on this platform")
                if t is not None:
                    self.tenants.pop(market_id, None)
                rec = await self.store.update(market_id, status="active")
                t = await self._start(rec)
                if t.market is None:
                    raise ApiError(503, MARKET_NOT_RUNNING, f"market {market_id} did not start: {t.error}")
            else:
                t.record = await self.store.update(market_id, status="active")
            if t.market is not None and t.market.engine.halted:
                await _submit(t.market, Resume(0))
            return t

    async def archive(self, market_id: str) -> HostedMarket:
        """Stop and unmount the market; its journal, members and every subsystem's rows stay."""
        async with self._lock:
            t = self._running(market_id)
            rec = await self.store.update(market_id, status="archived")
            self.tenants.pop(market_id, None)
            await self._stop(t)
            return rec

    async def configure(self, market_id: str, name: str | None,
                        settings: dict[str, Any]) -> tuple[HostedMarket, list[str], bool]:
        """Change a market's name and settings (``settings``: the overrides to set; ``None``
        removes one, back to the deployment's value). Returns the stored record, the settings
        whose value changed and whether the running market was restarted to apply them.

        Refused as a whole (nothing stored): unknown or invalid settings (``INVALID_REQUEST``,
        pydantic's ``ValidationError``), a change of a fixed setting of a market that has
        started (``SETTING_FIXED``), the default market (its settings are the deployment's)."""
        async with self._lock:
            if market_id == self.base.market_id:
                raise ApiError(409, BAD_MARKET_STATE, f"{market_id} is the deployment's default market: its "
                               "name and settings are the deployment's (environment), not the platform's")
            rec = await self.store.get(market_id)
            if rec is None:
                raise ApiError(404, UNKNOWN_MARKET, f"no market {_shown(market_id)} on this platform")
            overrides = dict(rec.overrides)
            for k, v in settings.items():
                if v is None:
                    overrides.pop(k, None)
                else:
                    overrides[k] = v
            new = market_settings(self.base, market_id, overrides)
            # compared as stored: a row the settings refuse (it did not start) cannot pass a
            # fixed setting, or counterparty disclosure, off as unchanged
            before, after = _as_stored(self.base, rec.overrides), new.model_dump(mode="json", include=set(MARKET_SETTINGS))
            changed = [k for k in MARKET_SETTINGS if before.get(k) != after.get(k)]
            if changed and await self._started(market_id):
                fixed = [k for k in changed if k in FIXED_SETTINGS]
                if fixed:
                    raise ApiError(409, SETTING_FIXED, f"market {market_id} has started: {', '.join(fixed)} "
                                   f"cannot change (its engine rules and metering interval are fixed with its "
                                   f"journal; changeable: {', '.join(RESTART_SETTINGS)} and the name)",
                                   fields=fixed)
                if "disclose_counterparty" in changed and new.disclose_counterparty:
                    raise ApiError(409, SETTING_FIXED, f"market {market_id} has started: disclose_counterparty "
                                   "may only be turned off (its members traded with their counterparties kept "
                                   "private)", fields=["disclose_counterparty"])
            stored = _storable(self.base, market_id, new, overrides)
            rec = await self.store.configure(market_id, rec.name if name is None else name, stored)
            t = self.tenants.get(market_id)
            restarted = False
            if t is not None:
                t.record = rec
                if (changed and t.market is not None) or (t.market is None and rec.status != "archived"):
                    # its services read these settings when they start: restart the market's
                    # application (recovery from its newest snapshot; peers reconnect); one that
                    # did not start (its stored settings refused) starts with the mended ones
                    self.tenants.pop(market_id, None)
                    await self._stop(t)
                    await self._start(rec)
                    restarted = True
            return rec, changed, restarted

    async def _started(self, market_id: str) -> bool:
        """The market has stored its rules with its journal (it has started once)."""
        return await self.pool.fetchval("SELECT 1 FROM markets WHERE market_id = $1", market_id) is not None

    async def rotate_token(self, market_id: str) -> tuple[HostedMarket, str]:
        async with self._lock:
            token = secrets.token_urlsafe(24)
            rec = await self.store.update(market_id, token_sha256=token_digest(token))
            t = self.tenants.get(market_id)
            if t is not None:
                t.record = rec
                t.token_hashes.clear()  # the running app's set: the old token stops working now
                t.token_hashes.add(rec.token_sha256)
                if t.app is not None:  # and so does what it opened (the operator page's sessions)
                    for revoked in t.app.get(CREDENTIALS_REVOKED, ()):
                        await revoked()
            return rec, token

    # -- views

    def default_view(self) -> dict[str, Any]:
        m = self.default_market
        return {"market_id": self.base.market_id, "name": "", "status": "active", "default": True, "path": "/",
                "settings": {}, "running": bool(m and m.runtime.running), "halted": bool(m and m.engine.halted),
                "error": None, "created_at": None, "updated_at": None}

    def view(self, rec: HostedMarket) -> dict[str, Any]:
        t = self.tenants.get(rec.market_id)
        m = t.market if t is not None else None
        return {"market_id": rec.market_id, "name": rec.name, "status": rec.status, "default": False,
                "path": f"/m/{rec.market_id}/", "settings": rec.overrides,
                "running": bool(m and m.runtime.running), "halted": bool(m and m.engine.halted),
                "error": t.error if t is not None else None,
                "created_at": iso_dt(rec.created_at), "updated_at": iso_dt(rec.updated_at)}

    # -- the mount point

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """``/m/{market_id}/{tail}``: the market's own application answers."""
        t = self.tenants.get(request.match_info["market_id"])
        if t is None:
            raise ApiError(404, UNKNOWN_MARKET, f"no market {_shown(request.match_info['market_id'])} on this platform")
        runner = t.runner
        if runner is None or runner.server is None:
            raise ApiError(503, MARKET_NOT_RUNNING, f"market {t.record.market_id} is not running: {t.error}")
        if t.record.status == "suspended" and request.match_info["tail"] == "ws":
            raise ApiError(503, MARKET_SUSPENDED, f"market {t.record.market_id} is suspended")
        # a fresh request object: the root's resolved match_info is cached on this one (reify),
        # the market's application resolves its own
        return await runner.server.request_handler(request.clone())


async def _submit(market: Market, cmd: Any) -> None:
    res = await market.runtime.submit(cmd)
    for ev in res.events:
        if isinstance(ev, Rejected):
            raise ApiError(409, BAD_MARKET_STATE, f"the market refused {type(cmd).__name__}: {ev.reason}")


# --------------------------------------------------------------------------- REST

PLATFORM: web.AppKey[Platform] = web.AppKey("platform", Platform)


class MarketIn(BaseModel):
    """A new hosted market: its id (the URL's ``/m/{market_id}/``, its journal's key), a display
    name, and the settings it sets for itself (any of ``MARKET_SETTINGS``; the rest is the
    deployment's). Its rules are stored with its journal on first start and fixed after."""

    model_config = ConfigDict(extra="forbid", strict=True)
    market_id: Annotated[StrictStr, Field(pattern=MARKET_ID_RE)]
    name: Annotated[StrictStr, Field(max_length=200)] = ""
    settings: dict[str, Any] = Field(default_factory=dict)


class MarketPatchIn(BaseModel):
    """A change to a hosted market: its display name and/or settings (any of
    ``MARKET_SETTINGS``; ``null`` removes the market's own value, back to the deployment's).
    Once the market has started only ``RESTART_SETTINGS`` may change (see
    :meth:`Platform.configure`); a value equal to the current one is no change."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[StrictStr, Field(max_length=200)] | None = None
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> MarketPatchIn:
        if self.name is None and not self.settings:
            raise ValueError("nothing to change: give name and/or settings")
        return self


class SuspendIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: Annotated[StrictStr, Field(min_length=1, max_length=200)] = "suspended by the platform operator"


class EmptyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _market_id(request: web.Request) -> str:
    mid = request.match_info["market_id"]
    if not re.match(MARKET_ID_RE, mid):
        raise ApiError(404, UNKNOWN_MARKET, f"no market {mid} on this platform")
    return mid


async def list_markets(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    return json_response([p.default_view(), *(p.view(r) for r in await p.store.all())])


def _settings_error(exc: ValidationError) -> ApiError:
    """A market's settings refused as a whole (pydantic's errors, each naming its field once)."""
    errs = exc.errors()
    return ApiError(422, "INVALID_REQUEST", "settings: " + "; ".join(
        (f"{'.'.join(map(str, e['loc']))}: " if e["loc"] else "") + str(e["msg"]).removeprefix("Value error, ")
        for e in errs), details=[{"loc": ["settings", *e["loc"]], "msg": str(e["msg"]).removeprefix("Value error, "),
                                  "type": e["type"]} for e in errs])


async def create_market(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    body = await read_body(request, MarketIn)
    try:
        t, token = await p.create(body.market_id, body.name, body.settings)
    except ValidationError as exc:  # the settings, as a whole
        raise _settings_error(exc) from None
    return json_response({**p.view(t.record), "operator_token": token}, 201)


async def configure_market(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    mid = _market_id(request)
    body = await read_body(request, MarketPatchIn)
    try:
        rec, changed, restarted = await p.configure(mid, body.name, body.settings)
    except ValidationError as exc:  # the settings, as a whole
        raise _settings_error(exc) from None
    return json_response({**p.view(rec), "changed": changed, "restarted": restarted})


async def get_market(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    mid = _market_id(request)
    if mid == p.base.market_id:
        return json_response(p.default_view())
    rec = await p.store.get(mid)
    if rec is None:
        raise ApiError(404, UNKNOWN_MARKET, f"no market {mid} on this platform")
    return json_response(p.view(rec))


async def suspend_market(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    body = await read_body(request, SuspendIn, optional=True)
    t = await p.suspend(_market_id(request), body.reason)
    return json_response(p.view(t.record))


async def resume_market(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    await read_body(request, EmptyIn, optional=True)
    t = await p.resume(_market_id(request))
    return json_response(p.view(t.record))


async def archive_market(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    await read_body(request, EmptyIn, optional=True)
    rec = await p.archive(_market_id(request))
    return json_response(p.view(rec))


async def rotate_token(request: web.Request) -> web.Response:
    p = request.app[PLATFORM]
    await read_body(request, EmptyIn, optional=True)
    rec, token = await p.rotate_token(_market_id(request))
    return json_response({**p.view(rec), "operator_token": token})


async def directory(request: web.Request) -> web.Response:
    """The platform's markets that run, for the operator page's switcher (ids, names and
    where they are; nothing of their data)."""
    p = request.app.get(PLATFORM)
    if p is None:
        s = request.app[SETTINGS]
        m = request.app[MARKET]
        return json_response([{"market_id": s.market_id, "name": "", "path": "/", "default": True,
                               "status": "active" if m.runtime.running else "stopped"}])
    out = [{k: v for k, v in p.default_view().items() if k in ("market_id", "name", "path", "default", "status")}]
    for rec in await p.store.all():
        if rec.status != "archived":
            out.append({"market_id": rec.market_id, "name": rec.name, "path": f"/m/{rec.market_id}/",
                        "default": False, "status": rec.status})
    return json_response(out)


_MID = {"market_id": {"type": "string", "pattern": MARKET_ID_RE}}
PLATFORM_MARKET = obj(market_id=STR, name=STR, status={"type": "string", "enum": list(STATUSES)}, default=BOOL,
                      path=STR, settings={"type": "object"}, running=BOOL, halted=BOOL, error=OPT_STR,
                      created_at={"type": ["string", "null"], "format": "date-time"},
                      updated_at={"type": ["string", "null"], "format": "date-time"})
_WITH_TOKEN = {"allOf": [ref("PlatformMarket"), obj(operator_token=STR)]}
_CONFIGURED = {"allOf": [ref("PlatformMarket"), obj(changed=array(STR), restarted=BOOL)]}
PLATFORM_SCHEMAS = {"PlatformMarket": PLATFORM_MARKET}

PLATFORM_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/markets", directory, "The platform's running markets (id, name, path) for the page's "
          "switcher", array(obj(market_id=STR, name=STR, path=STR, default=BOOL, status=STR)), tags=PUBLIC),
    Route("GET", "/api/platform/markets", list_markets, "Platform: every market (the default one first)",
          array(ref("PlatformMarket")), tags=OPERATOR),
    Route("POST", "/api/platform/markets", create_market, "Platform: create, start and mount a market "
          "(answers its community manager's operator token, once)", _WITH_TOKEN, status=201, body=MarketIn,
          errors=(400, 409, 422), tags=OPERATOR),
    Route("GET", "/api/platform/markets/{market_id}", get_market, "Platform: one market", ref("PlatformMarket"),
          errors=(404,), tags=OPERATOR, path_params=_MID),
    Route("PATCH", "/api/platform/markets/{market_id}", configure_market, "Platform: change a market's name and "
          "settings (once it has started: only the settings its services read, applied by restarting the "
          "market; its engine rules are fixed, SETTING_FIXED)", _CONFIGURED, body=MarketPatchIn,
          errors=(400, 404, 409, 422), tags=OPERATOR, path_params=_MID),
    Route("POST", "/api/platform/markets/{market_id}/suspend", suspend_market, "Platform: suspend a market "
          "(halt it; new peer sessions refused)", ref("PlatformMarket"), body=SuspendIn, body_optional=True,
          errors=(400, 404, 409, 422, 503), tags=OPERATOR, path_params=_MID),
    Route("POST", "/api/platform/markets/{market_id}/resume", resume_market, "Platform: resume a suspended "
          "market, or start an archived one again", ref("PlatformMarket"), body=EmptyIn, body_optional=True,
          errors=(400, 404, 409, 422, 503), tags=OPERATOR, path_params=_MID),
    Route("POST", "/api/platform/markets/{market_id}/archive", archive_market, "Platform: stop and unmount a "
          "market (its data stay)", ref("PlatformMarket"), body=EmptyIn, body_optional=True,
          errors=(400, 404, 422), tags=OPERATOR, path_params=_MID),
    Route("POST", "/api/platform/markets/{market_id}/token", rotate_token, "Platform: a new community manager "
          "operator token for the market (the old one stops working)", _WITH_TOKEN, body=EmptyIn,
          body_optional=True, errors=(400, 404, 422), tags=OPERATOR, path_params=_MID),
)


async def _start_platform(app: web.Application) -> None:
    await app[PLATFORM].start_all()


async def _stop_platform(app: web.Application) -> None:
    await app[PLATFORM].stop_all()


PUBLIC_PLATFORM_ROUTES = tuple(r for r in PLATFORM_ROUTES if r.tags == PUBLIC)
OPERATOR_PLATFORM_ROUTES = tuple(r for r in PLATFORM_ROUTES if r.tags != PUBLIC)


def add_platform(app: web.Application, platform: Platform) -> None:
    """Make ``app`` (the default market's, at the root) the platform's root: its REST routes
    (guarded by the platform operator token, the root's ``operator_token``), the mount point
    ``/m/{market_id}/...``, and the hosted markets' start (root start-up) and stop (root
    shutdown, before the root's own connections are closed; again at cleanup)."""
    app[PLATFORM] = platform
    add_routes(app, OPERATOR_PLATFORM_ROUTES)
    app.router.add_route("*", "/m/{market_id}/{tail:.*}", platform.dispatch)
    app.on_startup.append(_start_platform)
    app.on_shutdown.append(_stop_platform)
    app.on_cleanup.append(_stop_platform)
