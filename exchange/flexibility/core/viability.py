"""Event viability: is a delivery period worth a demand-response event?

The seeds' rule, over the community (sums over members, Wh in the period):
a period is a candidate when ``consumption > generation`` (the community
imports) and ``consumption - flexibility <= generation`` (its offered upward
flexibility can close the gap). ``flexibility`` is the energy the members'
``up`` offers can deliver in the period.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.flexibility.core.model import Direction, Offer

VIABLE = "VIABLE"
NO_DEFICIT = "NO_DEFICIT"
INSUFFICIENT_FLEXIBILITY = "INSUFFICIENT_FLEXIBILITY"


@dataclass(frozen=True, slots=True)
class Viability:
    candidate: bool
    reason: str
    consumption_wh: int
    generation_wh: int
    flexibility_wh: int

    @property
    def deficit_wh(self) -> int:
        return max(0, self.consumption_wh - self.generation_wh)

    def to_dict(self) -> dict[str, bool | str | int]:
        return {"candidate": self.candidate, "reason": self.reason, "consumption_wh": self.consumption_wh,
                "generation_wh": self.generation_wh, "flexibility_wh": self.flexibility_wh,
                "deficit_wh": self.deficit_wh}


def flexibility_wh(offers: list[Offer] | tuple[Offer, ...], start: int, end: int) -> int:
    """Upward flexibility energy of ``offers`` inside [start, end)."""
    total = 0
    for o in offers:
        if o.direction is Direction.UP and o.period_start <= start and o.period_end >= end:
            total += min(o.energy(), o.usable_power_w(start, end) * (end - start) // 3_600_000_000)
    return total


def assess(consumption_wh: int, generation_wh: int, flex_wh: int) -> Viability:
    if consumption_wh <= generation_wh:
        return Viability(False, NO_DEFICIT, consumption_wh, generation_wh, flex_wh)
    if consumption_wh - flex_wh > generation_wh:
        return Viability(False, INSUFFICIENT_FLEXIBILITY, consumption_wh, generation_wh, flex_wh)
    return Viability(True, VIABLE, consumption_wh, generation_wh, flex_wh)
