"""Clocks for the engine runtime (the engine core itself never reads a clock).

* :class:`RealClock` - wall-clock UTC time, for production.
* :class:`SimClock` - accelerated simulation time for demos and tests: starts
  at a chosen instant and runs ``speed`` times faster than the wall clock
  (``speed=720`` runs one delivery day in two minutes).
* :class:`ManualClock` - time moves only when told to (deterministic tests).

All return integer microseconds since the epoch, UTC, and never go backwards.
"""

from __future__ import annotations

import time
from datetime import datetime

from exchange.core.units import to_us


class Clock:
    speed: float = 1

    def now_us(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def not_before(self, us: int) -> None:
        """Make sure the clock never shows a time before ``us`` (after recovery)."""

    def wall_seconds_until(self, us: int) -> float:
        return max(0.0, (us - self.now_us()) / 1e6 / self.speed)


class RealClock(Clock):
    """Wall-clock UTC; if the system clock steps back (NTP), it holds still instead."""

    def __init__(self) -> None:
        self._last = 0

    def now_us(self) -> int:
        t = time.time_ns() // 1000
        if t < self._last:
            return self._last
        self._last = t
        return t


class SimClock(Clock):
    def __init__(self, start: datetime | int, speed: float = 60) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start_us = start if isinstance(start, int) else to_us(start)
        self.speed = speed
        self._t0 = time.monotonic_ns()

    def now_us(self) -> int:
        return self.start_us + int((time.monotonic_ns() - self._t0) // 1000 * self.speed)

    def not_before(self, us: int) -> None:
        now = self.now_us()
        if now < us:
            self.start_us += us - now


class ManualClock(Clock):
    def __init__(self, start: datetime | int) -> None:
        self.t = start if isinstance(start, int) else to_us(start)

    def now_us(self) -> int:
        return self.t

    def set(self, t: datetime | int) -> None:
        t = t if isinstance(t, int) else to_us(t)
        self.t = max(self.t, t)

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1_000_000)

    def not_before(self, us: int) -> None:
        self.t = max(self.t, us)
