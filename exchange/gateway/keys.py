"""Typed keys of the objects the aiohttp application shares with its handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from exchange.runtime.config import Settings
    from exchange.runtime.members import MemberRegistry
    from exchange.gateway.metrics import Metrics
    from exchange.runtime.service import Market
    from exchange.gateway.feed import OperatorFeed
    from exchange.gateway.marketdata import MarketData
    from exchange.gateway.page import PageSessions

MARKET: web.AppKey[Market] = web.AppKey("market")
SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
MEMBERS: web.AppKey[MemberRegistry] = web.AppKey("members")
MARKET_DATA: web.AppKey[MarketData] = web.AppKey("market_data")
SOCKETS: web.AppKey[set] = web.AppKey("sockets")  # open peer WebSockets, closed on shutdown
# Extension request handlers: message type -> ``async def handler(session, msg)``.
# Subsystems (settlement proofs, flexibility) register theirs at app build time;
# the session calls them for authenticated requests of that type.
WS_HANDLERS: web.AppKey[dict] = web.AppKey("ws_handlers")
# The operator page (exchange/gateway/page.py): the feed hub any subsystem may publish to
# (``app[OPERATOR_FEED].publish(topic, payload)``) and the page's login sessions.
OPERATOR_FEED: web.AppKey[OperatorFeed] = web.AppKey("operator_feed")
PAGE_SESSIONS: web.AppKey[PageSessions] = web.AppKey("page_sessions")
