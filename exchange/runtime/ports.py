"""Ports between subsystems: narrow interfaces one subsystem implements and another
uses, so neither reads the other's tables. The gateway carries the registered
implementations (``exchange.gateway.keys.PAYOUT_SOURCES``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypedDict


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


class BillItem(TypedDict):
    """A line another subsystem adds to members' bills: ``amount_units`` > 0 the member was
    paid, < 0 it was charged (money units of 1e-8 EUR), for delivery in the bill's period."""

    member: str
    name: str
    amount_units: int
    detail: str


class BillItemSource(Protocol):
    """A subsystem whose payments to members appear on their bills (flexibility's revenue
    shares and penalties; metering bills them as lines, settlement pays them)."""

    async def bill_items(self, start_us: int, end_us: int) -> list[BillItem]:
        """The items of deliveries in ``[start_us, end_us)``, per member and line name."""
        ...


class Outlook(TypedDict):
    """What a member can expect in one delivery interval ``[start_us, end_us)``: the energy it
    would draw from the grid (``import_wh``) and feed into it (``export_wh``) without the
    market, and the grid tariff it would pay and get then (ticks, 0.01 EUR/MWh; None when no
    tariff is known). A forecast, not a measurement."""

    start_us: int
    end_us: int
    import_wh: int
    export_wh: int
    history_days: int  # how many earlier days the energy is the mean of (0: nothing known, both 0)
    import_price: int | None
    feed_in_price: int | None


class OutlookSource(Protocol):
    """A subsystem that can forecast a member's grid exchange (metering, from the member's own
    metered history and tariff); the portal's trading agent plans with it."""

    async def outlook(self, member: str, intervals: list[tuple[int, int]], now_us: int) -> list[Outlook] | None:
        """One outlook per interval, in order, using only what was known before ``now_us``;
        None when this source knows nothing of the member (no metering point)."""
        ...


class AccountView(NamedTuple):
    """The engine's view of a member's account (money units of 1e-8 EUR)."""

    collateral: int
    open_exposure: int
    net_payable: int

    @property
    def free(self) -> int:
        """What is free to trade or to take: collateral not backing open buys or unsettled payable."""
        return max(0, self.collateral - self.open_exposure - max(self.net_payable, 0))


@dataclass(frozen=True, slots=True)
class CollateralUpdate:
    """One ``UpdateCollateral`` for :meth:`EngineCommands.update_collaterals`."""

    key: str
    member: str
    collateral: int
    settled_payable: int = 0
    settlement_ref: int = 0
    withdrawal: int = 0


class EngineCommands(Protocol):
    """The engine, for a subsystem that feeds it from outside the order path (settlement): in
    the writer's process straight to the runtime (``exchange.runtime.inbox.DirectEngine``),
    from another process through the durable engine inbox (``InboxEngine``, docs/settlement.md)."""

    async def update_collateral(self, key: str | None, member: str, collateral: int, *, settled_payable: int = 0,
                                settlement_ref: int = 0, withdrawal: int = 0) -> str | None:
        """Apply ``UpdateCollateral`` once per ``key`` (None: a fresh key; posting a key again
        is a no-op with the first outcome) and wait for it; the refusal (``"REASON: detail"``) or None."""
        ...

    async def update_collaterals(self, updates: Sequence[CollateralUpdate]) -> list[str | None]:
        """Several ``update_collateral`` at once (their keys distinct): posted together,
        applied in the order given, waited for together; each one's refusal or None."""
        ...

    async def accounts(self, members: list[str] | None = None) -> dict[str, AccountView]:
        """The engine's accounts of ``members`` (None: every member it knows)."""
        ...
