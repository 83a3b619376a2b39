"""Merkle proofs of trades for members and auditors.

:func:`trade_proof` rebuilds the batch's tree from the database (cached) and returns
everything a member needs to check the trade against the chain on its own: the leaf
fields, the leaf, the sibling hashes, the batch root, and where the registry is.
:func:`verify_proof` is the member side: recompute the leaf from the fields, fold
the proof, compare with the root stored *on chain* and ask the contract too.
"""

from __future__ import annotations

from collections import OrderedDict

from exchange.protocol.errors import VoltbourseError
from settlement.merkle import MerkleTree, TradeRecord, leaf, product_hash, signatures_hash, verify
from settlement.worker import BATCH_OF_TRADE, batch_trades


class ProofError(VoltbourseError):
    """No proof to give: ``NOT_FOUND`` (404) or ``NOT_ANCHORED`` (409)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, status=404 if code == "NOT_FOUND" else 409)


class ProofService:
    def __init__(self, pool, market_id: str, chain, cache_batches: int = 8, run_chain=None) -> None:
        self.pool = pool
        self.market_id = market_id
        self.chain = chain
        #: how a chain read is run (the worker's chain thread: one caller of the chain at a time);
        #: None: no chain read, the proof carries the root as recorded when the batch was anchored
        self.run_chain = run_chain
        self._trees: OrderedDict[int, tuple[list[TradeRecord], MerkleTree]] = OrderedDict()
        self.cache_batches = cache_batches

    async def _tree(self, batch_id: int) -> tuple[list[TradeRecord], MerkleTree]:
        hit = self._trees.get(batch_id)
        if hit is not None:
            self._trees.move_to_end(batch_id)
            return hit
        async with self.pool.acquire() as conn:
            trades = await batch_trades(conn, self.market_id, batch_id)
        built = trades, MerkleTree([leaf(t) for t in trades])
        self._trees[batch_id] = built
        while len(self._trees) > self.cache_batches:
            self._trees.popitem(last=False)
        return built

    async def trade_proof(self, trade_id: int, member: str | None = None) -> dict:
        """The proof of ``trade_id``; with ``member``, only if it is the buyer or seller."""
        row = await self.pool.fetchrow(
            "SELECT t.buyer, t.seller, b.batch_id, b.state, b.root, b.tx_hash, b.block_number, "
            "bd.delegation AS buy_delegation, sd.delegation AS sell_delegation FROM trades t "
            + BATCH_OF_TRADE + " "
            "LEFT JOIN order_delegations bd ON bd.market_id = t.market_id AND bd.order_id = t.buy_order_id "
            "LEFT JOIN order_delegations sd ON sd.market_id = t.market_id AND sd.order_id = t.sell_order_id "
            "WHERE t.market_id = $1 AND t.trade_id = $2", self.market_id, trade_id)
        if row is None or (member is not None and member.lower() not in (row["buyer"].lower(),
                                                                         row["seller"].lower())):
            raise ProofError("NOT_FOUND", f"no trade {trade_id} of yours")
        if row["batch_id"] is None or row["state"] != "anchored":
            raise ProofError("NOT_ANCHORED", f"trade {trade_id} is not anchored on chain yet; retry shortly")
        trades, tree = await self._tree(row["batch_id"])
        index = next(i for i, t in enumerate(trades) if t.trade_id == trade_id)
        t = trades[index]
        return {
            "market_id": self.market_id,  # whose batch: every market of a platform has its own contracts
            "trade_id": trade_id,
            "batch_id": row["batch_id"],
            "trade": {"product_id": t.product_id, "product_hash": "0x" + product_hash(t.product_id).hex(),
                      "buyer": t.buyer, "seller": t.seller, "energy_wh": t.energy_wh, "price_ticks": t.price_ticks,
                      "signatures_hash": "0x" + signatures_hash(t.buy_signature, t.sell_signature).hex()},
            "leaf": "0x" + leaf(t).hex(),
            "index": index,
            "proof": ["0x" + p.hex() for p in tree.proof(index)],
            "root": row["root"],
            "chain_root": await self._chain_root(row["batch_id"]),
            "delegations": {"buy": row["buy_delegation"], "sell": row["sell_delegation"]},
            "tx_hash": row["tx_hash"],
            "block": row["block_number"],
            "chain_id": self.chain.chain_id,
            "registry": self.chain.registry.address,
        }


    async def _chain_root(self, batch_id: int) -> str | None:
        """The batch's root read from the registry now (None when there is no chain reader, or
        the chain does not answer: the proof then carries only the recorded root)."""
        if self.run_chain is None:
            return None
        try:
            got = await self.run_chain(lambda: self.chain.registry.functions.batchRoot(batch_id).call())
        except Exception:  # noqa: BLE001 - the proof stays useful without it
            return None
        return "0x" + bytes(got).hex()


def leaf_from_proof(p: dict) -> bytes:
    """Recompute the leaf from the proof's trade fields (never trust the given leaf)."""
    t = p["trade"]
    rec = TradeRecord(p["trade_id"], t["product_id"], t["buyer"], t["seller"], t["energy_wh"], t["price_ticks"])
    return leaf(rec, bytes.fromhex(t["signatures_hash"][2:]))


def verify_proof(p: dict, registry=None) -> bool:
    """Member-side check of a proof: leaf recomputed from the fields, folded with the
    proof to the root; with ``registry`` (a web3 contract of the SettlementRegistry),
    the root is the one stored on chain for the batch and ``verifyTrade`` agrees."""
    lf = leaf_from_proof(p)
    proof = [bytes.fromhex(x[2:]) for x in p["proof"]]
    root = bytes.fromhex(p["root"][2:])
    if registry is None:
        return verify(lf, proof, root)
    onchain_root = bytes(registry.functions.batchRoot(p["batch_id"]).call())
    t = p["trade"]
    fields_ok = registry.functions.verifyTradeFields(
        p["batch_id"], p["trade_id"], bytes.fromhex(t["product_hash"][2:]), t["buyer"], t["seller"], t["energy_wh"],
        t["price_ticks"], bytes.fromhex(t["signatures_hash"][2:]), proof).call()
    return verify(lf, proof, onchain_root) and onchain_root == root and fields_ok
