"""The exchange's edges for people and programs: the peer WebSocket API, the
operator REST API, public market data and metrics (aiohttp)."""
