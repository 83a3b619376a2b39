"""THE test server: a real market (embedded PostgreSQL, runtime, journal) and the full
aiohttp app on 127.0.0.1, as ``voltbourse serve`` runs them.

``serve(pg_dsn, market_id, clock=..., members=..., via=..., **settings_overrides)`` starts
one (a manual clock at T0 by default) and registers its members: ``via="runtime"``
submits ``RegisterMember`` before the app starts (collateral may be ``None``: owned by the
chain), ``via="operator"`` goes through the operator registry (the REST API's path, with
names, roles and tariffs) once the app runs; both at the first start only. ``restart()``
(or ``stop()`` then ``start()``) stops the HTTP server and the market and starts them again
on the same port (recovery from the journal).

The pytest fixtures ``serve`` and ``server`` (tests/conftest.py) wrap it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

from eth_account.signers.local import LocalAccount

from exchange.core.model import PlaceOrder, RegisterMember, Side
from exchange.gateway.feed import OPERATOR_FEED
from exchange.gateway.keys import MEMBERS
from exchange.runtime.clock import Clock, ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.members import MemberExists, MemberIn
from exchange.runtime.service import open_market
from exchange.tools.server import start_http
from support.keys import KEYS, OPERATOR_TOKEN
from support.market import open_products
from support.times import T0

RETAIL_TARIFF_TICKS = 30_000
FEED_IN_TARIFF_TICKS = 8_000


@dataclass(frozen=True)
class Member:
    """A member a test server registers at start."""

    key: LocalAccount
    role: str = "prosumer"
    name: str = ""
    collateral: int | None = 10**15  # None (runtime only): owned by the chain (settlement on)
    export_capacity_w: int = 10**7


def member(key: LocalAccount | Member, **kw) -> Member:
    return key if isinstance(key, Member) else Member(key, **kw)


class TestServer:
    __test__ = False  # not a test class

    def __init__(self, pg_dsn: str, settings, clock: Clock, members: list[Member],
                 via: Literal["runtime", "operator"]) -> None:
        self.pg_dsn, self.settings, self.clock = pg_dsn, settings, clock
        self.members, self.via = members, via
        self.market = self.runner = None
        self.port = 0  # bound at the first start, kept by restarts

    @property
    def url(self) -> str:
        """The peer WebSocket endpoint."""
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self):
        return self.runner.app

    @property
    def registry(self):
        """The operator's member registry (exchange.runtime.members.MemberRegistry)."""
        return self.app[MEMBERS]

    @property
    def feed(self):
        """The operator page's feed."""
        return self.app[OPERATOR_FEED]

    @property
    def open_products(self) -> list[str]:
        return open_products(self.market.engine)

    def books(self) -> dict:
        return self.market.engine.snapshot()["books"]

    async def start(self) -> None:
        """Open the market and start the app; the members are registered at the first start
        (a restart recovers them from the journal and the database)."""
        first = self.port == 0
        self.market = await open_market(self.pg_dsn, self.settings, self.clock)
        try:
            if first and self.via == "runtime":
                for m in self.members:
                    await self.market.runtime.submit(RegisterMember(0, m.key.address, collateral=m.collateral,
                                                                    export_capacity_w=m.export_capacity_w))
            self.runner = await start_http(self.market, self.settings, "127.0.0.1", self.port)
            self.port = self.runner.addresses[0][1]
            if first and self.via == "operator":
                await self.register(self.members)
        except BaseException:
            await self.stop()
            raise

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

    async def register(self, members: Iterable[LocalAccount | Member]) -> None:
        """Create members through the operator registry (members that exist are left as they are)."""
        for m in map(member, members):
            try:
                await self.registry.create(MemberIn(
                    address=m.key.address, name=m.name, role=m.role, export_capacity_w=m.export_capacity_w,
                    retail_tariff_ticks=RETAIL_TARIFF_TICKS, feed_in_tariff_ticks=FEED_IN_TARIFF_TICKS,
                    collateral=m.collateral))
            except MemberExists:
                pass

    async def place(self, i: int, side: str, price: int, qty: int, pid: str) -> list:
        """KEYS[i] places an order straight on the runtime; the events."""
        res = await self.market.runtime.submit(PlaceOrder(0, KEYS[i].address, pid, Side(side), price, qty))
        return res.events


@asynccontextmanager
async def serve(pg_dsn: str, market_id: str = "test", *, clock: Clock | None = None,
                members: Iterable[LocalAccount | Member] = (), via: Literal["runtime", "operator"] = "runtime",
                **overrides) -> AsyncIterator[TestServer]:
    """A running ``TestServer`` (see the module's docstring); ``overrides`` go to ``load_settings``
    (the operator token is ``support.keys.OPERATOR_TOKEN`` unless given, ``None`` disables it)."""
    overrides.setdefault("operator_token", OPERATOR_TOKEN)
    settings = load_settings(database_url=pg_dsn, market_id=market_id, **overrides)
    server = TestServer(pg_dsn, settings, clock or ManualClock(T0), [member(m) for m in members], via)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
