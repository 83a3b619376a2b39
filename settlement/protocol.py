"""Settlement's peer messages (registered with the gateway by settlement.plugin)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exchange.protocol.errors import register
from exchange.protocol.messages import MAX_INT, Request

NOT_ANCHORED = register("NOT_ANCHORED", 409, "the trade's batch is not anchored on chain yet", "settlement")
CHAIN_UNAVAILABLE = register("CHAIN_UNAVAILABLE", 503, "the chain did not answer (node down or busy): retry shortly",
                             "settlement")


class TradeProof(Request):
    """The Merkle inclusion proof of one of the member's own trades, once its batch is
    anchored on chain (see docs/settlement.md for the leaf encoding)."""

    type: Literal["trade_proof"]
    trade_id: Annotated[int, Field(ge=1, le=MAX_INT)]


class MyCollateral(Request):
    """Your collateral: as the registry holds it on chain, as the engine counts it (free to
    trade, reserved by open buy orders, unsettled payable), your most recent deposits and
    withdrawal requests (``limit`` of each). Money in decimal strings of 1e-8 EUR units."""

    type: Literal["my_collateral"]
    limit: Annotated[int, Field(ge=1, le=100)] = 20


REQUESTS: tuple[type[Request], ...] = (TradeProof, MyCollateral)
