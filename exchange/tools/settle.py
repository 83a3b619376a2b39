"""``voltbourse settle``: a market's settlement in a process of its own (settlement.process).

Started and supervised by ``voltbourse serve`` (``settlement_process = "child"``, the default),
or run on its own against the exchange's database (``settlement_process = "external"`` in the
exchange; the same settings here: ``VOLTBOURSE_DATABASE_URL``, ``VOLTBOURSE_MARKET_ID``, the
chain settings). Exits 3 when another settlement process already runs the market.

The composition root of that process: it builds the payout sources of the installed
subsystems (``Subsystem.payout_source``: flexibility's payouts, metering's charges) on its own
pool, as ``serve`` registers them in its app.
"""

from __future__ import annotations

import logging
import os

from exchange.runtime.config import Settings
from exchange.runtime.db import create_pool
from exchange.runtime.service import run_async
from exchange.tools import platform
from settlement.process import run_settle, settle_settings

log = logging.getLogger(__name__)


async def _settle(settings: Settings, dsn: str) -> int:
    subs = [s for s in platform.subsystems() if s.enabled(settings) and s.payout_source is not None]
    pool = await create_pool(dsn, min_size=1, max_size=2)
    try:
        sources = [s.payout_source(pool, settings.market_id) for s in subs if s.payout_source is not None]
        return await run_settle(settings, dsn, sources)
    finally:
        await pool.close()


def settle(settings: Settings | None = None) -> int:
    """Blocking: run the market's settlement until SIGINT/SIGTERM."""
    settings = settings or settle_settings()
    if not settings.settlement_enabled:
        log.error("settlement is disabled (VOLTBOURSE_SETTLEMENT_ENABLED=false): nothing to run")
        return 2
    if not settings.database_url:
        # the embedded database belongs to `serve` (which passes its URL to its child)
        log.error("voltbourse settle needs the exchange's database: set VOLTBOURSE_DATABASE_URL (with the embedded "
                  "database, `voltbourse db url` prints it while `voltbourse serve` runs)")
        return 2
    if settings.settlement_nice:
        os.nice(settings.settlement_nice)  # chain work yields the CPU to the order path
    return run_async(_settle(settings, settings.database_url))
