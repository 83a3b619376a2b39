"""Shared fixtures.

``pg_dsn`` (session): a real PostgreSQL, migrated to head. By default an
embedded server in a fresh directory under the per-user data dir (never inside
the checkout: as root the embedded server chowns its data dir and widens parent
permissions); set VOLTBOURSE_TEST_DATABASE_URL to use an existing server instead
(its tables are dropped and recreated by the migrations, so point it at a scratch DB).

``pool`` (function): an asyncpg pool (json/jsonb codecs) on ``pg_dsn`` with all
tables truncated before the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import platformdirs
import pytest

from exchange.runtime.db import EmbeddedPostgres, create_pool, upgrade

# Servers built by tests run without on-chain settlement unless a test turns it on
# (tests/test_settlement_*.py do): an EVM per test server would only cost time.
os.environ.setdefault("VOLTBOURSE_SETTLEMENT_ENABLED", "false")


def test_data_root() -> Path:
    """Per-user directory under which tests create their PostgreSQL data dirs."""
    return platformdirs.user_data_path("voltbourse")


test_data_root.__test__ = False  # not a test


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    external = os.environ.get("VOLTBOURSE_TEST_DATABASE_URL")
    if external:
        upgrade(external)
        yield external
        return
    pgdata = test_data_root() / f"test-pg-{os.getpid()}"
    shutil.rmtree(pgdata, ignore_errors=True)
    pg = EmbeddedPostgres(pgdata).start()
    try:
        upgrade(pg.dsn)
        yield pg.dsn
    finally:
        pg.stop()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator:
    pool = await create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        # every table of the schema: the runtime's and every subsystem's
        names = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                                 "AND tablename <> 'alembic_version'")
        await pool.execute("TRUNCATE " + ", ".join(sorted(r[0] for r in names)))
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def scratch_pgdata() -> Iterator[Path]:
    """A fresh, not yet existing pgdata path under the per-user data dir; removed afterwards."""
    base = test_data_root()
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"test-pg-scratch-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)
