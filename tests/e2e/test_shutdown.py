"""Bounded shutdown of the bots: SIGTERM stops `voltbourse bots run` (a real process with
its server and embedded PostgreSQL) and leaves no process behind. (The SDK's side, a
cancellation never swallowed, is tests/unit/test_sdk_cancellation.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.e2e


def _postgres_under(path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "postgres" and any(str(path) in a for a in p.info["cmdline"] or ()):
            out.append(p)
    return out


@pytest.mark.slow
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
