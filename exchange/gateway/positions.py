"""Members' positions as of the last committed trade, in memory: per member and product,
energy bought and sold and the money payable (bought value - sold value, Wh x ticks).
Loaded once from the trades projection at start, then kept from the committed stream, so
a member's ``positions`` request costs no database work and never competes with commits."""

from __future__ import annotations

from collections.abc import Iterator

from exchange.core.model import TradeEvent
from exchange.runtime.trades import TradeStore


class PositionsView:
    def __init__(self) -> None:
        # member -> product -> [bought Wh, sold Wh, payable]
        self.by_member: dict[str, dict[str, list[int]]] = {}
        self.seq = 0

    async def load(self, trades: TradeStore, upto: int) -> None:
        """Every committed trade with ``seq <= upto`` (the stream delivers the later ones).
        Trades the stream delivers while the totals load are kept: the totals are added."""
        self.seq = upto
        for member, pid, bought, sold, payable in await trades.position_totals(upto):
            cell = self._cell(member, pid)
            cell[0] += bought
            cell[1] += sold
            cell[2] += payable

    def _cell(self, member: str, pid: str) -> list[int]:
        products = self.by_member.get(member)
        if products is None:
            products = self.by_member[member] = {}
        cell = products.get(pid)
        if cell is None:
            cell = products[pid] = [0, 0, 0]
        return cell

    def trade(self, ev: TradeEvent) -> None:
        if ev.seq <= self.seq:
            return
        value = ev.quantity * ev.price
        b = self._cell(ev.buyer, ev.product_id)
        b[0] += ev.quantity
        b[2] += value
        s = self._cell(ev.seller, ev.product_id)
        s[1] += ev.quantity
        s[2] -= value

    def of(self, member: str, product_id: str | None = None, after: str | None = None) -> Iterator[dict[str, int | str]]:
        """The member's positions in product-id order (one product, or those after ``after``)."""
        products = self.by_member.get(member, {})
        if product_id is not None:
            pids = [product_id] if product_id in products else []
        else:
            pids = sorted(p for p in products if after is None or p > after)
        for pid in pids:
            bought, sold, payable = products[pid]
            yield {"product_id": pid, "bought": bought, "sold": sold, "net": bought - sold, "payable": payable}
