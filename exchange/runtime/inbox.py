"""The engine inbox: engine commands from outside the writer process, durable and applied
exactly once in effect.

A process that is not the market's single writer (the settlement process) cannot call
``MarketRuntime.submit``. It posts the command as a row of ``engine_inbox`` instead, in its
own transaction (so the row commits with whatever the poster records beside it), keyed by an
idempotency ``key`` of its choosing (``UNIQUE (market_id, key)``: posting a key again is a
no-op and returns the row already there), and notifies ``engine_inbox``. The writer process
runs one :class:`InboxConsumer` per market: woken by the notification (and by a slow poll, in
case one was missed while it reconnected), it reads the unapplied rows in ``inbox_id`` order,
submits them to the runtime in that order, and records each one's outcome (``applied_at``,
``applied_seq``, ``result``), then notifies ``engine_inbox_applied``. A poster that needs the
outcome (a withdrawal is allowed or refused by the engine) waits for it
(:meth:`InboxEngine.update_collateral`).

**Exactly once.** A crash of the writer between the journal's commit of a command and the
row's ``applied_at`` applies that row (and the rows after it) again at the next start, in the
same order. The commands allowed through the inbox are idempotent by construction:
``UpdateCollateral`` sets collateral to an absolute value, and its ``settled_payable`` is
applied only when its ``settlement_ref`` is above the member's last (a high-water mark kept in
the engine's state, journaled and replayed), so the second application of a row changes
nothing (a ``withdrawal`` is checked against the collateral the first one already set). The
only other kind is the read-only ``accounts`` query (the engine's view of members' accounts,
for the penalty cap and a redeployment), answered from the engine and never journaled.

:class:`DirectEngine` is the same port for a poster that lives in the writer's process (the
inline settlement worker): it submits straight to the runtime.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from exchange.core.ids import MemberId
from exchange.core.model import Rejected, UpdateCollateral, command_from_dict, command_to_dict
from exchange.runtime.market import MarketRuntime, MarketUnavailable
from exchange.runtime.ports import AccountView, CollateralUpdate

log = logging.getLogger(__name__)

CHANNEL = "engine_inbox"
APPLIED_CHANNEL = "engine_inbox_applied"
#: commands the inbox accepts (everything else is refused when applied)
ALLOWED = frozenset({UpdateCollateral.type})
QUERY = "accounts"  # a read of the engine's accounts (not a command; never journaled)
POLL_S = 1.0  # the consumer also looks this often (a notification lost while it reconnected)
BATCH = 500  # rows applied per round
KEEP_S = 7 * 86_400  # applied rows are kept this long (a key can be posted again within it as a no-op)


class EngineUnavailable(RuntimeError):
    """The writer process did not apply an inbox row in time (it is down, or busy)."""


def _outcome(events: list) -> dict[str, Any]:
    rej = next((ev for ev in events if type(ev) is Rejected), None)
    if rej is not None:
        return {"rejected": rej.reason, "detail": rej.detail}
    return {"ok": True}


def _accounts(runtime: MarketRuntime, members: list[str] | None) -> dict[str, list[int]]:
    accts = runtime.engine.accounts
    names = accts.keys() if members is None else [m for m in members if m in accts]
    return {m: [accts[MemberId(m)].collateral, accts[MemberId(m)].open_exposure, accts[MemberId(m)].net_payable]
            for m in names}


# ---------------------------------------------------------------------- posting side
async def post(conn: asyncpg.Connection | asyncpg.Pool, market_id: str, key: str, command: dict[str, Any]) -> int:
    """Insert the row (or find the one with this key) and notify; the row's ``inbox_id``.
    Given a connection inside a transaction, the row commits with that transaction."""
    rid = await conn.fetchval(
        "WITH ins AS (INSERT INTO engine_inbox (market_id, key, command) VALUES ($1, $2, $3) "
        "ON CONFLICT (market_id, key) DO NOTHING RETURNING inbox_id) "
        "SELECT inbox_id FROM ins UNION ALL SELECT inbox_id FROM engine_inbox WHERE market_id = $1 AND key = $2",
        market_id, key, command)
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, market_id)
    return int(rid)


async def post_many(pool: asyncpg.Pool, market_id: str, rows: Sequence[tuple[str, dict[str, Any]]]) -> list[int]:
    """:func:`post` for several ``(key, command)`` rows in one statement (one commit, one
    notification), inserted in the order given; their ``inbox_id`` in that order."""
    if not rows:
        return []
    keys = [k for k, _ in rows]
    if len(set(keys)) != len(keys):
        raise ValueError("engine inbox keys must be distinct within one post")
    async with pool.acquire() as conn, conn.transaction():
        found = await conn.fetch(
            "WITH input AS (SELECT k, c::jsonb AS c, i FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(k, c, i)), "
            "ins AS (INSERT INTO engine_inbox (market_id, key, command) SELECT $1, k, c FROM input ORDER BY i "
            "ON CONFLICT (market_id, key) DO NOTHING RETURNING key, inbox_id) "
            "SELECT input.i, coalesce(ins.inbox_id, e.inbox_id) AS inbox_id FROM input "
            "LEFT JOIN ins ON ins.key = input.k "
            "LEFT JOIN engine_inbox e ON e.market_id = $1 AND e.key = input.k ORDER BY input.i",
            market_id, keys, [orjson.dumps(c).decode() for _, c in rows])
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, market_id)
    return [int(r["inbox_id"]) for r in found]


async def wait_applied(pool: asyncpg.Pool, market_id: str, inbox_ids: list[int],
                       timeout: float = 30.0) -> dict[int, dict[str, Any]]:
    """The ``result`` of each row once applied (polled, 5 ms doubling to 200 ms); raises
    :class:`EngineUnavailable` after ``timeout`` (the rows stay and are applied later)."""
    end = time.monotonic() + timeout
    delay = 0.005
    while True:
        rows = await pool.fetch("SELECT inbox_id, result FROM engine_inbox WHERE market_id = $1 "
                                "AND inbox_id = ANY($2::bigint[]) AND applied_at IS NOT NULL", market_id, inbox_ids)
        if len(rows) == len(set(inbox_ids)):
            return {r["inbox_id"]: r["result"] for r in rows}
        if time.monotonic() >= end:
            raise EngineUnavailable(f"the exchange did not apply engine inbox rows {sorted(inbox_ids)[:5]} of market "
                                    f"{market_id!r} within {timeout:g} s (is `voltbourse serve` running?); they stay "
                                    "queued and are applied when it is")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)


def _command(u: CollateralUpdate) -> UpdateCollateral:
    return collateral_command(u.member, u.collateral, u.settled_payable, u.settlement_ref, u.withdrawal)


def _refusal(outcome: dict[str, Any]) -> str | None:
    """The port's answer from a row's outcome: None if applied, else ``"REASON: detail"``."""
    return None if outcome.get("ok") else f"{outcome.get('rejected')}: {outcome.get('detail')}"


def collateral_command(member: str, collateral: int, settled_payable: int, settlement_ref: int,
                       withdrawal: int) -> UpdateCollateral:
    return UpdateCollateral(0, member=MemberId(member), collateral=collateral, settled_payable=settled_payable,
                            settlement_ref=settlement_ref, withdrawal=withdrawal)


class InboxEngine:
    """The engine port (exchange.runtime.ports.EngineCommands) of a process that is not the
    market's writer: every command is an inbox row, every answer the row's result."""

    def __init__(self, pool: asyncpg.Pool, market_id: str, *, timeout: float = 30.0) -> None:
        self.pool, self.market_id, self.timeout = pool, market_id, timeout

    async def update_collateral(self, key: str | None, member: str, collateral: int, *, settled_payable: int = 0,
                                settlement_ref: int = 0, withdrawal: int = 0) -> str | None:
        return (await self.update_collaterals([CollateralUpdate(
            key or f"refresh:{uuid.uuid4()}", member, collateral, settled_payable, settlement_ref, withdrawal)]))[0]

    async def update_collaterals(self, updates: Sequence[CollateralUpdate]) -> list[str | None]:
        rids = await post_many(self.pool, self.market_id, [(u.key, command_to_dict(_command(u))) for u in updates])
        results = await wait_applied(self.pool, self.market_id, rids, self.timeout) if rids else {}
        return [_refusal(results[r]) for r in rids]

    async def accounts(self, members: list[str] | None = None) -> dict[str, AccountView]:
        rid = await post(self.pool, self.market_id, f"query:{uuid.uuid4()}", {"type": QUERY, "members": members})
        res = (await wait_applied(self.pool, self.market_id, [rid], self.timeout))[rid]
        await self.pool.execute("DELETE FROM engine_inbox WHERE market_id = $1 AND inbox_id = $2", self.market_id, rid)
        return {m: AccountView(collateral=v[0], open_exposure=v[1], net_payable=v[2]) for m, v in res.items()}


class DirectEngine:
    """The same port inside the writer's process (inline settlement): straight to the runtime."""

    def __init__(self, runtime: MarketRuntime) -> None:
        self.runtime = runtime

    async def update_collateral(self, key: str | None, member: str, collateral: int, *, settled_payable: int = 0,
                                settlement_ref: int = 0, withdrawal: int = 0) -> str | None:
        return (await self.update_collaterals([CollateralUpdate(
            key or "", member, collateral, settled_payable, settlement_ref, withdrawal)]))[0]

    async def update_collaterals(self, updates: Sequence[CollateralUpdate]) -> list[str | None]:
        # the tasks start in the order given and queue their command at once: applied in that order
        results = await asyncio.gather(*(self.runtime.submit(_command(u)) for u in updates))
        return [_refusal(_outcome(res.events)) for res in results]

    async def accounts(self, members: list[str] | None = None) -> dict[str, AccountView]:
        return {m: AccountView(collateral=v[0], open_exposure=v[1], net_payable=v[2])
                for m, v in _accounts(self.runtime, members).items()}


