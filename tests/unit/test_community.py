"""Community demo data (demandlib + pvlib, integer Wh) and the community KPIs."""

from __future__ import annotations

import warnings
from datetime import UTC, date, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.community.kpis import (
    Tariffs,
    Trade,
    community_kpis,
    grid_flows,
    member_costs,
    p2p_matrix,
    self_sufficiency,
    trade_from_event,
)
from clients.community.profiles import (
    PPT,
    Battery,
    Location,
    Member,
    community_profiles,
    day_slots,
    div_half_even,
    easter_sunday,
    german_holidays,
    hourly,
    hourly_table,
    make_community,
    member_profile,
    pv_day_mwh_per_kwp,
    slp_day_ppt,
)
from exchange.core.model import TradeEvent

pytestmark = pytest.mark.unit

UTC = UTC
MID = date(2026, 6, 21)


# =========================================================================== profiles


def test_day_slots_are_utc_quarter_hours_with_dst_days():
    s = day_slots(date(2026, 11, 22))
    assert len(s) == 96 and all(x.tzinfo is UTC for x in s)
    assert s[0].isoformat() == "2026-11-21T23:00:00+00:00"
    assert len(day_slots(date(2026, 3, 29))) == 92
    assert len(day_slots(date(2026, 10, 25))) == 100


def test_holidays_are_computed_offline():
    assert easter_sunday(2026) == date(2026, 4, 5)
    assert easter_sunday(2025) == date(2025, 4, 20)
    h = german_holidays(2026)
    assert date(2026, 4, 3) in h and date(2026, 5, 14) in h and date(2026, 10, 3) in h and len(h) == 9


def test_div_half_even():
    assert [div_half_even(n, 2) for n in (1, 3, 5, -1, -3)] == [0, 2, 2, 0, -2]
    assert div_half_even(7, 3) == 2 and div_half_even(-7, 3) == -2


def test_slp_shares_sum_to_the_year():
    """Every slot of every local day of the year is covered once (DST days aside): the
    shares add up to the annual energy within one hour's worth."""
    total = 0
    d = date(2026, 1, 1)
    while d.year == 2026:
        total += sum(slp_day_ppt("h0", d))
        d += timedelta(days=1)
    assert abs(total - PPT) < PPT // 1000
    # holidays count as Sundays: Christmas differs from the Thursday before
    assert slp_day_ppt("g0", date(2026, 12, 25)) != slp_day_ppt("g0", date(2026, 12, 17))
    # demandlib's global warnings.simplefilter("error") does not leak out
    assert not any(f[0] == "error" and f[2] is Warning for f in warnings.filters)


def test_member_profile_integers_scaled_and_deterministic():
    quiet = Member("a", "consumer", "h0", 3650, noise_permille=0, daily_noise_permille=0)
    p = member_profile(quiet, MID)
    assert all(type(x) is int and x >= 0 for x in p.consumption_wh + p.generation_wh)
    assert p.generation_total == 0
    exact = sum(slp_day_ppt("h0", MID)) * 3_650_000 / PPT
    assert abs(p.consumption_total - exact) <= len(p.slots)  # one rounding per slot
    assert 6_000 < p.consumption_total < 14_000  # an average household day is 10 kWh
    noisy = Member("a", "prosumer", "h0", 3650, pv_wp=5000)
    p1, p2 = member_profile(noisy, MID, seed=3), member_profile(noisy, MID, seed=3)
    assert p1 == p2
    assert member_profile(noisy, MID, seed=4).consumption_wh != p1.consumption_wh
    assert p1.consumption_wh != p.consumption_wh


def test_pv_clear_sky_is_plausible():
    loc = Location()
    june = pv_day_mwh_per_kwp(MID, loc)
    dec = pv_day_mwh_per_kwp(date(2026, 12, 21), loc)
    assert all(type(x) is int and x >= 0 for x in june + dec)
    assert 6_000_000 < sum(june) < 9_000_000  # mWh per kWp on a clear June day in Munich
    assert 1_000_000 < sum(dec) < 4_000_000
    slots = day_slots(MID)
    night = [e for s, e in zip(slots, june) if s.hour in (21, 22, 23, 0, 1)]
    assert night and not any(night)
    noon = max(range(len(june)), key=june.__getitem__)
    assert slots[noon].hour in (10, 11, 12)  # solar noon in Munich is about 11:15 UTC
    m = Member("p", "prosumer", "h0", 3000, pv_wp=10_000)
    p = member_profile(m, MID, loc)
    assert 60_000 < p.generation_total < 90_000
    half = member_profile(m, MID, loc, clearness_permille=500)
    assert abs(half.generation_total * 2 - p.generation_total) < p.generation_total // 20


