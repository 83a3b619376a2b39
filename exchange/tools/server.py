"""``voltbourse serve``: the exchange service.

Owns the embedded database (or connects to ``VOLTBOURSE_DATABASE_URL``),
migrates, recovers the market from its journal, runs its engine runtime and
serves the HTTP/WebSocket application (:mod:`exchange.gateway.app`) until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

from exchange.gateway.app import make_app
from exchange.gateway.plugin import Subsystem
from exchange.runtime.config import Settings
from exchange.runtime.db import database, upgrade
from exchange.runtime.service import Market, open_market, run_async
from exchange.tools import platform

log = logging.getLogger(__name__)


async def start_http(market: Market, settings: Settings, host: str | None = None,
                     port: int | None = None, subsystems: Sequence[Subsystem] | None = None) -> web.AppRunner:
    """Serve the app for ``market`` with the installed subsystems (or ``subsystems``); the
    bound address is ``runner.addresses[0]``."""
    app = await make_app(market, settings, platform.subsystems() if subsystems is None else subsystems)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host or settings.host, settings.port if port is None else port)
    await site.start()
    return runner


async def _serve(dsn: str, settings: Settings) -> int:
    market = await open_market(dsn, settings)
    runner = await start_http(market, settings)
    # What start-up built (the recovered engine, the views loaded from history) lives as long
    # as the process: out of the cyclic GC's scans, so full collections stay short
    gc.collect()
    gc.freeze()
    host, port = runner.addresses[0][:2]
    log.info("serving market %s on http://%s:%d (WebSocket /ws)", settings.market_id, host, port)
    if settings.operator_token is None:
        log.warning("VOLTBOURSE_OPERATOR_TOKEN is not set: the operator API is disabled")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await market.close()
    return 0


def serve(settings: Settings) -> int:
    """Blocking: start (or connect to) the database, migrate, serve until SIGINT/SIGTERM."""
    with database(settings) as dsn:  # the embedded server starts before the event loop
        upgrade(dsn)
        return run_async(_serve(dsn, settings))
