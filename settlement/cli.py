"""``voltbourse settlement ...`` and ``voltbourse bench settlement`` (stdlib imports only here)."""

from __future__ import annotations

import argparse
import json


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Reconcile against the chain the running exchange uses (its RPC node), or, with the
    in-process EVM (which lives inside the exchange process), against a fresh chain on
    which the recorded batches are replayed first (``--replay``)."""
    from exchange.config import load_settings
    from exchange.db import database
    from exchange.service import run_async

    from .reconcile_cli import reconcile_command

    settings = load_settings()
    with database(settings) as dsn:
        report = run_async(reconcile_command(dsn, settings))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"trades {report['trades']}, batches {report['batches']} ({report['anchored']} anchored), "
              f"pending {report['pending_trades']}: {'OK' if report['ok'] else 'DIFFERENCES'}")
        for d in report["differences"]:
            print("  -", d)
    return 0 if report["ok"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_settlement

    result = {"bench": "settlement", **bench_settlement(args.trades, args.seed, args.batch_size, args.rate,
                                                         args.stream_seconds, args.max_age)}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0


def add_commands(sub, bench_sub) -> None:
    p = sub.add_parser("settlement", help="on-chain settlement tasks")
    s = p.add_subparsers(dest="settlement_command", required=True, metavar="ACTION")
    r = s.add_parser("reconcile", help="prove every trade is in exactly one anchored batch whose root and nets "
                                       "are on chain")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=cmd_reconcile)

    b = bench_sub.add_parser("settlement", help="trades anchored per second, gas per trade and lag on the "
                                                "in-process EVM")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--trades", type=int, default=20_000, help="backlog of trades to settle (default 20000)")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--batch-size", type=int, default=2000, help="trades per batch (default 2000, the setting's default)")
    b.add_argument("--rate", type=int, default=1000, help="trades/s of the live stream phase")
    b.add_argument("--stream-seconds", type=float, default=10.0, help="length of the live stream phase")
    b.add_argument("--max-age", type=float, default=5.0, help="settlement_max_age_s during the stream phase")
    b.set_defaults(func=cmd_bench)
