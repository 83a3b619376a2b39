"""Runtime + journal against the real embedded PostgreSQL: durability before
acknowledgement, recovery to the same state hash, idempotent client order ids
across a restart, downstream cursors, the timer driving gate closure. (Recovery after
SIGKILL mid-load, a real subprocess, is in tests/e2e/test_crash_restart.py.)"""

from __future__ import annotations

import asyncio
import time

import pytest
from support.market import open_products, open_test_market
from support.times import T0

from exchange.core.model import (
    Duplicate,
    OrderAccepted,
    PlaceOrder,
    RegisterMember,
    Side,
)
from exchange.core.units import US_PER_MIN
from exchange.runtime.clock import ManualClock
from exchange.runtime.journal import Journal
from exchange.tools import workload

pytestmark = pytest.mark.integration


async def test_ack_only_after_commit(pool, pg_dsn):
    market = await open_test_market(pg_dsn)
    rt = market.runtime
    try:
        await rt.submit(RegisterMember(0, "alice", collateral=10**15, export_capacity_w=10**6))
        pid = open_products(rt.engine)[0]
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
    market = await open_test_market(pg_dsn)
    rt = market.runtime
    names = workload.members(10)
    await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
    flow = workload.OrderFlow(open_products(rt.engine), names, seed=3, first_order_id=rt.engine.next_order_id)
    for cmd in flow.stream(3000, 0):
        await rt.submit(cmd)
    before = rt.engine.state_hash()
    trades = rt.engine.next_trade_id - 1
    assert trades > 100
    await market.close()

    market = await open_test_market(pg_dsn)
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
    market = await open_test_market(pg_dsn)
    rt = market.runtime
    await rt.submit(RegisterMember(0, "bob", collateral=10**15))
    pid = open_products(rt.engine)[0]
    first = await rt.submit(PlaceOrder(0, "bob", pid, Side.BUY, 4000, 500, client_order_id="bob-1"))
    oid = first.events[0].order_id
    await market.close()

    market = await open_test_market(pg_dsn)
    try:
        again = await market.runtime.submit(PlaceOrder(0, "bob", pid, Side.BUY, 4000, 500, client_order_id="bob-1"))
        dup = again.events[0]
        assert isinstance(dup, Duplicate) and dup.order_id == oid and dup.original_seq == first.events[0].seq
        assert [o.order_id for o in market.engine.orders.values() if o.member == "bob"] == [oid]
    finally:
        await market.close()


async def test_downstream_cursor_reads_committed_events_in_order(pool, pg_dsn):
    market = await open_test_market(pg_dsn)
    rt = market.runtime
    try:
        seen: list[int] = []
        quiet: list[int] = []  # rejections that changed nothing: answered, not journaled, no seq of their own
        rt.subscribers.append(lambda entries: seen.extend(ev.seq for e in entries if e.cmd_seq for ev in e.events))
        rt.subscribers.append(lambda entries: quiet.extend(ev.seq for e in entries if not e.cmd_seq
                                                           for ev in e.events))
        names = workload.members(4)
        await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
        flow = workload.OrderFlow(open_products(rt.engine), names, seed=5, first_order_id=rt.engine.next_order_id)
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
        assert quiet and set(quiet) <= set(seqs)  # the workload has refused orders; they carry the last seq
        # a consumer resuming from its cursor sees only newer events
        tail = await j.events_after(rt.engine.seq - 3)
        assert [e["seq"] for e in tail] == [rt.engine.seq - 2, rt.engine.seq - 1, rt.engine.seq]
    finally:
        await market.close()


async def test_timer_closes_gate_and_expires_orders(pool, pg_dsn):
    clock = ManualClock(T0)
    market = await open_test_market(pg_dsn, clock=clock, gate="rolling", gate_rolling_minutes=60, open_days_before=1)
    rt = market.runtime
    try:
        await rt.submit(RegisterMember(0, "carol", collateral=10**15, export_capacity_w=10**6))
        pid = open_products(rt.engine)[0]
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


async def test_second_instance_of_a_market_is_refused(pool, pg_dsn):
    market = await open_test_market(pg_dsn, market_id="solo")
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await open_test_market(pg_dsn, market_id="solo")
    finally:
        await market.close()
    market = await open_test_market(pg_dsn, market_id="solo")  # the lock is released on stop
    await market.close()


async def test_engine_failure_stops_market_refuses_uncommitted_and_recovers(pool, pg_dsn):
    from exchange.core.model import Tick
    from exchange.runtime.market import MarketUnavailable

    class Unknown(Tick):  # a command type the engine has no handler for: an engine error
        pass

    market = await open_test_market(pg_dsn, market_id="boom")
    rt = market.runtime
    await rt.submit(RegisterMember(0, "dan", collateral=10**15))
    pid = open_products(rt.engine)[0]
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
    market = await open_test_market(pg_dsn, market_id="boom")
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
            self.t = T0
            self.calls = 0

        def now_us(self) -> int:
            self.calls += 1
            self.t += 1_000_000 if self.calls != 6 else -600_000_000
            return self.t

    market = await open_test_market(pg_dsn, market_id="ntp", clock=SteppingClock())
    rt = market.runtime
    await rt.submit(RegisterMember(0, "eve", collateral=10**15, export_capacity_w=10**6))
    pid = open_products(rt.engine)[0]
    for i in range(6):
        await rt.submit(PlaceOrder(0, "eve", pid, Side.SELL, 5000 + i, 100))
    before = rt.engine.state_hash()
    rows = await pool.fetch("SELECT ts, events FROM journal WHERE market_id='ntp' ORDER BY cmd_seq")
    stamps = [r["ts"] for r in rows]
    assert stamps == sorted(stamps), "journaled command times went backwards"
    await market.close()
    market = await open_test_market(pg_dsn, market_id="ntp")  # replay verifies every event
    try:
        assert market.engine.state_hash() == before
    finally:
        await market.close()
