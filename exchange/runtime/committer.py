"""Group commit across markets: one journal transaction for the groups that the markets of
one process have ready at the same moment, so that the cost of a commit (its fsync) is
shared by every market instead of paid by each.

Each :class:`~exchange.runtime.market.MarketRuntime` given a ``committer`` hands it its group
(rows built from its own engine) and waits; the committer's task takes everything waiting,
writes it with :func:`~exchange.runtime.journal.write_groups` (one transaction) and wakes
the runtimes, which then acknowledge and publish their own entries in their own order, as
with a writer of their own. A failed transaction fails every group in it: each runtime
retries as it does alone (nothing is acknowledged before COMMIT).

Pipelining. Up to ``in_flight`` transactions run at once, each on a connection of its own:
when the groups waiting cannot join the transaction being committed, a second one starts
at once instead of waiting for the first one's COMMIT (and its fsync). A market never has
two groups in flight (its runtime hands over the next group after the previous one's
commit; a group that arrives early all the same waits for its market's transaction to
end), so the order of a market's rows, their visibility to readers and "nothing after a
gap" are as with one transaction at a time; transactions of different markets are
independent."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from exchange.runtime.journal import write_groups

log = logging.getLogger(__name__)

_Item = tuple[str, list[tuple], list[tuple], asyncio.Future]


class GroupCommitter:
    def __init__(self, pool: asyncpg.Pool, max_rows: int = 20_000, in_flight: int = 2) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.pool = pool
        self.max_rows = max_rows
        self.in_flight = in_flight
        self._waiting: list[_Item] = []  # in arrival order
        self._wake = asyncio.Event()  # a group arrived or a transaction ended
        self._busy: set[str] = set()  # markets with a transaction in flight
        self._slots = asyncio.Semaphore(in_flight)
        self._commits: dict[asyncio.Task, list[_Item]] = {}  # transactions in flight and their groups
        self._active = 0  # transactions being written
        self._task: asyncio.Task | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._locked: set[str] = set()
        self.commits = 0
        self.groups = 0
        self.overlapped = 0  # transactions started while another one was in flight

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
        tasks = [t for t in (self._task, *self._commits) if t is not None]
        in_flight = [item for items in self._commits.values() for item in items]
        self._task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._commits.clear()
        self._busy.clear()
        self._active = 0
        pending, self._waiting = in_flight + self._waiting, []
        for *_, fut in pending:
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
        self._waiting.append((market_id, jrows, trows, fut))
        self._wake.set()
        await fut

    def _ready(self) -> list[_Item]:
        """The groups that may go into a new transaction now (at most one per market, none of
        a market whose transaction is in flight), up to ``max_rows``; the rest waits."""
        take: list[_Item] = []
        rest: list[_Item] = []
        markets: set[str] = set()
        rows = 0
        for item in self._waiting:
            mid = item[0]
            if mid in self._busy or mid in markets or (take and rows >= self.max_rows):
                rest.append(item)
            else:
                take.append(item)
                markets.add(mid)
                rows += len(item[1])
        self._waiting = rest
        return take

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            while True:
                self._wake.clear()
                if self._waiting:
                    items = self._ready()
                    if items:
                        break
                await self._wake.wait()  # nothing, or only groups of markets in flight
            for mid, *_ in items:
                self._busy.add(mid)
            if self._active:
                self.overlapped += 1
            self._active += 1
            task = asyncio.create_task(self._commit(items), name="group-commit-tx")
            self._commits[task] = items
            task.add_done_callback(lambda t: self._commits.pop(t, None))

    async def _commit(self, items: list[_Item]) -> None:
        try:
            await write_groups(self.pool, [(m, j, t) for m, j, t, _ in items])
        except Exception as exc:  # every group fails; each runtime retries on its own
            for *_, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            self.commits += 1
            self.groups += len(items)
            for *_, fut in items:
                if not fut.done():
                    fut.set_result(None)
        finally:
            self._active -= 1
            for mid, *_ in items:
                self._busy.discard(mid)
            self._slots.release()
            self._wake.set()
