"""``voltbourse bench e2e``: orders/s and ack latency through the whole service.

Starts the embedded PostgreSQL in a throw-away directory and ``voltbourse
serve`` as a separate process (its own event loop and CPU, like production),
registers members over the operator REST API, opens ``connections``
authenticated WebSocket sessions and sends a seeded order mix (about 55 %
resting limits, 25 % crossing, 20 % cancels of the session's own orders),
keeping up to ``window`` requests in flight per session. Latency is from
sending a request to receiving its response, which the server sends only
after the journal commit. Prints ``orders_per_s``, ``ack_p50_ms``,
``ack_p99_ms``, ``errors`` (protocol/transport errors; engine rejections are
counted apart as ``rejected``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from eth_account import Account

from exchange.protocol.auth import sign_login
from exchange.runtime.config import load_settings
from exchange.runtime.db import EmbeddedPostgres, upgrade
from exchange.runtime.service import run_async

TOKEN = "bench-operator-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_ready(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            async with http.get(f"{base}/ready") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("server not ready in time")


async def _session(http, url, key, products, n_orders, window, seed, lat, counts) -> None:
    acct = Account.from_key(key)
    rng = random.Random(seed)
    async with http.ws_connect(url, max_msg_size=0) as ws:
        hello = await ws.receive_json()
        await ws.send_json({"type": "login", "id": 0, "address": acct.address,
                            "signature": sign_login(hello["challenge"], acct.key)})
        while True:
            m = await ws.receive_json()
            if m.get("id") == 0:
                if m["type"] != "response":
                    raise RuntimeError(f"login failed: {m}")
                break
        sent: dict[int, int] = {}
        mine: list[int] = []
        next_id = 1
        done = 0
        slots = asyncio.Semaphore(window)
        finished = asyncio.Event()

        async def reader() -> None:
            nonlocal done
            async for msg in ws:
                m = json.loads(msg.data)
                t = m["type"]
                if t == "response" or t == "error":
                    t0 = sent.pop(m["id"], None)
                    if t0 is None:
                        continue
                    lat.append(time.perf_counter_ns() - t0)
                    if t == "error":
                        code = m["code"]
                        counts["rejected" if code.isupper() and code not in PROTOCOL_ERRORS else "errors"] += 1
                        if code in PROTOCOL_ERRORS:
                            counts["error_codes"][code] = counts["error_codes"].get(code, 0) + 1
                    else:
                        r = m["result"]
                        if r.get("status") == "resting":
                            mine.append(r["order_id"])
                    slots.release()
                    done += 1
                    if done >= n_orders:
                        finished.set()
                        return

        rd = asyncio.create_task(reader())
        refs = {p: 8000 + rng.randrange(-1500, 1500) for p in products}
        for _ in range(n_orders):
            await slots.acquire()
            x = rng.random()
            if x < 0.2 and mine:
                msg = {"type": "cancel", "order_id": mine.pop(rng.randrange(len(mine)))}
            else:
                p = rng.choice(products)
                side = "buy" if rng.random() < 0.5 else "sell"
                off = rng.randrange(1, 1500)
                crossing = x >= 0.75
                price = refs[p] + (off if (side == "buy") == crossing else -off)
                msg = {"type": "place", "product_id": p, "side": side, "price": price,
                       "quantity": rng.randrange(1, 50) * 100, "tif": "ioc" if crossing and rng.random() < 0.25 else "gtc"}
            msg["id"] = next_id
            sent[next_id] = time.perf_counter_ns()
            next_id += 1
            await ws.send_str(json.dumps(msg))
        await asyncio.wait_for(finished.wait(), 120)
        rd.cancel()


PROTOCOL_ERRORS = {"MALFORMED_JSON", "INVALID_MESSAGE", "UNKNOWN_TYPE", "RATE_LIMITED", "BUSY", "UNAVAILABLE",
                   "NOT_AUTHENTICATED", "BAD_SIGNATURE"}


async def _load(base: str, connections: int, orders: int, window: int, seed: int) -> dict:
    keys = [Account.from_key(random.Random(seed * 1000 + i).randbytes(32)) for i in range(connections)]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for k in keys:
            async with http.post(f"{base}/api/operator/members", json={
                    "address": k.address, "role": "prosumer", "export_capacity_w": 10**9,
                    "retail_tariff_ticks": 30000, "feed_in_tariff_ticks": 8000, "collateral": 10**17}) as r:
                if r.status not in (200, 201):
                    raise RuntimeError(f"registering a member failed: {r.status} {await r.text()}")
        async with http.get(f"{base}/api/products") as r:
            products = [p["product_id"] for p in await r.json() if p["state"] == "open"][:24]
        if not products:
            raise RuntimeError("no open products")
    lat: list[int] = []
    counts = {"errors": 0, "rejected": 0, "error_codes": {}}
    per = orders // connections
    url = base.replace("http", "ws", 1) + "/ws"
    async with aiohttp.ClientSession() as http:
        t = time.perf_counter()
        await asyncio.gather(*(_session(http, url, k.key, products, per, window, seed + i, lat, counts)
                               for i, k in enumerate(keys)))
        elapsed = time.perf_counter() - t
    lat.sort()

    def pct(q):
        return round(lat[min(len(lat) - 1, int(len(lat) * q))] / 1e6, 2)

    return {"orders": len(lat), "seconds": round(elapsed, 3), "orders_per_s": round(len(lat) / elapsed),
            "ack_p50_ms": pct(0.5), "ack_p99_ms": pct(0.99), "errors": counts["errors"],
            "error_codes": counts["error_codes"], "rejected": counts["rejected"], "connections": connections,
            "window": window}


def bench_e2e(orders: int = 40_000, seed: int = 1, connections: int = 40, window: int = 4) -> dict:

    base_dir = load_settings().data_dir
    base_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=base_dir))
    port = _free_port()
    log_path = tmp / "server.log"
    try:
        with EmbeddedPostgres(tmp / "pg") as pg:
            upgrade(pg.dsn)
            env = dict(os.environ, VOLTBOURSE_DATABASE_URL=pg.dsn, VOLTBOURSE_PORT=str(port),
                       VOLTBOURSE_HOST="127.0.0.1", VOLTBOURSE_OPERATOR_TOKEN=TOKEN,
                       VOLTBOURSE_MARKET_ID="bench-e2e", VOLTBOURSE_GATE="rolling",
                       # a throughput measurement: the per-connection rate limit is not what is measured
                       VOLTBOURSE_WS_RATE_PER_S="1000000", VOLTBOURSE_WS_BURST="1000000")
            with open(log_path, "w") as log:
                proc = subprocess.Popen([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "serve"],
                                        env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                base = f"http://127.0.0.1:{port}"

                async def go() -> dict:
                    async with aiohttp.ClientSession() as http:
                        await _wait_ready(http, base, proc)
                    return await _load(base, connections, orders, window, seed)

                result = run_async(go())
            except BaseException:
                sys.stderr.write(log_path.read_text()[-4000:])
                raise
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
