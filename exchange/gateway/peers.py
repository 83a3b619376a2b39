"""The authenticated peer sessions of the gateway, by member: market data sends
execution reports through it and subsystems push their own messages with
``app[PEERS].send(member, msg)``."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web


class Pusher(Protocol):
    def send(self, msg: dict) -> None: ...


class Peers:
    """The authenticated peer sessions by member: subsystems push with :meth:`send`."""

    def __init__(self) -> None:
        self.by_member: dict[str, set[Any]] = {}

    def attach(self, member: str, session: Any) -> None:
        self.by_member.setdefault(member, set()).add(session)

    def detach(self, member: str, session: Any) -> None:
        group = self.by_member.get(member)
        if group is not None:
            group.discard(session)
            if not group:
                del self.by_member[member]

    def sessions(self, member: str) -> tuple[Any, ...]:
        return tuple(self.by_member.get(member, ()))

    def send(self, member: str, msg: dict) -> None:
        """Send ``msg`` to every session of ``member`` (none: dropped)."""
        for s in self.sessions(member):
            s.send(msg)


PEERS: web.AppKey[Peers] = web.AppKey("peers", Peers)

__all__ = ["PEERS", "Peers", "Pusher"]
