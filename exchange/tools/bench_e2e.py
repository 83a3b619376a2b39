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

With ``--readers N`` (read load): the ``trades`` table is first seeded with
``seed_trades`` historic trades (100 000 by default, COPY, spread over the reader
members and the traders), then the same order load runs three times in the same
server: alone, while N more sessions (in a process of their own) ask for their
``positions`` and ``trades`` in turn, each with one request in flight and
``reader_pause_s`` between answers (``ack_p99_ms``, ``orders_per_s``, ``reads``,
``reads_per_s``, ``read_p50_ms``, ``read_p99_ms``), and alone again. The market grows
over the runs, so ``ack_p99_ms_no_readers`` is the mean of the runs before and after
(each also given: ``ack_p99_ms_no_readers_before`` / ``_after``).

With settlement on (the default), the load starts once the settlement process ``serve``
started has reported itself running (``GET /api/operator/settlement``: ``process.alive``),
as in production, where it starts once: its start-up (the chain opened, web3 and py-evm
imported, several CPU-seconds) would otherwise share the two cores with the measured load;
``settlement_ready_s`` says how long that took after the server was ready.

With ``--rate R`` the order load is paced at R requests/s in total (spread over the
sessions) instead of running as fast as the answers come: latency at a given load, the
way a member experiences it, rather than queueing at saturation. The read-load mode
should be run paced below the server's capacity (what reads must not do is slow an
order flow the exchange can carry; at saturation any extra work shows as queueing).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from eth_account import Account

from exchange.protocol import siwe
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


async def _wait_settlement(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen,
                           timeout: float = 120) -> float | None:
    """Seconds until the settlement process reports itself running; None when settlement
    runs in no process of its own (off, or inline)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        async with http.get(f"{base}/api/operator/settlement", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            if r.status == 404:
                return None  # settlement off: no such route
            body = await r.json() if r.status == 200 else {}
        process = body.get("process") if isinstance(body, dict) else None
        if r.status == 200 and process is None:
            return None  # inline: the worker started with the server
        if process and process.get("alive") and process.get("pid"):
            return round(time.monotonic() - t0, 2)
        await asyncio.sleep(0.2)
    raise RuntimeError("the settlement process did not report itself running in time")


async def _session(http, url, key, products, n_orders, window, seed, lat, counts, rate: float = 0.0) -> None:
    """One trading session: ``n_orders`` requests, at most ``window`` in flight; paced at
    ``rate`` requests/s when it is > 0 (else as fast as the answers come)."""
    acct = Account.from_key(key)
    rng = random.Random(seed)
    async with http.ws_connect(url, max_msg_size=0) as ws:
        await _login(ws, acct)
        sent: dict[int, int] = {}
        mine: list[int] = []
        next_id = 1
        done = 0
        slots = asyncio.Semaphore(window)
        finished = asyncio.Event()

        async def reader() -> None:
            nonlocal done
            async for msg in ws:
                m = orjson.loads(msg.data)  # frames decoded and encoded as the SDK does (clients/sdk/wire.py)
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
        loop = asyncio.get_running_loop()
        start = loop.time() + rng.random() / rate if rate else 0.0  # sessions out of phase
        for k in range(n_orders):
            if rate:
                wait = start + k / rate - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
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
            await ws.send_str(orjson.dumps(msg).decode())
        await asyncio.wait_for(finished.wait(), 120)
        rd.cancel()


PROTOCOL_ERRORS = {"MALFORMED_JSON", "INVALID_MESSAGE", "UNKNOWN_TYPE", "RATE_LIMITED", "BUSY", "UNAVAILABLE",
                   "NOT_AUTHENTICATED", "BAD_SIGNATURE"}


def _keys(seed: int, n: int, offset: int = 0) -> list:
    return [Account.from_key(random.Random(seed * 1000 + offset + i).randbytes(32)) for i in range(n)]


async def _register(base: str, keys: list) -> list[str]:
    """Register ``keys`` as members; the open products."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for k in keys:
            async with http.post(f"{base}/api/operator/members", json={
                    "address": k.address, "role": "prosumer", "export_capacity_w": 10**9,
                    "retail_tariff_ticks": 30000, "feed_in_tariff_ticks": 8000, "collateral": 10**17}) as r:
                if r.status not in (200, 201, 409):
                    raise RuntimeError(f"registering a member failed: {r.status} {await r.text()}")
        async with http.get(f"{base}/api/products") as r:
            products = [p["product_id"] for p in await r.json() if p["state"] == "open"][:24]
    if not products:
        raise RuntimeError("no open products")
    return products


