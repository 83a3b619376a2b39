"""`voltbourse bench engine --json` keeps its keys (tools read them) and measures the rules a new
market runs: the default settings' price controls, with the same workload without them beside."""

from __future__ import annotations

import pytest

from exchange.tools.bench import bench_engine

pytestmark = pytest.mark.unit


def test_bench_engine_reports_its_keys_under_the_default_rules():
    r = bench_engine(commands=3000, seed=3, repeat=1)
    for key in ("commands_per_s", "p50_us", "p99_us", "runs_commands_per_s", "trades", "state_hash",
                "commands_per_s_no_price_controls", "price_controls_cost_ratio"):
        assert key in r, key
    assert r["commands"] == 3000 and r["trades"] > 0 and r["price_controls_cost_ratio"] > 0