def test_validation():
    with pytest.raises(ValueError):
        Member("x", "consumer", "h9", 1000)
    with pytest.raises(ValueError):
        Battery(capacity_wh=1000, power_w=500, initial_soc_wh=2000)
    with pytest.raises(ValueError):
        Battery(capacity_wh=1000, power_w=500, efficiency=Fraction(3, 2))
    with pytest.raises(ValueError):
        make_community(3, ids=["a", "a", "b"])


def test_hourly_aggregation_keeps_energy_and_names_products():
    m = Member("p", "prosumer", "g0", 20_000, pv_wp=8000)
    for d, n in ((MID, 24), (date(2026, 3, 29), 23), (date(2026, 10, 25), 25)):
        p = member_profile(m, d)
        hs = hourly(p)
        assert len(hs) == n
        assert sum(h.consumption_wh for h in hs) == p.consumption_total
        assert sum(h.generation_wh for h in hs) == p.generation_total
        assert all(h.start.tzinfo is not None and h.start.minute == 0 for h in hs)
    assert hourly(member_profile(m, date(2026, 11, 22)))[0].product_id == "20261121T2300Z-60"


def test_make_community_mix_and_speed():
    ids = [f"0x{i:040x}" for i in range(200)]
    ms = make_community(200, seed=7, ids=ids)
    assert [m.member_id for m in ms] == ids
    assert ms[0].kind == "aggregator" and ms[0].battery is not None
    kinds = [m.kind for m in ms]
    assert kinds.count("aggregator") == 1 and kinds.count("consumer") == 89
    assert kinds.count("prosumer") == 69 and kinds.count("battery") == 41
    assert all((m.pv_wp > 0) == (m.kind != "consumer") for m in ms)
    assert all((m.battery is not None) == (m.kind in ("battery", "aggregator")) for m in ms)
    assert make_community(200, seed=7, ids=ids) == ms
    assert make_community(200, seed=8, ids=ids) != ms
    assert {m.slp for m in ms} > {"h0", "g0", "l0"}
    profiles = community_profiles(ms, date(2026, 5, 5), seed=7)
    assert len(profiles) == 200
    table = hourly_table(profiles)
    assert all(len(row) == 24 for row in table.values())


# =========================================================================== KPIs


def test_kpis_hand_example():
    pid = "20261122T1100Z-60"
    hourly_ = {"a": {pid: (1000, 3000)}, "b": {pid: (2000, 0)}}
    trades = [Trade(pid, "b", "a", 1500, 10_000)]
    flows = grid_flows(hourly_, trades)
    assert flows == {"a": {pid: (0, 500)}, "b": {pid: (500, 0)}}
    assert self_sufficiency(hourly_, trades) == Fraction(5, 6)
    assert self_sufficiency(hourly_) == Fraction(1, 3)  # a's own PV only
    t = Tariffs(retail_ticks=30_000, feed_in_ticks=8_000)
    c = member_costs(hourly_, trades, t)
    assert c["a"].cost == -500 * 8_000 - 1500 * 10_000
    assert c["b"].cost == 500 * 30_000 + 1500 * 10_000
    assert c["a"].baseline_no_p2p == -2000 * 8_000 and c["b"].baseline_no_p2p == 2000 * 30_000
    assert c["a"].baseline_grid_only == 1000 * 30_000 - 3000 * 8_000
    assert c["a"].savings > 0 and c["b"].savings > 0
    k = community_kpis(hourly_, trades, t)
    assert k["self_sufficiency"] == [5, 6] and k["self_sufficiency_bp"] == 8333
    assert k["cost"] == 500 * 30_000 - 500 * 8_000
    assert k["p2p_matrix"] == {"a": {"b": [1500, 15_000_000]}}


