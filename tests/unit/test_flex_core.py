"""The pure flexibility core: viability, ranking with fairness, pooling against product
rules (property tests), activation split, delivery check and reserve calls, revenue
sharing exact to the unit, the simulated balancing market, one whole event."""

from __future__ import annotations

import json

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.core.units import US_PER_MIN
from exchange.flexibility.core import (
    CHECK_US,
    PPM,
    Activation,
    CoreError,
    DeliveryKind,
    Direction,
    FlexConfig,
    FlexEvent,
    Instruction,
    MemberHistory,
    Offer,
    Participant,
    Policy,
    Portion,
    ProductRules,
    ShareRule,
    SplitRule,
    allocate,
    assess,
    baseline_between,
    build_bids,
    check_interval,
    flexibility_wh,
    largest_remainder,
    merit_order,
    rank,
    share_revenue,
    split_activation,
)
from exchange.flexibility.core.delivery import call_reserves, needs_reserve, pool_shortfall_wh, reserve_need_w
from exchange.flexibility.market import SimulatedBalancingMarket
from exchange.flexibility.protocol import FlexOffer

pytestmark = pytest.mark.unit

H = 60 * US_PER_MIN
T0 = 1_800_000_000 * 1_000_000 // H * H  # an hour boundary
MFRR = ProductRules()


def offer(i, power, price, member=None, energy=None, kind=DeliveryKind.REDUCTION, direction=Direction.UP):
    return Offer(i, member or f"m{i:03d}", T0, T0 + H, direction, power, price, kind, energy)


# ------------------------------------------------------------------ viability


def test_viability_rule():
    assert assess(1000, 1000, 500).reason == "NO_DEFICIT"  # consumption must exceed generation
    assert assess(900, 1000, 500).candidate is False
    v = assess(1500, 1000, 500)  # 1500 - 500 <= 1000
    assert v.candidate and v.reason == "VIABLE" and v.deficit_wh == 500
    v = assess(1501, 1000, 500)
    assert not v.candidate and v.reason == "INSUFFICIENT_FLEXIBILITY"


def test_flexibility_energy_counts_up_offers_with_limits():
    offers = [offer(1, 1000, 0), offer(2, 1000, 0, energy=250), offer(3, 5000, 0, direction=Direction.DOWN)]
    assert flexibility_wh(offers, T0, T0 + H) == 1000 + 250


# ------------------------------------------------------------------ ranking


def test_ranking_prefers_flexible_cheap_and_is_total():
    offers = [offer(1, 100_000, 5000), offer(2, 200_000, 5000), offer(3, 200_000, 9000)]
    r = rank(offers, {})
    assert [x.offer.offer_id for x in r] == [2, 3, 1] or [x.offer.offer_id for x in r][0] == 2
    assert r[0].offer.offer_id == 2
    assert rank(list(reversed(offers)), {}) == r  # order of input does not matter


def test_fairness_newcomer_not_starved():
    # a veteran with a perfect record vs a newcomer with the same offer: the newcomer ranks first
    offers = [offer(1, 100_000, 5000, "veteran"), offer(2, 100_000, 5000, "newcomer")]
    hist = {"veteran": MemberHistory(invitations=10, participations=10, delivered_wh=1_000_000)}
    r = rank(offers, hist)
    assert r[0].offer.member == "newcomer"
    assert r[1].terms["fairness"] < r[0].terms["fairness"] == PPM


def test_reliability_matters_among_equals():
    offers = [offer(1, 100_000, 5000, "a"), offer(2, 100_000, 5000, "b")]
    hist = {"a": MemberHistory(invitations=10, participations=1), "b": MemberHistory(invitations=2, participations=1)}
    assert rank(offers, hist)[0].offer.member == "b"  # same participations, better rate


# ------------------------------------------------------------------ pooling


def test_pooling_example_from_docs():
    # the worked example of docs/flexibility.md
    offers = [offer(1, 400_000, 6000, "A"), offer(2, 350_000, 7000, "B"), offer(3, 300_000, 8000, "C"),
              offer(4, 250_000, 9000, "D"), offer(5, 200_000, 7500, "E", energy=100_000)]
    rules = ProductRules(max_bid_w=1_000_000)
    alloc = allocate(offers, rules, T0, reserve_margin_ppm=100_000)
    # E: 200 kW but only 100 kWh in one hour -> 100 kW usable
    assert [(p.member, p.power_w) for p in merit_order(offers, rules, T0, T0 + H)] == [
        ("A", 400_000), ("B", 350_000), ("E", 100_000), ("C", 300_000), ("D", 250_000)]
    (b1,), no = alloc.bids, alloc.no_bids
    assert b1.volume_w == 1_000_000 and b1.price == 8000
    assert b1.covered_w == 1_111_112  # ceil(1 MW / 0.9)
    assert [(p.member, p.power_w) for p in b1.portions] == [("A", 400_000), ("B", 350_000), ("E", 100_000),
                                                          ("C", 261_112)]
    assert no[0].reason == "BELOW_MINIMUM_BID" and no[0].power_w == 38_888 + 250_000
    assert sum(p.power_w for p in alloc.spare) == 288_888


