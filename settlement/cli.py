"""``voltbourse settlement ...`` and ``voltbourse bench settlement`` (a subsystem's CLI, registered through its Subsystem)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from eth_account import Account
from web3 import Web3

from exchange.runtime.config import Settings, load_settings
from exchange.runtime.db import create_pool, database
from exchange.runtime.service import run_async
from settlement.bench import FLOW_RATE, MIN_BATCH, THIN_MAX_AGE_S, bench_settlement
from settlement.chain import Chain, ChainError, chain_data_path
from settlement.chainstore import DEFAULT_KEEP_BLOCKS, MIN_KEEP_BLOCKS, ChainStoreLocked, compact
from settlement.devnode import DevNodeUnavailable
from settlement.reconcile import reconcile
from settlement.worker import RedeployRefused, approve_redeploy, compaction_floor


def cmd_reconcile(args: argparse.Namespace) -> int:
    """With a JSON-RPC chain (``chain_rpc_url``) reconcile here, straight against the node
    and the database. The in-process EVM lives inside the running exchange, so then ask
    the exchange to do it (operator API, ``--url`` and the operator token)."""

    settings = load_settings()
    report: dict[str, Any] | None
    if settings.chain_rpc_url and not args.url:
        report = _reconcile_direct(settings)
    else:
        report = _reconcile_remote(args.url or f"http://127.0.0.1:{settings.port}", args.token or (
            settings.operator_token.get_secret_value() if settings.operator_token else None))
        if report is None:
            return 2
    if args.json:
        print(json.dumps(report))
    else:
        in_flight = report.get("in_flight", [])
        print(f"trades {report['trades']}, batches {report['batches']} ({report['anchored']} anchored"
              + (f", {len(in_flight)} in flight" if in_flight else "")
              + f"), pending {report['pending_trades']}: {'OK' if report['ok'] else 'DIFFERENCES'}")
        for d in report["differences"]:
            print("  -", d)
        for d in in_flight:
            print("  (in flight)", d)
        for d in report.get("unverifiable", []):
            print("  (unverifiable)", d)
        if report.get("compacted"):
            print(f"  ({report['compacted']} anchored batches checked by their root only: their blocks were "
                  "compacted away)")
    return 0 if report["ok"] else 1


def _reconcile_direct(settings) -> dict:


    async def run(dsn: str) -> dict:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            row = await pool.fetchrow("SELECT * FROM settlement_deployments WHERE market_id = $1 AND active",
                                      settings.market_id)
            if row is None:
                raise SystemExit(f"no contracts deployed for market {settings.market_id!r} yet")
            chain = Chain.from_settings(settings)
            try:
                chain.attach(row["token_address"], row["registry_address"])
                return (await reconcile(pool, settings.market_id, chain,
                                        deployment_id=row["deployment_id"])).as_dict()
            finally:
                chain.close()
        finally:
            await pool.close()

    with database(settings) as dsn:
        return run_async(run(dsn))


def _reconcile_remote(url: str, token: str | None) -> dict | None:

    if not token:
        print("voltbourse: give the operator token (--token or VOLTBOURSE_OPERATOR_TOKEN)", file=sys.stderr)
        return None
    req = urllib.request.Request(url.rstrip("/") + "/api/operator/settlement/reconcile", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        print(f"voltbourse: cannot reach the exchange at {url}: {exc}", file=sys.stderr)
        return None


REDEPLOY_CONSEQUENCES = """\
At its next start the exchange will deploy the settlement contracts anew on the node, if
the contracts recorded for this market are gone from it (a node reset or restarted empty):
  - batches anchored on the lost deployment stay recorded against it and become
    unverifiable (their proofs name a registry that no longer exists);
  - batches not anchored yet are anchored on the new deployment;
  - every member's collateral in the engine restarts from the new chain's (zero until
    members deposit again).
