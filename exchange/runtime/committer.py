"""The markets' scheduler and group commit: one task runs the engine steps of every market of
a process, and their journal groups share one transaction per commit, so that neither the
cost of a commit (its fsync) nor that of a wake-up is paid per market.

A market (:class:`~exchange.runtime.market.MarketRuntime`, seen here through the
:class:`Scheduled` protocol) queues its commands and asks to be woken. The scheduler's task
then, for every market woken since its last pass, runs an engine step (the queued commands,
up to a batch, through the market's engine: pure, in memory) which leaves a group of
processed commands in the market's outbox; then it starts a transaction with the outboxes of
the markets that have none in flight, writes them with
:func:`~exchange.runtime.journal.write_groups` (one statement for journal and trade rows) and,
after COMMIT, hands each market its group back: the market acknowledges and publishes its
own entries, in its own order. Nothing a command produced is visible to anyone before its
group has committed.

This is how a matching engine serves many books from one thread: with a hundred markets and
one or two commands per market per commit, a task per market (an engine task, a writer task
and a future to wait for the commit, each woken per group) cost about a quarter of the
process; here a pass costs one wake-up, whatever the number of markets.

Pipelining. Up to ``in_flight`` transactions run at once, each on a connection of its own,
and the engine steps go on while they commit. A market never has two groups in flight: what
its engine processes meanwhile waits in its outbox and goes into the next transaction after
the previous one's COMMIT, so the order of a market's rows, their visibility to readers and
"nothing after a gap" are as with one transaction at a time; transactions of different
markets are independent. A failed transaction is retried with back-off, each of its markets
then in a transaction of its own, so that one market's failure cannot hold back the others;
nothing is acknowledged before its own COMMIT. A market whose rows the database refuses for
good (a journal conflict, a data error) stops; so does one whose engine step fails. The
others go on. A market that stops while its group is being committed waits for that attempt
to end before its callers are refused and its lock released, so that no transaction of it
can land after another instance of it took over.

Connections. Each transaction slot keeps its own connection of the pool for as long as the
scheduler runs (taken at its first commit): a commit is one round trip, and its markets are
answered as soon as it returns. Taken and given back per commit, a connection's return to the
pool (asyncpg resets it with a query of its own) cost every commit a second round trip before
anyone was answered, and the event loop's turn that comes with it. A slot's connection that
the server closes, or whose transaction failed (then closed here), is forgotten: asyncpg gives
it back to the pool, and the slot takes a fresh one; so is one idle for ``IDLE_RECYCLE_S``. The
retries go through the pool. The pool must hold the slots' connections, the markets' lock
connection and one to spare.

Overlap. While a transaction is in flight, the free slot takes the outboxes only once they
hold ``OVERLAP_ROWS`` rows, or once that transaction has been in flight for half a commit's
usual time (``OVERLAP_WAIT_FRACTION``; at most ``OVERLAP_WAIT_S``: it may hang, or fail and be
retried): the transactions' fixed cost is not paid for a row or two each, and the two slots'
transactions start about half a commit apart.

Back-pressure and fairness. A market whose processed, uncommitted commands reach its cap is
not stepped until its next COMMIT (its queue fills, and submitters wait or are refused
``MarketBusy``); a pass that has run the engines for a few milliseconds yields to the event
loop before stepping the markets left.

A transaction's worth at a time. With a slot free, a pass ends once the markets it stepped
hold ``PASS_ROWS`` rows that slot can take (at least ``OVERLAP_ROWS``, so that they are not
held back): their transaction starts, and the event loop's turn that follows sends it (on the
slot's kept connection) before the markets left are stepped in the next pass. Stepping every
ready market first (a hundred markets: 43-57 steps, 0.8-1.3 ms a pass, then their groups' JSON)
kept those rows waiting for all of it, and with them a transaction that came back during the
pass: the event loop sees its answer only between passes, so the writes seemed to take
3-4 ms (docs/benchmarks.md, "Session 13")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from exchange.runtime.journal import JournalConflict, write_groups

log = logging.getLogger(__name__)

#: transactions in flight at once (a slot each, each slot with its connection)
IN_FLIGHT = 2
#: a pass yields to the event loop once the engine steps it ran took this long
PASS_BUDGET_S = 0.005
#: with several transaction slots free, the outboxes are spread over them from this many journal
#: rows per transaction (fewer: one transaction, whose fixed cost would otherwise dominate)
SPLIT_ROWS = 64
#: a pass with a slot free ends once the markets it stepped hold this many journal rows for it:
#: their transaction starts before the markets left are stepped (a hundred markets: +20-30 %
#: against one market's figure, compared with stepping them all first; 48 rows did the same,
#: docs/benchmarks.md, "Session 13")
PASS_ROWS = 64
#: while a transaction is in flight, another starts only with at least this many journal rows:
#: fewer wait for its COMMIT (or the next pass's rows). A transaction has a fixed cost in this
#: process and in PostgreSQL (its round trip, its COMMIT's flush, the markets' answers in a turn of
#: their own); started for every few rows that came back meanwhile, a hundred markets' commits
#: went to ~40 rows each and their throughput fell (docs/benchmarks.md, "Session 12")
OVERLAP_ROWS = SPLIT_ROWS // 2
#: ... nor for a transaction in flight longer than this share of a commit's time (a moving
#: average): the second transaction then starts about half a commit after the first, whatever
#: the load (with 64 submitters over a hundred markets, 32 rows rarely waited and the commits
#: went one at a time) ...
OVERLAP_WAIT_FRACTION = 0.5
#: ... and never longer than this (a transaction that hangs, or is retried, holds nobody back)
OVERLAP_WAIT_S = 0.05
#: a slot's connection idle for this long is closed and replaced before its next commit (as the
#: pool does with its idle connections): a network path that silently drops idle flows would
#: otherwise hang the next commit until TCP gives up
IDLE_RECYCLE_S = 300.0
#: what the database refuses for good: retrying the same rows cannot help
#: (a client-side encoding failure of a trade row, e.g. an integer beyond 64 bits, is a
#: TypeError or ValueError; a command or its events that JSON cannot hold fail earlier, in
#: the market's engine step, which stops the market just the same)
PERMANENT_ERRORS = (JournalConflict, asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, TypeError,
                    ValueError)


@dataclass(slots=True)
class Group:
    """A market's processed commands awaiting COMMIT: the rows to write and what the market
    needs back after the commit (opaque to the scheduler)."""

    jrows: list[tuple]
    trows: list[tuple]
    payload: object = None


class Scheduled(Protocol):
    """What the scheduler needs of a market."""

    @property
    def market_id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def step(self) -> bool:
        """Run the engine over queued commands (at most a batch); True if more are queued."""
        ...

    def take(self) -> Group | None:
        """The outbox as one group to commit (None: nothing processed since the last take)."""
        ...

    def outbox_rows(self) -> int:
        """Journal rows processed since the last take (the next group's rows)."""
        ...

    def committed(self, group: Group, seconds: float) -> None:
        """The group is durable (or had no rows to write): acknowledge and publish it."""
        ...

    def commit_failed(self, exc: Exception, retry_in: float) -> None:
        """A transaction holding the market's group failed; it is retried after ``retry_in`` s."""
        ...

    def fail(self, exc: BaseException) -> None:
        """Stop the market (its engine failed, or the scheduler stopped)."""
        ...


class GroupCommitter:
    def __init__(self, pool: asyncpg.Pool, max_rows: int = 20_000, in_flight: int = IN_FLIGHT) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.pool = pool
        self.max_rows = max_rows
        self.in_flight = in_flight
        self._markets: set[Scheduled] = set()
        self._ready: dict[Scheduled, None] = {}  # commands queued, in wake order
        self._waiting: dict[Scheduled, None] = {}  # an outbox to commit, in arrival order
        self._busy: set[Scheduled] = set()  # markets with a transaction in flight
        self._settled: dict[Scheduled, asyncio.Future] = {}  # stopping markets waiting for theirs to end
        self._wake = asyncio.Event()
        self._commits: set[asyncio.Task] = set()  # transactions in flight
        self._active = 0
        self._task: asyncio.Task | None = None
        self._lock_conn: asyncpg.Connection | None = None
        self._locked: set[str] = set()
        self._conns: set[asyncpg.Connection] = set()  # held for commits, one a transaction slot
        self._idle: list[tuple[asyncpg.Connection, float]] = []  # of those, unused now (and since when)
        self._young: dict[asyncio.Task, float] = {}  # first attempts in flight: when they started
        # a pass once the transaction in flight is old, and when (the loop's time): uvloop's
        # call_later gives a Handle without when() for a delay that rounds to 0 ms
        self._timer: asyncio.Handle | None = None
        self._timer_due = 0.0
        self.commits = 0
        self.commit_s = 0.0  # a transaction's time, a moving average (OVERLAP_WAIT_FRACTION)
        self.groups = 0
        self.passes = 0  # the scheduler's passes (engine steps of every woken market, then commits)
        self.overlapped = 0  # transactions started while another one was in flight

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="market-scheduler")
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task) -> None:
        """The scheduler's task must never end by itself: if it did (a bug), every market
        stops (their callers refused) instead of waiting for ever."""
        if task.cancelled() or task is not self._task:
            return
        exc = task.exception() or RuntimeError("the market scheduler ended")
        log.critical("the market scheduler failed: %r; stopping its markets", exc, exc_info=exc)
        self._task = None
        for m in list(self._markets):
            m.fail(exc)
            self.detach(m)

    async def lock(self, market_id: str) -> None:
        """The market's single-writer lock (a PostgreSQL session advisory lock), for every
        market of this process on one dedicated connection: a second instance of the same
        market refuses to start instead of interleaving its journal."""
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

    def attach(self, market: Scheduled) -> None:
        if self._task is None:
            raise RuntimeError("the market scheduler is not running")
        self._markets.add(market)

    def detach(self, market: Scheduled) -> None:
        """Forget a stopped market (a transaction in flight with its group ends without it)."""
        self._markets.discard(market)
        self._ready.pop(market, None)
        self._waiting.pop(market, None)

    async def settled(self, market: Scheduled) -> None:
        """Return once no transaction holding ``market``'s rows is in flight (at once if none
        is): the attempt under way ends, committed (the market answers) or failed (it is not
        retried for a market that stopped). A stopping market waits for this before it refuses
        its callers and releases its lock."""
        if market in self._busy:
            fut = self._settled.get(market)
            if fut is None:
                fut = self._settled[market] = asyncio.get_running_loop().create_future()
            await asyncio.shield(fut)

    def _release(self, market: Scheduled) -> None:
        self._busy.discard(market)
        fut = self._settled.pop(market, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def wake(self, market: Scheduled) -> None:
        """The market has commands queued: step it at the next pass (a market detached, or
        never attached, is not stepped)."""
        if market in self._markets:
            self._ready[market] = None
            self._wake.set()

    async def stop(self) -> None:
        """Stop the scheduler; a market still attached stops with it (what it had not
        committed is refused)."""
        tasks = [t for t in (self._task, *self._commits) if t is not None]
        self._task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._commits.clear()
        for m in list(self._busy):
            self._release(m)
        self._active = 0
        self._young.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for m in list(self._markets):
            m.fail(RuntimeError("the market scheduler stopped"))
            self.detach(m)
        conns, self._conns, self._idle = self._conns, set(), []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.remove_termination_listener(self._closed)
                await self.pool.release(conn)
        if self._lock_conn is not None:
            conn, self._lock_conn = self._lock_conn, None
            self._locked.clear()
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock_all()")
            await self.pool.release(conn)

    # ----------------------------------------------------------------- the task
    async def _run(self) -> None:
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            self.passes += 1
            if self._ready:
                ready, self._ready = self._ready, {}
                deferred: list[Scheduled] = []  # not stepped: the pass's time, or its rows for a free slot, spent
                again: list[Scheduled] = []  # stepped, more queued: after every other market
                started = time.perf_counter()
                free = self._active < self.in_flight
                fresh = 0  # journal rows stepped in this pass that a free slot could take
                enough = max(PASS_ROWS, OVERLAP_ROWS)  # fewer could be held back, the slot left idle
                for m in ready:
                    if deferred or fresh >= enough or time.perf_counter() - started > PASS_BUDGET_S:
                        deferred.append(m)
                        continue
                    try:
                        more = m.step()
                    except Exception as exc:  # noqa: BLE001 - a market's own failure stops it alone
                        self._failed(m, exc)
                        continue
                    self._waiting[m] = None
                    if more:
                        again.append(m)
                    if free and m not in self._busy:
                        fresh += m.outbox_rows()
                if deferred or again:
                    self._ready = dict.fromkeys([*deferred, *self._ready, *again])
            self._start_commits()
            if self._ready:  # a market had more than a batch queued: step it again, after I/O
                wake.set()
                await asyncio.sleep(0)

    def _start_commits(self) -> None:
        """Start transactions while a slot is free: the outboxes of markets without one in
        flight, in arrival order (a group without rows is answered at once, since nothing of
        its market is in flight before it); while a transaction is in flight, only once
        ``OVERLAP_ROWS`` rows wait or it has been in flight long enough (:meth:`_hold_back`).
        With several slots free and at least
        ``SPLIT_ROWS`` journal rows per slot, the outboxes are spread over that many
        transactions of about equal rows (:func:`_spread`; a market's group is never cut), and
        while a slot is free and a market's outbox waits, another transaction starts: PostgreSQL writes
        them on as many backends at once, and their markets' answers and next steps no longer
        all wait for one COMMIT. One transaction would leave the other slots idle for as long
        as its markets are busy: with ten markets, every pass put all of them in one
        transaction, and the second slot was never used."""
        waiting = self._waiting
        busy = self._busy
        if self._active < self.in_flight and self._hold_back():
            self._answer_rowless()
            return
        while self._active < self.in_flight and waiting:
            free = self.in_flight - self._active
            items: list[tuple[Scheduled, Group]] = []
            rows = 0
            for m in list(waiting):
                if m in busy:
                    continue
                if rows >= self.max_rows * free:
                    break
                del waiting[m]
                try:
                    group = m.take()
                    if group is None:
                        continue
                    if not group.jrows:
                        m.committed(group, 0.0)
                        continue
                except Exception as exc:  # noqa: BLE001 - a market's own failure stops it alone
                    self._failed(m, exc)
                    continue
                items.append((m, group))
                busy.add(m)
                rows += len(group.jrows)
            if not items:
                return
            for chunk in _spread(items, rows, min(free, len(items), max(1, rows // SPLIT_ROWS))):
                self._start(chunk)

    def _hold_back(self) -> bool:
        """Keep the waiting outboxes for the COMMIT of the transaction in flight: one is in
        flight (its first attempt, for less than ``OVERLAP_WAIT_FRACTION`` of a commit's time
        and ``OVERLAP_WAIT_S``) and fewer than ``OVERLAP_ROWS`` rows wait in the outboxes of
        markets without one. A pass is then due once that transaction is too old to wait for,
        if it has not come back by then."""
        if not self._young or not self._waiting:
            return False
        age = time.perf_counter() - max(self._young.values())
        wait = min(OVERLAP_WAIT_S, self.commit_s * OVERLAP_WAIT_FRACTION)
        if age >= wait:
            return False
        rows = 0
        busy = self._busy
        for m in self._waiting:
            if m not in busy:
                rows += m.outbox_rows()
                if rows >= OVERLAP_ROWS:
                    return False
        loop = asyncio.get_running_loop()
        # at least a millisecond: uvloop rounds delays to whole milliseconds and runs one that
        # rounds to 0 at the next turn, and the scheduler would go round in passes until the
        # wait is over
        delay = max(wait - age, 0.001)
        due = loop.time() + delay
        if self._timer is None or self._timer_due > due:  # none yet, or one for a later moment
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(delay, self._timed_out)
            self._timer_due = due
        return True

    def _timed_out(self) -> None:
        self._timer = None
        self._wake.set()

    def _answer_rowless(self) -> None:
        """Answer the groups without rows (commands refused without a change) of the markets
        without a transaction in flight, as a transaction would (nothing of them is before)."""
        busy = self._busy
        for m in [m for m in self._waiting if m not in busy and not m.outbox_rows()]:
            del self._waiting[m]
            try:
                group = m.take()
                if group is not None:
                    m.committed(group, 0.0)
            except Exception as exc:  # noqa: BLE001 - a market's own failure stops it alone
                self._failed(m, exc)

    def _start(self, items: list[tuple[Scheduled, Group]]) -> None:
        if self._active:
            self.overlapped += 1
        self._active += 1
        task = asyncio.create_task(self._commit(items), name="group-commit-tx")
        self._young[task] = time.perf_counter()
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    def _failed(self, m: Scheduled, exc: BaseException) -> None:
        log.error("market %s failed in the scheduler: %r", m.market_id, exc, exc_info=exc)
        m.fail(exc)
        self.detach(m)

    async def _commit(self, taken: list[tuple[Scheduled, Group]]) -> None:
        try:
            t = time.perf_counter()
            items = [(m, g) for m, g in taken if not m.closed]
            if not items:
                return
            try:
                await self._write(items)
            except Exception as exc:  # noqa: BLE001 - retried, each market alone
                log.error("journal commit of %s failed (%r); retrying each market alone, nothing acknowledged",
                          ", ".join(m.market_id for m, _ in items), exc)
                for m, _ in items:
                    self._note_failure(m, exc, 0.0)
                # from now on each market alone, all at once: one market's failure cannot hold
                # back the others (their first attempt without waiting), nor a retry the outboxes
                # that wait for a slot (a pass now: OVERLAP_ROWS no longer applies)
                self._young.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
                self._wake.set()
                await asyncio.gather(*(self._commit_alone(m, g, t) for m, g in items))
                return
            elapsed = time.perf_counter() - t
            # the first commit sets it; one far slower than usual (a checkpoint, a stall) moves
            # it by at most 30 %
            self.commit_s = elapsed if not self.commit_s else self.commit_s + (
                min(elapsed, 4 * self.commit_s) - self.commit_s) * 0.1
            self.commits += 1
            self.groups += len(items)
            for m, g in items:
                self._hand_back(m, g, elapsed)
        finally:
            self._active -= 1
            self._young.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            for m, _ in taken:
                self._release(m)
            self._wake.set()  # a slot is free, and the markets' outboxes may go now

    async def _write(self, items: list[tuple[Scheduled, Group]]) -> None:
        """One transaction of ``items`` on the slot's own connection, kept for the next one if
        it succeeded; closed and given back to the pool if not (cancelled included: its state
        is then unknown)."""
        conn = None
        if self._idle:
            conn, since = self._idle.pop()
            if time.perf_counter() - since > IDLE_RECYCLE_S:
                self._drop(conn)
                conn = None
        if conn is None:
            conn = await self.pool.acquire()
            self._conns.add(conn)
            conn.add_termination_listener(self._closed)
        ok = False
        try:
            await write_groups(conn, [(m.market_id, g.jrows, g.trows) for m, g in items])
            ok = True
        finally:
            if ok and conn in self._conns:
                self._idle.append((conn, time.perf_counter()))
            else:
                self._drop(conn)

    def _drop(self, conn: asyncpg.Connection) -> None:
        """Close a slot's connection (its state unknown, or idle too long): asyncpg gives a
        closed connection back to its pool itself."""
        if conn in self._conns:
            self._closed(conn)
            with contextlib.suppress(Exception):  # closed already (by the server): nothing to do
                conn.terminate()

    def _closed(self, conn: asyncpg.Connection) -> None:
        """A held connection closed (by the server, or after its transaction failed): forgotten;
        the next commit of its slot takes a fresh one."""
        self._conns.discard(conn)
        self._idle = [(c, t) for c, t in self._idle if c is not conn]

    async def _commit_alone(self, m: Scheduled, g: Group, t: float) -> None:
        """Retry one market's group in transactions of its own, with back-off, until it is
        durable, the market stops, or the database refuses it for good (the market stops)."""
        delay = 0.025
        first = True
        while not m.closed:
            if not first:
                await asyncio.sleep(delay)
                if m.closed:
                    break
            first = False
            try:
                await write_groups(self.pool, [(m.market_id, g.jrows, g.trows)])
            except PERMANENT_ERRORS as exc:
                self._failed(m, exc)
                break
            except Exception as exc:  # noqa: BLE001 - retried until it succeeds: nothing is lost or acked early
                delay = min(delay * 2, 5.0)
                log.error("journal commit of %s failed (%r); retrying in %.2fs, nothing acknowledged",
                          m.market_id, exc, delay)
                self._note_failure(m, exc, delay)
                continue
            self.commits += 1
            self.groups += 1
            self._hand_back(m, g, time.perf_counter() - t)
            break
        self._release(m)
        self._wake.set()  # what the market processed meanwhile may go now

    def _hand_back(self, m: Scheduled, g: Group, seconds: float) -> None:
        self._release(m)
        try:
            m.committed(g, seconds)
        except Exception as exc:  # noqa: BLE001 - never stops the others
            self._failed(m, exc)

    def _note_failure(self, m: Scheduled, exc: Exception, retry_in: float) -> None:
        try:
            m.commit_failed(exc, retry_in)
        except Exception:  # noqa: BLE001 - a counter: never stops the retries
            log.exception("market %s: recording a commit failure failed", m.market_id)


def _spread(items: list[tuple[Scheduled, Group]], rows: int, parts: int) -> list[list[tuple[Scheduled, Group]]]:
    """``items`` (in order, ``rows`` journal rows in all) in at most ``parts`` consecutive
    chunks of about ``rows / parts`` rows: each group goes to the chunk its middle row falls
    in, so one large group does not drag its neighbours along."""
    if parts <= 1:
        return [items]
    chunks: list[list[tuple[Scheduled, Group]]] = [[] for _ in range(parts)]
    before = 0
    for item in items:
        n = len(item[1].jrows)
        chunks[min(parts - 1, (2 * before + n) * parts // (2 * rows))].append(item)
        before += n
    return [c for c in chunks if c]