def test_too_little_flexibility_gives_reason():
    alloc = allocate([offer(1, 500_000, 5000), offer(2, 400_000, 5000)], MFRR, T0)
    assert alloc.bids == [] and alloc.no_bids[0].reason == "BELOW_MINIMUM_BID"
    assert "below the minimum bid of 1000000 W" in alloc.no_bids[0].detail
    assert allocate([], MFRR, T0).no_bids[0].reason == "NO_OFFERS"


def test_local_first_vs_external_first():
    offers = [offer(i, 300_000, 5000 + i) for i in range(5)]  # 1.5 MW
    ext = allocate(offers, MFRR, T0, policy=Policy.EXTERNAL_FIRST, local_need_w=400_000)
    assert [b.volume_w for b in ext.bids] == [1_500_000] and ext.local == []
    loc = allocate(offers, MFRR, T0, policy=Policy.LOCAL_FIRST, local_need_w=400_000)
    assert sum(p.power_w for p in loc.local) == 400_000 and [b.volume_w for b in loc.bids] == [1_100_000]
    assert loc.local[0].price == 5000  # the cheapest goes local first
    all_local = allocate(offers, MFRR, T0, policy=Policy.LOCAL_FIRST, local_need_w=2_000_000)
    assert all_local.bids == [] and all_local.no_bids[0].reason == "LOCAL_FIRST_USED_ALL"


rules_st = st.builds(
    lambda gran, kmin, kmax, div: ProductRules(min_bid_w=gran * kmin, granularity_w=gran, max_bid_w=gran * (kmin + kmax),
                                               divisible=div),
    st.sampled_from([1_000, 10_000, 100_000]), st.integers(1, 20), st.integers(0, 30), st.booleans())
offers_st = st.lists(st.tuples(st.integers(1, 3_000_000), st.integers(0, 50_000), st.one_of(st.none(),
                                                                                               st.integers(1, 3_000_000))),
                     max_size=25)


@settings(max_examples=300, deadline=None)
@given(rules_st, offers_st, st.integers(0, 500_000))
def test_pooling_properties(rules, raw, margin):
    offers = [offer(i + 1, p, price, energy=e) for i, (p, price, e) in enumerate(raw)]
    order = merit_order(offers, rules, T0, T0 + H)
    bids, no_bids, rest = build_bids(order, rules, T0, margin)
    total = sum(p.power_w for p in order)
    for b in bids:
        assert b.volume_w >= rules.min_bid_w  # no bid below the minimum
        assert b.volume_w <= rules.max_bid_w
        assert b.volume_w % rules.granularity_w == 0  # granularity respected
        assert b.volume_w * PPM <= b.covered_w * (PPM - margin)  # never more than its offers cover (with margin)
        assert b.price == max(p.price for p in b.portions)
    # every watt of offers is in exactly one bid or the rest; per offer no more than offered
    used: dict[int, int] = {}
    for p in [q for b in bids for q in b.portions] + rest:
        used[p.offer_id] = used.get(p.offer_id, 0) + p.power_w
    assert sum(used.values()) == total
    assert all(used[p.offer_id] == p.power_w for p in order)
    assert sum(b.volume_w for b in bids) <= total
    if not bids:
        assert no_bids


# ------------------------------------------------------------------ activation split


def _bid():
    offers = [offer(1, 500_000, 5000, "A"), offer(2, 300_000, 6000, "B"), offer(3, 333_333, 7000, "C")]
    (b,), _, _ = build_bids(merit_order(offers, MFRR, T0, T0 + H), MFRR, T0, 100_000)
    return b


def test_split_merit_order():
    b = _bid()
    assert b.volume_w == 1_000_000
    assert [(p.member, w) for p, w in split_activation(b, 700_000, SplitRule.MERIT_ORDER)] == [("A", 500_000),
                                                                                           ("B", 200_000)]


