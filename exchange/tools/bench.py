"""Benchmarks (``voltbourse bench KIND``). Figures, not pass/fail: quote medians.

* ``engine``: the pure engine on a fixed, seeded workload in-process
  (about 55 % resting limits, a fifth of them post-only and a fifth good till a
  date, 25 % crossing, a quarter of them IOC and half of those with a minimum
  quantity, 20 % cancels/modifies, over the 24 products of a day; ``mix`` gives the
  shares). Prints ``commands_per_s``, ``trades``, ``p50_us``, ``p99_us``
  (per-command processing time), ``commands_per_cpu_s`` (per second of the process's
  CPU time), ``gc_s`` (time in the cyclic GC during that run),
  median of ``--repeat`` runs; ``auction``: block orders and orders collected by a
  day-ahead auction, then the joint auction. The recorded streams are frozen out of
  the cyclic GC during the runs (``gc``).
* ``journal``: durable throughput through the runtime (engine + group commit
  to the embedded PostgreSQL in a throw-away data directory), with
  ``--concurrency`` submitters each waiting for its ack. Prints
  ``commands_per_s``, ``p50_ms``, ``p99_ms`` (submit -> ack after COMMIT),
  ``avg_batch`` and ``commits``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import asyncpg

from exchange.core.calendar import GateMode
from exchange.core.controls import PriceControls
from exchange.core.engine import MarketConfig, MarketEngine
from exchange.core.model import AuctionCleared, BlockResult, Command, Mechanism, Tick, TradeEvent
from exchange.runtime.clock import ManualClock
from exchange.runtime.committer import GroupCommitter
from exchange.runtime.config import Settings, load_settings
from exchange.runtime.db import create_pool
from exchange.runtime.journal import Journal
from exchange.runtime.market import MarketRuntime
from exchange.runtime.scratch import BENCH_T0, run_on_database
from exchange.runtime.service import market_config, open_market
from exchange.tools import workload
from exchange.tools.bench_e2e import bench_e2e


def _pct(sorted_vals: Sequence[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * q))]


def _open_products(engine: MarketEngine) -> list[str]:
    return sorted(pid for pid, pb in engine.products.items() if pb.state.value == "open")


@dataclass(frozen=True)
class Workload:
    """A recorded command stream and the engine state it starts from (``setup`` on a fresh
    engine): the order ids it names are the ones a fresh engine assigns."""

    config: MarketConfig
    setup: list[Command]
    commands: list[Command]


def record_workload(commands: int, seed: int, members: int = 200, config: MarketConfig | None = None,
                    mix: workload.Mix = workload.ENGINE_MIX) -> Workload:
    """``commands`` of ``mix`` over the open products, recorded through an engine under ``config``
    (default: the rules a new market gets from the default settings, price controls included),
    so that cancels and modifies name the orders the engine really accepted."""
    config = config or market_config(Settings())
    engine = MarketEngine(config)
    names = workload.members(members)
    setup = workload.registrations(names, BENCH_T0)
    for c in setup:
        engine.process(c)
    flow = workload.OrderFlow(_open_products(engine), names, seed=seed, first_order_id=engine.next_order_id,
                              mix=mix, feedback=True)
    return Workload(config, setup, flow.record(engine, commands, BENCH_T0 + 1))


class _GcTimer:
    """Time spent in the cyclic garbage collector while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> _GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def run_workload(w: Workload) -> dict:
    """One timed run of a recorded workload through a fresh engine (after a full collection,
    so that the garbage of what ran before is not collected during the run)."""
    gc.collect()
    engine = MarketEngine(w.config)
    for c in w.setup:
        engine.process(c)
    cmds = w.commands
    first_trade = engine.next_trade_id
    lat = [0] * len(cmds)
    process = engine.process
    clock = time.perf_counter_ns
    events = 0
    with _GcTimer() as gc_time:
        cpu = time.process_time()
        t = time.perf_counter()
        for i, c in enumerate(cmds):
            a = clock()
            events += len(process(c))
            lat[i] = clock() - a
        elapsed = time.perf_counter() - t
        cpu = time.process_time() - cpu
    lat.sort()
    return {
        "commands": len(cmds),
        "seconds": round(elapsed, 3),
        "commands_per_s": round(len(cmds) / elapsed),
        "commands_per_cpu_s": round(len(cmds) / cpu) if cpu > 0 else None,
        "events": events,
        "trades": engine.next_trade_id - first_trade,
        "open_orders": len(engine.orders),
        "p50_us": round(_pct(lat, 0.50) / 1000, 2),
        "p99_us": round(_pct(lat, 0.99) / 1000, 2),
        "gc_s": round(gc_time.seconds, 3),
        "state_hash": engine.state_hash(),
    }


