"""Public HTTP helpers for the gateway and every subsystem's routes.

- :class:`Route`: one route and what the OpenAPI document says about it; the
  gateway's own routes and every subsystem's are declared this way, registered
  with :func:`add_routes`, and ``/api/openapi.json`` is generated from them.
- :func:`json_response`, :func:`error_response`, :func:`read_body`,
  :func:`read_query`: answers and validated input (pydantic, strict).
- :func:`error_middleware`: the one place where errors become HTTP answers:
  :class:`~exchange.protocol.errors.VoltbourseError` (any layer) with its catalogued
  status, pydantic ``ValidationError`` as 422 ``INVALID_REQUEST`` (400
  ``MALFORMED_JSON`` for a body that is not JSON), the runtime's
  ``MarketUnavailable``/``MarketBusy`` as 503, a too-large body as 413, a fault as 500
  ``INTERNAL``; every answer carries the request's id (:func:`request_id`).
- :func:`operator_only`: the operator token check (``Authorization: Bearer``).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.gateway.keys import OPERATOR_TOKEN_HASHES, SETTINGS
from exchange.protocol.errors import VoltbourseError
from exchange.protocol.frames import NUL_MESSAGE, json_nul_location
from exchange.protocol.siwe import SIWE_WRONG_DOMAIN
from exchange.runtime.market import MarketBusy, MarketUnavailable

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_REQUEST_ID = web.RequestKey("request_id", str)  # where a request keeps its id

PUBLIC = ("public",)
OPERATOR = ("operator",)
MEMBER = ("member",)


class ApiError(VoltbourseError):
    """An HTTP-level refusal: ``ApiError(status, code, message)``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(code, message, status=status, **extra)


# --------------------------------------------------------------------------- answers


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def shown(text: str, limit: int = 64) -> str:
    """What a caller sent, as an error message shows it: cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit] + "…"


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


def validation_response(exc: ValidationError, **extra: Any) -> web.Response:
    errs = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errs):
        return error_response(400, "MALFORMED_JSON", "the request body is not valid JSON", **extra)
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errs]
    message = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errs)
    return error_response(422, "INVALID_REQUEST", message, details=details, **extra)


def request_id(request: web.Request) -> str:
    """The request's id: the caller's ``X-Request-Id`` when it is 1-64 letters, digits and
    ``._:-``, else a new one; the same for the whole request (a hosted market's application
    answers a clone of it, which carries its state: ``web.Request.clone``)."""
    rid = request.get(_REQUEST_ID)
    if rid is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        rid = request[_REQUEST_ID] = given if _REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(8)
    return rid


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error of every layer to its HTTP answer (one place), each with the request's
    id: in the ``X-Request-Id`` header of every answer, and as ``request_id`` in every error's
    body (those a handler or a guard answered itself too). The server's log line of a refusal
    or a fault names the same id."""
    rid = request_id(request)
    try:
        resp = await _answer(request, handler, rid)
    except web.HTTPException as exc:  # aiohttp's other answers (a redirect): as they are, with the id
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    if not resp.prepared:  # a WebSocket's headers went out when it opened
        resp.headers[REQUEST_ID_HEADER] = rid
    return resp


def _with_request_id(resp: web.StreamResponse, rid: str) -> web.StreamResponse:
    """A JSON error a handler or a guard answered itself (not raised), with ``request_id``."""
    if resp.status >= 400 and isinstance(resp, web.Response) and resp.content_type == "application/json" \
            and isinstance(resp.body, bytes):
        with contextlib.suppress(ValueError, TypeError):
            data = json.loads(resp.body)
            if isinstance(data, dict) and "request_id" not in data:
                data["request_id"] = rid
                resp.body = json.dumps(data).encode()
    return resp


async def _answer(request: web.Request, handler: Handler, rid: str) -> web.StreamResponse:
    nul = _nul_in_url(request)
    if nul is not None:
        return error_response(422, "INVALID_REQUEST", f"{nul}: {NUL_MESSAGE}", request_id=rid,
                              details=[{"loc": [nul] if nul != "path" else ["path"], "msg": NUL_MESSAGE,
                                        "type": "string_nul"}])
    try:
        return _with_request_id(await handler(request), rid)
    except VoltbourseError as exc:
        log.info("%s %s refused %s (request %s): %s", request.method, request.path[:200], exc.code, rid,
                 exc.message[:500])
        return error_response(exc.status, exc.code, exc.message, **{**exc.extra, "request_id": rid})
    except ValidationError as exc:
        log.info("%s %s refused INVALID_REQUEST (request %s)", request.method, request.path[:200], rid)
        return validation_response(exc, request_id=rid)
    except (MarketUnavailable, MarketBusy) as exc:
        code = "BUSY" if isinstance(exc, MarketBusy) else "UNAVAILABLE"
        return error_response(503, code, str(exc) or "the market is not running", request_id=rid)
    except web.HTTPClientError as exc:
        resp = http_error_response(request, exc, request_id=rid)
        if resp is None:
            raise
        return resp
    except web.HTTPException:
        raise
    except Exception:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            raise  # its answer may have gone out already: aiohttp logs it and closes the connection
        log.exception("%s %s failed (request %s)", request.method, request.path[:200], rid)
        return error_response(500, "INTERNAL", f"a server fault, logged as request {rid}", request_id=rid)


