"""The frames of exchange.gateway.wsframes against RFC 6455's own examples (§5.7) and the
length encodings at their boundaries; the writer's back-pressure with a transport whose
buffer the test controls (no socket: the loopback tests are in
tests/integration/test_wsframes_loopback.py)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exchange.gateway import wsframes
from exchange.gateway.wsframes import FrameWriter, text_frame

pytestmark = pytest.mark.unit


def _parse(data: bytes) -> list[bytes]:
    """An RFC 6455 §5.2 reader of unmasked, unfragmented frames: the payloads, in order."""
    out = []
    i = 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        assert b0 == 0x81, "FIN, no RSV, opcode text"
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        i += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, i)
            i += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, i)
            i += 8
        out.append(data[i:i + n])
        i += n
    assert i == len(data)
    return out


def test_rfc_6455_examples():
    assert text_frame(b"Hello") == bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    assert text_frame(b"x" * 256)[:4] == bytes([0x81, 0x7E, 0x01, 0x00])  # 16-bit length
    assert text_frame(b"x" * 65536)[:10] == bytes([0x81, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])  # 64-bit length


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_the_shortest_length_encoding_at_each_boundary(n):
    frame = text_frame(b"a" * n)
    header = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(frame) == header + n
    assert _parse(frame) == [b"a" * n]


@given(st.lists(st.text(max_size=300), max_size=20))
def test_frames_concatenated_parse_back_to_the_messages(messages):
    data = b"".join(text_frame(m.encode()) for m in messages)
    assert [p.decode() for p in _parse(data)] == messages


class _Transport:
    """What FrameWriter uses of an asyncio transport; the buffer drains when the test says so."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.buffered = 0
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.buffered += len(data)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.high // 4, self.high

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class _WS:
    compress = 0
    closed = False


async def test_one_write_per_burst():
    t = _Transport(high=1 << 20)
    await FrameWriter(_WS(), t).send(["a", "bb", "ccc"])
    assert len(t.written) == 1
    assert _parse(t.written[0]) == [b"a", b"bb", b"ccc"]


async def test_a_long_burst_goes_out_in_parts_in_order(monkeypatch):
    monkeypatch.setattr(wsframes, "MAX_WRITE_BYTES", 1000)
    t = _Transport(high=1 << 20)
    msgs = [str(i) * 90 for i in range(30)]
    await FrameWriter(_WS(), t).send(msgs)
    assert len(t.written) > 2
    assert all(len(w) < 1000 + max(map(len, msgs)) + 4 for w in t.written)  # a part stops at the first frame past it
    assert [p.decode() for w in t.written for p in _parse(w)] == msgs


async def test_a_peer_that_does_not_read_holds_the_writer(monkeypatch):
    monkeypatch.setattr(wsframes, "DRAIN_POLL_S", 0.001)
    t = _Transport(high=100)
    send = asyncio.create_task(FrameWriter(_WS(), t).send(["x" * 200]))
    for _ in range(20):
        await asyncio.sleep(0.002)
    assert not send.done(), "above the high-water mark the writer waits"
    t.buffered = 0  # the peer read
    await asyncio.wait_for(send, 1)


async def test_a_connection_closing_while_the_writer_waits_ends_the_wait(monkeypatch):
    monkeypatch.setattr(wsframes, "DRAIN_POLL_S", 0.001)
    t = _Transport(high=100)
    send = asyncio.create_task(FrameWriter(_WS(), t).send(["x" * 200]))
    await asyncio.sleep(0.01)
    assert not send.done()
    t.closing = True  # closed with data still buffered: nothing would wake a drain
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(send, 1)


async def test_the_writer_waits_on_the_drain_not_on_a_clock(monkeypatch):
    """With the transport's drain, a waiting writer wakes when the peer reads (resume_writing),
    and rechecks a closing transport only every DRAIN_RECHECK_S."""
    monkeypatch.setattr(wsframes, "DRAIN_RECHECK_S", 0.05)
    t = _Transport(high=100)
    resumed = asyncio.Event()
    drains = 0

    async def drain() -> None:
        nonlocal drains
        drains += 1
        await resumed.wait()

    send = asyncio.create_task(FrameWriter(_WS(), t, drain).send(["x" * 200]))
    await asyncio.sleep(0.12)
    assert not send.done()
    assert 2 <= drains <= 4, f"one wait per DRAIN_RECHECK_S, not a busy loop ({drains})"
    t.closing = True
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(send, 1)
    t.closing, t.buffered = False, 1000
    send = asyncio.create_task(FrameWriter(_WS(), t, drain).send(["y" * 200]))
    await asyncio.sleep(0.01)
    t.buffered = 0
    resumed.set()  # the transport resumed writing
    await asyncio.wait_for(send, 1)


async def test_a_closing_connection_refuses_the_write():
    t = _Transport(high=1 << 20)
    ws = _WS()
    ws.closed = True
    with pytest.raises(ConnectionResetError):
        await FrameWriter(ws, t).send(["z"])
    assert t.written == []
