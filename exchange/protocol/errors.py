"""The one catalogue of error codes, and the one error type every layer raises.

A peer gets an error as ``{"type": "error", "id": ..., "code": CODE, "message": text}``
on the WebSocket and as ``{"error": CODE, "message": text}`` over HTTP, with the
HTTP status given here. The engine's own reasons (``exchange.core.model.Reason``)
are part of the catalogue: an engine rejection is answered with its reason code
(HTTP 409; 404 for a product or member that is not there). The mapping to HTTP and to WebSocket frames lives in one place each
(``exchange.gateway.http.error_middleware`` and ``Session.handle``); both take
their status from :data:`CATALOGUE`. ``docs/errors.md`` is generated from it
(``voltbourse docs``) and a drift test keeps it equal.

Subsystems add their own codes with :func:`register` at import time (a code
registered twice with a different status is a programming error).
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.core.model import Reason


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int  # HTTP status
    meaning: str
    owner: str = "gateway"


CATALOGUE: dict[str, ErrorCode] = {}


def register(code: str, status: int, meaning: str, owner: str = "gateway") -> str:
    """Add ``code`` to the catalogue (idempotent for the same status); returns the code."""
    known = CATALOGUE.get(code)
    if known is not None:
        if known.status != status:
            raise ValueError(f"error code {code} already registered with HTTP {known.status} by {known.owner}")
        return code
    CATALOGUE[code] = ErrorCode(code, status, meaning, owner)
    return code


class VoltbourseError(Exception):
    """A request that cannot be served, with a catalogued ``code`` and a precise message.
    Raised by any layer; the gateway turns it into an HTTP answer or a WebSocket error
    frame (never a 500, never a dropped connection)."""

    def __init__(self, code: str, message: str, *, status: int | None = None, **extra: object) -> None:
        super().__init__(message)
        entry = CATALOGUE.get(code)
        if entry is None and status is None:
            raise ValueError(f"uncatalogued error code {code!r}: register it in exchange.protocol.errors")
        self.code = code
        self.message = message
        self.status = status if status is not None else entry.status  # type: ignore[union-attr]
        self.extra = extra


# --- the request itself
MALFORMED_JSON = register("MALFORMED_JSON", 400, "the frame or body is not JSON (valid JSON of the wrong shape, e.g. an array: INVALID_MESSAGE on the WebSocket, INVALID_REQUEST over HTTP)")
INVALID_MESSAGE = register("INVALID_MESSAGE", 422, "a WebSocket message failed validation (field: reason)")
INVALID_REQUEST = register("INVALID_REQUEST", 422, "an HTTP body, path or query parameter failed validation")
UNKNOWN_TYPE = register("UNKNOWN_TYPE", 400, "unknown WebSocket message type")
BINARY_NOT_SUPPORTED = register("BINARY_NOT_SUPPORTED", 400, "binary WebSocket frames are not accepted")
PAYLOAD_TOO_LARGE = register("PAYLOAD_TOO_LARGE", 413, "the request body is too large")
RATE_LIMITED = register("RATE_LIMITED", 429, "too many messages: this one was dropped")
NOT_FOUND = register("NOT_FOUND", 404, "no such resource")
METHOD_NOT_ALLOWED = register("METHOD_NOT_ALLOWED", 405, "the route exists, not with this method (allowed: the "
                              "Allow header)")
# --- who asks
NOT_AUTHENTICATED = register("NOT_AUTHENTICATED", 401, "log in first (WebSocket)")
ALREADY_AUTHENTICATED = register("ALREADY_AUTHENTICATED", 409, "this session is already logged in")
UNAUTHENTICATED = register("UNAUTHENTICATED", 401, "no or malformed operator credentials")
FORBIDDEN = register("FORBIDDEN", 403, "these credentials may not use this route")
OPERATOR_DISABLED = register("OPERATOR_DISABLED", 503, "no operator token is configured")
BAD_SIGNATURE = register("BAD_SIGNATURE", 401, "the signature does not verify or is not by that address")
STALE_SIGNATURE = register("STALE_SIGNATURE", 401, "the signed time is outside the accepted window")
TOO_MANY_ATTEMPTS = register("TOO_MANY_ATTEMPTS", 429, "too many failed sign-ins or wrong operator tokens: wait a "
                                                        "minute and retry")
REPLAY_UNAVAILABLE = register("REPLAY_UNAVAILABLE", 409, "those private reports are no longer kept: take a "
                              "snapshot (orders, positions) and follow the stream")
TOO_MANY_SESSIONS = register("TOO_MANY_SESSIONS", 429, "the member has the most sessions allowed open")
MEMBER_EXISTS = register("MEMBER_EXISTS", 409, "a member with this address exists")
INTERNAL = register("INTERNAL", 500, "a server fault (logged); the request may be retried")
# --- the market
UNAVAILABLE = register("UNAVAILABLE", 503, "the market (or the subsystem) is not running; nothing was committed")
BUSY = register("BUSY", 503, "the command queue is full: retry shortly")
UNKNOWN_EVENT = register("UNKNOWN_EVENT", 404, "no such flexibility event", "flexibility")

#: the engine's reasons that name a thing that is not there: 404 over HTTP (as the routes that
#: look the thing up answer), every other rejection 409
_NOT_FOUND = (Reason.UNKNOWN_PRODUCT, Reason.UNKNOWN_MEMBER)
for _r in Reason:
    register(_r.value, 404 if _r in _NOT_FOUND else 409, "engine rejection (see docs/engine.md)", "engine")


def markdown_table() -> str:
    """The catalogue as a Markdown table (docs/errors.md)."""
    lines = ["| code | HTTP | owner | meaning |", "| --- | --- | --- | --- |"]
    for e in sorted(CATALOGUE.values(), key=lambda e: (e.owner, e.code)):
        lines.append(f"| `{e.code}` | {e.status} | {e.owner} | {e.meaning} |")
    return "\n".join(lines) + "\n"
