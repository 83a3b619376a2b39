"""Bounded shutdown of the SDK and the bots: a cancellation is never swallowed, even when
the answer to the request being cancelled lands at that very moment; SIGTERM stops
`voltbourse bots run` and leaves no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from eth_account import Account

from clients.sdk import VoltbourseClient


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


def _postgres_under(path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "postgres" and any(str(path) in a for a in p.info["cmdline"] or ()):
            out.append(p)
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_stops_bots_run_and_leaves_no_process(tmp_path):
    env = dict(os.environ, VOLTBOURSE_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "bots", "run",
                             "--members", "20", "--duration", "300", "--speed", "600"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            if "bots logged in" in line or time.monotonic() > deadline:
                break
        # the server (our child) and its embedded PostgreSQL (started detached by pg_ctl)
        children = psutil.Process(proc.pid).children(recursive=True) + _postgres_under(tmp_path)
        assert any(c.name() == "postgres" for c in children), [c.name() for c in children]
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        proc.wait(120)
        assert time.monotonic() - t_term < 60, "stopping took more than a minute"
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert not _postgres_under(tmp_path)
