"""The test members' key pairs (deterministic) and the operator token of test servers."""

from __future__ import annotations

from eth_account import Account

KEYS = [Account.from_key(bytes([i + 1]) * 32) for i in range(8)]
OUTSIDER = Account.from_key(b"\x7f" * 32)  # a key no fixture registers
OPERATOR_TOKEN = "op-secret"
AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}  # the operator REST API's header
