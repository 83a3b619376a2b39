"""Runtime + journal against the real embedded PostgreSQL: durability before
acknowledgement, recovery to the same state hash, idempotent client order ids
across a restart, downstream cursors, the timer driving gate closure, and
recovery after SIGKILL mid-load (a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exchange.core.model import (
    Duplicate,
    OrderAccepted,
    PlaceOrder,
    RegisterMember,
    Side,
)
from exchange.core.units import US_PER_MIN
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.journal import Journal
from exchange.runtime.service import open_market
from exchange.tools import workload
from exchange.tools.bench import BENCH_T0

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


async def _open(pg_dsn: str, market_id: str = "t", clock=None, **kw):
    settings = load_settings(database_url=pg_dsn, market_id=market_id, **kw)
    return await open_market(pg_dsn, settings, clock or ManualClock(BENCH_T0))


def _open_products(engine) -> list[str]:
    return sorted(p for p, pb in engine.products.items() if pb.state.value == "open")


async def test_ack_only_after_commit(pool, pg_dsn):
    market = await _open(pg_dsn)
    rt = market.runtime
    try:
        await rt.submit(RegisterMember(0, "alice", collateral=10**15, export_capacity_w=10**6))
        pid = _open_products(rt.engine)[0]
        # Hold the journal table locked: the commit cannot happen, so no ack may leave.
        blocker = await pool.acquire()
        tr = blocker.transaction()
        await tr.start()
        await blocker.execute("LOCK TABLE journal IN ACCESS EXCLUSIVE MODE")
        fut = asyncio.ensure_future(rt.submit(PlaceOrder(0, "alice", pid, Side.SELL, 5000, 100, client_order_id="x")))
        await asyncio.sleep(0.5)
        assert not fut.done(), "acknowledged before its transaction committed"
        assert rt.committed_seq < rt.engine.seq
        await tr.rollback()
        await pool.release(blocker)
        res = await asyncio.wait_for(fut, 10)
        assert isinstance(res.events[0], OrderAccepted)
        row = await pool.fetchrow("SELECT command, events FROM journal WHERE market_id='t' AND cmd_seq=$1",
                                  res.cmd_seq)
        assert row["command"]["client_order_id"] == "x"
        assert row["events"][0]["type"] == "order_accepted"
    finally:
        await market.close()


async def test_restart_recovers_identical_state_and_trades_projection(pool, pg_dsn):
    market = await _open(pg_dsn)
    rt = market.runtime
    names = workload.members(10)
    await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
    flow = workload.OrderFlow(_open_products(rt.engine), names, seed=3, first_order_id=rt.engine.next_order_id)
    for cmd in flow.stream(3000, 0):
        await rt.submit(cmd)
    before = rt.engine.state_hash()
    trades = rt.engine.next_trade_id - 1
    assert trades > 100
    await market.close()

    market = await _open(pg_dsn)
    try:
        assert market.engine.state_hash() == before
        n = await pool.fetchval("SELECT count(*) FROM trades WHERE market_id='t'")
        assert n == trades
        # the projection equals the trade events of the journal
        evs = await market.journal.events_after(0, limit=10**6)
        trade_evs = [e for e in evs if e["type"] == "trade"]
        assert len(trade_evs) == trades
        row = await pool.fetchrow("SELECT * FROM trades WHERE market_id='t' AND trade_id=$1", trade_evs[-1]["trade_id"])
        assert (row["energy_wh"], row["price_ticks"], row["buyer"]) == (
            trade_evs[-1]["quantity"], trade_evs[-1]["price"], trade_evs[-1]["buyer"])
    finally:
        await market.close()


async def test_client_order_id_idempotent_across_restart(pool, pg_dsn):
    market = await _open(pg_dsn)
    rt = market.runtime
    await rt.submit(RegisterMember(0, "bob", collateral=10**15))
    pid = _open_products(rt.engine)[0]
    first = await rt.submit(PlaceOrder(0, "bob", pid, Side.BUY, 4000, 500, client_order_id="bob-1"))
    oid = first.events[0].order_id
    await market.close()

    market = await _open(pg_dsn)
    try:
        again = await market.runtime.submit(PlaceOrder(0, "bob", pid, Side.BUY, 4000, 500, client_order_id="bob-1"))
        dup = again.events[0]
        assert isinstance(dup, Duplicate) and dup.order_id == oid and dup.original_seq == first.events[0].seq
        assert [o.order_id for o in market.engine.orders.values() if o.member == "bob"] == [oid]
    finally:
        await market.close()


async def test_downstream_cursor_reads_committed_events_in_order(pool, pg_dsn):
    market = await _open(pg_dsn)
    rt = market.runtime
    try:
        seen: list[int] = []
        rt.subscribers.append(lambda entries: seen.extend(ev.seq for e in entries for ev in e.events))
        names = workload.members(4)
        await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
        flow = workload.OrderFlow(_open_products(rt.engine), names, seed=5, first_order_id=rt.engine.next_order_id)
        await asyncio.gather(*(rt.submit(c) for c in flow.stream(500, 0)))
        j: Journal = market.journal
        assert await j.cursor("settlement") == 0
        got: list[dict] = []
        cursor = 0
        while True:
            batch = await j.events_after(cursor, limit=50)
            if not batch:
                break
            got.extend(batch)
            cursor = batch[-1]["seq"]
            await j.save_cursor("settlement", cursor)
        seqs = [e["seq"] for e in got]
        assert seqs == list(range(1, rt.engine.seq + 1)), "gap or duplicate in the committed event stream"
        assert await j.cursor("settlement") == rt.engine.seq
        assert seen == seqs[-len(seen):] and seen == sorted(seen)  # live publication, after commit, in order
        # a consumer resuming from its cursor sees only newer events
        tail = await j.events_after(rt.engine.seq - 3)
        assert [e["seq"] for e in tail] == [rt.engine.seq - 2, rt.engine.seq - 1, rt.engine.seq]
    finally:
        await market.close()


async def test_timer_closes_gate_and_expires_orders(pool, pg_dsn):
    clock = ManualClock(BENCH_T0)
    market = await _open(pg_dsn, clock=clock, gate="rolling", gate_rolling_minutes=60, open_days_before=1)
    rt = market.runtime
    try:
        await rt.submit(RegisterMember(0, "carol", collateral=10**15, export_capacity_w=10**6))
        pid = _open_products(rt.engine)[0]
        p = rt.engine.products[pid].product
        res = await rt.submit(PlaceOrder(0, "carol", pid, Side.SELL, 9000, 700))
        oid = res.events[0].order_id
        clock.set(p.gate_us + US_PER_MIN)
        deadline = time.monotonic() + 5
        while rt.engine.products[pid].state.value != "closed" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert rt.engine.products[pid].state.value == "closed"
        while rt.committed_seq < rt.engine.seq and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        evs = await market.journal.events_after(res.events[-1].seq)
        expired = [e for e in evs if e["type"] == "order_expired"]
        assert [(e["order_id"], e["remaining"]) for e in expired] == [(oid, 700)]
        assert {"type": "product_state", "product_id": pid, "state": "closed"}.items() <= next(
            e for e in evs if e["type"] == "product_state" and e["product_id"] == pid).items()
        assert next(e for e in expired)["ts"] == p.gate_us  # stamped with the gate time itself
    finally:
        await market.close()


@pytest.mark.slow
async def test_sigkill_mid_load_loses_no_ack_and_duplicates_nothing(pool, pg_dsn):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_crash_child.py"), pg_dsn, "crash"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    acks: dict[str, str] = {}
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            line = proc.stdout.readline()
            if line.startswith("ACK "):
                _, coid, oid, _seq = line.split()
                acks[coid] = oid
        os.kill(proc.pid, signal.SIGKILL)
        for line in proc.stdout.read().splitlines():  # acks printed before the kill landed
            if line.startswith("ACK "):
                _, coid, oid, _seq = line.split()
                acks[coid] = oid
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert len(acks) > 500, "the child did not get under load"

    market = await _open(pg_dsn, market_id="crash")  # replays and verifies every event
    try:
        engine = market.engine
        engine.check_invariants()
        by_coid = {c: v for (m, c), v in engine.client_ids.items()}
        missing = [c for c in acks if c not in by_coid]
        assert not missing, f"acknowledged orders lost: {missing[:5]}"
        for coid, oid in acks.items():
            assert str(by_coid[coid][0] if by_coid[coid][0] is not None else "-") == oid
        accepted = await pool.fetch(
            "SELECT e->>'client_order_id' AS coid, count(*) AS n FROM journal, jsonb_array_elements(events) e "
            "WHERE market_id='crash' AND e->>'type'='order_accepted' GROUP BY 1 HAVING count(*) > 1")
        assert accepted == [], "an order was accepted twice"
        seqs = await pool.fetch("SELECT cmd_seq FROM journal WHERE market_id='crash' ORDER BY cmd_seq")
        assert [r["cmd_seq"] for r in seqs] == list(range(1, len(seqs) + 1))
        ntrades = await pool.fetchval("SELECT count(*) FROM trades WHERE market_id='crash'")
        assert ntrades == engine.next_trade_id - 1
    finally:
        await market.close()


async def test_second_instance_of_a_market_is_refused(pool, pg_dsn):
    market = await _open(pg_dsn, market_id="solo")
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await _open(pg_dsn, market_id="solo")
    finally:
        await market.close()
    market = await _open(pg_dsn, market_id="solo")  # the lock is released on stop
    await market.close()


async def test_engine_failure_stops_market_refuses_uncommitted_and_recovers(pool, pg_dsn):
    from exchange.core.model import Tick
    from exchange.runtime.market import MarketUnavailable

    class Unknown(Tick):  # a command type the engine has no handler for: an engine error
        pass

    market = await _open(pg_dsn, market_id="boom")
    rt = market.runtime
    await rt.submit(RegisterMember(0, "dan", collateral=10**15))
    pid = _open_products(rt.engine)[0]
    ok = await rt.submit(PlaceOrder(0, "dan", pid, Side.BUY, 4000, 100))
    committed_hash = rt.engine.state_hash()
    with pytest.raises(MarketUnavailable):
        await rt.submit(Unknown(0))
    for _ in range(50):
        if rt.closed:
            break
        await asyncio.sleep(0.02)
    assert rt.closed and rt.failed is not None
    with pytest.raises(MarketUnavailable):
        await rt.submit(PlaceOrder(0, "dan", pid, Side.BUY, 4000, 100))
    await market.close()
    market = await _open(pg_dsn, market_id="boom")
    try:
        assert market.engine.state_hash() == committed_hash
        assert ok.events[0].order_id in market.engine.orders
    finally:
        await market.close()


async def test_wall_clock_stepping_back_does_not_break_replay(pool, pg_dsn):
    from exchange.runtime.clock import Clock

    class SteppingClock(Clock):
        """A wall clock that jumps back by ten minutes once (an NTP step)."""

        def __init__(self) -> None:
            self.t = BENCH_T0
            self.calls = 0

        def now_us(self) -> int:
            self.calls += 1
            self.t += 1_000_000 if self.calls != 6 else -600_000_000
            return self.t

    market = await _open(pg_dsn, market_id="ntp", clock=SteppingClock())
    rt = market.runtime
    await rt.submit(RegisterMember(0, "eve", collateral=10**15, export_capacity_w=10**6))
    pid = _open_products(rt.engine)[0]
    for i in range(6):
        await rt.submit(PlaceOrder(0, "eve", pid, Side.SELL, 5000 + i, 100))
    before = rt.engine.state_hash()
    rows = await pool.fetch("SELECT ts, events FROM journal WHERE market_id='ntp' ORDER BY cmd_seq")
    stamps = [r["ts"] for r in rows]
    assert stamps == sorted(stamps), "journaled command times went backwards"
    await market.close()
    market = await _open(pg_dsn, market_id="ntp")  # replay verifies every event
    try:
        assert market.engine.state_hash() == before
    finally:
        await market.close()
