"""Voltbourse Python SDK: an asyncio client of the peer WebSocket API.

See :mod:`clients.sdk.client` and docs/sdk.md. Its pure half (requests built,
orders signed, answers read; no socket, no event loop) is :mod:`clients.sdk.wire`,
for synchronous callers too (the Locust load test). Trade proofs, flexibility and
the throw-away local exchange are in their own modules
(:mod:`~clients.sdk.proofs`, :mod:`~clients.sdk.flex`, :mod:`~clients.sdk.local`).
"""

from __future__ import annotations

from clients.sdk.book import BookUpdate, LocalBook
from clients.sdk.client import BookFeed, Feed, VoltbourseClient
from clients.sdk.errors import (
    AuthenticationError,
    ClientClosed,
    ConnectionLost,
    InvalidRequest,
    OrderRejected,
    OutcomeUnknown,
    RequestError,
    RequestTimeout,
    Retryable,
    VoltbourseError,
)
from clients.sdk.keys import member_key, member_keys
from clients.sdk.models import (
    BlockResult,
    BookDelta,
    BookSnapshot,
    Execution,
    MyTrade,
    OpenOrder,
    OrderResult,
    OrderState,
    Position,
    ProductState,
    PublicTrade,
)

__all__ = [
    "AuthenticationError", "BlockResult", "BookDelta", "BookFeed", "BookSnapshot", "BookUpdate", "ClientClosed", "ConnectionLost",
    "Execution", "Feed", "InvalidRequest", "LocalBook", "MyTrade", "OpenOrder", "OrderRejected", "OrderResult",
    "OrderState", "OutcomeUnknown", "Position", "ProductState", "PublicTrade", "RequestError", "RequestTimeout", "Retryable",
    "VoltbourseClient", "VoltbourseError", "member_key", "member_keys",
]
