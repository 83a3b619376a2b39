"""``voltbourse serve``: the exchange service.

Owns the embedded database (or connects to ``VOLTBOURSE_DATABASE_URL``),
migrates, recovers the default market from its journal, runs its engine runtime and
serves the HTTP/WebSocket application (:mod:`exchange.gateway.app`) until
SIGINT/SIGTERM; with it, every market the platform hosts (``platform_markets``,
:mod:`exchange.gateway.tenants`) under ``/m/{market_id}/``, all of them sharing one
writer pool, one readers' pool and one group commit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from exchange.gateway.app import make_app
from exchange.gateway.plugin import Subsystem
from exchange.gateway.session import ConnectionCounts
from exchange.gateway.tenants import Platform, TenantStore
from exchange.runtime.clock import Clock
from exchange.runtime.committer import IN_FLIGHT, GroupCommitter
from exchange.runtime.config import Settings
from exchange.runtime.db import create_pool, database, upgrade
from exchange.runtime.service import Market, open_market, run_async
from exchange.tools import platform

log = logging.getLogger(__name__)


async def start_http(market: Market, settings: Settings, host: str | None = None,
                     port: int | None = None, subsystems: Sequence[Subsystem] | None = None) -> web.AppRunner:
    """Serve the app for ``market`` with the installed subsystems (or ``subsystems``); the
    bound address is ``runner.addresses[0]``."""
    app = platform.configure(await make_app(market, settings,
                                            platform.subsystems() if subsystems is None else subsystems))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port)
    await site.start()
    return runner


@dataclass
class Deployment:
    """A running deployment: the default market (root routes), the platform hosting the
    other markets under ``/m/{market_id}/``, the HTTP server, and what they share."""

    market: Market
    platform: Platform
    runner: web.AppRunner
    committer: GroupCommitter
    pool: asyncpg.Pool
    read_pool: asyncpg.Pool

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def port(self) -> int:
        return int(self.runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving (the root's shutdown stops the hosted markets), then the default
        market, then the group commit and the shared pools."""
        try:
            await self.runner.cleanup()
            await self.market.close()
        finally:
            await self.committer.stop()
            await self.read_pool.close()
            await self.pool.close()


async def start_deployment(dsn: str, settings: Settings, host: str | None = None, port: int | None = None, *,
                           clock: Clock | None = None,
                           subsystems: Sequence[Subsystem] | None = None) -> Deployment:
    """Open the default market and every market the platform hosts (sharing one writer pool,
    one readers' pool and one :class:`GroupCommitter`, and the default market's clock) and
    serve them all; the bound address is ``deployment.runner.addresses[0]``."""
    subs = platform.subsystems() if subsystems is None else subsystems
    # the committer holds one connection for the markets' writer locks and one per transaction slot
    pool = await create_pool(dsn, min_size=1, max_size=settings.journal_pool_size + 1 + IN_FLIGHT)
    read_pool = committer = market = runner = None
    try:
        read_pool = await create_pool(dsn, min_size=1, max_size=2 * settings.read_pool_size)
        committer = GroupCommitter(pool)
        committer.start()
        market = await open_market(dsn, settings, clock, pool=pool, read_pool=read_pool, committer=committer)

        connections = ConnectionCounts()  # the server's: every market's peers count against one limit

        async def build(m: Market, s: Settings, base_path: str, hashes: set[bytes]) -> web.Application:
            return platform.configure(await make_app(m, s, subs, base_path=base_path,
                                                     operator_token_hashes=hashes, connections=connections))

        hosted = Platform(settings, TenantStore(pool), build, dsn=dsn, pool=pool, read_pool=read_pool,
                          committer=committer, clock=market.runtime.clock, default_market=market)
        app = platform.configure(await make_app(market, settings, subs, platform=hosted, connections=connections))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port)
        await site.start()
    except BaseException:
        if runner is not None:
            await runner.cleanup()
        if market is not None:
            await market.close()
        if committer is not None:
            await committer.stop()
        if read_pool is not None:
            await read_pool.close()
        await pool.close()
        raise
    return Deployment(market, hosted, runner, committer, pool, read_pool)


async def _serve(dsn: str, settings: Settings) -> int:
    deployment = await start_deployment(dsn, settings)
    runner = deployment.runner
    # What start-up built (the recovered engine, the views loaded from history) lives as long
    # as the process: out of the cyclic GC's scans, so full collections stay short
    gc.collect()
    gc.freeze()
    host, port = runner.addresses[0][:2]
    log.info("serving market %s on http://%s:%d (WebSocket /ws)", settings.market_id, host, port)
    for mid, t in deployment.platform.tenants.items():
        log.info("  hosted market %s: http://%s:%d/m/%s/ (%s)%s", mid, host, port, mid, t.record.status,
                 f" FAILED: {t.error}" if t.error else "")
    if settings.operator_token is None:
        log.warning("VOLTBOURSE_OPERATOR_TOKEN is not set: the operator API is disabled")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await deployment.close()
    return 0


def serve(settings: Settings) -> int:
    """Blocking: start (or connect to) the database, migrate, serve until SIGINT/SIGTERM."""
    with database(settings) as dsn:  # the embedded server starts before the event loop
        upgrade(dsn)
        return run_async(_serve(dsn, settings))
