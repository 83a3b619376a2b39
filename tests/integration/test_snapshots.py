"""Snapshots against the real embedded PostgreSQL: a restart loads the newest valid
snapshot and replays only the tail, to the same state as a full replay; a corrupt or
forged snapshot is skipped or caught; ``voltbourse snapshots verify`` checks the chain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import pytest
from support.market import assert_full_replay_reaches, open_products, open_test_market
from support.waiting import until

from exchange.core.engine import MarketConfig, MarketEngine
from exchange.runtime import snapshots
from exchange.runtime.journal import Journal
from exchange.runtime.snapshots import SnapshotStore, catch_up, verify_chain
from exchange.tools import workload

pytestmark = pytest.mark.integration


async def _trade(market, n: int, seed: int = 3, members: int = 10, rounds: int = 1) -> None:
    """``n`` workload commands in ``rounds``; after each round the snapshot in progress (if
    any) is finished, so a round that journals more than ``snapshot_every_commands`` leaves
    a snapshot."""
    rt = market.runtime
    names = workload.members(members)
    await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
    flow = workload.OrderFlow(open_products(rt.engine), names, seed=seed, first_order_id=rt.engine.next_order_id)
    stream = flow.stream(n, 0)
    for _ in range(rounds):
        for _, cmd in zip(range(n // rounds), stream):
            await rt.submit(cmd)
        await _settled(market)


async def _settled(market, timeout: float = 30) -> None:
    """Wait until no snapshot is in progress (and none failed)."""
    s = market.snapshotter
    await until(lambda: not s.busy, timeout)
    assert s.failed is None, s.failed


async def test_restart_loads_the_newest_snapshot_and_replays_only_the_tail(pg_dsn):
    market = await open_test_market(pg_dsn, "snap1", snapshot_every_commands=400)
    try:
        await _trade(market, 2400, rounds=4)
        infos = await SnapshotStore(market.read_pool, "snap1").list()
        assert len(infos) >= 3 and all(b.cmd_seq - a.cmd_seq >= 400 for a, b in zip(infos, infos[1:]))
        before, journaled = market.engine.state_hash(), market.runtime.cmd_seq
        newest = infos[-1].cmd_seq
        # Each was taken from the live engine (in a forked child) and is exactly the state a
        # replay of the journal reaches at its command, time included, though the live
        # engine had also seen rejections (not journaled) by then.
        replayed, cursor = MarketEngine(market.engine.config), 0
        for info in infos:
            cursor = await catch_up(Journal(market.read_pool, "snap1"), replayed, cursor, info.cmd_seq)
            stored = await SnapshotStore(market.read_pool, "snap1").load(info.cmd_seq)
            assert stored.export_state() == replayed.export_state()
        assert market.snapshotter.written == len(infos) and market.snapshotter.fork_ms > 0
    finally:
        await market.close()
    market = await open_test_market(pg_dsn, "snap1", snapshot_every_commands=400)
    try:
        rt = market.runtime
        assert rt.recovered_from == newest and rt.cmd_seq == journaled
        assert market.engine.state_hash() == before
    finally:
        await market.close()
    await assert_full_replay_reaches(pg_dsn, "snap1", before)


async def test_a_corrupt_newest_snapshot_is_skipped_for_an_older_one(pg_dsn, pool):
    market = await open_test_market(pg_dsn, "snap2", snapshot_every_commands=300)
    try:
        await _trade(market, 1800, seed=4, rounds=4)
        before = market.engine.state_hash()
    finally:
        await market.close()
    infos = await SnapshotStore(pool, "snap2").list()
    assert len(infos) >= 3
    newest, second = infos[-1].cmd_seq, infos[-2].cmd_seq
    # flipped bytes (the digest no longer matches) in the newest; a wrong hash in the second
    await pool.execute("UPDATE snapshots SET state = overlay(state placing '\\x00'::bytea from 20 for 1) "
                       "WHERE market_id = 'snap2' AND cmd_seq = $1", newest)
    await pool.execute("UPDATE snapshots SET state_hash = 'bad' WHERE market_id = 'snap2' AND cmd_seq = $1", second)
    market = await open_test_market(pg_dsn, "snap2", snapshot_every_commands=0)
    try:
        assert market.runtime.recovered_from == infos[-3].cmd_seq
        assert market.engine.state_hash() == before
    finally:
        await market.close()


async def test_verify_replays_the_journal_and_catches_a_forged_snapshot(pg_dsn, pool):
    market = await open_test_market(pg_dsn, "snap3", snapshot_every_commands=250)
    try:
        await _trade(market, 1200, seed=5, rounds=3)
        config = market.engine.config
    finally:
        await market.close()
    store = SnapshotStore(pool, "snap3")
    checks, last = await verify_chain(Journal(pool, "snap3"), store, config)
    assert checks and all(c.ok for c in checks) and last >= checks[-1].cmd_seq

    env = dict(os.environ, VOLTBOURSE_DATABASE_URL=pg_dsn, VOLTBOURSE_MARKET_ID="snap3")
    cli = [sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "snapshots", "verify", "--json"]
    ok = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True, ok.stdout + ok.stderr

    # A consistent forgery: another state, with its own digest and hash, under an older command.
    # Only a full replay can tell: that is what verify does.
    target = checks[0].cmd_seq
    row = await pool.fetchrow("SELECT state FROM snapshots WHERE market_id = 'snap3' AND cmd_seq = $1", target)
    state = json.loads(zlib.decompress(row["state"]))
    state["accounts"][0][1] += 10**9  # someone's collateral, quietly raised
    forged = MarketEngine.restore(state)
    blob = zlib.compress(json.dumps(forged.export_state()).encode())
    await pool.execute("UPDATE snapshots SET state = $2, digest = $3, state_hash = $4 "
                       "WHERE market_id = 'snap3' AND cmd_seq = $1",
                       target, blob, hashlib.sha256(blob).hexdigest(), forged.state_hash())
    bad = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads(bad.stdout)
    assert report["ok"] is False and [p["cmd_seq"] for p in report["problems"]] == [target]


def _slow_encode(real):
    def encode(engine, cmd_seq):
        time.sleep(60)  # in the forked child: long enough to be killed mid-way
        return real(engine, cmd_seq)
    return encode


async def test_a_snapshot_killed_midway_stores_nothing_and_the_market_goes_on(pg_dsn, monkeypatch):
    market = await open_test_market(pg_dsn, "snap4", snapshot_every_commands=300)
    try:
        await _trade(market, 900, seed=6)
        s, rt = market.snapshotter, market.runtime
        kept = [i.cmd_seq for i in await SnapshotStore(market.read_pool, "snap4").list()]
        assert kept and s.written == len(kept)
        monkeypatch.setattr(snapshots, "encode", _slow_encode(snapshots.encode))
        names = workload.members(10)
        flow = workload.OrderFlow(open_products(rt.engine), names, seed=7, first_order_id=rt.engine.next_order_id)
        stream = flow.stream(10**6, 0)
        while not s.busy:  # trade until the next snapshot starts (in a child that hangs)
            await rt.submit(next(stream))
        child = s.pid
        os.kill(child, signal.SIGKILL)  # the snapshot process dies mid-way
        await until(lambda: not s.busy)
        assert s.failures == 1 and s.failed is not None
        assert [i.cmd_seq for i in await SnapshotStore(market.read_pool, "snap4").list()] == kept
        # the market went on, and the next try (after retry_s) succeeds
        monkeypatch.undo()
        s._next_try = 0.0
        for _ in range(50):
            await rt.submit(next(stream))
        await _settled(market)
        after = [i.cmd_seq for i in await SnapshotStore(market.read_pool, "snap4").list()]
        assert len(after) == len(kept) + 1 and s.failed is None

        # A stop while a snapshot is being encoded: it is killed, nothing of it is stored.
        monkeypatch.setattr(snapshots, "encode", _slow_encode(snapshots.encode))
        while not s.busy:
            await rt.submit(next(stream))
        child = s.pid
        before = market.engine.state_hash()
    finally:
        await market.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(child, os.WNOHANG)  # killed and reaped by close()
    market = await open_test_market(pg_dsn, "snap4", snapshot_every_commands=0)
    try:
        assert [i.cmd_seq for i in await SnapshotStore(market.read_pool, "snap4").list()] == after
        assert market.runtime.recovered_from == after[-1]
        assert market.engine.state_hash() == before
    finally:
        await market.close()


class _Store:
    market_id = "fake"

    def __init__(self):
        self.written = []

    async def write(self, enc):
        self.written.append(enc)


async def test_a_snapshot_is_stored_only_once_its_command_is_committed():
    engine = MarketEngine(MarketConfig())
    for c in workload.registrations(workload.members(3), 0):
        engine.process(c)
    store, committed = _Store(), [0]
    s = snapshots.Snapshotter(store, every_commands=3)  # type: ignore[arg-type]
    assert s.due(3) and not s.due(2)
    s.capture(engine, 3, engine.now, lambda: committed[0])
    assert s.busy and not s.due(3)
    await asyncio.sleep(0.5)  # the child is done long before: the snapshot waits for the commit
    assert s.busy and store.written == []
    committed[0] = 3
    await until(lambda: not s.busy)
    (enc,) = store.written
    assert enc.cmd_seq == 3 and enc.state_hash == engine.state_hash() and s.last_snapshot == 3
    restored = snapshots.decode(enc.state, enc.digest, enc.state_hash)
    assert restored.export_state() == engine.export_state()
    assert not s.due(4) and s.due(6)

    # the market stops before the command is committed: the snapshot gives up, nothing stored
    committed[0] = 5
    s.capture(engine, 6, engine.now, lambda: committed[0])
    await asyncio.sleep(0.2)
    committed[0] = -1
    await until(lambda: not s.busy)
    assert len(store.written) == 1 and s.failures == 1 and "stopped" in str(s.failed)
