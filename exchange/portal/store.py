"""The member portal's tables (``portal_nonces``, ``portal_sessions``): no other module
reads or writes them. Sessions are keyed by the SHA-256 of their id: the id itself (the
cookie's value) is never stored."""

from __future__ import annotations

from datetime import datetime, timedelta

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