def engine_once(commands: int, seed: int, members: int = 200, config: MarketConfig | None = None,
                mix: workload.Mix = workload.ENGINE_MIX) -> dict:
    """One run of the workload through a fresh engine under ``config`` (default: the rules a
    new market gets from the default settings, price controls included)."""
    return run_workload(record_workload(commands, seed, members, config, mix))


def auction_config() -> MarketConfig:
    """The default rules as a day-ahead auction then intraday market (blocks allowed)."""
    base = market_config(Settings())
    return replace(base, mechanism=Mechanism.CALL_THEN_CONTINUOUS, calendar=replace(base.calendar, gate=GateMode.ROLLING))


def record_auction(commands: int, seed: int, members: int = 200) -> tuple[Workload, int]:
    """Orders and blocks (:data:`~exchange.tools.workload.AUCTION_MIX`) for the products collecting
    orders for their day-ahead auction at ``BENCH_T0``, and the time that auction clears."""
    config = auction_config()
    engine = MarketEngine(config)
    names = workload.members(members)
    setup = workload.registrations(names, BENCH_T0)
    for c in setup:
        engine.process(c)
    day_ahead = sorted(pid for pid, pb in engine.products.items() if pb.state.value == "auction")
    flow = workload.OrderFlow(day_ahead, names, seed=seed, first_order_id=engine.next_order_id,
                              mix=workload.AUCTION_MIX, feedback=True)
    cmds = flow.record(engine, commands, BENCH_T0 + 1)
    return Workload(config, setup, cmds), engine.products[day_ahead[0]].auction_until


def auction_once(w: Workload, clears_at: int) -> dict:
    """One timed run: the order entry, then the tick that clears the joint day-ahead auction."""
    gc.collect()
    engine = MarketEngine(w.config)
    for c in w.setup:
        engine.process(c)
    process = engine.process
    t = time.perf_counter()
    for c in w.commands:
        process(c)
    entered = time.perf_counter()
    events = process(Tick(clears_at))
    done = time.perf_counter()
    blocks = [e for e in events if isinstance(e, BlockResult)]
    return {
        "commands": len(w.commands) + 1,
        "commands_per_s": round((len(w.commands) + 1) / (done - t)),
        "entry_commands_per_s": round(len(w.commands) / (entered - t)),
        "auction_s": round(done - entered, 3),
        "products": sum(1 for e in events if isinstance(e, AuctionCleared)),
        "blocks": len(blocks),
        "blocks_executed": sum(1 for b in blocks if b.executed),
        "auction_trades": sum(1 for e in events if isinstance(e, TradeEvent)),
        "state_hash": engine.state_hash(),
    }


