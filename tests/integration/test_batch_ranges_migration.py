"""Migration 0012s: batch membership moves from the runtime's ``trades.batch_id`` to the
batches' own trade-id ranges, and back on downgrade, with the data of a running market.
Real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from exchange.runtime.db import downgrade, upgrade
from settlement.worker import batch_trades, pending_trades

pytestmark = pytest.mark.integration

MARKET = "ranges"


async def _columns(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'trades'")}


def test_batch_membership_moves_to_ranges_and_back(pg_dsn: str) -> None:
    async def before() -> None:  # at 0011s: two batches marked on the trades, two trades pending
        conn = await asyncpg.connect(pg_dsn)
        try:
            now = datetime.now(UTC)
            await conn.executemany(
                "INSERT INTO trades (market_id, trade_id, seq, product_id, delivery_start, buyer, seller, "
                "buy_order_id, sell_order_id, energy_wh, price_ticks, ts, batch_id) "
                "VALUES ($1, $2, $2, 'p', $3, '0xb', '0xs', 1, 2, 100, 9000, $3, $4)",
                [(MARKET, i, now, 1 if 1 <= i <= 3 else 2 if 4 <= i <= 5 else -1 if i < 1 else None)
                 for i in range(-1, 8)])
            await conn.executemany(
                "INSERT INTO settlement_batches (market_id, batch_id, first_trade_id, last_trade_id, trade_count, "
                "first_seq, last_seq, root, nets, state) VALUES ($1, $2, $3, $4, $5, $3, $4, '0x00', '[]', 'prepared')",
                [(MARKET, 1, 1, 3, 3), (MARKET, 2, 4, 5, 2)])
        finally:
            await conn.close()

    async def after_upgrade() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert "batch_id" not in await _columns(conn)
            assert await pending_trades(conn, MARKET) == 2  # 6 and 7; never the historic -1 and 0
            assert [t.trade_id for t in await batch_trades(conn, MARKET, 1)] == [1, 2, 3]
            assert [t.trade_id for t in await batch_trades(conn, MARKET, 2)] == [4, 5]
        finally:
            await conn.close()

    async def after_downgrade() -> list[tuple[int, int | None]]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch("SELECT trade_id, batch_id FROM trades WHERE market_id = $1 ORDER BY trade_id",
                                    MARKET)
            return [(r["trade_id"], r["batch_id"]) for r in rows]
        finally:
            await conn.close()

    async def clean() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DELETE FROM settlement_batches WHERE market_id = $1", MARKET)
            await conn.execute("DELETE FROM trades WHERE market_id = $1", MARKET)
        finally:
            await conn.close()

    downgrade(pg_dsn, "0011s")
    try:
        asyncio.run(before())
        upgrade(pg_dsn)
        asyncio.run(after_upgrade())
        downgrade(pg_dsn, "0011s")
        assert asyncio.run(after_downgrade()) == [(-1, -1), (0, -1), (1, 1), (2, 1), (3, 1), (4, 2), (5, 2),
                                                  (6, None), (7, None)]
    finally:
        upgrade(pg_dsn)
        asyncio.run(clean())


def test_the_upgrade_refuses_ranges_that_do_not_match_the_marks(pg_dsn: str) -> None:
    """A trade left unmarked inside a batch's range (or marked with a batch that does not hold
    it, or overlapping ranges): the upgrade refuses, naming it, and changes nothing."""

    async def run(sql: str, *args) -> object:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    now = datetime.now(UTC)
    downgrade(pg_dsn, "0011s")
    try:
        asyncio.run(run(
            "INSERT INTO trades (market_id, trade_id, seq, product_id, delivery_start, buyer, seller, buy_order_id, "
            "sell_order_id, energy_wh, price_ticks, ts, batch_id) SELECT $1, i, i, 'p', $2, '0xb', '0xs', 1, 2, 100, "
            "9000, $2, CASE WHEN i = 2 THEN NULL ELSE 1 END FROM generate_series(1, 3) i", MARKET, now))
        asyncio.run(run(
            "INSERT INTO settlement_batches (market_id, batch_id, first_trade_id, last_trade_id, trade_count, "
            "first_seq, last_seq, root, nets, state) VALUES ($1, 1, 1, 3, 3, 1, 3, '0x00', '[]', 'prepared')", MARKET))
        with pytest.raises(RuntimeError, match=f"trades in no batch below a later batch: market {MARKET} #2"):
            upgrade(pg_dsn)
        cols = asyncio.run(run("SELECT column_name FROM information_schema.columns WHERE table_name = 'trades' "
                               "AND column_name = 'batch_id'"))
        assert len(cols) == 1  # nothing dropped
        asyncio.run(run("UPDATE trades SET batch_id = 1 WHERE market_id = $1", MARKET))
        asyncio.run(run("INSERT INTO settlement_batches (market_id, batch_id, first_trade_id, last_trade_id, "
                        "trade_count, first_seq, last_seq, root, nets, state) "
                        "VALUES ($1, 2, 3, 3, 1, 3, 3, '0x00', '[]', 'prepared')", MARKET))
        with pytest.raises(RuntimeError, match=f"overlapping ranges: market {MARKET} #2"):
            upgrade(pg_dsn)
    finally:
        asyncio.run(run("DELETE FROM settlement_batches WHERE market_id = $1", MARKET))
        asyncio.run(run("DELETE FROM trades WHERE market_id = $1", MARKET))
        upgrade(pg_dsn)
