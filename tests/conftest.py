"""Shared fixtures (the helpers behind them are in tests/support, importable as ``support``).

Tests are split by kind, each module marked with its kind (``pytestmark``; checked below
against its folder): ``unit/`` (pure: no database, no server, no EVM; ``pytest -m unit``),
``integration/`` (a real PostgreSQL, the in-process EVM or one in-process server) and
``e2e/`` (whole flows: demo, bots, the browser, crash and restart of real processes).

``pg_dsn`` (session): a real PostgreSQL, migrated to head. By default an
embedded server in a fresh directory under the per-user data dir (never inside
the checkout: as root the embedded server chowns its data dir and widens parent
permissions); set VOLTBOURSE_TEST_DATABASE_URL to use an existing server instead
(its tables are dropped and recreated by the migrations, so point it at a scratch DB).
Started only when a selected test needs it.

``pool`` (function): an asyncpg pool (json/jsonb codecs) on ``pg_dsn`` with all
tables truncated before the test.

``serve`` (function): starts test servers on the emptied database,
``async with serve(**options) as server`` (options of ``support.server.serve``: market id,
clock, members and how they are registered, settings overrides); ``server``: one such
server for the test. The module's (or test's) ``server`` marker gives both their default
options, e.g. ``pytest.mark.server(market_id="ws", members=KEYS[:3])``.

``http``: an aiohttp client session. ``artifacts`` (session): the contracts compiled from
contracts/src; ``chain``: a fresh in-process EVM with them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import platformdirs
import pytest
from support.server import serve as serve_test_server

from exchange.runtime.db import EmbeddedPostgres, create_pool, upgrade
from settlement.chain import Chain
from settlement.compiler import compile_contracts

# Servers built by tests run without on-chain settlement unless a test turns it on
# (the settlement tests do): an EVM per test server would only cost time.
os.environ.setdefault("VOLTBOURSE_SETTLEMENT_ENABLED", "false")
# ... and when they turn it on, on a chain in memory (a test that checks the chain on disk
# sets its own directory): nothing is left behind, no two tests meet on one directory.
os.environ.setdefault("VOLTBOURSE_CHAIN_DATA_DIR", "ephemeral")

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test carries exactly the kind marker of the folder it lives in."""
    wrong = []
    for item in items:
        where = item.path.resolve().relative_to(TESTS).parts[0] if item.path.resolve().is_relative_to(TESTS) else None
        kinds = sorted({m.name for m in item.iter_markers() if m.name in KINDS})
        if kinds != [where]:
            wrong.append(f"{item.nodeid}: in {where!r}, marked {kinds}")
    if wrong:
        raise pytest.UsageError("tests must live in tests/{unit,integration,e2e}/ and be marked with that kind "
                                "(pytestmark = pytest.mark.<kind>):\n  " + "\n  ".join(wrong))


def test_data_root() -> Path:
    """Per-user directory under which tests create their PostgreSQL data dirs."""
    return platformdirs.user_data_path("voltbourse")


test_data_root.__test__ = False  # not a test


# --------------------------------------------------------------------------- PostgreSQL


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


# --------------------------------------------------------------------------- servers


@pytest.fixture
def serve(request: pytest.FixtureRequest, pool, pg_dsn: str):
    """``async with serve(**options) as server``: a test server on the emptied database;
    ``options`` over those of the closest ``server`` marker."""
    marker = request.node.get_closest_marker("server")
    defaults = dict(marker.kwargs) if marker else {}

    def start(**options):
        return serve_test_server(pg_dsn, **{**defaults, **options})

    return start


@pytest.fixture
async def server(serve):
    """A test server with the options of the closest ``server`` marker."""
    async with serve() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# --------------------------------------------------------------------------- settlement


@pytest.fixture(scope="session")
def artifacts():
    """The contracts compiled from contracts/src (py-solc-x over the npm solc shim)."""
    return compile_contracts()


@pytest.fixture
def chain(artifacts) -> Chain:
    """A fresh in-process EVM (eth-tester/py-evm) with the compiled contracts."""
    return Chain.in_process(artifacts=artifacts)
