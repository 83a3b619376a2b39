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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from exchange.protocol.errors import VoltbourseError
from exchange.protocol.messages import MAX_INT, Address, Signature
from settlement import cli as settlement_cli
from settlement.chain import Chain, ChainError
from settlement.chainstore import ChainStoreLocked
from settlement.collateral import my_collateral
from settlement.process import Supervisor, make_worker, run_reconcile
from settlement.proofs import ProofService
from settlement.protocol import MyCollateral, TradeProof
from settlement.remote import SettlementUnavailable, SettlementView
from settlement.worker import SettlementStartError, SettlementWorker, compact_chain_at_open

log = logging.getLogger(__name__)

SETTLEMENT: web.AppKey[SettlementWorker] = web.AppKey("settlement")
PROOFS: web.AppKey[ProofService] = web.AppKey("proofs")
#: what the routes read: InlineView (the worker in this process) or SettlementView (its own process)
VIEW: web.AppKey = web.AppKey("settlement_view")
SUPERVISOR: web.AppKey[Supervisor] = web.AppKey("settlement_supervisor")
PROOF_WINDOW_S = 300


def proof_message(market_id: str, trade_id: int, ts: int) -> str:
    """What a member signs (EIP-191) to fetch a proof over REST."""
    return f"Voltbourse proof\nMarket: {market_id}\nTrade: {trade_id}\nTime: {ts}"


class ProofQuery(BaseModel):
    """``?address=0x..&ts=<unix s>&sig=0x..``: the member's EIP-191 signature of
    :func:`proof_message` (see docs/settlement.md)."""

    model_config = ConfigDict(extra="forbid")
    address: Address
    ts: int = Field(ge=0, le=2**40, description="unix seconds, within 5 minutes of the server's wall clock")
    sig: Signature


def _trade_id(request: web.Request) -> int:
    raw = request.match_info["trade_id"]
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) <= 16 and 1 <= int(raw) <= MAX_INT):
        raise ApiError(422, "INVALID_REQUEST", "trade_id: a positive integer below 2^53",
                       details=[{"loc": ["path", "trade_id"], "msg": "a positive integer below 2^53",
                                 "type": "int_range"}])
    return int(raw)


async def _proofs(app: web.Application) -> ProofService:
    """The proof service, its chain reader connected (a settlement process may have moved)."""
    proofs = app[PROOFS]
    try:
        proofs.chain = await app[VIEW].connect()
    except (ChainError, OSError) as exc:
        raise VoltbourseError("CHAIN_UNAVAILABLE", f"the chain could not be reached: {exc}"[:300]) from exc
    return proofs


async def _peer_proof(request: web.Request) -> web.Response:
    proofs = await _proofs(request.app)
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
    return json_response(await (await _proofs(request.app)).trade_proof(_trade_id(request), None))


async def _status(request: web.Request) -> web.Response:
    return json_response(await request.app[VIEW].status())


async def _reconcile(request: web.Request) -> web.Response:
    try:
        return json_response(await request.app[VIEW].reconcile())
    except SettlementUnavailable as exc:
        return _error(503, "UNAVAILABLE", str(exc))


_TRADE_ID = {"trade_id": {"type": "integer", "minimum": 1}}
_PROOF = {"type": "object", "description": "the trade, its leaf, the Merkle proof and the batch's root, "
          "registry, chain id and block (docs/settlement.md)"}
