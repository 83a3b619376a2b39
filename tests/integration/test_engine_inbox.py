"""The engine inbox (exchange/runtime/inbox.py) against the real PostgreSQL and runtime:
collateral updates posted by another process — one at a time or several in one post —
are applied once per key, in the order posted, each answered with its own outcome."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from support.market import open_test_market

from exchange.core.model import RegisterMember
from exchange.runtime.inbox import CHANNEL, InboxEngine, post_many
from exchange.runtime.ports import CollateralUpdate

pytestmark = pytest.mark.integration

A, B = "0x" + "a1" * 20, "0x" + "b2" * 20


async def test_several_updates_in_one_post_applied_once_in_order(pool, pg_dsn):
    market = await open_test_market(pg_dsn, "inbox1")
    notes: list[str] = []
    listener = await asyncpg.connect(pg_dsn)
    await listener.add_listener(CHANNEL, lambda *a: notes.append(a[3]))
    try:
        for m in (A, B):
            await market.runtime.submit(RegisterMember(0, m, collateral=None, export_capacity_w=10**9))
        market.start_inbox()
        engine = InboxEngine(pool, "inbox1", timeout=20)
        updates = [CollateralUpdate("k1", A, 500), CollateralUpdate("k2", B, 700),
                   CollateralUpdate("k3", A, 900, settlement_ref=3),  # after k1: the last one stands
                   CollateralUpdate("k4", "0x" + "c3" * 20, 1)]  # not a member: refused, the others apply
        results = await engine.update_collaterals(updates)
        assert results[:3] == [None, None, None] and results[3] is not None and results[3].startswith("UNKNOWN")
        accts = market.engine.accounts
        assert accts[A].collateral == 900 and accts[B].collateral == 700
        await asyncio.sleep(0.1)
        assert notes == ["inbox1"]  # one notification for the whole post

        rows = await pool.fetch("SELECT key, applied_seq FROM engine_inbox WHERE market_id = 'inbox1' ORDER BY inbox_id")
        assert [r["key"] for r in rows] == ["k1", "k2", "k3", "k4"]
        seqs = [r["applied_seq"] for r in rows[:3]]
        assert seqs == sorted(seqs)  # applied in the order posted

        # posted again (a process that died before it saw the answers): a no-op with the first outcomes
        again = await engine.update_collaterals([CollateralUpdate("k2", B, 1), CollateralUpdate("k5", B, 800)])
        assert again == [None, None] and accts[B].collateral == 800
        assert await pool.fetchval("SELECT count(*) FROM engine_inbox WHERE market_id = 'inbox1'") == 5
        by_key = dict(await pool.fetch("SELECT key, inbox_id FROM engine_inbox WHERE market_id = 'inbox1'"))
        # existing keys: their rows' ids, in the order asked, nothing inserted
        assert await post_many(pool, "inbox1", [("k5", {}), ("k1", {})]) == [by_key["k5"], by_key["k1"]]
        with pytest.raises(ValueError, match="distinct"):
            await post_many(pool, "inbox1", [("k6", {}), ("k6", {})])
        assert await post_many(pool, "inbox1", []) == []
    finally:
        await listener.close()
        await market.close()
