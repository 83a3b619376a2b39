"""`voltbourse serve` with settlement on the default chain (the in-process EVM, kept on
disk under the data dir) stopped while members trade, with SIGTERM and with SIGKILL, and
started again: the same deployment is found, every trade reconciles, each member's
collateral is what it was plus exactly the trades since, proofs fetched before the stop
still verify on the chain afterwards, and trading goes on.

Real processes and parts: the server subprocess, PostgreSQL, peers over WebSockets, the
chain read from its directory by the test once the server is gone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest
from support.keys import AUTH, KEYS, OPERATOR_TOKEN
from support.wsclient import WSClient

from settlement.chain import Chain
from settlement.proofs import verify_proof
from settlement.worker import pending_trades

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MARKET = "restart"
TRADERS = KEYS[:4]
DEPOSIT = 10**13  # 100 000 EUR each


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `voltbourse serve` process after another on the same database, data dir and port."""

    def __init__(self, pg_dsn: str, data_dir: Path, market: str = MARKET, **env: str) -> None:
        self.data_dir = data_dir
        self.market = market
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, VOLTBOURSE_DATABASE_URL=pg_dsn, VOLTBOURSE_DATA_DIR=str(data_dir),
                        VOLTBOURSE_PORT=str(self.port), VOLTBOURSE_OPERATOR_TOKEN=OPERATOR_TOKEN,
                        VOLTBOURSE_MARKET_ID=market, VOLTBOURSE_GATE="rolling",
                        VOLTBOURSE_SETTLEMENT_ENABLED="true", VOLTBOURSE_SETTLEMENT_BATCH_SIZE="8",
                        VOLTBOURSE_SETTLEMENT_MAX_AGE_S="0.3", VOLTBOURSE_SETTLEMENT_POLL_S="0.05", **env)
        self.env.pop("VOLTBOURSE_CHAIN_DATA_DIR", None)  # the default: <data_dir>/chain/<market>
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def chain_dir(self) -> Path:
        return self.data_dir / "chain" / self.market

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.starts += 1
        log = open(self.data_dir / f"server-{self.starts}.log", "w")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen([sys.executable, "-m", "exchange.tools.cli", "serve"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.base + "/ready") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise AssertionError("server not ready: " + self.log())

    def stop(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(60)
        if sig == signal.SIGTERM:
            assert self.proc.returncode == 0, self.log()

    def log(self) -> str:
        return (self.data_dir / f"server-{self.starts}.log").read_text()[-4000:]

    async def get(self, http: aiohttp.ClientSession, path: str) -> dict:
        async with http.get(self.base + path, headers=AUTH) as r:
            assert r.status == 200, (path, r.status, await r.text())
            return await r.json()

    async def post(self, http: aiohttp.ClientSession, path: str, body: dict | None = None) -> dict:
        async with http.post(self.base + path, headers=AUTH, json=body or {}) as r:
            assert r.status in (200, 201), (path, r.status, await r.text())
            return await r.json()


async def _trade(server: Server, http: aiohttp.ClientSession, stop: asyncio.Event, done: list[int]) -> dict | None:
    """Pairs of crossing orders between the traders until ``stop`` or the server goes away;
    ``done`` counts the pairs both of whose orders were acknowledged. Returns the first
    answer that was not an acknowledgement (None: there was none)."""
    clients = []
    for k in TRADERS:
        c = await WSClient.connect(http, server.base.replace("http", "ws") + "/ws", k.key)
        assert (await c.login())["type"] == "response"
        clients.append(c)
    async with http.get(server.base + "/api/products") as r:
        products = [p["product_id"] for p in await r.json() if p["state"] == "open"]
    i = 0
    try:
        while not stop.is_set():
            seller, buyer = clients[i % 4], clients[(i + 1 + i // 4) % 4]
            if seller is buyer:
                buyer = clients[(i + 2) % 4]
            pid, price, qty = products[i % 3], 9_000 + 37 * (i % 50), 500 + 13 * (i % 40)
            for c, side in ((seller, "sell"), (buyer, "buy")):
                r = await c.request({"type": "place", "product_id": pid, "side": side, "price": price,
                                     "quantity": qty}, timeout=5)
                if r["type"] != "response":
                    return r
            done.append(i)
            i += 1
    except (aiohttp.ClientError, ConnectionError, TimeoutError, TypeError):
        pass  # the server went away under the peers (TypeError: a closed socket's frame is not JSON)
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                await c.ws.close()


async def _settled(server: Server, http: aiohttp.ClientSession, pool, timeout: float = 90) -> None:
    """Every trade in an anchored batch whose collateral the engine has applied."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = await pending_trades(pool, server.market) + await pool.fetchval(
            "SELECT count(*) FROM settlement_batches WHERE market_id = $1 "
            "AND (state <> 'anchored' OR NOT collateral_applied)", server.market)
        status = await server.get(http, "/api/operator/settlement")
        if left == 0 and status["pending_trades"] == 0 and not status["alert"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not settled in time: {status}")


async def _collateral(server: Server, http: aiohttp.ClientSession) -> dict[str, int]:
    return {k.address: (await server.get(http, f"/api/operator/members/{k.address}"))["account"]["collateral"]
            for k in TRADERS}


async def _moved_since(pool, trade_id: int, market: str = MARKET) -> dict[str, int]:
    """Each trader's collateral change from the trades after ``trade_id`` (buyer pays Wh x ticks)."""
    moved: dict[str, int] = defaultdict(int)
    for t in await pool.fetch("SELECT buyer, seller, energy_wh, price_ticks FROM trades WHERE market_id = $1 "
                              "AND trade_id > $2", market, trade_id):
        moved[t["buyer"]] -= t["energy_wh"] * t["price_ticks"]
        moved[t["seller"]] += t["energy_wh"] * t["price_ticks"]
    return moved


async def _proofs(server: Server, http: aiohttp.ClientSession, pool) -> list[dict]:
    ids = await pool.fetch("SELECT trade_id FROM trades WHERE market_id = $1 ORDER BY trade_id", server.market)
    return [await server.get(http, f"/api/operator/trades/{r['trade_id']}/proof") for r in ids]


async def _trade_for(server: Server, http: aiohttp.ClientSession, seconds: float) -> int:
    """Trade for ``seconds`` with the server up all along: every order acknowledged."""
    stop, done = asyncio.Event(), []
    task = asyncio.create_task(_trade(server, http, stop, done))
    await asyncio.sleep(seconds)
    stop.set()
    assert await task is None
    return len(done)


async def test_serve_stopped_and_killed_while_trading_keeps_its_chain(pool, pg_dsn, tmp_path):
    server = Server(pg_dsn, tmp_path)
    async with aiohttp.ClientSession() as http:
        try:
            await server.start(http)
            for k in TRADERS:  # credited on chain by the operator's on-ramp (depositFor)
                await server.post(http, "/api/operator/members", {
                    "address": k.address, "role": "prosumer", "export_capacity_w": 10**8,
                    "retail_tariff_ticks": 30_000, "feed_in_tariff_ticks": 8_000, "collateral": DEPOSIT})
            deadline = time.monotonic() + 30
            while set((await _collateral(server, http)).values()) != {DEPOSIT}:
                assert time.monotonic() < deadline, "deposits never reached the engine"
                await asyncio.sleep(0.1)
            registry = (await server.get(http, "/api/operator/settlement"))["registry"]
            all_proofs: list[dict] = []

            for sig in (signal.SIGTERM, signal.SIGKILL):
                # trade, let settlement catch up: the state to compare with after the restart
                assert await _trade_for(server, http, 2) > 10
                await _settled(server, http, pool)
                before = await _collateral(server, http)
                last_before = await pool.fetchval("SELECT max(trade_id) FROM trades WHERE market_id = $1", MARKET)
                proofs = await _proofs(server, http, pool)
                all_proofs += proofs
                rep = await server.post(http, "/api/operator/settlement/reconcile")
                assert rep["ok"] and rep["anchored"] > 0, rep
                # trade on, and stop the server in the middle of it
                stop, done = asyncio.Event(), []
                task = asyncio.create_task(_trade(server, http, stop, done))
                await asyncio.sleep(1.5)
                assert len(done) > 5
                server.stop(sig)
                stop.set()
                await asyncio.wait_for(task, 30)

                await server.start(http)
                status = await server.get(http, "/api/operator/settlement")
                assert status["registry"] == registry  # the same deployment, found on the reopened chain
                assert await pool.fetchval("SELECT count(*) FROM settlement_deployments WHERE market_id = $1",
                                           MARKET) == 1  # not deployed anew
                await _settled(server, http, pool)
                rep = await server.post(http, "/api/operator/settlement/reconcile")
                assert rep["ok"] and not rep.get("unverifiable"), rep
                assert rep["pending_trades"] == 0 and rep["anchored"] == rep["batches"]
                after = await _collateral(server, http)
                moved = await _moved_since(pool, last_before)
                assert after == {a: before[a] + moved[a] for a in before}, (sig, before, after, dict(moved))
                assert sum(after.values()) == DEPOSIT * len(TRADERS)
                for p in proofs:  # the proofs served before the stop are the same after it
                    again = await server.get(http, f"/api/operator/trades/{p['trade_id']}/proof")
                    assert (again["root"], again["registry"], again["block"]) == (p["root"], p["registry"], p["block"])

            # trading goes on after the restarts, and settles
            assert await _trade_for(server, http, 1) > 5
            await _settled(server, http, pool)
            final = await _collateral(server, http)
            all_proofs += await _proofs(server, http, pool)
            server.stop(signal.SIGTERM)
        finally:
            if server.proc is not None and server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait()

    # the chain itself, from its directory: every proof verifies on it (verifyTradeFields and
    # the stored root), and each member's collateral there is the engine's
    chain = Chain.in_process(data_dir=server.chain_dir)
    try:
        token = await pool.fetchval("SELECT token_address FROM settlement_deployments WHERE market_id = $1 "
                                    "AND active", MARKET)
        chain.attach(token, registry)
        assert all(verify_proof(p, chain.registry) for p in all_proofs)
        assert {a: chain.collateral(a) for a in final} == final
        batches = await pool.fetchval("SELECT count(*) FROM settlement_batches WHERE market_id = $1", MARKET)
        assert chain.registry.functions.batchCount().call() == batches
    finally:
        chain.close()
