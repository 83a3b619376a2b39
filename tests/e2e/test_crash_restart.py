"""Crash and restart of real processes: a market process killed with SIGKILL mid-load
(tests/e2e/_crash_child.py) recovers every acknowledged order and nothing twice; an
embedded PostgreSQL whose starter (or the server itself) was killed -9 is reused or
restarted by the next start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest
from support.market import assert_full_replay_reaches, open_test_market
from support.paths import ROOT, TESTS
from support.pgproc import alembic_head, kill_leftover, postmaster_pid, wait_gone

from exchange.runtime.db import EmbeddedPostgres, current_revision, upgrade

pytestmark = pytest.mark.e2e

CRASH_CHILD = Path(__file__).resolve().parent / "_crash_child.py"


# ------------------------------------------------------------------ the market process (journal)


@pytest.mark.slow
async def test_sigkill_mid_load_loses_no_ack_and_duplicates_nothing(pool, pg_dsn):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))  # the checkout, `support`
    proc = subprocess.Popen([sys.executable, str(CRASH_CHILD), pg_dsn, "crash"],
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

    market = await open_test_market(pg_dsn, "crash")  # replays and verifies every event
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


@pytest.mark.slow
async def test_sigkill_while_a_snapshot_is_taken_recovers_from_the_previous_one(pool, pg_dsn):
    """The market process is killed -9 while its snapshot process encodes: the snapshot
    process dies with it, nothing of that snapshot is stored, and recovery from the previous
    one reaches exactly the state of a full replay, every acknowledged order kept."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    proc = subprocess.Popen([sys.executable, str(CRASH_CHILD), pg_dsn, "snapcrash", "snapshots"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    acks: set[str] = set()
    snapping = None
    try:
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        deadline = time.monotonic() + 60
        while snapping is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("ACK "):
                acks.add(line.split()[1])
            elif line.startswith("SNAPPING "):
                snapping = int(line.split()[1]), int(line.split()[2])
        assert snapping is not None, "no snapshot was started"
        os.kill(proc.pid, signal.SIGKILL)
        at, snap_pid = snapping
        # (before reading the rest: a snapshot process left alive would hold the pipe open)
        assert wait_gone(snap_pid, 5), "the snapshot process outlived the market it was taken from"
        acks.update(x.split()[1] for x in proc.stdout.read().splitlines() if x.startswith("ACK "))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    stored = [r["cmd_seq"] for r in await pool.fetch(
        "SELECT cmd_seq FROM snapshots WHERE market_id = 'snapcrash' ORDER BY cmd_seq")]
    assert len(stored) >= 2 and stored[-1] < at  # the interrupted one is not there

    market = await open_test_market(pg_dsn, "snapcrash", snapshot_every_commands=0)
    try:
        assert market.runtime.recovered_from == stored[-1]
        recovered = market.engine.state_hash()
        by_coid = {c for (_, c) in market.engine.client_ids}
        assert acks and acks <= by_coid, "acknowledged orders lost"
    finally:
        await market.close()
    await assert_full_replay_reaches(pg_dsn, "snapcrash", recovered)


# ------------------------------------------------------------------ the embedded PostgreSQL


@pytest.mark.slow
def test_restart_after_kill_9(scratch_pgdata: Path) -> None:
    """A process holding the server dies with SIGKILL; the next one reuses the server and can stop it."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from exchange.runtime.db import EmbeddedPostgres\n"
            "pg = EmbeddedPostgres(sys.argv[1]).start()\n"
            "print(pg.dsn, flush=True)\n"
            "time.sleep(300)\n",
            str(scratch_pgdata),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        dsn = child.stdout.readline().strip()
        assert dsn.startswith("postgresql://"), dsn
        server_pid = postmaster_pid(scratch_pgdata)
        child.kill()
        child.wait()
        assert psutil.pid_exists(server_pid)  # the server outlives its starter
        assert child.pid in json.loads((scratch_pgdata / ".handle_pids.json").read_text())

        pg = EmbeddedPostgres(scratch_pgdata).start()
        assert postmaster_pid(scratch_pgdata) == server_pid  # attached to the running server
        assert pg.dsn == dsn
        upgrade(pg.dsn)
        assert current_revision(pg.dsn) == alembic_head()
        pg.stop()
        assert wait_gone(server_pid), "server not stopped: stale handle kept it alive"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        kill_leftover(scratch_pgdata)


@pytest.mark.slow
def test_embedded_postgres_restarts_after_being_killed(tmp_path):
    """kill -9 of the server and of the process that started it, with their lock files left
    naming a pid that still looks alive (an unreaped zombie): the next start runs."""
    pgdata = tmp_path / "pg"
    child = subprocess.run([sys.executable, "-c", (
        "import sys; from exchange.runtime.db import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres(sys.argv[1], cleanup_mode=None).start()\n"
        "print(open(sys.argv[1] + '/postmaster.pid').read().split()[0])\n"
        "import os; os._exit(0)  # gone without releasing anything, as after a SIGKILL\n"), str(pgdata)],
        capture_output=True, text=True, timeout=120, check=True)
    postmaster = int(child.stdout.split()[-1])
    os.kill(postmaster, signal.SIGKILL)
    for _ in range(200):
        try:
            os.kill(postmaster, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    locks = list(pgdata.glob(".s.PGSQL.*.lock"))
    assert locks, "the killed server left its socket lock"
    # Without an init to reap it, a killed server lingers as a zombie, which kill(pid, 0)
    # (PostgreSQL's check) takes for alive: a zombie's pid stands for the dead server.
    squatter = subprocess.Popen(["true"])
    time.sleep(0.3)  # exited, not waited for: a zombie
    for f in (pgdata / "postmaster.pid", *locks):
        lines = f.read_text().splitlines()
        f.write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
    try:
        again = EmbeddedPostgres(pgdata, cleanup_mode="stop").start()
    finally:
        squatter.kill()
        squatter.wait()
    try:
        async def ping() -> int:
            conn = await asyncpg.connect(again.dsn)
            try:
                return int(await conn.fetchval("SELECT 1"))
            finally:
                await conn.close()
        assert asyncio.run(ping()) == 1
    finally:
        again.stop()
