"""Identifiers of the domain, as distinct static types (``typing.NewType``: plain ``str``
and ``int`` at run time, so they cost nothing and encode to JSON as they are).

Wrap a value once where it enters the domain (a parsed message, a config value, a
journal row): ``MemberId(address)``, ``ProductId(text)``.
"""

from __future__ import annotations

from typing import NewType

#: A member: its Ethereum address (``0x`` + 40 hex digits, as registered).
MemberId = NewType("MemberId", str)
#: A delivery product, e.g. ``20261122T2300Z-60`` (see :func:`exchange.core.calendar.product_id_for`).
ProductId = NewType("ProductId", str)
#: An order, numbered by the engine from 1.
OrderId = NewType("OrderId", int)
#: A trade, numbered by the engine from 1.
TradeId = NewType("TradeId", int)

__all__ = ["MemberId", "OrderId", "ProductId", "TradeId"]
