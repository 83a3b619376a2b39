"""The market times the tests use.

At ``T0`` (2026-11-21 08:00 UTC; ``exchange.runtime.scratch.BENCH_T0``, where the
benchmarks start too) a default market (Europe/Amsterdam, day-ahead gate at D-1 12:00
local) has the 24 products of local day 2026-11-22 open until ``GATE``
(2026-11-21 11:00 UTC); 2026-11-23 is listed but pre-open, 2026-11-21 closed or delivered.
"""

from __future__ import annotations

from datetime import UTC, datetime

from exchange.core.units import to_us

T0 = to_us(datetime(2026, 11, 21, 8, tzinfo=UTC))
GATE = to_us(datetime(2026, 11, 21, 11, tzinfo=UTC))  # D-1 12:00 Amsterdam for 2026-11-22
