"""The member portal as a subsystem of the exchange (exchange.gateway.plugin): Sign-In with
Ethereum (EIP-4361) for members, their browser sessions (``portal_sessions``: they survive a
restart), CSRF-protected sign-out (one session, or everywhere), the page and its files at
``/portal``, a demo-only sign-in link, and the peer WebSocket signed in by the session
cookie (a peer authenticator, exchange.gateway.keys.PEER_AUTHENTICATORS). docs/portal.md.
:data:`SUBSYSTEM` is registered through the ``voltbourse.subsystems`` entry points."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import logging
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from aiohttp import web
from eth_account import Account
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from exchange.gateway.http import (
    ANY_OBJECT,
    INT,
    MAX_SEQ,
    STR,
    TIME,
    ApiError,
    Route,
    json_response,
    obj,
    read_body,
    read_query,
    same_origin,
    sign_in_host,
)
from exchange.gateway.keys import BASE_PATH, MARKET, OUTLOOK_SOURCES, PEER_AUTHENTICATORS, SETTINGS, PeerAuth
from exchange.gateway.marketdata import MARKET_DATA
from exchange.gateway.plugin import Subsystem
from exchange.gateway.session import end_peer_sessions, member_refusal
from exchange.portal.agent import AgentHost
from exchange.portal.agent_rules import MAX_DELEGATION_DAYS, Limits, StrategyFactory
from exchange.portal.store import PortalStore
from exchange.protocol import auth, siwe
from exchange.protocol.auth import checksum, recover_login
from exchange.protocol.errors import VoltbourseError, register
from exchange.runtime.config import Settings

log = logging.getLogger(__name__)

NOT_SIGNED_IN = register("NOT_SIGNED_IN", 401, "no live member portal session: sign in (cookie missing, expired "
                         "or signed out)", "portal")
CSRF = register("CSRF", 403, "the request lacks the session's X-CSRF-Token header (or comes from another origin)",
                "portal")

COOKIE = "vb_portal"
CSRF_HEADER = "X-CSRF-Token"
PEER_AUTH = "portal"  # the hello's "auth" of a WebSocket signed in by a portal session
NONCE_TTL = timedelta(minutes=10)
MAX_OPEN_NONCES = 10_000  # unused, unexpired nonces at once (asked for without signing in)
NONCES_PER_MIN = 60  # per client address
FAILURES_PER_MIN = 20  # failed sign-ins per client address, then 429 for the rest of the minute
PURGE_EVERY_S = 600.0
KEEP_ENDED = timedelta(days=7)  # ended nonces and sessions are forgotten after this
STATIC = Path(__file__).resolve().parent / "static"
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")
_SID = re.compile(r"[A-Za-z0-9_\-]{43}")  # secrets.token_urlsafe(32)

Signature = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]
Address = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$")]


class LoginIn(BaseModel):
    """A Sign-In with Ethereum message built from ``GET /portal/siwe/nonce`` and its EIP-191
    (personal_sign) signature by the member's key."""

    model_config = ConfigDict(extra="forbid", strict=True)
    message: Annotated[str, StringConstraints(min_length=1, max_length=siwe.MAX_MESSAGE_CHARS)]
    signature: Signature


class DemoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    member: Address
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)]


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def sid_hash(sid: str) -> str:
    """What is stored of a session id: its SHA-256 (hex)."""
    return hashlib.sha256(sid.encode()).hexdigest()


