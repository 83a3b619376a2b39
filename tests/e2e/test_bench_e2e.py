"""``voltbourse bench e2e --json`` as a user runs it: a real server process it starts, with the
settlement process that server supervises, and the keys the tools read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("settlement", ["true", "false"])
def test_bench_e2e_measures_after_the_settlement_process_is_running(tmp_path, settlement):
    env = dict(os.environ, VOLTBOURSE_SETTLEMENT_ENABLED=settlement, VOLTBOURSE_DATA_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "exchange.tools.cli", "bench", "e2e", "--json", "--commands", "1500",
                          "--connections", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["orders"] == 1500 and r["errors"] == 0 and r["orders_per_s"] > 0, r
    assert 0 < r["ack_p50_ms"] <= r["ack_p99_ms"], r
    if settlement == "true":  # the load waited for the settlement process's first report
        assert isinstance(r["settlement_ready_s"], float) and r["settlement_ready_s"] >= 0, r
    else:
        assert r["settlement_ready_s"] is None, r
