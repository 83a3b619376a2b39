"""The markets' scheduler and group commit (exchange.runtime.committer): one task steps every
woken market and commits their outboxes together; up to ``in_flight`` transactions at once,
never two holding groups of the same market, a market's groups committed in the order its
engine produced them, a failed transaction retried without acknowledging anything, a
market that fails stopped alone. The journal write is replaced by a controllable fake and
the markets by fakes of the :class:`Scheduled` protocol (no database, no engine)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import uvloop

from exchange.runtime import committer as committer_module
from exchange.runtime.committer import Group, GroupCommitter
from exchange.runtime.journal import JournalConflict

pytestmark = pytest.mark.unit


class FakeWrites:
    """Each transaction waits for its own release; records what ran at once."""

    def __init__(self) -> None:
        self.running: list[list[str]] = []  # the markets of each transaction in flight
        self.started: list[list[str]] = []
        self.order: list[tuple[str, int]] = []  # (market, row) as committed
        self.release: dict[int, asyncio.Event] = {}
        self.fail: set[int] = set()
        self.max_running = 0
        self.conns: list = []  # the connection (or pool) of each transaction, retries included

    async def __call__(self, conn, groups) -> None:
        n = len(self.started)
        self.conns.append(conn)
        markets = [m for m, _, _ in groups]
        assert all(markets.count(m) == 1 for m in markets), "two groups of one market in a transaction"
        for other in self.running:
            assert not set(other) & set(markets), "two transactions of one market at once"
        self.started.append(markets)
        self.running.append(markets)
        self.max_running = max(self.max_running, len(self.running))
        ev = self.release.setdefault(n, asyncio.Event())
        try:
            await ev.wait()
            if n in self.fail:
                raise RuntimeError(f"transaction {n} failed")
            self.order.extend((m, r) for m, j, _ in groups for r in j)
        finally:
            self.running.remove(markets)

    def let(self, n: int) -> None:
        self.release.setdefault(n, asyncio.Event()).set()


class FakeConn:
    """As asyncpg's pool connection: once closed (terminate(), or by the server: lose()), its
    termination listeners are called soon after and it is detached from the pool (which takes
    it back by itself); any call on it then raises."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.terminated = False
        self.detached = False
        self.listeners: list = []

    def add_termination_listener(self, cb) -> None:
        self.listeners.append(cb)

    def remove_termination_listener(self, cb) -> None:
        self.listeners.remove(cb)

    def lose(self) -> None:
        if self.detached:
            raise RuntimeError("cannot call terminate(): connection has been released back to the pool")
        self.detached = True
        for cb in self.listeners:
            asyncio.get_running_loop().call_soon(cb, self)

    def terminate(self) -> None:
        self.lose()
        self.terminated = True


class FakePool:
    """Hands out numbered connections; records what was given back."""

    def __init__(self) -> None:
        self.acquired: list[FakeConn] = []
        self.released: list[FakeConn] = []

    async def acquire(self) -> FakeConn:
        conn = FakeConn(len(self.acquired))
        self.acquired.append(conn)
        return conn

    async def release(self, conn: FakeConn) -> None:
        self.released.append(conn)


