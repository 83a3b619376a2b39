"""Pure, deterministic engine core: no I/O, no clock reads, time is an input.

Given the same command stream, :class:`~exchange.core.engine.MarketEngine`
produces the same event stream and the same state hash.
"""
