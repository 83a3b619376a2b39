"""Shared test support (importable as ``support``: pyproject's pytest ``pythonpath`` adds tests/).

- ``paths``: the checkout's root and docs folder
- ``times``: the market times the tests start at (T0, GATE)
- ``keys``: the test members' key pairs and the operator token
- ``market``: a market on the test database without a server (``open_test_market``)
- ``server``: THE test server (``serve``: market + full aiohttp app on 127.0.0.1)
- ``wsclient``: a small peer client written from docs/websocket.md (raw frames allowed)
- ``settlement``: compiled contracts, chains and trade generation of the settlement tests
- ``page``: Debian's Chromium under Playwright and the operator page helpers
- ``pgproc``: helpers around embedded PostgreSQL processes (pids, kills)

The pytest fixtures built on these live in tests/conftest.py (and tests/e2e/conftest.py):
test modules import helpers from here, never fixtures.
"""
