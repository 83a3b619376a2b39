"""Voltbourse Python SDK: an asyncio client of the peer WebSocket API.

See :mod:`clients.sdk.client` and docs/sdk.md.
"""

from .book import BookUpdate, LocalBook
from .client import BookFeed, Feed, VoltbourseClient
from .errors import (
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
from .keys import member_key, member_keys
from .models import (
    BookDelta,
    BookSnapshot,
    Execution,
    MyTrade,
    OpenOrder,
    OrderResult,
    Position,
    ProductState,
    PublicTrade,
)

__all__ = [
    "AuthenticationError", "BookDelta", "BookFeed", "BookSnapshot", "BookUpdate", "ClientClosed", "ConnectionLost",
    "Execution", "Feed", "InvalidRequest", "LocalBook", "MyTrade", "OpenOrder", "OrderRejected", "OrderResult",
    "OutcomeUnknown", "Position", "ProductState", "PublicTrade", "RequestError", "RequestTimeout", "Retryable",
    "VoltbourseClient", "VoltbourseError", "member_key", "member_keys",
]
