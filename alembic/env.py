"""Alembic environment for Voltbourse: async (asyncpg) migrations, plain SQL.

The database URL comes from, in order: ``config.attributes["dsn"]`` (set by
exchange.runtime.db.upgrade), the ``sqlalchemy.url`` main option, ``-x dsn=...`` on the
alembic command line, or the VOLTBOURSE_DATABASE_URL environment variable.
A plain ``postgresql://`` DSN (asyncpg style, including the embedded server's
unix-socket form ``postgresql://postgres:@/postgres?host=/dir``) is turned
into a ``postgresql+asyncpg://`` SQLAlchemy URL.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context

config = context.config

# Only when run through the alembic CLI with alembic.ini; the service keeps its own logging.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None  # migrations are hand-written SQL


def _dsn() -> str:
    dsn = (
        config.attributes.get("dsn")
        or config.get_main_option("sqlalchemy.url")
        or context.get_x_argument(as_dictionary=True).get("dsn")
        or os.environ.get("VOLTBOURSE_DATABASE_URL")
    )
    if not dsn:
        raise RuntimeError("no database URL: pass -x dsn=postgresql://... or set VOLTBOURSE_DATABASE_URL")
    return dsn


def sqlalchemy_url(dsn: str):
    """postgresql://... (any driver) -> postgresql+asyncpg://... as a SQLAlchemy URL."""
    url = make_url(dsn)
    if url.get_backend_name() not in ("postgresql", "postgres"):
        raise RuntimeError(f"unsupported database URL scheme {url.drivername!r}: PostgreSQL only")
    return url.set(drivername="postgresql+asyncpg")


def run_migrations_offline() -> None:
    context.configure(
        url=sqlalchemy_url(_dsn()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async_migrations() -> None:
    engine = create_async_engine(sqlalchemy_url(_dsn()), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    asyncio.run(_run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
