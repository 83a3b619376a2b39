"""The engine bench's mix carries the later order types (post-only, good-till-date, minimum
quantity IOC; blocks in a day-ahead auction of their own), and a flow that learns its order ids
from the engine names only orders the engine accepted."""

from __future__ import annotations

from collections import Counter

import pytest

from exchange.core.engine import MarketEngine
from exchange.core.model import BlockResult, OrderAccepted, PlaceBlock, PlaceOrder, Rejected, Tick, TimeInForce
from exchange.tools import workload
from exchange.tools.bench import bench_engine, record_auction, record_workload, run_workload

pytestmark = pytest.mark.unit


def test_the_engine_mix_has_the_new_order_types_and_its_shares_add_up():
    w = record_workload(6000, seed=2)
    places = [c for c in w.commands if isinstance(c, PlaceOrder)]
    assert sum(c.post_only for c in places) > 300
    assert sum(c.expire_at is not None for c in places) > 300
    assert sum(c.min_quantity is not None and c.tif is TimeInForce.IOC for c in places) > 50
    shares = workload.ENGINE_MIX.fractions()
    assert abs(sum(shares.values()) - 1) < 1e-3 and shares["block"] == 0
    # replayed on a fresh engine the recorded stream gives the same outcome as recorded
    assert run_workload(w)["state_hash"] == run_workload(w)["state_hash"]


def test_a_feedback_flow_names_only_accepted_orders():
    w = record_workload(6000, seed=4)
    e = MarketEngine(w.config)
    for c in w.setup:
        e.process(c)
    accepted: dict[int, str] = {}
    reasons: Counter[str] = Counter()
    for c in w.commands:
        evs = e.process(c)
        for ev in evs:
            if isinstance(ev, OrderAccepted):
                accepted[ev.order_id] = ev.member
            elif isinstance(ev, Rejected):
                reasons[ev.reason] += 1
        if hasattr(c, "order_id") and not isinstance(c, PlaceOrder):
            assert accepted.get(c.order_id) == c.member  # a cancel or modify names one of its own orders
    assert reasons["POST_ONLY_WOULD_TRADE"] > 0  # refused orders did not shift the ids
    e.check_invariants()


def test_blocks_are_measured_in_a_day_ahead_auction():
    w, clears_at = record_auction(3000, seed=1)
    assert sum(isinstance(c, PlaceBlock) for c in w.commands) > 10
    e = MarketEngine(w.config)
    for c in [*w.setup, *w.commands]:
        assert not [ev for ev in e.process(c) if isinstance(ev, Rejected) and ev.reason == "BLOCK_NOT_ALLOWED"]
    results = [ev for ev in e.process(Tick(clears_at)) if isinstance(ev, BlockResult)]
    assert results and any(r.executed for r in results)
    e.check_invariants()


def test_bench_engine_reports_the_mix_and_the_auction_phase():
    r = bench_engine(commands=3000, seed=3, repeat=1, auction_commands=1000)
    assert r["mix"] == workload.ENGINE_MIX.fractions()
    a = r["auction"]
    assert a["blocks"] > 0 and a["products"] == 24 and a["auction_s"] >= 0 and a["commands"] == 1001
    for key in ("commands_per_s", "commands_per_s_no_price_controls", "price_controls_cost_ratio", "p99_us"):
        assert key in r, key
