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
The leaf encoding is in docs/settlement.md (:mod:`settlement.merkle`, pure).

The chain is read with two ``eth_call``s of the registry's view functions, encoded
here (eth-abi): no web3 and no contract compiler needed. ``chain`` may be a JSON-RPC
URL (plain HTTP POSTs), or, if you use web3 anyway, a ``web3.Web3`` or the
SettlementRegistry contract object.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address

from settlement.merkle import TradeRecord, leaf, verify

__all__ = ["fetch_proof", "leaf_from_proof", "verify_offline", "verify_on_chain"]

# The SettlementRegistry's view functions used here (contracts/src/SettlementRegistry.sol).
_BATCH_ROOT = keccak(text="batchRoot(uint64)")[:4]  # the batch's root; zero: not anchored
_VERIFY_FIELDS_TYPES = ("uint64", "uint64", "bytes32", "address", "address", "uint64", "int64", "bytes32",
                        "bytes32[]")
_VERIFY_FIELDS = keccak(text=f"verifyTradeFields({','.join(_VERIFY_FIELDS_TYPES)})")[:4]


async def fetch_proof(client, trade_id: int, *, timeout: float | None = None) -> dict:
    """The proof of ``trade_id`` (yours: the exchange refuses another member's trade with
    ``NOT_FOUND``, and one not anchored yet with ``NOT_ANCHORED``)."""
    return await client.request({"type": "trade_proof", "trade_id": trade_id}, timeout=timeout)


def _bytes(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str[2:] if hex_str.startswith("0x") else hex_str)


def leaf_from_proof(proof: dict) -> bytes:
    """Recompute the leaf from the proof's trade fields (never trust the given leaf)."""
    t = proof["trade"]
    rec = TradeRecord(proof["trade_id"], t["product_id"], t["buyer"], t["seller"], t["energy_wh"], t["price_ticks"])
    return leaf(rec, _bytes(t["signatures_hash"]))


def verify_offline(proof: dict) -> bool:
    """The leaf recomputed from the fields, folded with the proof, gives the root the exchange reports."""
    return verify(leaf_from_proof(proof), [_bytes(x) for x in proof["proof"]], _bytes(proof["root"]))


def verify_on_chain(proof: dict, chain: Any) -> bool:
    """:func:`verify_offline` against the root stored on chain for the batch (which must also be
    the reported one), and the contract's ``verifyTradeFields`` agrees.

    ``chain``: a JSON-RPC URL or a ``web3.Web3`` (the registry named in the proof, on the chain
    named in it: another chain id raises ``ValueError``), or a SettlementRegistry contract object
    (used as it is)."""
    if not hasattr(chain, "functions"):
        chain_id = chain.eth.chain_id if hasattr(chain, "eth") else int(_rpc(chain, "eth_chainId", []), 16)
        if chain_id != proof["chain_id"]:
            raise ValueError(f"the proof is for chain {proof['chain_id']}, this node is chain {chain_id}")
    siblings = [_bytes(x) for x in proof["proof"]]
    registry = proof["registry"]
    (onchain_root,) = decode(("bytes32",), _eth_call(chain, registry, _BATCH_ROOT, ("uint64",), (proof["batch_id"],)))
    t = proof["trade"]
    args = (proof["batch_id"], proof["trade_id"], _bytes(t["product_hash"]), t["buyer"], t["seller"], t["energy_wh"],
            t["price_ticks"], _bytes(t["signatures_hash"]), siblings)
    (fields_ok,) = decode(("bool",), _eth_call(chain, registry, _VERIFY_FIELDS, _VERIFY_FIELDS_TYPES, args))
    return (verify(leaf_from_proof(proof), siblings, onchain_root) and onchain_root == _bytes(proof["root"])
            and fields_ok)


def _eth_call(chain: Any, registry: str, selector: bytes, types: tuple[str, ...], args: tuple) -> bytes:
    """``eth_call`` of a registry function (a contract object: its own address and node)."""
    data = selector + encode(types, args)
    if hasattr(chain, "functions"):
        return bytes(chain.w3.eth.call({"to": chain.address, "data": data}))
    if hasattr(chain, "eth"):
        return bytes(chain.eth.call({"to": to_checksum_address(registry), "data": data}))
    return _bytes(_rpc(chain, "eth_call", [{"to": registry, "data": "0x" + data.hex()}, "latest"]))


def _rpc(url: str, method: str, params: list, timeout: float = 30) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        reply = json.loads(r.read())
    if reply.get("error") is not None:
        raise RuntimeError(f"{method} on {url}: {reply['error']}")
    return reply["result"]
