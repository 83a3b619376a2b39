"""The operator page: login, the single-page app, its static assets and its live feed.

Routes (see docs/operator-page.md):

``GET  /operator``               the page (303 to the login form without a session)
``GET  /operator/login``         the login form
``POST /operator/login``         ``token=<operator token>`` (form) or ``{"token": ...}`` (JSON):
                                 sets the session cookie (HttpOnly, SameSite=Strict)
``POST /operator/logout``        ends the session (and closes its feed sockets)
``GET  /operator/session``       200 ``{"operator": true, "platform": bool, "market_id",
                                 "expires_in_s"}`` or 401
``GET  /operator/static/...``    HTML/CSS/JS (no data in them)
``GET  /ws/operator``            the live feed (:mod:`.feed`): needs the session cookie
                                 and, when the browser sends one, a same-origin ``Origin``

The page calls the operator REST API (``/api/operator/...``) with its session
cookie instead of the bearer token: a request that carries a valid session
cookie and the header ``X-Voltbourse-Page: 1`` (which a cross-site form or
image cannot send) is handed to the operator route as if it carried the
token. Everything else about those routes (validation, errors) is unchanged.

The platform operator's routes (``/api/platform/...``, on the deployment's root only) take
the page session the same way, when that session was opened with the platform operator
token (``settings.operator_token``) on the root's page: its session info says
``"platform": true`` and the page shows its Communities panel. A community manager's session
(a hosted market's page, its own token) never reaches them.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import secrets
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import WSMsgType, web

from exchange.gateway.feed import OPERATOR_FEED, FeedClient, OperatorFeed
from exchange.gateway.http import (
    PAGE_AUTHENTICATED,
    operator_enabled,
    operator_token_valid,
    same_origin,
    token_failures,
)
from exchange.gateway.keys import BASE_PATH, CREDENTIALS_REVOKED, MARKET, MEMBERS, SETTINGS
from exchange.gateway.marketdata import MARKET_DATA
from exchange.gateway.tenants import PLATFORM

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "vb_operator"
PAGE_HEADER = "X-Voltbourse-Page"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256


class PageSessions:
    """Operator page sessions (in memory: a restart logs the pages out)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self.expiry: dict[str, float] = {}
        self.platform: set[str] = set()  # sessions opened with the platform operator token (on the root)
        self.sockets: dict[str, set[web.WebSocketResponse]] = defaultdict(set)

    def create(self, platform: bool = False) -> str:
        now = time.monotonic()
        for sid, exp in list(self.expiry.items()):
            if exp <= now:
                self._drop(sid)
        while len(self.expiry) >= MAX_SESSIONS:  # the oldest goes
            self._drop(min(self.expiry, key=self.expiry.__getitem__))
        sid = secrets.token_urlsafe(32)
        self.expiry[sid] = now + self.ttl_s
        if platform:
            self.platform.add(sid)
        return sid

    def _drop(self, sid: str) -> None:
        self.expiry.pop(sid, None)
        self.platform.discard(sid)

    def is_platform(self, sid: str) -> bool:
        return sid in self.platform and self.valid(sid)

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        exp = self.expiry.get(sid)
        if exp is None:
            return False
        if exp <= time.monotonic():
            self._drop(sid)
            return False
        return True

    def remaining(self, sid: str) -> int:
        return max(0, int(self.expiry.get(sid, 0) - time.monotonic()))

    async def end(self, sid: str) -> None:
        self._drop(sid)
        for ws in list(self.sockets.pop(sid, ())):
            await ws.close(code=4401, message=b"logged out")

    async def end_all(self) -> None:
        """Every session ends (the tokens that opened them were replaced), its feeds closed."""
        for sid in list(self.expiry):
            await self.end(sid)



# --------------------------------------------------------------------------- helpers


PAGE_SESSIONS: web.AppKey[PageSessions] = web.AppKey("page_sessions", PageSessions)


def _base(request: web.Request) -> str:
    """Where this market's app is mounted ("" at the root, "/m/<id>" for a hosted community)."""
    return request.config_dict.get(BASE_PATH, "")


def _cookie(request: web.Request) -> str:
    """The session cookie's name: one per market, so that the root's cookie (path /) never
    stands for a hosted community's (path /m/<id>/)."""
    base = _base(request)
    return COOKIE + ("_" + base.rsplit("/", 1)[-1] if base else "")


def _cookie_path(request: web.Request) -> str:
    return _base(request) + "/"


def _sid(request: web.Request) -> str | None:
    sid = request.cookies.get(_cookie(request))
    return sid if request.config_dict[PAGE_SESSIONS].valid(sid) else None


