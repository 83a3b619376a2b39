"""`voltbourse demo` killed with SIGKILL (its second community left active on the platform),
then started again on the same data: the second start archives the stale community instead
of starting it beside its own, runs to its end and leaves nothing active."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time

import asyncpg
import psutil
import pytest
from support.paths import ROOT

from exchange.runtime.db import EmbeddedPostgres

pytestmark = pytest.mark.e2e


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for a job started in the background of a script


def _demo(env: dict, duration: int, out, *, background: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "demo",
                             "--duration", str(duration), "--speed", "900", "--members", "8"],
                            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_ignore_sigint if background else None)


async def _registry(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {r["market_id"]: r["status"] for r in await conn.fetch("SELECT market_id, status FROM platform_markets")}
    finally:
        await conn.close()


@pytest.mark.slow
def test_demo_after_a_kill_archives_the_stale_second_community(tmp_path):
    import platformdirs

    data = platformdirs.user_data_path("voltbourse") / f"test-demo-killed-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    env = dict(os.environ, VOLTBOURSE_DATA_DIR=str(data), VOLTBOURSE_PORT="0",
               VOLTBOURSE_SETTLEMENT_ENABLED="false")
    first_out = tmp_path / "first.out"
    try:
        with first_out.open("w") as out:
            first = _demo(env, 300, out)
            try:
                deadline = time.monotonic() + 150
                while "second community demo-" not in first_out.read_text():
                    assert first.poll() is None, first_out.read_text()
                    assert time.monotonic() < deadline, first_out.read_text()
                    time.sleep(0.5)
                time.sleep(2)  # trading in both communities
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(30)
        text = first_out.read_text()
        stale = next(w for line in text.splitlines() if line.startswith("  second community ")
                     for w in line.split() if w.startswith("demo-") and w.endswith("-b"))
        second = subprocess.run([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "demo",
                                 "--duration", "4", "--speed", "900", "--members", "8"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 0, second.stdout + second.stderr
        lines = second.stdout.splitlines()
        assert any(line.startswith(f"  archived the second community of an earlier demo, still active (killed, or resumed "
                                       f"since): {stale} ")
                   for line in lines), second.stdout
        assert not any(f"[{stale}]" in line for line in lines)
        own = next(w for line in lines if line.startswith("  second community ") for w in line.split()
                   if w.startswith("demo-") and w.endswith("-b"))
        assert own != stale and any(line.startswith("Done:") for line in lines)
        with EmbeddedPostgres(data / "pg") as pg:
            registry = asyncio.run(_registry(pg.dsn))
        assert registry == {stale: "archived", own: "archived"}  # both kept, none left active
        # SIGTERM ends a demo as Ctrl-C does: its summary, its second community archived, and
        # its embedded PostgreSQL stopped (it was killed on the spot, PostgreSQL left running),
        # also when it runs in the background of a script, SIGINT ignored
        third_out = tmp_path / "third.out"
        with third_out.open("w") as out:
            third = _demo(env, 300, out, background=True)
            deadline = time.monotonic() + 150
            while "commands/s" not in third_out.read_text():  # trading
                assert third.poll() is None and time.monotonic() < deadline, third_out.read_text()
                time.sleep(0.5)
            third.send_signal(signal.SIGTERM)
            assert third.wait(120) == 130, third_out.read_text()
        text = third_out.read_text()
        assert any(line.startswith("Done:") for line in text.splitlines()), text
        assert not [p for p in psutil.process_iter(["cmdline"])
                    if str(data / "pg") in " ".join(p.info["cmdline"] or [])], "PostgreSQL left running"
        with EmbeddedPostgres(data / "pg") as pg:
            registry = asyncio.run(_registry(pg.dsn))
        assert set(registry.values()) == {"archived"}, registry
    finally:
        shutil.rmtree(data, ignore_errors=True)
