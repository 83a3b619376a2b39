"""Settlement as a subsystem of the exchange (exchange.gateway.plugin): the worker
task, proofs over WebSocket (``trade_proof``) and REST, the operator's status and
reconciliation routes, the operator feed topic, its tables (migrations/).

:data:`SUBSYSTEM` is registered in pyproject (``voltbourse.subsystems``) and runs when
``settings.settlement_enabled``. On startup it connects to the chain (in-process EVM or ``chain_rpc_url``), attaches to
or deploys the contracts, and runs the worker; on cleanup it stops it.

Routes:

- ``GET /api/trades/{trade_id}/proof?address=0x..&ts=<unix s>&sig=0x..`` — a member's
  proof of its own trade over REST. ``sig`` is the member's EIP-191 signature of
  ``"Voltbourse proof\\nMarket: <market>\\nTrade: <trade_id>\\nTime: <ts>"``; ``ts`` must be
  within 5 minutes of the server's clock. (Over WebSocket: ``trade_proof``.)
- WebSocket ``my_collateral`` — the signed-in member's collateral on chain and in the engine,
  its recent deposits and withdrawal requests (settlement/collateral.py).
- ``GET /api/operator/settlement`` — status: batches, pending trades, alert, contracts.
- ``POST /api/operator/settlement/reconcile`` — run the reconciliation now.
- ``GET /api/operator/trades/{trade_id}/proof`` — any trade's proof, for auditors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel, ConfigDict, Field

from exchange.gateway.feed import OPERATOR_FEED
from exchange.gateway.http import ANY_OBJECT, INT, ApiError, Route, json_response, read_query
from exchange.gateway.http import error_response as _error
from exchange.gateway.keys import MARKET, MEMBERS, PAYOUT_SOURCES, SETTINGS
from exchange.gateway.metrics import METRICS
from exchange.gateway.plugin import Subsystem, WsRequest
from exchange.protocol.auth import recover_login
from exchange.protocol.messages import MAX_INT, Address, Signature
from settlement import cli as settlement_cli
from settlement.chain import Chain
from settlement.chainstore import ChainStoreLocked
from settlement.collateral import my_collateral
from settlement.proofs import ProofService
from settlement.protocol import MyCollateral, TradeProof
from settlement.reconcile import reconcile
from settlement.worker import SettlementStartError, SettlementWorker

log = logging.getLogger(__name__)

SETTLEMENT: web.AppKey[SettlementWorker] = web.AppKey("settlement")
PROOFS: web.AppKey[ProofService] = web.AppKey("proofs")
PROOF_WINDOW_S = 300


def proof_message(market_id: str, trade_id: int, ts: int) -> str:
    """What a member signs (EIP-191) to fetch a proof over REST."""
    return f"Voltbourse proof\nMarket: {market_id}\nTrade: {trade_id}\nTime: {ts}"


class ProofQuery(BaseModel):
    """``?address=0x..&ts=<unix s>&sig=0x..``: the member's EIP-191 signature of
    :func:`proof_message` (see docs/settlement.md)."""

    model_config = ConfigDict(extra="forbid")
    address: Address
    ts: int = Field(ge=0, le=2**40, description="unix seconds, within 5 minutes of the server's clock")
    sig: Signature


def _trade_id(request: web.Request) -> int:
    raw = request.match_info["trade_id"]
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 16 and 1 <= int(raw) <= MAX_INT):
        raise ApiError(422, "INVALID_REQUEST", "trade_id: a positive integer below 2^53")
    return int(raw)


async def _peer_proof(request: web.Request) -> web.Response:
    proofs = request.app[PROOFS]
    trade_id = _trade_id(request)
    q = read_query(request, ProofQuery)
    if abs(int(time.time()) - q.ts) > PROOF_WINDOW_S:
        return _error(401, "STALE_SIGNATURE", f"ts must be within {PROOF_WINDOW_S} s of the server's clock")
    try:
        signer = recover_login(proof_message(proofs.market_id, trade_id, q.ts), q.sig)
    except ValueError as exc:
        return _error(401, "BAD_SIGNATURE", str(exc))
    if signer.lower() != q.address.lower():
        return _error(401, "BAD_SIGNATURE", "the signature is not by that address")
    return json_response(await proofs.trade_proof(trade_id, signer))


async def _operator_proof(request: web.Request) -> web.Response:
    return json_response(await request.app[PROOFS].trade_proof(_trade_id(request), None))


async def _status(request: web.Request) -> web.Response:
    return json_response(await request.app[SETTLEMENT].status())


async def _reconcile(request: web.Request) -> web.Response:
    return json_response(await run_reconcile(request.app[SETTLEMENT]))


_TRADE_ID = {"trade_id": {"type": "integer", "minimum": 1}}
_PROOF = {"type": "object", "description": "the trade, its leaf, the Merkle proof and the batch's root, "
          "registry, chain id and block (docs/settlement.md)"}
ROUTES = (
    Route("GET", "/api/trades/{trade_id}/proof", _peer_proof, "A member's proof of its own trade", _PROOF,
          query=(("address", {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}, "the member's address"),
                 ("ts", {"type": "integer", "minimum": 0}, "unix seconds, within 5 minutes of the server"),
                 ("sig", {"type": "string"}, "EIP-191 signature of the proof message (docs/settlement.md)")),
          errors=(401, 404, 409, 422), tags=("member", "settlement"), path_params=_TRADE_ID,
          description="Signed by the member: `sig` is its EIP-191 signature of "
                      "\"Voltbourse proof\\nMarket: <market>\\nTrade: <trade_id>\\nTime: <ts>\"."),
    Route("GET", "/api/operator/trades/{trade_id}/proof", _operator_proof, "Any trade's proof (auditors)", _PROOF,
          errors=(404, 409, 422), tags=("operator", "settlement"), path_params=_TRADE_ID),
    Route("GET", "/api/operator/settlement", _status, "Settlement status: batches, pending trades, alert, "
          "contracts", ANY_OBJECT, tags=("operator", "settlement")),
    Route("POST", "/api/operator/settlement/reconcile", _reconcile, "Reconcile every trade against the chain now",
          {"type": "object", "properties": {"ok": {"type": "boolean"}, "trades": INT, "batches": INT}},
          tags=("operator", "settlement")),
)


async def run_reconcile(worker: SettlementWorker) -> dict:
    """Reconcile on the chain thread's side of things; the result also goes to the feed."""
    # chain reads run on the worker's chain thread; the event loop stays free
    rep = await reconcile(worker.pool, worker.market_id, worker.chain, deployment_id=worker.deployment_id,
                          run=worker._chain)
    worker.last_reconcile = {"ok": rep.ok, "checked_at": rep.checked_at, "differences": rep.differences[:50]}
    worker._publish()
    return rep.as_dict()


