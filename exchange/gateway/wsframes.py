"""A burst of WebSocket text messages to one peer, written as one buffer.

When a journal group commits, a trading session typically gets several messages at once
(the answers to its requests in the group, their order-status updates and fills).
Written one ``send_str`` each, every message is its own ``send()`` system call and its own
TCP segment on both ends. :class:`FrameWriter` frames them as RFC 6455 text frames
and hands the transport all of them in a single write. Measured in docs/benchmarks.md
(`bench e2e`, "One write per burst of a session's messages").

A connection that negotiated permessage-deflate (browsers ask for it) keeps the
per-message path of aiohttp, which compresses with the connection's shared context.
Control frames (ping, pong, close) are aiohttp's and never interleave with these writes:
each write is one synchronous call on the event loop.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

TEXT_FIN = 0x81  # FIN bit + opcode 1 (text); no RSV bits, no mask (server to client, RFC 6455 §5.1)
_LEN1 = struct.Struct("!BB").pack
_LEN2 = struct.Struct("!BBH").pack
_LEN3 = struct.Struct("!BBQ").pack
DRAIN_RECHECK_S = 1.0  # waiting for the peer to read: how often to look whether the transport is closing
DRAIN_POLL_S = 0.01  # without a drain to wait on (or one that returned early): how often to look again
MAX_WRITE_BYTES = 256 * 1024  # one write's size at most: a long queue goes out in parts, back-pressure between


def text_frame(payload: bytes) -> bytes:
    """One unmasked, final text frame carrying ``payload`` (already UTF-8)."""
    n = len(payload)
    if n < 126:
        return _LEN1(TEXT_FIN, n) + payload
    if n < 65536:
        return _LEN2(TEXT_FIN, 126, n) + payload
    return _LEN3(TEXT_FIN, 127, n) + payload


class FrameWriter:
    """Writes batches of text messages to one server-side WebSocket connection.

    ``transport`` is the request's (``web.Request.transport``) and ``drain`` the ``drain`` of
    the writer ``ws.prepare()`` returned (it waits until the transport resumes writing);
    without a transport, or when the connection compresses, each message goes through
    ``ws.send_str``.
    """

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None,
                 drain: Callable[[], Awaitable[None]] | None = None) -> None:
        self.ws = ws
        self.transport = transport
        self.drain = drain

    def abort(self) -> None:
        """Drop the connection at once, whatever is buffered (a peer that stopped reading)."""
        if self.transport is not None:
            self.transport.abort()

    async def send(self, messages: Sequence[str]) -> None:
        """Send ``messages`` in order. Raises ``ConnectionResetError`` once the connection is
        closing (as ``send_str`` does); waits while the peer does not read (the transport's
        buffer above its high-water mark), so a slow peer's messages stay queued behind it."""
        ws, transport = self.ws, self.transport
        if transport is None or ws.compress:
            for m in messages:
                await ws.send_str(m)
            return
        buf: list[bytes] = []
        size = 0
        for m in messages:
            frame = text_frame(m.encode())
            buf.append(frame)
            size += len(frame)
            if size >= MAX_WRITE_BYTES:
                await self._write(b"".join(buf))
                buf.clear()
                size = 0
        if buf:
            await self._write(b"".join(buf))

    async def _write(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.ws.closed or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)
        high = transport.get_write_buffer_limits()[1]
        while transport.get_write_buffer_size() > high:  # the peer is not reading: wait for it
            if transport.is_closing():  # a drain is not woken by close() while data is buffered
                raise ConnectionResetError("Cannot write to closing transport")
            if self.drain is not None:
                try:
                    await asyncio.wait_for(self.drain(), DRAIN_RECHECK_S)
                except TimeoutError:
                    continue
                if transport.get_write_buffer_size() <= high:
                    return
            await asyncio.sleep(DRAIN_POLL_S)
