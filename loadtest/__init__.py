"""Locust load tests of the peer WebSocket API (see docs/loadtest.md)."""