@given(st.integers(0, 1_000_000))
def test_split_pro_rata_exact(act):
    b = _bid()
    parts = split_activation(b, act, SplitRule.PRO_RATA)
    assert sum(w for _, w in parts) == act
    assert all(w <= p.power_w for p, w in parts)
    with pytest.raises(ValueError):
        split_activation(b, b.volume_w + 1, SplitRule.PRO_RATA)


@given(st.integers(0, 10**15), st.lists(st.integers(0, 10**9), min_size=1, max_size=30))
def test_largest_remainder_sums_exactly(total, weights):
    if not any(weights):
        weights[0] = 1
    parts = largest_remainder(total, weights)
    assert sum(parts) == total
    w = sum(weights)
    assert all(abs(p * w - total * x) < w for p, x in zip(parts, weights))  # each within one unit of exact


# ------------------------------------------------------------------ delivery check + reserves


def test_baseline_intervals_add_up():
    slots = {T0 + k * 15 * US_PER_MIN: 1001 + k for k in range(4)}  # Wh per quarter hour
    parts = [baseline_between(slots, T0 + k * CHECK_US, T0 + (k + 1) * CHECK_US) for k in range(6)]
    assert sum(parts) == sum(slots.values())
    assert parts[0] == 1001 * 10 // 15


def test_delivery_check_and_reserve_call():
    ins = [Instruction("A", 1, 1, 600_000, T0, T0 + H), Instruction("B", 2, 1, 400_000, T0, T0 + H)]
    base = {"A": {T0 + k * 15 * US_PER_MIN: 300_000 for k in range(4)},
            "B": {T0 + k * 15 * US_PER_MIN: 150_000 for k in range(4)}}
    # A delivers fully (100 kWh less than its 200 kWh baseline in 10 min), B half
    meters = {"A": {T0: 200_000 - 100_000}, "B": {T0: 100_000 - 33_333}}
    recs = check_interval(ins, Direction.UP, base, meters, T0, T0 + CHECK_US)
    a, b = recs
    assert (a.required_wh, a.delivered_wh, a.shortfall_wh) == (100_000, 100_000, 0)
    assert (b.required_wh, b.delivered_wh, b.shortfall_wh) == (66_666, 33_333, 33_333)
    assert pool_shortfall_wh(recs) == 33_333 and needs_reserve(recs, 50_000)
    need = reserve_need_w(33_333, CHECK_US)
    assert need == 199_998
    calls, left, missing = call_reserves(need, [Portion(7, "R", 150_000, 9000), Portion(8, "S", 100_000, 8000)],
                                         T0 + CHECK_US, T0 + H)
    assert [(c.member, c.power_w, c.reserve) for c in calls] == [("S", 100_000, True), ("R", 99_998, True)]
    assert missing == 0 and left == [Portion(7, "R", 50_002, 9000)]
    # a missing reading means: nothing delivered
    rec, = check_interval(ins[:1], Direction.UP, base, {}, T0, T0 + CHECK_US)
    assert rec.delivered_wh == 0 and rec.metered_wh is None


# ------------------------------------------------------------------ sharing


@given(st.integers(0, 10**14), st.integers(0, 10**12),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(-1000, 10**6), st.integers(0, 3 * PPM)), min_size=1,
                max_size=20),
       st.sampled_from(list(ShareRule)))
def test_sharing_sums_exactly(gross, penalty, raw, rule):
    parts = [Participant(f"m{i:02d}", req, dlv, w) for i, (req, dlv, w) in enumerate(raw)]
    shares = share_revenue(gross, penalty, parts, rule)
    if any(s.weight for s in shares):
        assert sum(s.share for s in shares) == gross
    assert sum(s.penalty for s in shares) == penalty
    assert all(s.payout == s.share - s.penalty for s in shares)


def test_sharing_rules():
    parts = [Participant("a", 100, 100, PPM), Participant("b", 100, 50, 2 * PPM), Participant("c", 100, 0, PPM)]
    eq = share_revenue(1001, 0, parts, ShareRule.EQUAL)
    assert [s.share for s in eq] == [501, 500, 0]  # c delivered nothing
    pr = share_revenue(1000, 0, parts, ShareRule.PRO_RATA_DELIVERED)
    assert [s.share for s in pr] == [667, 333, 0]
    wt = share_revenue(1000, 0, parts, ShareRule.WEIGHTED)
    assert [s.share for s in wt] == [500, 500, 0]
    pen = share_revenue(1000, 300, parts, ShareRule.PRO_RATA_DELIVERED)
    assert [s.penalty for s in pen] == [0, 100, 200] and [s.payout for s in pen] == [667, 233, -200]


