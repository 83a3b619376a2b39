"""The flexibility gateway's peer messages: requests (``flex_*``) and what it pushes
to members (invitations, dispatch, delivery checks, payouts). Registered with the
gateway by ``exchange.flexibility.plugin``; see docs/flexibility.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from exchange.protocol.errors import register
from exchange.protocol.messages import MAX_INT, Push, Request
from exchange.protocol.types import UtcTime

FlexTime = UtcTime
EnergyWh = Annotated[int, Field(ge=0, le=10**12, description="Wh")]


class FlexOffer(Request):
    """Offer flexibility for a delivery period: ``up`` = consume less / produce more.
    Give at most one of ``energy_wh`` (limit over the period) and ``duration_minutes``
    (energy = power x duration); neither: power over the whole period."""

    type: Literal["flex_offer"]
    period_start: FlexTime
    period_minutes: Annotated[int, Field(ge=15, le=1440, multiple_of=15)] = 60
    direction: Literal["up", "down"]
    # bounded so that an event's money fits in 64 bits: 1 GW at 10^9 ticks from 24 members
    # overflowed its settlement, which was then never stored
    power_w: Annotated[int, Field(ge=1, le=10**8, description="W (at most 100 MW)")]
    energy_wh: Annotated[int, Field(ge=1, le=10**12)] | None = None
    duration_minutes: Annotated[int, Field(ge=1, le=1440)] | None = None
    price: Annotated[int, Field(ge=0, le=10**7, description="ticks of 0.01 EUR/MWh asked for activated energy "
                                                            "(at most 100 000 EUR/MWh)")]
    kind: Literal["reduction", "shift"] = "reduction"

    @model_validator(mode="after")
    def _one_limit(self) -> FlexOffer:
        if self.energy_wh is not None and self.duration_minutes is not None:
            raise ValueError("give energy_wh or duration_minutes, not both")
        return self


class FlexOfferCancel(Request):
    type: Literal["flex_offer_cancel"]
    offer_id: Annotated[int, Field(ge=1, le=MAX_INT)]


class FlexBaselineSlot(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    start: FlexTime
    consumption_wh: EnergyWh
    generation_wh: EnergyWh = 0


class FlexBaseline(Request):
    """Forecast consumption/generation per 15-minute slot (Wh)."""

    type: Literal["flex_baseline"]
    slots: Annotated[list[FlexBaselineSlot], Field(min_length=1, max_length=192)]


class FlexMeterReading(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    interval_start: FlexTime
    consumption_wh: EnergyWh
    generation_wh: EnergyWh = 0


class FlexMeter(Request):
    """Metered consumption/generation per 10-minute interval (Wh)."""

    type: Literal["flex_meter"]
    readings: Annotated[list[FlexMeterReading], Field(min_length=1, max_length=144)]


class FlexRespond(Request):
    """Accept or decline a ``flex_invitation``."""

    type: Literal["flex_respond"]
    invitation_id: Annotated[int, Field(ge=1, le=MAX_INT)]
    accept: bool


class FlexStatus(Request):
    """My offers, invitations, dispatch instructions, delivery checks and payouts."""

    type: Literal["flex_status"]


class FlexInvitationOut(Push):
    """Invited to a demand-response event with one of my offers: answer with ``flex_respond``."""

    type: Literal["flex_invitation"]
    event_id: int
    invitation_id: int
    offer_id: int
    direction: Literal["up", "down"]
    period_start: str
    period_end: str
    power_w: int
    respond_by: str
    reserve: bool = Field(description="a reserve call during an event: accepting dispatches at once")
    rank: int


class FlexEventOut(Push):
    type: Literal["flex_event"]
    event_id: int
    phase: str
    reason: str


class FlexDispatchOut(Push):
    """Dispatch instruction: change my power by ``power_w`` in ``direction`` from ``start`` to ``end``."""

    type: Literal["flex_dispatch"]
    event_id: int
    instruction_id: int
    offer_id: int
    bid_id: int | None
    direction: Literal["up", "down"]
    power_w: int
    start: str
    end: str
    energy_wh: int
    reserve: bool


class FlexDeliveryOut(Push):
    """The 10-minute delivery check of one interval (baseline minus metered, Wh)."""

    type: Literal["flex_delivery"]
    event_id: int
    member: str
    interval_start: str
    interval_end: str
    required_wh: int
    baseline_wh: int
    metered_wh: int | None
    delivered_wh: int
    shortfall_wh: int
    over_wh: int


class FlexPayoutOut(Push):
    """My share of an event's revenue (money units of 1e-8 EUR); settled on chain later."""

    type: Literal["flex_payout"]
    event_id: int
    delivered_wh: int
    share: int
    penalty: int
    payout: int


REQUESTS: tuple[type[Request], ...] = (FlexOffer, FlexOfferCancel, FlexBaseline, FlexMeter, FlexRespond, FlexStatus)
PUSHES: tuple[type[Push], ...] = (FlexInvitationOut, FlexEventOut, FlexDispatchOut, FlexDeliveryOut, FlexPayoutOut)

for _code, _meaning in (
        ("EVENT_EXISTS", "an event for that period and direction exists"),
        ("INTERVAL_NOT_OVER", "the delivery interval is not over yet"),
        ("INVALID_DURATION", "duration_minutes exceeds the period, or power x duration < 1 Wh"),
        ("INVALID_INTERVAL", "a meter interval is not on the 10-minute grid"),
        ("INVALID_PERIOD", "the period must start and end on quarter hours (UTC), end after start"),
        ("INVALID_SLOT", "a baseline slot is not on a quarter hour"),
        ("OFFER_COMMITTED", "the offer is committed to an event"),
        ("PERIOD_STARTED", "the period has started"),
        ("TOO_LATE", "the answer or offer came after its deadline"),
        ("UNKNOWN_INVITATION", "no such invitation of yours"),
        ("UNKNOWN_OFFER", "no open offer of yours with that id")):
    register(_code, 409, _meaning, "flexibility")
