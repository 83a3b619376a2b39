"""Splitting an activated volume back to the members behind a bid."""

from __future__ import annotations

from exchange.flexibility.core.model import Bid, Instruction, Portion, SplitRule


def largest_remainder(total: int, weights: list[int]) -> list[int]:
    """Split the integer ``total`` (>= 0) in proportion to ``weights`` (>= 0, not all 0):
    floors first, then one unit each to the largest remainders (ties: the earlier
    entry). The parts sum to ``total`` exactly."""
    w_sum = sum(weights)
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("largest_remainder needs a non-negative total and weights")
    if w_sum == 0:
        if total:
            raise ValueError("cannot split a non-zero total over zero weights")
        return [0] * len(weights)
    parts = [total * w // w_sum for w in weights]
    left = total - sum(parts)
    order = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % w_sum), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


def split_activation(bid: Bid, activated_w: int, rule: SplitRule) -> list[tuple[Portion, int]]:
    """Power per portion of ``bid`` for an activation of ``activated_w`` (<= its volume).
    Merit order: the cheapest portions in full first. Pro rata: in proportion to each
    portion's power (largest remainder, exact to the watt). The powers sum to
    ``activated_w`` and none exceeds its portion."""
    if not 0 <= activated_w <= bid.volume_w:
        raise ValueError(f"activation {activated_w} W outside 0..{bid.volume_w} W")
    portions = sorted(bid.portions, key=lambda p: (p.price, p.member, p.offer_id))
    if rule is SplitRule.PRO_RATA:
        parts = largest_remainder(activated_w, [p.power_w for p in portions])
    else:
        parts, left = [], activated_w
        for p in portions:
            take = min(left, p.power_w)
            parts.append(take)
            left -= take
    return [(p, w) for p, w in zip(portions, parts) if w > 0]


def instructions_for(bid: Bid, activated_w: int, rule: SplitRule, start: int, end: int) -> list[Instruction]:
    return [Instruction(p.member, p.offer_id, bid.bid_id, w, start, end)
            for p, w in split_activation(bid, activated_w, rule)]
