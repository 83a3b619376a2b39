"""Peer identity: login by signing a server challenge, and EIP-712 signed orders.

* Login: on connect the server offers a Sign-In with Ethereum (EIP-4361) nonce
  and fields (:mod:`exchange.protocol.siwe`); the member signs the message with
  ``personal_sign`` (EIP-191, :func:`sign_login`) and sends it with the signature;
  the server checks the message (domain, chain, nonce, times), recovers the signer
  (:func:`recover_login`) and binds the session to the message's address if it is a
  registered, active member. DEPRECATED, for one more version: the challenge text
  (:func:`new_challenge`) signed the same way, sent with the address.
* Orders may carry an EIP-712 signature over their fields (the typed data below)
  and a nonce; the server verifies that the session's member signed exactly this
  order. The engine keeps the signature with the order (and so in the journal)
  and refuses a nonce that is not above the member's last one (replay).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_utils import keccak, to_checksum_address

#: EIP-712 typed data (``types``, ``primaryType``, ``domain``, ``message``): a JSON object.
TypedData = dict[str, Any]
#: A private key as eth-account takes it: raw bytes (``LocalAccount.key``) or hex text.
PrivateKey = bytes | str

EIP712_NAME = "Voltbourse"
EIP712_VERSION = "1"

ORDER_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
    ],
    "Order": [
        {"name": "market", "type": "string"},
        {"name": "product", "type": "string"},
        {"name": "side", "type": "string"},
        {"name": "price", "type": "int256"},
        {"name": "quantity", "type": "uint256"},
        {"name": "tif", "type": "string"},
        {"name": "clientOrderId", "type": "string"},
        {"name": "nonce", "type": "uint256"},
    ],
}

#: An order with conditions (post-only, good-till-date, minimum quantity) is signed as a
#: ``ConditionalOrder``: the ``Order`` fields and the conditions, so none can be added or
#: changed in transit. An order without conditions keeps the ``Order`` type.
CONDITIONAL_ORDER_TYPES = {
    "EIP712Domain": ORDER_TYPES["EIP712Domain"],
    "ConditionalOrder": [
        *ORDER_TYPES["Order"],
        {"name": "postOnly", "type": "bool"},
        {"name": "expireTime", "type": "uint256"},  # Unix seconds, 0 for none
        {"name": "minQuantity", "type": "uint256"},  # 0 for none
    ],
}

#: A block order: its hours as one comma-separated string of product ids, in order.
BLOCK_ORDER_TYPES = {
    "EIP712Domain": ORDER_TYPES["EIP712Domain"],
    "BlockOrder": [
        {"name": "market", "type": "string"},
        {"name": "products", "type": "string"},
        {"name": "side", "type": "string"},
        {"name": "price", "type": "int256"},
        {"name": "quantity", "type": "uint256"},
        {"name": "clientOrderId", "type": "string"},
        {"name": "nonce", "type": "uint256"},
    ],
}


#: A member's delegation to a trading agent: the agent's key (``delegate``) may trade for the
#: member in ``market`` within these limits until ``expiry`` (Unix seconds). Prices in ticks
#: (0.01 EUR/MWh), energy in Wh, money in units of 1e-8 EUR; ``excludedHours``: the local
#: delivery hours it must not trade, comma-separated ("" for none).
DELEGATION_TYPES = {
    "EIP712Domain": ORDER_TYPES["EIP712Domain"],
    "Delegation": [
        {"name": "market", "type": "string"},
        {"name": "delegate", "type": "address"},
        {"name": "strategy", "type": "string"},
        {"name": "maxBuyPrice", "type": "int256"},
        {"name": "minSellPrice", "type": "int256"},
        {"name": "maxOrderWh", "type": "uint256"},
        {"name": "dailyBudget", "type": "uint256"},
        {"name": "batteryReserveWh", "type": "uint256"},
        {"name": "batteryCapacityWh", "type": "uint256"},
        {"name": "batteryPowerW", "type": "uint256"},
        {"name": "excludedHours", "type": "string"},
        {"name": "expiry", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
    ],
}


def delegation_typed_data(chain_id: int, message: dict[str, Any]) -> TypedData:
    """The EIP-712 typed data of a delegation (``message`` with the ``Delegation`` fields)."""
    return {"types": DELEGATION_TYPES, "primaryType": "Delegation", "domain": domain(chain_id), "message": message}


def typed_data_hash(typed: TypedData) -> str:
    """The EIP-712 hash of typed data (0x hex): what is signed, an id for what was signed."""
    msg = encode_typed_data(full_message=typed)
    digest: bytes = keccak(b"\x19" + msg.version + msg.header + msg.body)
    return "0x" + digest.hex()


def domain(chain_id: int) -> dict[str, str | int]:
    return {"name": EIP712_NAME, "version": EIP712_VERSION, "chainId": chain_id}


def new_challenge(market_id: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return (f"Voltbourse login\nMarket: {market_id}\nNonce: {secrets.token_hex(16)}\n"
            f"Issued: {now.isoformat(timespec='seconds')}")


def recover_login(challenge: str, signature: str) -> str:
    """The checksum address that signed ``challenge`` (a SIWE message or the deprecated
    challenge) with EIP-191 ``personal_sign`` (raises ValueError on a bad signature)."""
    try:
        signer: str = Account.recover_message(encode_defunct(text=challenge), signature=signature)
    except Exception as exc:  # eth-account raises several types for malformed signatures
        raise ValueError(f"invalid signature: {exc}") from None
    return signer


def sign_login(challenge: str, private_key: PrivateKey) -> str:
    """Client side (SDK, tests, bench): the EIP-191 signature of a login text (a SIWE
    message, or the deprecated challenge)."""
    sig: str = Account.sign_message(encode_defunct(text=challenge), private_key).signature.hex()
    return "0x" + sig.removeprefix("0x")


def order_typed_data(market_id: str, chain_id: int, *, product_id: str, side: str, price: int, quantity: int,
                     tif: str, client_order_id: str | None, nonce: int, post_only: bool = False,
                     expire_time: int | None = None, min_quantity: int | None = None) -> TypedData:
    """The EIP-712 typed data of an order: ``Order``, or ``ConditionalOrder`` when it has a
    condition (``expire_time`` in Unix seconds)."""
    message: dict[str, Any] = {
        "market": market_id,
        "product": product_id,
        "side": side,
        "price": price,
        "quantity": quantity,
        "tif": tif,
        "clientOrderId": client_order_id or "",
        "nonce": nonce,
    }
    if not (post_only or expire_time is not None or min_quantity is not None):
        return {"types": ORDER_TYPES, "primaryType": "Order", "domain": domain(chain_id), "message": message}
    message.update(postOnly=post_only, expireTime=expire_time or 0, minQuantity=min_quantity or 0)
    return {"types": CONDITIONAL_ORDER_TYPES, "primaryType": "ConditionalOrder", "domain": domain(chain_id),
            "message": message}


def block_order_typed_data(market_id: str, chain_id: int, *, product_ids: list[str], side: str, price: int,
                           quantity: int, client_order_id: str | None, nonce: int) -> TypedData:
    return {"types": BLOCK_ORDER_TYPES, "primaryType": "BlockOrder", "domain": domain(chain_id),
            "message": {"market": market_id, "products": ",".join(product_ids), "side": side, "price": price,
                        "quantity": quantity, "clientOrderId": client_order_id or "", "nonce": nonce}}


def recover_order_signer(typed: TypedData, signature: str) -> str:
    try:
        signer: str = Account.recover_message(encode_typed_data(full_message=typed), signature=signature)
    except Exception as exc:
        raise ValueError(f"invalid order signature: {exc}") from None
    return signer


def sign_order(typed: TypedData, private_key: PrivateKey) -> str:
    """Client side: EIP-712 signature of an order's typed data."""
    sig: str = Account.sign_message(encode_typed_data(full_message=typed), private_key).signature.hex()
    return "0x" + sig.removeprefix("0x")


def checksum(address: str) -> str:
    return to_checksum_address(address)
