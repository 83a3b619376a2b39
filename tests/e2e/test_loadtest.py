"""The headless Locust run (loadtest/run.py): a local exchange, Locust users over WebSocket."""

from __future__ import annotations

import sys

import pytest
from support.paths import ROOT

sys.path.insert(0, str(ROOT))  # loadtest/ is not an installed package
from loadtest.run import format_report, run  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_headless_locust_run_reports_requests_without_failures():
    r = run(users=5, spawn_rate=5, duration="4s", seed="test")
    agg = r["stats"]["Aggregated"]
    assert agg["requests"] > 20 and agg["failures"] == 0, format_report(r)
    assert r["stats"]["login"]["requests"] == 5 and r["stats"]["place"]["requests"] > 0
    assert 0 < agg["p50_ms"] <= agg["p95_ms"] <= agg["p99_ms"]
    assert "Aggregated" in format_report(r)
