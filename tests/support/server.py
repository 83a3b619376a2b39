"""A real exchange over loopback for the SDK and bot tests (the approach of
tests/test_ws_api.py): real embedded PostgreSQL (``pg_dsn``/``pool`` from
conftest), real engine runtime, aiohttp server on 127.0.0.1; members are
registered through the operator registry. ``restart()`` stops the HTTP server
and the market and starts them again on the same port (recovery from the journal)."""

from __future__ import annotations

import socket
from contextlib import asynccontextmanager

from clients.sdk import member_keys
from exchange.core.units import MONEY_UNITS_PER_EUR
from exchange.gateway.keys import MEMBERS
from exchange.runtime.clock import Clock, ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.members import MemberExists, MemberIn
from exchange.runtime.service import open_market
from exchange.tools.bench import BENCH_T0
from exchange.tools.server import start_http

OPERATOR_TOKEN = "sdk-test-operator"
KEYS = member_keys("sdk-tests", 6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exchange:
    def __init__(self, dsn, settings, clock, port) -> None:
        self.dsn, self.settings, self.clock, self.port = dsn, settings, clock, port
        self.market = self.runner = None
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.http = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self.market = await open_market(self.dsn, self.settings, self.clock)
        self.runner = await start_http(self.market, self.settings, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.market is not None:
            await self.market.close()
            self.market = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def open_products(self) -> list[str]:
        return sorted(p for p, pb in self.market.engine.products.items() if pb.state.value == "open")

    async def register(self, keys, role: str = "prosumer", collateral_eur: int = 1_000_000,
                       export_capacity_w: int = 10_000_000) -> None:
        registry = self.runner.app[MEMBERS]
        for k in keys:
            try:
                await registry.create(MemberIn(address=k.address, role=role, export_capacity_w=export_capacity_w,
                                               retail_tariff_ticks=30_000, feed_in_tariff_ticks=8_000,
                                               collateral=collateral_eur * MONEY_UNITS_PER_EUR))
            except MemberExists:
                pass


@asynccontextmanager
async def exchange(pg_dsn: str, market_id: str = "sdk", clock: Clock | None = None, register=KEYS[:4],
                   **overrides):
    clock = clock or ManualClock(BENCH_T0)
    settings = load_settings(database_url=pg_dsn, market_id=market_id, operator_token=OPERATOR_TOKEN, **overrides)
    ex = Exchange(pg_dsn, settings, clock, free_port())
    await ex.start()
    try:
        await ex.register(register)
        yield ex
    finally:
        await ex.stop()
