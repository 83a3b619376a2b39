"""Settlement inside the exchange process: the worker task, proofs over WebSocket and
REST, the operator's status and reconciliation routes, the operator feed topic.

``add_settlement(app)`` is called by ``make_app`` when ``settings.settlement_enabled``.
On startup it connects to the chain (in-process EVM or ``chain_rpc_url``), attaches to
or deploys the contracts, and runs the worker; on cleanup it stops it.

Routes:

- ``GET /api/trades/{trade_id}/proof?address=0x..&ts=<unix s>&sig=0x..`` — a member's
  proof of its own trade over REST. ``sig`` is the member's EIP-191 signature of
  ``"Voltbourse proof\\nMarket: <market>\\nTrade: <trade_id>\\nTime: <ts>"``; ``ts`` must be
  within 5 minutes of the server's clock. (Over WebSocket: ``trade_proof``.)
- ``GET /api/operator/settlement`` — status: batches, pending trades, alert, contracts.
- ``POST /api/operator/settlement/reconcile`` — run the reconciliation now.
- ``GET /api/operator/trades/{trade_id}/proof`` — any trade's proof, for auditors.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from exchange.protocol.auth import recover_login
from exchange.gateway.keys import MARKET, MEMBERS, METRICS, OPERATOR_FEED, SETTINGS, WS_HANDLERS
from exchange.gateway.operator import _json, _operator_only
from exchange.gateway.operator import error as _error

from settlement.chain import Chain
from settlement.proofs import ProofError, ProofService
from settlement.reconcile import reconcile
from settlement.worker import SettlementWorker

log = logging.getLogger(__name__)

SETTLEMENT: web.AppKey[SettlementWorker] = web.AppKey("settlement")
PROOFS: web.AppKey[ProofService] = web.AppKey("proofs")
PROOF_WINDOW_S = 300


def proof_message(market_id: str, trade_id: int, ts: int) -> str:
    """What a member signs (EIP-191) to fetch a proof over REST."""
    return f"Voltbourse proof\nMarket: {market_id}\nTrade: {trade_id}\nTime: {ts}"


async def _peer_proof(request: web.Request) -> web.Response:
    proofs = request.app.get(PROOFS)
    if proofs is None:
        return _error(503, "UNAVAILABLE", "settlement is starting")
    q = request.query
    try:
        trade_id = int(request.match_info["trade_id"])
        ts = int(q["ts"])
        address, sig = q["address"], q["sig"]
    except (KeyError, ValueError):
        return _error(400, "INVALID_REQUEST", "give address, ts (unix seconds) and sig (EIP-191 signature of the "
                                              "proof message, see docs/settlement.md)")
    if abs(time.time() - ts) > PROOF_WINDOW_S:
        return _error(401, "STALE_SIGNATURE", f"ts must be within {PROOF_WINDOW_S} s of the server's clock")
    try:
        signer = recover_login(proof_message(proofs.market_id, trade_id, ts), sig)
    except ValueError as exc:
        return _error(401, "BAD_SIGNATURE", str(exc))
    if signer.lower() != address.lower():
        return _error(401, "BAD_SIGNATURE", "the signature is not by that address")
    return await _proof_response(proofs, trade_id, signer)


async def _proof_response(proofs: ProofService, trade_id: int, member: str | None) -> web.Response:
    try:
        return _json(await proofs.trade_proof(trade_id, member))
    except ProofError as exc:
        return _error(404 if exc.code == "NOT_FOUND" else 409, exc.code, exc.message)


async def _operator_proof(request: web.Request) -> web.Response:
    proofs = request.app.get(PROOFS)
    if proofs is None:
        return _error(503, "UNAVAILABLE", "settlement is starting")
    try:
        trade_id = int(request.match_info["trade_id"])
    except ValueError:
        return _error(400, "INVALID_REQUEST", "trade_id must be an integer")
    return await _proof_response(proofs, trade_id, None)


async def _status(request: web.Request) -> web.Response:
    worker = request.app.get(SETTLEMENT)
    if worker is None:
        return _error(503, "UNAVAILABLE", "settlement is starting")
    return _json(await worker.status())


async def _reconcile(request: web.Request) -> web.Response:
    worker = request.app.get(SETTLEMENT)
    if worker is None:
        return _error(503, "UNAVAILABLE", "settlement is starting")
    report = await run_reconcile(worker)
    return _json(report)


async def run_reconcile(worker: SettlementWorker) -> dict:
    """Reconcile on the chain thread's side of things; the result also goes to the feed."""
    # chain reads run on the worker's chain thread; the event loop stays free
    rep = await reconcile(worker.pool, worker.market_id, worker.chain, deployment_id=worker.deployment_id,
                          run=worker._chain)
    worker.last_reconcile = {"ok": rep.ok, "checked_at": rep.checked_at, "differences": rep.differences[:50]}
    worker._publish()
    return rep.as_dict()


