"""Settlement in a process of its own (``voltbourse settle``), and its supervision by
``voltbourse serve``.

The settlement process runs one market's :class:`~settlement.worker.SettlementWorker` against
the exchange's database, away from the order path (leaf hashing, py-evm and web3 never share
the exchange's interpreter):

- it reads committed trades and events with its own cursor (``consumer_cursors``), as always;
- collateral changes reach the engine through the engine inbox (``exchange.runtime.inbox``:
  rows in PostgreSQL that the exchange's runtime applies in order, woken by NOTIFY);
- it writes its status (alerts, counters, batches) to ``settlement_status`` (and NOTIFYs
  ``settlement_status``), where the exchange's routes, metrics and operator feed read it;
- it executes the operator's requests (``settlement_requests``: credit a member, reconcile),
  posted by the exchange's routes;
- with the in-process EVM it serves that chain over JSON-RPC on 127.0.0.1 (every request run
  on the worker's chain thread), so the exchange reads proofs' roots and members' collateral
  from it; the address is in ``settlement_status.rpc_url``. With a JSON-RPC node the exchange
  reads the node directly.

One settlement process per market: it holds a PostgreSQL advisory lock for the market while
it runs (a second one refuses to start), besides the in-process chain's directory lock.

:class:`Supervisor` is what ``serve`` runs by default (``settlement_process = "child"``): it
starts ``voltbourse settle`` for the market as a child process, restarts it with back-off when
it dies, and stops it (SIGTERM, then SIGKILL) on shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import SecretStr
from web3.middleware import combine_middleware

from exchange.runtime.config import Settings, load_settings
from exchange.runtime.db import create_pool
from exchange.runtime.inbox import InboxEngine
from exchange.runtime.ports import PayoutSource
from settlement.chain import Chain, chain_data_path
from settlement.chainstore import DEFAULT_KEEP_BLOCKS
from settlement.reconcile import reconcile
from settlement.worker import AUTO_COMPACT_BLOCKS, SettlementWorker, compact_chain_at_open, droppable_now

log = logging.getLogger(__name__)

STATUS_CHANNEL = "settlement_status"
REQUEST_CHANNEL = "settlement_requests"
HEARTBEAT_S = 5.0  # the status row is rewritten at least this often
SETTINGS_ENV = "VOLTBOURSE_SETTLE_SETTINGS"  # the child's settings (JSON), from its supervisor
LOCK_NAMESPACE = 0x5E77  # pg_advisory_lock(namespace, hashtext(market_id)): one settlement process per market
#: how often a running settlement process looks whether its in-process chain's store grew
#: enough to compact (AUTO_COMPACT_BLOCKS droppable blocks)
COMPACT_CHECK_S = 600.0
_REOPEN = -1  # what _run returns when the chain is to be closed, compacted and opened again


class AlreadyRunning(RuntimeError):
    """Another settlement process holds this market."""


# ---------------------------------------------------------------------- shared by both processes
def make_worker(pool: asyncpg.Pool, settings: Settings, chain: Chain, **kw: Any) -> SettlementWorker:
    """The worker as the settings describe it (inline in the exchange or in its own process)."""
    return SettlementWorker(
        pool, settings.market_id, chain,
        batch_size=settings.settlement_batch_size, max_age_s=settings.settlement_max_age_s,
        min_batch=settings.settlement_min_batch, thin_max_age_s=settings.settlement_thin_max_age_s,
        poll_s=settings.settlement_poll_s, retry_s=settings.settlement_retry_s,
        retry_max_s=settings.settlement_retry_max_s,
        # the chain, a node or the in-process EVM, must be the signing domain's
        signing_chain_id=settings.chain_id, **kw)


async def run_reconcile(worker: SettlementWorker) -> dict:
    """Reconcile on the worker's chain thread; the summary also goes to the status."""
    rep = await reconcile(worker.pool, worker.market_id, worker.chain, deployment_id=worker.deployment_id,
                          run=worker.run_on_chain)
    worker.last_reconcile = {"ok": rep.ok, "checked_at": rep.checked_at, "differences": rep.differences[:50]}
    worker._publish()
    return rep.as_dict()


