"""Waiting in tests for something the server does in its own time."""

from __future__ import annotations

import asyncio
import inspect
import time


async def until(pred, timeout: float = 20.0, every: float = 0.05) -> None:
    """Return once ``pred()`` (a plain or an async callable) is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = pred()
        if inspect.isawaitable(ok):
            ok = await ok
        if ok:
            return
        await asyncio.sleep(every)
    raise AssertionError("condition not reached in time")
