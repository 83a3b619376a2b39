"""Group commit across markets (exchange.runtime.committer): the markets of one process
share one journal transaction per commit; each still acknowledges only after COMMIT, in
its own order, and recovers alone to the state it had. Real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from support.market import open_products
from support.times import T0

from exchange.core.engine import MarketEngine
from exchange.core.model import PlaceOrder, RegisterMember, Side
from exchange.runtime import committer as committer_module
from exchange.runtime import market as market_module
from exchange.runtime.clock import ManualClock
from exchange.runtime.committer import GroupCommitter
from exchange.runtime.config import load_settings
from exchange.runtime.journal import Journal, write_groups
from exchange.runtime.market import MarketBusy, MarketRuntime, MarketUnavailable
from exchange.runtime.service import market_config

pytestmark = pytest.mark.integration


@pytest.fixture
async def committer(pool):
    """A scheduler shared by the test's markets, stopped after them."""
    c = GroupCommitter(pool)
    c.start()
    yield c
    await c.stop()


async def _runtime(pool, market_id: str, committer: GroupCommitter | None) -> MarketRuntime:
    settings = load_settings(database_url="postgresql://unused", market_id=market_id)
    journal = Journal(pool, market_id)
    cfg = await journal.load_or_store_config(market_config(settings))
    rt = MarketRuntime(MarketEngine(cfg), journal, ManualClock(T0), committer=committer)
    await rt.start()
    return rt


async def _trade(rt: MarketRuntime, n: int, salt: int) -> None:
    await rt.submit(RegisterMember(0, "a", collateral=10**15, export_capacity_w=10**9))
    await rt.submit(RegisterMember(0, "b", collateral=10**15, export_capacity_w=10**9))
    pid = open_products(rt.engine)[0]
    orders = [PlaceOrder(0, m, pid, side, 9_000 + (i * 37 + salt) % 200, 1_000 + i % 50)
              for i in range(n) for m, side in (("a", Side.BUY), ("b", Side.SELL))]
    await asyncio.gather(*(rt.submit(o) for o in orders))


async def test_markets_share_commits_and_recover_alone(pool):
    committer = GroupCommitter(pool)
    committer.start()
    rts = [await _runtime(pool, f"g{i}", committer) for i in range(3)]
    await asyncio.gather(*(_trade(rt, 150, i) for i, rt in enumerate(rts)))
    hashes = [rt.engine.state_hash() for rt in rts]
    counts = [rt.cmd_seq for rt in rts]
    assert committer.commits < sum(counts)  # groups of several commands, of several markets
    assert committer.groups > committer.commits  # some commits carried more than one market
    for rt in rts:
        await rt.stop()
    await committer.stop()
    for i, (h, n) in enumerate(zip(hashes, counts, strict=True)):
        assert await pool.fetchval("SELECT count(*) FROM journal WHERE market_id = $1", f"g{i}") == n
        alone = await _runtime(pool, f"g{i}", None)  # a writer of its own: recovery from the journal
        try:
            assert alone.engine.state_hash() == h
        finally:
            await alone.stop()


async def test_a_retry_already_committed_does_not_hold_back_other_markets(pool):
    """A group whose COMMIT reached the server (its answer lost) is sent again together with
    another market's new group: both end durable, the new one exactly once."""
    rt = await _runtime(pool, "r1", None)
    await _trade(rt, 5, 1)
    await rt.stop()
    rows = await pool.fetch("SELECT market_id, cmd_seq, first_seq, last_seq, ts, command, events FROM journal "
                            "WHERE market_id = 'r1' ORDER BY cmd_seq")
    again = [tuple(r) for r in rows]
    fresh = [("r2", 1, 1, 1, rows[0]["ts"], {"type": "tick", "ts": 0}, [{"type": "x", "seq": 1}])]
    await write_groups(pool, [("r1", again, []), ("r2", fresh, [])])
    assert await pool.fetchval("SELECT count(*) FROM journal WHERE market_id = 'r1'") == len(again)
    assert await pool.fetchval("SELECT count(*) FROM journal WHERE market_id = 'r2'") == 1
    # a real conflict (other events under the same commands) is not taken for a retry
    forged = [(*r[:2], r[2] + 1000, r[3] + 1000, *r[4:]) for r in again]
    with pytest.raises(RuntimeError, match="journal conflict"):
        await write_groups(pool, [("r1", forged, [])])


async def test_one_market_once_per_process(pool, committer):
    rt = await _runtime(pool, "once", committer)
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await _runtime(pool, "once", committer)
    finally:
        await rt.stop()


