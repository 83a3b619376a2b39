"""The settlement worker: committed trades -> batches -> Merkle root + nets on chain.

It is a downstream consumer of the journal with its own cursor (``settlement``):

1. **ingest**: the signatures of signed orders (``order_accepted`` events after the
   cursor) are copied to ``order_signatures``; the cursor advances in the same
   transaction. Trades themselves are already in the ``trades`` projection, written
   in the journal's transaction.
2. **form**: when ``batch_size`` ingested trades wait, or the oldest has waited
   ``max_age_s``, the next batch is formed in one transaction: its row (``prepared``,
   root, nets, trade range) and ``trades.batch_id``. A trade is in exactly one batch.
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
from typing import Any

import asyncpg

from exchange.core.ids import MemberId
from exchange.core.model import Rejected, UpdateCollateral
from exchange.runtime.ports import Payout, PayoutSource
from settlement.chain import CALL_GAS, Chain, ChainError
from settlement.merkle import MerkleTree, TradeRecord, leaf
from settlement.netting import net_amounts

log = logging.getLogger(__name__)

CONSUMER = "settlement"
SCAN_BLOCKS = 2_000  # chain events read per query
FAULT_POINTS = ("after_form", "after_sign", "after_record_sent", "after_send", "after_record_anchored",
                "after_collateral")

_TRADE_SELECT = """
    SELECT t.trade_id, t.seq, t.product_id, t.buyer, t.seller, t.energy_wh, t.price_ticks,
           bs.signature AS buy_signature, ss.signature AS sell_signature
    FROM trades t
    LEFT JOIN order_signatures bs ON bs.market_id = t.market_id AND bs.order_id = t.buy_order_id
    LEFT JOIN order_signatures ss ON ss.market_id = t.market_id AND ss.order_id = t.sell_order_id
