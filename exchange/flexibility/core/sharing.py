"""Flexibility settlement: revenue, penalties and the members' shares, exact to the unit.

* Gross revenue (money units, 1e-8 EUR) = for every activated bid, activated
  energy (Wh) x activation price (ticks) + for every accepted bid of a product
  with a capacity payment, bid volume x validity (Wh of capacity) x capacity price.
* Penalty = the pool's shortfall (Wh, summed over the 10-minute checks) x the
  product's penalty price (or the activation price when the product has none).
* Shares of the gross revenue by rule, largest remainder so they sum to it exactly:
  ``equal`` (every member that delivered something), ``pro_rata_delivered``
  (delivered Wh), ``weighted`` (delivered Wh x the member's weight in ppm; e.g.
  1 500 000 for a vulnerable household). If nobody delivered, nobody gets a share.
* Penalties are charged to the members that fell short of their instructions, in
  proportion to their shortfall (largest remainder, sums to the penalty exactly).
* Payout = share - penalty (negative: the member owes). The payouts sum to
  gross revenue - penalty exactly; the community keeps what no share took.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.flexibility.core.activation import largest_remainder
from exchange.flexibility.core.model import PPM, Share, ShareRule


@dataclass(frozen=True, slots=True)
class Participant:
    member: str
    required_wh: int
    delivered_wh: int  # may be negative (moved the wrong way)
    weight_ppm: int = PPM


def share_revenue(gross: int, penalty: int, participants: list[Participant], rule: ShareRule) -> list[Share]:
    parts = sorted(participants, key=lambda p: p.member)
    if rule is ShareRule.EQUAL:
        weights = [1 if p.delivered_wh > 0 else 0 for p in parts]
    elif rule is ShareRule.PRO_RATA_DELIVERED:
        weights = [max(0, p.delivered_wh) for p in parts]
    else:
        weights = [max(0, p.delivered_wh) * p.weight_ppm for p in parts]
    shares = largest_remainder(gross, weights) if any(weights) else [0] * len(parts)
    shortfalls = [max(0, p.required_wh - max(0, p.delivered_wh)) for p in parts]
    if penalty and any(shortfalls):
        penalties = largest_remainder(penalty, shortfalls)
    elif penalty:
        penalties = largest_remainder(penalty, [1] * len(parts)) if parts else []
    else:
        penalties = [0] * len(parts)
    return [Share(p.member, p.delivered_wh, w, s, pen, s - pen)
            for p, w, s, pen in zip(parts, weights, shares, penalties)]