async def _login(ws: aiohttp.ClientWebSocketResponse, acct) -> None:
    """Sign in with Ethereum (EIP-4361) from the hello's offer, as the SDK does."""
    hello = await ws.receive_json()
    text = siwe.from_offer(hello["siwe"], acct.address).text()
    await ws.send_json({"type": "login", "id": 0, "message": text, "signature": sign_login(text, acct.key)})
    while True:
        m = await ws.receive_json()
        if m.get("id") == 0:
            if m["type"] != "response":
                raise RuntimeError(f"login failed: {m}")
            return


async def _seed_trades(dsn: str, market_id: str, members: list[str], products: list[str], n: int, seed: int) -> None:
    """COPY ``n`` historic trades between ``members`` in past ``products`` into the trades
    projection (trade ids and seqs below 0 cannot collide with the engine's, and settlement
    never batches a trade id below 1)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    rows = []
    for i in range(n):
        buyer, seller = rng.sample(members, 2)
        rows.append((market_id, -1 - i, -1 - i, rng.choice(products), now, buyer, seller,
                     -1 - 2 * i, -2 - 2 * i, rng.randrange(1, 50) * 100, 8000 + rng.randrange(-1500, 1500),
                     now))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table("trades", records=rows, columns=[
            "market_id", "trade_id", "seq", "product_id", "delivery_start", "buyer", "seller", "buy_order_id",
            "sell_order_id", "energy_wh", "price_ticks", "ts"])
        await conn.execute("ANALYZE trades")
    finally:
        await conn.close()


async def _reader(http: aiohttp.ClientSession, url: str, acct, stop: asyncio.Event, pause: float,
                  lat: list[int]) -> None:
    """One member reading its positions and trades in turn, one request in flight."""
    async with http.ws_connect(url, max_msg_size=0) as ws:
        await _login(ws, acct)
        i = 0
        while not stop.is_set():
            i += 1
            msg = {"type": "positions", "id": i} if i % 2 else {"type": "trades", "id": i, "limit": 100}
            t0 = time.perf_counter_ns()
            await ws.send_str(orjson.dumps(msg).decode())
            while True:
                m = orjson.loads((await ws.receive()).data)
                if m.get("id") == i:
                    break
            lat.append(time.perf_counter_ns() - t0)
            if m["type"] != "response":
                raise RuntimeError(f"read failed: {m}")
            await asyncio.sleep(pause)


def _pct(vals: list[int], q: float) -> float:
    return round(vals[min(len(vals) - 1, int(len(vals) * q))] / 1e6, 2) if vals else 0.0


async def _readers(url: str, seed: int, readers: int, pause: float, stop: Any, started: Any) -> tuple[list[int], float]:
    keys = _keys(seed, readers, offset=500)
    done = asyncio.Event()
    lat: list[int] = []
    loop = asyncio.get_running_loop()
    loop.run_in_executor(None, lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)))
    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(_reader(http, url, k, done, pause, lat)) for k in keys]
        await asyncio.sleep(1.0)  # logged in and reading
        del lat[:]  # count from the start of the measurement
        t = time.perf_counter()
        started.set()
        await asyncio.gather(*tasks)
    return lat, time.perf_counter() - t


def _reader_process(url: str, seed: int, readers: int, pause: float, stop: Any, started: Any, out: Any) -> None:
    """The readers in a process of their own: their answers (which can be large) are parsed
    there, so the order load generator measures acknowledgements without their cost."""
    out.put(run_async(_readers(url, seed, readers, pause, stop, started)))


async def _read_load(base: str, connections: int, orders: int, window: int, seed: int, readers: int,
                     seed_trades: int, pause: float, rate: float) -> dict:
    traders, reader_keys = _keys(seed, connections), _keys(seed, readers, offset=500)
    await _register(base, traders + reader_keys)
    alone = await _load(base, connections, orders, window, seed, rate)
    url = base.replace("http", "ws", 1) + "/ws"
    ctx = multiprocessing.get_context("spawn")
    stop, started, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_reader_process, args=(url, seed, readers, pause, stop, started, out), daemon=True)
    proc.start()
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, started.wait, 60):
        proc.kill()
        raise RuntimeError("the reader process did not start")
    loaded = await _load(base, connections, orders, window, seed + 7, rate)
    stop.set()  # the readers time themselves
    read_lat, read_s = await loop.run_in_executor(None, out.get, True, 60)
    proc.join(10)
    # the same load alone once more: the market grew during the runs (books, journal), so the
    # baseline is the mean of the runs before and after the one with readers
    after = await _load(base, connections, orders, window, seed + 13, rate)
    reads = len(read_lat)
    elapsed = read_s
    read_lat.sort()
    return {**loaded, "ack_p50_ms_no_readers": round((alone["ack_p50_ms"] + after["ack_p50_ms"]) / 2, 2),
            "ack_p99_ms_no_readers": round((alone["ack_p99_ms"] + after["ack_p99_ms"]) / 2, 2),
            "ack_p99_ms_no_readers_before": alone["ack_p99_ms"], "ack_p99_ms_no_readers_after": after["ack_p99_ms"],
            "orders_per_s_no_readers": round((alone["orders_per_s"] + after["orders_per_s"]) / 2),
            "readers": readers, "seed_trades": seed_trades,
            "order_rate": rate,
            "reads": reads, "reads_per_s": round(reads / elapsed, 1), "read_p50_ms": _pct(read_lat, 0.5),
            "read_p99_ms": _pct(read_lat, 0.99)}


async def _load(base: str, connections: int, orders: int, window: int, seed: int, rate: float = 0.0) -> dict:
    keys = _keys(seed, connections)
    products = await _register(base, keys)
    lat: list[int] = []
    counts = {"errors": 0, "rejected": 0, "error_codes": {}}
    per = orders // connections
    url = base.replace("http", "ws", 1) + "/ws"
    async with aiohttp.ClientSession() as http:
        t = time.perf_counter()
        await asyncio.gather(*(_session(http, url, k.key, products, per, window, seed + i, lat, counts,
                                        rate / connections)
                               for i, k in enumerate(keys)))
        elapsed = time.perf_counter() - t
    lat.sort()

    return {"orders": len(lat), "seconds": round(elapsed, 3), "orders_per_s": round(len(lat) / elapsed),
            "ack_p50_ms": _pct(lat, 0.5), "ack_p99_ms": _pct(lat, 0.99), "errors": counts["errors"],
            "error_codes": counts["error_codes"], "rejected": counts["rejected"], "connections": connections,
            "window": window}


def bench_e2e(orders: int = 40_000, seed: int = 1, connections: int = 40, window: int = 4, readers: int = 0,
              seed_trades: int = 100_000, reader_pause_s: float = 0.05, rate: float = 0.0) -> dict:

    base_dir = load_settings().data_dir
    base_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir=base_dir))
    port = _free_port()
    log_path = tmp / "server.log"
    try:
        with EmbeddedPostgres(tmp / "pg") as pg:
            upgrade(pg.dsn)
            if readers:  # history before the server starts: it loads what it finds (positions)
                members = [k.address for k in _keys(seed, connections) + _keys(seed, readers, offset=500)]
                history = [f"2026{m:02d}{d:02d}T{h:02d}00Z-60" for m in (9, 10) for d in range(1, 29) for h in range(24)]
                run_async(_seed_trades(pg.dsn, "bench-e2e", members, history, seed_trades, seed))
            env = dict(os.environ, VOLTBOURSE_DATABASE_URL=pg.dsn, VOLTBOURSE_PORT=str(port),
                       VOLTBOURSE_HOST="127.0.0.1", VOLTBOURSE_OPERATOR_TOKEN=TOKEN,
                       VOLTBOURSE_MARKET_ID="bench-e2e", VOLTBOURSE_GATE="rolling",
                       # the chain on disk as deployed, in this run's scratch directory
                       VOLTBOURSE_CHAIN_DATA_DIR=str(tmp / "chain"),
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
                        settled = await _wait_settlement(http, base, proc)
                    if readers:
                        out = await _read_load(base, connections, orders, window, seed, readers,
                                               seed_trades, reader_pause_s, rate)
                    else:
                        out = await _load(base, connections, orders, window, seed, rate)
                    return {**out, "settlement_ready_s": settled}

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
