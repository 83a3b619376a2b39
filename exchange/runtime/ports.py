"""Ports between subsystems: narrow interfaces one subsystem implements and another
uses, so neither reads the other's tables. The gateway carries the registered
implementations (``exchange.gateway.keys.PAYOUT_SOURCES``)."""

from __future__ import annotations

from typing import Protocol, TypedDict


class Payout(TypedDict):
    """Money a subsystem owes a member (positive) or charges it (negative), in money
    units of 1e-8 EUR, grouped on chain by ``event_id`` (one settlement per group).
    Event ids are one space on chain for every source (the registry refuses an id twice):
    flexibility uses its event ids (small integers), metering ``2**56 + bill run``."""

    payout_id: int
    event_id: int
    member: str
    amount_units: int


class PayoutSource(Protocol):
    """A subsystem whose payouts settlement pays on chain (flexibility's revenue shares and
    penalties, metering's community charges)."""

    async def pending_payouts(self) -> list[Payout]:
        """Payouts not yet settled, ordered by ``event_id`` then ``payout_id``."""
        ...

    async def mark_settled(self, payout_ids: list[int], batch_id: int) -> int:
        """Record that these payouts are settled on chain in payout batch ``batch_id``."""
        ...