class FakeMarket:
    """A market whose 'engine' turns each queued number into one journal row (0: a
    rejection, answered without a row), and whose callers wait for their row's commit."""

    def __init__(self, committer: GroupCommitter, market_id: str, explode_on: int | None = None,
                 per_step: int | None = None) -> None:
        self.per_step = per_step  # commands an engine step takes (None: all queued)
        self.market_id = market_id
        self.closed = False
        self.committer = committer
        self.queue: list[tuple[int, asyncio.Future]] = []
        self.pending: list[asyncio.Future] = []  # every caller's, refused when the market stops
        self.outbox: list[tuple[int, asyncio.Future]] = []
        self.steps = 0
        self.failures: list[Exception] = []
        self.failed: BaseException | None = None
        self.explode_on = explode_on
        committer.attach(self)

    def submit(self, value: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        self.queue.append((value, fut))
        self.committer.wake(self)
        return fut

    def step(self) -> bool:
        self.steps += 1
        for value, _ in self.queue:
            if value == self.explode_on:
                raise ValueError("engine bug")
        n = len(self.queue) if self.per_step is None else self.per_step
        self.outbox += self.queue[:n]
        self.queue = self.queue[n:]
        return bool(self.queue)

    def outbox_rows(self) -> int:
        return sum(1 for v, _ in self.outbox if v)

    def take(self) -> Group | None:
        if not self.outbox:
            return None
        batch, self.outbox = self.outbox, []
        return Group([v for v, _ in batch if v], [], batch)

    def committed(self, group: Group, seconds: float) -> None:
        for value, fut in group.payload:  # type: ignore[attr-defined]
            if not fut.done():
                fut.set_result(value)

    def commit_failed(self, exc: Exception, retry_in: float) -> None:
        self.failures.append(exc)

    def fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.closed = True
        for fut in self.pending:
            if not fut.done():
                fut.set_exception(RuntimeError("market stopped"))


@pytest.fixture
def writes(monkeypatch) -> FakeWrites:
    """The fake journal write; transactions overlap for any rows (OVERLAP_ROWS = 1) unless a
    test sets its own threshold."""
    fake = FakeWrites()
    monkeypatch.setattr(committer_module, "write_groups", fake)
    monkeypatch.setattr(committer_module, "OVERLAP_ROWS", 1)
    return fake


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_second_transaction_starts_while_the_first_commits(writes):
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    fa = a.submit(1)
    await settle()
    assert writes.started == [["a"]]
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"], ["b"]] and writes.max_running == 2 and c.overlapped == 1
    writes.let(1)
    assert await fb == 1
    assert not fa.done()  # a's COMMIT has not come back: not acknowledged
    writes.let(0)
    assert await fa == 1
    assert (c.commits, c.groups) == (2, 2)
    await c.stop()


async def test_one_transaction_per_market_its_groups_in_order_and_merged_while_waiting(writes):
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    first = a.submit(1)
    await settle()
    later = [a.submit(2), a.submit(0), a.submit(3)]  # processed while a's first group commits
    other = b.submit(1)
    await settle()
    assert writes.started == [["a"], ["b"]]  # a's next group waits for a's transaction
    assert a.steps == 2 and not any(f.done() for f in later)  # stepped, not answered: the rejection too
    writes.let(0)
    await first
    await settle()
    assert writes.started == [["a"], ["b"], ["a"]]  # the three processed since, in one group
    writes.let(2)
    assert await asyncio.gather(*later) == [2, 0, 3]
    writes.let(1)
    await other
    assert [r for m, r in writes.order if m == "a"] == [1, 2, 3]
    await c.stop()


async def test_a_group_without_rows_is_answered_at_once_when_nothing_of_its_market_is_in_flight(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    assert await a.submit(0) == 0
    assert writes.started == [] and c.commits == 0
    await c.stop()


async def test_at_most_in_flight_transactions_and_a_failed_one_is_retried_alone(writes):
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    m = {k: FakeMarket(c, k) for k in "abcd"}
    writes.fail.add(0)
    futs = {"a": m["a"].submit(1)}
    await settle()
    futs |= {k: m[k].submit(1) for k in "bc"}
    await settle()
    futs["d"] = m["d"].submit(1)
    await settle()
    # a alone in the first transaction, b and c together in the second; d waits for a slot
    assert writes.started == [["a"], ["b", "c"]] and writes.max_running == 2
    writes.let(0)  # fails: a is retried at once in a transaction of its own, acknowledged only after it
    await settle()
    assert writes.started[2] == ["a"] and not futs["a"].done() and len(m["a"].failures) == 1
    assert not m["b"].failures
    writes.let(1)
    await futs["b"]
    await futs["c"]
    await settle()
    assert writes.started[3] == ["d"]  # the slot b and c freed; a's retry still holds the other
    writes.let(2)
    assert await futs["a"] == 1
    writes.let(3)
    await futs["d"]
    assert (c.commits, c.groups) == (3, 4) and writes.max_running == 2
    await c.stop()


async def test_after_a_joint_failure_the_markets_retry_at_once_each_alone(writes):
    """A transient failure of a transaction of several markets: each is retried at once in
    a transaction of its own, side by side, not one after the other."""
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(5)]
    writes.fail.add(0)
    futs = [mk.submit(1) for mk in markets]
    await settle()
    assert writes.started == [[mk.market_id for mk in markets]]
    writes.let(0)
    await settle()
    assert sorted(map(tuple, writes.started[1:])) == [(mk.market_id,) for mk in markets]
    assert writes.max_running == 5  # all five solo attempts at once
    for n in range(1, 6):
        writes.let(n)
    assert await asyncio.gather(*futs) == [1] * 5
    await c.stop()


async def test_one_in_flight_never_overlaps(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    fa = a.submit(1)
    await settle()
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"]]
    writes.let(0)
    writes.let(1)
    await asyncio.gather(fa, fb)
    assert writes.started == [["a"], ["b"]] and writes.max_running == 1 and c.overlapped == 0
    await c.stop()


async def test_max_rows_closes_a_transaction(writes):
    c = GroupCommitter(FakePool(), max_rows=3, in_flight=1)  # type: ignore[arg-type]
    c.start()
    z = FakeMarket(c, "z")
    busy = z.submit(1)
    await settle()
    markets = [FakeMarket(c, k) for k in "abc"]
    futs = [f for mk in markets for f in (mk.submit(1), mk.submit(2))]
    await settle()
    writes.let(0)
    await busy
    await settle()
    assert writes.started[1] == ["a", "b"]  # 4 rows: the group that reached max_rows closes it
    writes.let(1)
    writes.let(2)
    await asyncio.gather(*futs)
    assert writes.started[2] == ["c"]
    await c.stop()


async def test_a_failing_market_stops_alone(writes):
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    bad, good = FakeMarket(c, "bad", explode_on=7), FakeMarket(c, "good")
    lost = bad.submit(7)
    fine = good.submit(1)
    await settle()
    assert isinstance(bad.failed, ValueError)
    with pytest.raises(RuntimeError, match="market stopped"):
        await lost
    writes.let(0)
    assert await fine == 1
    bad.submit(1)  # a detached market is not stepped any more
    await settle()
    assert bad.steps == 1 and writes.started == [["good"]]
    await c.stop()


async def test_stop_stops_the_markets_still_attached(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    waiting = a.submit(1)
    await settle()
    await c.stop()
    assert a.failed is not None and a.closed
    with pytest.raises((RuntimeError, asyncio.CancelledError)):
        await waiting
    with pytest.raises(RuntimeError, match="not running"):
        FakeMarket(c, "b")


async def test_a_market_the_database_refuses_for_good_does_not_hold_back_the_others(writes, monkeypatch):
    async def refusing(pool, groups) -> None:
        writes.started.append([m for m, _, _ in groups])
        if any(m == "p" for m, _, _ in groups):
            raise JournalConflict("journal conflict in market p")
        writes.order.extend((m, r) for m, j, _ in groups for r in j)

    monkeypatch.setattr(committer_module, "write_groups", refusing)
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    p, q = FakeMarket(c, "p"), FakeMarket(c, "q")
    fp, fq = p.submit(1), q.submit(1)
    assert await asyncio.wait_for(fq, 5) == 1  # retried alone after the joint transaction failed
    await asyncio.sleep(0.2)
    assert isinstance(p.failed, JournalConflict)  # stopped: its callers refused, never acknowledged
    assert fp.done() and isinstance(fp.exception(), RuntimeError)
    assert writes.started[0] == ["p", "q"] and ["q"] in writes.started[1:]
    assert ("q", 1) in writes.order and all(m != "p" for m, _ in writes.order)
    assert q.failed is None and len(q.failures) == 1  # the joint attempt, counted once
    await c.stop()


async def test_settled_waits_for_the_attempt_under_way(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    await c.settled(a)  # nothing in flight: at once
    fa = a.submit(1)
    await settle()
    waiting = asyncio.ensure_future(c.settled(a))
    await settle()
    assert not waiting.done()  # the transaction holding a's rows is under way
    writes.let(0)
    await asyncio.wait_for(waiting, 5)
    assert fa.done() and fa.result() == 1  # committed: answered
    await c.stop()


class Boom(BaseException):
    """Not an Exception: escapes the scheduler's per-market guard."""


async def test_markets_are_stopped_if_the_scheduler_task_ever_ends(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")

    def boom() -> bool:
        raise Boom()

    a.step = boom  # type: ignore[method-assign]
    fb = b.submit(1)
    a.submit(1)
    await settle()
    assert isinstance(a.failed, Boom) and isinstance(b.failed, Boom)
    with pytest.raises(RuntimeError, match="market stopped"):
        await fb
    assert not c.running
    await c.stop()


async def test_a_long_pass_yields_to_the_event_loop(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    seen: list[str] = []
    markets = [FakeMarket(c, f"m{i}") for i in range(5)]
    for m in markets:
        real = m.step

        def slow(m=m, real=real) -> bool:
            seen.append(m.market_id)
            t = time.perf_counter()
            while time.perf_counter() - t < 0.004:  # an engine step of 4 ms
                pass
            return real()

        m.step = slow  # type: ignore[method-assign]
        m.submit(1)
    asyncio.get_running_loop().call_soon(seen.append, "io")
    await settle()
    assert seen.index("io") in (1, 2)  # after a step or two, not after all five
    assert sorted(x for x in seen if x != "io") == [m.market_id for m in markets]
    await c.stop()


async def test_a_backlogged_market_does_not_starve_the_others(writes):
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    heavy, light = FakeMarket(c, "heavy", per_step=1), FakeMarket(c, "light")
    for i in range(200):
        heavy.submit(i + 1)
    fl = light.submit(1)
    await settle()
    assert light.steps == 1 and heavy.steps < 10  # stepped in the first passes, not after heavy's 200
    for n in range(500):
        writes.let(n)
    assert await fl == 1
    await c.stop()


async def test_with_two_slots_free_the_outboxes_go_in_two_transactions_at_once(writes, monkeypatch):
    """Ten markets stepped in one pass, enough rows for two transactions: two, of about
    equal rows, side by side (one would leave the second slot idle while all ten wait for
    it); each market's group whole, each answered after its own transaction only."""
    monkeypatch.setattr(committer_module, "SPLIT_ROWS", 8)
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(10)]
    futs = {mk.market_id: [mk.submit(v) for v in range(1, 4)] for mk in markets}  # 30 rows in all
    await settle()
    assert writes.started == [[f"m{i}" for i in range(5)], [f"m{i}" for i in range(5, 10)]]
    assert writes.max_running == 2 and c.overlapped == 1
    writes.let(1)
    for i in range(5, 10):
        assert await asyncio.gather(*futs[f"m{i}"]) == [1, 2, 3]
    assert not any(f.done() for i in range(5) for f in futs[f"m{i}"])  # theirs has not committed
    writes.let(0)
    for i in range(5):
        assert await asyncio.gather(*futs[f"m{i}"]) == [1, 2, 3]
    assert sorted(writes.order) == sorted((f"m{i}", v) for i in range(10) for v in range(1, 4))
    await c.stop()


async def test_below_the_split_threshold_the_outboxes_share_one_transaction(writes, monkeypatch):
    monkeypatch.setattr(committer_module, "SPLIT_ROWS", 8)
    c = GroupCommitter(FakePool(), in_flight=3)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(5)]
    futs = [mk.submit(v) for mk in markets for v in (1, 2, 3)]  # 15 rows: fewer than 2 x 8
    await settle()
    assert writes.started == [[mk.market_id for mk in markets]]
    writes.let(0)
    await asyncio.gather(*futs)
    await c.stop()


@pytest.mark.parametrize("in_flight", [1, 2, 3])
async def test_spreading_never_exceeds_the_slots_nor_cuts_a_group(writes, monkeypatch, in_flight):
    """Small ``max_rows`` and many markets: at most ``in_flight`` transactions, a market's
    group never split, every row committed once, in each market's order."""
    monkeypatch.setattr(committer_module, "SPLIT_ROWS", 1)
    c = GroupCommitter(FakePool(), max_rows=2, in_flight=in_flight)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(7)]
    futs = [mk.submit(v) for mk in markets for v in (1, 2, 3)]
    for _ in range(40):
        await settle()
        for n in range(len(writes.started)):
            writes.let(n)
        if all(f.done() for f in futs):
            break
    assert all(f.done() for f in futs)
    assert writes.max_running <= in_flight
    for mk in markets:
        assert [r for m, r in writes.order if m == mk.market_id] == [1, 2, 3]
    await c.stop()


def _load(markets: list[FakeMarket], sizes: list[int]) -> list[asyncio.Future]:
    """Queue ``sizes[i]`` rows on ``markets[i]`` (values 1..n), before any pass runs."""
    return [f for mk, n in zip(markets, sizes, strict=True) for f in [mk.submit(v) for v in range(1, n + 1)]]


@pytest.mark.parametrize(("sizes", "expected"), [
    ([31, 32, 32, 32], [["m0", "m1", "m2", "m3"]]),  # 127 rows: fewer than 2 x SPLIT_ROWS, one transaction
    ([32, 32, 32, 32], [["m0", "m1"], ["m2", "m3"]]),  # 128 rows: two
    ([30, 30, 200], [["m0", "m1"], ["m2"]]),  # a large group last does not drag the others into its transaction
    ([200, 30, 30], [["m0"], ["m1", "m2"]]),
])
async def test_the_split_is_by_rows_at_the_real_threshold(writes, monkeypatch, sizes, expected):
    # outboxes that a pass did not cut (a pass ends at PASS_ROWS, tested below): e.g. markets
    # stepped while their transaction was in flight, or whose steps took more than a pass's rows
    monkeypatch.setattr(committer_module, "PASS_ROWS", 10_000)
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(len(sizes))]
    futs = _load(markets, sizes)
    await settle()
    assert writes.started == expected
    for n in range(len(expected)):
        writes.let(n)
    await asyncio.gather(*futs)
    await c.stop()


@pytest.mark.parametrize(("in_flight", "max_rows", "sizes"), [
    (3, 100, [99, 100, 99, 100, 5]),
    (2, 50, [1, 2000, 5, 99]),
    (3, 20_000, [5, 5, 5, 300, 5]),
])
async def test_no_slot_stays_idle_while_an_outbox_waits(writes, in_flight, max_rows, sizes):
    """Whatever the sizes, after a pass either every slot is taken or no market without a
    transaction in flight has an outbox waiting; every row is committed once, in order. (With
    OVERLAP_ROWS = 1, as the fixture sets it: with the real threshold, fewer rows may wait for
    the transaction in flight, tested above.)"""
    c = GroupCommitter(FakePool(), max_rows=max_rows, in_flight=in_flight)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(len(sizes))]
    futs = _load(markets, sizes)
    released = 0
    while not all(f.done() for f in futs):
        await settle()
        idle = c.in_flight - len(writes.running)
        waiting = [mk.market_id for mk in markets if mk.outbox and not any(mk.market_id in r for r in writes.running)]
        assert idle == 0 or not waiting, f"{idle} slot(s) idle while {waiting} wait"
        if released < len(writes.started):
            writes.let(released)
            released += 1
    assert writes.max_running <= in_flight
    for mk, n in zip(markets, sizes, strict=True):
        assert [r for m, r in writes.order if m == mk.market_id] == list(range(1, n + 1))
    await c.stop()


async def test_one_split_transaction_fails_the_other_commits_and_answers_alone(writes):
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    markets = [FakeMarket(c, f"m{i}") for i in range(4)]
    futs = {mk.market_id: [mk.submit(v) for v in range(1, 41)] for mk in markets}
    writes.fail.add(0)
    await settle()
    assert writes.started == [["m0", "m1"], ["m2", "m3"]]
    writes.let(1)  # the second commits: its markets answered, the first's not
    for k in ("m2", "m3"):
        assert await asyncio.gather(*futs[k]) == list(range(1, 41))
    assert not any(f.done() for k in ("m0", "m1") for f in futs[k])
    writes.let(0)  # the first fails: m0 and m1 retried, each alone, nothing answered before
    await settle()
    assert sorted(map(tuple, writes.started[2:])) == [("m0",), ("m1",)]
    assert not any(f.done() for k in ("m0", "m1") for f in futs[k])
    writes.let(2)
    writes.let(3)
    for k in ("m0", "m1"):
        assert await asyncio.gather(*futs[k]) == list(range(1, 41))
    assert [mk.failures != [] for mk in markets] == [True, True, False, False]
    await c.stop()


def _overlap_committer(monkeypatch, commit_s: float = 10.0) -> GroupCommitter:
    """Two slots, OVERLAP_ROWS = 4, a usual commit time of ``commit_s`` (10 s: commits that
    take long, so that the wait is OVERLAP_WAIT_S's), started."""
    monkeypatch.setattr(committer_module, "OVERLAP_ROWS", 4)
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.commit_s = commit_s
    c.start()
    return c


async def _second_waits_for_first(c: GroupCommitter, writes: FakeWrites,
                                  timeout: float) -> tuple[asyncio.Future, asyncio.Future, float]:
    """Market a's one row goes at once; market b's one row is held back for a's transaction
    until the committer lets it go: (a's future, b's future, seconds from before a's start to
    b's)."""
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    t = time.perf_counter()  # before a's transaction starts: the wait is measured from there
    fa = a.submit(1)
    await settle()
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"]]
    while writes.started == [["a"]] and time.perf_counter() - t < timeout:
        await asyncio.sleep(0.005)
    assert writes.started == [["a"], ["b"]]
    return fa, fb, time.perf_counter() - t


async def test_while_a_transaction_commits_a_small_outbox_waits_for_it(writes, monkeypatch):
    """With a transaction in flight, another starts only for OVERLAP_ROWS rows: fewer wait for
    its COMMIT (a transaction's fixed cost is not paid for a row or two)."""
    c = _overlap_committer(monkeypatch)
    a, b, d = FakeMarket(c, "a"), FakeMarket(c, "b"), FakeMarket(c, "d")
    fa = a.submit(1)
    await settle()
    assert writes.started == [["a"]]  # nothing in flight: at once, whatever its size
    fb = [b.submit(1), b.submit(2)]
    await settle()
    assert writes.started == [["a"]] and not any(f.done() for f in fb)  # 2 rows: they wait
    writes.let(0)
    assert await fa == 1
    await settle()
    assert writes.started == [["a"], ["b"]]  # the slot in flight came back: they go
    fd = [d.submit(v) for v in (1, 2, 3, 4)]
    await settle()
    assert writes.started == [["a"], ["b"], ["d"]] and writes.max_running == 2  # 4 rows: overlap
    writes.let(2)
    assert await asyncio.gather(*fd) == [1, 2, 3, 4]
    assert not any(f.done() for f in fb)
    writes.let(1)
    assert await asyncio.gather(*fb) == [1, 2]
    await c.stop()


async def test_a_retried_transaction_does_not_hold_back_a_small_outbox(writes, monkeypatch):
    """A transaction being retried (with back-off, perhaps for seconds) does not count as one
    about to come back: the others' outboxes use the free slot, however small."""
    c = _overlap_committer(monkeypatch)
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    writes.fail.add(0)
    fa = a.submit(1)
    await settle()
    writes.let(0)  # fails: a is retried alone, in the same slot
    await settle()
    assert writes.started == [["a"], ["a"]]
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"], ["a"], ["b"]]  # one row, yet at once
    writes.let(2)
    assert await fb == 1
    writes.let(1)
    assert await fa == 1
    await c.stop()


async def test_each_slot_keeps_its_connection_and_a_failed_one_is_replaced(writes):
    """A commit is one round trip on the slot's own connection (not a pool acquire and release,
    whose reset is a second round trip); a connection whose transaction failed is closed and
    forgotten (asyncpg gives it back to its pool), the retry goes through the pool; stop gives
    the rest back."""
    pool = FakePool()
    c = GroupCommitter(pool, in_flight=2)  # type: ignore[arg-type]
    c.start()
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    for k in range(3):  # two transactions at once, three times over
        fa = a.submit(k + 1)
        await settle()
        fb = b.submit(k + 1)
        await settle()
        assert writes.max_running == 2
        writes.let(2 * k)
        writes.let(2 * k + 1)
        assert await asyncio.gather(fa, fb) == [k + 1, k + 1]
    assert len(pool.acquired) == 2 and pool.released == []
    assert set(writes.conns) == set(pool.acquired)
    await settle()
    writes.fail.add(6)
    fa = a.submit(9)
    await settle()
    failed = writes.conns[6]
    writes.let(6)
    await settle()
    assert failed.terminated and pool.released == [] and failed not in c._conns
    assert writes.conns[7] is pool  # the retry: through the pool
    writes.let(7)
    assert await fa == 9
    fb = b.submit(10)
    await settle()
    assert writes.conns[8] in pool.acquired and writes.conns[8] is not failed
    writes.let(8)
    assert await fb == 10
    await c.stop()
    assert sorted(x.n for x in pool.released) == sorted(x.n for x in pool.acquired if x is not failed)  # each once
    assert not any(x.terminated for x in pool.released) and not any(x.listeners for x in pool.released)


async def test_the_rows_of_a_market_with_a_transaction_in_flight_do_not_count(writes, monkeypatch):
    """OVERLAP_ROWS counts what could go now: a market whose group is in flight keeps its next
    one for after that COMMIT, however large."""
    c = _overlap_committer(monkeypatch)
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    fa = a.submit(1)
    await settle()
    more = [a.submit(v) for v in (2, 3, 4, 5, 6)]  # five rows of a, waiting for a's transaction
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"]]  # b's one row waits: a's five do not count
    writes.let(0)
    assert await fa == 1
    await settle()
    assert writes.started == [["a"], ["a", "b"]]
    writes.let(1)
    assert await asyncio.gather(*more, fb) == [2, 3, 4, 5, 6, 1]
    await c.stop()


async def test_an_outbox_held_back_goes_when_the_transaction_fails(writes, monkeypatch):
    """The rows held back for a transaction go as soon as it fails (it is then retried with
    back-off, perhaps for long), without waiting for another command to wake the scheduler."""
    c = _overlap_committer(monkeypatch)
    a, b = FakeMarket(c, "a"), FakeMarket(c, "b")
    writes.fail.add(0)
    fa = a.submit(1)
    await settle()
    fb = b.submit(1)
    await settle()
    assert writes.started == [["a"]]  # b held back
    writes.let(0)  # fails: a is retried alone; b goes at once, no other command needed
    await settle()
    assert sorted(map(tuple, writes.started[1:])) == [("a",), ("b",)]
    writes.let(1)
    writes.let(2)
    assert await asyncio.gather(fa, fb) == [1, 1]
    await c.stop()


async def test_an_outbox_held_back_goes_once_the_transaction_is_too_old_to_wait_for(writes, monkeypatch):
    """A transaction that hangs (a lost network path, a lock) holds the others back for
    OVERLAP_WAIT_S at most: then they use the free slot."""
    monkeypatch.setattr(committer_module, "OVERLAP_WAIT_S", 0.05)
    c = _overlap_committer(monkeypatch)
    fa, fb, waited = await _second_waits_for_first(c, writes, timeout=2)
    assert waited >= 0.05
    writes.let(1)
    assert await fb == 1 and not fa.done()  # a still hangs; b no longer waits for it
    writes.let(0)
    assert await fa == 1
    await c.stop()


async def test_refusals_are_answered_at_once_while_a_transaction_is_in_flight(writes, monkeypatch):
    """A group without rows (commands refused without a change) needs no transaction: held
    back or not, it is answered in the pass, and it does not count towards OVERLAP_ROWS."""
    c = _overlap_committer(monkeypatch)
    a, b, d = FakeMarket(c, "a"), FakeMarket(c, "b"), FakeMarket(c, "d")
    fa = a.submit(1)
    await settle()
    refused = [b.submit(0) for _ in range(5)]
    await settle()
    assert await asyncio.gather(*refused) == [0] * 5 and not fa.done()
    mixed = [d.submit(0), d.submit(0), d.submit(0), d.submit(7)]  # one row: held back
    await settle()
    assert writes.started == [["a"]] and not any(f.done() for f in mixed)
    writes.let(0)
    await settle()
    writes.let(1)
    assert await asyncio.gather(*mixed) == [0, 0, 0, 7]
    await c.stop()


async def _one_slot_after_a_commit(writes: FakeWrites) -> tuple[FakePool, GroupCommitter, FakeMarket]:
    """One slot, market a, and a's first row committed: the slot holds its connection, idle."""
    pool = FakePool()
    c = GroupCommitter(pool, in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    f = a.submit(1)
    await settle()
    writes.let(0)
    assert await f == 1
    return pool, c, a


async def test_a_slot_connection_idle_too_long_is_replaced(writes, monkeypatch):
    """As the pool recycles idle connections: one a slot has not used for IDLE_RECYCLE_S is
    closed and a fresh one taken before the next commit."""
    pool, c, a = await _one_slot_after_a_commit(writes)
    monkeypatch.setattr(committer_module, "IDLE_RECYCLE_S", 0.0)
    f = a.submit(2)
    await settle()
    writes.let(1)
    assert await f == 2
    first, second = pool.acquired
    assert writes.conns == [first, second] and first.terminated and not second.terminated
    await settle()
    await c.stop()
    assert pool.released == [second]


async def test_a_connection_lost_while_idle_is_forgotten_and_stop_gives_nothing_back_twice(writes):
    pool, c, a = await _one_slot_after_a_commit(writes)
    lost = pool.acquired[0]
    lost.lose()  # the server closed it
    await settle()
    f = a.submit(2)
    await settle()
    writes.let(1)
    assert await f == 2
    assert writes.conns == [lost, pool.acquired[1]]
    await c.stop()
    assert pool.released == [pool.acquired[1]]


async def test_the_second_transaction_starts_half_a_commit_after_the_first(writes, monkeypatch):
    """Fewer than OVERLAP_ROWS rows wait for half a commit's usual time at most: then they go,
    so that at a load too light to fill OVERLAP_ROWS the two slots still take turns."""
    monkeypatch.setattr(committer_module, "OVERLAP_WAIT_S", 10.0)
    c = _overlap_committer(monkeypatch, commit_s=1.0)  # half of it: 0.5 s
    fa, fb, waited = await _second_waits_for_first(c, writes, timeout=5)
    assert 0.5 <= waited < 0.95  # not a whole commit's 1.0 s
    writes.let(1)
    writes.let(0)
    assert await asyncio.gather(fa, fb) == [1, 1]
    assert 0.7 <= c.commit_s < 1.0  # the average follows the commits that came back (by a tenth each)
    await c.stop()


async def test_the_commit_time_average_starts_at_the_first_and_a_stall_moves_it_little(writes):
    """commit_s: 0 holds nothing back (nothing is known yet); the first commit sets it; a commit
    far slower than usual moves it by at most 30 %; a failed transaction does not count."""
    c = GroupCommitter(FakePool(), in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = FakeMarket(c, "a")
    f = a.submit(1)
    await settle()
    await asyncio.sleep(0.05)
    writes.let(0)
    assert await f == 1
    first = c.commit_s
    assert 0.04 <= first < 1.0
    f = a.submit(2)
    await settle()
    await asyncio.sleep(first * 10)  # a stall: ten times the usual commit
    writes.let(1)
    assert await f == 2
    assert first < c.commit_s <= first * 1.3 + 0.01
    before = c.commit_s
    writes.fail.add(2)
    f = a.submit(3)
    await settle()
    writes.let(2)  # fails: retried alone (through the pool)
    await settle()
    writes.let(3)
    assert await f == 3
    assert c.commit_s == before
    await c.stop()


class StepsAtWrite:
    """The fake journal write, which also records how many times each market had been
    stepped when each transaction started."""

    def __init__(self, writes: FakeWrites, markets: list[FakeMarket]) -> None:
        self.writes, self.markets, self.steps = writes, markets, []

    async def __call__(self, conn, groups) -> None:
        self.steps.append([mk.steps for mk in self.markets])
        await self.writes(conn, groups)


async def test_a_pass_ends_at_a_transactions_worth_of_rows_for_a_free_slot(writes, monkeypatch):
    """With a slot free, the pass stops stepping once the markets it stepped hold PASS_ROWS rows
    that slot can take (not those of a market whose transaction is in flight): their
    transaction starts before the next markets are stepped (they are, in the next pass, in their
    order); with no slot free, the pass steps every market (their rows wait anyway)."""
    monkeypatch.setattr(committer_module, "PASS_ROWS", 8)
    c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
    c.start()
    b = FakeMarket(c, "b")
    markets = [FakeMarket(c, f"m{i}") for i in range(10)]
    spy = StepsAtWrite(writes, [b, *markets])
    monkeypatch.setattr(committer_module, "write_groups", spy)
    futs = {"b": [b.submit(1)]}
    await settle()
    assert writes.started == [["b"]]  # in flight: one slot left
    futs["b"] += [b.submit(v) for v in range(2, 11)]  # 9 rows that cannot go before b's first
    futs.update(zip([mk.market_id for mk in markets], _chunks(_load(markets, [3] * 10), 3), strict=True))
    await settle()
    assert writes.started[1] == ["m0", "m1", "m2"]  # 9 rows for the free slot: the pass ended there
    assert spy.steps[1] == [2, 1, 1, 1] + [0] * 7  # b's 9 rows did not count; m3-m9 not stepped yet
    assert [mk.steps for mk in [b, *markets]] == [2] + [1] * 10  # no slot free: m3-m9 in one pass
    assert len(writes.started) == 2
    writes.let(0)  # b's first commits: the free slot takes every outbox waiting
    await settle()
    assert writes.started[2] == ["b", "m3", "m4", "m5", "m6", "m7", "m8", "m9"]
    writes.let(1)
    writes.let(2)
    for k, fs in futs.items():
        assert await asyncio.gather(*fs) == list(range(1, len(fs) + 1))
        assert [v for m, v in writes.order if m == k] == list(range(1, len(fs) + 1))  # in the market's order
    await c.stop()


def _chunks(items: list, n: int) -> list[list]:
    return [items[i:i + n] for i in range(0, len(items), n)]


async def test_a_pass_is_not_cut_for_rows_that_would_be_held_back(writes, monkeypatch):
    """PASS_ROWS below OVERLAP_ROWS: with a transaction in flight (young), the pass ends at
    OVERLAP_ROWS rows, not at PASS_ROWS (those would be held back and the slot left idle)."""
    monkeypatch.setattr(committer_module, "PASS_ROWS", 2)
    c = _overlap_committer(monkeypatch)  # OVERLAP_ROWS = 4, a wait of OVERLAP_WAIT_S
    a = FakeMarket(c, "a")
    markets = [FakeMarket(c, f"m{i}") for i in range(4)]
    fa = a.submit(1)
    await settle()
    assert writes.started == [["a"]]
    passes = c.passes
    futs = _load(markets, [3] * 4)
    await settle()
    assert writes.started == [["a"], ["m0", "m1"]]  # 6 rows >= 4: cut there, and gone
    # that pass, then one for m2 and m3 (no slot free); a cut at m0's 3 rows would have been a
    # pass for nothing (held back, the slot idle until the next)
    assert c.passes - passes == 2
    writes.let(0)
    writes.let(1)
    await settle()
    assert writes.started[2] == ["m2", "m3"]
    writes.let(2)
    assert await fa == 1
    assert await asyncio.gather(*futs) == [1, 2, 3] * 4
    await c.stop()


def test_a_hold_back_of_less_than_a_millisecond_under_uvloop(writes, monkeypatch):
    """uvloop rounds a call_later's delay to whole milliseconds and runs one that rounds to 0
    at the next turn, through a Handle without when(). The hold-back's timer is at least a
    millisecond (the scheduler would go round in passes until the wait is over), and a second
    hold-back before the timer ran does not ask it for when() (an AttributeError in the
    scheduler's task stops every market)."""
    now = [1000.0]
    monkeypatch.setattr(committer_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(committer_module, "OVERLAP_ROWS", 4)

    async def main() -> None:
        c = GroupCommitter(FakePool(), in_flight=2)  # type: ignore[arg-type]
        c.commit_s = 0.002  # a wait of 1 ms
        c.start()
        m = FakeMarket(c, "m")
        m.outbox.append((1, asyncio.get_running_loop().create_future()))  # 1 row: fewer than OVERLAP_ROWS
        c._waiting[m] = None
        me = asyncio.current_task()
        assert me is not None
        c._young[me] = now[0] - 0.0007  # in flight for 0.7 ms: 0.3 ms of the wait left
        assert c._hold_back() and c._hold_back()  # asked for the timer's moment again: no error
        # a timer (call_soon's Handle has no when()), not a run at the next turn
        assert type(c._timer).__name__ == "TimerHandle" and writes.started == []
        now[0] += 0.0004  # the wait is over when the timer fires: its pass lets the row go
        for _ in range(200):
            if writes.started:
                break
            await asyncio.sleep(0.001)
        assert c._timer is None and writes.started == [["m"]]
        c._young.clear()
        await c.stop()

    uvloop.run(main())
