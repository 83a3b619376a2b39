"""Acknowledgement: after a command's commit, the one answer to the request that sent
it (``response`` or ``error`` with the request's id), built from the command's own
events (``exchange.core.model.command_outcome``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from exchange.core.model import (
    BlockAccepted,
    CancelAllDone,
    Duplicate,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderModified,
    Rejected,
    TradeEvent,
    command_outcome,
)
from exchange.gateway.orderstatus import BLOCK
from exchange.runtime.journal import Entry


class Peer(Protocol):
    """What the output side needs of a peer session (exchange.gateway.session.Session)."""

    @property
    def member(self) -> str | None: ...

    def send(self, msg: dict) -> None: ...

    def send_raw(self, data: str) -> None: ...

    def close(self, code: int, reason: str, *, flush: bool = False) -> None: ...


@dataclass(slots=True)
class Pending:
    """The origin of a command: which session asked, with which request id, when."""

    session: Peer
    request_id: Any
    kind: str
    received_ns: int


class Acknowledger:
    """Answers each command's request after its commit. ``order_state(member, order_id)``
    (the committed order-status view) fills a duplicate's answer with the order's state."""

    def __init__(self, metrics: Any = None, order_state: Callable[[str, int], dict | None] | None = None,
                 block_remaining: Callable[[int], int | None] | None = None) -> None:
        self.metrics = metrics
        self.order_state = order_state
        self.block_remaining = block_remaining

    def on_commit(self, entries: list[Entry]) -> None:
        now_ns = time.perf_counter_ns()
        for e in entries:
            origin = e.origin
            if origin is not None and type(origin) is Pending:
                origin.session.send(response(origin, e.events, self.order_state, self.block_remaining))
                if self.metrics is not None:
                    self.metrics.observe_command_latency((now_ns - origin.received_ns) / 1e9)


def response(p: Pending, events: list[Event], order_state: Callable[[str, int], dict | None] | None = None,
             block_remaining: Callable[[int], int | None] | None = None) -> dict:
    first = command_outcome(events)
    if isinstance(first, Rejected):
        return {"type": "error", "id": p.request_id, "code": first.reason, "message": first.detail}
    if isinstance(first, Duplicate):
        if first.order_id is None:
            return {"type": "error", "id": p.request_id, "code": first.reason,
                    "message": f"duplicate client_order_id {first.client_order_id!r}: the original order "
                               f"was rejected ({first.reason})"}
        result: dict[str, Any] = {"order_id": first.order_id, "duplicate": True, "original_seq": first.original_seq}
        state = order_state(first.member, first.order_id) if order_state is not None else None
        if state is not None:  # the order as it is now (it may have traded or closed since)
            result.update({k: state[k] for k in ("remaining", "filled", "fills", "seq") if k in state})
            # open: as the original answer said it (a block waits for its auction: pending)
            result["status"] = (("pending" if state["tif"] == BLOCK else "resting") if state["status"] == "open"
                                else state["status"])
            if state.get("reason"):
                result["reason"] = state["reason"]
        return {"type": "response", "id": p.request_id, "result": result}
    if p.kind == "cancel_all":
        done = next(ev for ev in events if isinstance(ev, CancelAllDone))
        return {"type": "response", "id": p.request_id, "result": {"cancelled": done.cancelled}}
    if isinstance(first, (OrderAccepted, OrderModified)):
        return {"type": "response", "id": p.request_id, "result": order_outcome(first, events)}
    if isinstance(first, BlockAccepted):
        return {"type": "response", "id": p.request_id,
                "result": {"order_id": first.order_id, "status": "pending", "product_ids": first.product_ids,
                           "seq": first.seq}}
    if isinstance(first, OrderCancelled):
        # a block's remaining over all its hours (the engine's event counts one)
        total = block_remaining(first.order_id) if block_remaining is not None else None
        return {"type": "response", "id": p.request_id,
                "result": {"order_id": first.order_id, "status": "cancelled",
                           "remaining": first.remaining if total is None else total}}
    return {"type": "response", "id": p.request_id, "result": {"seq": events[-1].seq}}


def order_outcome(first: OrderAccepted | OrderModified, events: list[Event]) -> dict:
    """Status, remaining, fills of the order a place/modify concerns, from its events."""
    oid = first.order_id
    fills = []
    remaining = first.quantity
    status = "resting"
    reason = None
    for ev in events:
        if isinstance(ev, TradeEvent) and (ev.buy_order_id == oid or ev.sell_order_id == oid):
            fills.append({"trade_id": ev.trade_id, "price": ev.price, "quantity": ev.quantity})
            remaining = ev.buy_remaining if ev.buy_order_id == oid else ev.sell_remaining
        elif isinstance(ev, OrderCancelled) and ev.order_id == oid:
            status, reason, remaining = "cancelled", ev.reason.value, ev.remaining
    if status == "resting" and remaining == 0:
        status = "filled"
    out: dict[str, Any] = {"order_id": oid, "status": status, "remaining": remaining,
                           "filled": sum(f["quantity"] for f in fills), "fills": fills, "seq": first.seq}
    if reason:
        out["reason"] = reason
    if isinstance(first, OrderModified):
        out["priority_kept"] = first.priority_kept
        out["price"] = first.price
    return out
