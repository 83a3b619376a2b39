"""``voltbourse snapshots list|verify|take`` (operator) and ``voltbourse bench recovery``.

    snapshots list [--json]      the market's snapshots (command, seq, size, hash, time)
    snapshots verify [--json]    replay the whole journal; check every snapshot against it
                                 (exit 1 if one does not match)
    snapshots take               write a snapshot of the journal's end now
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from exchange.runtime.config import load_settings
from exchange.runtime.db import create_pool, database
from exchange.runtime.journal import Journal
from exchange.runtime.service import run_async
from exchange.runtime.snapshots import SnapshotStore, take, verify_chain
from exchange.tools.bench_recovery import bench_recovery


async def _with_market(dsn: str, market_id: str, fn: Any) -> int:
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        journal, store = Journal(pool, market_id), SnapshotStore(pool, market_id)
        config = await journal.stored_config()
        if config is None:
            print(f"market {market_id} has no journal here")
            return 1
        result: int = await fn(journal, store, config)
        return result
    finally:
        await pool.close()


def cmd_snapshots(args: argparse.Namespace) -> int:
    settings = load_settings()

    async def listing(journal: Journal, store: SnapshotStore, config: Any) -> int:
        infos = await store.list()
        rows = [{"cmd_seq": i.cmd_seq, "seq": i.seq, "bytes": i.bytes, "state_hash": i.state_hash,
                 "created_at": i.created_at.isoformat()} for i in infos]  # type: ignore[attr-defined]
        print(json.dumps(rows) if args.json else "\n".join(
            f"command {r['cmd_seq']:>10}  seq {r['seq']:>10}  {r['bytes']:>10} bytes  {r['state_hash'][:16]}  "
            f"{r['created_at']}" for r in rows) or "no snapshots")
        return 0

    async def verify(journal: Journal, store: SnapshotStore, config: Any) -> int:
        checks, last = await verify_chain(journal, store, config)
        bad = [c for c in checks if not c.ok]
        if args.json:
            print(json.dumps({"commands_replayed": last, "snapshots": len(checks), "ok": not bad,
                              "problems": [{"cmd_seq": c.cmd_seq, "problem": c.problem} for c in bad]}))
        else:
            for c in checks:
                print(f"command {c.cmd_seq:>10}: {'OK' if c.ok else 'MISMATCH: ' + str(c.problem)}")
            print(f"{len(checks)} snapshots checked against a full replay of {last} commands: "
                  f"{'all match' if not bad else f'{len(bad)} do not match'}")
        return 1 if bad else 0

    async def taking(journal: Journal, store: SnapshotStore, config: Any) -> int:
        enc = await take(journal, store, config)
        print(f"snapshot at command {enc.cmd_seq} (seq {enc.seq}, {len(enc.state)} bytes, state {enc.state_hash[:16]})")
        return 0

    fn = {"list": listing, "verify": verify, "take": taking}[args.snapshots_command]
    with database(settings) as dsn:
        code: int = run_async(_with_market(dsn, settings.market_id, fn))
    return code


def cmd_bench_recovery(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    result = bench_recovery(sizes, seed=args.seed, tail=args.tail)
    print(json.dumps(result) if args.json else "\n".join(
        f"{s['commands']:>10} commands: restart {s['snapshot_restart_s']:.2f} s with a snapshot, "
        f"{s['full_replay_s']:.2f} s replaying everything" for s in result["sizes"]))
    return 0


def add_commands(sub: Any, bench_sub: Any) -> None:
    p = sub.add_parser("snapshots", help="engine snapshots: list, verify against a full replay, take one")
    s = p.add_subparsers(dest="snapshots_command", required=True, metavar="ACTION")
    for name, help_ in (("list", "the market's snapshots"),
                        ("verify", "replay the whole journal and check every snapshot (exit 1 on a mismatch)"),
                        ("take", "write a snapshot of the journal's end now")):
        a = s.add_parser(name, help=help_)
        a.add_argument("--json", action="store_true", help="print JSON")
        a.set_defaults(func=cmd_snapshots)
    b = bench_sub.add_parser("recovery", help="restart time with snapshots vs a full journal replay")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--sizes", default="100000,1000000", help="journal sizes in commands (e.g. 100000,1000000,10000000)")
    b.add_argument("--tail", type=int, default=5000, help="commands after the newest snapshot")
    b.add_argument("--seed", type=int, default=1)
    b.set_defaults(func=cmd_bench_recovery)
