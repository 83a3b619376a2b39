"""Reconciliation: every trade in the database is in exactly one anchored batch whose
root is on chain and whose net amounts match what the chain applied.

Checks, per market:

- every trade has a batch (or is reported as pending, not yet batched): the batches'
  trade-id ranges follow each other without overlapping, and every trade up to the last
  range is in one of them;
- each batch's trades are exactly its recorded id range and count;
- the Merkle root and the net amounts recomputed from the trades equal the recorded ones;
- the batch is anchored on the active deployment, and the registry holds the same
  root for its id;
- the ``BatchAnchored`` event of its anchoring transaction has that root, trade count
  and sequence range (the registry keeps only the root in storage), and its
  ``NetSettled`` events equal the recorded nets (unless a compaction of the in-process
  chain dropped its block: then the root in the registry is all there is to check, and
  the batch is counted in ``compacted``);
- the registry holds no batch the database does not know (batch count).

Any difference is reported with what was expected and what was found. A batch merely
**in flight** (``prepared`` or ``sent``: formed, on its way to the chain) is not a
difference: it is listed in ``in_flight`` (its trades and root are still checked, and
one already mined is counted on chain), so a reconciliation while the worker is
running is OK. A ``blocked`` batch is a difference (it will not go on by itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from web3.logs import DISCARD

from exchange.core.units import iso_dt
from settlement.merkle import MerkleTree, leaf
from settlement.netting import net_amounts
from settlement.worker import batch_trades, pending_trades

#: states of a batch on its way to the chain: formed, or signed and sent
IN_FLIGHT = ("prepared", "sent")


@dataclass
class Report:
    trades: int = 0
    batches: int = 0
    anchored: int = 0
    pending_trades: int = 0
    differences: list[str] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)  # batches whose chain is gone (retired)
    in_flight: list[str] = field(default_factory=list)  # batches formed, not anchored yet (not a difference)
    compacted: int = 0  # anchored batches whose block a chain compaction dropped: checked by their root only
    checked_at: str = ""

    @property
    def ok(self) -> bool:
        return not self.differences

    def as_dict(self) -> dict:
        return {"ok": self.ok, "trades": self.trades, "batches": self.batches, "anchored": self.anchored,
                "pending_trades": self.pending_trades, "differences": self.differences,
                "unverifiable": self.unverifiable, "in_flight": self.in_flight, "compacted": self.compacted,
                "checked_at": self.checked_at}


async def reconcile(pool, market_id: str, chain, *, deployment_id: int | None = None, run=None) -> Report:
    """``run(fn, *args)``: how to call the (blocking) chain, e.g. the worker's chain thread,
    so a reconciliation inside the exchange never blocks its event loop."""
    rep = Report(checked_at=iso_dt(datetime.now(UTC)))

    async def call(fn, *args):
        return await run(fn, *args) if run is not None else fn(*args)

    diff = rep.differences.append
    async with pool.acquire() as conn:
        rep.trades = await conn.fetchval("SELECT count(*) FROM trades WHERE market_id = $1", market_id)
        rep.pending_trades = await pending_trades(conn, market_id)
        if deployment_id is None:
            deployment_id = await conn.fetchval(
                "SELECT deployment_id FROM settlement_deployments WHERE market_id = $1 AND active", market_id)
        batches = await conn.fetch("SELECT * FROM settlement_batches WHERE market_id = $1 ORDER BY batch_id",
                                   market_id)
        history_start = await call(chain.history_start) if deployment_id is not None else 0
        rep.batches = len(batches)
        for prev, b in zip(batches, batches[1:]):
            if b["first_trade_id"] <= prev["last_trade_id"]:
                diff(f"batch {b['batch_id']}: its trades {b['first_trade_id']}..{b['last_trade_id']} overlap batch "
                     f"{prev['batch_id']}'s ({prev['first_trade_id']}..{prev['last_trade_id']})")
        if batches:
            last = max(b["last_trade_id"] for b in batches)
            covered = await conn.fetchval(
                "SELECT count(*) FROM trades WHERE market_id = $1 AND trade_id BETWEEN 1 AND $2", market_id, last)
            in_batches = sum(b["trade_count"] for b in batches)
            if covered != in_batches:
                diff(f"{covered} trades up to trade {last}, but the batches record {in_batches}: "
                     f"{'some are in no batch' if covered > in_batches else 'some are counted twice or missing'}")
        mined_in_flight = 0
        unmined: list[tuple[int, str]] = []  # (batch, recorded root) in flight, not on chain when looked at
        for b in batches:
            bid = b["batch_id"]
            trades = await batch_trades(conn, market_id, bid)
            ids = [t.trade_id for t in trades]
            if len(trades) != b["trade_count"] or (ids and (ids[0], ids[-1]) != (b["first_trade_id"],
                                                                                  b["last_trade_id"])):
                diff(f"batch {bid}: records {b['trade_count']} trades {b['first_trade_id']}..{b['last_trade_id']}, "
                     f"the database has {len(trades)}" + (f" ({ids[0]}..{ids[-1]})" if ids else ""))
                continue
            root = "0x" + MerkleTree([leaf(t) for t in trades]).root.hex()
            if root != b["root"]:
                diff(f"batch {bid}: recorded root {b['root']} but its trades hash to {root}")
            nets = {m: a for m, a in b["nets"]}
            if nets != net_amounts(trades):
                diff(f"batch {bid}: recorded net amounts differ from its trades' net amounts")
            if b["state"] in IN_FLIGHT:
                # on its way: the worker anchors it (a chain error is retried, and alerted)
                rep.in_flight.append(f"batch {bid}: {b['state']}" + (f" (tx {b['tx_hash']})" if b["tx_hash"] else "")
                                     + (f", last error: {b['last_error']}" if b["last_error"] else ""))
                if deployment_id is not None and b["deployment_id"] in (None, deployment_id):
                    c_root = await call(chain.batch_root, bid)
                    if c_root is not None and "0x" + c_root.hex() == b["root"]:
                        mined_in_flight += 1  # mined, not recorded as anchored yet
                    elif c_root is None:
                        unmined.append((bid, b["root"]))  # may be mined while the check runs
                    else:
                        diff(f"batch {bid}: in flight, but the registry holds it with another root "
                             f"0x{c_root.hex()} than recorded {b['root']}")
                continue
            if b["state"] != "anchored":
                diff(f"batch {bid}: not anchored (state {b['state']}"
                     + (f", last error: {b['last_error']}" if b["last_error"] else "") + ")")
                continue
            if b["deployment_id"] != deployment_id:
                retired = await conn.fetchrow("SELECT active, genesis_hash FROM settlement_deployments "
                                              "WHERE deployment_id = $1", b["deployment_id"])
                if retired is not None and not retired["active"]:
                    # the chain it was anchored on is gone (the in-process EVM of an earlier
                    # run): nothing left to check it against
                    rep.unverifiable.append(f"batch {bid}: anchored on retired deployment {b['deployment_id']} "
                                            f"(chain {retired['genesis_hash'][:10]}.. no longer reachable)")
                else:
                    diff(f"batch {bid}: anchored on deployment {b['deployment_id']}, not the active {deployment_id}")
                continue
            rep.anchored += 1
            c_root = await call(chain.batch_root, bid)
            if c_root is None:
                diff(f"batch {bid}: recorded as anchored (tx {b['tx_hash']}) but the registry has no such batch")
                continue
            if "0x" + c_root.hex() != b["root"]:
                diff(f"batch {bid}: root on chain 0x{c_root.hex()} != recorded {b['root']}")
            receipt = await call(chain.receipt, b["tx_hash"], 0) if b["tx_hash"] else None
            if receipt is None and history_start > 0 and (b["block_number"] is None
                                                           or b["block_number"] < history_start):
                # its block was dropped by a compaction of the in-process chain (or the worker found
                # it anchored in the registry after its block was dropped, block unknown): the root
                # in the registry (checked above) is what is left to check it against
                rep.compacted += 1
                continue
            if receipt is None:
                diff(f"batch {bid}: no receipt for its transaction {b['tx_hash']}")
                continue
            anchored = [ev["args"] for ev in await call(chain.registry.events.BatchAnchored().process_receipt,
                                                        receipt, DISCARD) if ev["args"]["batchId"] == bid]
            got = [("0x" + bytes(a["root"]).hex(), a["firstSeq"], a["lastSeq"], a["tradeCount"]) for a in anchored]
            if got != [(b["root"], b["first_seq"], b["last_seq"], b["trade_count"])]:
                diff(f"batch {bid}: its transaction's BatchAnchored event(s) {got} differ from the recorded root, "
                     f"seq {b['first_seq']}..{b['last_seq']} x{b['trade_count']}")
            settled = {}
            for ev in await call(chain.registry.events.NetSettled().process_receipt, receipt, DISCARD):
                if ev["args"]["batchId"] == bid:
                    settled[ev["args"]["member"]] = ev["args"]["amount"]
            if {m.lower(): a for m, a in settled.items()} != {m.lower(): a for m, a in nets.items()}:
                diff(f"batch {bid}: net amounts settled on chain differ from the recorded ones")
        if deployment_id is not None:
            on_chain = await call(chain.registry.functions.batchCount().call)
            if on_chain > rep.anchored + mined_in_flight:
                # the exchange kept settling while this ran: batches in flight mined since they
                # were looked at, and batches formed (and mined) after the list was read, are
                # no difference when the registry holds them with their recorded roots
                later = await conn.fetch(
                    "SELECT batch_id, root, state FROM settlement_batches WHERE market_id = $1 AND batch_id > $2 "
                    "AND (deployment_id IS NULL OR deployment_id = $3) ORDER BY batch_id",
                    market_id, batches[-1]["batch_id"] if batches else 0, deployment_id)
                for bid, root, note in [*((bid, root, "mined during the check") for bid, root in unmined),
                                        *((r["batch_id"], r["root"], f"formed during the check, {r['state']}")
                                          for r in later)]:
                    c_root = await call(chain.batch_root, bid)
                    if c_root is not None and "0x" + c_root.hex() == root:
                        mined_in_flight += 1
                        rep.in_flight.append(f"batch {bid}: {note}")
            if on_chain != rep.anchored + mined_in_flight:
                diff(f"the registry holds {on_chain} batches, the database {rep.anchored} anchored ones"
                     + (f" and {mined_in_flight} in flight already on chain" if mined_in_flight else ""))
    return rep
