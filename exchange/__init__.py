"""Voltbourse: a peer-to-peer energy exchange for energy communities."""

__version__ = "0.1.0"
