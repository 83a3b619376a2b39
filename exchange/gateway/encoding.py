"""JSON encoding shared by the gateway's outputs (peer market data, operator feed)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from exchange.core.model import Side, TradeEvent


def encode(msg: dict) -> str:
    """One JSON text frame."""
    return orjson.dumps(msg).decode()



def utc_iso(t: datetime) -> str:
    """The exchange's one time format: ISO 8601 in UTC with ``Z`` (as ``exchange.core.units.iso``)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def aggressor(ev: TradeEvent) -> str:
    """``buy``/``sell`` (the incoming order's side) or ``auction``."""
    return ev.aggressor.value if isinstance(ev.aggressor, Side) else ev.aggressor