async def _ws_trade_proof(app: web.Application, session, msg) -> None:
    proofs = app.get(PROOFS)
    if proofs is None:
        session.error(msg.id, "UNAVAILABLE", "settlement is starting")
        return
    try:
        result = await proofs.trade_proof(msg.trade_id, session.member)
    except ProofError as exc:
        session.error(msg.id, exc.code, exc.message)
        return
    session.send({"type": "response", "id": msg.id, "result": result})


def add_settlement(app: web.Application, *, chain: Chain | None = None) -> None:
    """Register settlement on ``app`` (before it starts). ``chain`` overrides the chain
    chosen by the settings (tests pass a prepared in-process chain)."""
    app.router.add_get("/api/trades/{trade_id}/proof", _peer_proof)
    app.router.add_get("/api/operator/trades/{trade_id}/proof", _operator_only(_operator_proof))
    app.router.add_get("/api/operator/settlement", _operator_only(_status))
    app.router.add_post("/api/operator/settlement/reconcile", _operator_only(_reconcile))

    async def ws_handler(session, msg) -> None:
        await _ws_trade_proof(app, session, msg)

    app[WS_HANDLERS]["trade_proof"] = ws_handler
    state: dict = {}

    async def startup(app: web.Application) -> None:
        settings = app[SETTINGS]
        market = app[MARKET]
        loop = asyncio.get_running_loop()
        c = chain or await loop.run_in_executor(None, Chain.from_settings, settings)
        feed = app.get(OPERATOR_FEED)
        worker = SettlementWorker(
            market.pool, market.journal.market_id, c, runtime=market.runtime,
            batch_size=settings.settlement_batch_size, max_age_s=settings.settlement_max_age_s,
            poll_s=settings.settlement_poll_s, retry_s=settings.settlement_retry_s,
            retry_max_s=settings.settlement_retry_max_s,
            publish=(lambda payload: feed.publish("settlement", payload)) if feed is not None else None)
        await worker.start()
        app[SETTLEMENT] = worker
        registry = app.get(MEMBERS)
        if registry is not None:
            registry.funder = worker.credit_member  # POST /api/operator/members collateral -> on chain
        app[PROOFS] = ProofService(market.pool, market.journal.market_id, c)
        metrics = app.get(METRICS)
        if metrics is not None:
            metrics.registry.register(SettlementCollector(worker))

        def on_commit(entries) -> None:
            if any(ev.type == "trade" for e in entries for ev in e.events):
                worker.wake()

        market.runtime.subscribers.append(on_commit)
        state["task"] = asyncio.create_task(worker.run(), name="settlement-worker")
        log.info("settlement: registry %s on chain %s (%s)", c.registry.address, c.chain_id,
                 "in-process EVM" if c.in_process else settings.chain_rpc_url)

    async def cleanup(app: web.Application) -> None:
        worker = app.get(SETTLEMENT)
        if worker is None:
            return
        worker.stop()
        task = state.get("task")
        if task is not None:
            try:
                await asyncio.wait_for(task, 10)
            except (TimeoutError, Exception):  # noqa: BLE001 - shutting down either way
                log.exception("settlement worker did not stop cleanly")
        worker.close()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)


class SettlementCollector:
    """Prometheus view of the worker, read at scrape time."""

    def __init__(self, worker: SettlementWorker) -> None:
        self.worker = worker

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        w = self.worker
        for name, key, doc in (
                ("voltbourse_settlement_batches_anchored", "batches_anchored", "Batches anchored on chain."),
                ("voltbourse_settlement_trades_anchored", "trades_anchored", "Trades anchored on chain."),
                ("voltbourse_settlement_gas_used", "gas_used", "Gas used by anchorBatch transactions."),
                ("voltbourse_settlement_chain_errors", "chain_errors", "Chain errors (each followed by a retry).")):
            yield CounterMetricFamily(name, doc, value=w.stats[key])
        yield GaugeMetricFamily("voltbourse_settlement_alert", "1 while the chain is failing and the worker retries.",
                                value=1 if w.alert else 0)
        yield GaugeMetricFamily("voltbourse_settlement_pending_trades",
                                "Trades not yet in a batch (as of the last status).", value=w.last_pending)
        if w.lag_s:
            yield GaugeMetricFamily("voltbourse_settlement_last_lag_seconds",
                                    "Wait of the last anchored batch's oldest trade.", value=w.lag_s[-1])


