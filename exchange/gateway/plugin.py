"""The subsystem plug-in API of the gateway.

A subsystem (settlement, flexibility, and every new one) is one :class:`Subsystem`
value, built in its own package and listed once in the composition root
(``exchange.tools.platform.SUBSYSTEMS``). It declares:

- ``routes``: its HTTP routes as :class:`~exchange.gateway.http.Route` values (the
  OpenAPI document is generated from them; ``operator``-tagged routes are guarded);
- ``ws_requests``: the peer messages it serves, each a pydantic model (a subclass of
  :class:`~exchange.protocol.messages.Request` with a ``type`` Literal) and an
  ``async def handler(app, member, msg) -> result``; the gateway parses, authenticates,
  rate-limits, answers ``{"type": "response", "id", "result"}`` with what the handler
  returns and maps a raised :class:`~exchange.protocol.errors.VoltbourseError` to an
  error frame; ``ws_pushes``: the models of what it sends to peers (schema only);
- ``migrations``: a folder of alembic revisions (its tables; it owns them);
- ``lifecycle``: an aiohttp ``cleanup_ctx`` generator (start before serving, stop
  after): build the subsystem's services from ``app[MARKET]``/``app[SETTINGS]`` there;
- ``commands``: ``add_commands(sub, bench_sub)`` for the ``voltbourse`` CLI;
- ``payout_source``: ``(pool, market_id) -> PayoutSource`` when settlement pays its payouts
  (exchange.runtime.ports): how the settlement process, which has no app, builds the same
  source the subsystem's lifecycle registers in ``PAYOUT_SOURCES``;
- ``enabled``: whether it runs with these settings (its messages and routes stay in
  the published schemas either way; a disabled subsystem's messages answer
  ``UNAVAILABLE`` and its routes are not served).

Services a subsystem may use from its handlers and lifecycle (public keys):
``exchange.gateway.keys`` (``MARKET``, ``SETTINGS``, ``MEMBERS``), ``METRICS``
(``exchange.gateway.metrics``: register a collector), ``OPERATOR_FEED``
(``exchange.gateway.feed``: publish a topic to the operator page) and ``PEERS``
(:class:`Peers`: push a message to a member's sessions).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from exchange.gateway.http import Route
from exchange.protocol.messages import CORE_PUSHES, CORE_REQUESTS, Push, Request, WireProtocol, message_type
from exchange.runtime.config import Settings

WsHandler = Callable[[web.Application, str, Any], Awaitable[Any]]
Lifecycle = Callable[[web.Application], AsyncIterator[None]]
AddCommands = Callable[[Any, Any], None]


@dataclass(frozen=True)
class WsRequest:
    """A peer request a subsystem serves: its message model and its handler."""

    model: type[Request]
    handler: WsHandler

    @property
    def type(self) -> str:
        return message_type(self.model)


def _always(settings: Settings) -> bool:
    return True


@dataclass(frozen=True)
class Subsystem:
    name: str
    summary: str
    routes: Sequence[Route] = ()
    ws_requests: Sequence[WsRequest] = ()
    ws_pushes: Sequence[type[Push]] = ()
    migrations: Path | None = None
    lifecycle: Lifecycle | None = None
    commands: AddCommands | None = None
    payout_source: Callable[[Any, str], Any] | None = None
    enabled: Callable[[Settings], bool] = _always


def wire_protocol(subsystems: Sequence[Subsystem]) -> WireProtocol:
    """The core messages plus every subsystem's (enabled or not)."""
    return WireProtocol([*CORE_REQUESTS, *(r.model for s in subsystems for r in s.ws_requests)],
                        [*CORE_PUSHES, *(m for s in subsystems for m in s.ws_pushes)])


def migration_locations(subsystems: Sequence[Subsystem]) -> list[Path]:
    return [s.migrations for s in subsystems if s.migrations is not None]


def add_cli_commands(subsystems: Sequence[Subsystem], sub: argparse._SubParsersAction,
                     bench_sub: argparse._SubParsersAction) -> None:
    for s in subsystems:
        if s.commands is not None:
            s.commands(sub, bench_sub)