def bench_engine(commands: int = 200_000, seed: int = 1, repeat: int = 3,
                 auction_commands: int | None = None) -> dict:
    """Median of ``repeat`` runs under the default rules, of :data:`~exchange.tools.workload.ENGINE_MIX`
    (post-only, good-till-date and minimum-quantity IOC orders among plain ones); runs without
    the price controls alternate with them, so their ratio is measured under the same machine
    load. Block orders, which a continuous market refuses, are measured in a phase of their own
    (``auction``): ``auction_commands`` (default a tenth of ``commands``) orders and blocks
    collected for a day-ahead auction, then the joint auction that clears them."""
    mix = workload.ENGINE_MIX
    bare_config = replace(market_config(Settings()), controls=PriceControls())
    w = record_workload(commands, seed, mix=mix)
    bare = record_workload(commands, seed, config=bare_config, mix=mix)
    auction_w, clears_at = record_auction(commands // 10 if auction_commands is None else auction_commands, seed)
    runs, bare_runs, auctions = [], [], []
    # The recorded streams (some 420 000 command objects) are the bench's input, not the
    # engine's state (a market's commands arrive and are gone): they are frozen out of the
    # cyclic GC for the runs, as `serve` freezes what its start-up built, so that a full
    # collection during a run traverses what the engine keeps, not them. The thresholds stay
    # Python's defaults (`serve` raises them: exchange.runtime.service.tune_gc).
    gc.collect()
    gc.freeze()
    try:
        for _ in range(repeat):
            runs.append(run_workload(w))
            bare_runs.append(run_workload(bare))
            auctions.append(auction_once(auction_w, clears_at))
    finally:
        gc.unfreeze()
    assert len({r["state_hash"] for r in runs}) == 1, "engine is not deterministic"
    assert len({r["state_hash"] for r in auctions}) == 1, "engine is not deterministic"
    med = sorted(runs, key=lambda r: r["commands_per_s"])[len(runs) // 2]
    med = dict(med)
    med["runs_commands_per_s"] = [r["commands_per_s"] for r in runs]
    # per second of this process's CPU time: what other work on a shared machine does not take
    # away (it still slows caches and memory); compare within one sitting either way
    med["runs_commands_per_cpu_s"] = [r["commands_per_cpu_s"] for r in runs]
    bare_med = statistics.median(r["commands_per_s"] for r in bare_runs)
    med["commands_per_s_no_price_controls"] = round(bare_med)
    med["price_controls_cost_ratio"] = round(bare_med / statistics.median(med["runs_commands_per_s"]), 3)
    med["mix"] = mix.fractions()
    med["gc"] = "default thresholds; recorded streams frozen (gc.freeze), a full collection before each run"
    auction = dict(sorted(auctions, key=lambda r: r["commands_per_s"])[len(auctions) // 2])
    auction["runs_auction_s"] = [r["auction_s"] for r in auctions]
    auction["mix"] = workload.AUCTION_MIX.fractions()
    med["auction"] = auction
    med["repeat"] = repeat
    med["python"] = platform.python_version()
    med["seed"] = seed
    return med


async def _journal_async(dsn: str, commands: int, seed: int, concurrency: int, market_id: str = "bench") -> dict:
    settings = load_settings(database_url=dsn, market_id=market_id)
    market = await open_market(dsn, settings, ManualClock(BENCH_T0), keep_stats=True)
    rt = market.runtime
    try:
        names = workload.members(200)
        await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
        flow = workload.OrderFlow(_open_products(rt.engine), names, seed=seed, first_order_id=rt.engine.next_order_id)
        it = iter(list(flow.stream(commands, 0)))  # generated before the clock starts: the load, not its making
        lat: list[int] = []
        stats = rt.stats
        if stats is None:
            raise RuntimeError("the journal bench needs the runtime's stats (open_market(keep_stats=True))")
        stats.commit_seconds.clear()
        stats.batch_sizes.clear()

        async def client() -> None:
            for cmd in it:
                t0 = time.perf_counter_ns()
                await rt.submit(cmd)
                lat.append(time.perf_counter_ns() - t0)

        t, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        lat.sort()
        commits = sorted(stats.commit_seconds)
        return {
            "commands": len(lat),
            "seconds": round(elapsed, 3),
            "commands_per_s": round(len(lat) / elapsed),
            "commands_per_cpu_s": round(len(lat) / cpu) if cpu else None,
            "p50_ms": round(_pct(lat, 0.50) / 1e6, 2),
            "p99_ms": round(_pct(lat, 0.99) / 1e6, 2),
            "concurrency": concurrency,
            "commits": len(commits),
            "avg_batch": round(statistics.mean(stats.batch_sizes), 1) if stats.batch_sizes else 0,
            "commit_p50_ms": round(_pct(commits, 0.5) * 1000, 2) if commits else None,
            "commit_p99_ms": round(_pct(commits, 0.99) * 1000, 2) if commits else None,
            "trades": rt.engine.next_trade_id - 1,
        }
    finally:
        await market.close()


def bench_journal(commands: int = 100_000, seed: int = 1, concurrency: int = 128, dsn: str | None = None,
                  markets: list[int] | None = None, in_flight: int = 2, repeat: int = 3) -> dict:
    """Against ``dsn``, or a fresh embedded PostgreSQL in a temporary directory (removed after).
    With ``markets`` (e.g. [1, 10, 100]): the same load spread over that many markets of one
    process sharing one scheduler and group commit (``in_flight`` transactions at once), next
    to the single market with a scheduler of its own, in ``repeat`` alternated rounds."""
    if in_flight < 1:
        raise SystemExit("--in-flight: at least 1")
    if repeat < 1:
        raise SystemExit("--repeat: at least 1")
    if markets:
        return run_on_database(
            lambda d: _journal_markets_async(d, commands, seed, concurrency, markets, in_flight, repeat), dsn)
    return run_on_database(lambda d: _journal_async(d, commands, seed, concurrency), dsn)


def _median_run(runs: list[dict]) -> dict:
    """The run of median throughput, with every run's throughput, p99 and CPU beside it."""
    med = dict(sorted(runs, key=lambda r: r["commands_per_s"])[len(runs) // 2])
    med["runs_commands_per_s"] = [r["commands_per_s"] for r in runs]
    med["runs_p99_ms"] = [r["p99_ms"] for r in runs]
    med["runs_commands_per_cpu_s"] = [r["commands_per_cpu_s"] for r in runs]
    return med


async def _journal_markets_async(dsn: str, commands: int, seed: int, concurrency: int, markets: list[int],
                                 in_flight: int = 2, repeat: int = 1) -> dict:
    """``bench journal --markets 1,10,100``: durable commands/s and ack latency when the load
    is spread over N markets of one process, whose engine steps and journal writes share one
    scheduler task and one transaction per group commit (exchange.runtime.committer), next to
    one market run alone. ``repeat`` rounds, each the single market then every N (fresh
    markets each round), so that every ratio compares runs of the same moment of a shared,
    noisy machine; the figures are medians, and the ratio the median of the rounds' ratios."""
    singles: list[dict] = []
    shared: dict[int, list[dict]] = {n: [] for n in markets}
    ratios: dict[int, list[float]] = {n: [] for n in markets}
    # each of the rounds' hundreds of fresh markets would log its (empty) recovery at INFO
    quiet = logging.getLogger("exchange.runtime.market")
    level = quiet.level
    if quiet.getEffectiveLevel() == logging.INFO:
        quiet.setLevel(logging.WARNING)
    checkpoints = True
    try:
        for k in range(repeat):
            prefix = "bench" if k == 0 else f"bench-r{k}"
            checkpoints = await _checkpoint(dsn) and checkpoints
            single = await _journal_async(dsn, commands, seed, concurrency, market_id=prefix)
            singles.append(single)
            for n in markets:
                checkpoints = await _checkpoint(dsn) and checkpoints
                r = await _shared_markets_run(dsn, n, commands, seed, concurrency, prefix=prefix, in_flight=in_flight)
                shared[n].append(r)
                ratios[n].append(round(r["commands_per_s"] / single["commands_per_s"], 3))
    finally:
        quiet.setLevel(level)
    return {"single_market": _median_run(singles), "markets": [_median_run(shared[n]) for n in markets],
            "in_flight": in_flight, "repeat": repeat, "checkpoint_before_each_run": checkpoints,
            "aggregate_vs_single": {str(n): statistics.median(ratios[n]) for n in markets},
            "aggregate_vs_single_runs": {str(n): ratios[n] for n in markets},
            "target": "aggregate >= single market, p99 <= 20 ms"}


async def _checkpoint(dsn: str) -> bool:
    """A CHECKPOINT before a run, so that every run starts in the same state: otherwise the
    WAL of the runs before it makes PostgreSQL start one (at about ``max_wal_size`` / (1 +
    ``checkpoint_completion_target``) since the last) in whichever run reaches that, and the
    full-page writes after it cost that run, and a hundred markets most (docs/benchmarks.md,
    "Session 12"). False where the server refuses it (PostgreSQL 15+: superuser or
    ``pg_checkpoint``; a statement timeout; a server without CHECKPOINT): the runs go on."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


async def _shared_markets_run(dsn: str, n: int, commands: int, seed: int, concurrency: int,
                              prefix: str = "bench", in_flight: int = 2) -> dict:
    settings = load_settings(database_url=dsn, market_id="bench")
    # the committer's lock connection, its transactions in flight, one to spare (as serve)
    pool = await create_pool(dsn, min_size=1, max_size=max(settings.journal_pool_size, in_flight + 2))
    committer = GroupCommitter(pool, in_flight=in_flight)
    committer.start()
    runtimes: list[MarketRuntime] = []
    try:
        config = market_config(settings)
        for i in range(n):
            journal = Journal(pool, f"{prefix}-{n}x-{i}")
            cfg = await journal.load_or_store_config(config)
            rt = MarketRuntime(MarketEngine(cfg), journal, ManualClock(BENCH_T0),
                               max_batch=settings.journal_max_batch, committer=committer)
            await rt.start()
            runtimes.append(rt)
        names = workload.members(200)
        streams = []
        # Submitter j feeds market j % n; each market gets commands in proportion to its
        # submitters, so that they all finish together (with 128 submitters over 100 markets,
        # equal shares left 28 markets with two submitters done at half time and the run's
        # tail at 100 submitters).
        clients = max(concurrency, n)
        share = [clients // n + (1 if k < clients % n else 0) for k in range(n)]
        for k, rt in enumerate(runtimes):
            await asyncio.gather(*(rt.submit(c) for c in workload.registrations(names, 0)))
            flow = workload.OrderFlow(_open_products(rt.engine), names, seed=seed + k,
                                      first_order_id=rt.engine.next_order_id)
            streams.append(iter(list(flow.stream(commands * share[k] // clients, 0))))
        lat: list[int] = []
        commits_before, overlapped_before = committer.commits, committer.overlapped

        async def client(j: int) -> None:
            rt, it = runtimes[j % n], streams[j % n]
            for cmd in it:
                t0 = time.perf_counter_ns()
                await rt.submit(cmd)
                lat.append(time.perf_counter_ns() - t0)

        t, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client(j) for j in range(clients)))
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        lat.sort()
        commits = committer.commits - commits_before
        return {"markets": n, "commands": len(lat), "seconds": round(elapsed, 3),
                "commands_per_s": round(len(lat) / elapsed),
                "commands_per_cpu_s": round(len(lat) / cpu) if cpu else None, "p50_ms": round(_pct(lat, 0.50) / 1e6, 2),
                "p99_ms": round(_pct(lat, 0.99) / 1e6, 2), "commits": commits,
                "commands_per_commit": round(len(lat) / commits, 1) if commits else None,
                "commits_overlapped": committer.overlapped - overlapped_before,
                "trades": sum(rt.engine.next_trade_id - 1 for rt in runtimes)}
    finally:
        for rt in runtimes:
            await rt.stop()
        await committer.stop()
        await pool.close()


def run(kind: str, commands: int | None = None, seed: int = 1, as_json: bool = False, **kw) -> int:
    if kind == "engine":
        result = bench_engine(commands or 200_000, seed, **kw)
    elif kind == "journal":
        result = bench_journal(commands or 100_000, seed, **kw)
    elif kind == "e2e":

        result = bench_e2e(commands or 40_000, seed, **kw)
    else:
        raise SystemExit(f"unknown benchmark {kind!r} (engine, journal, e2e)")
    result = {"bench": kind, **result}
    if as_json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0
