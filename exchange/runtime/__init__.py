"""The market runtime: clock, settings, PostgreSQL, the journal, the single-writer
MarketRuntime, the member registry, the committed-stream port. Knows nothing of HTTP."""