# ---------------------------------------------------------------------- consuming side
class InboxConsumer:
    """Applies a market's inbox rows to its runtime, in order (one task in the writer's process)."""

    def __init__(self, runtime: MarketRuntime, pool: asyncpg.Pool, market_id: str, dsn: str | None = None, *,
                 poll_s: float = POLL_S) -> None:
        self.runtime, self.pool, self.market_id, self.dsn = runtime, pool, market_id, dsn
        self.poll_s = poll_s
        self.applied = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._pruned_at = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"engine-inbox-{self.market_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._unlisten()

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.market_id:
            self._wake.set()

    async def _listen(self) -> None:
        if self.dsn is None or self._listener is not None:
            return
        try:
            conn = await asyncpg.connect(self.dsn)
            await conn.add_listener(CHANNEL, self._notified)
            self._listener = conn
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("engine inbox %s: LISTEN failed (%s); polling every %g s", self.market_id, exc, self.poll_s)

    async def _unlisten(self) -> None:
        if self._listener is not None:
            conn, self._listener = self._listener, None
            try:
                await conn.close(timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                conn.terminate()

    async def run(self) -> None:
        await self._listen()
        while True:
            try:
                while await self.apply_pending():
                    pass
                if time.monotonic() - self._pruned_at > 3600:
                    self._pruned_at = time.monotonic()
                    await self.pool.execute(
                        "DELETE FROM engine_inbox WHERE market_id = $1 AND applied_at < now() - make_interval(secs => $2)",
                        self.market_id, float(KEEP_S))
            except MarketUnavailable:
                return  # the market stopped: nothing more can be applied by this process
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("engine inbox %s: %s; retrying", self.market_id, exc)
                await self._unlisten()
            if self._listener is None or self._listener.is_closed():
                self._listener = None
                await self._listen()
            self._wake.clear()
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def apply_pending(self) -> bool:
        """Apply the next unapplied rows in order; True when there were some."""
        rows = await self.pool.fetch(
            "SELECT inbox_id, command FROM engine_inbox WHERE market_id = $1 AND applied_at IS NULL "
            "ORDER BY inbox_id LIMIT $2", self.market_id, BATCH)
        if not rows:
            return False
        # submitted in order (the queue keeps it) and committed in as few groups as the runtime makes
        futures: list[asyncio.Future[Any] | None] = []
        answers: dict[int, dict[str, Any]] = {}
        for r in rows:
            command = r["command"]
            if command.get("type") == QUERY:
                futures.append(None)
                continue
            if command.get("type") not in ALLOWED:
                answers[r["inbox_id"]] = {"rejected": "INVALID_COMMAND",
                                          "detail": f"{command.get('type')!r} is not accepted through the inbox"}
                futures.append(None)
                continue
            futures.append(asyncio.ensure_future(self.runtime.submit(command_from_dict(command))))
        done: list[tuple[Any, ...]] = []
        for r, fut in zip(rows, futures):
            rid = r["inbox_id"]
            if fut is None:
                if rid not in answers:  # a query: answered after the commands before it
                    answers[rid] = _accounts(self.runtime, r["command"].get("members"))
                done.append((self.market_id, rid, None, answers[rid]))
                continue
            res = await fut
            seq = res.events[-1].seq if res.cmd_seq and res.events else None
            done.append((self.market_id, rid, seq, _outcome(res.events)))
        await self.pool.executemany(
            "UPDATE engine_inbox SET applied_at = now(), applied_seq = $3, result = $4 "
            "WHERE market_id = $1 AND inbox_id = $2", done)
        await self.pool.execute("SELECT pg_notify($1, $2)", APPLIED_CHANNEL, self.market_id)
        self.applied += len(done)
        return True
