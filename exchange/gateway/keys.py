"""Typed keys of the runtime objects the aiohttp application shares with its handlers
and with subsystems. Keys of gateway objects live next to their class
(``METRICS`` in metrics.py, ``MARKET_DATA`` in marketdata.py, ``OPERATOR_FEED`` in
feed.py, ``PAGE_SESSIONS`` in page.py, ``PEERS``/``PROTOCOL``/``WS_REQUESTS`` here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from exchange.protocol.messages import WireProtocol
from exchange.runtime.config import Settings
from exchange.runtime.members import MemberRegistry
from exchange.runtime.ports import BillItemSource, OutlookSource, PayoutSource
from exchange.runtime.service import Market

MARKET: web.AppKey[Market] = web.AppKey("market", Market)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
MEMBERS: web.AppKey[MemberRegistry] = web.AppKey("members", MemberRegistry)
SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")  # open peer WebSockets
# The peer protocol of this app (core + every subsystem's messages) and the handlers of
# the subsystem requests that are served (message type -> exchange.gateway.plugin.WsRequest).
PROTOCOL: web.AppKey[WireProtocol] = web.AppKey("protocol", WireProtocol)
WS_REQUESTS: web.AppKey[dict[str, Any]] = web.AppKey("ws_requests")
# Payout sources (exchange.runtime.ports.PayoutSource): a subsystem that owes members money
# appends its source; settlement pays them on chain. A list, so the order of lifecycles
# does not matter.
PAYOUT_SOURCES: web.AppKey[list[PayoutSource]] = web.AppKey("payout_sources")
# Bill item sources (exchange.runtime.ports.BillItemSource): a subsystem whose payments to
# members belong on their bills appends its source; metering puts them on the bills.
BILL_ITEM_SOURCES: web.AppKey[list[BillItemSource]] = web.AppKey("bill_item_sources")
# Outlook sources (exchange.runtime.ports.OutlookSource): a subsystem that can forecast a
# member's grid exchange and tariff appends its source; the portal's trading agent plans with it.
OUTLOOK_SOURCES: web.AppKey[list[OutlookSource]] = web.AppKey("outlook_sources")


@dataclass(frozen=True)
class PeerAuth:
    """A peer WebSocket connection signed in before its first frame (by its upgrade request,
    e.g. a member portal session cookie): ``member`` (checksum address), ``via`` (what the
    hello's ``auth`` says, e.g. ``"portal"``) and ``ref``, the authenticator's own reference
    of what signed it in (e.g. a hash of the portal session), so that it can end those
    connections later (:func:`exchange.gateway.session.end_peer_sessions`)."""

    member: str
    via: str
    ref: str = ""


#: ``async (request) -> PeerAuth | None``: who the upgrade request of ``/ws`` is signed in as.
PeerAuthenticator = Callable[[web.Request], Awaitable[PeerAuth | None]]
# Peer authenticators: a subsystem that can sign a WebSocket in from its upgrade request appends
# one in its lifecycle; the /ws handler asks them in order, the first answer counts. Each must
# refuse what a cross-site page could send (check the Origin). None of them: the hello's login.
PEER_AUTHENTICATORS: web.AppKey[list[PeerAuthenticator]] = web.AppKey("peer_authenticators")

# Where this market's app is mounted: "" for the deployment's default market (its routes at
# the root), "/m/<market_id>" for a community the platform hosts (exchange.gateway.tenants).
# Pages and peer sign-in build their own URLs from it.
BASE_PATH: web.AppKey[str] = web.AppKey("base_path", str)
# sha256 digests of further operator tokens this market accepts besides the platform
# operator token (settings.operator_token): its community manager's (exchange.gateway.tenants).
OPERATOR_TOKEN_HASHES: web.AppKey[set[bytes]] = web.AppKey("operator_token_hashes")  # mutable: a new token replaces the old
# Called (awaited, in order) when the market's operator tokens are replaced: whatever the old
# ones opened ends (the operator page's sessions register here).
CREDENTIALS_REVOKED: web.AppKey[list[Callable[[], Awaitable[None]]]] = web.AppKey("credentials_revoked")