async def _ws_trade_proof(app: web.Application, member: str, msg: TradeProof) -> dict:
    return await app[PROOFS].trade_proof(msg.trade_id, member)


async def _ws_my_collateral(app: web.Application, member: str, msg: MyCollateral) -> dict:
    worker = app[SETTLEMENT]
    return await my_collateral(pool=worker.pool, market_id=worker.market_id, deployment_id=worker.deployment_id,
                               chain=worker.chain, run_on_chain=worker.run_on_chain, engine=app[MARKET].engine,
                               member=member, limit=msg.limit)


def settlement_subsystem(*, chain: Chain | None = None) -> Subsystem:
    """Settlement as a subsystem; ``chain`` overrides the chain chosen by the settings
    (tests pass a prepared in-process chain)."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        market = app[MARKET]
        loop = asyncio.get_running_loop()
        owned = chain is None  # a chain made here (from the settings) is closed here
        try:
            c = chain if chain is not None else await loop.run_in_executor(None, Chain.from_settings, settings)
        except ChainStoreLocked as exc:
            log.critical("settlement: %s", exc)
            raise
        feed = app.get(OPERATOR_FEED)
        payout_sources = app[PAYOUT_SOURCES]
        worker = SettlementWorker(
            market.pool, market.journal.market_id, c, runtime=market.runtime,
            batch_size=settings.settlement_batch_size, max_age_s=settings.settlement_max_age_s,
            min_batch=settings.settlement_min_batch, thin_max_age_s=settings.settlement_thin_max_age_s,
            poll_s=settings.settlement_poll_s, retry_s=settings.settlement_retry_s,
            retry_max_s=settings.settlement_retry_max_s,
            publish=(lambda payload: feed.publish("settlement", payload)) if feed is not None else None,
            payout_sources=payout_sources,
            # the in-process EVM has eth-tester's fixed chain id; a node must be the signing domain's chain
            signing_chain_id=None if c.is_in_process else settings.chain_id)
        try:
            await worker.start()
        except BaseException as exc:
            if isinstance(exc, SettlementStartError):
                log.critical("settlement: %s", exc)
            worker.close()
            if owned:
                c.close()
            raise
        app[SETTLEMENT] = worker
        registry = app.get(MEMBERS)
        if registry is not None:
            registry.funder = worker.credit_member  # POST /api/operator/members collateral -> on chain
        app[PROOFS] = ProofService(market.pool, market.journal.market_id, c, run_chain=worker.run_on_chain)
        metrics = app.get(METRICS)
        if metrics is not None:
            metrics.registry.register(SettlementCollector(worker))

        def on_commit(entries: list) -> None:
            if any(ev.type == "trade" for e in entries for ev in e.events):
                worker.wake()

        market.runtime.subscribers.append(on_commit)
        task = asyncio.create_task(worker.run(), name="settlement-worker")
        log.info("settlement: registry %s on chain %s (%s)", c.registry.address, c.chain_id,
                 settings.chain_rpc_url if not c.is_in_process else
                 f"in-process EVM in {c.store.directory}" if c.store is not None else "in-process EVM in memory")
        yield
        worker.stop()
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, Exception):  # noqa: BLE001 - shutting down either way
            log.exception("settlement worker did not stop cleanly")
        await worker.shutdown()
        if owned:
            c.close()  # the in-process chain's last block is committed and its directory unlocked

    return Subsystem(
        name="settlement",
        summary="trades batched under Merkle roots, anchored and netted on an EVM chain (docs/settlement.md)",
        routes=ROUTES,
        ws_requests=(WsRequest(TradeProof, _ws_trade_proof), WsRequest(MyCollateral, _ws_my_collateral)),
        migrations=Path(__file__).resolve().parent / "migrations",
        lifecycle=lifecycle,
        commands=settlement_cli.add_commands,
        enabled=lambda settings: settings.settlement_enabled,
    )


class SettlementCollector:
    """Prometheus view of the worker, read at scrape time."""

    def __init__(self, worker: SettlementWorker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        w = self.worker
        for name, key, doc in (
                ("voltbourse_settlement_batches_anchored", "batches_anchored", "Batches anchored on chain."),
                ("voltbourse_settlement_trades_anchored", "trades_anchored", "Trades anchored on chain."),
                ("voltbourse_settlement_gas_used", "gas_used", "Gas used by anchorBatch transactions."),
                ("voltbourse_settlement_chain_errors", "chain_errors", "Chain errors (each followed by a retry).")):
            yield CounterMetricFamily(name, doc, value=w.stats[key])
        for name, key, doc in (
                ("voltbourse_settlement_reverts", "reverts", "anchorBatch transactions mined and reverted."),
                ("voltbourse_settlement_batches_blocked", "batches_blocked",
                 "Times a batch was blocked (its anchorBatch reverts with a decoded error)."),
                ("voltbourse_settlement_rollbacks", "rollbacks",
                 "Chain rollbacks noticed (anchored batches missing from the registry)."),
                ("voltbourse_settlement_batches_healed", "batches_healed",
                 "Anchored batches put back to be re-sent after a chain rollback."),
                ("voltbourse_settlement_rescans", "rescans", "Chain event rescans after a rollback or reorg."),
                ("voltbourse_settlement_nonce_resets", "nonce_resets",
                 "Operator nonce reset from the node (it was ahead or behind).")):
            yield CounterMetricFamily(name, doc, value=w.stats[key])
        yield GaugeMetricFamily("voltbourse_settlement_alert", "1 while any settlement alert is raised (see "
                                "voltbourse_settlement_alert_kind and /api/operator/settlement).",
                                value=1 if w.alert else 0)
        kinds = GaugeMetricFamily("voltbourse_settlement_alert_kind", "1 for each kind of alert raised now: chain "
                                  "(errors, retrying), blocked, rollback, mismatch, deployment.", labels=["kind"])
        for kind in w.alerts:
            kinds.add_metric([kind], 1)
        yield kinds
        yield GaugeMetricFamily("voltbourse_settlement_blocked_batches", "Batches blocked now (their anchorBatch "
                                "reverts with an error of the contracts).", value=len(w.blocked))
        blocked = GaugeMetricFamily("voltbourse_settlement_blocked_batch", "1 per blocked batch, labelled with the "
                                    "decoded error's name.", labels=["batch_id", "error"])
        for bid, err in sorted(w.blocked.items()):
            blocked.add_metric([str(bid), str(err.get("name") or "unknown")], 1)
        yield blocked
        yield GaugeMetricFamily("voltbourse_settlement_pending_trades",
                                "Trades not yet in a batch (as of the last status).", value=w.last_pending)
        if w.lag_s:
            yield GaugeMetricFamily("voltbourse_settlement_last_lag_seconds",
                                    "Wait of the last anchored batch's oldest trade.", value=w.lag_s[-1])




SUBSYSTEM = settlement_subsystem()
