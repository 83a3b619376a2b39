"""exchange.gateway.wsframes over a real loopback connection: an aiohttp server writes bursts
with FrameWriter, aiohttp's client parses them (an independent reader of RFC 6455). Sizes
across every length encoding, non-ASCII text, bursts split in parts, a client that
negotiated compression (the per-message path), and close frames after a burst."""

from __future__ import annotations

import random

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from exchange.gateway import wsframes
from exchange.gateway.wsframes import FrameWriter

pytestmark = pytest.mark.integration

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 200_000]


def _messages(seed: int) -> list[str]:
    rng = random.Random(seed)
    out = [("é€" * n)[:n] if i % 2 else "x" * n for i, n in enumerate(SIZES)]
    out += ["".join(rng.choice("ab€ö\n\"{}") for _ in range(rng.randrange(300))) for _ in range(200)]
    return out


@pytest.fixture
async def server():
    """A server that, on each text frame "burst SEED", writes _messages(SEED) as one burst,
    then "end"; on "close", a burst and then a close frame with code 4001."""
    compress_seen: list[int] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        compress_seen.append(int(ws.compress))
        frames = FrameWriter(ws, request.transport)
        async for m in ws:
            cmd, _, arg = m.data.partition(" ")
            if cmd == "burst":
                await frames.send(_messages(int(arg)) + ["end"])
            elif cmd == "close":
                await frames.send(["last words"])
                await ws.close(code=4001, message=b"bye")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/ws", compress_seen
    finally:
        await runner.cleanup()


async def _burst(ws, seed: int) -> list[str]:
    await ws.send_str(f"burst {seed}")
    got: list[str] = []
    while True:
        m = await ws.receive(timeout=10)
        assert m.type == WSMsgType.TEXT, m
        if m.data == "end":
            return got
        got.append(m.data)


async def test_every_length_encoding_arrives_intact_and_in_order(server):
    url, compress_seen = server
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        for seed in range(3):
            assert await _burst(ws, seed) == _messages(seed)
    assert compress_seen == [0]


async def test_a_burst_larger_than_one_write_goes_out_in_parts(server, monkeypatch):
    monkeypatch.setattr(wsframes, "MAX_WRITE_BYTES", 4096)
    url, _ = server
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        assert await _burst(ws, 7) == _messages(7)


async def test_a_compressing_peer_gets_the_same_messages(server, monkeypatch):
    url, compress_seen = server
    sent: list[str] = []
    send_str = web.WebSocketResponse.send_str

    async def spy(self, data, compress=None):
        sent.append(data)
        await send_str(self, data, compress)

    monkeypatch.setattr(web.WebSocketResponse, "send_str", spy)
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0, compress=15) as ws:
        assert await _burst(ws, 1) == _messages(1)
    assert compress_seen == [15], "permessage-deflate negotiated"
    assert sent == _messages(1) + ["end"], "aiohttp's per-message path, which compresses"


async def test_an_uncompressed_peer_gets_one_write_per_burst(server, monkeypatch):
    url, _ = server
    sent: list[str] = []
    monkeypatch.setattr(web.WebSocketResponse, "send_str", lambda self, data, compress=None: sent.append(data))
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        assert await _burst(ws, 2) == _messages(2)
    assert sent == []


async def test_the_close_frame_follows_the_burst(server):
    url, _ = server
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_str("close")
        m = await ws.receive(timeout=10)
        assert (m.type, m.data) == (WSMsgType.TEXT, "last words")
        m = await ws.receive(timeout=10)
        assert m.type == WSMsgType.CLOSE and m.data == 4001