# ------------------------------------------------------------------ simulated market


async def test_simulated_market_reproducible_and_gated():
    b = _bid()
    runs = []
    for _ in range(2):
        m = SimulatedBalancingMarket(seed=7, activation_ppm=PPM)
        assert (await m.submit_bids([b], m.gate_us(T0)))[0].accepted
        runs.append(await m.activations(T0, m.gate_us(T0)))
    assert runs[0] == runs[1] and runs[0][0].price >= b.price
    a = runs[0][0]
    assert MFRR.granularity_w <= a.activated_w <= b.volume_w and a.activated_w % 100_000 == 0
    late = SimulatedBalancingMarket(seed=7)
    assert (await late.submit_bids([b], late.gate_us(T0) + 1))[0].reason == "GATE_CLOSED"


# ------------------------------------------------------------------ a whole event


def test_event_lifecycle():
    cfg = FlexConfig(rules=ProductRules(), reserve_margin_ppm=100_000, respond_minutes=5)
    offers = [offer(i, 250_000, 5000 + 100 * i) for i in range(1, 8)]  # 7 x 250 kW
    ev = FlexEvent(1, T0, T0 + H, Direction.UP, "operator", cfg, target_w=1_000_000)
    now = T0 - 2 * H
    invs = ev.start(offers, {}, now, 1, bid_deadline=T0 - 26 * US_PER_MIN)
    # goal 1.3 MW -> 6 invitations of 250 kW
    assert len(invs) == 6
    new, _ = ev.respond(invs[0].invitation_id, invs[0].member, False, now)  # a decline invites the next
    assert len(new) == 1 and new[0].member == "m007"
    with pytest.raises(CoreError) as e:
        ev.respond(invs[1].invitation_id, "someone else", True, now)
    assert e.value.code == "UNKNOWN_INVITATION"
    for inv in invs[1:] + new:
        ev.respond(inv.invitation_id, inv.member, True, now)
    with pytest.raises(CoreError):
        ev.respond(new[0].invitation_id, new[0].member, True, now)
    alloc = ev.build(first_bid_id=1)
    assert [b.volume_w for b in alloc.bids] == [1_300_000]  # 1.5 MW x 0.9 -> 1.35 -> 1.3 MW
    ev.bids_submitted({1: (True, "")})
    ins = ev.activate([Activation(1, 1_000_000, 9000, T0, T0 + H)])
    assert sum(i.power_w for i in ins) == 1_000_000 and ev.phase == "delivering"
    assert sum(p.power_w for p in ev.reserve) == 500_000
    base = {i.member: {T0 + k * 15 * US_PER_MIN: 500_000 for k in range(4)} for i in ins}
    meters = {i.member: {T0 + k * CHECK_US: 333_333 - energy(i.power_w) // (2 if i.member == "m002" else 1)
                         for k in range(6)} for i in ins}
    recs, calls, _ = ev.check(base, meters, T0 + CHECK_US)
    assert calls and all(c.reserve for c in calls)  # m002 delivered half: reserve called
    while ev.next_check() is not None:
        ev.check(base, meters, ev.next_check())
    shares = ev.settle()
    assert ev.gross == 1_000_000 * 9000
    assert sum(s.payout for s in shares) == ev.gross - ev.penalty
    assert ev.penalty > 0 and ev.phase == "settled"


def energy(power_w):
    return power_w * CHECK_US // H


def test_an_offer_is_bounded_so_that_an_events_money_fits_in_64_bits():
    """24 offers of 1 GW at 10^9 ticks settled an event beyond a bigint: never stored, shown
    settled. The offer's power and price are bounded now; at those bounds a day-long offer is
    worth at most 2.4e16 money units, so hundreds of them still fit."""
    base = {"type": "flex_offer", "id": 1, "period_start": "2026-11-27T11:00:00Z", "period_minutes": 1440,
            "direction": "up", "power_w": 10**8, "price": 10**7}
    offer = FlexOffer.model_validate_json(json.dumps(base))  # as a frame arrives
    assert offer.power_w * 24 * offer.price == 24 * 10**15 and 384 * 24 * 10**15 < 2**63
    for field, value in (("power_w", 10**8 + 1), ("price", 10**7 + 1)):
        with pytest.raises(pydantic.ValidationError):
            FlexOffer.model_validate_json(json.dumps({**base, field: value}))
