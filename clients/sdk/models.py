"""Typed results of the peer protocol.

Requests are the server's own pydantic models (:mod:`exchange.protocol.messages`);
so are the server-pushed messages (``Execution``, ``BookSnapshot``, ``BookDelta``,
``PublicTrade``, ``ProductState``, ``MarketState``, ``Hello``), re-exported here.
The ``result`` objects of responses are plain dicts on the wire; the models
below give them types (integers: energy in Wh, prices in ticks of 0.01 EUR/MWh,
money in units of 1e-8 EUR). Unknown fields are ignored so a newer server does
not break an older SDK.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from exchange.protocol.messages import (  # noqa: F401  (re-exported)
    BookDelta,
    BookSnapshot,
    Execution,
    Hello,
    MarketState,
    ProductState,
    PublicTrade,
)
from exchange.protocol.messages import VolatilityInterruptionPush as VolatilityInterruption

__all__ = [
    "BlockResult", "BookDelta", "BookSnapshot", "CancelAllResult", "CancelResult", "Execution", "Fill", "Hello", "LoginResult",
    "MarketState", "MyTrade", "OpenOrder", "OrderResult", "OrderState", "Position", "ProductInfo", "ProductState",
    "ProductsResult", "PublicTrade", "Side", "Tif", "VolatilityInterruption",
]

Side = Literal["buy", "sell"]
Tif = Literal["gtc", "ioc", "fok"]


class _Result(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class LoginResult(_Result):
    member: str
    market_id: str


class Fill(_Result):
    trade_id: int
    price: int
    quantity: int


class BlockResult(_Result):
    """Answer to ``place_block``: the block waits for its auction (``status == "pending"``)."""

    order_id: int
    status: Literal["pending"] = "pending"
    product_ids: tuple[str, ...] = ()
    seq: int | None = None


class OrderResult(_Result):
    """Outcome of ``place`` / ``modify`` (after the journal commit).

    A resubmission of a known ``client_order_id`` answers ``duplicate=True`` with the
    original ``order_id``, ``original_seq`` (the seq of its acceptance) and the order's
    state now (``status``, ``remaining``, ``filled``, ``fills``): the order exists once.
    """

    order_id: int
    status: Literal["resting", "filled", "cancelled", "expired"] | None = None  # expired: a duplicate's state
    remaining: int | None = None
    filled: int = 0
    fills: tuple[Fill, ...] = ()
    seq: int | None = None
    reason: str | None = None
    priority_kept: bool | None = None
    price: int | None = None
    duplicate: bool = False
    original_seq: int | None = None


class CancelResult(_Result):
    order_id: int
    status: str
    remaining: int


class CancelAllResult(_Result):
    cancelled: int


class OpenOrder(_Result):
    order_id: int
    product_id: str
    side: Side
    price: int
    quantity: int
    remaining: int
    client_order_id: str | None = None


class OrderState(_Result):
    """One of my orders, open or closed (``order_status``; ``orders`` with ``status`` closed or
    all, there without ``fills``). ``quantity`` is as placed; ``remaining`` is what rests in the
    book while ``open``, what was left when it was ``cancelled`` (``reason`` says why) or
    ``expired``, and 0 once ``filled``; ``seq`` and ``ts`` are those of its last change."""

    order_id: int
    client_order_id: str | None = None
    product_id: str
    side: Side
    price: int
    quantity: int
    remaining: int
    filled: int
    status: Literal["open", "filled", "cancelled", "expired"]
    reason: str | None = None
    tif: str | None = None
    fills: tuple[Fill, ...] = ()
    seq: int
    ts: str


class MyTrade(_Result):
    trade_id: int
    seq: int
    product_id: str
    side: Side
    price: int
    quantity: int
    ts: str
    counterparty: str | None = None


class Position(_Result):
    product_id: str
    bought: int
    sold: int
    net: int
    payable: int
    state: str | None = None


class ProductInfo(_Result):
    product_id: str
    state: str


class ProductsResult(_Result):
    seq: int
    halted: bool
    products: tuple[ProductInfo, ...]

    def open_products(self) -> list[str]:
        """The products open for trading, by delivery start (their ids sort so)."""
        return sorted(p.product_id for p in self.products if p.state == "open")
