"""The group committer's pipelining (exchange.runtime.committer): up to ``in_flight``
transactions at once, never two holding groups of the same market, a market's groups
committed in the order they were handed over, a failed transaction failing its own groups
only. The journal write is replaced by a controllable fake (no database)."""

from __future__ import annotations

import asyncio

import pytest

from exchange.runtime import committer as committer_module
from exchange.runtime.committer import GroupCommitter

pytestmark = pytest.mark.unit


class FakeWrites:
    """Each transaction waits for its own release; records what ran at once."""

    def __init__(self) -> None:
        self.running: list[list[str]] = []  # the markets of each transaction in flight
        self.started: list[list[str]] = []
        self.order: list[tuple[str, int]] = []  # (market, first row) as committed
        self.release: dict[int, asyncio.Event] = {}
        self.fail: set[int] = set()
        self.max_running = 0

    async def __call__(self, pool, groups) -> None:
        n = len(self.started)
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
            self.order.extend((m, j[0]) for m, j, _ in groups)
        finally:
            self.running.remove(markets)

    def let(self, n: int) -> None:
        self.release.setdefault(n, asyncio.Event()).set()


@pytest.fixture
def writes(monkeypatch) -> FakeWrites:
    fake = FakeWrites()
    monkeypatch.setattr(committer_module, "write_groups", fake)
    return fake


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_second_transaction_starts_while_the_first_commits(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    a = asyncio.ensure_future(c.commit("a", [1], []))
    await settle()
    assert writes.started == [["a"]]
    b = asyncio.ensure_future(c.commit("b", [1], []))
    await settle()
    assert writes.started == [["a"], ["b"]] and writes.max_running == 2 and c.overlapped == 1
    writes.let(1)
    await b
    assert not a.done()  # a's COMMIT has not come back: not acknowledged
    writes.let(0)
    await a
    assert (c.commits, c.groups) == (2, 2)
    await c.stop()


async def test_one_at_a_time_per_market_and_in_order(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    first = asyncio.ensure_future(c.commit("a", [1], []))
    await settle()
    second = asyncio.ensure_future(c.commit("a", [2], []))  # handed over before the first committed
    other = asyncio.ensure_future(c.commit("b", [1], []))
    await settle()
    assert writes.started == [["a"], ["b"]]  # a's second group waits for a's transaction
    writes.let(0)
    await first
    await settle()
    assert writes.started == [["a"], ["b"], ["a"]]
    writes.let(2)
    await second
    writes.let(1)
    await other
    assert [x for x in writes.order if x[0] == "a"] == [("a", 1), ("a", 2)]
    await c.stop()


async def test_at_most_in_flight_transactions_and_a_failure_stays_in_its_transaction(writes):
    c = GroupCommitter(None, in_flight=2)  # type: ignore[arg-type]
    c.start()
    writes.fail.add(0)
    futs = {"a": asyncio.ensure_future(c.commit("a", [1], []))}
    await settle()
    futs |= {m: asyncio.ensure_future(c.commit(m, [1], [])) for m in ("b", "c")}
    await settle()
    futs["d"] = asyncio.ensure_future(c.commit("d", [1], []))
    await settle()
    # a alone in the first transaction, b and c together in the second; d waits for a slot
    assert writes.started == [["a"], ["b", "c"]] and writes.max_running == 2
    writes.let(0)
    with pytest.raises(RuntimeError, match="transaction 0 failed"):
        await futs["a"]
    await settle()
    assert writes.started[2] == ["d"]
    writes.let(1)
    writes.let(2)
    await futs["b"]
    await futs["c"]
    await futs["d"]
    assert (c.commits, c.groups) == (2, 3)
    await c.stop()


async def test_one_in_flight_never_overlaps(writes):
    c = GroupCommitter(None, in_flight=1)  # type: ignore[arg-type]
    c.start()
    a = asyncio.ensure_future(c.commit("a", [1], []))
    await settle()
    b = asyncio.ensure_future(c.commit("b", [1], []))
    await settle()
    assert writes.started == [["a"]]
    writes.let(0)
    writes.let(1)
    await asyncio.gather(a, b)
    assert writes.started == [["a"], ["b"]] and writes.max_running == 1 and c.overlapped == 0
    await c.stop()


async def test_max_rows_splits_and_stop_refuses_what_waits(writes):
    c = GroupCommitter(None, max_rows=3, in_flight=1)  # type: ignore[arg-type]
    c.start()
    busy = asyncio.ensure_future(c.commit("z", [1], []))
    await settle()
    futs = [asyncio.ensure_future(c.commit(m, [1, 2], [])) for m in ("a", "b", "c")]
    await settle()
    writes.let(0)
    await busy
    await settle()
    assert writes.started[1] == ["a", "b"]  # 4 rows: the group that reached max_rows closes it
    await c.stop()
    for f in futs:
        with pytest.raises((RuntimeError, asyncio.CancelledError)):
            await f
    with pytest.raises(RuntimeError, match="not running"):
        await c.commit("a", [1], [])
