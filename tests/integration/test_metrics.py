"""``GET /metrics`` over real HTTP, fed by a real market (embedded PostgreSQL): the
counters match the committed order flow exactly."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from support.market import open_products, open_test_market

from exchange.core.model import CancelOrder, PlaceOrder, RegisterMember, Side
from exchange.gateway.metrics import METRICS, Metrics, add_metrics_route

pytestmark = pytest.mark.integration


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture
async def served(pool, pg_dsn):
    market = await open_test_market(pg_dsn, "metrics")
    metrics = Metrics()
    metrics.attach(market.runtime)
    app = web.Application()
    app[METRICS] = metrics
    add_metrics_route(app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{runner.addresses[0][1]}") as session:
            yield market, metrics, session
    finally:
        await runner.cleanup()
        await market.close()


async def _scrape(session) -> dict:
    async with session.get("/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return _samples(await r.text())


async def test_counters_follow_committed_events(served):
    market, metrics, session = served
    rt = market.runtime
    cmd_seq0 = rt.cmd_seq
    before = await _scrape(session)
    assert ("voltbourse_trades_total", frozenset()) in before
    assert before[("voltbourse_trades_total", frozenset())] == 0

    await rt.submit(RegisterMember(0, "seller", collateral=10**15, export_capacity_w=10**6))
    await rt.submit(RegisterMember(0, "buyer", collateral=10**15))
    pid = open_products(rt.engine)[0]
    for price, qty in ((9000, 100), (9100, 200), (9200, 300)):
        await rt.submit(PlaceOrder(0, "seller", pid, Side.SELL, price, qty))  # 3 accepted, resting
    await rt.submit(PlaceOrder(0, "buyer", pid, Side.BUY, 10**9, 10))  # PRICE_OUT_OF_BOUNDS
    await rt.submit(PlaceOrder(0, "nobody", pid, Side.BUY, 9000, 10))  # UNKNOWN_MEMBER
    await rt.submit(PlaceOrder(0, "nobody", pid, Side.BUY, 9000, 10))  # UNKNOWN_MEMBER
    await rt.submit(CancelOrder(0, "buyer", 12345))  # rejected, but not an order entry
    await rt.submit(PlaceOrder(0, "buyer", pid, Side.BUY, 9100, 250))  # accepted; trades 100 + 150

    s = await _scrape(session)
    assert s[("voltbourse_orders_total", frozenset({("result", "accepted"), ("reason", "")}))] == 4
    assert s[("voltbourse_orders_total",
              frozenset({("result", "rejected"), ("reason", "PRICE_OUT_OF_BOUNDS")}))] == 1
    assert s[("voltbourse_orders_total", frozenset({("result", "rejected"), ("reason", "UNKNOWN_MEMBER")}))] == 2
    assert not any(k[0] == "voltbourse_orders_total" and ("reason", "UNKNOWN_ORDER") in k[1] for k in s)
    assert s[("voltbourse_trades_total", frozenset())] == 2
    assert s[("voltbourse_traded_energy_wh_total", frozenset())] == 250

    # journal histograms: one observation per commit, the batch sizes add up to the commands
    commits = s[("voltbourse_journal_commit_seconds_count", frozenset())]
    assert commits >= 1 and s[("voltbourse_journal_commit_seconds_sum", frozenset())] > 0
    assert s[("voltbourse_journal_batch_commands_count", frozenset())] == commits
    # the 4 rejections are answered and counted above, but not journaled
    assert s[("voltbourse_journal_batch_commands_sum", frozenset())] == rt.cmd_seq - cmd_seq0 == 6
    assert s[("voltbourse_journal_commit_seconds_bucket", frozenset({("le", "+Inf")}))] == commits
    assert s[("voltbourse_journal_commit_failures_total", frozenset())] == 0

    assert s[("voltbourse_queue_depth", frozenset({("queue", "commands")}))] == 0
    assert s[("voltbourse_queue_depth", frozenset({("queue", "uncommitted")}))] == 0
    assert s[("voltbourse_market_seq", frozenset({("market", "metrics")}))] == rt.committed_seq > 0


async def test_gateway_hooks(served):
    _, metrics, session = served
    metrics.observe_command_latency(0.0007)
    metrics.observe_command_latency(0.003)
    metrics.observe_command_latency(2.0)
    metrics.peer_connected()
    metrics.peer_connected()
    metrics.peer_disconnected()
    metrics.ws_error("BAD_MESSAGE")
    metrics.ws_error("BAD_MESSAGE")
    metrics.ws_error("RATE_LIMITED")
    metrics.slow_consumer_dropped()
    s = await _scrape(session)
    lat = "voltbourse_command_latency_seconds"
    assert s[(f"{lat}_count", frozenset())] == 3
    assert s[(f"{lat}_bucket", frozenset({("le", "0.0005")}))] == 0
    assert s[(f"{lat}_bucket", frozenset({("le", "0.001")}))] == 1
    assert s[(f"{lat}_bucket", frozenset({("le", "1.0")}))] == 2
    assert s[(f"{lat}_bucket", frozenset({("le", "+Inf")}))] == 3
    assert s[("voltbourse_connected_peers", frozenset())] == 1
    assert s[("voltbourse_ws_rejected_messages_total", frozenset({("code", "BAD_MESSAGE")}))] == 2
    assert s[("voltbourse_ws_rejected_messages_total", frozenset({("code", "RATE_LIMITED")}))] == 1
    assert s[("voltbourse_slow_consumers_dropped_total", frozenset())] == 1


def test_instances_are_independent():
    a, b = Metrics(), Metrics()  # no global registry: no "duplicated timeseries" error
    a.slow_consumer_dropped()
    sa, sb = _samples(a.exposition().decode()), _samples(b.exposition().decode())
    assert sa[("voltbourse_slow_consumers_dropped_total", frozenset())] == 1
    assert sb[("voltbourse_slow_consumers_dropped_total", frozenset())] == 0
    assert not any(k[0] == "voltbourse_market_seq" for k in sa)  # not attached to a runtime: no runtime gauges
