"""The in-memory positions view keeps a trade the committed stream delivers while its
totals are still loading from the database at start (they were overwritten before)."""

from __future__ import annotations

import asyncio

import pytest

from exchange.core.ids import MemberId, OrderId, ProductId, TradeId
from exchange.core.model import Side, TradeEvent
from exchange.gateway.positions import PositionsView

pytestmark = pytest.mark.unit


class SlowTotals:
    """A trades store whose totals arrive after the event loop ran other work."""

    def __init__(self, rows: list[tuple[str, str, int, int, int]]) -> None:
        self.rows = rows
        self.asked: list[int] = []

    async def position_totals(self, upto: int) -> list[tuple[str, str, int, int, int]]:
        self.asked.append(upto)
        await asyncio.sleep(0.01)
        return self.rows


def _trade(seq: int, qty: int, price: int) -> TradeEvent:
    return TradeEvent(seq, 0, TradeId(seq), ProductId("p"), price, qty, OrderId(1), OrderId(2), MemberId("b"),
                      MemberId("s"), Side.BUY, 0, 0)


async def test_a_trade_arriving_while_the_totals_load_is_kept():
    view = PositionsView()
    store = SlowTotals([("b", "p", 100, 0, 100 * 50), ("s", "p", 0, 100, -100 * 50)])
    loading = asyncio.create_task(view.load(store, upto=10))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    view.trade(_trade(9, 5, 50))  # at or before the bootstrap seq: in the totals already
    view.trade(_trade(11, 7, 60))  # after it: from the stream
    await loading
    assert store.asked == [10]
    assert list(view.of("b")) == [{"product_id": "p", "bought": 107, "sold": 0, "net": 107, "payable": 100 * 50 + 7 * 60}]
    assert list(view.of("s")) == [{"product_id": "p", "bought": 0, "sold": 107, "net": -107, "payable": -(100 * 50 + 7 * 60)}]