async def test_an_engine_failure_stops_its_market_alone(pool, committer):
    """One scheduler task runs both markets' engines: an engine that raises stops its own
    market (what it had not committed refused, nothing acknowledged), the other goes on."""
    bad, good = await _runtime(pool, "boom", committer), await _runtime(pool, "calm", committer)
    try:
        await _trade(bad, 3, 0)
        before = bad.cmd_seq
        real = bad.engine.process

        def explode(cmd):
            if isinstance(cmd, PlaceOrder) and cmd.price == 4_242:
                raise ZeroDivisionError("engine bug")
            return real(cmd)

        bad.engine.process = explode  # type: ignore[method-assign]
        pid = open_products(bad.engine)[0]
        lost = asyncio.ensure_future(bad.submit(PlaceOrder(0, "a", pid, Side.BUY, 4_242, 1_000)))
        with pytest.raises(MarketUnavailable, match="engine bug"):
            await lost
        await asyncio.sleep(0.05)
        assert bad.closed and isinstance(bad.failed, ZeroDivisionError)
        with pytest.raises(MarketUnavailable):
            await bad.submit(PlaceOrder(0, "a", pid, Side.BUY, 9_000, 1_000))
        await _trade(good, 20, 1)  # the other market trades on, through the same scheduler
        assert good.running and good.committed_cmd_seq == good.cmd_seq > 0
        assert await pool.fetchval("SELECT max(cmd_seq) FROM journal WHERE market_id = 'boom'") == before
    finally:
        await good.stop()
        await bad.stop()


async def _stalled_writes(monkeypatch, market_id: str) -> asyncio.Event:
    """The journal writes of ``market_id`` wait for the returned event (a stalled database)."""
    gate = asyncio.Event()
    real = committer_module.write_groups

    async def stalled(pool, groups):
        if any(m == market_id for m, _, _ in groups):
            await gate.wait()
        await real(pool, groups)

    monkeypatch.setattr(committer_module, "write_groups", stalled)
    return gate


async def _stalled_with_one_pending(pool, monkeypatch, committer: GroupCommitter, market_id: str):
    """A market of ``committer`` with one command committed, then its writes stalled and a
    second command (member "c") submitted: (runtime, cmd_seq of the first, gate, pending submit)."""
    rt = await _runtime(pool, market_id, committer)
    first = (await rt.submit(RegisterMember(0, "a", collateral=10**15, export_capacity_w=10**9))).cmd_seq
    gate = await _stalled_writes(monkeypatch, market_id)
    pending = asyncio.ensure_future(rt.submit(RegisterMember(0, "c", collateral=10**15, export_capacity_w=10**9)))
    await asyncio.sleep(0.05)
    return rt, first, gate, pending


async def _small_queue_stalled(pool, monkeypatch, market_id: str) -> tuple[MarketRuntime, asyncio.Event, str]:
    """A market of its own with a batch of 5, a queue of 10 and member "a", whose journal
    writes then wait for the returned gate: (runtime, gate, an open product)."""
    settings = load_settings(database_url="postgresql://unused", market_id=market_id)
    journal = Journal(pool, market_id)
    cfg = await journal.load_or_store_config(market_config(settings))
    rt = MarketRuntime(MarketEngine(cfg), journal, ManualClock(T0), max_batch=5, queue_size=10)
    await rt.start()
    try:
        await rt.submit(RegisterMember(0, "a", collateral=10**15, export_capacity_w=10**9))
        gate = await _stalled_writes(monkeypatch, market_id)
    except BaseException:
        await rt.stop()
        raise
    return rt, gate, open_products(rt.engine)[0]


async def test_back_pressure_while_commits_stall(pool, monkeypatch):
    """The engine does not run ahead of the journal without bound: at max_uncommitted
    processed commands it waits for a COMMIT, the queue fills, and enqueue says MarketBusy."""
    rt, gate, pid = await _small_queue_stalled(pool, monkeypatch, "bp")
    try:
        futs, busy = [], 0
        for i in range(200):
            try:
                futs.append(rt.enqueue(PlaceOrder(0, "a", pid, Side.BUY, 9_000 + i % 50, 1_000), future=True))
            except MarketBusy:
                busy += 1
            await asyncio.sleep(0)
        assert rt.uncommitted() <= rt.max_uncommitted == 20 and rt.queued() == 10
        assert len(futs) == 30 and busy == 170 and not any(f.done() for f in futs)
        gate.set()
        results = await asyncio.gather(*futs)
        assert [r.cmd_seq for r in results] == list(range(results[0].cmd_seq, results[0].cmd_seq + 30))
        assert rt.committed_cmd_seq == rt.cmd_seq
    finally:
        await rt.stop()


