"""The settlement worker: committed trades -> batches -> Merkle root + nets on chain.

It is a downstream consumer of the journal with its own cursor (``settlement``):

1. **ingest**: the signatures of signed orders (``order_accepted`` events after the
   cursor) are copied to ``order_signatures``; the cursor advances in the same
   transaction. Trades themselves are already in the ``trades`` projection, written
   in the journal's transaction.
2. **form**: when ``batch_size`` ingested trades wait, or the oldest has waited
   ``max_age_s``, the next batch is formed in one transaction: its row (``prepared``,
   root, nets, trade range). Its trades are those of its range (the trades after the
   previous batch's): a trade is in exactly one batch, and ``trades`` (the runtime's table)
   is only read.
   Thin flow (``min_batch``, off by default): a smaller batch waits past ``max_age_s``
   for ``min_batch`` trades, at most until its oldest waited ``thin_max_age_s``.
3. **send**: the ``anchorBatch`` transaction is signed locally; its hash and raw bytes
   are recorded (``sent``) *before* it is broadcast. After a crash a ``sent`` batch is
   resolved from the chain: receipt of the recorded hash, else the registry's own
   record of the batch id, else the same raw transaction is sent again. The contract
   refuses a batch id twice, so no path can anchor a batch twice.
4. **record**: on a successful receipt the batch becomes ``anchored`` (block, gas).
5. **collateral**: each member of an anchored batch gets an ``UpdateCollateral``
   (chain collateral, settled payable, ``settlement_ref`` = batch id; the engine
   applies a ref once), then ``collateral_applied`` is set.
6. **chain events**: deposits and withdrawal requests are read from bounded block
   ranges after the deployment's ``scanned_block``. A deposit raises the member's
   collateral in the engine; a withdrawal is reserved in the engine (refused there
   if it backs open buy orders or unsettled trades) and then executed or rejected
   on chain.

A chain that is down or refuses a transaction leaves the batch where it is; the
worker retries with exponential back-off and raises ``alert`` (metrics, operator
page) until it succeeds. Nothing is lost: trades only ever move forward.

Chain faults (docs/settlement.md, "Chain faults"):

- **reverts**: every ``anchorBatch`` is first run as a free ``eth_call``; a revert is
  decoded by selector from the compiled ABI (:mod:`settlement.reverts`). A batch that
  would revert (or whose mined transaction reverted with a decoded error) becomes
  ``blocked``: never sent again while the ``eth_call`` still reverts (rechecked every
  ``recheck_s``), with an alert naming the error. Later batches that share a member with
  it wait behind it (the engine applies a member's settled batches in order); the others
  go on. Collateral of an anchored batch is applied only after every earlier batch of
  its members.
- **nonces**: before sending, the operator's nonce is compared with the node's pending
  nonce; stored transactions the node does not have are re-sent in nonce order, those
  after a gap or whose nonce was taken are signed anew. ``already known`` from the node
  means pending, never failed.
- **scanning**: ``scanned_block`` never passes the head scanned, its hash is kept, and a
  head below it or a changed hash rescans from below the new head.
- **start**: the node's chain id must be the signing domain's, its EVM must run cancun
  opcodes, and a deployment gone from a node that keeps state is refused (the operator
  approves a redeployment with ``voltbourse settlement redeploy --yes``).
- **rollbacks**: every ``check_s`` (and at start) the registry's batches and recent roots
  are compared with the database; anchored batches missing on chain go back to ``sent``
  and their stored transactions are re-sent in nonce order (or signed anew).

``fault(point)`` is a test hook called at each crash point; raising there
simulates a crash of the worker at that point.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from web3.logs import DISCARD

from exchange.core.units import iso_dt
from exchange.runtime.config import Settings
from exchange.runtime.inbox import DirectEngine
from exchange.runtime.ports import CollateralUpdate, EngineCommands, Payout, PayoutSource
from settlement.chain import CALL_GAS, Chain, ChainError, EvmTooOld, SendRefused, chain_data_path, tx_hash_of, tx_nonce
from settlement.chainstore import DEFAULT_KEEP_BLOCKS, ChainStoreLocked, Compaction, compact, droppable_blocks
from settlement.collateral import ChainCollateral, record_deposits
from settlement.merkle import MerkleTree, TradeRecord, leaf
from settlement.netting import net_amounts
from settlement.reverts import NONCE_TOO_HIGH, NONCE_TOO_LOW, Revert

log = logging.getLogger(__name__)

CONSUMER = "settlement"
SCAN_BLOCKS = 2_000  # chain events read per query
#: blocks rescanned below the new head after the head went back or a scanned block changed
REORG_RESCAN = 64
#: the settlement process compacts the in-process chain's store when it opens it and a
#: compaction would drop at least this many blocks (≈ 25 KB of store each, ≈ 100 MB)
AUTO_COMPACT_BLOCKS = 4_096
#: anchored batches (the most recent) whose roots are compared with the registry at each check
CHECK_RECENT = 16
#: a batch whose transaction reverts without a decodable reason is signed anew at most this often
MAX_BLIND_REVERTS = 3
#: after a revert, a block or a rollback, every batch is run as an eth_call first for this long
CAUTIOUS_S = 600.0
#: the order alerts are shown in
ALERT_KINDS = ("deployment", "mismatch", "rollback", "blocked", "chain")
FAULT_POINTS = ("after_form", "after_sign", "after_record_sent", "after_send", "after_record_anchored",
                "after_collateral")

_TRADE_SELECT = """
    SELECT t.trade_id, t.seq, t.product_id, t.buyer, t.seller, t.energy_wh, t.price_ticks,
           bs.signature AS buy_signature, ss.signature AS sell_signature
    FROM trades t
    LEFT JOIN order_signatures bs ON bs.market_id = t.market_id AND bs.order_id = t.buy_order_id
    LEFT JOIN order_signatures ss ON ss.market_id = t.market_id AND ss.order_id = t.sell_order_id
"""


#: the market's trades in no batch yet: those after the last batch's range. A batch holds the
#: trades ``first_trade_id..last_trade_id`` of its market (settlement's own table; the
#: runtime's ``trades`` is only read); batches are formed in trade-id order, and trade ids
#: below 1 (none the engine gives) are never settled.
_FLOOR = "(SELECT coalesce(max(last_trade_id), 0) FROM settlement_batches WHERE market_id = $1)"
PENDING_TRADES_SQL = f"SELECT count(*) FROM trades WHERE market_id = $1 AND trade_id > {_FLOOR}"
#: joins a trade ``t`` to the batch ``b`` that holds it (none: not in a batch yet)
BATCH_OF_TRADE = ("LEFT JOIN LATERAL (SELECT * FROM settlement_batches sb WHERE sb.market_id = t.market_id "
                  "AND sb.last_trade_id >= t.trade_id ORDER BY sb.last_trade_id LIMIT 1) b "
                  "ON b.first_trade_id <= t.trade_id")


async def pending_trades(conn, market_id: str) -> int:
    """How many of the market's trades are in no batch yet (``conn``: a connection or pool)."""
    return await conn.fetchval(PENDING_TRADES_SQL, market_id)


async def unsettled(conn, market_id: str) -> int:
    """The market's trades in no batch yet plus its batches not anchored yet: 0 once
    everything committed so far is on chain (what the demo and benchmarks wait for)."""
    return await conn.fetchval(
        f"SELECT ({PENDING_TRADES_SQL}) + (SELECT count(*) FROM settlement_batches WHERE market_id = $1 "
        "AND state <> 'anchored')", market_id)


def trade_record(r) -> TradeRecord:
    return TradeRecord(r["trade_id"], r["product_id"], r["buyer"], r["seller"], r["energy_wh"], r["price_ticks"],
                       r["buy_signature"], r["sell_signature"])


class SettlementStartError(RuntimeError):
    """The worker refuses to start; the message names the problem and what to do."""


class DeploymentLost(ChainError):
    """The registry recorded for this market has no code on the node (any more)."""


class RedeployRefused(RuntimeError):
    """``voltbourse settlement redeploy`` found nothing to redeploy."""


def _members(nets) -> set[str]:
    return {m for m, _ in nets}


#: what the operator can do about a blocking error of our contracts
_HINTS = {
    "InsufficientCollateral": "the member's collateral on chain is below what it owes in this batch: it must "
                              "deposit at least needed - collateral, or the operator credit it",
    "OwnableUnauthorizedAccount": "the operator key is not the registry's operator (its owner): configure the "
                                  "right key",
    "NetNotZero": "the batch's nets do not sum to zero: a bug, report it",
    "EmptyRoot": "the batch has an empty root: a bug, report it",
    "BadSequenceRange": "the batch's sequence range is invalid: a bug, report it",
    "LengthMismatch": "members and amounts differ in length: a bug, report it",
}