def _jsonable(v: Any) -> Any:
    """eth-tester's answer as a node gives it: quantities and bytes in hex."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return hex(v)
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class ChainRpc:
    """The in-process chain over JSON-RPC (127.0.0.1 only): each request is run through
    eth-tester's provider on the worker's chain thread (one caller of py-evm at a time)."""

    def __init__(self, worker: SettlementWorker, host: str = "127.0.0.1", port: int = 0) -> None:
        self.worker, self.host, self.port = worker, host, port
        provider = worker.chain.w3.provider
        # eth-tester's own middleware: JSON-RPC params (hex quantities) in, Python values out
        self._request = combine_middleware(middleware=tuple(getattr(provider, "_middleware", ())),
                                           w3=worker.chain.w3, provider_request_fn=provider.make_request)
        self.runner: web.AppRunner | None = None
        self.url: str | None = None

    async def _one(self, req: dict) -> dict:
        chain = self.worker.chain
        method, params = req.get("method"), list(req.get("params") or [])
        if method in ("eth_call", "eth_estimateGas") and params and isinstance(params[0], dict) \
                and not params[0].get("from"):
            # eth-tester charges a call to its sender: read from the faucet account, as the worker does
            params[0] = dict(params[0], **{"from": chain.w3.eth.default_account})
        try:
            out = await self.worker.run_on_chain(self._request, method, params)
        except Exception as exc:  # noqa: BLE001 - an error answer, as a node gives
            return {"jsonrpc": "2.0", "id": req.get("id"), "error": {"code": -32000, "message": str(exc)[:500]}}
        return {"jsonrpc": "2.0", "id": req.get("id"), **_jsonable({k: v for k, v in out.items() if k != "jsonrpc"
                                                                    and k != "id"})}

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if isinstance(body, list):
            answer: Any = [await self._one(r) for r in body]
        else:
            answer = await self._one(body)
        return web.Response(text=json.dumps(answer), content_type="application/json")

    async def start(self) -> str:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class SettleProcess:
    """One market's settlement, run by ``voltbourse settle``."""

    def __init__(self, settings: Settings, dsn: str, payout_sources: Sequence[PayoutSource] = (), *,
                 chain: Chain | None = None, compact_threshold: int = AUTO_COMPACT_BLOCKS,
                 compact_check_s: float = COMPACT_CHECK_S, keep_blocks: int = DEFAULT_KEEP_BLOCKS) -> None:
        self.settings, self.dsn = settings, dsn
        # the in-process chain's store is compacted when it is opened, and while the process
        # runs: every compact_check_s it looks whether compact_threshold blocks could go, and
        # if so closes the chain between two batches, compacts it and opens it again
        self.compact_threshold, self.compact_check_s, self.keep_blocks = compact_threshold, compact_check_s, keep_blocks
        self.compactions = 0  # compactions while running (a store grown since the process started)
        self.market_id = settings.market_id
        self.payout_sources = payout_sources
        self._given_chain = chain
        self.worker: SettlementWorker | None = None
        self.rpc: ChainRpc | None = None
        self._status_pending = False
        self._wake_requests = asyncio.Event()
        self._quiesce = asyncio.Event()  # set: the requests' task ends after the request under way

    async def run(self, stop: asyncio.Event) -> int:
        lock_conn = await asyncpg.connect(self.dsn)
        try:
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_NAMESPACE,
                                            self.market_id):
                raise AlreadyRunning(f"another settlement process runs market {self.market_id!r} (it holds the "
                                     "market's settlement lock)")
            pool = await create_pool(self.dsn, min_size=1, max_size=4)
            try:
                while True:
                    rc = await self._run(pool, lock_conn, stop)
                    if rc != _REOPEN:
                        return rc
                    if stop.is_set():
                        return 0
            finally:
                await pool.close()
        finally:
            await lock_conn.close()

    async def _run(self, pool: asyncpg.Pool, listen: asyncpg.Connection, stop: asyncio.Event) -> int:
        """Open the chain, run the worker until ``stop``; returns 0, or _REOPEN when the chain's
        store grew enough to be compacted (the worker and the chain are closed by then)."""
        loop = asyncio.get_running_loop()
        directory = chain_data_path(self.settings) if self._given_chain is None else None
        self._quiesce = asyncio.Event()
        reopen = False
        if self._given_chain is None:
            compacted = await compact_chain_at_open(pool, self.settings, threshold=self.compact_threshold,
                                                    keep_blocks=self.keep_blocks)
            if compacted is not None and self.worker is not None:  # not the first open: a compaction while running
                self.compactions += 1
        chain: Chain = (self._given_chain if self._given_chain is not None
                        else await loop.run_in_executor(None, Chain.from_settings, self.settings))
        worker = self.worker = make_worker(pool, self.settings, chain, engine=InboxEngine(pool, self.market_id),
                                           publish=self._publish, payout_sources=self.payout_sources)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await worker.start()
            if chain.is_in_process:
                self.rpc = ChainRpc(worker, port=self.settings.settlement_rpc_port)
                await self.rpc.start()
            await self._write_status()
            await listen.add_listener(REQUEST_CHANNEL, self._on_request)
            log.info("settlement process %d: market %s, registry %s%s", os.getpid(), self.market_id,
                     chain.registry.address, f", chain served on {self.rpc.url}" if self.rpc else "")
            tasks = [asyncio.create_task(worker.run(), name="settlement-worker"),
                     asyncio.create_task(self._requests(pool), name="settlement-requests"),
                     asyncio.create_task(self._heartbeat(), name="settlement-heartbeat")]
            grown = None
            if directory is not None and chain.store is not None and not self.settings.chain_rpc_url:
                grown = asyncio.create_task(self._grown(directory, pool), name="settlement-compaction-check")
                tasks.append(grown)
            waiter = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for t in done:
                if t is not waiter and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if grown is not None and grown in done and not stop.is_set():
                log.info("settlement: a compaction of the chain store would drop %d blocks or more: closing the "
                         "chain once the worker's step ends, to compact it, then going on", self.compact_threshold)
                reopen = True
                return _REOPEN
            return 0
        finally:
            worker.stop()
            if reopen:  # no outside deadline: the worker's step ends its batches, a request under way ends
                self._quiesce.set()
                self._wake_requests.set()
            for t in tasks:
                if t.get_name() != "settlement-worker" and not (reopen and t.get_name() == "settlement-requests"):
                    t.cancel()
            if tasks:
                try:
                    await (tasks[0] if reopen else asyncio.wait_for(tasks[0], 10))
                except (TimeoutError, Exception):  # noqa: BLE001 - stopping either way
                    log.exception("settlement worker did not stop cleanly")
                await asyncio.gather(*tasks[1:], return_exceptions=True)
            if self.rpc is not None:
                await self.rpc.stop()
            await worker.shutdown()
            if self._given_chain is None:
                chain.close()

    async def _grown(self, directory: Any, pool: asyncpg.Pool) -> None:
        """Return once a compaction of the chain's store would drop ``compact_threshold``
        blocks (looked at every ``compact_check_s``, read-only, beside the open store, with
        the blocks the chain scan may still read kept, as the compaction keeps them)."""
        while True:
            await asyncio.sleep(self.compact_check_s)
            try:
                n, _ = await droppable_now(pool, self.market_id, directory, self.keep_blocks)
            except Exception:  # noqa: BLE001 - a look that failed: the next one may not
                log.warning("settlement: could not look at the chain store's size", exc_info=True)
                continue
            if n is not None and n >= self.compact_threshold:
                return

    # ------------------------------------------------------------------ status
    def _publish(self, _status: dict) -> None:
        if not self._status_pending:  # coalesced: one write in flight at a time
            self._status_pending = True
            asyncio.get_running_loop().create_task(self._write_status())

    async def _write_status(self) -> None:
        self._status_pending = False
        w = self.worker
        if w is None:
            return
        try:
            status = await w.status()
            await w.pool.execute(
                "INSERT INTO settlement_status (market_id, status, rpc_url, pid, updated_at) VALUES ($1, $2, $3, $4, "
                "now()) ON CONFLICT (market_id) DO UPDATE SET status = $2, rpc_url = $3, pid = $4, updated_at = now()",
                self.market_id, status, self.rpc.url if self.rpc else None, os.getpid())
            await w.pool.execute("SELECT pg_notify($1, $2)", STATUS_CHANNEL, self.market_id)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("settlement: status not written: %s", exc)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self._write_status()

    # ------------------------------------------------------------------ operator requests
    def _on_request(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload == self.market_id:
            self._wake_requests.set()

    async def _requests(self, pool: asyncpg.Pool) -> None:
        # a request found running was interrupted by a crash: never run twice (a credit mints)
        await pool.execute(
            "UPDATE settlement_requests SET state = 'failed', done_at = now(), result = $2 "
            "WHERE market_id = $1 AND state = 'running'", self.market_id,
            {"error": "interrupted: the settlement process stopped while running it; check before asking again"})
        while not self._quiesce.is_set():
            self._wake_requests.clear()
            rows = await pool.fetch("SELECT request_id, kind, args FROM settlement_requests WHERE market_id = $1 "
                                    "AND state = 'pending' ORDER BY request_id", self.market_id)
            for r in rows:
                if self._quiesce.is_set():
                    return
                await pool.execute("UPDATE settlement_requests SET state = 'running' WHERE market_id = $1 "
                                   "AND request_id = $2", self.market_id, r["request_id"])
                state, result = "done", None
                try:
                    result = await self._execute(r["kind"], r["args"])
                except Exception as exc:  # noqa: BLE001 - the requester gets the error
                    log.warning("settlement: request %d (%s) failed: %s", r["request_id"], r["kind"], exc)
                    state, result = "failed", {"error": str(exc)[:500]}
                await pool.execute("UPDATE settlement_requests SET state = $3, result = $4, done_at = now() "
                                   "WHERE market_id = $1 AND request_id = $2", self.market_id, r["request_id"],
                                   state, result)
                await pool.execute("SELECT pg_notify($1, $2)", REQUEST_CHANNEL + "_done", self.market_id)
            try:
                async with asyncio.timeout(1.0):
                    await self._wake_requests.wait()
            except TimeoutError:
                pass

    async def _execute(self, kind: str, args: dict) -> dict:
        w = self.worker
        assert w is not None
        if kind == "credit":
            await w.credit_member(args["member"], int(args["amount"]))
            return {"ok": True}
        if kind == "reconcile":
            return await run_reconcile(w)
        raise ValueError(f"unknown request kind {kind!r}")


# ---------------------------------------------------------------------- the settle command
def child_settings(settings: Settings, dsn: str) -> str:
    """The settings of a child settlement process, as JSON (secrets included: the child's
    environment is the parent's)."""
    data = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        v = getattr(settings, name)
        if isinstance(v, SecretStr):
            data[name] = v.get_secret_value()
    data["database_url"] = dsn
    return json.dumps(data)


def settle_settings() -> Settings:
    """The settle command's settings: its supervisor's when started by ``serve``, else the
    environment's and the config file's."""
    raw = os.environ.get(SETTINGS_ENV)
    if raw:
        return load_settings(**json.loads(raw))
    return load_settings()


async def run_settle(settings: Settings, dsn: str, payout_sources: Sequence[PayoutSource] = ()) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watchdog = None
    if os.environ.get(SETTINGS_ENV):  # a supervised child: it stops when its exchange is gone (even kill -9)
        watchdog = asyncio.create_task(_orphaned(os.getppid(), stop))
    try:
        return await SettleProcess(settings, dsn, payout_sources).run(stop)
    except AlreadyRunning as exc:
        log.critical("settlement: %s", exc)
        return 3
    finally:
        if watchdog is not None:
            watchdog.cancel()


async def _orphaned(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    log.warning("settlement: the exchange (pid %d) is gone; stopping", parent)
    stop.set()


# ---------------------------------------------------------------------- supervision (serve)
class Supervisor:
    """Runs ``voltbourse settle`` for a market as a child process: restarted with back-off
    (1 s doubling to 30 s; back to 1 s after a minute up) when it exits, stopped on :meth:`stop`."""

    def __init__(self, settings: Settings, dsn: str, *, min_backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        self.settings, self.dsn = settings, dsn
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def command(self) -> list[str]:
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        return [sys.executable, "-m", "exchange.tools.cli", "--log-level", str(level), "settle"]

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = dict(os.environ, **{SETTINGS_ENV: child_settings(self.settings, self.dsn)})
        return await asyncio.create_subprocess_exec(*self.command(), env=env, start_new_session=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"settle-supervisor-{self.settings.market_id}")

    async def _run(self) -> None:
        backoff = self.min_backoff
        while not self._stopping:
            started = time.monotonic()
            try:
                self.proc = await self._spawn()
            except OSError as exc:
                log.error("settlement: cannot start `voltbourse settle`: %s", exc)
            else:
                log.info("settlement: process %d started for market %s", self.proc.pid, self.settings.market_id)
                code = await self.proc.wait()
                if self._stopping:
                    return
                self.restarts += 1
                if time.monotonic() - started > 60:
                    backoff = self.min_backoff
                log.error("settlement: process %d of market %s exited with %s; restarting in %.0f s",
                          self.proc.pid, self.settings.market_id, code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff, backoff * 2)

    async def stop(self, timeout: float = 20.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.error("settlement: process %d did not stop in %.0f s; killed", proc.pid, timeout)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
