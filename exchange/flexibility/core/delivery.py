"""Delivery check against baselines, every 10 minutes during an event.

Baselines and meter readings are net consumption (consumption - generation, Wh).
A member's delivered energy in an interval, for an ``up`` instruction, is
``baseline - metered`` (it consumed less, or produced more, than forecast); for
``down`` it is ``metered - baseline``. Baselines are per 15-minute slot; the
baseline of an interval is the difference of the cumulative baseline at its
ends (linear inside a slot, floored), so the intervals of an event add up to
the slots exactly. A missing meter reading counts as the baseline itself
(nothing delivered).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from exchange.flexibility.core.model import PPM, SLOT_US, Direction, Instruction, Portion, ceil_div, energy_wh


def cumulative_baseline(slots: dict[int, int], t: int) -> int:
    """Baseline energy from the earliest slot up to instant ``t``."""
    total = 0
    for s, wh in slots.items():
        if t >= s + SLOT_US:
            total += wh
        elif t > s:
            total += wh * (t - s) // SLOT_US
    return total


def baseline_between(slots: dict[int, int], t0: int, t1: int) -> int:
    return cumulative_baseline(slots, t1) - cumulative_baseline(slots, t0)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    member: str
    interval_start: int
    interval_end: int
    required_wh: int
    baseline_wh: int
    metered_wh: int | None
    delivered_wh: int

    @property
    def shortfall_wh(self) -> int:
        return max(0, self.required_wh - self.delivered_wh)

    @property
    def over_wh(self) -> int:
        return max(0, self.delivered_wh - self.required_wh)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shortfall_wh": self.shortfall_wh, "over_wh": self.over_wh}


def required_wh(instructions: list[Instruction], member: str, t0: int, t1: int) -> int:
    total = 0
    for i in instructions:
        if i.member == member:
            a, b = max(i.start, t0), min(i.end, t1)
            if b > a:
                total += energy_wh(i.power_w, b - a)
    return total


def check_interval(instructions: list[Instruction], direction: Direction, baselines: dict[str, dict[int, int]],
                   meters: dict[str, dict[int, int]], t0: int, t1: int) -> list[DeliveryRecord]:
    """One record per member instructed during [t0, t1). ``meters[member][t0]`` is the
    member's metered net consumption over the interval starting at ``t0``."""
    out = []
    for member in sorted({i.member for i in instructions if i.start < t1 and i.end > t0}):
        req = required_wh(instructions, member, t0, t1)
        base = baseline_between(baselines.get(member, {}), t0, t1)
        metered = meters.get(member, {}).get(t0)
        m = base if metered is None else metered
        delivered = base - m if direction is Direction.UP else m - base
        out.append(DeliveryRecord(member, t0, t1, req, base, metered, delivered))
    return out


def pool_shortfall_wh(records: list[DeliveryRecord]) -> int:
    """The pool's shortfall in an interval: required minus delivered over all members
    (one member's over-delivery covers another's shortfall), at least 0."""
    return max(0, sum(r.required_wh for r in records) - sum(r.delivered_wh for r in records))


def reserve_need_w(shortfall_wh: int, interval_us: int) -> int:
    """Power that would have closed ``shortfall_wh`` over an interval: what reserves must add."""
    return ceil_div(shortfall_wh * 3_600_000_000, interval_us)


def needs_reserve(records: list[DeliveryRecord], tolerance_ppm: int) -> bool:
    req = sum(r.required_wh for r in records)
    return req > 0 and pool_shortfall_wh(records) * PPM > req * tolerance_ppm


def call_reserves(need_w: int, reserve: list[Portion], start: int, end: int) -> tuple[list[Instruction], list[Portion], int]:
    """Instruct reserve portions (merit order) for ``need_w`` over [start, end). Returns the
    reserve instructions, what is left of the reserve, and the power still missing."""
    out, left = [], []
    for p in sorted(reserve, key=lambda p: (p.price, p.member, p.offer_id)):
        if need_w <= 0:
            left.append(p)
            continue
        take = min(need_w, p.power_w)
        out.append(Instruction(p.member, p.offer_id, None, take, start, end, reserve=True))
        need_w -= take
        if p.power_w > take:
            left.append(Portion(p.offer_id, p.member, p.power_w - take, p.price))
    return out, left, need_w
