"""JSON encoding shared by the gateway's outputs (peer market data, operator feed)."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any

import orjson


def encode(msg: dict) -> str:
    """One JSON text frame."""
    return orjson.dumps(msg).decode()


def plain(x: Any) -> Any:
    """The plain value of a str-valued enum (live events) or of a str (replayed events)."""
    return x.value if isinstance(x, Enum) else x


def utc_iso(t: datetime) -> str:
    """The exchange's one time format: ISO 8601 in UTC with ``Z`` (as ``exchange.core.units.iso``)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
