"""Fixtures of the end-to-end tests: the browser of the operator page tests."""

from __future__ import annotations

import pytest
from support.page import chromium


@pytest.fixture
async def browser():
    """Debian's headless Chromium under Playwright (support.page.chromium)."""
    async with chromium() as b:
        yield b
