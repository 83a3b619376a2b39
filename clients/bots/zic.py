"""ZI-C allocative efficiency on the real engine: :mod:`clients.community.zic`.

The experiment lives with the community commands (``voltbourse bench efficiency``),
since :mod:`clients.community` must not import the bots (they import it); this
module keeps the bots' import path. The ZI-C *bot* (trading on a live exchange)
is :mod:`clients.bots.zic_bot`.
"""

from __future__ import annotations

from clients.community.zic import (
    MARKETS,
    Schedules,
    SessionResult,
    default_markets,
    random_market,
    run_bench,
    run_session,
)

__all__ = ["MARKETS", "Schedules", "SessionResult", "default_markets", "random_market", "run_bench", "run_session"]
