"""The database edge against a real (embedded) PostgreSQL: no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import psutil
import pytest

from exchange.flexibility.migrations import TABLES as FLEX_TABLES
from exchange.runtime.config import load_settings
from exchange.runtime.db import (
    CORE_TABLES,
    EmbeddedPostgres,
    alembic_dir,
    clear_stale_handles,
    create_pool,
    current_revision,
    database,
    downgrade,
    upgrade,
)
from settlement.migrations import TABLES as SETTLEMENT_TABLES

# the schema: the runtime's tables and every subsystem's (each owns its migrations)
TABLES = CORE_TABLES + SETTLEMENT_TABLES + FLEX_TABLES


def _head() -> str:
    from alembic.script import ScriptDirectory

    from exchange.runtime.db import alembic_config

    return ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()


HEAD = _head()

integration = pytest.mark.integration


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def postmaster_pid(pgdata: Path) -> int | None:
    path = pgdata / "postmaster.pid"
    return int(path.read_text().splitlines()[0]) if path.exists() else None


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def kill_leftover(pgdata: Path) -> None:
    pid = postmaster_pid(pgdata)
    if pid and psutil.pid_exists(pid):
        psutil.Process(pid).kill()
        wait_gone(pid)


async def table_names(conn) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


# --------------------------------------------------------------------------- no server needed


def test_alembic_dir_is_the_repo_folder() -> None:
    d = alembic_dir()
    assert (d / "env.py").is_file()
    assert (d / "versions" / "0001_initial.py").is_file()


def test_database_uses_configured_url(tmp_path: Path) -> None:
    settings = load_settings(database_url="postgresql://u:p@db.invalid/x", data_dir=tmp_path)
    with database(settings) as dsn:
        assert dsn == "postgresql://u:p@db.invalid/x"
    assert not (tmp_path / "pg").exists()  # no embedded server was started


def test_clear_stale_handles(tmp_path: Path) -> None:
    handles = tmp_path / ".handle_pids.json"
    gone = dead_pid()
    handles.write_text(json.dumps([gone, os.getpid()]))
    assert clear_stale_handles(tmp_path) == [gone]
    assert json.loads(handles.read_text()) == [os.getpid()]
    handles.write_text(json.dumps([gone]))
    assert clear_stale_handles(tmp_path) == [gone]
    assert not handles.exists()
    handles.write_text("not json")
    clear_stale_handles(tmp_path)
    assert not handles.exists()


# --------------------------------------------------------------------------- session server


@integration
async def test_embedded_postgres_starts(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert conn.get_server_version().major == 18 or "VOLTBOURSE_TEST_DATABASE_URL" in os.environ
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


@integration
async def test_migration_creates_schema(pool) -> None:
    async with pool.acquire() as conn:
        assert await table_names(conn) == {*TABLES, "alembic_version"}
        cols = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name = 'journal' ORDER BY ordinal_position"
        )
        assert [(c["column_name"], c["data_type"], c["is_nullable"]) for c in cols] == [
            ("market_id", "text", "NO"),
            ("cmd_seq", "bigint", "NO"),
            ("first_seq", "bigint", "NO"),
            ("last_seq", "bigint", "NO"),
            ("ts", "timestamp with time zone", "NO"),
            ("command", "jsonb", "NO"),
            ("events", "jsonb", "NO"),
            ("committed_at", "timestamp with time zone", "NO"),
        ]
        indexes = {
            r["indexname"]: r["indexdef"]
            for r in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
        }
        assert "UNIQUE" in indexes["journal_last_seq"]
        assert "trades_product" in indexes
        assert {"markets_pkey", "journal_pkey", "trades_pkey", "consumer_cursors_pkey"} <= set(indexes)


@integration
async def test_jsonb_codec_and_constraints(pool) -> None:
    config = {"product_minutes": 60, "bounds": [-50000, 400000], "name": "Dorpsstraat €"}
    await pool.execute("INSERT INTO markets (market_id, config) VALUES ($1, $2)", "m1", config)
    assert await pool.fetchval("SELECT config FROM markets WHERE market_id = 'm1'") == config
    events = [{"type": "order_accepted", "seq": 1}, {"type": "trade", "seq": 2}]
    await pool.execute(
        "INSERT INTO journal (market_id, cmd_seq, first_seq, last_seq, ts, command, events)"
        " VALUES ('m1', 1, 1, 2, now(), $1, $2)",
        {"type": "submit"},
        events,
    )
    assert await pool.fetchval("SELECT events FROM journal") == events
    with pytest.raises(asyncpg.UniqueViolationError):  # journal_last_seq
        await pool.execute(
            "INSERT INTO journal (market_id, cmd_seq, first_seq, last_seq, ts, command, events)"
            " VALUES ('m1', 2, 2, 2, now(), '{}', '[]')"
        )
    with pytest.raises(asyncpg.CheckViolationError):  # energy_wh > 0
        await pool.execute(
            "INSERT INTO trades VALUES ('m1', 1, 2, 'p', now(), 'b', 's', 1, 2, 0, 100, now())"
        )


@integration
async def test_truncated_between_tests(pool) -> None:
    for table in TABLES:
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0


@integration
def test_downgrade_upgrade_roundtrip(pg_dsn: str) -> None:
    async def tables() -> set[str]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await table_names(conn)
        finally:
            await conn.close()

    assert current_revision(pg_dsn) == HEAD
    try:
        downgrade(pg_dsn, "base")
        assert current_revision(pg_dsn) is None
        assert asyncio.run(tables()) == {"alembic_version"}
    finally:
        upgrade(pg_dsn)
    assert current_revision(pg_dsn) == HEAD
    assert asyncio.run(tables()) == {*TABLES, "alembic_version"}


@integration
async def test_upgrade_callable_inside_event_loop(pg_dsn: str) -> None:
    upgrade(pg_dsn)  # already at head: a no-op, but must not trip over the running loop
    assert current_revision(pg_dsn) == HEAD


# --------------------------------------------------------------------------- own servers


@integration
def test_stale_handle_pids_removed_before_start(scratch_pgdata: Path) -> None:
    scratch_pgdata.mkdir()
    handles = scratch_pgdata / ".handle_pids.json"
    handles.write_text(json.dumps([dead_pid()]))
    pg = EmbeddedPostgres(scratch_pgdata)
    try:
        pg.start()
        assert json.loads(handles.read_text()) == [os.getpid()]
        server_pid = postmaster_pid(scratch_pgdata)
        assert server_pid and psutil.pid_exists(server_pid)
        pg.stop()
        # with the stale pid gone, releasing the last handle really stops the server
        assert wait_gone(server_pid)
        assert not (scratch_pgdata / "postmaster.pid").exists()
    finally:
        pg.stop()
        kill_leftover(scratch_pgdata)


@integration
def test_stale_postmaster_pid_is_handled(scratch_pgdata: Path) -> None:
    with EmbeddedPostgres(scratch_pgdata):
        pass  # initdb + start + stop
    # a half-written postmaster.pid of a dead process (the library would choke on it)
    (scratch_pgdata / "postmaster.pid").write_text(f"{dead_pid()}\n{scratch_pgdata}\n")
    try:
        with EmbeddedPostgres(scratch_pgdata) as pg:
            assert asyncio.run(_select_one(pg.dsn)) == 1
    finally:
        kill_leftover(scratch_pgdata)


@integration
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
        assert current_revision(pg.dsn) == HEAD
        pg.stop()
        assert wait_gone(server_pid), "server not stopped: stale handle kept it alive"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        kill_leftover(scratch_pgdata)


async def _select_one(dsn: str) -> int:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        return await pool.fetchval("SELECT 1")
    finally:
        await pool.close()
