"""Prometheus metrics of one exchange process (``GET /metrics``).

Each :class:`Metrics` has its own ``CollectorRegistry`` (no global state: tests
build many apps). Order and trade counters are fed from COMMITTED events (a
runtime subscriber); journal histograms from the runtime's ``on_commit`` hook;
queue depths, the market's sequence number and commit failures are read from
the runtime at scrape time. The gateway reports command latency, connected
peers, rejected WebSocket messages and dropped slow consumers.

Prometheus values are float64: counts and Wh stay exact up to 2**53.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exchange.core.model import OrderAccepted, Rejected, TradeEvent
from exchange.runtime.journal import Entry
from exchange.runtime.market import MarketRuntime

__all__ = ["Metrics", "add_metrics_route"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class _RuntimeCollector:
    """Values read from the runtime when scraped (nothing to do on the hot path)."""

    def __init__(self) -> None:
        self.runtime: MarketRuntime | None = None

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        if rt is None:
            return
        yield CounterMetricFamily("voltbourse_journal_commit_failures", "Failed journal commits (each is retried).",
                                  value=rt.commit_failures)
        q = GaugeMetricFamily("voltbourse_queue_depth", "Items waiting in the runtime's queues.", labels=["queue"])
        q.add_metric(["commands"], rt.queued())
        q.add_metric(["uncommitted"], rt.uncommitted())
        yield q
        s = GaugeMetricFamily("voltbourse_market_seq", "Last committed event sequence number.", labels=["market"])
        s.add_metric([rt.journal.market_id], rt.committed_seq)
        yield s


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.orders = Counter("voltbourse_orders_total", "Committed order entries (place commands) by outcome.",
                              ["result", "reason"], registry=r)
        self.trades = Counter("voltbourse_trades_total", "Committed trades.", registry=r)
        self.traded_energy = Counter("voltbourse_traded_energy_wh_total", "Committed traded energy, Wh.", registry=r)
        self.command_latency = Histogram("voltbourse_command_latency_seconds",
                                         "Gateway command latency, receipt to acknowledgement.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.journal_commit = Histogram("voltbourse_journal_commit_seconds", "Duration of one journal commit.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.journal_batch = Histogram("voltbourse_journal_batch_commands", "Commands per journal commit.",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.connected_peers = Gauge("voltbourse_connected_peers", "Open peer WebSocket sessions.", registry=r)
        self.ws_rejected = Counter("voltbourse_ws_rejected_messages_total",
                                   "Peer WebSocket messages rejected by the gateway, by error code.", ["code"],
                                   registry=r)
        self.slow_consumers = Counter("voltbourse_slow_consumers_dropped_total",
                                      "Peer sessions dropped because they did not keep up.", registry=r)
        self._runtime_collector = _RuntimeCollector()
        r.register(self._runtime_collector)
        self._accepted = self.orders.labels("accepted", "")
        self._rejected: dict[str, Counter] = {}

    # ----------------------------------------------------------------- runtime
    def attach(self, runtime: MarketRuntime) -> None:
        """Feed from ``runtime``: sets its ``on_commit`` hook (replacing any) and subscribes
        to its committed entries."""
        self._runtime_collector.runtime = runtime
        runtime.on_commit = self._on_commit
        runtime.subscribers.append(self._on_entries)

    def _on_commit(self, seconds: float, commands: int) -> None:
        self.journal_commit.observe(seconds)
        self.journal_batch.observe(commands)

    def _on_entries(self, entries: Iterable[Entry]) -> None:
        accepted = trades = energy = 0
        for e in entries:
            for ev in e.events:
                if isinstance(ev, TradeEvent):
                    trades += 1
                    energy += ev.quantity
                elif isinstance(ev, OrderAccepted):
                    accepted += 1
                elif isinstance(ev, Rejected) and ev.command == "place":
                    child = self._rejected.get(ev.reason)
                    if child is None:
                        child = self._rejected[ev.reason] = self.orders.labels("rejected", ev.reason)
                    child.inc()
        if accepted:
            self._accepted.inc(accepted)
        if trades:
            self.trades.inc(trades)
            self.traded_energy.inc(energy)

    # ----------------------------------------------------------------- gateway
    def observe_command_latency(self, seconds: float) -> None:
        self.command_latency.observe(seconds)

    def peer_connected(self) -> None:
        self.connected_peers.inc()

    def peer_disconnected(self) -> None:
        self.connected_peers.dec()

    def ws_error(self, code: str) -> None:
        self.ws_rejected.labels(code).inc()

    def slow_consumer_dropped(self) -> None:
        self.slow_consumers.inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in this registry."""
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.config_dict[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_metrics_route(app: web.Application) -> None:
    """``GET /metrics`` serving ``app[METRICS]`` (set it before the first request)."""
    app.router.add_get("/metrics", metrics_handler)
