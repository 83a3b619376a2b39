"""``voltbourse bench journal --markets``, small, against the real PostgreSQL: every command
acknowledged, the load spread over the markets in proportion to their submitters, one and
two transactions in flight give the same journal."""

from __future__ import annotations

import pytest

from exchange.tools.bench import _journal_markets_async

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_markets_bench_small(pool, pg_dsn, in_flight):
    out = await _journal_markets_async(pg_dsn, 1200, 1, 16, [1, 5], in_flight)
    assert out["in_flight"] == in_flight
    assert out["single_market"]["commands"] == 1200
    one, five = out["markets"]
    assert (one["markets"], five["markets"]) == (1, 5)
    assert one["commands"] == 1200 and one["commits_overlapped"] == 0  # one market: never two at once
    assert five["commands"] == 1200  # 300 for the market with 4 submitters, 225 for each of the others
    if in_flight == 1:
        assert five["commits_overlapped"] == 0
    # 16 submitters over 5 markets: one has 4, the others 3; shares 4/16 and 3/16 of the commands
    counts = {r["market_id"]: r["n"] for r in await pool.fetch(
        "SELECT market_id, count(*) AS n FROM journal WHERE market_id LIKE 'bench-5x-%' GROUP BY market_id")}
    assert len(counts) == 5 and counts["bench-5x-0"] > counts["bench-5x-1"]
    assert set(out["aggregate_vs_single"]) == {"1", "5"}
    # the embedded server's superuser may CHECKPOINT: every run started from one
    assert out["checkpoint_before_each_run"] is True
