"""A market on the test database without an HTTP server, and what tests ask of one."""

from __future__ import annotations

from exchange.runtime.clock import Clock, ManualClock
from exchange.runtime.config import load_settings
from exchange.runtime.service import Market, open_market
from support.times import T0

NO_PRICE_CONTROLS = {"price_band_bp": 0, "price_band_min_ticks": 0, "max_order_value_eur": 0, "volatility_bp": 0,
                     "volatility_min_ticks": 0}


async def open_test_market(pg_dsn: str, market_id: str = "t", clock: Clock | None = None, **overrides) -> Market:
    """``open_market`` on ``pg_dsn`` with ``load_settings(**overrides)``; a manual clock at T0 by default.
    The price controls are off unless asked for: these markets trade random prices on purpose
    (the controls have tests of their own)."""
    for k, v in NO_PRICE_CONTROLS.items():
        overrides.setdefault(k, v)
    settings = load_settings(database_url=pg_dsn, market_id=market_id, **overrides)
    return await open_market(pg_dsn, settings, clock or ManualClock(T0))


def open_products(engine) -> list[str]:
    """The engine's open products, sorted (by start)."""
    return sorted(p for p, pb in engine.products.items() if pb.state.value == "open")


async def assert_full_replay_reaches(pg_dsn: str, market_id: str, state_hash: str) -> None:
    """Open the market without snapshots (the whole journal replayed) and check its state."""
    full = await open_test_market(pg_dsn, market_id, snapshot_recovery=False, snapshot_every_commands=0)
    try:
        assert full.runtime.recovered_from == 0 and full.engine.state_hash() == state_hash
    finally:
        await full.close()
