"""Bounded shutdown of the SDK: a cancellation is never swallowed, even when the answer
to the request being cancelled lands at that very moment (a fake socket, no server)."""

from __future__ import annotations

import asyncio

import pytest
from eth_account import Account

from clients.sdk import VoltbourseClient

pytestmark = pytest.mark.unit


class _Socket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_str(self, data: str) -> None:
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True


def _client() -> tuple[VoltbourseClient, _Socket]:
    c = VoltbourseClient("ws://127.0.0.1:9/ws", Account.create().key, reconnect=False)
    ws = _Socket()
    c._ws = ws  # type: ignore[assignment]
    c._connected.set()
    return c, ws


@pytest.mark.parametrize("round_", range(20))
async def test_cancellation_is_not_swallowed_when_the_answer_lands_at_the_same_time(round_):
    client, ws = _client()
    task = asyncio.create_task(client._call({"type": "ping"}, timeout=5))
    while not ws.sent:
        await asyncio.sleep(0)
    (fut, _msg), = client._pending.values()
    fut.set_result({"pong": True})  # the answer lands ...
    task.cancel()  # ... as the caller is cancelled
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_requests_cancelled_mid_answer_all_end():
    """Many members' requests, answers arriving during the cancellation: every task ends."""
    pairs = [_client() for _ in range(200)]
    tasks = [asyncio.create_task(c._call({"type": "ping"}, timeout=5)) for c, _ in pairs]
    while not all(ws.sent for _, ws in pairs):
        await asyncio.sleep(0)
    for i, (c, _) in enumerate(pairs):
        (fut, _msg), = c._pending.values()
        if i % 2:
            fut.set_result({"pong": True})
    for t in tasks:
        t.cancel()
    done, pending = await asyncio.wait(tasks, timeout=2)
    assert not pending
    assert all(t.cancelled() for t in done)
