"""The exchange's side of a settlement process (``settlement_process`` ``child`` or ``external``):
what the subsystem's routes, WebSocket messages, metrics and operator feed need, without the
worker in this process.

- **status** (``GET /api/operator/settlement``, the feed's ``settlement`` topic, metrics): the
  row the settlement process writes to ``settlement_status`` (kept here as it changes: LISTEN
  ``settlement_status``), with ``process`` (its pid, when it last wrote, whether it is alive: no
  write for ``STALE_S`` raises the ``process`` alert);
- **operator actions** (credit a member from the member registry, reconcile): rows of
  ``settlement_requests`` that the settlement process executes; the caller waits for the result;
- **chain reads** (proofs' on-chain root, a member's collateral): a chain client of its own,
  connected to ``chain_rpc_url``, or to the JSON-RPC address the settlement process serves its
  in-process chain on (``settlement_status.rpc_url``, followed when it changes), on a thread of
  its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import asyncpg
from eth_account import Account
from web3 import HTTPProvider

from exchange.core.units import iso_dt
from exchange.runtime.config import Settings
from settlement.chain import Chain, ChainError
from settlement.process import REQUEST_CHANNEL, STATUS_CHANNEL

log = logging.getLogger(__name__)

STALE_S = 30.0  # no status written for this long: the settlement process is taken as down
REQUEST_TIMEOUT_S = {"credit": 120.0, "reconcile": 300.0}


class SettlementUnavailable(RuntimeError):
    """The settlement process did not answer (not running, or busy past the timeout)."""


class SettlementView:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, dsn: str | None, *, publish=None) -> None:
        self.pool, self.settings, self.dsn = pool, settings, dsn
        self.market_id = settings.market_id
        self.publish = publish
        self.row: dict[str, Any] | None = None  # the last settlement_status row
        self.chain: Chain | None = None
        self.deployment_id: int | None = None
        self._url: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain-reader")
        self._listener: asyncpg.Connection | None = None
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.refresh()
        if self.dsn is not None:
            try:
                conn = await asyncpg.connect(self.dsn)
                await conn.add_listener(STATUS_CHANNEL, self._on_status)
                await conn.add_listener(REQUEST_CHANNEL + "_done", self._on_done)
                self._listener = conn
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("settlement: LISTEN failed (%s); status polled", exc)
        self._task = asyncio.create_task(self._poll(), name=f"settlement-view-{self.market_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener is not None:
            await self._listener.close()
        self._executor.shutdown(wait=False)

    def _on_status(self, _c: object, _p: int, _ch: str, payload: str) -> None:
        if payload == self.market_id:
            asyncio.get_running_loop().create_task(self._refresh_and_publish())

    def _on_done(self, _c: object, _p: int, _ch: str, payload: str) -> None:
        if payload == self.market_id:
            self._done.set()

    async def _refresh_and_publish(self) -> None:
        try:
            await self.refresh()
            if self.publish is not None:
                self.publish(await self.status())
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("settlement: status not read: %s", exc)

    async def _poll(self) -> None:
        while True:  # the heartbeat's rows, when a notification was missed; staleness shows here too
            await asyncio.sleep(STALE_S / 3)
            await self._refresh_and_publish()

    async def refresh(self) -> None:
        row = await self.pool.fetchrow("SELECT status, rpc_url, pid, updated_at FROM settlement_status "
                                       "WHERE market_id = $1", self.market_id)
        self.row = dict(row) if row is not None else None

    # ------------------------------------------------------------------ status and metrics
    @property
    def alive(self) -> bool:
        return self.row is not None and (datetime.now(UTC) - self.row["updated_at"]).total_seconds() < STALE_S

    def _process_alert(self) -> str | None:
        if self.alive:
            return None
        when = iso_dt(self.row["updated_at"]) if self.row else "never"
        return (f"the settlement process is not running (last status {when}): trades are not being anchored; "
                f"`voltbourse serve` restarts its child, or run `voltbourse settle` (docs/settlement.md)")

    async def status(self) -> dict[str, Any]:
        st = dict(self.row["status"]) if self.row else {"batches": [], "alerts": {}, "alert": None}
        alert = self._process_alert()
        if alert is not None:
            st["alerts"] = {"process": alert, **st.get("alerts", {})}
            st["alert"] = "; ".join(v for v in st["alerts"].values())
        st["process"] = {"pid": self.row["pid"] if self.row else None, "alive": self.alive,
                         "updated_at": iso_dt(self.row["updated_at"]) if self.row else None,
                         "rpc_url": self.row["rpc_url"] if self.row else None}
        return st

    def metrics(self) -> dict[str, Any]:
        m = dict((self.row or {}).get("status", {}).get("metrics") or {})
        m.setdefault("stats", {})
        alerts = dict(m.get("alerts") or {})
        alert = self._process_alert()
        if alert is not None:
            alerts["process"] = alert
        m["alerts"] = alerts
        return m

    # ------------------------------------------------------------------ operator requests
    async def request(self, kind: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = await self.pool.fetchval(
            "INSERT INTO settlement_requests (market_id, kind, args) VALUES ($1, $2, $3) RETURNING request_id",
            self.market_id, kind, args or {})
        await self.pool.execute("SELECT pg_notify($1, $2)", REQUEST_CHANNEL, self.market_id)
        end = time.monotonic() + REQUEST_TIMEOUT_S.get(kind, 60.0)
        while True:
            self._done.clear()
            row = await self.pool.fetchrow("SELECT state, result FROM settlement_requests WHERE market_id = $1 "
                                           "AND request_id = $2", self.market_id, rid)
            if row["state"] == "done":
                return row["result"] or {}
            if row["state"] == "failed":
                raise SettlementUnavailable(f"settlement {kind} failed: {(row['result'] or {}).get('error')}")
            left = end - time.monotonic()
            if left <= 0:
                raise SettlementUnavailable(
                    f"the settlement process did not {kind} within {REQUEST_TIMEOUT_S.get(kind, 60.0):g} s "
                    f"(request {rid} stays queued{'' if self.alive else '; the process is not running'})")
            try:
                async with asyncio.timeout(min(left, 0.5)):
                    await self._done.wait()
            except TimeoutError:
                pass

    async def credit_member(self, member: str, amount: int) -> None:
        """The member registry's funder: credited on chain by the settlement process, which
        then gives the engine the member's collateral (through the engine inbox)."""
        await self.request("credit", {"member": member, "amount": str(amount)})

    async def reconcile(self) -> dict[str, Any]:
        return await self.request("reconcile")

    # ------------------------------------------------------------------ chain reads
    async def connect(self) -> Chain:
        """The chain client (made, or pointed at the settlement process's current address)."""
        url = self.settings.chain_rpc_url
        if not url:
            await self.refresh()
            url = self.row["rpc_url"] if self.row else None
        dep = await self.pool.fetchrow("SELECT deployment_id, token_address, registry_address FROM "
                                       "settlement_deployments WHERE market_id = $1 AND active", self.market_id)
        if not url or dep is None:
            raise ChainError("the settlement process has not connected to the chain yet")
        loop = asyncio.get_running_loop()
        if self.chain is None:
            key = self.settings.chain_operator_key
            operator = Account.from_key(key.get_secret_value()) if key else Account.create()  # reads only

            def make() -> Chain:
                return Chain.rpc(url, operator.key.hex())
            self.chain = await loop.run_in_executor(self._executor, make)
        elif url != self._url:
            self.chain.w3.provider = HTTPProvider(url, request_kwargs={"timeout": 10})
        self._url = url
        if self.deployment_id != dep["deployment_id"] or not self.chain.attached:
            self.chain.attach(dep["token_address"], dep["registry_address"])
            self.deployment_id = dep["deployment_id"]
        return self.chain

    async def run_on_chain(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
