"""The joint day-ahead auction with block orders recomputes only the hours a candidate block
touches (exchange.core.engine.MarketEngine._auction). This checks it against the rule stated
plainly: blocks in time priority, each kept if, with the blocks kept before it, EVERY product
clears with every kept block filled completely and every kept block's average price within
its limit (recomputing every product for every candidate)."""

from __future__ import annotations

import pytest

from exchange.core.engine import MarketEngine
from exchange.core.model import BlockResult, Tick
from exchange.tools.bench import record_auction

pytestmark = pytest.mark.unit


def _reference_kept(engine: MarketEngine, clears_at: int) -> set[int]:
    blocks = [b for b in engine.blocks.values()
              if engine._block_clearing_time(engine.products[b.product_ids[0]]) == clears_at]
    group = {p for b in blocks for p in b.product_ids}
    base = {p: engine._auction_sides(engine.products[p]) for p in group}
    kept: list = []

    def feasible(blocks: list) -> bool:
        prices = {}
        for p in group:
            on_p = [b for b in blocks if p in b.product_ids]
            c, _, short = engine._product_clearing(p, base[p], on_p)
            if short:
                return False
            prices[p] = c.price
        return all(engine._block_within_limit(b, prices) for b in blocks)

    for b in sorted(blocks, key=lambda b: b.order_id):
        if feasible([*kept, b]):
            kept.append(b)
    return {b.order_id for b in kept}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_incremental_block_selection_equals_the_plain_rule(seed):
    w, clears_at = record_auction(3000, seed, members=60)
    engine = MarketEngine(w.config)
    for c in [*w.setup, *w.commands]:
        engine.process(c)
    engine.process(Tick(clears_at - 1))  # everything due before the auction (expiries) is done
    assert engine.blocks, "the workload has block orders"
    want = _reference_kept(engine, clears_at)
    results = [e for e in engine.process(Tick(clears_at)) if isinstance(e, BlockResult)]
    assert {e.order_id for e in results if e.executed} == want
    assert 0 < len(want) < len(results)  # some blocks kept, some not: the rule is exercised
