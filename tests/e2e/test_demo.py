"""The demo as a user runs it: `voltbourse demo` in a real process, settlement on the
in-process EVM included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support.paths import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_demo_runs_trades_and_closes_gates(tmp_path_factory):
    import platformdirs

    data = platformdirs.user_data_path("voltbourse") / f"test-demo-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    # as a user runs it: settlement on the in-process EVM included
    env = dict(os.environ, VOLTBOURSE_DATA_DIR=str(data), VOLTBOURSE_PORT="0", VOLTBOURSE_SETTLEMENT_ENABLED="true")
    try:
        out = subprocess.run([sys.executable, "-m", "exchange.tools.cli", "--log-level", "WARNING", "demo",
                              "--duration", "10", "--speed", "900", "--members", "12"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "gate closed" in text and "opened 24 products" in text
    done = next(line for line in text.splitlines() if line.startswith("Done:"))
    trades = int(done.split(",")[1].split()[0])
    assert trades > 0, done  # trades happened
    assert "operator page: http://" in text and "SettlementRegistry 0x" in text
    # every trade anchored on chain and reconciled at the end
    settled = next(line for line in text.splitlines() if line.startswith("Settlement:"))
    assert f"for {trades} trades (0 pending); reconciliation OK" in settled, settled
    assert "[settlement]" in text and "batches anchored" in text
    # and the second community's own, on its own contracts
    second = next(line for line in text.splitlines() if line.startswith("  settlement of demo-"))
    assert "reconciliation OK" in second and "(0 pending)" in second, second
