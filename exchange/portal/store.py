"""The member portal's tables (``portal_nonces``, ``portal_sessions``, ``portal_agent_keys``,
``portal_delegations``): no other module
reads or writes them. Sessions are keyed by the SHA-256 of their id: the id itself (the
cookie's value) is never stored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from exchange.protocol.siwe import SIWE_EXPIRED, SIWE_NONCE_UNKNOWN, SIWE_NONCE_USED


class PortalStore:
    def __init__(self, pool: asyncpg.Pool, market_id: str) -> None:
        self.pool = pool
        self.market_id = market_id

    # ------------------------------------------------------------------ nonces
    async def issue_nonce(self, nonce: str, issued_at: datetime, expires_at: datetime, max_open: int) -> bool:
        """Store a new nonce; False (nothing stored) when ``max_open`` unused, unexpired nonces
        exist already (nonces are asked for without signing in: their number stays bounded)."""
        async with self.pool.acquire() as conn:
            open_now = await conn.fetchval(
                "SELECT count(*) FROM portal_nonces WHERE market_id = $1 AND used_at IS NULL AND expires_at > $2",
                self.market_id, issued_at)
            if open_now >= max_open:
                return False
            await conn.execute("INSERT INTO portal_nonces (market_id, nonce, issued_at, expires_at) "
                               "VALUES ($1, $2, $3, $4)", self.market_id, nonce, issued_at, expires_at)
        return True

    async def sign_in(self, nonce: str | None, now: datetime, sid_hash: str, member: str, via: str,
                      expires_at: datetime, user_agent: str) -> str | None:
        """Use ``nonce`` (None: a demo sign-in, no nonce) and create the session, in one
        transaction; the refusal's code (unknown, used or expired nonce) and nothing done
        otherwise."""
        async with self.pool.acquire() as conn, conn.transaction():
            if nonce is not None:
                row = await conn.fetchrow("SELECT expires_at, used_at FROM portal_nonces WHERE market_id = $1 "
                                          "AND nonce = $2 FOR UPDATE", self.market_id, nonce)
                if row is None:
                    return SIWE_NONCE_UNKNOWN
                if row["used_at"] is not None:
                    return SIWE_NONCE_USED
                if row["expires_at"] <= now:
                    return SIWE_EXPIRED
                await conn.execute("UPDATE portal_nonces SET used_at = $3 WHERE market_id = $1 AND nonce = $2",
                                   self.market_id, nonce, now)
            await conn.execute(
                "INSERT INTO portal_sessions (market_id, sid_hash, member, via, created_at, expires_at, user_agent) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)", self.market_id, sid_hash, member, via, now, expires_at,
                user_agent[:300])
        return None

    # ------------------------------------------------------------------ sessions
    async def session(self, sid_hash: str, now: datetime) -> asyncpg.Record | None:
        """The live session (not revoked, not expired) with this hash: member, via, created_at,
        expires_at."""
        row: asyncpg.Record | None = await self.pool.fetchrow(
            "SELECT member, via, created_at, expires_at FROM portal_sessions WHERE market_id = $1 AND sid_hash = $2 "
            "AND revoked_at IS NULL AND expires_at > $3", self.market_id, sid_hash, now)
        return row

    async def revoke(self, sid_hash: str, now: datetime) -> bool:
        done = await self.pool.fetchval(
            "UPDATE portal_sessions SET revoked_at = $3 WHERE market_id = $1 AND sid_hash = $2 AND revoked_at IS NULL "
            "RETURNING true", self.market_id, sid_hash, now)
        return bool(done)

    async def revoke_member(self, member: str, now: datetime) -> list[str]:
        """End every live session of ``member`` ("sign out everywhere"); their hashes."""
        rows = await self.pool.fetch(
            "UPDATE portal_sessions SET revoked_at = $3 WHERE market_id = $1 AND member = $2 AND revoked_at IS NULL "
            "AND expires_at > $3 RETURNING sid_hash", self.market_id, member, now)
        return [r["sid_hash"] for r in rows]

    async def purge(self, now: datetime, keep: timedelta) -> tuple[int, int]:
        """Forget nonces and sessions that ended more than ``keep`` ago; how many of each."""
        cutoff = now - keep
        async with self.pool.acquire() as conn:
            nonces = await conn.fetchval(
                "WITH d AS (DELETE FROM portal_nonces WHERE market_id = $1 AND expires_at < $2 RETURNING 1) "
                "SELECT count(*) FROM d", self.market_id, cutoff)
            sessions = await conn.fetchval(
                "WITH d AS (DELETE FROM portal_sessions WHERE market_id = $1 AND (expires_at < $2 OR revoked_at < $2) "
                "RETURNING 1) SELECT count(*) FROM d", self.market_id, cutoff)
        return int(nonces), int(sessions)

    # ------------------------------------------------------------------ the managed trading agent
    async def agent_key(self, member: str, make: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        """(address, private key) of ``member``'s agent key, made with ``make`` the first time."""
        row = await self.pool.fetchrow("SELECT address, private_key FROM portal_agent_keys WHERE market_id = $1 "
                                       "AND member = $2", self.market_id, member)
        if row is not None:
            return row["address"], row["private_key"]
        address, key = make()
        await self.pool.execute(
            "INSERT INTO portal_agent_keys (market_id, member, address, private_key) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT DO NOTHING", self.market_id, member, address, key)
        row = await self.pool.fetchrow("SELECT address, private_key FROM portal_agent_keys WHERE market_id = $1 "
                                       "AND member = $2", self.market_id, member)
        assert row is not None
        return row["address"], row["private_key"]

    async def put_delegation(self, delegation_id: str, member: str, delegate: str, message: dict[str, Any],
                             signature: str, expires_at: datetime, now: datetime) -> bool:
        """Store a delegation as the member's active one (the previous one, if any, ends).
        False, and nothing changed, when this delegation was revoked before: a revocation is
        for good (a signature kept by whoever saw it cannot switch the agent back on); the
        member signs a new one (its nonce makes it another)."""
        async with self.pool.acquire() as conn, conn.transaction():
            revoked = await conn.fetchval(
                "SELECT revoked_at IS NOT NULL FROM portal_delegations WHERE market_id = $1 AND delegation_id = $2 "
                "FOR UPDATE", self.market_id, delegation_id)
            if revoked:
                return False
            await conn.execute("UPDATE portal_delegations SET revoked_at = $3 WHERE market_id = $1 AND member = $2 "
                               "AND revoked_at IS NULL AND delegation_id <> $4", self.market_id, member, now,
                               delegation_id)
            await conn.execute(
                "INSERT INTO portal_delegations (market_id, delegation_id, member, delegate, message, signature, "
                "expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (market_id, delegation_id) DO NOTHING",
                self.market_id, delegation_id, member, delegate, message, signature, expires_at)
            return True

    async def revoke_delegation(self, member: str, now: datetime) -> str | None:
        """End the member's active delegation at once; its id (None: there was none)."""
        return await self.pool.fetchval(
            "UPDATE portal_delegations SET revoked_at = $3 WHERE market_id = $1 AND member = $2 AND revoked_at IS NULL "
            "RETURNING delegation_id", self.market_id, member, now)

    async def active_delegations(self, now: datetime, member: str | None = None) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT delegation_id, member, delegate, message, signature, expires_at, created_at FROM portal_delegations "
            "WHERE market_id = $1 AND revoked_at IS NULL AND expires_at > $2 AND ($3::text IS NULL OR member = $3) "
            "ORDER BY member", self.market_id, now, member)

    async def agent_order(self, order_id: int, member: str, delegation_id: str, product_id: str, side: str,
                          price: int, quantity: int, local_day: date) -> None:
        await self.pool.execute(
            "INSERT INTO portal_agent_orders (market_id, order_id, member, delegation_id, product_id, side, price, "
            "quantity, local_day) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
            self.market_id, order_id, member, delegation_id, product_id, side, price, quantity, local_day)

    async def agent_orders(self, member: str, since_day: date | None = None) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT order_id, delegation_id, product_id, side, price, quantity, local_day, placed_at "
            "FROM portal_agent_orders WHERE market_id = $1 AND member = $2 AND ($3::date IS NULL OR local_day >= $3) "
            "ORDER BY order_id", self.market_id, member, since_day)
