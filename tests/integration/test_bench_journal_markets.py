"""``voltbourse bench journal --markets``, small, against the real PostgreSQL: every command
acknowledged, the load spread over the markets in proportion to their submitters, one and
two transactions in flight give the same journal."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pytest

from exchange.tools.bench import _checkpoint, _journal_markets_async

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
    if not os.environ.get("VOLTBOURSE_TEST_DATABASE_URL"):
        assert out["checkpoint_before_each_run"] is True


async def test_the_bench_goes_on_where_the_role_may_not_checkpoint(pool, pg_dsn):
    """A role without the right to CHECKPOINT (a managed server's, say): no checkpoint, no
    error; the superuser's: one."""
    if os.environ.get("VOLTBOURSE_TEST_DATABASE_URL"):
        pytest.skip("creates a role on the embedded server (trusted local connections)")
    await pool.execute("DROP ROLE IF EXISTS bench_plain")
    await pool.execute("CREATE ROLE bench_plain LOGIN")
    try:
        parts = urlsplit(pg_dsn)
        plain = urlunsplit(parts._replace(netloc="bench_plain@" + parts.netloc.rpartition("@")[2]))
        assert await _checkpoint(plain) is False
        assert await _checkpoint(pg_dsn) is True
    finally:
        await pool.execute("DROP ROLE bench_plain")
