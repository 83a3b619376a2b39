"""Group commit across markets: one journal transaction for the groups that the markets of
one process have ready at the same moment, so that the cost of a commit (its fsync) is
shared by every market instead of paid by each.

Each :class:`~exchange.runtime.market.MarketRuntime` given a ``committer`` hands it its group
(rows built from its own engine) and waits; the committer's task takes everything waiting,
writes it with :func:`~exchange.runtime.journal.write_groups` (one transaction) and wakes
the runtimes, which then acknowledge and publish their own entries in their own order, as
with a writer of their own. A failed transaction fails every group in it: each runtime
retries as it does alone (nothing is acknowledged before COMMIT)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from exchange.runtime.journal import write_groups

log = logging.getLogger(__name__)

_Item = tuple[str, list[tuple], list[tuple], asyncio.Future]


class GroupCommitter:
    def __init__(self, pool: asyncpg.Pool, max_rows: int = 20_000) -> None:
        self.pool = pool
        self.max_rows = max_rows
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._locked: set[str] = set()
        self.commits = 0
        self.groups = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="group-commit")

    async def lock(self, market_id: str) -> None:
        """The market's single-writer lock (as Journal.lock_writer), for every market of this
        process on one dedicated connection instead of one connection each."""
        if market_id in self._locked:
            raise RuntimeError(f"market {market_id} is already running in this process")
        if self._lock_conn is None:
            self._lock_conn = await self.pool.acquire()
        ok = await self._lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                                            "voltbourse:" + market_id)
        if not ok:
            raise RuntimeError(f"market {market_id} is already running in another process")
        self._locked.add(market_id)

    async def unlock(self, market_id: str) -> None:
        if market_id in self._locked and self._lock_conn is not None:
            self._locked.discard(market_id)
            await self._lock_conn.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                                          "voltbourse:" + market_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            *_, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("the group committer stopped"))
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            self._locked.clear()
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock_all()")
            await self.pool.release(conn)

    async def commit(self, market_id: str, jrows: list[tuple], trows: list[tuple]) -> None:
        """Make these rows of ``market_id`` durable (returns after COMMIT)."""
        if self._task is None:
            raise RuntimeError("the group committer is not running")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((market_id, jrows, trows, fut))
        await fut

    async def _run(self) -> None:
        q = self._queue
        while True:
            items = [await q.get()]
            rows = len(items[0][1])
            while not q.empty() and rows < self.max_rows:
                item = q.get_nowait()
                items.append(item)
                rows += len(item[1])
            try:
                await write_groups(self.pool, [(m, j, t) for m, j, t, _ in items])
            except Exception as exc:  # every group fails; each runtime retries on its own
                for *_, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.commits += 1
            self.groups += len(items)
            for *_, fut in items:
                if not fut.done():
                    fut.set_result(None)
