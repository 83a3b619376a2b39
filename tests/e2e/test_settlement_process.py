"""Settlement in its own process (`voltbourse settle`, a child `voltbourse serve` supervises):
the settlement process is killed with SIGKILL while members keep trading; the exchange goes on
acknowledging every order meanwhile, its supervisor starts the settlement process again, which
catches up: every trade anchored, reconcile OK, each member's collateral in the engine equal to
the chain's, every proof verifying on the chain (read through the JSON-RPC address the
settlement process serves its in-process chain on).

Real processes: the server, its settlement child, PostgreSQL, peers over WebSockets."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from e2e.test_settlement_restart import DEPOSIT, TRADERS, Server, _collateral, _proofs, _settled, _trade
from eth_account import Account

from settlement.chain import Chain
from settlement.proofs import verify_proof

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def _status(server: Server, http: aiohttp.ClientSession) -> dict:
    return await server.get(http, "/api/operator/settlement")


async def _process(server: Server, http: aiohttp.ClientSession, *, not_pid: int | None = None,
                   timeout: float = 60) -> dict:
    """The settlement process's entry of the status once it runs (another one than ``not_pid``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = (await _status(server, http))["process"]
        if p["alive"] and p["pid"] and p["pid"] != not_pid and p["rpc_url"]:
            return p
        await asyncio.sleep(0.1)
    raise AssertionError(f"no settlement process: {p}\n{server.log()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_settlement_process_killed_while_trading_catches_up(pool, pg_dsn, tmp_path):
    server = Server(pg_dsn, tmp_path, "settle-proc", VOLTBOURSE_SETTLEMENT_PROCESS="child")
    async with aiohttp.ClientSession() as http:
        try:
            await server.start(http)
            first = await _process(server, http)
            assert first["pid"] != server.proc.pid  # settlement is not in the server's process
            for k in TRADERS:  # the operator's on-ramp: a request the settlement process executes
                await server.post(http, "/api/operator/members", {
                    "address": k.address, "role": "prosumer", "export_capacity_w": 10**8,
                    "retail_tariff_ticks": 30_000, "feed_in_tariff_ticks": 8_000, "collateral": DEPOSIT})
            # the credit reached the engine (through the engine inbox) before the answer
            assert set((await _collateral(server, http)).values()) == {DEPOSIT}

            stop, done = asyncio.Event(), []
            trading = asyncio.create_task(_trade(server, http, stop, done))
            await asyncio.sleep(1.5)
            os.kill(first["pid"], signal.SIGKILL)  # the settlement process dies in the middle of its work
            killed_at, at_kill = time.monotonic(), len(done)
            await asyncio.sleep(3)  # the exchange trades on without it
            assert len(done) - at_kill > 20, "the exchange stopped acknowledging orders"
            assert not _alive(first["pid"])
            again = await _process(server, http, not_pid=first["pid"])  # restarted by serve's supervisor
            assert time.monotonic() - killed_at < 30
            await asyncio.sleep(1)
            stop.set()
            assert await asyncio.wait_for(trading, 30) is None  # every order was acknowledged, all along

            await _settled(server, http, pool)
            rep = await server.post(http, "/api/operator/settlement/reconcile")
            assert rep["ok"] and rep["pending_trades"] == 0 and rep["anchored"] == rep["batches"] > 0, rep
            engine = await _collateral(server, http)
            assert sum(engine.values()) == DEPOSIT * len(TRADERS)
            proofs = await _proofs(server, http, pool)
            assert proofs and all(p["chain_root"] == p["root"] for p in proofs)
            # the chain, read where the settlement process serves it: the engine's collateral is the
            # chain's, and every proof verifies there (verifyTradeFields and the stored root)
            chain = await asyncio.get_running_loop().run_in_executor(
                None, Chain.rpc, again["rpc_url"], Account.create().key.hex())
            chain.attach(*(await pool.fetchrow("SELECT token_address, registry_address FROM settlement_deployments "
                                               "WHERE market_id = $1 AND active", server.market)))

            def on_chain() -> tuple[dict, bool]:
                return ({a: chain.collateral(a) for a in engine},
                        all(verify_proof(p, chain.registry) for p in proofs))
            collateral, verified = await asyncio.get_running_loop().run_in_executor(None, on_chain)
            assert collateral == engine
            assert verified
            # nothing was applied twice: each inbox row once, in order
            assert await pool.fetchval("SELECT count(*) FROM engine_inbox WHERE market_id = $1 "
                                       "AND applied_at IS NULL", server.market) == 0
            server.stop(signal.SIGTERM)
            assert not _alive(again["pid"])  # stopped with the server
        finally:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()
