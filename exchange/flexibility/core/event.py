"""One demand-response event, as a pure state machine (time is an input).

Phases: ``inviting`` -> ``bidding`` (bids built, handed to the market) ->
``delivering`` (activated) or ``not_activated`` / ``no_bid`` -> ``settled``.
The service (exchange/flexibility/service.py) calls the phase methods when
their time has come, feeds the market's answers in, and performs the actions
they return (messages to members, rows to store). Same inputs, same outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from exchange.core.units import US_PER_MIN
from exchange.flexibility.core.activation import instructions_for
from exchange.flexibility.core.delivery import (
    DeliveryRecord,
    call_reserves,
    check_interval,
    needs_reserve,
    pool_shortfall_wh,
    reserve_need_w,
)
from exchange.flexibility.core.model import (
    CHECK_US,
    PPM,
    Bid,
    Direction,
    Instruction,
    MemberHistory,
    Offer,
    Policy,
    Portion,
    ProductRules,
    Share,
    ShareRule,
    SplitRule,
    ceil_div,
    energy_wh,
)
from exchange.flexibility.core.pooling import Allocation, allocate
from exchange.flexibility.core.ranking import Ranked, RankingWeights, rank
from exchange.flexibility.core.sharing import Participant, share_revenue


class CoreError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class FlexConfig:
    rules: ProductRules = ProductRules()
    policy: Policy = Policy.EXTERNAL_FIRST
    split: SplitRule = SplitRule.MERIT_ORDER
    share_rule: ShareRule = ShareRule.PRO_RATA_DELIVERED
    reserve_margin_ppm: int = 100_000  # 10 % of every bid held back as reserve
    invite_cover_ppm: int = 1_300_000  # invite until offers cover 130 % of the target
    respond_minutes: int = 10
    tolerance_ppm: int = 50_000  # pool shortfall above 5 % of the required energy calls reserves
    ranking: RankingWeights = RankingWeights()
    weights_ppm: tuple[tuple[str, int], ...] = ()  # weighted sharing: (member, weight ppm); default 1e6


@dataclass(slots=True)
class Invitation:
    invitation_id: int
    member: str
    offer_id: int
    rank: int
    score: int
    invited_at: int
    respond_by: int
    reserve: bool = False
    status: str = "invited"  # invited | accepted | declined | expired

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Activation:
    bid_id: int
    activated_w: int
    price: int
    start: int
    end: int


@dataclass(slots=True)
class FlexEvent:
    event_id: int
    period_start: int
    period_end: int
    direction: Direction
    origin: str  # auto | operator
    config: FlexConfig
    target_w: int | None  # None: as much as offered
    local_need_w: int = 0
    phase: str = "inviting"
    reason: str = ""
    ranked: list[Ranked] = field(default_factory=list)
    offers: dict[int, Offer] = field(default_factory=dict)
    invitations: dict[int, Invitation] = field(default_factory=dict)
    next_rank: int = 0
    allocation: Allocation | None = None
    bid_status: dict[int, str] = field(default_factory=dict)
    activations: list[Activation] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)
    reserve: list[Portion] = field(default_factory=list)
    delivery: list[DeliveryRecord] = field(default_factory=list)
    checked_until: int = 0
    shares: list[Share] = field(default_factory=list)
    gross: int = 0
    penalty: int = 0
    shortfall_wh: int = 0
    missing_w: int = 0  # reserve power still missing after the reserve pool was used
    bid_deadline: int = 0
    next_invitation_id: int = 1

    # ------------------------------------------------------------------ inviting
    def start(self, offers: list[Offer], history: dict[str, MemberHistory], now: int, first_invitation_id: int,
              bid_deadline: int) -> list[Invitation]:
        eligible = [o for o in offers if o.direction is self.direction
                    and o.usable_power_w(self.period_start, self.period_end) > 0]
        self.offers = {o.offer_id: o for o in eligible}
        self.ranked = rank(eligible, history, self.config.ranking)
        self.checked_until = self.period_start
        self.bid_deadline = bid_deadline
        self.next_invitation_id = first_invitation_id
        if not self.ranked:
            self.phase, self.reason = "no_bid", "NO_OFFERS"
        return self._invite_more(now)

    def _goal_w(self) -> int | None:
        if self.target_w is None:
            return None
        return ceil_div(self.target_w * self.config.invite_cover_ppm, PPM)

    def _power(self, offer_id: int) -> int:
        return self.offers[offer_id].usable_power_w(self.period_start, self.period_end)

    def _invite_more(self, now: int, reserve: bool = False) -> list[Invitation]:
        goal = self._goal_w()
        live = sum(self._power(i.offer_id) for i in self.invitations.values() if i.status in ("invited", "accepted"))
        out = []
        while self.next_rank < len(self.ranked) and (goal is None or live < goal or reserve):
            r = self.ranked[self.next_rank]
            self.next_rank += 1
            if any(i.member == r.offer.member and i.status in ("invited", "accepted") for i in self.invitations.values()):
                continue  # one live invitation per member
            inv = Invitation(self.next_invitation_id, r.offer.member, r.offer.offer_id, self.next_rank, r.score, now,
                             min(now + self.config.respond_minutes * US_PER_MIN, max(now, self.bid_deadline))
                             if not reserve else now + self.config.respond_minutes * US_PER_MIN, reserve)
            self.next_invitation_id += 1
            self.invitations[inv.invitation_id] = inv
            out.append(inv)
            live += self._power(r.offer.offer_id)
            if reserve:
                break
        return out

    def respond(self, invitation_id: int, member: str, accept: bool, now: int
                ) -> tuple[list[Invitation], list[Instruction]]:
        """A member's answer. A decline invites the next member in rank order; an accepted
        reserve invitation during delivery is dispatched at once for the missing power."""
        inv = self.invitations.get(invitation_id)
        if inv is None or inv.member != member:
            raise CoreError("UNKNOWN_INVITATION", f"no invitation {invitation_id} for you")
        if inv.status != "invited":
            raise CoreError("ALREADY_ANSWERED", f"invitation {invitation_id} is {inv.status}")
        if now > inv.respond_by:
            inv.status = "expired"
            raise CoreError("INVITATION_EXPIRED", f"invitation {invitation_id} expired")
        if not accept:
            inv.status = "declined"
            if self.phase == "inviting" or (inv.reserve and self.phase == "delivering" and self.missing_w > 0):
                return self._invite_more(now, reserve=inv.reserve), []
            return [], []
        inv.status = "accepted"
        if inv.reserve and self.phase == "delivering" and now < self.period_end and self.missing_w > 0:
            mine = [Portion(inv.offer_id, inv.member, self._power(inv.offer_id), self.offers[inv.offer_id].price)]
            calls, left, self.missing_w = call_reserves(self.missing_w, mine, now, self.period_end)
            self.reserve += left
            self.instructions.extend(calls)
            return [], calls
        return [], []

    def expire(self, now: int) -> list[Invitation]:
        out = []
        for inv in list(self.invitations.values()):
            if inv.status == "invited" and now > inv.respond_by:
                inv.status = "expired"
                if self.phase == "inviting" and now < self.bid_deadline:
                    out += self._invite_more(now)
                elif inv.reserve and self.phase == "delivering" and self.missing_w > 0:
                    out += self._invite_more(now, reserve=True)
        return out

    def all_answered(self) -> bool:
        return all(i.status != "invited" for i in self.invitations.values())

    # ------------------------------------------------------------------ bidding
    def accepted_offers(self) -> list[Offer]:
        return [self.offers[i.offer_id] for i in self.invitations.values() if i.status == "accepted"]

    def build(self, first_bid_id: int) -> Allocation:
        """Pool the accepted offers into bids (pending invitations lapse)."""
        for inv in self.invitations.values():
            if inv.status == "invited" and not inv.reserve:
                inv.status = "expired"
        alloc = allocate(self.accepted_offers(), self.config.rules, self.period_start, policy=self.config.policy,
                         local_need_w=self.local_need_w, reserve_margin_ppm=self.config.reserve_margin_ppm,
                         first_bid_id=first_bid_id)
        self.allocation = alloc
        self.bid_status = {b.bid_id: "built" for b in alloc.bids}
        if alloc.bids:
            self.phase = "bidding"
        else:
            self.phase = "no_bid"
            self.reason = "; ".join(f"{n.reason}: {n.detail}" for n in alloc.no_bids) or "NO_BID"
        return alloc

    def bids_submitted(self, results: dict[int, tuple[bool, str]]) -> None:
        for bid_id, (ok, why) in results.items():
            self.bid_status[bid_id] = "submitted" if ok else f"rejected: {why}"
        if not any(s == "submitted" for s in self.bid_status.values()):
            self.phase, self.reason = "no_bid", "the balancing market refused every bid"

    # ------------------------------------------------------------------ activation
    def bid(self, bid_id: int) -> Bid:
        assert self.allocation is not None
        return next(b for b in self.allocation.bids if b.bid_id == bid_id)

    def activate(self, activations: list[Activation]) -> list[Instruction]:
        """Split each activation over its bid's offers; the rest of the accepted power
        (margins, unactivated portions, what was not bid) becomes the reserve."""
        assert self.allocation is not None
        out: list[Instruction] = []
        used: dict[int, int] = {}
        for a in activations:
            b = self.bid(a.bid_id)
            if self.bid_status.get(a.bid_id) != "submitted" or not 0 < a.activated_w <= b.volume_w:
                raise CoreError("INVALID_ACTIVATION", f"bid {a.bid_id}: cannot activate {a.activated_w} W")
            if not b.divisible and a.activated_w != b.volume_w:
                raise CoreError("INVALID_ACTIVATION", f"bid {a.bid_id} is indivisible")
            self.bid_status[a.bid_id] = "activated"
            self.activations.append(a)
            for ins in instructions_for(b, a.activated_w, self.config.split, a.start, a.end):
                out.append(ins)
                used[ins.offer_id] = used.get(ins.offer_id, 0) + ins.power_w
        for bid_id, s in self.bid_status.items():
            if s == "submitted":
                self.bid_status[bid_id] = "not_activated"
        self.instructions.extend(out)
        reserve = []
        for o in self.accepted_offers():
            left = self._power(o.offer_id) - used.get(o.offer_id, 0)
            if left > 0:
                reserve.append(Portion(o.offer_id, o.member, left, o.price))
        self.reserve = reserve
        if out:
            self.phase = "delivering"
        else:
            self.phase, self.reason = "not_activated", "the balancing market activated none of the bids"
        return out

    # ------------------------------------------------------------------ delivery
    def next_check(self) -> int | None:
        """End of the next 10-minute interval to check (None when all are checked)."""
        if self.phase != "delivering" or self.checked_until >= self.period_end:
            return None
        return min(self.checked_until + CHECK_US, self.period_end)

    def check(self, baselines: dict[str, dict[int, int]], meters: dict[str, dict[int, int]], now: int
              ) -> tuple[list[DeliveryRecord], list[Instruction], list[Invitation]]:
        t0 = self.checked_until
        t1 = self.next_check()
        if t1 is None:
            raise CoreError("NOTHING_TO_CHECK", "no interval left to check")
        recs = check_interval(self.instructions, self.direction, baselines, meters, t0, t1)
        self.delivery.extend(recs)
        self.checked_until = t1
        self.shortfall_wh += pool_shortfall_wh(recs)
        calls: list[Instruction] = []
        invites: list[Invitation] = []
        if t1 < self.period_end and needs_reserve(recs, self.config.tolerance_ppm):
            need = reserve_need_w(pool_shortfall_wh(recs), t1 - t0)
            start = max(now, t1)
            calls, self.reserve, self.missing_w = call_reserves(need, self.reserve, start, self.period_end)
            self.instructions.extend(calls)
            if self.missing_w > 0:
                invites = self._invite_more(now, reserve=True)
        return recs, calls, invites

    # ------------------------------------------------------------------ settlement
    def revenue(self) -> int:
        rules = self.config.rules
        gross = sum(energy_wh(a.activated_w, a.end - a.start) * a.price for a in self.activations)
        if rules.capacity_price and self.allocation is not None:
            for b in self.allocation.bids:
                if self.bid_status.get(b.bid_id) in ("activated", "not_activated"):
                    gross += energy_wh(b.volume_w, b.validity_end - b.validity_start) * rules.capacity_price
        return gross

    def penalty_price(self) -> int:
        if self.config.rules.penalty_price is not None:
            return self.config.rules.penalty_price
        return max((a.price for a in self.activations), default=0)

    def settle(self) -> list[Share]:
        self.gross = self.revenue()
        self.penalty = self.shortfall_wh * self.penalty_price()
        weights = dict(self.config.weights_ppm)
        members = sorted({i.member for i in self.instructions})
        parts = [Participant(m, sum(r.required_wh for r in self.delivery if r.member == m),
                             sum(r.delivered_wh for r in self.delivery if r.member == m), weights.get(m, PPM))
                 for m in members]
        self.shares = share_revenue(self.gross, self.penalty, parts, self.config.share_rule)
        self.phase = "settled"
        return self.shares