def test_trade_from_event_and_dict():
    ev = TradeEvent(5, 1, 7, "20261122T1100Z-60", 12_345, 300, 1, 2, "bob", "alice", "buy", 0, 0)
    t = trade_from_event(ev)
    assert t == Trade("20261122T1100Z-60", "bob", "alice", 300, 12_345)
    assert trade_from_event({"product_id": "p", "buyer": "b", "seller": "s", "energy_wh": 5, "price_ticks": 7}) \
        == Trade("p", "b", "s", 5, 7)
    assert community_kpis({}, [ev])["traded_money"] == 300 * 12_345


MEMBERS = ["m0", "m1", "m2", "m3"]
PIDS = ["20261122T1000Z-60", "20261122T1100Z-60", "20261122T1200Z-60"]
energies = st.integers(0, 5_000)
hourly_st = st.fixed_dictionaries({m: st.fixed_dictionaries({p: st.tuples(energies, energies) for p in PIDS})
                                   for m in MEMBERS})
trade_st = st.lists(st.tuples(st.sampled_from(PIDS), st.sampled_from(MEMBERS), st.sampled_from(MEMBERS),
                              st.integers(1, 4_000), st.integers(-50_000, 400_000)), max_size=25)


@given(hourly_st, trade_st)
@settings(max_examples=150, deadline=None)
def test_property_matrix_sums_balance_and_bounds(hourly_, raw):
    trades = [Trade(*r) for r in raw if r[1] != r[2]]
    m = p2p_matrix(trades)
    costs = member_costs(hourly_, trades)
    for mem in MEMBERS:
        row_e = sum(e for e, _ in m.get(mem, {}).values())
        col_e = sum(row[mem][0] for row in m.values() if mem in row)
        row_v = sum(v for _, v in m.get(mem, {}).values())
        col_v = sum(row[mem][1] for row in m.values() if mem in row)
        assert row_e == costs[mem].sold_wh and col_e == costs[mem].bought_wh
        assert col_v - row_v == costs[mem].p2p_paid
    flows = grid_flows(hourly_, trades)
    imp = sum(i for r in flows.values() for i, _ in r.values())
    exp = sum(e for r in flows.values() for _, e in r.values())
    cons = sum(c for r in hourly_.values() for c, _ in r.values())
    gen = sum(g for r in hourly_.values() for _, g in r.values())
    assert imp - exp == cons - gen  # P2P moves energy inside the community only
    assert sum(c.p2p_paid for c in costs.values()) == 0
    assert self_sufficiency(hourly_, trades) <= 1
    assert all(type(v) is int for c in costs.values() for v in (c.cost, c.baseline_no_p2p, c.grid_cost))


@given(hourly_st, st.lists(st.tuples(st.sampled_from(PIDS), st.sampled_from(MEMBERS), st.sampled_from(MEMBERS),
                                     st.integers(1, 4_000), st.integers(0, 40_000)), max_size=25))
@settings(max_examples=150, deadline=None)
def test_property_feasible_trades_keep_ss_in_unit_interval_and_help(hourly_, raw):
    """Sellers sell only their own remaining surplus, buyers buy only their remaining deficit."""
    left = {(m, p): g - c for m, row in hourly_.items() for p, (c, g) in row.items()}
    trades = []
    for pid, buyer, seller, qty, price in raw:
        q = min(qty, left[(seller, pid)], -left[(buyer, pid)])
        if buyer == seller or q <= 0:
            continue
        left[(seller, pid)] -= q
        left[(buyer, pid)] += q
        trades.append(Trade(pid, buyer, seller, q, price))
    ss, ss0 = self_sufficiency(hourly_, trades), self_sufficiency(hourly_)
    assert 0 <= ss0 <= ss <= 1
    costs = member_costs(hourly_, trades)
    total = sum(c.cost for c in costs.values())
    assert total <= sum(c.baseline_no_p2p for c in costs.values())  # retail >= feed-in: local trade saves
    if not trades:
        assert all(c.cost == c.baseline_no_p2p for c in costs.values())