Without this, the exchange refuses to start on such a node. Run again with --yes to approve."""


def cmd_redeploy(args: argparse.Namespace) -> int:
    """The operator's explicit consent to a redeployment over a node that lost ours
    (recorded in the database, used by the next start; see docs/settlement.md)."""
    settings = load_settings()
    if not settings.chain_rpc_url and chain_data_path(settings) is None:
        print("voltbourse: the in-process EVM is ephemeral (VOLTBOURSE_CHAIN_DATA_DIR=ephemeral): it starts empty "
              "with every run and is redeployed on by itself; nothing to approve", file=sys.stderr)
        return 0
    if not args.yes:
        print(REDEPLOY_CONSEQUENCES)
        return 1

    async def run(dsn: str) -> str:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            chain: Chain | None
            try:
                chain = Chain.from_settings(settings)
            except Exception as exc:  # noqa: BLE001 - an unreachable node (or a chain in use): approve without looking
                print(f"voltbourse: cannot reach the chain ({exc}); approving without checking it", file=sys.stderr)
                chain = None
            try:
                return await approve_redeploy(pool, settings.market_id, chain)
            finally:
                if chain is not None:
                    chain.close()
        finally:
            await pool.close()

    try:
        with database(settings) as dsn:
            print(run_async(run(dsn)))
    except RedeployRefused as exc:
        print(f"voltbourse: {exc}", file=sys.stderr)
        return 1
    return 0


NEW_KEY_ENV = "VOLTBOURSE_NEW_OPERATOR_KEY"


def _new_key(key_file: str | None) -> str:
    """The new operator's private key: from a file (first line) or the environment, never
    from the command line (it would be in the shell history and the process list)."""
    if key_file:
        with open(key_file, encoding="utf-8") as f:
            key = f.readline().strip()
    else:
        key = os.environ.get(NEW_KEY_ENV, "").strip()
    if not key:
        raise SystemExit(f"voltbourse: give the new operator's key in a file (--key-file) or in {NEW_KEY_ENV}")
    try:
        Account.from_key(key)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"voltbourse: the new operator's key is not a private key: {exc}") from None
    return key


def cmd_operator(args: argparse.Namespace) -> int:
    """Rotate the operator key of the market's settlement contracts (Ownable2Step, both
    contracts): ``show`` who operates them, ``propose ADDRESS`` (signed by the configured
    operator key), ``accept`` (signed by the new key). docs/settlement.md, "The operator key"."""
    settings = load_settings()
    action = args.operator_command
    new = Account.from_key(_new_key(getattr(args, "key_file", None))) if action == "accept" else None
    if action == "propose":
        try:
            proposed = Web3.to_checksum_address(args.address)
        except ValueError:
            print(f"voltbourse: {args.address!r} is not an address", file=sys.stderr)
            return 2

    async def run(dsn: str) -> dict:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            row = await pool.fetchrow("SELECT token_address, registry_address FROM settlement_deployments "
                                      "WHERE market_id = $1 AND active", settings.market_id)
        finally:
            await pool.close()
        if row is None:
            raise SystemExit(f"voltbourse: no contracts deployed for market {settings.market_id!r} yet")
        try:
            chain = Chain.from_settings(settings)
        except ChainStoreLocked:
            raise SystemExit("voltbourse: the in-process chain is in use: stop the exchange (voltbourse serve) "
                             "first, after settlement went idle (voltbourse settlement reconcile)") from None
        try:
            chain.attach(row["token_address"], row["registry_address"])
            if action == "propose":
                chain.propose_operator(proposed)
            elif action == "accept" and new is not None:
                if chain.is_in_process and not chain.w3.eth.get_balance(new.address):
                    chain.faucet(new.address, 10**18)  # gas money for the two acceptances
                chain.accept_operator(new)
            operators = chain.operators()
        finally:
            chain.close()
        return {"market_id": settings.market_id, "configured_key": chain.operator.address,
                **{name: {"operator": op, "pending": None if int(pending, 16) == 0 else pending}
                   for name, (op, pending) in operators.items()}}

    try:
        with database(settings) as dsn:
            report = run_async(run(dsn))
    except ChainError as exc:
        print(f"voltbourse: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        for name in ("token", "registry"):
            r = report[name]
            print(f"{name:>8}: operator {r['operator']}" + (f", pending {r['pending']}" if r["pending"] else ""))
        configured = report["configured_key"]
        if all(report[n]["operator"] == configured for n in ("token", "registry")):
            print(f"the configured key ({configured}) operates both contracts")
        elif action == "accept":
            print(f"the new key operates both contracts now: start the exchange with VOLTBOURSE_CHAIN_OPERATOR_KEY "
                  f"set to it (the configured key, {configured}, no longer is the operator)")
        else:
            print(f"the configured key ({configured}) is not the operator: set VOLTBOURSE_CHAIN_OPERATOR_KEY "
                  "to the operator's key")
    return 0


def cmd_compact_chain(args: argparse.Namespace) -> int:
    """Compact the in-process chain's store (settlement.chainstore.compact) while the exchange
    is stopped: keep the last ``--keep-blocks`` blocks (and every block from the chain scan's
    cursor on) and the head's state, drop the rest. docs/settlement.md, "The in-process chain
    on disk"."""
    settings = load_settings()
    directory = chain_data_path(settings)
    if settings.chain_rpc_url or directory is None:
        print("voltbourse: the chain is " + ("a JSON-RPC node" if settings.chain_rpc_url else "in memory (ephemeral)")
              + ": no in-process chain store to compact", file=sys.stderr)
        return 2
    if args.keep_blocks < MIN_KEEP_BLOCKS:
        print(f"voltbourse: --keep-blocks must be at least {MIN_KEEP_BLOCKS}", file=sys.stderr)
        return 2
    if not (directory / "chain.sqlite3").is_file():
        print(f"voltbourse: no in-process chain in {directory}", file=sys.stderr)
        return 2

    async def floor(dsn: str) -> int | None:
        pool = await create_pool(dsn, min_size=1, max_size=2)
        try:
            return await compaction_floor(pool, settings.market_id)
        finally:
            await pool.close()

    with database(settings) as dsn:
        keep_from = run_async(floor(dsn))
    try:
        done = compact(directory, args.keep_blocks, keep_from=keep_from)
    except ChainStoreLocked:
        print("voltbourse: the in-process chain is in use: stop the exchange (voltbourse serve, or voltbourse "
              "settle) first", file=sys.stderr)
        return 1
    report = {"directory": str(directory), **done.as_dict()}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"compacted {directory}: {done.bytes_before / 1e6:.1f} MB -> {done.bytes_after / 1e6:.1f} MB in "
              f"{done.seconds:.1f} s; head #{done.head}, blocks #{done.history_start}..#{done.head} kept whole "
              "(and the genesis), the head's state")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:

    try:
        figures = bench_settlement(args.trades, args.seed, args.batch_size, args.rate, args.stream_seconds,
                                   args.max_age, rpc=args.rpc, operator_key=args.operator_key,
                                   flow_rate=args.flow_rate, flow_s=args.flow_seconds, flow_speed=args.flow_speed,
                                   min_batch=args.min_batch, thin_max_age_s=args.thin_max_age)
    except DevNodeUnavailable as exc:
        print(f"voltbourse: {exc}", file=sys.stderr)
        return 2
    result = {"bench": "settlement", **figures}
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
    r.add_argument("--url", help="the running exchange (default http://127.0.0.1:<port>); used with the "
                                 "in-process EVM, which lives inside the exchange")
    r.add_argument("--token", help="operator token (default: settings.operator_token)")
    r.set_defaults(func=cmd_reconcile)
    d = s.add_parser("redeploy", help="approve deploying the contracts anew on a node that lost them (the exchange "
                                      "refuses to start on such a node otherwise)")
    d.add_argument("--yes", action="store_true", help="approve (without it: print what it means, exit 1)")
    d.set_defaults(func=cmd_redeploy)
    o = s.add_parser("operator", help="rotate the operator key of the settlement contracts (show, propose a new "
                                      "operator, accept with its key)")
    osub = o.add_subparsers(dest="operator_command", required=True, metavar="STEP")
    show = osub.add_parser("show", help="who operates the contracts, and who is proposed")
    prop = osub.add_parser("propose", help="propose ADDRESS as the new operator (signed by the configured key; "
                                           "nothing changes until it accepts)")
    prop.add_argument("address", help="the new operator's address (0x...)")
    acc = osub.add_parser("accept", help="take over both contracts with the new key (read from --key-file or "
                                         f"{NEW_KEY_ENV}, never from the command line)")
    acc.add_argument("--key-file", help="a file whose first line is the new operator's private key")
    for q in (show, prop, acc):
        q.add_argument("--json", action="store_true", help="print the result as JSON")
        q.set_defaults(func=cmd_operator)

    cc = s.add_parser("compact-chain", help="shrink the in-process chain's store: keep recent blocks and the current "
                                            "state, drop older history (the exchange must be stopped)")
    cc.add_argument("--keep-blocks", type=int, default=DEFAULT_KEEP_BLOCKS,
                    help=f"recent blocks kept whole (default {DEFAULT_KEEP_BLOCKS}, at least {MIN_KEEP_BLOCKS}); "
                         "blocks from the chain scan's cursor on are kept too")
    cc.add_argument("--json", action="store_true", help="print the result as JSON")
    cc.set_defaults(func=cmd_compact_chain)

    b = bench_sub.add_parser("settlement", help="trades anchored per second, gas per trade and lag on the "
                                                "in-process EVM or a JSON-RPC node (--rpc)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--trades", type=int, default=20_000, help="backlog of trades to settle (default 20000)")
    b.add_argument("--seed", type=int, default=1)
    batch_size = Settings.model_fields["settlement_batch_size"].default
    b.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"trades per batch at most (default {batch_size}, the setting's default)")
    b.add_argument("--rate", type=int, default=1000, help="trades/s of the live stream phase")
    b.add_argument("--stream-seconds", type=float, default=10.0, help="length of the live stream phase")
    b.add_argument("--max-age", type=float, default=5.0, help="settlement_max_age_s during the stream phase")
    b.add_argument("--rpc", metavar="URL", help="settle on this JSON-RPC node (fresh contracts deployed there) "
                                                "instead of the in-process EVM; 'hardhat' starts the local Hardhat "
                                                "dev node of contracts/ for the run")
    b.add_argument("--operator-key", help="the operator's key on the --rpc node (default: the dev node's first "
                                          "account, Hardhat's and anvil's well-known key 0)")
    b.add_argument("--flow-rate", type=float, default=FLOW_RATE,
                   help=f"trades/s of the realistic flow, as in `bots run` (default {FLOW_RATE})")
    b.add_argument("--flow-seconds", type=float, default=100.0, help="length of the realistic flow, in real-flow "
                                                                     "seconds (default 100)")
    b.add_argument("--flow-speed", type=float, default=2.0, help="the realistic flow runs this many times faster "
                                                                 "than real time, ages scaled alike (default 2)")
    b.add_argument("--min-batch", type=int, default=MIN_BATCH,
                   help=f"thin-flow policy measured: a batch waits for this many trades (default {MIN_BATCH}) ...")
    b.add_argument("--thin-max-age", type=float, default=THIN_MAX_AGE_S,
                   help=f"... or until its oldest trade waited this long (default {THIN_MAX_AGE_S:g} s)")
    b.set_defaults(func=cmd_bench)
