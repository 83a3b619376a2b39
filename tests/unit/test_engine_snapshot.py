"""Engine snapshots: an engine restored from ``export_state`` (through JSON, as stored)
processes every later command exactly as the original does — same events, same state hash.
Random streams cover resting books with time priority, modifies, cancels, cancel-alls,
halts, collateral updates, suspensions, client order ids, volatility auctions in
progress, the order-to-trade counts, gate closures and deliveries around the cut."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.times import T0

from exchange.core.calendar import CalendarConfig, GateMode
from exchange.core.controls import PriceControls
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import (
    CancelAll,
    Command,
    Halt,
    Mechanism,
    PlaceBlock,
    RegisterMember,
    Resume,
    Side,
    Tick,
    UpdateCollateral,
    command_from_dict,
    command_to_dict,
    event_to_dict,
)
from exchange.core.units import US_PER_MIN
from exchange.tools import workload

pytestmark = pytest.mark.unit


def _stream(seed: int, n: int, mechanism: Mechanism) -> tuple[MarketConfig, list[Command]]:
    rng = random.Random(seed)
    calendar = CalendarConfig(gate=GateMode.ROLLING) if mechanism is Mechanism.CALL_THEN_CONTINUOUS else CalendarConfig()
    cfg = MarketConfig(mechanism=mechanism, calendar=calendar, controls=PriceControls(
        price_band_min_ticks=rng.choice([0, 1200]), volatility_min_ticks=rng.choice([0, 600, 900]),
        volatility_auction_s=rng.choice([1, 30]), otr_max=rng.choice([0, 2]), otr_free=rng.choice([5, 50])))
    probe = MarketEngine(cfg)
    probe.process(Tick(T0))
    names = workload.members(6)
    products = sorted(pid for pid, pb in probe.products.items() if pb.state.value in ("open", "auction"))[-3:]
    flow = workload.OrderFlow(products, names, seed=seed)
    cmds: list[Command] = [Tick(T0), *workload.registrations(names, T0)]
    t = T0 + 1
    for i in range(n):
        t += rng.choice([10, 1000, 400_000])  # now and then far enough for a volatility auction to end
        x = rng.random()
        if x < 0.02:
            cmds.append(CancelAll(t, rng.choice(names), rng.choice([None, products[0]])))
        elif x < 0.03:
            cmds.append(Halt(t, "h") if rng.random() < 0.25 else Resume(t))  # halted now and then, briefly
        elif x < 0.04:
            m = rng.choice(names)
            cmds.append(UpdateCollateral(t, m, 10**15, rng.randrange(0, 10**6), i))
        elif x < 0.07 and mechanism is not Mechanism.CONTINUOUS:  # block orders, for the auction
            first = rng.randrange(2)
            cmds.append(PlaceBlock(t, rng.choice(names), products[first:first + 2], rng.choice(list(Side)),
                                   rng.randrange(7000, 9000), rng.randrange(1, 30) * 100))
        elif x < 0.045:
            cmds.append(RegisterMember(t, rng.choice(names), collateral=None, export_capacity_w=10**9,
                                       suspended=rng.random() < 0.5))
        else:
            c = flow.next(t)
            if hasattr(c, "client_order_id") and rng.random() < 0.3:
                c.client_order_id = f"c{rng.randrange(40)}"  # some repeat: duplicates
            cmds.append(c)
    first = probe.products[products[0]].product
    cmds.append(Tick(first.gate_us))  # gate closures (auctions, expiries, final positions)
    cmds.append(Tick(first.end_us + 60 * US_PER_MIN))  # deliveries: purges
    return cfg, cmds


def _run(engine: MarketEngine, cmds: list[Command]) -> list[dict]:
    return [event_to_dict(ev) for c in cmds for ev in engine.process(c)]


def _copy(c: Command) -> Command:
    return command_from_dict(command_to_dict(c))  # the engine may stamp a command: each run gets its own


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), cut=st.floats(0, 1), mechanism=st.sampled_from(list(Mechanism)))
def test_restored_engine_continues_exactly_like_the_original(seed, cut, mechanism):
    cfg, cmds = _stream(seed, 400, mechanism)
    k = int(len(cmds) * cut)
    original = MarketEngine(cfg)
    _run(original, [_copy(c) for c in cmds[:k]])
    state = json.loads(json.dumps(original.export_state()))  # as stored: through JSON
    restored = MarketEngine.restore(state)
    assert restored.state_hash() == original.state_hash()
    assert restored.export_state() == state
    restored.check_invariants()
    rest = cmds[k:]
    assert _run(restored, [_copy(c) for c in rest]) == _run(original, [_copy(c) for c in rest])
    assert restored.state_hash() == original.state_hash()


def test_a_snapshot_of_another_version_is_refused():
    e = MarketEngine(MarketConfig())
    e.process(Tick(T0))
    state = e.export_state()
    state["version"] = 0
    with pytest.raises(ValueError, match="version"):
        MarketEngine.restore(state)
