"""Scratch databases for benchmarks: run a coroutine against a migrated database, by
default a fresh embedded PostgreSQL in a temporary directory removed afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exchange.core.units import to_us
from exchange.runtime.config import load_settings
from exchange.runtime.db import EmbeddedPostgres, upgrade
from exchange.runtime.service import run_async

BENCH_T0 = to_us(datetime(2026, 11, 21, 8, 0, tzinfo=UTC))  # day-ahead products of 2026-11-22 are open


def run_on_database(make_coro: Callable[[str], Awaitable[Any]], dsn: str | None = None,
                    prefix: str = "bench-") -> Any:
    """Run ``make_coro(dsn)`` against ``dsn`` (migrated first), or against a fresh embedded
    PostgreSQL in a temporary directory under the data dir, removed afterwards."""
    if dsn is not None:
        upgrade(dsn)
        return run_async(make_coro(dsn))
    base = load_settings().data_dir
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        with EmbeddedPostgres(tmp / "pg") as pg:
            upgrade(pg.dsn)
            return run_async(make_coro(pg.dsn))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
