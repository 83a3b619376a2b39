"""Net amounts per member of a batch of trades (pure).

A trade of ``energy_wh`` at ``price_ticks`` moves ``energy_wh * price_ticks`` money
units (1e-8 EUR) from the buyer to the seller. A member's net amount in a batch
is what it receives minus what it pays: negative for net buyers, positive for net
sellers. Negative prices move money the other way, by the same formula. The
amounts of a batch sum to zero exactly; members netting to zero are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from eth_utils import to_checksum_address

from settlement.merkle import TradeRecord


@lru_cache(maxsize=65_536)
def _member(address: str) -> str:
    """One spelling per member (EIP-55), so differently-cased ids of one address net together."""
    return to_checksum_address(address)


def net_amounts(trades: Iterable[TradeRecord]) -> dict[str, int]:
    nets: dict[str, int] = {}
    for t in trades:
        v = t.value
        buyer, seller = _member(t.buyer), _member(t.seller)
        nets[buyer] = nets.get(buyer, 0) - v
        nets[seller] = nets.get(seller, 0) + v
    out = {m: a for m, a in sorted(nets.items()) if a != 0}
    assert sum(out.values()) == 0
    return out
