"""The database edge against a real (embedded) PostgreSQL: no mocks."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import asyncpg
import psutil
import pytest
from support.pgproc import alembic_head, dead_pid, kill_leftover, postmaster_pid, wait_gone

from exchange.flexibility.migrations import TABLES as FLEX_TABLES
from exchange.metering.migrations import TABLES as METERING_TABLES
from exchange.portal.migrations import TABLES as PORTAL_TABLES
from exchange.runtime.db import (
    CORE_TABLES,
    EMBEDDED_SERVER_SETTINGS,
    EmbeddedPostgres,
    create_pool,
    current_revision,
    downgrade,
    upgrade,
)
from settlement.migrations import TABLES as SETTLEMENT_TABLES

pytestmark = pytest.mark.integration

# the schema: the runtime's tables and every subsystem's (each owns its migrations)
TABLES = CORE_TABLES + SETTLEMENT_TABLES + FLEX_TABLES + METERING_TABLES + PORTAL_TABLES
HEAD = alembic_head()


async def table_names(conn) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


# --------------------------------------------------------------------------- session server


async def test_embedded_postgres_starts(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert conn.get_server_version().major == 18 or "VOLTBOURSE_TEST_DATABASE_URL" in os.environ
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


@pytest.mark.skipif("VOLTBOURSE_TEST_DATABASE_URL" in os.environ, reason="an external server is its DBA's to tune")
async def test_embedded_postgres_server_settings(pg_dsn: str) -> None:
    """The embedded server runs with EMBEDDED_SERVER_SETTINGS (new WAL segments not zero-filled
    on the commit path), kept in its data directory for its next start."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        for name, value in EMBEDDED_SERVER_SETTINGS.items():
            # a backend sees the reloaded configuration once the postmaster has signalled it (SIGHUP)
            for _ in range(50):
                if await conn.fetchval("SELECT setting FROM pg_settings WHERE name = $1", name) == value:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT setting FROM pg_settings WHERE name = $1", name) == value
            assert await conn.fetchval("SELECT setting FROM pg_file_settings WHERE name = $1 AND applied",
                                       name) == value
    finally:
        await conn.close()


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


async def test_truncated_between_tests(pool) -> None:
    for table in TABLES:
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0


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


async def test_upgrade_callable_inside_event_loop(pg_dsn: str) -> None:
    upgrade(pg_dsn)  # already at head: a no-op, but must not trip over the running loop
    assert current_revision(pg_dsn) == HEAD


# --------------------------------------------------------------------------- own servers


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


async def _select_one(dsn: str) -> int:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        return await pool.fetchval("SELECT 1")
    finally:
        await pool.close()
