"""``voltbourse bench recovery``: how long a market takes to come back, with snapshots
and by replaying its whole journal.

For each journal size N, in a fresh embedded PostgreSQL: a market trades for as many
days as N commands take (100 000 journaled commands a day, rolling gate, so products
close and are delivered as in a real market and the live state stays a day or two of
orders); its journal rows are COPYed in, with a snapshot ``tail`` commands before the
end. Then the real :func:`open_market` starts the market twice: from the snapshot
(replaying the tail) and replaying everything (``snapshot_recovery=false``). Both
verify every replayed event against the journal, as a production start does, and must
reach the same state hash. Prints one JSON object whose ``sizes`` is a list of
``{commands, snapshot_restart_s, full_replay_s, ...}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import Command, Tick
from exchange.core.units import from_us
from exchange.runtime.clock import ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.db import create_pool
from exchange.runtime.journal import Entry, Journal, command_json
from exchange.runtime.scratch import BENCH_T0, run_on_database
from exchange.runtime.service import market_config, open_market
from exchange.runtime.snapshots import SnapshotStore, encode
from exchange.tools import workload

MARKET = "bench-recovery"
PER_DAY = 100_000
DAY_US = 86_400_000_000


def _commands(engine: MarketEngine, seed: int) -> Iterator[Command]:
    """An endless realistic command stream: each simulated day the workload trades the
    products open that day, 100 000 commands spread over it."""
    names = workload.members(200)
    yield Tick(BENCH_T0)
    yield from workload.registrations(names, BENCH_T0)
    t = BENCH_T0 + 1
    step = DAY_US // PER_DAY
    day = 0
    while True:
        products = sorted(pid for pid, pb in engine.products.items() if pb.state.value == "open")
        flow = workload.OrderFlow(products, names, seed=seed + day, first_order_id=engine.next_order_id)
        for _ in range(PER_DAY):
            yield flow.next(t)
            t += step
        day += 1


def _settings(dsn: str, **kw: Any) -> Any:
    return load_settings(database_url=dsn, market_id=MARKET, gate="rolling", snapshot_every_commands=0, **kw)


async def _build(dsn: str, n: int, tail: int, seed: int) -> tuple[str, int, int]:
    """Write a journal of ``n`` commands with a snapshot at ``n - tail``: (hash, snapshot bytes, end us)."""
    config: MarketConfig = market_config(_settings(dsn))
    engine = MarketEngine(config)
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        await pool.execute("INSERT INTO markets (market_id, config) VALUES ($1, $2)", MARKET, config.to_dict())
        journal = Journal(pool, MARKET)
        entries: list[Entry] = []
        cmd_seq = 0
        snap_bytes = 0
        stream = _commands(engine, seed)
        while cmd_seq < n:
            cmd = next(stream)
            before = engine.seq
            events = engine.process(cmd)
            if not events or engine.seq == before:
                continue  # nothing to journal (a tick with nothing due, a quiet rejection)
            cmd_seq += 1
            entries.append(Entry(cmd_seq, cmd, events, command_json(cmd)))
            if len(entries) >= 20_000 or cmd_seq == n:  # the runtime's own rows, trades included
                await journal.write(*journal.rows(entries, engine))
                entries = []
            if cmd_seq == n - tail:
                enc = encode(engine, cmd_seq)
                await SnapshotStore(pool, MARKET).write(enc)
                snap_bytes = len(enc.state)
        return engine.state_hash(), snap_bytes, engine.now
    finally:
        await pool.close()


async def _restart(dsn: str, end_us: int, snapshots: bool) -> tuple[float, str, int]:
    t = time.perf_counter()
    market = await open_market(dsn, _settings(dsn, snapshot_recovery=snapshots), ManualClock(from_us(end_us)))
    elapsed = time.perf_counter() - t
    try:
        rt = market.runtime
        return elapsed, rt.engine.state_hash(), rt.cmd_seq - rt.recovered_from
    finally:
        await market.close()


async def _one(dsn: str, n: int, tail: int, seed: int) -> dict:
    t = time.perf_counter()
    state_hash, snap_bytes, end_us = await _build(dsn, n, min(tail, n - 1), seed)
    built = time.perf_counter() - t
    snap_s, snap_hash, snap_replayed = await _restart(dsn, end_us, True)
    full_s, full_hash, full_replayed = await _restart(dsn, end_us, False)
    # the starts add their own tick (products due by the clock): compare the two starts with each other
    if snap_hash != full_hash:
        raise AssertionError("a start from the snapshot reached another state than a full replay")
    return {"commands": n, "snapshot_restart_s": round(snap_s, 3), "full_replay_s": round(full_s, 3),
            "ratio": round(full_s / snap_s, 1), "replayed_with_snapshot": snap_replayed,
            "replayed_without": full_replayed, "snapshot_bytes": snap_bytes, "build_s": round(built, 1)}


def bench_recovery(sizes: list[int], seed: int = 1, tail: int = 5000) -> dict:
    out = []
    for n in sizes:
        out.append(run_on_database(partial(_one, n=n, tail=tail, seed=seed), prefix="bench-recovery-"))
    return {"bench": "recovery", "sizes": out, "tail": tail, "commands_per_day": PER_DAY}


__all__ = ["bench_recovery"]
