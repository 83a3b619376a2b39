"""Deterministic member keys from a seed (bots, load tests, demos: reruns reuse the same members).

Never use these for real money: anyone who knows the seed knows the keys.
"""

from __future__ import annotations

import hashlib

from eth_account import Account
from eth_account.signers.local import LocalAccount

__all__ = ["member_key", "member_keys"]


def member_key(seed: str | int, index: int) -> LocalAccount:
    """The key pair of member ``index`` for ``seed``: SHA-256 of ``voltbourse:<seed>:<index>``."""
    for bump in range(1000):
        raw = hashlib.sha256(f"voltbourse:{seed}:{index}:{bump}".encode()).digest()
        n = int.from_bytes(raw, "big")
        if 0 < n < 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141:  # secp256k1 order
            return Account.from_key(raw)
    raise RuntimeError("unreachable")


def member_keys(seed: str | int, count: int, start: int = 0) -> list[LocalAccount]:
    return [member_key(seed, i) for i in range(start, start + count)]
