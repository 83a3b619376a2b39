"""``voltbourse bench metering``: import a year of quarter-hour readings for a community
from CSV, then settle and bill the year (standard library and the metering package only).

    bench metering [--members 1000] [--days 365] [--trades-per-hour 20] [--dsn DSN] [--json]

Prints one JSON object with ``rows_per_s`` (readings imported per second, from parsing
the CSV to COMMIT), ``bill_year_s`` (settle every member against its positions and
tariff, and issue every bill of the period) and ``peak_rss_mb`` (the process's peak).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from exchange.core.units import US_PER_MIN, UTC, from_us, iso, to_us
from exchange.metering.core.model import EXAMPLE_FEES, MeterPoint, PointKind
from exchange.metering.fees import schedule_json
from exchange.metering.service import MeteringService
from exchange.metering.store import MeteringStore
from exchange.runtime.db import create_pool
from exchange.runtime.scratch import run_on_database
from exchange.runtime.trades import TradeStore

BENCH_MARKET = "bench-metering"
START = datetime(2025, 1, 1, tzinfo=UTC)
#: a household's quarter-hour profile shape (Wh per 15 min at scale 100), night -> evening peak
PROFILE = [60, 55, 50, 48] * 6 + [70, 90, 120, 130] * 4 + [90, 80, 75, 70] * 8 + [110, 140, 160, 150] * 4 + \
    [100, 90, 80, 70] * 2


def write_csv(path: Path, members: int, days: int, step_min: int = 15) -> int:
    """A year (``days``) of readings of one import point per member, ordered by point then
    time; returns the number of rows."""
    per_day = 1440 // step_min
    stamps = [iso(to_us(START) + i * step_min * US_PER_MIN) for i in range(days * per_day)]
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("point_id,interval_start,energy_wh\n")
        for m in range(members):
            pid = f"P{m:05d}"
            scale = 60 + (m * 37) % 120
            values = [PROFILE[i % per_day % len(PROFILE)] * scale // 100 + (m * 7919 + i * 104729) % 23
                      for i in range(len(stamps))]
            f.write("".join(f"{pid},{t},{v}\n" for t, v in zip(stamps, values, strict=True)))
            rows += len(stamps)
    return rows


async def _bench(dsn: str, args: argparse.Namespace) -> dict:
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        store = MeteringStore(pool, BENCH_MARKET)
        svc = MeteringService(store, TradeStore(pool, BENCH_MARKET), interval_minutes=15,
                              tz=ZoneInfo("Europe/Amsterdam"), product_minutes=60)
        members = [f"0x{m:040x}" for m in range(1, args.members + 1)]
        await svc.add_points([MeterPoint(f"P{i:05d}", m, PointKind.IMPORT) for i, m in enumerate(members)])
        start_us = to_us(START)
        end_us = start_us + args.days * 86_400_000_000
        hours = args.days * 24
        rng = random.Random(args.seed)
        await svc.put_tariff("default", "bench", [(start_us + h * 3_600_000_000, 25_000 + rng.randrange(15_000),
                                                   7_000 + rng.randrange(2_000)) for h in range(hours)])
        await store.put_fee_schedule(start_us, schedule_json(EXAMPLE_FEES))
        # trades as the exchange would have written them (the runtime's projection)
        trades = []
        tid = 0
        for h in range(hours):
            t0 = start_us + h * 3_600_000_000
            product = f"{from_us(t0):%Y%m%dT%H%M}Z-60"
            for _ in range(args.trades_per_hour):
                tid += 1
                b, s = rng.sample(members, 2)
                trades.append((BENCH_MARKET, tid, tid, product, from_us(t0), b, s, 2 * tid, 2 * tid + 1,
                               1 + rng.randrange(2_000), 20_000 + rng.randrange(10_000),
                               from_us(t0) - timedelta(hours=2)))
        if trades:
            await pool.copy_records_to_table("trades", records=trades, columns=[
                "market_id", "trade_id", "seq", "product_id", "delivery_start", "buyer", "seller", "buy_order_id",
                "sell_order_id", "energy_wh", "price_ticks", "ts"])
        with tempfile.TemporaryDirectory(prefix="voltbourse-metering-") as tmp:
            path = Path(tmp) / "readings.csv"
            rows = write_csv(path, args.members, args.days)
            size = path.stat().st_size
            t = time.perf_counter()
            result = await svc.import_path(path, now_us=None)
            import_s = time.perf_counter() - t
        t = time.perf_counter()
        bills = await svc.run_bills(start_us, end_us)
        bill_s = time.perf_counter() - t
        t = time.perf_counter()
        again = await svc.run_bills(start_us, end_us)
        rerun_s = time.perf_counter() - t
        return {"members": args.members, "days": args.days, "rows": rows, "csv_mb": round(size / 2**20, 1),
                "trades": len(trades), "imported": result["new_values"],
                "rows_per_s": round(rows / import_s), "import_s": round(import_s, 2),
                "bill_year_s": round(bill_s, 2), "bills": len(bills),
                "rerun_s": round(rerun_s, 2), "rerun_new_versions": sum(1 for b in again if b["new"]),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    finally:
        await pool.close()


def cmd_bench(args: argparse.Namespace) -> int:
    res = run_on_database(lambda dsn: _bench(dsn, args), args.dsn, prefix="bench-metering-")
    print(json.dumps(res) if args.json else "  ".join(f"{k} {v}" for k, v in res.items()))
    return 0


def add_commands(sub, bench_sub) -> None:
    b = bench_sub.add_parser("metering", help="import a year of readings from CSV, settle and bill it")
    b.add_argument("--members", type=int, default=1000)
    b.add_argument("--days", type=int, default=365)
    b.add_argument("--trades-per-hour", type=int, default=20)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--dsn", default=None, help="PostgreSQL to use (default: a scratch embedded one)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