async def approve_redeploy(pool: asyncpg.Pool, market_id: str, chain: Chain | None = None) -> str:
    """The operator's explicit consent (``voltbourse settlement redeploy --yes``) to deploy
    the contracts anew when the active deployment is gone from the node. With ``chain``
    given, refuses when the deployment is in fact still there."""
    row = await pool.fetchrow("SELECT * FROM settlement_deployments WHERE market_id = $1 AND active", market_id)
    if row is None:
        return f"no deployment recorded for market {market_id!r}: the next start deploys the contracts"
    if chain is not None and row["chain_id"] == chain.chain_id and row["genesis_hash"] == chain.genesis_hash \
            and chain.has_code(row["registry_address"]):
        raise RedeployRefused(f"deployment {row['deployment_id']} (registry {row['registry_address']}) is intact on "
                              f"this node (chain {chain.chain_id}): nothing to redeploy")
    await pool.execute("UPDATE settlement_deployments SET redeploy_approved_at = now() WHERE deployment_id = $1",
                       row["deployment_id"])
    anchored = await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE market_id = $1 AND "
                                   "deployment_id = $2 AND state = 'anchored'", market_id, row["deployment_id"])
    return (f"redeployment approved for market {market_id!r}: at its next start the exchange retires deployment "
            f"{row['deployment_id']} (registry {row['registry_address']}, chain {row['chain_id']}) if its contracts "
            f"are gone from the node, and deploys anew; its {anchored} anchored batches stay recorded against it "
            "(unverifiable), batches not anchored go to the new deployment, and members' collateral restarts from "
            "the new chain's")


async def compaction_floor(pool: asyncpg.Pool, market_id: str) -> int | None:
    """The oldest block the worker may still read on the market's chain: the chain scan's
    cursor minus its rescan window (a rollback rescans that far back). None before anything
    was deployed. A compaction keeps every block from there on."""
    row = await pool.fetchrow("SELECT scanned_block FROM settlement_deployments WHERE market_id = $1 AND active",
                              market_id)
    return None if row is None else max(0, row["scanned_block"] - REORG_RESCAN)


async def droppable_now(pool: asyncpg.Pool, market_id: str, directory: Path,
                        keep_blocks: int = DEFAULT_KEEP_BLOCKS) -> tuple[int | None, int | None]:
    """How many blocks a compaction of the chain's store in ``directory`` would drop now
    (None: no store there), keeping ``keep_blocks`` and every block from the chain scan's
    :func:`compaction_floor` on; and that floor. A read-only look beside the open store."""
    keep_from = await compaction_floor(pool, market_id)
    grown = await asyncio.get_running_loop().run_in_executor(
        None, lambda: droppable_blocks(directory, keep_blocks, keep_from=keep_from))
    return grown, keep_from


async def compact_chain_at_open(pool: asyncpg.Pool, settings: Settings, *, threshold: int = AUTO_COMPACT_BLOCKS,
                                keep_blocks: int = DEFAULT_KEEP_BLOCKS) -> Compaction | None:
    """Before the settlement worker opens the in-process chain on disk: compact its store
    (settlement.chainstore.compact, keeping ``keep_blocks`` and every block from the
    chain scan's rescan window on) when that would drop at least ``threshold`` blocks. A
    store in use, or a compaction that fails, is left as it is (the old store is intact:
    the open that follows reports a store in use)."""
    directory = chain_data_path(settings)
    if settings.chain_rpc_url or directory is None:
        return None
    grown, keep_from = await droppable_now(pool, settings.market_id, directory, keep_blocks)
    loop = asyncio.get_running_loop()
    if grown is None or grown < threshold:
        return None
    try:
        done = await loop.run_in_executor(None, lambda: compact(directory, keep_blocks, keep_from=keep_from))
    except ChainStoreLocked:
        return None
    except Exception:  # noqa: BLE001 - the old store is intact: settle on it, uncompacted
        log.exception("settlement: compacting the chain store in %s failed; going on without", directory)
        return None
    log.info("settlement: compacted the chain store in %s: %.1f MB -> %.1f MB in %.2f s (blocks #%d..#%d kept)",
             directory, done.bytes_before / 1e6, done.bytes_after / 1e6, done.seconds, done.history_start, done.head)
    return done


async def batch_trades(conn, market_id: str, batch_id: int) -> list[TradeRecord]:
    rows = await conn.fetch(
        _TRADE_SELECT + " JOIN settlement_batches b ON b.market_id = t.market_id AND b.batch_id = $2 "
        "WHERE t.market_id = $1 AND t.trade_id BETWEEN b.first_trade_id AND b.last_trade_id ORDER BY t.trade_id",
        market_id, batch_id)
    return [trade_record(r) for r in rows]


class _MarketLog(logging.LoggerAdapter):
    """``settlement: ...`` lines as ``settlement [market]: ...``."""

    def process(self, msg, kwargs):
        text = str(msg)
        if text.startswith("settlement: "):
            text = f"settlement [{self.extra['market']}]: " + text[len("settlement: "):]
        else:
            text = f"[{self.extra['market']}] {text}"
        return text, kwargs