def http_error_response(request: web.Request, exc: web.HTTPClientError, **extra: Any) -> web.Response | None:
    """aiohttp's own refusals (no route, a method the route has not, a body too large, a
    WebSocket endpoint asked without its upgrade) as the
    JSON errors of every other answer (None: another 4xx, left as aiohttp answers it)."""
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(413, "PAYLOAD_TOO_LARGE", "the request body is too large", **extra)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = sorted(exc.allowed_methods)
        resp = error_response(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here (allowed: "
                              f"{', '.join(allowed)})", **extra)
        resp.headers["Allow"] = ",".join(allowed)
        return resp
    if isinstance(exc, web.HTTPNotFound):
        return error_response(404, "NOT_FOUND", f"no route {request.method} {request.path[:200]!r} "
                              "(docs/rest.md, GET /api/openapi.json)", **extra)
    if isinstance(exc, web.HTTPBadRequest):  # e.g. a WebSocket endpoint asked without its Upgrade
        return error_response(400, "INVALID_REQUEST", (exc.text or "bad request")[:500], **extra)
    return None


# --------------------------------------------------------------------------- input

MAX_SEQ = 2**63 - 1  # PostgreSQL bigint


class PageQuery(BaseModel):
    """``?after=SEQ&limit=N``: rows with ``seq > after``, at most ``limit``."""

    model_config = ConfigDict(extra="forbid")
    after: int = Field(0, ge=0, le=MAX_SEQ)
    limit: int = Field(100, ge=1, le=1000)



def _nul_in_url(request: web.Request) -> str | None:
    """``path``, or the name of the query parameter, that holds a NUL character (``%00``)."""
    if "\x00" in request.path:
        return "path"
    if "%00" in request.query_string or "\x00" in request.query_string:
        for k, v in request.query.items():
            if "\x00" in k or "\x00" in v:
                return k.replace("\x00", "\\0")[:64]
    return None


def validate_json_body(raw: bytes, model: type[BaseModel]) -> Any:
    """``raw`` validated by ``model``; a NUL character anywhere in it is refused (422), naming
    where: PostgreSQL's text and jsonb cannot hold it."""
    nul = json_nul_location(raw)
    if nul is not None:
        raise ApiError(422, "INVALID_REQUEST", f"{'.'.join(map(str, nul)) or 'body'}: {NUL_MESSAGE}",
                       details=[{"loc": list(nul), "msg": NUL_MESSAGE, "type": "string_nul"}])
    return model.model_validate_json(raw)


async def read_body(request: web.Request, model: type[BaseModel], optional: bool = False) -> Any:
    """The JSON body validated by ``model`` (an empty body is ``model()`` when ``optional``)."""
    raw = await request.read()
    if optional and not raw.strip():
        return model()
    return validate_json_body(raw, model)


def read_query(request: web.Request, model: type[BaseModel]) -> Any:
    """The query validated by ``model``; a parameter given twice is refused (which one counts
    would be a guess)."""
    q = request.query
    twice = sorted({k for k in q if len(q.getall(k)) > 1})
    if twice:
        raise ApiError(422, "INVALID_REQUEST", f"{', '.join(twice)}: given more than once",
                       details=[{"loc": [k], "msg": "given more than once", "type": "duplicate"}
                                for k in twice])
    return model.model_validate(dict(q))


def same_origin(request: web.Request, *, required: bool) -> bool:
    """Whether the request's ``Origin`` is this exchange: the configured ``public_origin``, or
    else the host the request was sent to (``Host``) over http or https. Without an
    ``Origin`` header: ``not required``."""
    origin = request.headers.get("Origin")
    if origin is None:
        return not required
    public = request.config_dict[SETTINGS].public_origin
    if public:
        return origin.rstrip("/") == public.rstrip("/")
    return origin in (f"http://{request.host}", f"https://{request.host}")


def sign_in_host(request: web.Request) -> tuple[str, bool]:
    """``(host, secure)`` a Sign-In with Ethereum message must name for this exchange: those
    of ``PUBLIC_ORIGIN`` when it is set, never the ``Host`` header a caller chooses (a
    phishing site's domain would otherwise sign members in here). Without it (a local
    deployment), the request's own host, if it is a loopback address or the configured
    ``HOST``; any other is refused (``SIWE_WRONG_DOMAIN``: set ``PUBLIC_ORIGIN``)."""
    settings = request.config_dict[SETTINGS]
    if settings.public_origin:
        u = urlsplit(settings.public_origin)
        return u.netloc, u.scheme == "https"
    host = request.host
    name = urlsplit("//" + host).hostname or ""
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if loopback or (name and name == settings.host and settings.host not in ("0.0.0.0", "::")):
        return host, request.secure
    raise VoltbourseError(SIWE_WRONG_DOMAIN, f"this exchange does not know itself as {host[:100]!r}: its operator "
                          "sets PUBLIC_ORIGIN to the address members use, and sign-ins name that", status=401)


#: request key: the operator page's session already vouched for this request (exchange.gateway.page)
PAGE_AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("operator_page", bool)


def operator_enabled(request: web.Request) -> bool:
    """Whether any operator token opens this app's operator API."""
    secret = request.config_dict[SETTINGS].operator_token
    hashes: set[bytes] = request.config_dict.get(OPERATOR_TOKEN_HASHES) or set()
    return bool(secret is not None and secret.get_secret_value()) or bool(hashes)


def operator_token_valid(request: web.Request, given: str) -> bool:
    """``given`` is the platform operator token (``settings.operator_token``) or one of the
    further tokens this market accepts (its community manager's, kept as sha256 digests)."""
    if not given:
        return False
    secret = request.config_dict[SETTINGS].operator_token
    token = secret.get_secret_value() if secret is not None else ""
    ok = bool(token) and hmac.compare_digest(given.encode(), token.encode())
    digest = hashlib.sha256(given.encode()).digest()
    hashes: set[bytes] = request.config_dict.get(OPERATOR_TOKEN_HASHES) or set()
    for h in hashes:
        ok = hmac.compare_digest(digest, h) or ok
    return ok


#: wrong operator tokens (page logins and API requests alike) a client address may send a minute
TOKEN_FAILURES_PER_MIN = 10


class TokenFailures:
    """Wrong operator tokens per client address over the last minute, for the whole server
    (every market app of the process shares one: a hosted community's routes are no second
    budget for guessing the platform's token). An address over the limit is refused outright
    (429) until its failures age out; the right token from another address is never refused."""

    def __init__(self) -> None:
        self._seen: dict[str, collections.deque[float]] = {}

    def throttled(self, who: str) -> bool:
        q = self._seen.get(who)
        if q is None:
            return False
        cutoff = time.monotonic() - 60
        while q and q[0] < cutoff:
            q.popleft()
        if not q:
            del self._seen[who]
        return len(q) >= TOKEN_FAILURES_PER_MIN

    def failed(self, who: str) -> None:
        if len(self._seen) >= 100_000 and who not in self._seen:  # a flood of addresses: forget the oldest
            self._seen.pop(next(iter(self._seen)))
        self._seen.setdefault(who, collections.deque()).append(time.monotonic())


TOKEN_FAILURES: web.AppKey[TokenFailures] = web.AppKey("operator_token_failures", TokenFailures)


_PROCESS_TOKEN_FAILURES = TokenFailures()  # for an app built without the server's (a running app cannot take one)


def token_failures(request: web.Request) -> TokenFailures:
    """The server's :class:`TokenFailures` (``TOKEN_FAILURES``; the process's if the app has none)."""
    return request.config_dict.get(TOKEN_FAILURES) or _PROCESS_TOKEN_FAILURES


def operator_only(handler: Handler) -> Handler:
    """Check the operator token before ``handler`` (401 no token, 403 wrong token,
    503 when the operator API is disabled). A request the operator page's session
    vouched for (:data:`PAGE_AUTHENTICATED`) needs no token."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not operator_enabled(request):
            return error_response(503, "OPERATOR_DISABLED",
                                  "the operator API is disabled (no operator token configured)")
        if request.get(PAGE_AUTHENTICATED):
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return error_response(401, "UNAUTHENTICATED", "send Authorization: Bearer <operator token>")
        if not operator_token_valid(request, given):
            failures = token_failures(request)
            who = request.remote or "?"
            throttled = failures.throttled(who)
            failures.failed(who)
            if throttled:
                return error_response(429, "TOO_MANY_ATTEMPTS", "too many wrong operator tokens from this address; "
                                      "wait a minute")
            return error_response(403, "FORBIDDEN", "this token may not use the operator API")
        return await handler(request)

    return guarded


# --------------------------------------------------------------------------- routes


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


INT, STR, BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
OPT_INT, OPT_STR = {"type": ["integer", "null"]}, {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
ANY_OBJECT = {"type": "object"}


def obj(required: bool = True, **props: dict) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(props)
    return out


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


@dataclass(frozen=True)
class Route:
    """One HTTP route and what the OpenAPI document says about it.

    ``handler`` None: served by something else (aiohttp's WebSocket upgrade, a static
    file) and only documented. ``tags`` decides the guard: ``operator`` routes are
    wrapped in :func:`operator_only`."""

    method: str
    path: str
    handler: Handler | None
    summary: str
    response: dict
    status: int = 200
    body: type[BaseModel] | None = None
    body_optional: bool = False
    query: tuple[tuple[str, dict, str], ...] = ()  # (name, schema, description)
    required_query: tuple[str, ...] = ()  # the query parameters a request must give (else 422)
    errors: tuple[int, ...] = ()
    content_type: str = "application/json"
    description: str = ""
    tags: tuple[str, ...] = field(default=OPERATOR)
    path_params: dict[str, dict] = field(default_factory=dict)  # name -> schema (default: string)


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    for r in routes:
        if r.handler is None:
            continue
        handler = operator_only(r.handler) if "operator" in r.tags else r.handler
        app.router.add_route(r.method, r.path, handler)
