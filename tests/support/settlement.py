"""Shared pieces of the settlement tests: a market whose members are key pairs funded on
chain, its worker, and trade generation. (The compiled contracts and a fresh in-process
chain are the ``artifacts`` and ``chain`` fixtures of tests/conftest.py.)"""

from __future__ import annotations

import random

from exchange.core.model import PlaceOrder, RegisterMember, Side
from exchange.protocol.auth import order_typed_data, sign_order
from settlement.chain import Chain
from settlement.proofs import ProofService
from settlement.reconcile import Report, reconcile
from settlement.worker import BATCH_OF_TRADE, SettlementWorker
from support.keys import KEYS
from support.market import open_products

MEMBER_KEYS = KEYS[:6]
DEPOSIT = 10**14  # 1 000 000 EUR in money units (1e-8 EUR)


def reconnect(chain: Chain) -> Chain:
    """A new connection to the same chain, as a restarted worker process would make."""
    return Chain(chain.w3, chain.operator, in_process=True, tester=chain.tester, artifacts=chain.artifacts)


def make_worker(pool, market, chain, **kw) -> SettlementWorker:
    kw.setdefault("batch_size", 7)
    kw.setdefault("max_age_s", 3600)
    return SettlementWorker(pool, market.journal.market_id, chain, runtime=market.runtime, **kw)


async def funded_worker(pool, market, chain: Chain, **kw) -> SettlementWorker:
    """The market's worker, started, with the key-pair members registered and funded."""
    worker = make_worker(pool, market, chain, **kw)
    await worker.start()
    await register_and_fund(market, worker, chain)
    return worker


async def register_and_fund(market, worker: SettlementWorker, chain: Chain) -> None:
    """Register the key-pair members (collateral owned by the chain) and deposit on chain;
    the worker's chain scan feeds the deposits to the engine."""
    for acct in MEMBER_KEYS:
        await market.runtime.submit(RegisterMember(0, acct.address, collateral=None, export_capacity_w=10**9))
        await worker._chain(chain.fund_member, acct, DEPOSIT)
    await worker.scan_chain()


async def trade(market, n_pairs: int, seed: int = 1, signed_every: int = 3, chain_id: int = 1337) -> int:
    """Submit ``n_pairs`` crossing sell/buy pairs between random members; every
    ``signed_every``-th order is EIP-712 signed. Returns the number of trades."""
    rng = random.Random(seed)
    rt = market.runtime
    pids = open_products(rt.engine)
    nonces = {a.address: 0 for a in MEMBER_KEYS}
    trades = 0
    for i in range(n_pairs):
        seller, buyer = rng.sample(MEMBER_KEYS, 2)
        pid = rng.choice(pids[:3])
        price = rng.randint(-500, 30_000)
        qty = rng.randint(1, 5_000)
        for acct, side in ((seller, Side.SELL), (buyer, Side.BUY)):
            sig = nonce = None
            if (2 * i + (side is Side.BUY)) % signed_every == 0:
                nonces[acct.address] += 1
                nonce = nonces[acct.address]
                typed = order_typed_data(market.journal.market_id, chain_id, product_id=pid, side=side.value,
                                         price=price, quantity=qty, tif="gtc", client_order_id=None, nonce=nonce)
                sig = sign_order(typed, acct.key)
            res = await rt.submit(PlaceOrder(0, acct.address, pid, side, price, qty, signature=sig, nonce=nonce))
            trades += sum(1 for ev in res.events if ev.type == "trade")
    return trades


async def assert_settled(pool, market, chain, market_id: str = "s") -> Report:
    """Reconcile OK, every batch anchored, each member's collateral in the engine as on chain,
    nothing payable left, and the deposits all there. Returns the reconcile report."""
    rep = await reconcile(pool, market_id, chain)
    assert rep.ok, rep.differences
    assert rep.pending_trades == 0 and not rep.unverifiable
    assert chain.registry.functions.batchCount().call() == rep.batches == rep.anchored
    for acct in MEMBER_KEYS:
        a = market.engine.accounts[acct.address]
        assert a.collateral == chain.collateral(acct.address), acct.address
        assert a.net_payable == 0
    assert sum(chain.collateral(a.address) for a in MEMBER_KEYS) == DEPOSIT * len(MEMBER_KEYS)
    return rep


async def anchored_proofs(pool, chain, market_id: str = "s") -> list[dict]:
    """The proof of every trade in an anchored batch, by trade id."""
    proofs = ProofService(pool, market_id, chain)
    ids = await pool.fetch("SELECT t.trade_id FROM trades t " + BATCH_OF_TRADE +
                           " WHERE t.market_id = $1 AND b.state = 'anchored' ORDER BY t.trade_id", market_id)
    return [await proofs.trade_proof(r["trade_id"]) for r in ids]
