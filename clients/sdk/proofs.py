"""Trade proofs for SDK clients: fetch the Merkle proof of one of your trades and
check it against the chain yourself.

    from clients.sdk.client import VoltbourseClient
    from clients.sdk.proofs import fetch_proof, verify_on_chain

    async with VoltbourseClient(url, key) as c:
        proof = await fetch_proof(c, trade_id=42)            # WebSocket `trade_proof`
        ok = verify_on_chain(proof, "http://127.0.0.1:8545")  # your own node (JSON-RPC)

``verify_offline(proof)`` recomputes the leaf from the trade's fields and folds the
proof up to the root the exchange reports; ``verify_on_chain`` additionally reads the
batch's root from the SettlementRegistry on chain and asks the contract
(``verifyTradeFields``, which builds the leaf from the fields itself). Only the
second proves the trade is anchored: the first proves the exchange's root contains it.
The leaf encoding is in docs/settlement.md.
"""

from __future__ import annotations

from typing import Any


async def fetch_proof(client, trade_id: int, *, timeout: float | None = None) -> dict:
    """The proof of ``trade_id`` (yours: the exchange refuses another member's trade with
    ``NOT_FOUND``, and one not anchored yet with ``NOT_ANCHORED``)."""
    return await client.request({"type": "trade_proof", "trade_id": trade_id}, timeout=timeout)


def verify_offline(proof: dict) -> bool:
    from settlement.proofs import verify_proof

    return verify_proof(proof)


def verify_on_chain(proof: dict, chain: Any) -> bool:
    """``chain``: a JSON-RPC URL, a ``web3.Web3``, or a SettlementRegistry contract object."""
    from settlement.proofs import verify_proof

    return verify_proof(proof, registry_contract(proof, chain))


def registry_contract(proof: dict, chain: Any):
    """The SettlementRegistry named in ``proof`` on ``chain`` (URL, Web3 or contract)."""
    if hasattr(chain, "functions"):
        return chain
    from web3 import HTTPProvider, Web3

    from settlement.compiler import compile_contracts

    w3 = chain if isinstance(chain, Web3) else Web3(HTTPProvider(chain))
    if w3.eth.chain_id != proof["chain_id"]:
        raise ValueError(f"the proof is for chain {proof['chain_id']}, this node is chain {w3.eth.chain_id}")
    abi = compile_contracts()["SettlementRegistry"].abi
    return w3.eth.contract(address=proof["registry"], abi=abi)