def _platform_root(request: web.Request) -> bool:
    """This page is the deployment's root (its default market) and the platform's routes
    (``/api/platform/...``) are here."""
    return not _base(request) and PLATFORM in request.config_dict


def _platform_token(request: web.Request, given: str) -> bool:
    """``given`` is the platform operator token (not a community manager's)."""
    secret = request.config_dict[SETTINGS].operator_token
    token = secret.get_secret_value() if secret is not None else ""
    return bool(token) and hmac.compare_digest(given.encode(), token.encode())


def _security_headers(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    host = request.headers.get("Host", "")
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self' ws://{host} wss://{host}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"  # "no-referrer" makes Chromium send Origin: null
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _wants_json(request: web.Request) -> bool:
    return request.content_type == "application/json" or "application/json" in request.headers.get("Accept", "")


def _err(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _login_html(request: web.Request, message: str = "") -> str:
    page = (STATIC / "login.html").read_text()
    note = f'<p class="form-error" role="alert" id="login-error">{html.escape(message)}</p>' if message else ""
    mid = html.escape(request.config_dict[SETTINGS].market_id)
    if _base(request):  # a hosted community: its manager's token or the platform's
        who = (f'<p id="login-who">Community <strong id="login-market">{mid}</strong>: log in with its community '
               "manager's operator token or the platform operator token.</p>")
    else:
        who = (f'<p id="login-who">Market <strong id="login-market">{mid}</strong>: log in with the operator token '
               "of this exchange (the <code>VOLTBOURSE_OPERATOR_TOKEN</code> setting; <code>make demo</code> "
               "prints it).</p>")
    return page.replace("<!--WHO-->", who).replace("<!--MESSAGE-->", note)


# --------------------------------------------------------------------------- handlers


async def page(request: web.Request) -> web.StreamResponse:
    if _sid(request) is None:
        raise web.HTTPSeeOther(_base(request) + "/operator/login")
    if request.path.endswith("/"):  # the page's URLs are relative to .../operator
        raise web.HTTPSeeOther(_base(request) + "/operator")
    return _security_headers(request, web.FileResponse(STATIC / "index.html"))


async def login_form(request: web.Request) -> web.StreamResponse:
    if _sid(request) is not None:
        raise web.HTTPSeeOther(_base(request) + "/operator")
    return _security_headers(request, web.Response(text=_login_html(request), content_type="text/html"))


async def login(request: web.Request) -> web.StreamResponse:
    sessions = request.app[PAGE_SESSIONS]
    as_json = _wants_json(request)

    def refuse(status: int, code: str, message: str) -> web.StreamResponse:
        if as_json:
            return _err(status, code, message)
        return _security_headers(request, web.Response(text=_login_html(request, message), content_type="text/html",
                                                       status=status))

    if not same_origin(request, required=False):
        return refuse(403, "FORBIDDEN", "cross-origin login refused")
    if not operator_enabled(request):
        return refuse(503, "OPERATOR_DISABLED", "The operator login is disabled: no operator token is configured.")
    who = request.remote or "?"
    try:
        if request.content_type == "application/json":
            body = await request.json()
            given = body.get("token") if isinstance(body, dict) else None
        else:
            given = (await request.post()).get("token")
    except (ValueError, json.JSONDecodeError):
        given = None
    if not isinstance(given, str) or not given or not operator_token_valid(request, given):
        # Failures are counted per source address; a source over the limit is refused
        # outright for a minute. The right token is always accepted: another source's
        # guessing never locks the operator out.
        failures = token_failures(request)  # the server's: the API's wrong tokens count too
        throttled = failures.throttled(who)
        failures.failed(who)
        await asyncio.sleep(0.2)  # slow down guessing
        if throttled:
            return refuse(429, "TOO_MANY_ATTEMPTS", "Too many failed logins from this address; wait a minute.")
        return refuse(401, "UNAUTHENTICATED", "Wrong operator token.")
    platform = _platform_root(request) and _platform_token(request, given)
    sid = sessions.create(platform=platform)
    resp: web.StreamResponse
    if as_json:
        resp = web.json_response({"operator": True, "platform": platform, "expires_in_s": int(sessions.ttl_s)})
    else:
        resp = web.HTTPSeeOther(_base(request) + "/operator")
    resp.set_cookie(_cookie(request), sid, httponly=True, samesite="Strict", path=_cookie_path(request),
                    secure=request.secure,
                    max_age=int(sessions.ttl_s))
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    if not same_origin(request, required=False):
        return _err(403, "FORBIDDEN", "cross-origin logout refused")
    sid = request.cookies.get(_cookie(request))
    if sid:
        await request.app[PAGE_SESSIONS].end(sid)
    resp = (web.json_response({"operator": False}) if _wants_json(request)
            else web.HTTPSeeOther(_base(request) + "/operator/login"))
    resp.del_cookie(_cookie(request), path=_cookie_path(request))
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


async def session_info(request: web.Request) -> web.Response:
    sid = _sid(request)
    if sid is None:
        return _err(401, "UNAUTHENTICATED", f"log in at {_base(request)}/operator/login")
    sessions = request.app[PAGE_SESSIONS]
    return web.json_response({"operator": True, "platform": sessions.is_platform(sid),
                              "market_id": request.config_dict[SETTINGS].market_id,
                              "expires_in_s": sessions.remaining(sid)})


async def feed_ws(request: web.Request) -> web.StreamResponse:
    if not same_origin(request, required=False):
        return _err(403, "FORBIDDEN", "cross-origin feed connection refused")
    sid = _sid(request)
    if sid is None:
        return _err(401, "UNAUTHENTICATED", "the operator feed needs the operator page session (log in first)")
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
    await ws.prepare(request)
    app = request.app
    feed = app[OPERATOR_FEED]
    sessions = app[PAGE_SESSIONS]
    sessions.sockets[sid].add(ws)
    client = FeedClient(ws, feed.queue_size)
    client.task = asyncio.create_task(client.pump(), name="operator-page")
    feed.attach(client)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    req = None
                feed.request(client, req)
            elif msg.type == WSMsgType.BINARY:
                await ws.close(code=1003, message=b"text frames only")
    finally:
        feed.detach(client)
        client.task.cancel()
        await asyncio.gather(client.task, return_exceptions=True)
        group = sessions.sockets.get(sid)
        if group is not None:
            group.discard(ws)
            if not group:
                sessions.sockets.pop(sid, None)
    return ws


@web.middleware
async def page_session_auth(request: web.Request, handler):
    """Let the page call ``/api/operator/...`` (of its own market) with its session cookie
    (plus the ``X-Voltbourse-Page`` header) instead of the bearer token; and, on the
    platform's root, ``/api/platform/...`` when the session was opened with the platform
    operator token."""
    operator_route = request.path.startswith(_base(request) + "/api/operator/")
    platform_route = request.path.startswith("/api/platform/") and _platform_root(request)
    if ((operator_route or platform_route) and "Authorization" not in request.headers
            and request.headers.get(PAGE_HEADER) == "1" and _cookie(request) in request.cookies):
        if not same_origin(request, required=False):
            return _err(403, "FORBIDDEN", "cross-origin request refused")
        sid = _sid(request)
        if operator_enabled(request) and sid is not None and (
                operator_route or request.app[PAGE_SESSIONS].is_platform(sid)):
            request[PAGE_AUTHENTICATED] = True
    return await handler(request)


async def _start_feed(app: web.Application) -> None:
    await app[OPERATOR_FEED].start()


async def _close_pages(app: web.Application) -> None:
    sessions = app[PAGE_SESSIONS]
    socks = [ws for group in sessions.sockets.values() for ws in group]
    await asyncio.gather(*(ws.close(code=1001, message=b"server shutdown") for ws in socks),
                         return_exceptions=True)


async def _stop_feed(app: web.Application) -> None:
    await app[OPERATOR_FEED].stop()


def add_page_routes(app: web.Application) -> OperatorFeed:
    """Add the operator page, its login and its feed to ``app`` (needs ``MARKET``,
    ``SETTINGS``; uses ``MARKET_DATA`` and ``MEMBERS`` when present). Returns the feed
    hub (also ``app[OPERATOR_FEED]``), which subsystems may publish to right away."""
    settings = app[SETTINGS]
    feed = OperatorFeed(app[MARKET], app.get(MARKET_DATA), app.get(MEMBERS), timezone=settings.timezone)
    app[OPERATOR_FEED] = feed
    sessions = app[PAGE_SESSIONS] = PageSessions()
    app.setdefault(CREDENTIALS_REVOKED, []).append(sessions.end_all)  # a new operator token logs the pages out
    app.middlewares.append(page_session_auth)
    app.router.add_get("/operator", page)
    app.router.add_get("/operator/", page)
    app.router.add_get("/operator/login", login_form)
    app.router.add_post("/operator/login", login)
    app.router.add_post("/operator/logout", logout)
    app.router.add_get("/operator/session", session_info)
    app.router.add_static("/operator/static", STATIC)
    app.router.add_get("/ws/operator", feed_ws)
    app.on_startup.append(_start_feed)
    app.on_shutdown.append(_close_pages)
    app.on_cleanup.append(_stop_feed)
    return feed
