"""Exceptions raised by the SDK.

Every error response of the exchange becomes a :class:`RequestError` (or one of
its subclasses) carrying the server's ``code`` and ``message``; connection
trouble becomes :class:`OutcomeUnknown` (:class:`ConnectionLost`,
:class:`RequestTimeout`): the request may or may not have been processed.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClientClosed",
    "ConnectionLost",
    "InvalidRequest",
    "OrderRejected",
    "OutcomeUnknown",
    "RequestError",
    "RequestTimeout",
    "Retryable",
    "VoltbourseError",
    "error_for",
]


class VoltbourseError(Exception):
    """Base class of every SDK error."""


class RequestError(VoltbourseError):
    """The exchange answered a request with ``{"type": "error", "code": ..., "message": ...}``."""

    def __init__(self, code: str, message: str = "", request_id=None, request: dict | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.request = request


class AuthenticationError(RequestError):
    """Login refused (``BAD_SIGNATURE``, ``SIWE_*``, ``UNKNOWN_MEMBER``, ``MEMBER_SUSPENDED``) or a request
    sent without a login (``NOT_AUTHENTICATED``). Not retried by the reconnection loop."""


class InvalidRequest(RequestError):
    """The server could not read the request (``INVALID_MESSAGE``, ``MALFORMED_JSON``,
    ``UNKNOWN_TYPE``, ``BINARY_NOT_SUPPORTED``): a bug in the caller, never retry as is."""


class Retryable(RequestError):
    """``RATE_LIMITED``, ``BUSY``, ``UNAVAILABLE``: the request was dropped/refused without
    effect; it is safe to send it again later."""


class OrderRejected(RequestError):
    """The engine refused the command; ``code`` is the engine's reason
    (``INSUFFICIENT_COLLATERAL``, ``PRODUCT_CLOSED``, ``UNKNOWN_ORDER``, ``NONCE_REUSED``, ...)."""


class OutcomeUnknown(VoltbourseError):
    """The request was sent but no answer came back: it may have been executed.

    For orders, retry with the same ``client_order_id`` (the exchange answers a
    resubmission with the original outcome, ``duplicate=True``) or look the order up
    with :meth:`VoltbourseClient.orders` / :meth:`VoltbourseClient.my_trades`.
    """

    def __init__(self, message: str, request: dict | None = None) -> None:
        super().__init__(message)
        self.request = request


class ConnectionLost(OutcomeUnknown):
    """The connection dropped while the request was in flight (never retried silently)."""


class RequestTimeout(OutcomeUnknown):
    """No answer within the request timeout."""


class ClientClosed(VoltbourseError):
    """The client was closed (or gave up reconnecting after a fatal login error)."""


_AUTH = {"BAD_SIGNATURE", "UNKNOWN_MEMBER", "MEMBER_SUSPENDED", "NOT_AUTHENTICATED", "ALREADY_AUTHENTICATED",
         "SIWE_INVALID", "SIWE_WRONG_DOMAIN", "SIWE_WRONG_CHAIN", "SIWE_EXPIRED", "SIWE_NOT_YET_VALID",
         "SIWE_NONCE_UNKNOWN", "SIWE_NONCE_USED", "SIGNED_OUT"}
_INVALID = {"INVALID_MESSAGE", "MALFORMED_JSON", "UNKNOWN_TYPE", "BINARY_NOT_SUPPORTED"}
_RETRYABLE = {"RATE_LIMITED", "BUSY", "UNAVAILABLE"}


def error_for(code: str, message: str = "", request_id=None, request: dict | None = None) -> RequestError:
    """The exception class for an error ``code`` (engine reasons become :class:`OrderRejected`)."""
    if code in _AUTH:
        cls: type[RequestError] = AuthenticationError
    elif code in _INVALID:
        cls = InvalidRequest
    elif code in _RETRYABLE:
        cls = Retryable
    else:
        cls = OrderRejected
    return cls(code, message, request_id, request)