ROUTES = (
    Route("GET", "/api/trades/{trade_id}/proof", _peer_proof, "A member's proof of its own trade", _PROOF,
          query=(("address", {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}, "the member's address"),
                 ("ts", {"type": "integer", "minimum": 0, "maximum": 2**40},
                  "unix seconds, within 5 minutes of the server's wall clock (also in a simulated market)"),
                 ("sig", {"type": "string", "pattern": "^0x[0-9a-fA-F]{130}$"},
                  "EIP-191 signature of the proof message (docs/settlement.md)")),
          required_query=("address", "ts", "sig"), errors=(401, 404, 409, 422), tags=("member", "settlement"), path_params=_TRADE_ID,
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


async def _ws_trade_proof(app: web.Application, member: str, msg: TradeProof) -> dict:
    return await (await _proofs(app)).trade_proof(msg.trade_id, member)


async def _ws_my_collateral(app: web.Application, member: str, msg: MyCollateral) -> dict:
    view = app[VIEW]
    try:
        chain = await view.connect()
    except (ChainError, OSError) as exc:
        raise VoltbourseError("CHAIN_UNAVAILABLE", f"the chain could not be reached: {exc}"[:300]) from exc
    return await my_collateral(pool=app[MARKET].pool, market_id=view.market_id, deployment_id=view.deployment_id,
                               chain=chain, run_on_chain=view.run_on_chain, engine=app[MARKET].engine,
                               member=member, limit=msg.limit)


class InlineView:
    """The worker in this process, seen as the routes see a settlement process (settlement.remote)."""

    def __init__(self, worker: SettlementWorker) -> None:
        self.worker = worker
        self.market_id = worker.market_id

    @property
    def deployment_id(self) -> int | None:
        return self.worker.deployment_id

    async def status(self) -> dict:
        return await self.worker.status()

    def metrics(self) -> dict:
        return self.worker.metrics()

    async def reconcile(self) -> dict:
        return await run_reconcile(self.worker)

    async def credit_member(self, member: str, amount: int) -> None:
        await self.worker.credit_member(member, amount)

    async def connect(self) -> Chain:
        return self.worker.chain

    async def run_on_chain(self, fn, *args):
        return await self.worker.run_on_chain(fn, *args)


async def _start_inline(app: web.Application, chain: Chain | None, publish) -> Callable[[], Awaitable[None]]:
    """The worker as a task of this process (``settlement_process = "inline"``, or a chain given)."""
    settings, market = app[SETTINGS], app[MARKET]
    loop = asyncio.get_running_loop()
    owned = chain is None  # a chain made here (from the settings) is closed here
    if chain is None:
        await compact_chain_at_open(market.pool, settings)
    try:
        c = chain if chain is not None else await loop.run_in_executor(None, Chain.from_settings, settings)
    except ChainStoreLocked as exc:
        log.critical("settlement: %s", exc)
        raise
    worker = make_worker(market.pool, settings, c, runtime=market.runtime, publish=publish,
                         payout_sources=app[PAYOUT_SOURCES])
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
    app[VIEW] = InlineView(worker)

    def on_commit(entries: list) -> None:
        if any(ev.type == "trade" for e in entries for ev in e.events):
            worker.wake()

    market.runtime.subscribers.append(on_commit)
    task = asyncio.create_task(worker.run(), name="settlement-worker")
    log.info("settlement: registry %s on chain %s (%s)", c.registry.address, c.chain_id,
             settings.chain_rpc_url if not c.is_in_process else
             f"in-process EVM in {c.store.directory}" if c.store is not None else "in-process EVM in memory")

    async def stop() -> None:
        worker.stop()
        try:
            await asyncio.wait_for(task, 10)
        except (TimeoutError, Exception):  # noqa: BLE001 - shutting down either way
            log.exception("settlement worker did not stop cleanly")
        await worker.shutdown()
        if owned:
            c.close()  # the in-process chain's last block is committed and its directory unlocked
    return stop


async def _start_remote(app: web.Application, publish) -> Callable[[], Awaitable[None]]:
    """Settlement in a process of its own (``child``: started and supervised here; ``external``:
    the operator runs ``voltbourse settle``): this process applies its engine inbox and serves
    the subsystem's routes from the settlement process's tables (settlement.remote)."""
    settings, market = app[SETTINGS], app[MARKET]
    dsn = market.dsn or settings.database_url
    market.start_inbox()
    view = SettlementView(market.pool, settings, dsn, publish=publish)
    await view.start()
    app[VIEW] = view
    supervisor = None
    if settings.settlement_process == "child":
        if dsn is None:
            raise RuntimeError("settlement_process = child needs the database's URL for the settlement process")
        supervisor = Supervisor(settings, dsn)
        supervisor.start()
        app[SUPERVISOR] = supervisor
    log.info("settlement: in %s (voltbourse settle), market %s",
             "a child process" if supervisor else "an external process", settings.market_id)

    async def stop() -> None:
        if supervisor is not None:
            await supervisor.stop()
        await view.stop()
    return stop


def settlement_subsystem(*, chain: Chain | None = None) -> Subsystem:
    """Settlement as a subsystem; ``chain`` overrides the chain chosen by the settings
    (tests pass a prepared in-process chain)."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        market = app[MARKET]
        feed = app.get(OPERATOR_FEED)
        publish = (lambda payload: feed.publish("settlement", payload)) if feed is not None else None
        inline = chain is not None or settings.settlement_process == "inline"
        stop = await (_start_inline(app, chain, publish) if inline else _start_remote(app, publish))
        view = app[VIEW]
        registry = app.get(MEMBERS)
        if registry is not None:
            registry.funder = view.credit_member  # POST /api/operator/members collateral -> on chain
        app[PROOFS] = ProofService(market.pool, market.journal.market_id, None, run_chain=view.run_on_chain)
        metrics = app.get(METRICS)
        if metrics is not None:
            metrics.registry.register(SettlementCollector(view))
        yield
        await stop()

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
    """Prometheus view of the worker (in this process, or as its process last wrote it), read at
    scrape time."""

    def __init__(self, source: SettlementWorker | InlineView | SettlementView) -> None:
        self.source = source  # anything with metrics() -> dict (SettlementWorker.metrics)

    def collect(self) -> Iterator[Metric]:
        m = self.source.metrics()
        stats, alerts, blocked_now = m.get("stats", {}), m.get("alerts", {}), m.get("blocked", {})
        for name, key, doc in (
                ("voltbourse_settlement_batches_anchored", "batches_anchored", "Batches anchored on chain."),
                ("voltbourse_settlement_trades_anchored", "trades_anchored", "Trades anchored on chain."),
                ("voltbourse_settlement_gas_used", "gas_used", "Gas used by anchorBatch transactions."),
                ("voltbourse_settlement_chain_errors", "chain_errors", "Chain errors (each followed by a retry).")):
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
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
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        yield GaugeMetricFamily("voltbourse_settlement_alert", "1 while any settlement alert is raised (see "
                                "voltbourse_settlement_alert_kind and /api/operator/settlement).",
                                value=1 if alerts else 0)
        kinds = GaugeMetricFamily("voltbourse_settlement_alert_kind", "1 for each kind of alert raised now: chain "
                                  "(errors, retrying), blocked, rollback, mismatch, deployment, process (the settlement process is "
                                  "not running).", labels=["kind"])
        for kind in alerts:
            kinds.add_metric([kind], 1)
        yield kinds
        yield GaugeMetricFamily("voltbourse_settlement_blocked_batches", "Batches blocked now (their anchorBatch "
                                "reverts with an error of the contracts).", value=len(blocked_now))
        blocked = GaugeMetricFamily("voltbourse_settlement_blocked_batch", "1 per blocked batch, labelled with the "
                                    "decoded error's name.", labels=["batch_id", "error"])
        for bid, name in sorted(blocked_now.items(), key=lambda kv: int(kv[0])):
            blocked.add_metric([bid, name], 1)
        yield blocked
        yield GaugeMetricFamily("voltbourse_settlement_pending_trades",
                                "Trades not yet in a batch (as of the last status).", value=m.get("last_pending", 0))
        if m.get("last_lag_s") is not None:
            yield GaugeMetricFamily("voltbourse_settlement_last_lag_seconds",
                                    "Wait of the last anchored batch's oldest trade.", value=m["last_lag_s"])




SUBSYSTEM = settlement_subsystem()