def csrf_token(sid: str) -> str:
    """The session's CSRF token: HMAC-SHA256 keyed with the session id (which only the cookie
    holds, and page scripts cannot read: HttpOnly), so nothing more is stored and it survives
    a restart; a cross-site page can neither read nor compute it."""
    mac = hmac.new(sid.encode(), b"voltbourse portal csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def security_headers(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """As on the operator page: scripts only from this origin (no inline script), no framing,
    no sniffing, same-origin referrers, nothing cached."""
    host = request.host
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _private(resp: web.Response) -> web.Response:
    resp.headers["Cache-Control"] = "no-store"
    return resp


class Throttle:
    """At most ``per_min`` events per key in any minute."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self.events: dict[str, deque[float]] = defaultdict(deque)

    def over(self, key: str) -> bool:
        q = self.events[key]
        cutoff = time.monotonic() - 60
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            del self.events[key]
            return False
        return len(q) >= self.per_min

    def hit(self, key: str) -> None:
        self.events[key].append(time.monotonic())


class Portal:
    """The portal's state in a running app: its store and throttles."""

    def __init__(self, store: PortalStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.nonces = Throttle(NONCES_PER_MIN)
        self.failures = Throttle(FAILURES_PER_MIN)

    @property
    def ttl(self) -> timedelta:
        return timedelta(hours=self.settings.portal_session_hours)

    async def live(self, request: web.Request) -> tuple[str, str, datetime] | None:
        """The request's live session: (session id, member, expires_at), or None."""
        sid = request.cookies.get(cookie_name(request))
        if not sid or not _SID.fullmatch(sid):
            return None
        row = await self.store.session(sid_hash(sid), _now())
        return None if row is None else (sid, row["member"], row["expires_at"])

    async def authenticate(self, request: web.Request) -> PeerAuth | None:
        """The peer authenticator of ``/ws``: a live session cookie, sent by a page of this
        exchange (``Origin`` required and same-origin: no cross-site WebSocket hijacking)."""
        if cookie_name(request) not in request.cookies:
            return None
        if not same_origin(request, required=True):
            log.info("portal: /ws with a session cookie from origin %r refused (not signed in by it)",
                     request.headers.get("Origin"))
            return None
        live = await self.live(request)
        if live is None:
            return None
        sid, member, _ = live
        return PeerAuth(member=member, via=PEER_AUTH, ref=sid_hash(sid))

    async def purge_loop(self) -> None:
        while True:
            try:
                nonces, sessions = await self.store.purge(_now(), KEEP_ENDED)
                if nonces or sessions:
                    log.info("portal: forgot %d ended nonces and %d ended sessions", nonces, sessions)
            except Exception:  # noqa: BLE001 - housekeeping must not stop the subsystem
                log.exception("portal: purging ended nonces and sessions failed")
            await asyncio.sleep(PURGE_EVERY_S)


PORTAL: web.AppKey[Portal] = web.AppKey("portal", Portal)
AGENT_HOST: web.AppKey[AgentHost] = web.AppKey("portal_agents", AgentHost)
#: strategies beyond the built-in ``limits`` (name -> factory), set by the composition root
#: (exchange.tools) before the app starts: the bots' prosumer and battery planners
AGENT_PLANNERS: web.AppKey[dict[str, StrategyFactory]] = web.AppKey("portal_agent_planners")


def _portal(request: web.Request) -> Portal:
    return request.config_dict[PORTAL]


def _who(request: web.Request) -> str:
    return request.remote or "?"


def _refuse_member(request: web.Request, member: str) -> None:
    """401 with the reason when ``member`` is not a registered, active member of this market."""
    app = request.app
    refused = member_refusal(app[MARKET], app[MARKET_DATA], app[SETTINGS], member, count_sessions=False)
    if refused is not None:
        raise ApiError(401, refused.code, refused.message)


def _session_view(sid: str, member: str, expires_at: datetime) -> dict:
    return {"member": member, "expires_at": siwe.format_time(expires_at.replace(microsecond=0)),
            "csrf_token": csrf_token(sid)}


def _user_agent(request: web.Request) -> str:
    """The User-Agent as stored with a session (the member's "where am I signed in"): bytes
    that are not UTF-8 (kept by the HTTP parser as surrogates, which the database refuses)
    and NUL replaced, at most 300 characters."""
    ua = request.headers.get("User-Agent", "")[:300]
    return ua.encode("utf-8", "replace").decode("utf-8").replace("\x00", "?")


async def _start_session(request: web.Request, member: str, via: str, nonce: str | None) -> tuple[str, datetime]:
    portal = _portal(request)
    now = _now()
    sid = secrets.token_urlsafe(32)
    expires = now + portal.ttl
    code = await portal.store.sign_in(nonce, now, sid_hash(sid), member, via, expires, _user_agent(request))
    if code is not None:
        why = {siwe.SIWE_NONCE_UNKNOWN: "the nonce was not issued by this server (GET /portal/siwe/nonce)",
               siwe.SIWE_NONCE_USED: "the nonce was used already: ask for a new one",
               siwe.SIWE_EXPIRED: "the nonce expired: ask for a new one"}[code]
        raise ApiError(401, code, why)
    return sid, expires


def base_path(request: web.Request) -> str:
    """Where this market's routes are: "" for the default market, "/m/<id>" for a hosted one."""
    return request.config_dict.get(BASE_PATH, "")


def cookie_name(request: web.Request) -> str:
    """The session cookie of this market: ``vb_portal`` for the default market, ``vb_portal_<id>``
    for a hosted one (with its own path, so two communities' sessions never meet)."""
    base = base_path(request)
    return COOKIE if not base else f"{COOKIE}_{base.rsplit('/', 1)[-1]}"


def _set_cookie(request: web.Request, resp: web.StreamResponse, sid: str) -> None:
    resp.set_cookie(cookie_name(request), sid, httponly=True, samesite="Strict", path=base_path(request) + "/",
                    secure=request.secure, max_age=int(_portal(request).ttl.total_seconds()))


async def _signed_in(request: web.Request, *, csrf: bool) -> tuple[str, str]:
    """(session id, member) of the request's live session (401 ``NOT_SIGNED_IN``); with
    ``csrf``, the same origin (when the browser names one) and the session's
    ``X-CSRF-Token`` are required too (403 ``CSRF``)."""
    if csrf and not same_origin(request, required=False):
        raise ApiError(403, CSRF, "cross-origin request refused")
    live = await _portal(request).live(request)
    if live is None:
        raise ApiError(401, NOT_SIGNED_IN, "not signed in (no live portal session): sign in at /portal")
    sid, member, _ = live
    if csrf:
        given = request.headers.get(CSRF_HEADER, "")
        if not given or not hmac.compare_digest(given.encode(), csrf_token(sid).encode()):
            raise ApiError(403, CSRF, f"send the session's csrf_token in the {CSRF_HEADER} header")
    return sid, member


# --------------------------------------------------------------------------- handlers


async def nonce(request: web.Request) -> web.Response:
    portal = _portal(request)
    who = _who(request)
    if portal.nonces.over(who):
        raise ApiError(429, "RATE_LIMITED", f"more than {NONCES_PER_MIN} sign-in nonces a minute from this address")
    portal.nonces.hit(who)
    now = _now().replace(microsecond=0)
    expires = now + NONCE_TTL
    value = siwe.new_nonce()
    if not await portal.store.issue_nonce(value, now, expires, MAX_OPEN_NONCES):
        raise ApiError(503, "BUSY", "too many sign-ins under way: retry in a few minutes")
    s = request.config_dict[SETTINGS]
    host, secure = sign_in_host(request)  # PUBLIC_ORIGIN's, never a Host header of the caller's choosing
    return _private(json_response({
        "nonce": value, "domain": host, "uri": f"{'https' if secure else 'http'}://{host}{base_path(request)}/portal",
        "chain_id": s.chain_id,
        "version": "1",
        "statement": siwe.safe_statement(f"Sign in to the Voltbourse member portal of community {s.market_id}."),
        "issued_at": siwe.format_time(now), "expiration_time": siwe.format_time(expires)}))


async def _verified_member(request: web.Request, body: LoginIn) -> siwe.SiweMessage:
    """The message of a valid sign-in (everything but its nonce, which the store checks)."""
    try:
        m = siwe.parse(body.message)
    except siwe.SiweError as exc:
        raise ApiError(401, siwe.SIWE_INVALID, f"not an EIP-4361 message: {exc}") from None
    host, secure = sign_in_host(request)
    siwe.check(m, domain=host, chain_id=request.config_dict[SETTINGS].chain_id, now=_now(),
               scheme="https" if secure else "http", path=f"{base_path(request)}/portal")
    try:
        signer = recover_login(body.message, body.signature)
    except ValueError as exc:
        raise ApiError(401, "BAD_SIGNATURE", str(exc)) from None
    if signer != m.address:
        raise ApiError(401, "BAD_SIGNATURE", f"the message is signed by {signer}, not by {m.address}")
    _refuse_member(request, m.address)
    return m


async def login(request: web.Request) -> web.Response:
    if not same_origin(request, required=False):
        raise ApiError(403, CSRF, "cross-origin sign-in refused")
    portal = _portal(request)
    who = _who(request)
    if portal.failures.over(who):
        raise ApiError(429, "TOO_MANY_ATTEMPTS", "too many failed sign-ins from this address: wait a minute")
    body = await read_body(request, LoginIn)
    try:
        m = await _verified_member(request, body)
        sid, expires = await _start_session(request, m.address, "siwe", m.nonce)
    except VoltbourseError:
        portal.failures.hit(who)
        raise
    resp = _private(json_response(_session_view(sid, m.address, expires)))
    _set_cookie(request, resp, sid)
    log.info("portal: %s signed in", m.address)
    return resp


async def session_info(request: web.Request) -> web.Response:
    live = await _portal(request).live(request)
    if live is None:
        raise ApiError(401, NOT_SIGNED_IN, "not signed in (no live portal session): sign in at /portal")
    sid, member, expires = live
    _refuse_member(request, member)
    return _private(json_response(_session_view(sid, member, expires)))


async def logout(request: web.Request) -> web.Response:
    sid, member = await _signed_in(request, csrf=True)
    h = sid_hash(sid)
    await _portal(request).store.revoke(h, _now())
    end_peer_sessions(request.app, member, PEER_AUTH, {h})
    resp = _private(json_response({"signed_out": 1}))
    resp.del_cookie(cookie_name(request), path=base_path(request) + "/")
    return resp


async def logout_all(request: web.Request) -> web.Response:
    _, member = await _signed_in(request, csrf=True)
    ended = await _portal(request).store.revoke_member(member, _now())
    end_peer_sessions(request.app, member, PEER_AUTH)
    resp = _private(json_response({"signed_out": len(ended)}))
    resp.del_cookie(cookie_name(request), path=base_path(request) + "/")
    log.info("portal: %s signed out everywhere (%d sessions)", member, len(ended))
    return resp


async def demo_login(request: web.Request) -> web.StreamResponse:
    key = request.config_dict[SETTINGS].portal_demo_login
    not_here = ApiError(404, "NOT_FOUND", "no such resource")
    if key is None:
        raise not_here
    portal = _portal(request)
    who = _who(request)
    if portal.failures.over(who):
        raise ApiError(429, "TOO_MANY_ATTEMPTS", "too many failed sign-ins from this address: wait a minute")
    q = read_query(request, DemoQuery)
    if not hmac.compare_digest(q.key.encode(), key.get_secret_value().encode()):
        portal.failures.hit(who)
        raise not_here
    member = checksum(q.member)
    _refuse_member(request, member)
    sid, _ = await _start_session(request, member, "demo", None)
    resp = web.Response(status=303, headers={"Location": base_path(request) + "/portal"})
    _set_cookie(request, resp, sid)
    log.info("portal: %s signed in by the demo link", member)
    return resp


async def page(request: web.Request) -> web.StreamResponse:
    """The page, with this market's base path filled in (its files, its API and its WebSocket
    are under it: "" for the default market, "/m/<id>" for a hosted one)."""
    index = STATIC / "index.html"
    if not index.is_file():
        raise ApiError(404, "NOT_FOUND", "the portal page is not installed")
    text = index.read_text(encoding="utf-8").replace("{{BASE}}", html.escape(base_path(request), quote=True))
    return security_headers(request, web.Response(text=text, content_type="text/html"))


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["file"]
    if name == "index.html":  # the page's template: served as the page is (its base path filled in)
        return await page(request)
    path = STATIC / name
    if not _FILE.fullmatch(name) or not path.is_file():
        raise ApiError(404, "NOT_FOUND", f"no portal file {name!r}")
    return security_headers(request, web.FileResponse(path))


# --------------------------------------------------------------------------- routes


# --------------------------------------------------------------------------- the managed trading agent

AGENT_REFUSED = register("AGENT_DELEGATION_INVALID", 422, "a delegation to the trading agent is malformed, not "
                                                         "signed by the member, or outside what the agent accepts",
                         "portal")
AGENT_REVOKED = register("AGENT_DELEGATION_REVOKED", 409, "this delegation to the trading agent was revoked: sign "
                                                         "a new one", "portal")
_DEC = r"^[0-9]{1,9}(\.[0-9]{1,8})?$"
_SIGNED_DEC = r"^-?[0-9]{1,9}(\.[0-9]{1,8})?$"


class AgentLimitsIn(BaseModel):
    """The limits a member gives its trading agent (docs/portal.md, "My agent"); exact decimals."""

    model_config = ConfigDict(extra="forbid", strict=True)
    strategy: Literal["limits", "prosumer", "battery"] = "limits"
    max_buy_price_eur_mwh: Annotated[str, StringConstraints(pattern=_SIGNED_DEC)]
    min_sell_price_eur_mwh: Annotated[str, StringConstraints(pattern=_SIGNED_DEC)]
    max_order_kwh: Annotated[str, StringConstraints(pattern=_DEC)]
    daily_budget_eur: Annotated[str, StringConstraints(pattern=_DEC)]
    battery_reserve_kwh: Annotated[str, StringConstraints(pattern=_DEC)] = "0"
    battery_capacity_kwh: Annotated[str, StringConstraints(pattern=_DEC)] = "0"
    battery_power_kw: Annotated[str, StringConstraints(pattern=_DEC)] = "0"
    excluded_hours: Annotated[list[Annotated[int, Field(ge=0, le=23)]], Field(max_length=24)] = Field(
        default_factory=list)
    expires_in_hours: Annotated[int, Field(ge=1, le=MAX_DELEGATION_DAYS * 24)] = 24


class AgentDelegationIn(BaseModel):
    """The typed data /portal/agent/prepare returned, signed by the member's wallet
    (``eth_signTypedData_v4``)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    typed_data: dict[str, Any]
    signature: Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{130}$")]


def _exact(text: str, scale: int, what: str) -> int:
    d = Decimal(text) * scale
    if d != d.to_integral_value():
        raise ApiError(422, AGENT_REFUSED, f"{what}: {text} is finer than the smallest unit")
    return int(d)


def _agent(request: web.Request) -> AgentHost:
    return request.config_dict[AGENT_HOST]


def _market_now_s(request: web.Request) -> int:
    """Now by the market's clock (the one the agent's expiry is checked against)."""
    return request.config_dict[MARKET].runtime.clock.now_us() // 1_000_000


def _agent_key() -> tuple[str, str]:
    acct = Account.create()
    return acct.address, "0x" + acct.key.hex().removeprefix("0x")


async def agent_status(request: web.Request) -> web.Response:
    _, member = await _signed_in(request, csrf=False)
    return _private(json_response(await _agent_view(request, member)))


async def _agent_view(request: web.Request, member: str) -> dict[str, Any]:
    portal = _portal(request)
    address, _ = await portal.store.agent_key(member, _agent_key)
    active = await portal.store.active_delegations(datetime.fromtimestamp(_market_now_s(request), UTC), member)
    host = _agent(request)
    run = host.runs.get(member)
    d = active[0] if active else None
    return {
        "agent": address, "active": run is not None and d is not None,
        "strategies": sorted(host.strategies), "note": None if run is None else run.note,
        "delegation": None if d is None else {"delegation_id": d["delegation_id"], "limits": d["message"],
                                              "expires_at": siwe.format_time(d["expires_at"])},
        "orders": [] if run is None else [{"order_id": oid, "product_id": p, "side": sd, "price": pr, "quantity": q}
                                          for oid, (p, sd, pr, q) in sorted(host.live_orders(run).items())],
        "placed": 0 if run is None else run.placed, "refused": 0 if run is None else run.refused,
        "spent_today_units": "0" if run is None else str(run.spent.get(host.today(), 0)),
    }


async def agent_prepare(request: web.Request) -> web.Response:
    """The EIP-712 delegation for these limits, for the member's wallet to sign."""
    _, member = await _signed_in(request, csrf=True)
    body = await read_body(request, AgentLimitsIn)
    portal = _portal(request)
    s = request.config_dict[SETTINGS]
    address, _ = await portal.store.agent_key(member, _agent_key)
    now_s = _market_now_s(request)
    message = {"market": s.market_id, "delegate": address, "strategy": body.strategy,
               "maxBuyPrice": _exact(body.max_buy_price_eur_mwh, 100, "max_buy_price_eur_mwh"),
               "minSellPrice": _exact(body.min_sell_price_eur_mwh, 100, "min_sell_price_eur_mwh"),
               "maxOrderWh": _exact(body.max_order_kwh, 1000, "max_order_kwh"),
               "dailyBudget": _exact(body.daily_budget_eur, 100_000_000, "daily_budget_eur"),
               "batteryReserveWh": _exact(body.battery_reserve_kwh, 1000, "battery_reserve_kwh"),
               "batteryCapacityWh": _exact(body.battery_capacity_kwh, 1000, "battery_capacity_kwh"),
               "batteryPowerW": _exact(body.battery_power_kw, 1000, "battery_power_kw"),
               "excludedHours": ",".join(str(h) for h in sorted(set(body.excluded_hours))),
               "expiry": now_s + body.expires_in_hours * 3600, "nonce": time.time_ns() // 1000}
    _check_limits(request, message, now_s)
    typed = auth.delegation_typed_data(s.chain_id, message)
    return _private(json_response({"typed_data": typed, "delegation_id": auth.typed_data_hash(typed)}))


def _check_limits(request: web.Request, message: dict[str, Any], now_s: int) -> Limits:
    cfg = request.config_dict[MARKET].engine.config
    try:
        limits = Limits.from_message(message)
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiError(422, AGENT_REFUSED, f"malformed delegation: {exc}") from None
    problems = limits.problems(now_s, cfg.price_min, cfg.price_max, tuple(_agent(request).strategies),
                               cfg.controls.max_order_value)
    if problems:
        raise ApiError(422, AGENT_REFUSED, "; ".join(problems))
    return limits


def _delegation_fields_problem(message: dict[str, Any]) -> str | None:
    """What is wrong with a delegation message's fields (None: nothing): exactly the
    ``Delegation`` type's fields, each of its JSON type (text for strings and addresses, a
    number for integers), integers within what is stored (64 bits; unsigned ones not negative).
    What prepare made always passes; anything else (a field added, a number as text, a nonce
    of 2^256-1) is refused here rather than failing where it is stored."""
    fields = {f["name"]: f["type"] for f in auth.DELEGATION_TYPES["Delegation"]}
    missing, extra = sorted(fields.keys() - message.keys()), sorted(message.keys() - fields.keys())
    if missing or extra:
        return (f"typed_data.message must have exactly the Delegation fields: "
                f"{'missing ' + ', '.join(missing) if missing else ''}"
                f"{'; ' if missing and extra else ''}{'not expected ' + ', '.join(x[:40] for x in extra[:10]) if extra else ''}")
    for name, kind in fields.items():
        v = message[name]
        if kind in ("string", "address"):
            if not isinstance(v, str):
                return f"typed_data.message.{name} must be a string"
        elif type(v) is not int:
            return f"typed_data.message.{name} must be an integer (a JSON number)"
        elif not (0 if kind.startswith("uint") else -MAX_SEQ) <= v <= MAX_SEQ:  # a bigint's range
            return f"typed_data.message.{name} is out of range ({'0' if kind.startswith('uint') else '-2^63+1'} to 2^63-1)"
    return None


async def agent_enable(request: web.Request) -> web.Response:
    """Turn the agent on with a delegation the member signed."""
    _, member = await _signed_in(request, csrf=True)
    body = await read_body(request, AgentDelegationIn)
    s = request.config_dict[SETTINGS]
    portal = _portal(request)
    message = body.typed_data.get("message")
    if not isinstance(message, dict):
        raise ApiError(422, AGENT_REFUSED, "typed_data.message is missing")
    problem = _delegation_fields_problem(message)
    if problem is not None:
        raise ApiError(422, AGENT_REFUSED, problem)
    address, _ = await portal.store.agent_key(member, _agent_key)
    expected = auth.delegation_typed_data(s.chain_id, message)
    if body.typed_data != expected:
        raise ApiError(422, AGENT_REFUSED, "typed_data is not a Voltbourse delegation of this chain (sign what "
                                           "/portal/agent/prepare returned)")
    if message.get("market") != s.market_id:
        raise ApiError(422, AGENT_REFUSED, f"the delegation is for market {message.get('market')!r}, not "
                                           f"{s.market_id!r}")
    if not isinstance(message.get("delegate"), str) or message["delegate"].lower() != address.lower():
        raise ApiError(422, AGENT_REFUSED, f"the delegate must be your agent's key {address}")
    now_s = _market_now_s(request)
    limits = _check_limits(request, message, now_s)
    try:
        signer = auth.recover_order_signer(expected, body.signature)
    except ValueError as exc:
        raise ApiError(401, "BAD_SIGNATURE", str(exc)) from None
    if signer != member:
        raise ApiError(401, "BAD_SIGNATURE", f"the delegation is signed by {signer}, not by {member}")
    delegation_id = auth.typed_data_hash(expected)
    if not await portal.store.put_delegation(delegation_id, member, address, message, body.signature,
                                             datetime.fromtimestamp(limits.expiry, UTC), _now()):
        raise ApiError(409, AGENT_REVOKED, f"delegation {delegation_id} was revoked: a revocation is for good; "
                                           "sign a new delegation (a new nonce) to start the agent again")
    await _agent(request).enable(member, delegation_id, limits)
    log.info("portal: %s delegated to its trading agent (%s)", member, delegation_id)
    return _private(json_response(await _agent_view(request, member), 201))


async def agent_revoke(request: web.Request) -> web.Response:
    """Revoke the delegation at once: the agent stops and its resting orders are cancelled."""
    _, member = await _signed_in(request, csrf=True)
    revoked = await _portal(request).store.revoke_delegation(member, _now())
    cancelled = await _agent(request).disable(member)
    return _private(json_response({"revoked": revoked, "cancelled_orders": cancelled}))


_TAGS = ("portal",)
_SESSION = obj(member=STR, expires_at=TIME, csrf_token=STR)
_CSRF_NOTE = (f"Needs the session cookie ({COOKIE}) and the header {CSRF_HEADER}: <csrf_token> (403 CSRF "
              "otherwise; 401 NOT_SIGNED_IN without a live session).")
ROUTES = (
    Route("GET", "/portal/siwe/nonce", nonce, "A single-use Sign-In with Ethereum nonce and the message's fields",
          obj(nonce=STR, domain=STR, uri=STR, chain_id=INT, version=STR, statement=STR, issued_at=TIME,
              expiration_time=TIME), errors=(429, 503), tags=_TAGS,
          description="Build the EIP-4361 message from these fields and the wallet's address, sign it with "
                      "personal_sign, then POST it to /portal/siwe/login within 10 minutes (docs/portal.md)."),
    Route("POST", "/portal/siwe/login", login, "Sign in: an EIP-4361 message and its signature; sets the session "
          "cookie", _SESSION, body=LoginIn, errors=(401, 403, 422, 429), tags=_TAGS,
          description=f"Sets {COOKIE} (HttpOnly, SameSite=Strict, Path=/, Max-Age: portal_session_hours; Secure "
                      "over https). Refusals (401): SIWE_INVALID, SIWE_WRONG_DOMAIN, SIWE_WRONG_CHAIN, "
                      "SIWE_EXPIRED, SIWE_NOT_YET_VALID, SIWE_NONCE_UNKNOWN, SIWE_NONCE_USED, BAD_SIGNATURE, "
                      "UNKNOWN_MEMBER, MEMBER_SUSPENDED."),
    Route("GET", "/portal/session", session_info, "The signed-in member, the session's end and its CSRF token",
          _SESSION, errors=(401,), tags=_TAGS),
    Route("POST", "/portal/logout", logout, "Sign this session out", obj(signed_out=INT), errors=(401, 403),
          tags=_TAGS, description=_CSRF_NOTE + " Its WebSocket connections are closed (4401)."),
    Route("POST", "/portal/logout-all", logout_all, "Sign out everywhere: every session of the member",
          obj(signed_out=INT), errors=(401, 403), tags=_TAGS,
          description=_CSRF_NOTE + " Every WebSocket connection a portal session signed in is closed (4401)."),
    Route("GET", "/portal/demo-login", demo_login, "Demo only: sign a member in without a wallet", {}, status=303,
          query=(("member", {"type": "string"}, "the member's address"),
                 ("key", {"type": "string"}, "the demo sign-in key (setting portal_demo_login)")),
          errors=(401, 404, 422, 429), tags=_TAGS,
          description="404 unless the setting portal_demo_login is set and key equals it; then sets the session "
                      "cookie and redirects to /portal."),
    Route("GET", "/portal/agent", agent_status, "My trading agent: its key, the active delegation, its orders",
          ANY_OBJECT, errors=(401,), tags=_TAGS),
    Route("POST", "/portal/agent/prepare", agent_prepare, "The EIP-712 delegation for these limits, to sign in "
          "the wallet", ANY_OBJECT, body=AgentLimitsIn, errors=(401, 403, 422), tags=_TAGS, description=_CSRF_NOTE),
    Route("POST", "/portal/agent", agent_enable, "Turn the trading agent on with a signed delegation", ANY_OBJECT,
          status=201, body=AgentDelegationIn, errors=(401, 403, 422), tags=_TAGS, description=_CSRF_NOTE),
    Route("DELETE", "/portal/agent", agent_revoke, "Revoke the delegation at once (the agent's orders are "
          "cancelled)", obj(revoked=STR, cancelled_orders=INT), errors=(401, 403), tags=_TAGS,
          description=_CSRF_NOTE),
    Route("GET", "/portal", page, "The member portal page", STR, content_type="text/html", errors=(404,),
          tags=_TAGS),
    Route("GET", "/portal/", page, "The member portal page", STR, content_type="text/html", errors=(404,),
          tags=_TAGS),
    Route("GET", "/portal/static/{file}", static_file, "The portal page's files (scripts, styles)", STR,
          content_type="application/octet-stream", errors=(404,), tags=_TAGS),
)


# --------------------------------------------------------------------------- wiring


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    m = app[MARKET]
    s = app[SETTINGS]
    portal = app[PORTAL] = Portal(PortalStore(m.read_pool, s.market_id), s)
    app[PEER_AUTHENTICATORS].append(portal.authenticate)
    host = app[AGENT_HOST] = AgentHost(m.runtime, portal.store, s.tz, planners=app.get(AGENT_PLANNERS),
                                       outlook_sources=app[OUTLOOK_SOURCES])
    market_now = datetime.fromtimestamp(m.runtime.clock.now_us() // 1_000_000, UTC)
    for d in await portal.store.active_delegations(market_now):  # agents survive a restart
        try:
            limits = Limits.from_message(d["message"])
        except (KeyError, TypeError, ValueError) as exc:
            log.error("portal: the agent of %s stays off: its delegation %s is in an older format (%s missing or "
                      "malformed); the member signs new limits on the page", d["member"], d["delegation_id"], exc)
            continue
        if limits.strategy not in host.strategies:
            log.error("portal: the agent of %s stays off: its delegation names the %r strategy, which this "
                      "deployment does not run", d["member"], limits.strategy)
            continue
        await host.enable(d["member"], d["delegation_id"], limits)
    task = asyncio.create_task(portal.purge_loop(), name="portal-purge")
    yield
    await host.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


SUBSYSTEM = Subsystem(
    name="portal",
    summary="the member portal: Sign-In with Ethereum, browser sessions, the page at /portal (docs/portal.md)",
    routes=ROUTES,
    migrations=Path(__file__).resolve().parent / "migrations",
    lifecycle=lifecycle,
)
__all__ = ["COOKIE", "CSRF_HEADER", "PORTAL", "SUBSYSTEM", "csrf_token", "sid_hash"]
