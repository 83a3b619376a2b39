"""Settlement's peer messages (registered with the gateway by settlement.plugin)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from exchange.protocol.errors import register
from exchange.protocol.messages import MAX_INT, Request

NOT_ANCHORED = register("NOT_ANCHORED", 409, "the trade's batch is not anchored on chain yet", "settlement")


class TradeProof(Request):
    """The Merkle inclusion proof of one of the member's own trades, once its batch is
    anchored on chain (see docs/settlement.md for the leaf encoding)."""

    type: Literal["trade_proof"]
    trade_id: Annotated[int, Field(ge=1, le=MAX_INT)]


REQUESTS: tuple[type[Request], ...] = (TradeProof,)
