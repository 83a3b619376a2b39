"""``voltbourse flex ...`` and ``voltbourse bench flex`` (standard library only at module level).

    flex pool OFFERS [--margin-ppm N] [--min-bid-w W] [--granularity-w W] [--max-bid-w W]
        OFFERS: comma-separated POWER_W:PRICE_TICKS[:ENERGY_WH]; prints the bids the pooler
        builds from them for a 60-minute validity period (the docs' worked example:
        400000:6000,350000:7000,300000:8000,250000:9000,200000:7500:100000 --max-bid-w 1000000)
    bench flex [--offers N] [--seed N] [--json]   pooling + split + sharing throughput
"""

from __future__ import annotations

import argparse
import json
import random
import time

from exchange.flexibility.core import (
    Direction,
    Offer,
    Participant,
    ProductRules,
    ShareRule,
    SplitRule,
    allocate,
    share_revenue,
    split_activation,
)


def cmd_pool(args: argparse.Namespace) -> int:

    t0 = 0
    offers = []
    for i, item in enumerate(args.offers.split(","), 1):
        parts = [int(x) for x in item.split(":")]
        offers.append(Offer(i, f"offer{i}", t0, t0 + 3_600_000_000, Direction.UP, parts[0], parts[1],
                            energy_wh=parts[2] if len(parts) > 2 else None))
    rules = ProductRules(min_bid_w=args.min_bid_w, granularity_w=args.granularity_w, max_bid_w=args.max_bid_w)
    alloc = allocate(offers, rules, t0, reserve_margin_ppm=args.margin_ppm)
    print(json.dumps(alloc.to_dict(), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:


    rng = random.Random(args.seed)
    offers = [Offer(i, f"m{i}", 0, 3_600_000_000, Direction.UP, rng.randrange(1_000, 500_000), rng.randrange(0, 20_000))
              for i in range(args.offers)]
    rules = ProductRules()
    t = time.perf_counter()
    alloc = allocate(offers, rules, 0, reserve_margin_ppm=100_000)
    t_pool = time.perf_counter() - t
    t = time.perf_counter()
    parts = [x for b in alloc.bids for x in split_activation(b, b.volume_w, SplitRule.PRO_RATA)]
    t_split = time.perf_counter() - t
    t = time.perf_counter()
    share_revenue(10**12, 10**9, [Participant(p.member, w, w) for p, w in parts], ShareRule.PRO_RATA_DELIVERED)
    t_share = time.perf_counter() - t
    res = {"offers": args.offers, "bids": len(alloc.bids), "pool_s": round(t_pool, 4), "split_s": round(t_split, 4),
           "share_s": round(t_share, 4)}
    print(json.dumps(res) if args.json else "  ".join(f"{k} {v}" for k, v in res.items()))
    return 0


def add_commands(sub, bench_sub) -> None:
    p = sub.add_parser("flex", help="flexibility gateway tools")
    fs = p.add_subparsers(dest="flex_command", required=True, metavar="ACTION")
    q = fs.add_parser("pool", help="show the bids the pooler builds from offers")
    q.add_argument("offers", help="POWER_W:PRICE_TICKS[:ENERGY_WH],...")
    q.add_argument("--margin-ppm", type=int, default=100_000, help="reserve margin (default 100000 = 10%%)")
    q.add_argument("--min-bid-w", type=int, default=1_000_000)
    q.add_argument("--granularity-w", type=int, default=100_000)
    q.add_argument("--max-bid-w", type=int, default=50_000_000)
    q.set_defaults(func=cmd_pool)
    b = bench_sub.add_parser("flex", help="flexibility pooling, activation split and revenue sharing throughput")
    b.add_argument("--offers", type=int, default=100_000)
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
