"""Market and product summaries shared by the public routes and the operator API."""

from __future__ import annotations

from exchange.core.units import iso


def market_summary(market, *, with_hash: bool = False) -> dict:
    """The market's summary; ``with_hash`` adds the engine's state hash (O(state) to compute:
    the operator's view only, never on every anonymous request)."""
    e, rt = market.engine, market.runtime
    out = {
        "market_id": e.config.market_id,
        "config": e.config.to_dict(),
        "seq": rt.committed_seq,
        "commands": rt.cmd_seq,
        "halted": e.halted,
        "now": iso(e.now) if e.now else None,
    }
    if with_hash:
        out["state_hash"] = e.state_hash()
    return out


def product_summary(pb, best_bid: int | None, best_ask: int | None, state: str | None = None) -> dict:
    return {**pb.product.to_dict(), "state": state or pb.state.value, "best_bid": best_bid, "best_ask": best_ask}


def products_sorted(engine) -> list:
    return sorted(engine.products.values(), key=lambda pb: pb.product.start_us)