"""


def trade_record(r) -> TradeRecord:
    return TradeRecord(r["trade_id"], r["product_id"], r["buyer"], r["seller"], r["energy_wh"], r["price_ticks"],
                       r["buy_signature"], r["sell_signature"])


async def batch_trades(conn, market_id: str, batch_id: int) -> list[TradeRecord]:
    rows = await conn.fetch(_TRADE_SELECT + " WHERE t.market_id = $1 AND t.batch_id = $2 ORDER BY t.trade_id",
                            market_id, batch_id)
    return [trade_record(r) for r in rows]


class SettlementWorker:
    def __init__(self, pool: asyncpg.Pool, market_id: str, chain: Chain, *, runtime=None,
                 batch_size: int = 2000, max_age_s: float = 5.0, poll_s: float = 0.5,
                 retry_s: float = 1.0, retry_max_s: float = 60.0,
                 publish: Callable[[dict], None] | None = None,
                 fault: Callable[[str], None] | None = None,
                 payout_sources: Sequence[PayoutSource] = ()) -> None:
        self.pool = pool
        self.payout_sources = payout_sources
        self.market_id = market_id
        self.chain = chain
        self.runtime = runtime
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.publish = publish
        self.fault = fault or (lambda point: None)
        self.deployment_id: int | None = None
        self.deploy_block = 0
        self.alert: str | None = None
        self.last_reconcile: dict[str, Any] | None = None  # the last reconciliation's summary (run_reconcile)
        self.failures = 0
        self.stats = {"batches_anchored": 0, "trades_anchored": 0, "gas_used": 0, "chain_errors": 0}
        self.last_pending = 0  # trades not in a batch, as of the last status()
        # wait of each anchored batch's oldest trade (seconds), the most recent ones
        self.lag_s: deque[float] = deque(maxlen=10_000)
        self._pending_since: float | None = None
        self._ingested_at: dict[int, float] = {}  # first trade id of a formed batch -> when it became pending
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tx_lock = asyncio.Lock()  # operator transactions: sign, record, send in turn

    # ------------------------------------------------------------------ plumbing
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

    # ------------------------------------------------------------------ deployment
    async def start(self) -> int:
        """Attach to this market's contracts on this chain, deploying them on first start."""
        c = self.chain
        row = await self.pool.fetchrow(
            "SELECT * FROM settlement_deployments WHERE market_id = $1 AND active", self.market_id)
        if row is not None and row["chain_id"] == c.chain_id and row["genesis_hash"] == c.genesis_hash \
                and await self._chain(c.has_code, row["registry_address"]):
            c.attach(row["token_address"], row["registry_address"])
            self.deployment_id, self.deploy_block = row["deployment_id"], row["deploy_block"]
            return self.deployment_id
        dep = await self._chain(c.deploy)
        async with self.pool.acquire() as conn, conn.transaction():
            if row is not None:
                # The chain behind the remembered deployment is gone (the in-process EVM
                # starts empty) or changed: retire it; its batches are anchored again here.
                # Batches anchored there stay recorded against it (their money moved on that
                # chain; moving it again here would settle those trades twice); batches not yet
                # anchored go to the new chain.
                log.warning("settlement: contracts of deployment %s are not on this chain (%s); deploying "
                            "anew; its anchored batches stay with it, unanchored ones go to the new chain",
                            row["deployment_id"], c.genesis_hash)
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
        if row is not None and self.runtime is not None:
            # collateral lived on the old chain: the engine must not keep trusting it
            for member, acct in sorted(self.runtime.engine.accounts.items()):
                if acct.collateral:
                    await self._engine_collateral(member)
        log.info("settlement: deployed EuroCredit %s and SettlementRegistry %s on chain %s",
                 dep.token, dep.registry, c.chain_id)
        return self.deployment_id

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        if self.deployment_id is None:
            await self.start()
        backoff = self.retry_s
        while not self._stop.is_set():
            try:
                busy = await self.step()
                backoff = self.retry_s
                if self.alert is not None:
                    log.info("settlement: chain reachable again; alert cleared")
                    self.alert = None
                    self._publish()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any chain or DB hiccup
                busy = False
                self.failures += 1
                self.stats["chain_errors"] += 1
                kind = "chain error" if isinstance(exc, (ChainError, OSError)) else type(exc).__name__
                self.alert = f"{kind}, retrying in {backoff:.1f}s: {exc}"
                log.error("settlement: %s", self.alert, exc_info=not isinstance(exc, (ChainError, OSError)))
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
            await conn.execute(
                "INSERT INTO order_signatures (market_id, order_id, signature) "
                "SELECT $1, (e->>'order_id')::bigint, e->>'signature' FROM journal j, jsonb_array_elements(j.events) e "
                "WHERE j.market_id = $1 AND j.last_seq > $2 AND j.last_seq <= $3 "
                "AND e->>'type' = 'order_accepted' AND e->>'signature' IS NOT NULL "
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
            pending = await conn.fetchval(
                "SELECT count(*) FROM (SELECT 1 FROM trades WHERE market_id = $1 AND batch_id IS NULL "
                "AND seq <= $2 LIMIT $3) p", self.market_id, cursor, self.batch_size)
            now = time.monotonic()
            if pending == 0:
                self._pending_since = None
                return False
            if self._pending_since is None:
                self._pending_since = now
            if pending < self.batch_size and not force and now - self._pending_since < self.max_age_s:
                return False
            await conn.execute("LOCK TABLE settlement_batches IN SHARE ROW EXCLUSIVE MODE")
            batch_id = (await conn.fetchval(
                "SELECT max(batch_id) FROM settlement_batches WHERE market_id = $1", self.market_id) or 0) + 1
            rows = await conn.fetch(
                _TRADE_SELECT + " WHERE t.market_id = $1 AND t.batch_id IS NULL AND t.seq <= $2 "
                "ORDER BY t.trade_id LIMIT $3", self.market_id, cursor, self.batch_size)
            trades = [trade_record(r) for r in rows]
            tree = MerkleTree([leaf(t) for t in trades])
            nets = net_amounts(trades)
            first, last = trades[0].trade_id, trades[-1].trade_id
            await conn.execute(
                "INSERT INTO settlement_batches (market_id, batch_id, first_trade_id, last_trade_id, trade_count, "
                "first_seq, last_seq, root, nets, state) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,'prepared')",
                self.market_id, batch_id, first, last, len(trades), rows[0]["seq"], rows[-1]["seq"],
                "0x" + tree.root.hex(), [[m, a] for m, a in nets.items()])
            tagged = await conn.execute(
                "UPDATE trades SET batch_id = $2 WHERE market_id = $1 AND trade_id BETWEEN $3 AND $4 "
                "AND batch_id IS NULL", self.market_id, batch_id, first, last)
            if int(tagged.split()[-1]) != len(trades):
                raise RuntimeError(f"batch {batch_id}: trades {first}..{last} are not contiguous")
        self._ingested_at[batch_id] = self._pending_since or now
        self._pending_since = now if pending > len(trades) else None
        self.fault("after_form")
        return True

    # ------------------------------------------------------------------ 3./4. send and record
    async def send_pending(self) -> bool:
        rows = await self.pool.fetch(
            "SELECT * FROM settlement_batches WHERE market_id = $1 AND state <> 'anchored' ORDER BY batch_id",
            self.market_id)
        for b in rows:
            if b["state"] == "prepared":
                await self._send(b)
            else:
                await self._resolve_sent(b)
        return bool(rows)

    async def _send(self, b) -> None:
        c = self.chain
        nets = [(m, a) for m, a in b["nets"]]
        call, gas = await self._chain(c.anchor_call, b["batch_id"], bytes.fromhex(b["root"][2:]), b["trade_count"],
                                      b["first_seq"], b["last_seq"], nets)
        # one operator transaction at a time from sign to send (nonces are ours to count)
        async with self._tx_lock:
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
            except ChainError as exc:
                await self._note_error(b["batch_id"], str(exc))
                raise
        self.fault("after_send")
        b = await self.pool.fetchrow("SELECT * FROM settlement_batches WHERE market_id = $1 AND batch_id = $2",
                                     self.market_id, b["batch_id"])
        await self._resolve_sent(b, wait=30.0)

    async def _resolve_sent(self, b, wait: float = 0.0) -> None:
        """A batch whose transaction was recorded as sent: find out what the chain did
        (waiting up to ``wait`` s for the receipt when we have just sent it)."""
        c = self.chain
        batch_id = b["batch_id"]
        if b["deployment_id"] != self.deployment_id:
            await self._reprepare(batch_id, "sent on a retired deployment")
            return
        receipt = await self._chain(c.receipt, b["tx_hash"], wait)
        if receipt is not None and receipt["status"] == 1:
            await self._record_anchored(b, receipt["blockNumber"], receipt["gasUsed"], b["tx_hash"])
            return
        root, _first, _last, _count, anchored_at = await self._chain(c.batch_on_chain, batch_id)
        if anchored_at:
            if "0x" + bytes(root).hex() != b["root"]:
                self.alert = f"batch {batch_id} is anchored on chain with another root ({bytes(root).hex()})"
                raise ChainError(self.alert)
            # anchored by a transaction we do not have the receipt of: find its event
            logs = await self._chain(self._anchored_event, batch_id)
            block, tx = (logs["blockNumber"], "0x" + bytes(logs["transactionHash"]).hex()) if logs else (None, None)
            await self._record_anchored(b, block, None, tx or b["tx_hash"])
            return
        if receipt is not None:  # mined but reverted, and the batch is not on chain
            msg = f"anchorBatch({batch_id}) reverted in tx {b['tx_hash']}"
            await self._reprepare(batch_id, msg)
            raise ChainError(msg)
        # The chain does not know the transaction: send the very same bytes again.
        try:
            await self._chain(c.send_raw, bytes(b["raw_tx"]))
        except ChainError as exc:
            if "nonce" in str(exc).lower():  # its nonce is used or gone: sign anew
                await self._reprepare(batch_id, str(exc))
            else:
                await self._note_error(batch_id, str(exc))
            raise
        receipt = await self._chain(c.receipt, b["tx_hash"], 10.0)
        if receipt is None or receipt["status"] != 1:
            raise ChainError(f"anchorBatch({batch_id}) not mined after re-send")
        await self._record_anchored(b, receipt["blockNumber"], receipt["gasUsed"], b["tx_hash"])

    def _anchored_event(self, batch_id: int):
        c = self.chain
        ev = c.registry.events.BatchAnchored()
        logs = ev.get_logs(from_block=self.deploy_block, to_block="latest", argument_filters={"batchId": batch_id})
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
        log.info("settlement: batch %d anchored (%d trades, block %s, gas %s)", b["batch_id"], b["trade_count"],
                 block, gas)
        self.fault("after_record_anchored")

    # ------------------------------------------------------------------ 5. collateral
    async def _reserved(self, member: str) -> int:
        return await self.pool.fetchval(
            "SELECT coalesce(sum(amount), 0)::bigint FROM settlement_withdrawals WHERE market_id = $1 "
            "AND deployment_id = $2 AND member = $3 AND state = 'reserved'",
            self.market_id, self.deployment_id, member)

    async def _engine_collateral(self, member: str, *, settled: int = 0, ref: int = 0, withdrawal: int = 0):
        """Submit the member's collateral as the chain has it, minus reserved withdrawals and
        minus the nets of batches anchored after ``ref`` whose payable the engine has not
        been told about yet (those come with their own update): collateral and payable
        must describe the same set of settled batches."""
        chain_collateral = await self._chain(self.chain.collateral, member)
        unapplied = await self.pool.fetchval(
            "SELECT coalesce(sum((n->>1)::numeric), 0)::bigint FROM settlement_batches b, jsonb_array_elements(b.nets) n "
            "WHERE b.market_id = $1 AND b.state = 'anchored' AND NOT b.collateral_applied AND b.batch_id > $2 "
            "AND n->>0 = $3", self.market_id, ref, member)
        collateral = chain_collateral - unapplied - await self._reserved(member) - withdrawal
        res = await self.runtime.submit(UpdateCollateral(0, member=MemberId(member), collateral=max(collateral, 0),
                                                         settled_payable=settled, settlement_ref=ref,
                                                         withdrawal=withdrawal))
        return next((ev for ev in res.events if type(ev) is Rejected), None)

    async def apply_collateral(self) -> bool:
        if self.runtime is None:
            return False
        rows = await self.pool.fetch(
            "SELECT batch_id, nets FROM settlement_batches WHERE market_id = $1 AND state = 'anchored' "
            "AND NOT collateral_applied ORDER BY batch_id", self.market_id)
        for b in rows:
            # one command per member, committed together (the engine applies each ref once)
            results = await asyncio.gather(*(self._engine_collateral(member, settled=-amount, ref=b["batch_id"])
                                             for member, amount in b["nets"]))
            for (member, _), rejected in zip(b["nets"], results):
                if rejected is not None:
                    log.warning("settlement: engine refused collateral of %s after batch %d: %s", member,
                                b["batch_id"], rejected.detail)
            self.fault("after_collateral")
            await self.pool.execute("UPDATE settlement_batches SET collateral_applied = true "
                                    "WHERE market_id = $1 AND batch_id = $2", self.market_id, b["batch_id"])
        return bool(rows)

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
                        acct = self.runtime.engine.accounts.get(r["member"]) if self.runtime else None
                        if acct is not None:
                            have = min(have, max(0, acct.collateral - acct.open_exposure
                                                 - max(acct.net_payable, 0)))
                        if -a > have:
                            log.warning("settlement: event %d penalty of %s is %d, only %d free collateral; "
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
            if self.runtime is not None:
                for r in payouts:
                    await self._engine_collateral(r["member"])
            log.info("settlement: flexibility event %d payouts settled on chain (%d members)", event_id,
                     len(payouts))
        return bool(events)

    async def credit_member(self, member: str, amount: int) -> None:
        """Operator on-ramp: ``amount`` vEUR deposited on chain as the member's collateral;
        the engine gets it from the chain (not from the caller)."""
        async with self._tx_lock:
            await self._chain(self.chain.credit_member, member, amount)
        if self.runtime is not None:
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
        scanned = await self.pool.fetchval(
            "SELECT scanned_block FROM settlement_deployments WHERE deployment_id = $1", self.deployment_id)
        head = await self._chain(lambda: self.chain.w3.eth.block_number)
        if head <= scanned:
            return False
        to = min(head, scanned + SCAN_BLOCKS)
        deposits = await self._chain(self.chain.logs, "Deposited", scanned + 1, to)
        requests = await self._chain(self.chain.logs, "WithdrawalRequested", scanned + 1, to)
        for ev in requests:
            await self.pool.execute(
                "INSERT INTO settlement_withdrawals (market_id, deployment_id, request_id, member, amount, state) "
                "VALUES ($1, $2, $3, $4, $5, 'requested') ON CONFLICT DO NOTHING", self.market_id,
                self.deployment_id, ev["args"]["requestId"], ev["args"]["member"], ev["args"]["amount"])
        if self.runtime is not None:
            for member in sorted({ev["args"]["member"] for ev in deposits}):
                rejected = await self._engine_collateral(member)
                if rejected is not None:
                    log.warning("settlement: deposit of %s not applied: %s", member, rejected.detail)
        await self.pool.execute("UPDATE settlement_deployments SET scanned_block = $2 WHERE deployment_id = $1",
                                self.deployment_id, to)
        return bool(deposits or requests)

    async def process_withdrawals(self) -> bool:
        rows = await self.pool.fetch(
            "SELECT * FROM settlement_withdrawals WHERE market_id = $1 AND deployment_id = $2 "
            "AND state IN ('requested', 'reserved') ORDER BY request_id", self.market_id, self.deployment_id)
        reg = self.chain.registry
        for w in rows:
            rid, member, amount = w["request_id"], w["member"], w["amount"]
            status = (await self._chain(reg.functions.withdrawals(rid).call))[2]
            if status in (2, 3):  # decided on chain already (e.g. before a crash): record that
                await self._set_withdrawal(rid, "executed" if status == 2 else "rejected", w["reason"])
                continue
            if w["state"] == "requested":
                if self.runtime is None:
                    continue
                rejected = await self._engine_collateral(member, withdrawal=amount)
                if rejected is not None:
                    async with self._tx_lock:
                        await self._chain(self._operator_tx, reg.functions.rejectWithdrawal(rid, rejected.detail[:200]))
                    await self._set_withdrawal(rid, "rejected", rejected.detail)
                    continue
                await self._set_withdrawal(rid, "reserved", None)
            async with self._tx_lock:
                await self._chain(self._operator_tx, reg.functions.executeWithdrawal(rid))
            await self._set_withdrawal(rid, "executed", None)
        return bool(rows)

    def _operator_tx(self, call, gas: int = CALL_GAS):
        return self.chain.transact(call, gas)

    async def _set_withdrawal(self, rid: int, state: str, reason: str | None) -> None:
        await self.pool.execute(
            "UPDATE settlement_withdrawals SET state = $4, reason = $5, updated_at = now() "
            "WHERE market_id = $1 AND deployment_id = $2 AND request_id = $3",
            self.market_id, self.deployment_id, rid, state, reason)

    # ------------------------------------------------------------------ status
    async def status(self, limit: int = 20) -> dict[str, Any]:
        """The operator's view (also the ``settlement`` topic of the operator feed)."""
        rows = await self.pool.fetch(
            "SELECT batch_id, trade_count, first_trade_id, last_trade_id, root, tx_hash, block_number, state, "
            "anchored_at FROM settlement_batches WHERE market_id = $1 ORDER BY batch_id DESC LIMIT $2",
            self.market_id, limit)
        pending = self.last_pending = await self.pool.fetchval(
            "SELECT count(*) FROM trades WHERE market_id = $1 AND batch_id IS NULL", self.market_id)
        last_block = await self.pool.fetchval(
            "SELECT max(block_number) FROM settlement_batches WHERE market_id = $1 AND state = 'anchored'",
            self.market_id)
        return {
            "batches": [{"batch_id": r["batch_id"], "trade_count": r["trade_count"],
                         "first_trade_id": r["first_trade_id"], "last_trade_id": r["last_trade_id"],
                         "root": r["root"], "tx_hash": r["tx_hash"], "block": r["block_number"], "state": r["state"],
                         "anchored_at": r["anchored_at"].isoformat() if r["anchored_at"] else None} for r in rows],
            "last_anchored_block": last_block,
            "pending_trades": pending,
            "alert": self.alert,
            "reconcile": self.last_reconcile,
            "chain_id": self.chain.chain_id,
            "registry": self.chain.registry.address if self.chain.attached else None,
            "token": self.chain.token.address if self.chain.attached else None,
            "updated_at": datetime.now(UTC).isoformat(),
        }

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
