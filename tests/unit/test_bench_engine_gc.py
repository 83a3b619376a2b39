"""`bench engine` keeps its recorded streams out of the cyclic GC only while it runs, and says
what it measured: the mix, the time in the GC, commands per second of CPU time."""

from __future__ import annotations

import gc

import pytest

from exchange.tools.bench import bench_engine

pytestmark = pytest.mark.unit


def test_bench_engine_reports_gc_cpu_and_mix_and_unfreezes():
    before = gc.get_freeze_count()
    r = bench_engine(commands=2000, seed=5, repeat=1, auction_commands=200)
    assert gc.get_freeze_count() == before
    assert r["gc_s"] >= 0 and r["commands_per_cpu_s"] > 0 and len(r["runs_commands_per_cpu_s"]) == 1
    assert "gc" in r and r["mix"]["post_only"] > 0 and r["mix"]["good_till_date"] > 0
    assert r["mix"]["ioc_min_quantity"] > 0 and r["auction"]["mix"]["block"] > 0
    assert abs(sum(r["mix"].values()) - 1) < 1e-3