class SettlementWorker:
    def __init__(self, pool: asyncpg.Pool, market_id: str, chain: Chain, *, runtime=None,
                 engine: EngineCommands | None = None,
                 batch_size: int = 10_000, max_age_s: float = 5.0, min_batch: int = 0,
                 thin_max_age_s: float | None = None, poll_s: float = 0.5,
                 retry_s: float = 1.0, retry_max_s: float = 60.0,
                 publish: Callable[[dict], None] | None = None,
                 fault: Callable[[str], None] | None = None,
                 payout_sources: Sequence[PayoutSource] = (),
                 signing_chain_id: int | None = None, check_s: float = 30.0, recheck_s: float = 5.0,
                 confirmations: int = 0, simulate: bool | None = None) -> None:
        self.pool = pool
        #: run every anchorBatch as an eth_call before signing it (no gas spent on a revert).
        #: Default: on a JSON-RPC node (one round trip, the node's CPU); on the in-process
        #: EVM only while cautious (it would cost the event loop's interpreter ~2/3 of a send).
        self.simulate_first = (not chain.is_in_process) if simulate is None else simulate
        self._cautious_until = 0.0  # simulate first until then (after a revert, a block, a heal)
        #: the chain id orders are signed for (settings.chain_id); the node must have it
        self.signing_chain_id = signing_chain_id
        self.check_s = check_s  # registry vs database comparison (rollbacks), this often
        self.recheck_s = recheck_s  # a blocked batch's eth_call, this often
        self.confirmations = confirmations  # chain events are read this many blocks below the head
        self.resend_wait_s = 10.0  # wait for the receipt of a re-sent transaction this long, then look later
        self.payout_sources = payout_sources
        self.market_id = market_id
        # every line names its market: a platform runs one worker per market in one process
        self.log = _MarketLog(log, {"market": market_id})
        self.chain = chain
        #: where collateral changes go (exchange.runtime.ports.EngineCommands): the runtime itself
        #: in the exchange's process (``runtime``), the engine inbox from the settlement process
        self.engine: EngineCommands | None = engine if engine is not None else (
            DirectEngine(runtime) if runtime is not None else None)
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        #: thin flow: a batch of fewer than ``min_batch`` trades waits past ``max_age_s`` until
        #: it has them or its oldest trade waited ``thin_max_age_s`` (gas per batch is mostly
        #: fixed, so a bigger batch costs less per trade; the price is lag). 0: off.
        self.min_batch = min_batch
        self.thin_max_age_s = max_age_s if thin_max_age_s is None else max(thin_max_age_s, max_age_s)
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.publish = publish
        self.fault = fault or (lambda point: None)
        self.deployment_id: int | None = None
        self.deploy_block = 0
        self._alerts: dict[str, str] = {}  # kind (ALERT_KINDS) -> what the operator reads
        self.last_reconcile: dict[str, Any] | None = None  # the last reconciliation's summary (run_reconcile)
        self.failures = 0
        self.stats = {"batches_anchored": 0, "trades_anchored": 0, "gas_used": 0, "chain_errors": 0,
                      "reverts": 0, "batches_blocked": 0, "rollbacks": 0, "batches_healed": 0, "rescans": 0,
                      "nonce_resets": 0}
        #: blocked batches: batch id -> the revert (as_dict) that blocks it, plus "waiting" ids
        self.blocked: dict[int, dict[str, Any]] = {}
        self._healing: set[int] = set()  # batches put back after a rollback, not anchored again yet
        self._lost = False  # the registry has no code on the node: nothing is sent
        self._next_check = 0.0
        self._rechecked_at: dict[int, float] = {}
        self.chain_head: int | None = None  # as of the last check or scan
        self.scanned_block: int | None = None
        self.last_pending = 0  # trades not in a batch, as of the last status()
        # wait of each anchored batch's oldest trade (seconds), the most recent ones
        self.lag_s: deque[float] = deque(maxlen=10_000)
        self._pending_since: float | None = None
        self._ingested_at: dict[int, float] = {}  # first trade id of a formed batch -> when it became pending
        #: members' collateral on chain at the head, as far as known without reading it
        self.known = ChainCollateral(chain)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tx_lock = asyncio.Lock()  # operator transactions: sign, record, send in turn

    # ------------------------------------------------------------------ alerts
    @property
    def alert(self) -> str | None:
        """Everything the operator should know now, most serious first (None: all well)."""
        return "; ".join(self._alerts[k] for k in ALERT_KINDS if k in self._alerts) or None

    @alert.setter
    def alert(self, value: str | None) -> None:
        """The transient alert (a chain error being retried)."""
        if value is None:
            self._alerts.pop("chain", None)
        else:
            self._alerts["chain"] = value

    @property
    def alerts(self) -> dict[str, str]:
        return dict(self._alerts)

    def _set_alert(self, kind: str, text: str | None) -> None:
        if text is None:
            if self._alerts.pop(kind, None) is not None:
                self.log.info("settlement: %s alert cleared", kind)
        elif self._alerts.get(kind) != text:
            self._alerts[kind] = text
            self.log.error("settlement: %s", text)

    # ------------------------------------------------------------------ plumbing
    async def run_on_chain(self, fn, *args):
        """Run a chain call on the worker's chain thread (for readers beside the worker: proofs)."""
        return await self._chain(fn, *args)

    async def _chain(self, fn, *args):
        """Run a (blocking) web3 call on the single chain thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def wake(self) -> None:
        """New trades were committed (a runtime subscriber can call this)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    async def shutdown(self) -> None:
        """Close, and wait (off the event loop) for a chain call in progress to end, so
        the chain can be closed after it."""
        self.close()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # ------------------------------------------------------------------ deployment
    async def _startup_checks(self) -> None:
        """The node is the chain we sign for, and its EVM runs what the contracts need."""
        c = self.chain
        if self.signing_chain_id is not None and c.chain_id != self.signing_chain_id and c.store is not None:
            raise SettlementStartError(
                f"the in-process chain in {c.store.directory} has chain id {c.chain_id}, but orders are signed for "
                f"chain id {self.signing_chain_id} (the EIP-712 signing domain, setting chain_id / "
                f"VOLTBOURSE_CHAIN_ID): a chain created before the in-process chain took the signing domain's id "
                f"keeps eth-tester's. Set VOLTBOURSE_CHAIN_ID={c.chain_id} to go on with it, or start a new chain "
                "(an empty VOLTBOURSE_CHAIN_DATA_DIR) and run `voltbourse settlement redeploy --yes` "
                "(docs/settlement.md, At start)")
        if self.signing_chain_id is not None and c.chain_id != self.signing_chain_id:
            raise SettlementStartError(
                f"the chain node reports chain id {c.chain_id}, but orders are signed for chain id "
                f"{self.signing_chain_id} (the EIP-712 signing domain, setting chain_id / VOLTBOURSE_CHAIN_ID): "
                f"point VOLTBOURSE_CHAIN_RPC_URL at a node of chain {self.signing_chain_id}, or set "
                f"VOLTBOURSE_CHAIN_ID={c.chain_id} if that node is the right one")
        try:
            await self._chain(c.check_evm)
        except EvmTooOld as exc:
            raise SettlementStartError(str(exc)) from exc

    async def start(self) -> int:
        """Attach to this market's contracts on this chain, deploying them on first start.

        Refuses (SettlementStartError) a node whose chain id is not the signing domain's, an
        EVM below cancun, and a node that lost a deployment recorded in the database, unless
        the chain is the ephemeral (in-memory) in-process EVM or the operator approved a redeployment
        (``voltbourse settlement redeploy --yes``)."""
        c = self.chain
        await self._startup_checks()
        row = await self.pool.fetchrow(
            "SELECT * FROM settlement_deployments WHERE market_id = $1 AND active", self.market_id)
        if row is not None:
            same_chain = row["chain_id"] == c.chain_id and row["genesis_hash"] == c.genesis_hash
            if same_chain and await self._chain(c.has_code, row["registry_address"]):
                c.attach(row["token_address"], row["registry_address"])
                self.deployment_id, self.deploy_block = row["deployment_id"], row["deploy_block"]
                if row["redeploy_approved_at"] is not None:  # the deployment is back: the consent lapses
                    await self.pool.execute("UPDATE settlement_deployments SET redeploy_approved_at = NULL "
                                            "WHERE deployment_id = $1", row["deployment_id"])
                await self.check_chain()
                self._next_check = time.monotonic() + self.check_s
                return self.deployment_id
            if not c.ephemeral and row["redeploy_approved_at"] is None:
                raise SettlementStartError(await self._lost_message(row, same_chain))
        dep = await self._chain(c.deploy)
        async with self.pool.acquire() as conn, conn.transaction():
            if row is not None:
                # The chain behind the remembered deployment is gone (the in-process EVM
                # starts empty) or changed: retire it; its batches are anchored again here.
                # Batches anchored there stay recorded against it (their money moved on that
                # chain; moving it again here would settle those trades twice); batches not yet
                # anchored go to the new chain.
                self.log.warning("settlement: contracts of deployment %s are not on this chain (%s); deploying "
                            "anew%s; its anchored batches stay with it, unanchored ones go to the new chain",
                            row["deployment_id"], c.genesis_hash,
                            "" if c.ephemeral else " as approved by the operator")
                await conn.execute("UPDATE settlement_deployments SET active = false WHERE deployment_id = $1",
                                   row["deployment_id"])
                await conn.execute(
                    "UPDATE settlement_batches SET state = 'prepared', tx_hash = NULL, raw_tx = NULL, "
                    "deployment_id = NULL WHERE market_id = $1 AND state <> 'anchored'", self.market_id)
            self.deployment_id = await conn.fetchval(
                "INSERT INTO settlement_deployments (market_id, chain_id, genesis_hash, token_address, "
                "registry_address, operator_address, deploy_block, scanned_block) VALUES ($1,$2,$3,$4,$5,$6,$7,$7) "
                "RETURNING deployment_id", self.market_id, c.chain_id, c.genesis_hash, dep.token, dep.registry,
                c.operator.address, dep.block)
        self.deploy_block = dep.block
        self._next_check = time.monotonic() + self.check_s
        if row is not None and self.engine is not None:
            # collateral lived on the old chain: the engine must not keep trusting it
            for member, acct in sorted((await self.engine.accounts()).items()):
                if acct.collateral:
                    await self._engine_collateral(member)
        self.log.info("settlement: deployed EuroCredit %s and SettlementRegistry %s on chain %s",
                 dep.token, dep.registry, c.chain_id)
        return self.deployment_id

    async def _lost_message(self, row, same_chain: bool) -> str:
        c = self.chain
        anchored = await self.pool.fetchval(
            "SELECT count(*) FROM settlement_batches WHERE market_id = $1 AND deployment_id = $2 "
            "AND state = 'anchored'", self.market_id, row["deployment_id"])
        node = "the node" if c.store is None else f"the in-process chain in {c.store.directory}"
        where = (f"{node} has no contract code at registry {row['registry_address']}" if same_chain else
                 f"{node} is another chain (chain id {c.chain_id}, genesis {c.genesis_hash[:18]}..) than the "
                 f"one deployment {row['deployment_id']} lives on (chain id {row['chain_id']}, genesis "
                 f"{row['genesis_hash'][:18]}..)")
        if c.store is None:
            why = "The node lost the deployment (reset, restarted without its state, or another node at the URL)"
            fix = "Point VOLTBOURSE_CHAIN_RPC_URL at the node that has the deployment"
        else:
            why = ("The chain's directory was emptied, replaced or is not the one this database was used with "
                   "(VOLTBOURSE_CHAIN_DATA_DIR, VOLTBOURSE_DATA_DIR)")
            fix = "Point VOLTBOURSE_CHAIN_DATA_DIR at the directory that has the chain (restore it if it was lost)"
        return (f"settlement refuses to start: {where}, which the database records as deployment "
                f"{row['deployment_id']} of market {self.market_id!r} (deployed at block {row['deploy_block']}). "
                f"{why}. Deploying anew silently would leave {anchored} anchored batches unverifiable and restart "
                f"every member's collateral at zero. {fix}, or, to deploy anew on this chain, run "
                "`voltbourse settlement redeploy --yes` and start again (docs/settlement.md, Chain faults)")

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        if self.deployment_id is None:
            await self.start()
        backoff = self.retry_s
        while not self._stop.is_set():
            try:
                busy = await self.step()
                backoff = self.retry_s
                if "chain" in self._alerts:
                    self.log.info("settlement: chain reachable again; alert cleared")
                    del self._alerts["chain"]
                    self._publish()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any chain or DB hiccup
                busy = False
                self.failures += 1
                self.stats["chain_errors"] += 1
                kind = "chain error" if isinstance(exc, (ChainError, OSError)) else type(exc).__name__
                self._alerts["chain"] = f"{kind}, retrying in {backoff:.1f}s: {exc}"
                self.log.error("settlement: %s", self._alerts["chain"],
                          exc_info=not isinstance(exc, (ChainError, OSError)))
                self._publish()
                await self._sleep(backoff, wakeable=False)  # new trades do not cut the back-off short
                backoff = min(self.retry_max_s, backoff * 2)
                continue
            if not busy:
                await self._sleep(self.poll_s)

    async def _sleep(self, seconds: float, *, wakeable: bool = True) -> None:
        """Wait ``seconds``; new trades (:meth:`wake`) end the wait early only if ``wakeable``;
        :meth:`stop` always does."""
        event = self._wake if wakeable else self._stop
        if wakeable:
            self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            pass

    async def step(self, *, force: bool = False) -> bool:
        """One round of every stage; True when something moved. ``force`` forms a
        batch of whatever is pending, whatever its age."""
        moved = False
        if self._lost or time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_s
            moved |= await self.check_chain()
        for _ in range(50):  # catch up with the journal first, so batches come out full
            if not await self.ingest():
                break
            moved = True
        while await self.form_batch(force=force):
            moved = True
        moved |= await self.send_pending()
        moved |= await self.apply_collateral()
        moved |= await self.settle_payouts()
        moved |= await self.scan_chain()
        moved |= await self.process_withdrawals()
        if moved:
            self._publish()
        return moved

    async def drain(self) -> None:
        """Settle everything committed so far (tests, shutdown, bench)."""
        while await self.step(force=True):
            pass

    # ------------------------------------------------------------------ 1. ingest
    async def ingest(self, limit: int = 20_000) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = await conn.fetchval(
                "SELECT seq FROM consumer_cursors WHERE consumer = $1 AND market_id = $2 FOR UPDATE",
                CONSUMER, self.market_id) or 0
            last = await conn.fetchval(
                "SELECT max(last_seq) FROM (SELECT last_seq FROM journal WHERE market_id = $1 AND last_seq > $2 "
                "ORDER BY cmd_seq LIMIT $3) j", self.market_id, cursor, limit)
            if last is None:
                return False
            # signatures of signed orders, and orders a member's trading agent placed under a
            # delegation (shown with their proofs): one pass over the events
            await conn.execute(
                "WITH ev AS MATERIALIZED (SELECT e FROM journal j, jsonb_array_elements(j.events) e "
                "  WHERE j.market_id = $1 AND j.last_seq > $2 AND j.last_seq <= $3 "
                "  AND e->>'type' IN ('order_accepted', 'order_delegated')), "
                "sig AS (INSERT INTO order_signatures (market_id, order_id, signature) "
                "  SELECT $1, (e->>'order_id')::bigint, e->>'signature' FROM ev "
                "  WHERE e->>'type' = 'order_accepted' AND e->>'signature' IS NOT NULL ON CONFLICT DO NOTHING) "
                "INSERT INTO order_delegations (market_id, order_id, delegation) "
                "SELECT $1, (e->>'order_id')::bigint, e->>'delegation' FROM ev WHERE e->>'type' = 'order_delegated' "
                "ON CONFLICT DO NOTHING", self.market_id, cursor, last)
            await conn.execute(
                "INSERT INTO consumer_cursors (consumer, market_id, seq) VALUES ($1, $2, $3) "
                "ON CONFLICT (consumer, market_id) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now()",
                CONSUMER, self.market_id, last)
        return True

    # ------------------------------------------------------------------ 2. form
    async def form_batch(self, *, force: bool = False) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = await conn.fetchval(
                "SELECT seq FROM consumer_cursors WHERE consumer = $1 AND market_id = $2", CONSUMER,
                self.market_id) or 0
            floor = await conn.fetchval(f"SELECT {_FLOOR}", self.market_id)
            pending = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM trades WHERE market_id = $1 AND trade_id > $2 "
                "AND seq <= $3 ORDER BY trade_id LIMIT $4) p", self.market_id, floor, cursor, self.batch_size)
            # (ORDER BY: a generic plan of the prepared statement would otherwise scan the table
            # from its start for rows that are all at its end)
            now = time.monotonic()
            if pending == 0:
                self._pending_since = None
                return False
            if self._pending_since is None:
                self._pending_since = now
            age = now - self._pending_since
            if pending < self.batch_size and not force and (
                    age < self.max_age_s or (pending < self.min_batch and age < self.thin_max_age_s)):
                return False
            await conn.execute("LOCK TABLE settlement_batches IN SHARE ROW EXCLUSIVE MODE")
            last = await conn.fetchrow(
                "SELECT (SELECT coalesce(max(batch_id), 0) FROM settlement_batches WHERE market_id = $1) AS batch_id, "
                f"{_FLOOR} AS floor", self.market_id)
            if last["floor"] != floor:
                return True  # another batch was formed meanwhile: count again
            batch_id = last["batch_id"] + 1
            rows = await conn.fetch(
                _TRADE_SELECT + " WHERE t.market_id = $1 AND t.trade_id > $2 AND t.seq <= $3 "
                "ORDER BY t.trade_id LIMIT $4", self.market_id, floor, cursor, self.batch_size)
            trades = [trade_record(r) for r in rows]
            tree = MerkleTree([leaf(t) for t in trades])
            nets = net_amounts(trades)
            first, last = trades[0].trade_id, trades[-1].trade_id
            await conn.execute(
                "INSERT INTO settlement_batches (market_id, batch_id, first_trade_id, last_trade_id, trade_count, "
                "first_seq, last_seq, root, nets, state) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'prepared')",
                self.market_id, batch_id, first, last, len(trades), rows[0]["seq"], rows[-1]["seq"],
                "0x" + tree.root.hex(), [[m, a] for m, a in nets.items()])
            # the range must hold exactly these trades. (A trade committed later with an id at or
            # below the floor would be in no batch, which only reconcile's coverage check would
            # see; the journal's single writer per market commits a market's trades in id order.)
            in_range = await conn.fetchval(
                "SELECT count(*) FROM trades WHERE market_id = $1 AND trade_id BETWEEN $2 AND $3",
                self.market_id, first, last)
            if in_range != len(trades):
                raise RuntimeError(f"batch {batch_id}: trades {first}..{last} are not contiguous")
        self._ingested_at[batch_id] = self._pending_since or now
        self._pending_since = now if pending > len(trades) else None
        self.fault("after_form")
        return True

    # ------------------------------------------------------------------ 3./4. send and record
    async def _open_batches(self) -> list:
        return await self.pool.fetch(
            "SELECT * FROM settlement_batches WHERE market_id = $1 AND state <> 'anchored' ORDER BY batch_id",
            self.market_id)

    async def send_pending(self) -> bool:
        """Every batch not anchored yet: signed transactions first, in nonce order (after
        the operator's nonce is synced with the node), then blocked batches rechecked and
        prepared ones signed and sent, in batch order. True when a batch changed state."""
        if self._lost:
            raise DeploymentLost(self._alerts.get("deployment", "the registry has no code on the node"))
        rows = await self._open_batches()
        if not rows:
            self._update_blocked({}, {})
            return False
        async with self._tx_lock:
            moved = await self._sync_nonce([b for b in rows if b["state"] == "sent"])
        if moved:
            rows = await self._open_batches()
        sent = [b for b in rows if b["state"] == "sent"]
        sent.sort(key=lambda b: (tx_nonce(bytes(b["raw_tx"])) if b["raw_tx"] else -1, b["batch_id"]))
        just_blocked: set[int] = set()
        for b in sent:
            changed = await self._resolve_sent(b)
            moved |= changed
            if changed:
                state = await self.pool.fetchval("SELECT state FROM settlement_batches WHERE market_id = $1 "
                                                 "AND batch_id = $2", self.market_id, b["batch_id"])
                if state == "blocked":
                    just_blocked.add(b["batch_id"])
        # Blocked and prepared batches in batch order. One sharing a member with a blocked
        # batch (or with one waiting behind it) waits: the engine applies each member's
        # settled batches in order (settlement_ref), and the chain must see them in that order.
        held: dict[str, int] = {}  # member -> the blocked batch it waits behind
        blocked: dict[int, dict[str, Any]] = {}
        waiting: dict[int, list[int]] = {}
        for b in await self._open_batches():
            bid, members = b["batch_id"], _members(b["nets"])
            if b["state"] == "blocked":
                if bid not in just_blocked and await self._recheck_blocked(b):
                    moved = True
                    b = await self.pool.fetchrow("SELECT * FROM settlement_batches WHERE market_id = $1 "
                                                 "AND batch_id = $2", self.market_id, bid)
                else:
                    blocked[bid] = dict(b["revert_error"] or {"name": None, "text": b["last_error"]})
                    for m in members:
                        held.setdefault(m, bid)
                    continue
            if b["state"] != "prepared":
                continue
            behind = sorted({held[m] for m in members if m in held})
            if behind:
                for m in members:
                    held.setdefault(m, behind[0])
                waiting.setdefault(behind[0], []).append(bid)
                continue
            moved |= await self._send(b)
            state = await self.pool.fetchval("SELECT state FROM settlement_batches WHERE market_id = $1 "
                                             "AND batch_id = $2", self.market_id, bid)
            if state == "blocked":
                row = await self.pool.fetchval("SELECT revert_error FROM settlement_batches WHERE market_id = $1 "
                                               "AND batch_id = $2", self.market_id, bid)
                blocked[bid] = dict(row or {})
                for m in members:
                    held.setdefault(m, bid)
        self._update_blocked(blocked, waiting)
        return moved

    async def _sync_nonce(self, sent: list) -> bool:
        """Make the operator's nonce the node's. Stored signed transactions the node does not
        have (nonce at or above its pending nonce) are kept to be re-sent in nonce order; one
        after a gap (a transaction the node lost that we cannot re-send, e.g. a withdrawal)
        is signed anew. Those below are mined, or their nonce was taken: _resolve_sent sees
        which. True when a batch was put back to be signed anew."""
        c = self.chain
        pending = await self._chain(c.pending_nonce)
        expected, moved = pending, False
        stored = sorted((tx_nonce(bytes(b["raw_tx"])), b["batch_id"]) for b in sent if b["raw_tx"])
        for nonce, bid in stored:
            if nonce < pending:
                continue
            if nonce == expected:
                expected += 1
                continue
            await self._reprepare(bid, f"its nonce {nonce} comes after a gap at {expected} (a transaction the "
                                       "node no longer has); signing anew")
            moved = True
        local = c.local_nonce
        if local is not None and local != expected:
            self.log.warning("settlement: operator nonce was %d, the node's is %d (%s): reset from the node", local,
                        expected, "ahead" if local > expected else "behind")
            self.stats["nonce_resets"] += 1
        c.set_nonce(expected)
        return moved

    async def _send(self, b) -> bool:
        """Sign, record and send a prepared batch, unless an eth_call says it would revert:
        then it is blocked (or, anchored already, recorded)."""
        c = self.chain
        nets = [(m, a) for m, a in b["nets"]]
        call, gas = await self._chain(c.anchor_call, b["batch_id"], bytes.fromhex(b["root"][2:]), b["trade_count"],
                                      b["first_seq"], b["last_seq"], nets)
        if self.simulate_first or b["reverts"] or b["revert_error"] is not None \
                or time.monotonic() < self._cautious_until:
            revert = await self._chain(c.simulate, call)
            if revert is not None:
                if await self._anchored_on_chain(b):
                    return True
                await self._block(b, revert, "anchorBatch would revert")
                return True
        # one operator transaction at a time from sign to send (nonces are ours to count)
        async with self._tx_lock:
            for attempt in (1, 2):
                raw, tx_hash = await self._chain(c.sign, call, gas)
                try:
                    self.fault("after_sign")
                    await self.pool.execute(
                        "UPDATE settlement_batches SET state = 'sent', tx_hash = $3, raw_tx = $4, deployment_id = $5, "
                        "attempts = attempts + 1, sent_at = now() WHERE market_id = $1 AND batch_id = $2",
                        self.market_id, b["batch_id"], tx_hash, raw, self.deployment_id)
                except BaseException:
                    c.reset_nonce()  # signed, never sent: that nonce is free again
                    raise
                self.fault("after_record_sent")
                try:
                    await self._chain(c.send_raw, raw)
                    break
                except SendRefused as exc:
                    if exc.kind in (NONCE_TOO_LOW, NONCE_TOO_HIGH) and attempt == 1:
                        # our nonce was not the node's: read it again and sign anew, once
                        self.log.warning("settlement: batch %d: %s; signing anew with the node's nonce",
                                    b["batch_id"], exc)
                        self.stats["nonce_resets"] += 1
                        await self._reprepare(b["batch_id"], str(exc))
                        continue
                    if exc.kind in (NONCE_TOO_LOW, NONCE_TOO_HIGH):
                        await self._reprepare(b["batch_id"], str(exc))
                    else:
                        await self._note_error(b["batch_id"], str(exc))
                    raise
                except ChainError as exc:
                    await self._note_error(b["batch_id"], str(exc))
                    raise
        self.fault("after_send")
        b = await self.pool.fetchrow("SELECT * FROM settlement_batches WHERE market_id = $1 AND batch_id = $2",
                                     self.market_id, b["batch_id"])
        await self._resolve_sent(b, wait=30.0)
        return True

    async def _anchored_on_chain(self, b) -> bool:
        """The registry holds the batch already (anchored by a transaction we have no
        receipt of): record it (same root) and return True; another root: alert, raise."""
        c = self.chain
        batch_id = b["batch_id"]
        root = await self._chain(c.batch_root, batch_id)
        if root is None:
            return False
        if "0x" + bytes(root).hex() != b["root"]:
            text = (f"batch {batch_id} is anchored on chain with another root (0x{bytes(root).hex()}) than "
                    f"recorded ({b['root']}): the database and the chain disagree; not re-sent")
            self._set_alert("mismatch", text)
            raise ChainError(text)
        logs = await self._chain(self._anchored_event, batch_id)
        block, tx = (logs["blockNumber"], "0x" + bytes(logs["transactionHash"]).hex()) if logs else (None, None)
        await self._record_anchored(b, block, None, tx or b["tx_hash"] or "")
        return True

    async def _resolve_sent(self, b, wait: float = 0.0) -> bool:
        """A batch whose transaction was recorded as sent: find out what the chain did
        (waiting up to ``wait`` s for the receipt when we have just sent it). True when
        the batch changed state; False while its transaction is pending."""
        c = self.chain
        batch_id = b["batch_id"]
        if b["deployment_id"] != self.deployment_id:
            await self._reprepare(batch_id, "sent on a retired deployment")
            return True
        receipt = await self._chain(c.receipt, b["tx_hash"], wait)
        if receipt is not None:
            return await self._on_receipt(b, receipt)
        if await self._anchored_on_chain(b):
            return True
        # The chain does not know the transaction. Its nonce used by another one: sign anew.
        raw = bytes(b["raw_tx"])
        nonce, mined = tx_nonce(raw), await self._chain(c.mined_nonce)
        if nonce < mined:
            await self._reprepare(batch_id, f"nonce {nonce} was taken by another transaction; signing anew")
            return True
        # Else send the very same bytes again (in nonce order: send_pending sorts them).
        try:
            await self._chain(c.send_raw, raw)
        except SendRefused as exc:
            if exc.kind == NONCE_TOO_LOW:  # its nonce is used: sign anew
                await self._reprepare(batch_id, str(exc))
                return True
            await self._note_error(batch_id, str(exc))
            raise
        receipt = await self._chain(c.receipt, b["tx_hash"], self.resend_wait_s)
        if receipt is None:
            # pending (e.g. the node answered "already known"): not a failure; looked at again next round
            self.log.info("settlement: batch %d: transaction %s pending", batch_id, b["tx_hash"])
            return False
        return await self._on_receipt(b, receipt)

    async def _on_receipt(self, b, receipt) -> bool:
        c = self.chain
        batch_id = b["batch_id"]
        if receipt["status"] == 1:
            if await self._chain(self._receipt_anchors, receipt, batch_id):
                await self._record_anchored(b, receipt["blockNumber"], receipt["gasUsed"], b["tx_hash"])
                return True
            if await self._anchored_on_chain(b):
                return True
            # mined, succeeded, but no BatchAnchored: the registry is not there (a node that lost it)
            await self.check_chain()
            raise ChainError(f"anchorBatch({batch_id}) in tx {b['tx_hash']} was mined without anchoring the batch")
        # mined and reverted
        self.stats["reverts"] += 1
        self._be_cautious()
        if await self._anchored_on_chain(b):
            return True
        nets = [(m, a) for m, a in b["nets"]]
        call, _gas = await self._chain(c.anchor_call, batch_id, bytes.fromhex(b["root"][2:]), b["trade_count"],
                                       b["first_seq"], b["last_seq"], nets)
        revert = await self._chain(c.simulate, call)
        reverts = b["reverts"] + 1
        msg = f"anchorBatch({batch_id}) reverted in tx {b['tx_hash']}"
        if revert is not None and revert.decoded:
            await self._block(b, revert, msg, reverts=reverts)
        elif reverts >= MAX_BLIND_REVERTS:
            await self._block(b, revert or Revert(None, text=f"reverted {reverts} times, the eth_call passes"),
                              msg, reverts=reverts)
        else:
            await self.pool.execute(
                "UPDATE settlement_batches SET state = 'prepared', tx_hash = NULL, raw_tx = NULL, reverts = $3, "
                "last_error = $4 WHERE market_id = $1 AND batch_id = $2", self.market_id, batch_id, reverts,
                f"{msg} ({revert or 'the eth_call now passes'}); signing anew")
            self.log.warning("settlement: %s (%s); signing anew", msg, revert or "the eth_call now passes")
        return True

    def _be_cautious(self, seconds: float = CAUTIOUS_S) -> None:
        """Something reverted or moved under us: simulate every batch first for a while."""
        self._cautious_until = max(self._cautious_until, time.monotonic() + seconds)

    def _receipt_anchors(self, receipt, batch_id: int) -> bool:
        """The receipt holds the registry's BatchAnchored event for this batch; then its
        NetSettled events tell members' collateral after it (:class:`ChainCollateral`)."""
        registry = self.chain.registry
        events = registry.events.BatchAnchored().process_receipt(receipt, errors=DISCARD)
        if not any(ev["args"]["batchId"] == batch_id and ev["address"] == registry.address for ev in events):
            return False
        self.known.learn_receipt(receipt)
        return True

    async def _block(self, b, revert: Revert, why: str, *, reverts: int | None = None) -> None:
        """The batch would revert (or did) with ``revert``: keep it from the chain until an
        eth_call says it would pass."""
        batch_id = b["batch_id"]
        text = f"{why}: {revert}"
        await self.pool.execute(
            "UPDATE settlement_batches SET state = 'blocked', tx_hash = NULL, raw_tx = NULL, revert_error = $3, "
            "blocked_at = now(), reverts = coalesce($4, reverts), last_error = $5 "
            "WHERE market_id = $1 AND batch_id = $2",
            self.market_id, batch_id, revert.as_dict(), reverts, text)
        self.stats["batches_blocked"] += 1
        self._be_cautious()
        self._rechecked_at[batch_id] = time.monotonic()
        self.log.error("settlement: batch %d blocked: %s", batch_id, text)
        member = revert.args.get("member") if revert.name == "InsufficientCollateral" else None
        if member and self.engine is not None:
            # the engine still counts money the chain does not have: bring it down to the
            # chain's, so the member cannot trade further on it while the batch waits
            await self._engine_collateral(member)

    async def _recheck_blocked(self, b) -> bool:
        """A blocked batch whose eth_call now passes goes back to prepared (True)."""
        batch_id = b["batch_id"]
        now = time.monotonic()
        if now - self._rechecked_at.get(batch_id, 0.0) < self.recheck_s:
            return False
        self._rechecked_at[batch_id] = now
        c = self.chain
        nets = [(m, a) for m, a in b["nets"]]
        call, _gas = await self._chain(c.anchor_call, batch_id, bytes.fromhex(b["root"][2:]), b["trade_count"],
                                       b["first_seq"], b["last_seq"], nets)
        revert = await self._chain(c.simulate, call)
        if revert is not None:
            if await self._anchored_on_chain(b):
                self._rechecked_at.pop(batch_id, None)
                return True
            if revert.as_dict() != b["revert_error"]:
                await self.pool.execute("UPDATE settlement_batches SET revert_error = $3, last_error = $4 "
                                        "WHERE market_id = $1 AND batch_id = $2", self.market_id, batch_id,
                                        revert.as_dict(), f"anchorBatch would revert: {revert}")
            return False
        await self.pool.execute(
            "UPDATE settlement_batches SET state = 'prepared', last_error = $3 WHERE market_id = $1 AND batch_id = $2",
            self.market_id, batch_id, f"unblocked: {(b['revert_error'] or {}).get('text', 'the revert')} no longer "
                                      "reverts")
        self._rechecked_at.pop(batch_id, None)
        self.log.info("settlement: batch %d unblocked (its anchorBatch no longer reverts)", batch_id)
        return True

    def _update_blocked(self, blocked: dict[int, dict[str, Any]], waiting: dict[int, list[int]]) -> None:
        self.blocked = {bid: dict(err, waiting=waiting.get(bid, [])) for bid, err in blocked.items()}
        if not blocked:
            self._set_alert("blocked", None)
            return
        parts = []
        for bid, err in sorted(blocked.items()):
            behind = waiting.get(bid, [])
            parts.append(f"batch {bid} blocked: anchorBatch reverts with {err.get('text') or err.get('name')}"
                         + (f" ({_HINTS[err['name']]})" if err.get("name") in _HINTS else "")
                         + (f"; batches {', '.join(map(str, behind))} wait behind it (they share members with it: "
                            "settling them first would apply those members' batches out of order)" if behind else ""))
        self._set_alert("blocked", "; ".join(parts) + f". A blocked batch is not sent again until its eth_call "
                        f"passes (rechecked every {self.recheck_s:g} s); batches without a member in common go on "
                        "(docs/settlement.md, Chain faults)")

    def _anchored_event(self, batch_id: int):
        c = self.chain
        ev = c.registry.events.BatchAnchored()
        # from the deployment, or the first block a compacted in-process chain still has
        # (an older event is gone with its block: the batch is recorded without it)
        logs = ev.get_logs(from_block=max(self.deploy_block, c.history_start()), to_block="latest",
                           argument_filters={"batchId": batch_id})
        return logs[0] if logs else None

    async def _reprepare(self, batch_id: int, why: str) -> None:
        await self.pool.execute(
            "UPDATE settlement_batches SET state = 'prepared', tx_hash = NULL, raw_tx = NULL, last_error = $3 "
            "WHERE market_id = $1 AND batch_id = $2", self.market_id, batch_id, why)

    async def _note_error(self, batch_id: int, why: str) -> None:
        await self.pool.execute("UPDATE settlement_batches SET last_error = $3 WHERE market_id = $1 AND batch_id = $2",
                                self.market_id, batch_id, why)

    async def _record_anchored(self, b, block: int | None, gas: int | None, tx_hash: str) -> None:
        await self.pool.execute(
            "UPDATE settlement_batches SET state = 'anchored', block_number = $3, gas_used = $4, tx_hash = $5, "
            "anchored_at = now(), last_error = NULL WHERE market_id = $1 AND batch_id = $2",
            self.market_id, b["batch_id"], block, gas, tx_hash)
        self.stats["batches_anchored"] += 1
        self.stats["trades_anchored"] += b["trade_count"]
        self.stats["gas_used"] += gas or 0
        since = self._ingested_at.pop(b["batch_id"], None)
        if since is not None:
            self.lag_s.append(time.monotonic() - since)
        if b["batch_id"] in self._healing:
            self._healing.discard(b["batch_id"])
            if not self._healing:
                self._set_alert("rollback", None)
                self.log.info("settlement: every batch lost in the chain rollback is anchored again")
        self.log.info("settlement: batch %d anchored (%d trades, block %s, gas %s)", b["batch_id"], b["trade_count"],
                 block, gas)
        self.fault("after_record_anchored")

    # ------------------------------------------------------------------ 5. collateral
    async def _engine_collateral(self, member: str, *, settled: int = 0, ref: int = 0, withdrawal: int = 0,
                                 key: str | None = None) -> str | None:
        """Submit the member's collateral as the chain has it, minus reserved withdrawals and
        minus the nets of batches anchored after ``ref`` whose payable the engine has not
        been told about yet (those come with their own update): collateral and payable
        must describe the same set of settled batches. ``key``: the update's idempotency key
        (the engine inbox applies a key once; None: a fresh one). The engine's refusal or None."""
        assert self.engine is not None
        collateral = (await self._collaterals([member], ref))[member] - withdrawal
        return await self.engine.update_collateral(key, member, max(collateral, 0), settled_payable=settled,
                                                   settlement_ref=ref, withdrawal=withdrawal)

    async def _collaterals(self, members: Sequence[str], ref: int) -> dict[str, int]:
        """For each member (keys as given): its collateral on chain at the head, minus the nets
        of batches anchored after ``ref`` not yet applied, minus its reserved withdrawals (see
        :meth:`_engine_collateral`). One chain job and two queries for all of them."""
        on_chain = await self._chain(self.known.at_head, list(members))
        names = list(dict.fromkeys(members))
        unapplied = dict(await self.pool.fetch(
            "SELECT n->>0, sum((n->>1)::numeric)::bigint FROM settlement_batches b, jsonb_array_elements(b.nets) n "
            "WHERE b.market_id = $1 AND b.state = 'anchored' AND NOT b.collateral_applied AND b.batch_id > $2 "
            "AND n->>0 = ANY($3::text[]) GROUP BY n->>0", self.market_id, ref, names))
        reserved = dict(await self.pool.fetch(
            "SELECT member, sum(amount)::bigint FROM settlement_withdrawals WHERE market_id = $1 "
            "AND deployment_id = $2 AND member = ANY($3::text[]) AND state = 'reserved' GROUP BY member",
            self.market_id, self.deployment_id, names))
        return {m: on_chain[m] - unapplied.get(m, 0) - reserved.get(m, 0) for m in members}

    async def apply_collateral(self) -> bool:
        """Tell the engine about anchored batches, each member's in batch order: a batch
        waits while an earlier batch with one of its members is not anchored (blocked, in
        flight, or lost in a rollback), since the engine applies a member's settlement refs
        as a high-water mark and would skip the earlier one's payable."""
        if self.engine is None:
            return False
        rows = await self.pool.fetch(
            "SELECT batch_id, nets, state, block_number FROM settlement_batches WHERE market_id = $1 "
            "AND (state <> 'anchored' OR NOT collateral_applied) ORDER BY batch_id", self.market_id)
        held: set[str] = set()
        applied = False
        for b in rows:
            members = _members(b["nets"])
            if b["state"] != "anchored" or members & held:
                held |= members
                continue
            # one command per member, committed together (the engine applies each ref once)
            collateral = await self._collaterals([m for m, _ in b["nets"]], b["batch_id"])
            results = await self.engine.update_collaterals([CollateralUpdate(
                f"batch:{b['batch_id']}:{b['block_number']}:{member}", member, max(collateral[member], 0),
                settled_payable=-amount, settlement_ref=b["batch_id"]) for member, amount in b["nets"]])
            for (member, _), rejected in zip(b["nets"], results):
                if rejected is not None:
                    self.log.warning("settlement: engine refused collateral of %s after batch %d: %s", member,
                                b["batch_id"], rejected)
            self.fault("after_collateral")
            await self.pool.execute("UPDATE settlement_batches SET collateral_applied = true "
                                    "WHERE market_id = $1 AND batch_id = $2", self.market_id, b["batch_id"])
            applied = True
        return applied

    # ------------------------------------------------------------------ 5b. flexibility payouts
    async def settle_payouts(self) -> bool:
        """Pending payouts of every payout source (exchange.runtime.ports; flexibility today)
        of one event go on chain in one ``settlePayouts(event_id, ...)``: the contract refuses
        an id twice, and an id it already has is only marked settled (with the event as its
        payout batch), so a crash anywhere settles it once."""
        events: dict[tuple[int, int], list[Payout]] = {}
        for i, source in enumerate(self.payout_sources):
            for r in await source.pending_payouts():
                events.setdefault((i, r["event_id"]), []).append(r)
        reg = self.chain.registry
        for (source_no, event_id), payouts in events.items():
            done = await self._chain(reg.functions.payoutBatches(event_id).call)
            if not done:
                members, amounts = [], []
                for r in payouts:
                    a = r["amount_units"]
                    if a < 0:
                        # A penalty takes at most the member's free collateral: not what backs
                        # its open buys and unsettled trades (or a later batch could not be
                        # anchored), and one member's empty account must not block the others.
                        have = await self._chain(self.chain.collateral, r["member"])
                        acct = (await self.engine.accounts([r["member"]])).get(r["member"]) if self.engine else None
                        if acct is not None:
                            have = min(have, acct.free)
                        if -a > have:
                            self.log.warning("settlement: event %d penalty of %s is %d, only %d free collateral; "
                                        "%d is not collected", event_id, r["member"], -a, have, -a - have)
                            a = -have
                    if a:
                        members.append(r["member"])
                        amounts.append(a)
                credit = sum(a for a in amounts if a > 0) - sum(-a for a in amounts if a < 0)
                async with self._tx_lock:
                    await self._chain(self._fund_operator, max(credit, 0))
                    await self._chain(self._operator_tx, reg.functions.settlePayouts(
                        event_id, members, amounts), 100_000 + 40_000 * len(members))
            await self.payout_sources[source_no].mark_settled([r["payout_id"] for r in payouts], event_id)
            if self.engine is not None:
                for r in payouts:
                    await self._engine_collateral(r["member"])
            self.log.info("settlement: payout event %d of %s settled on chain (%d members)", event_id,
                          type(self.payout_sources[source_no]).__name__, len(payouts))
        return bool(events)

    async def credit_member(self, member: str, amount: int) -> None:
        """Operator on-ramp: ``amount`` vEUR deposited on chain as the member's collateral;
        the engine gets it from the chain (not from the caller)."""
        async with self._tx_lock:
            await self._chain(self.chain.credit_member, member, amount)
        if self.engine is not None:
            await self._engine_collateral(member)

    def _fund_operator(self, amount: int) -> None:
        """The balancing market's payment reaches the community as euro credits minted to
        the operator (the fiat on-ramp), approved to the registry."""
        c = self.chain
        if amount > 0:
            c.mint(c.operator.address, amount)
            c.transact(c.token.functions.approve(c.registry.address, amount), CALL_GAS)

    # ------------------------------------------------------------------ 6. chain events
    async def scan_chain(self) -> bool:
        """Deposits and withdrawal requests in the next bounded range of blocks. The cursor
        (``scanned_block``) never passes the head actually scanned (minus ``confirmations``),
        and the hash of the block it stops at is kept: a head below it (a rollback) or
        another hash there now (a reorg) rescans from below the new head, so an event in a
        block at or below the cursor is never skipped. Rescanning is harmless: collateral
        is taken from the chain as it is, requests are keyed by their id."""
        row = await self.pool.fetchrow("SELECT scanned_block, scanned_hash FROM settlement_deployments "
                                       "WHERE deployment_id = $1", self.deployment_id)
        scanned, scanned_hash = row["scanned_block"], row["scanned_hash"]
        c = self.chain
        head = self.chain_head = await self._chain(lambda: c.w3.eth.block_number)
        # the oldest block to read: the deployment's, or the first one a compacted in-process
        # chain still has (settlement.chainstore.compact keeps the blocks from the cursor's
        # rescan window on, so this is below the cursor unless the store was compacted by hand)
        floor = max(self.deploy_block, await self._chain(c.history_start))
        why = None
        start = scanned + 1
        if scanned > head:
            why = f"the chain head #{head} is below the scanned block #{scanned} (rollback, or a cursor past the head)"
        elif scanned < floor and scanned >= self.deploy_block:
            self.log.error("settlement: the chain no longer has blocks #%d..#%d (compacted past the scan cursor): deposits "
                      "and withdrawal requests there were not read; scanning from #%d", scanned + 1, floor - 1, floor)
            start = floor
        elif scanned_hash is not None and scanned >= self.deploy_block:
            now_hash = await self._chain(self._block_hash, scanned)
            if now_hash != scanned_hash:
                why = f"block #{scanned} is not the one scanned any more ({scanned_hash[:10]}.. -> {now_hash[:10]}..)"
        if why is not None:
            start = max(floor, min(scanned, head) - max(self.confirmations, REORG_RESCAN))
            self.stats["rescans"] += 1
            self.log.warning("settlement: %s: rescanning deposits and withdrawal requests from block #%d", why, start)
        safe = head - self.confirmations
        to = min(safe, start + SCAN_BLOCKS - 1)
        if to < start:
            if why is not None:  # nothing to scan yet, but never keep a cursor past the head
                back = max(floor, start - 1)
                await self._save_cursor(back, await self._chain(self._block_hash, back))
            return False
        to_hash = await self._chain(self._block_hash, to)  # before the logs: a later reorg shows as a new hash
        found = await self._chain(c.registry_logs, ("Deposited", "WithdrawalRequested"), start, to)
        deposits, requests = found["Deposited"], found["WithdrawalRequested"]
        for ev in requests:
            await self.pool.execute(
                "INSERT INTO settlement_withdrawals (market_id, deployment_id, request_id, member, amount, state) "
                "VALUES ($1, $2, $3, $4, $5, 'requested') ON CONFLICT DO NOTHING", self.market_id,
                self.deployment_id, ev["args"]["requestId"], ev["args"]["member"], ev["args"]["amount"])
        await record_deposits(self.pool, self.market_id, self.deployment_id, start, deposits)  # members' view
        if self.engine is not None:
            for member in sorted({ev["args"]["member"] for ev in deposits}):
                rejected = await self._engine_collateral(member)
                if rejected is not None:
                    self.log.warning("settlement: deposit of %s not applied: %s", member, rejected)
        await self._save_cursor(to, to_hash)
        return bool(deposits or requests)

    def _block_hash(self, number: int) -> str:
        return "0x" + bytes(self.chain.w3.eth.get_block(number)["hash"]).hex()

    async def _save_cursor(self, block: int, block_hash: str | None) -> None:
        await self.pool.execute("UPDATE settlement_deployments SET scanned_block = $2, scanned_hash = $3 "
                                "WHERE deployment_id = $1", self.deployment_id, block, block_hash)
        self.scanned_block = block

    async def process_withdrawals(self) -> bool:
        rows = await self.pool.fetch(
            "SELECT * FROM settlement_withdrawals WHERE market_id = $1 AND deployment_id = $2 "
            "AND state IN ('requested', 'reserved') ORDER BY request_id", self.market_id, self.deployment_id)
        reg = self.chain.registry
        for w in rows:
            rid, member, amount = w["request_id"], w["member"], w["amount"]
            c_member, c_amount, status = await self._chain(reg.functions.withdrawals(rid).call)
            if status == 0 or (c_member.lower(), c_amount) != (member.lower(), amount):
                await self._withdrawal_vanished(w, status, c_member, c_amount)
                continue
            if status in (2, 3):  # decided on chain already (e.g. before a crash): record that
                await self._set_withdrawal(rid, "executed" if status == 2 else "rejected", w["reason"])
                continue
            if w["state"] == "requested":
                if self.engine is None:
                    continue
                # keyed by the request: a crash before 'reserved' is recorded finds the engine's first answer
                rejected = await self._engine_collateral(member, withdrawal=amount,
                                                         key=f"withdrawal:{self.deployment_id}:{rid}:{member}:{amount}")
                if rejected is not None:
                    detail = rejected.split(": ", 1)[-1]
                    async with self._tx_lock:
                        await self._chain(self._operator_tx, reg.functions.rejectWithdrawal(rid, detail[:200]))
                    await self._set_withdrawal(rid, "rejected", detail)
                    continue
                await self._set_withdrawal(rid, "reserved", None)
            async with self._tx_lock:
                await self._chain(self._operator_tx, reg.functions.executeWithdrawal(rid))
            await self._set_withdrawal(rid, "executed", None)
        return bool(rows)

    async def _withdrawal_vanished(self, w, status: int, c_member: str, c_amount: int) -> None:
        """The request is not on chain as recorded (a rollback removed it, or another request
        took its id): forget it, release what the engine reserved, and record the chain's."""
        rid = w["request_id"]
        self.log.warning("settlement: withdrawal request %d of %s (%d) is no longer on chain as recorded (chain: %s); "
                    "forgotten, the engine's reservation released", rid, w["member"], w["amount"],
                    "unknown" if status == 0 else f"{c_member} {c_amount} status {status}")
        await self.pool.execute("DELETE FROM settlement_withdrawals WHERE market_id = $1 AND deployment_id = $2 "
                                "AND request_id = $3", self.market_id, self.deployment_id, rid)
        if status != 0:
            await self.pool.execute(
                "INSERT INTO settlement_withdrawals (market_id, deployment_id, request_id, member, amount, state) "
                "VALUES ($1, $2, $3, $4, $5, 'requested') ON CONFLICT DO NOTHING", self.market_id,
                self.deployment_id, rid, c_member, c_amount)
        if self.engine is not None:
            await self._engine_collateral(w["member"])

    def _operator_tx(self, call, gas: int = CALL_GAS):
        return self.chain.transact(call, gas)

    async def _set_withdrawal(self, rid: int, state: str, reason: str | None) -> None:
        await self.pool.execute(
            "UPDATE settlement_withdrawals SET state = $4, reason = $5, updated_at = now() "
            "WHERE market_id = $1 AND deployment_id = $2 AND request_id = $3",
            self.market_id, self.deployment_id, rid, state, reason)

    # ------------------------------------------------------------------ 7. the chain checked
    async def check_chain(self) -> bool:
        """Compare the chain with the database (at start and every ``check_s``): the
        registry still has code (else DeploymentLost: nothing is sent while it is gone);
        the registry holds every batch recorded as anchored, with its root (the most recent
        ``CHECK_RECENT`` always, older ones while the registry's batch count says some are
        missing). Anchored batches the registry lost (the node rolled back) go back to
        ``sent`` with their stored transaction, re-sent in nonce order by send_pending, or
        to ``prepared`` without one; decided withdrawals the chain no longer has are taken
        up again. True when something was put back."""
        c = self.chain
        if not c.attached or self.deployment_id is None:
            return False
        if not await self._chain(c.has_code, c.registry.address):
            self._lost = True
            text = (f"the node lost the settlement contracts: no code at registry {c.registry.address} (deployment "
                    f"{self.deployment_id}, chain {c.chain_id}); nothing is sent to it. Point the exchange at the "
                    "node that has them, or stop it, run `voltbourse settlement redeploy --yes` and start again "
                    "(docs/settlement.md, Chain faults)")
            self._set_alert("deployment", text)
            raise DeploymentLost(text)
        if self._lost:
            self.log.info("settlement: the registry's code is back")
        self._lost = False
        self._set_alert("deployment", None)
        self.chain_head = await self._chain(lambda: c.w3.eth.block_number)
        on_chain = await self._chain(c.registry.functions.batchCount().call)
        recorded = await self.pool.fetchval(
            "SELECT count(*) FROM settlement_batches WHERE market_id = $1 AND deployment_id = $2 AND state = 'anchored'",
            self.market_id, self.deployment_id)
        missing: list = []
        mismatched: list[str] = []
        checked, offset = 0, 0
        while True:
            page = await self.pool.fetch(
                "SELECT * FROM settlement_batches WHERE market_id = $1 AND deployment_id = $2 AND state = 'anchored' "
                "ORDER BY block_number DESC NULLS FIRST, batch_id DESC LIMIT 200 OFFSET $3",
                self.market_id, self.deployment_id, offset)
            if not page:
                break
            offset += len(page)
            for b in page:
                if checked >= CHECK_RECENT and len(missing) >= recorded - on_chain:
                    break
                checked += 1
                root = await self._chain(c.batch_root, b["batch_id"])
                if root is None:
                    missing.append(b)
                elif "0x" + bytes(root).hex() != b["root"]:
                    mismatched.append(f"batch {b['batch_id']}: root on chain 0x{bytes(root).hex()} != recorded "
                                      f"{b['root']}")
            else:
                continue
            break
        in_flight = await self.pool.fetchval(
            "SELECT count(*) FROM settlement_batches WHERE market_id = $1 AND deployment_id = $2 AND state = 'sent'",
            self.market_id, self.deployment_id)
        if on_chain > recorded + in_flight:
            mismatched.append(f"the registry holds {on_chain} batches, the database {recorded} anchored ones (and "
                              f"{in_flight} in flight): was the database restored from an older backup?")
        self._set_alert("mismatch", ("chain and database disagree: " + "; ".join(mismatched[:5])
                                     + " (not repaired automatically; see docs/settlement.md, Chain faults)")
                        if mismatched else None)
        healed = await self._heal(missing) if missing else False
        healed |= await self._check_withdrawals()
        return healed

    async def _heal(self, missing: list) -> bool:
        """Anchored batches the registry no longer has: put them back to be sent again."""
        ids = sorted(b["batch_id"] for b in missing)
        msg = (f"lost in a chain rollback (the node's head is #{self.chain_head}); its stored transaction is "
               "re-sent in nonce order")
        async with self.pool.acquire() as conn, conn.transaction():
            for b in missing:
                raw = bytes(b["raw_tx"]) if b["raw_tx"] is not None else None
                await conn.execute(
                    "UPDATE settlement_batches SET state = $3, tx_hash = $4, block_number = NULL, gas_used = NULL, "
                    "anchored_at = NULL, collateral_applied = false, heals = heals + 1, last_error = $5 "
                    "WHERE market_id = $1 AND batch_id = $2", self.market_id, b["batch_id"],
                    "sent" if raw else "prepared", tx_hash_of(raw) if raw else None, msg)
        self.chain.reset_nonce()  # the node's nonce for the operator went back too
        self._be_cautious()
        self._healing |= set(ids)
        self.stats["rollbacks"] += 1
        self.stats["batches_healed"] += len(ids)
        self._set_alert("rollback", f"chain rollback: batch{'es' if len(ids) > 1 else ''} "
                                    f"{', '.join(map(str, ids))} were anchored but the registry no longer has them "
                                    f"(node head #{self.chain_head}); re-sending their signed transactions in nonce "
                                    "order (collateral of their members is updated once they are anchored again)")
        return True

    async def _check_withdrawals(self) -> bool:
        """Decided withdrawals (the most recent) whose decision the chain lost: executed ones
        go back to reserved (executed again), rejected ones to requested (judged again)."""
        rows = await self.pool.fetch(
            "SELECT * FROM settlement_withdrawals WHERE market_id = $1 AND deployment_id = $2 "
            "AND state IN ('executed', 'rejected') ORDER BY updated_at DESC, request_id DESC LIMIT $3",
            self.market_id, self.deployment_id, CHECK_RECENT)
        reg = self.chain.registry
        moved = False
        for w in rows:
            c_member, c_amount, status = await self._chain(reg.functions.withdrawals(w["request_id"]).call)
            if status == 0 or (c_member.lower(), c_amount) != (w["member"].lower(), w["amount"]):
                await self._withdrawal_vanished(w, status, c_member, c_amount)
                moved = True
            elif status == 1:
                back = "reserved" if w["state"] == "executed" else "requested"
                self.log.warning("settlement: withdrawal %d was %s but is pending on chain again (rollback): back to %s",
                            w["request_id"], w["state"], back)
                await self._set_withdrawal(w["request_id"], back, None)
                moved = True
        return moved

    # ------------------------------------------------------------------ status
    async def status(self, limit: int = 20) -> dict[str, Any]:
        """The operator's view (also the ``settlement`` topic of the operator feed)."""
        rows = await self.pool.fetch(
            "SELECT batch_id, trade_count, first_trade_id, last_trade_id, root, tx_hash, block_number, state, "
            "anchored_at, revert_error, last_error FROM settlement_batches WHERE market_id = $1 "
            "ORDER BY batch_id DESC LIMIT $2",
            self.market_id, limit)
        pending = self.last_pending = await pending_trades(self.pool, self.market_id)
        last_block = await self.pool.fetchval(
            "SELECT max(block_number) FROM settlement_batches WHERE market_id = $1 AND state = 'anchored'",
            self.market_id)
        return {
            "batches": [{"batch_id": r["batch_id"], "trade_count": r["trade_count"],
                         "first_trade_id": r["first_trade_id"], "last_trade_id": r["last_trade_id"],
                         "root": r["root"], "tx_hash": r["tx_hash"], "block": r["block_number"], "state": r["state"],
                         "anchored_at": iso_dt(r["anchored_at"]) if r["anchored_at"] else None,
                         **({"error": r["revert_error"]} if r["state"] == "blocked" else {}),
                         **({"last_error": r["last_error"]} if r["state"] != "anchored" and r["last_error"] else {})}
                        for r in rows],
            "last_anchored_block": last_block,
            "pending_trades": pending,
            "alert": self.alert,
            "alerts": self.alerts,
            "blocked": [{"batch_id": bid, **err} for bid, err in sorted(self.blocked.items())],
            "chain_head": self.chain_head,
            "scanned_block": self.scanned_block,
            "reconcile": self.last_reconcile,
            "chain_id": self.chain.chain_id,
            "registry": self.chain.registry.address if self.chain.attached else None,
            "token": self.chain.token.address if self.chain.attached else None,
            "updated_at": iso_dt(datetime.now(UTC)),
            "metrics": self.metrics(),
        }

    def metrics(self) -> dict[str, Any]:
        """What the Prometheus collector shows (settlement.plugin.SettlementCollector), as JSON:
        read live in the exchange's process, from ``settlement_status`` beside it."""
        return {"stats": dict(self.stats), "alerts": self.alerts, "last_pending": self.last_pending,
                "blocked": {str(bid): str(err.get("name") or "unknown") for bid, err in sorted(self.blocked.items())},
                "last_lag_s": self.lag_s[-1] if self.lag_s else None}

    def _publish(self) -> None:
        if self.publish is None:
            return
        task = asyncio.get_running_loop().create_task(self._publish_status())
        task.add_done_callback(_log_publish_failure)

    async def _publish_status(self) -> None:
        status = await self.status()
        if self.publish is not None:
            self.publish(status)


def _log_publish_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("settlement: status publish failed: %s", task.exception())
