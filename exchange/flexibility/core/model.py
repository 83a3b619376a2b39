"""Value types of the flexibility core. Integers only: power in W, energy in Wh,
prices in ticks of 0.01 EUR/MWh, money in units of 1e-8 EUR (Wh x ticks), times in
integer microseconds UTC. Nothing here reads a clock or does I/O."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from exchange.core.units import US_PER_MIN

PPM = 1_000_000  # parts per million: the fixed-point scale of ratios and weights
SLOT_US = 15 * US_PER_MIN  # baselines are per 15 minutes
CHECK_US = 10 * US_PER_MIN  # delivery is checked every 10 minutes


class Direction(str, Enum):
    UP = "up"  # reduce consumption / raise generation
    DOWN = "down"  # raise consumption / reduce generation


class DeliveryKind(str, Enum):
    REDUCTION = "reduction"  # energy not used (curtailment)
    SHIFT = "shift"  # energy moved to another time (costs the rebound)


class Policy(str, Enum):
    LOCAL_FIRST = "local_first"  # cover the community's own deficit before bidding outside
    EXTERNAL_FIRST = "external_first"  # bid into the balancing market first, local gets the rest


class SplitRule(str, Enum):
    MERIT_ORDER = "merit_order"  # cheapest offers take the activation first
    PRO_RATA = "pro_rata"  # every offer of the bid in proportion to its share of the bid


class ShareRule(str, Enum):
    EQUAL = "equal"
    PRO_RATA_DELIVERED = "pro_rata_delivered"
    WEIGHTED = "weighted"  # delivered energy x a per-member weight (ppm)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def energy_wh(power_w: int, duration_us: int) -> int:
    """Energy of ``power_w`` held for ``duration_us``, floored to whole Wh (W x min / 60 is
    exact for the whole-minute durations and 0.1 MW granularities used here)."""
    return power_w * duration_us // (60 * US_PER_MIN)


@dataclass(frozen=True, slots=True)
class Offer:
    """A member's flexibility for one delivery period. ``energy_wh`` limits what it can
    deliver in the period (None: power x period); ``price`` is what the member asks."""

    offer_id: int
    member: str
    period_start: int
    period_end: int
    direction: Direction
    power_w: int
    price: int
    kind: DeliveryKind = DeliveryKind.REDUCTION
    energy_wh: int | None = None

    def usable_power_w(self, start: int, end: int) -> int:
        """Power the offer can hold over [start, end): its power, capped by its energy limit."""
        if start < self.period_start or end > self.period_end or end <= start:
            return 0
        if self.energy_wh is None:
            return self.power_w
        return min(self.power_w, self.energy_wh * 60 * US_PER_MIN // (end - start))

    def energy(self) -> int:
        full = energy_wh(self.power_w, self.period_end - self.period_start)
        return full if self.energy_wh is None else min(full, self.energy_wh)


@dataclass(frozen=True, slots=True)
class ProductRules:
    """A balancing product's bid rules (defaults: mFRR-like)."""

    name: str = "mFRR"
    direction: Direction = Direction.UP
    min_bid_w: int = 1_000_000
    granularity_w: int = 100_000
    max_bid_w: int = 50_000_000
    divisible: bool = True
    validity_minutes: int = 60
    full_activation_minutes: int = 12  # 12.5 in the European mFRR; whole minutes here
    capacity_price: int = 0  # ticks per MWh of capacity held (W x validity); 0: energy-only product
    penalty_price: int | None = None  # ticks per Wh short; None: the bid's activation price

    def __post_init__(self) -> None:
        if self.granularity_w <= 0 or self.min_bid_w <= 0 or self.max_bid_w < self.min_bid_w:
            raise ValueError("product rules need 0 < min_bid_w <= max_bid_w and granularity_w > 0")
        if self.min_bid_w % self.granularity_w or self.max_bid_w % self.granularity_w:
            raise ValueError("min_bid_w and max_bid_w must be multiples of granularity_w")
        if self.validity_minutes <= 0:
            raise ValueError("validity_minutes must be positive")


@dataclass(frozen=True, slots=True)
class Portion:
    """The part of one offer that a bid (or the local pool) relies on."""

    offer_id: int
    member: str
    power_w: int
    price: int


@dataclass(frozen=True, slots=True)
class Bid:
    bid_id: int
    product: str
    direction: Direction
    volume_w: int
    price: int
    validity_start: int
    validity_end: int
    divisible: bool
    portions: tuple[Portion, ...]

    @property
    def covered_w(self) -> int:
        return sum(p.power_w for p in self.portions)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["direction"] = self.direction.value
        d["portions"] = [asdict(p) for p in self.portions]
        return d


@dataclass(frozen=True, slots=True)
class NoBid:
    """Why (part of) the pool did not become a bid."""

    reason: str  # BELOW_MINIMUM_BID, NO_OFFERS, ...
    detail: str
    power_w: int = 0


@dataclass(frozen=True, slots=True)
class Instruction:
    """Dispatch: ``member`` changes its power by ``power_w`` in ``direction`` over [start, end)."""

    member: str
    offer_id: int
    bid_id: int | None
    power_w: int
    start: int
    end: int
    reserve: bool = False

    @property
    def energy_wh(self) -> int:
        return energy_wh(self.power_w, self.end - self.start)


@dataclass(slots=True)
class MemberHistory:
    """What the ranking knows about a member (from past events)."""

    invitations: int = 0
    participations: int = 0  # accepted and delivered something
    delivered_wh: int = 0  # over past events
    requested_wh: int = 0  # instructed over past events


@dataclass(frozen=True, slots=True)
class Share:
    member: str
    delivered_wh: int
    weight: int  # the rule's weight (ppm or Wh)
    share: int  # money units of the gross revenue
    penalty: int  # money units deducted
    payout: int = field(default=0)  # share - penalty (negative: the member owes)
