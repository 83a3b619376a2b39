"""Pooling accepted offers into balancing-market bids, and the local/external policy.

The bid-building rule (docs/flexibility.md has a worked example):

1. Usable power of each accepted offer of the product's direction over the
   bid's validity window: its power, capped by its energy limit
   (``energy_wh x 60 / validity minutes``); offers that do not cover the
   whole window are left out.
2. Merit order: price ascending, then member address, then offer id.
3. Reserve margin ``m`` (ppm): a bid of volume ``V`` must be backed by at least
   ``V / (1 - m)`` of offered power, so the pool keeps ``m`` of every bid as
   reserve for shortfalls. One full bid needs ``R = ceil(max_bid x 1e6 / (1e6 - m))``
   of offers.
4. Walk the merit order, filling a bid with offer power (an offer may be split
   across two bids) until it holds ``R``; its volume is then the product's
   maximum. The last, partly filled bid gets
   ``V = floor_to_granularity(backing x (1e6 - m) / 1e6)``; if ``V`` is below
   the product's minimum, no bid is made from that rest (``BELOW_MINIMUM_BID``,
   with the power it held) and it stays available locally / as reserve.
5. Bid price = the highest price among the offers it holds (the marginal
   offer), so every member in an activated bid is paid at least its ask.

Therefore every bid is a multiple of the granularity, between the minimum and
the maximum, never larger than the offer power behind it, and the sum of the
bids never exceeds the accepted offers' power.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from exchange.core.units import US_PER_MIN
from exchange.flexibility.core.model import PPM, Bid, NoBid, Offer, Policy, Portion, ProductRules, ceil_div

BELOW_MINIMUM_BID = "BELOW_MINIMUM_BID"
NO_OFFERS = "NO_OFFERS"
LOCAL_FIRST_USED_ALL = "LOCAL_FIRST_USED_ALL"


def merit_order(offers: Iterable[Offer], rules: ProductRules, start: int, end: int) -> list[Portion]:
    out = []
    for o in offers:
        if o.direction is not rules.direction:
            continue
        p = o.usable_power_w(start, end)
        if p > 0:
            out.append(Portion(o.offer_id, o.member, p, o.price))
    out.sort(key=lambda p: (p.price, p.member, p.offer_id))
    return out


def _merge(portions: list[Portion]) -> tuple[Portion, ...]:
    """One portion per offer (an offer split by a bid boundary appears once per bid)."""
    acc: dict[int, Portion] = {}
    for p in portions:
        q = acc.get(p.offer_id)
        acc[p.offer_id] = p if q is None else Portion(p.offer_id, p.member, q.power_w + p.power_w, p.price)
    return tuple(acc.values())


def build_bids(portions: list[Portion], rules: ProductRules, validity_start: int, reserve_margin_ppm: int = 0,
               first_bid_id: int = 1) -> tuple[list[Bid], list[NoBid], list[Portion]]:
    """Bids from ``portions`` (already in merit order). Returns the bids, the reasons
    for what was not bid, and the portions left out of every bid."""
    if not 0 <= reserve_margin_ppm < PPM:
        raise ValueError("reserve_margin_ppm must be in [0, 1e6)")
    validity_end = validity_start + rules.validity_minutes * US_PER_MIN
    if not portions:
        return [], [NoBid(NO_OFFERS, "no accepted offers of this direction cover the validity period")], []
    keep = PPM - reserve_margin_ppm
    full = ceil_div(rules.max_bid_w * PPM, keep)
    gran = rules.granularity_w
    bids: list[Bid] = []
    cur: list[Portion] = []
    cur_w = 0

    def close(volume: int) -> None:
        nonlocal cur, cur_w
        held = _merge(cur)
        bids.append(Bid(first_bid_id + len(bids), rules.name, rules.direction, volume, max(p.price for p in held),
                        validity_start, validity_end, rules.divisible, held))
        cur, cur_w = [], 0

    for p in portions:
        left = p.power_w
        while left > 0:
            take = min(left, full - cur_w)
            cur.append(Portion(p.offer_id, p.member, take, p.price))
            cur_w += take
            left -= take
            if cur_w == full:
                close(rules.max_bid_w)
    no_bids: list[NoBid] = []
    rest: list[Portion] = []
    if cur:
        volume = cur_w * keep // PPM // gran * gran
        if volume >= rules.min_bid_w:
            close(min(volume, rules.max_bid_w))
        else:
            no_bids.append(NoBid(BELOW_MINIMUM_BID,
                                 f"{cur_w} W of offers (after a {reserve_margin_ppm} ppm reserve margin: {volume} W "
                                 f"in steps of {gran} W) is below the minimum bid of {rules.min_bid_w} W", cur_w))
            rest = list(_merge(cur))
    return bids, no_bids, rest


@dataclass(slots=True)
class Allocation:
    bids: list[Bid] = field(default_factory=list)
    no_bids: list[NoBid] = field(default_factory=list)
    local: list[Portion] = field(default_factory=list)  # used for the community's own deficit
    spare: list[Portion] = field(default_factory=list)  # in no bid and not used locally: reserve

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        return {"bids": [b.to_dict() for b in self.bids], "no_bids": [asdict(n) for n in self.no_bids],
                "local": [asdict(p) for p in self.local], "spare": [asdict(p) for p in self.spare]}


def _take(portions: list[Portion], need_w: int) -> tuple[list[Portion], list[Portion]]:
    """Split the merit-order ``portions`` into the first ``need_w`` and the rest."""
    taken, rest = [], []
    for p in portions:
        if need_w <= 0:
            rest.append(p)
        elif p.power_w <= need_w:
            taken.append(p)
            need_w -= p.power_w
        else:
            taken.append(Portion(p.offer_id, p.member, need_w, p.price))
            rest.append(Portion(p.offer_id, p.member, p.power_w - need_w, p.price))
            need_w = 0
    return taken, rest


def allocate(offers: list[Offer], rules: ProductRules, validity_start: int, *, policy: Policy = Policy.EXTERNAL_FIRST,
             local_need_w: int = 0, reserve_margin_ppm: int = 0, first_bid_id: int = 1) -> Allocation:
    """Local first: the cheapest ``local_need_w`` of flexibility covers the community's
    own deficit, only the rest is pooled into bids. External first: bids first, the
    community's deficit gets what could not be bid."""
    end = validity_start + rules.validity_minutes * US_PER_MIN
    order = merit_order(offers, rules, validity_start, end)
    if policy is Policy.LOCAL_FIRST:
        local, rest = _take(order, local_need_w)
        bids, no_bids, spare = build_bids(rest, rules, validity_start, reserve_margin_ppm, first_bid_id)
        if not rest and local:
            no_bids = [NoBid(LOCAL_FIRST_USED_ALL, f"local first: the community's deficit of {local_need_w} W used "
                                                   f"all {sum(p.power_w for p in local)} W of accepted flexibility")]
        return Allocation(bids, no_bids, local, spare)
    bids, no_bids, rest = build_bids(order, rules, validity_start, reserve_margin_ppm, first_bid_id)
    local, spare = _take(rest, local_need_w)
    return Allocation(bids, no_bids, local, spare)
