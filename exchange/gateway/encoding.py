"""JSON encoding shared by the gateway's outputs (peer market data, operator feed)."""

from __future__ import annotations

import orjson

from exchange.core.model import Side, TradeEvent


def encode(msg: dict) -> str:
    """One JSON text frame."""
    return orjson.dumps(msg).decode()




def aggressor(ev: TradeEvent) -> str:
    """``buy``/``sell`` (the incoming order's side) or ``auction``."""
    return ev.aggressor.value if isinstance(ev.aggressor, Side) else ev.aggressor
