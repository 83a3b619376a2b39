"""Voltbourse clients: SDK, bots, community demo data."""
