"""Ranking members for invitations, with fairness.

Every term is an integer in ppm (0 ... 1 000 000); the score is their weighted
sum (weights in ``RankingWeights``, integers). For a member ``m`` with an offer
of power ``P`` (W) and price ``p`` (ticks) in the period, among the eligible
members (``P_max``, ``p_min``/``p_max`` over them):

* ``flex``        = P / P_max: how much it offers;
* ``reliability`` = (participations + 1) / (invitations + 2) x flex: its
  participation rate (a Laplace prior, so a newcomer counts as 1/2, not 0),
  scaled by what it offers (participation rate vs flexibility);
* ``effort``      = E / (E + D): the energy E it offers now against the energy
  D it already delivered in past events (reduction flexibility vs effort):
  members who already made a large effort are asked less; for a ``shift``
  offer D counts half (shifting costs less comfort than curtailing);
* ``cost``        = (p_max - p) / (p_max - p_min): cheaper is better (cost of
  shifting vs effort); 1 when all prices are equal;
* ``fairness``    = 1 - participations / (max participations + 1): members
  who took part less often are moved up; with no history at all it is 1, so
  a newcomer is never starved by well-established members.

Ties break on the member address (then the offer id), so the order is total
and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange.flexibility.core.model import PPM, DeliveryKind, MemberHistory, Offer


@dataclass(frozen=True, slots=True)
class RankingWeights:
    flex: int = 3
    reliability: int = 2
    effort: int = 1
    cost: int = 2
    fairness: int = 3


@dataclass(frozen=True, slots=True)
class Ranked:
    offer: Offer
    score: int
    terms: dict[str, int]  # each term of the score, ppm

    def to_dict(self) -> dict[str, str | int]:
        return {"member": self.offer.member, "offer_id": self.offer.offer_id, "score": self.score, **self.terms}


def rank(offers: list[Offer], history: dict[str, MemberHistory], weights: RankingWeights = RankingWeights()) -> list[Ranked]:
    """Offers (one period, one direction) best first."""
    if not offers:
        return []
    p_max = max(o.power_w for o in offers) or 1
    lo, hi = min(o.price for o in offers), max(o.price for o in offers)
    max_part = max((history.get(o.member, MemberHistory()).participations for o in offers), default=0)
    out = []
    for o in offers:
        h = history.get(o.member, MemberHistory())
        flex = o.power_w * PPM // p_max
        reliability = (h.participations + 1) * flex // (h.invitations + 2)
        e = o.energy()
        d = h.delivered_wh // 2 if o.kind is DeliveryKind.SHIFT else h.delivered_wh
        effort = e * PPM // (e + d) if e + d > 0 else PPM
        cost = PPM if hi == lo else (hi - o.price) * PPM // (hi - lo)
        fairness = PPM - h.participations * PPM // (max_part + 1)
        terms = {"flex": flex, "reliability": reliability, "effort": effort, "cost": cost, "fairness": fairness}
        score = (weights.flex * flex + weights.reliability * reliability + weights.effort * effort
                 + weights.cost * cost + weights.fairness * fairness)
        out.append(Ranked(o, score, terms))
    out.sort(key=lambda r: (-r.score, r.offer.member, r.offer.offer_id))
    return out