async def test_submitters_wait_for_room_and_all_get_their_answers(pool, monkeypatch):
    """``submit`` on a full queue waits (no MarketBusy) until the engine has taken commands
    out of it, which happens once a COMMIT makes room; every waiter is answered, in order."""
    rt, gate, pid = await _small_queue_stalled(pool, monkeypatch, "bw")
    try:
        subs = [asyncio.ensure_future(rt.submit(PlaceOrder(0, "a", pid, Side.BUY, 9_000 + i, 1_000)))
                for i in range(60)]
        await asyncio.sleep(0.2)
        assert rt.queued() == 10 and rt.uncommitted() == 20 and not any(f.done() for f in subs)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*subs), 10)
        assert [r.cmd_seq for r in results] == list(range(results[0].cmd_seq, results[0].cmd_seq + 60))
    finally:
        await rt.stop()


async def test_a_market_stopped_with_a_transaction_in_flight_waits_for_it(pool, monkeypatch, committer):
    """Its lock is not released (so no other instance can recover without those rows) before
    the attempt ends; committed, the command is answered, and a restart finds it."""
    rt, n, gate, pending = await _stalled_with_one_pending(pool, monkeypatch, committer, "x")
    try:
        stopping = asyncio.ensure_future(rt.stop(drain_timeout=0.1))
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waits for the transaction holding c
        with pytest.raises(RuntimeError, match="already running in this process"):
            await _runtime(pool, "x", committer)  # the lock is still held
        gate.set()
        await asyncio.wait_for(stopping, 10)
        assert (await pending).cmd_seq == n + 1  # committed, so answered: not refused
        again = await _runtime(pool, "x", committer)
        try:
            assert again.cmd_seq == n + 1
            d = await again.submit(RegisterMember(0, "d", collateral=10**15, export_capacity_w=10**9))
            assert d.cmd_seq == n + 2
        finally:
            await again.stop()
    finally:
        await rt.stop()


async def test_a_transaction_outliving_the_stop_keeps_the_lock_until_it_ends(pool, monkeypatch, committer):
    """Past SETTLE_TIMEOUT_S the market stops anyway (its callers refused), but its lock is
    released only when that transaction ended: no restart can recover without its rows."""
    monkeypatch.setattr(market_module, "SETTLE_TIMEOUT_S", 0.2)
    rt, n, gate, pending = await _stalled_with_one_pending(pool, monkeypatch, committer, "slow")
    try:
        await asyncio.wait_for(rt.stop(drain_timeout=0.1), 5)
        with pytest.raises(MarketUnavailable):
            await pending
        with pytest.raises(RuntimeError, match="already running in this process"):
            await _runtime(pool, "slow", committer)
        gate.set()
        for _ in range(100):
            if "slow" not in committer._locked:
                break
            await asyncio.sleep(0.05)
        again = await _runtime(pool, "slow", committer)  # the transaction landed first: recovered with it
        try:
            assert again.cmd_seq == n + 1
        finally:
            await again.stop()
    finally:
        await rt.stop()


async def test_a_commit_connection_lost_is_replaced_and_nothing_is_lost(pool, committer):
    """The slots keep their connections between commits; one the server closed (a restart, an
    idle timeout, an operator's pg_terminate_backend) is replaced by a fresh one (seen closed
    before use, or failing its transaction, which is then retried through the pool): every
    command is acknowledged once durable, exactly once in the journal."""
    rt = await _runtime(pool, "lost", committer)
    try:
        await _trade(rt, 5, 1)
        held = set(committer._conns)
        assert held and held == {c for c, _ in committer._idle}  # kept between commits, not given back
        pids = [c.get_server_pid() for c in held]
        killed = await pool.fetchval("SELECT count(*) FROM (SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p) t",
                                     pids)
        assert killed == len(pids)
        before = rt.cmd_seq
        await _trade(rt, 5, 2)  # every submit answered (a transaction on a lost one: retried)
        assert await pool.fetchval("SELECT count(*) FROM journal WHERE market_id = 'lost'") == rt.cmd_seq > before
        assert not held & set(committer._conns) and committer._conns  # fresh connections now
        assert all(not c.is_closed() for c in committer._conns)
        # none of the pool's connections is lost for good: every one can be taken at once
        conns = [await asyncio.wait_for(pool.acquire(), 5) for _ in range(pool.get_max_size() - 1 - len(committer._conns))]
        for c in conns:
            await pool.release(c)
        h = rt.engine.state_hash()
    finally:
        await rt.stop()
    alone = await _runtime(pool, "lost", None)
    try:
        assert alone.engine.state_hash() == h
    finally:
        await alone.stop()
