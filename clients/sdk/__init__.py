"""Voltbourse Python SDK: an asyncio client of the peer WebSocket API.

See :mod:`clients.sdk.client` and docs/sdk.md. Names are imported lazily, so
``from clients.sdk.keys import member_key`` (e.g. in a gevent Locust user)
does not load aiohttp.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BookUpdate": "book", "LocalBook": "book",
    "BookFeed": "client", "Feed": "client", "VoltbourseClient": "client",
    "AuthenticationError": "errors", "ClientClosed": "errors", "ConnectionLost": "errors",
    "InvalidRequest": "errors", "OrderRejected": "errors", "OutcomeUnknown": "errors", "RequestError": "errors",
    "RequestTimeout": "errors", "Retryable": "errors", "VoltbourseError": "errors",
    "member_key": "keys", "member_keys": "keys",
    "BookDelta": "models", "BookSnapshot": "models", "Execution": "models", "MyTrade": "models",
    "OpenOrder": "models", "OrderResult": "models", "Position": "models", "ProductState": "models",
    "PublicTrade": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'clients.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
