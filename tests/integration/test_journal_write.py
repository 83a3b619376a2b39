"""exchange.runtime.journal.write_groups: what one statement writes is exactly the rows it was
given (journal and trade projection, several markets at once), read back through
PostgreSQL's own types: times to the microsecond in UTC (with and without a fraction),
64-bit integers at their bounds, non-ASCII text inside commands, nested JSON; all or
nothing; a retry of rows already there is accepted only when identical. Real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson
import pytest
from support.times import T0

from exchange.core.engine import MarketEngine
from exchange.core.model import command_to_dict, event_to_dict
from exchange.core.units import from_us
from exchange.runtime.config import load_settings
from exchange.runtime.db import RawJson
from exchange.runtime.journal import (
    JOURNAL_COLUMNS,
    TRADE_COLUMNS,
    Entry,
    Journal,
    JournalConflict,
    command_json,
    write_groups,
)
from exchange.runtime.service import market_config
from exchange.tools import workload

pytestmark = pytest.mark.integration

BIG = 2**63 - 1
TIMES = [from_us(1_795_720_861_095_320), from_us(1_795_720_861_000_000), from_us(0),
         datetime(2199, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)]


def _journal(market: str, n: int, first_seq: int) -> list[tuple]:
    rows = []
    for i in range(n):
        cmd = {"type": "place", "ts": i, "member": "0xAbC", "note": "é€\"\\\n\u2028", "price": -BIG,
               "quantity": BIG, "signature": None, "nested": {"a": [1, {"b": None}]}}
        events = [{"type": "order_accepted", "seq": first_seq + i, "order_id": BIG - i, "flag": True}]
        rows.append((market, i + 1, first_seq + i, first_seq + i, TIMES[i % len(TIMES)], cmd, events))
    return rows


def _trades(market: str, n: int) -> list[tuple]:
    return [(market, i + 1, 100 + i, f"p{i}", TIMES[(i + 1) % len(TIMES)], "0xB€", "0xS", BIG - i, i, 1 + i,
             -5 - i, TIMES[i % len(TIMES)]) for i in range(n)]


async def _read(pool, market: str) -> tuple[list[tuple], list[tuple]]:
    j = await pool.fetch(f"SELECT {', '.join(JOURNAL_COLUMNS)} FROM journal WHERE market_id = $1 ORDER BY cmd_seq",
                         market)
    t = await pool.fetch(f"SELECT {', '.join(TRADE_COLUMNS)} FROM trades WHERE market_id = $1 ORDER BY trade_id",
                         market)
    return [tuple(r) for r in j], [tuple(r) for r in t]


async def test_rows_read_back_exactly_as_written(pool):
    groups = [("w1", _journal("w1", 9, 1), _trades("w1", 5)), ("w2", _journal("w2", 4, 7), []),
              ("w3", [], _trades("w3", 2))]  # a group without journal rows writes nothing
    await write_groups(pool, groups)
    for market, jrows, trows in groups[:2]:
        assert await _read(pool, market) == (jrows, trows)
    assert await _read(pool, "w3") == ([], [])
    for _, jrows, _ in groups[:2]:
        for r in jrows:
            assert r[4].tzinfo is not None


async def test_a_failing_row_writes_nothing_of_the_group(pool):
    trows = _trades("w4", 3)
    trows[2] = (*trows[2][:9], 0, *trows[2][10:])  # energy_wh must be > 0
    with pytest.raises(asyncpg.CheckViolationError):
        await write_groups(pool, [("w4", _journal("w4", 3, 1), trows)])
    assert await _read(pool, "w4") == ([], [])


async def test_a_retry_is_accepted_only_when_identical(pool):
    jrows = _journal("w5", 3, 1)
    await write_groups(pool, [("w5", jrows, _trades("w5", 2))])
    await write_groups(pool, [("w5", jrows, _trades("w5", 2))])  # the COMMIT's reply was lost: done
    other = [(*jrows[0][:5], {**jrows[0][5], "price": 1}, jrows[0][6]), *jrows[1:]]
    with pytest.raises(JournalConflict):
        await write_groups(pool, [("w5", other, [])])


async def test_commands_and_events_encoded_by_the_journal_read_back_as_their_dicts(pool):
    """The runtime's rows carry each command and its events as JSON encoded from the
    dataclasses (journal.command_json / events_json): PostgreSQL stores exactly
    command_to_dict's and event_to_dict's objects, and a retry of the same rows is recognised
    as done while other contents under the same numbers are a conflict."""
    engine = MarketEngine(market_config(load_settings()))
    names = workload.members(20)
    for c in workload.registrations(names, T0):
        engine.process(c)
    flow = workload.OrderFlow(sorted(p for p, pb in engine.products.items() if pb.state.value == "open"), names,
                              seed=5, first_order_id=engine.next_order_id)
    entries = []
    for cmd in flow.stream(400, T0 + 1):  # processed as the runtime does (MarketRuntime.step)
        before = engine.seq
        events = engine.process(cmd)
        flow.observe(events)
        if events and engine.seq != before:  # not a quiet rejection (those are not journaled)
            entries.append(Entry(len(entries) + 1, cmd, events, command_json(cmd)))
    journal = Journal(pool, "w6")
    jrows, trows = journal.rows(entries, engine)
    assert trows  # the flow trades: trade rows too
    await write_groups(pool, [("w6", jrows, trows)])
    stored = await pool.fetch("SELECT cmd_seq, command, events FROM journal WHERE market_id = 'w6' ORDER BY cmd_seq")
    assert [(r["cmd_seq"], r["command"], r["events"]) for r in stored] == [
        (e.cmd_seq, command_to_dict(e.command), [event_to_dict(ev) for ev in e.events]) for e in entries]
    await write_groups(pool, [("w6", jrows, trows)])  # a retry of a COMMIT whose answer was lost
    changed = command_to_dict(entries[0].command) | {"ts": entries[0].command.ts + 1}
    with pytest.raises(JournalConflict):
        await write_groups(pool, [("w6", [(*jrows[0][:5], RawJson(orjson.dumps(changed)), jrows[0][6])], [])])
