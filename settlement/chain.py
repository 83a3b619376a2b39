"""Chain access with web3: the in-process py-evm chain (eth-tester) by default, any
JSON-RPC node when ``chain_rpc_url`` is set.

Every transaction is built with explicit gas, signed locally by the operator key and
sent raw, so its hash is known (and recorded) before it leaves the process: the
worker's exactly-once protocol depends on that. Events are read from receipts, and
chain-initiated events (deposits, withdrawal requests) from bounded block ranges
after a cursor, never by scanning the whole chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from eth_typing import HexStr
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.types import Wei

from exchange.runtime.config import Settings
from settlement.compiler import Artifact, load_artifacts

log = logging.getLogger(__name__)

#: gas for anchorBatch: a base plus a storage update per member (cold slot, event),
#: generous so a batch never runs out; unused gas is not charged.
ANCHOR_GAS_BASE = 150_000
ANCHOR_GAS_PER_MEMBER = 40_000
DEPLOY_GAS = 3_000_000
CALL_GAS = 200_000


class ChainError(RuntimeError):
    """The chain is unreachable or refused a transaction."""


@dataclass(frozen=True)
class Deployment:
    token: str
    registry: str
    block: int


class Chain:
    """One connection to a chain plus the operator's signing key.

    The contracts (:attr:`token`, :attr:`registry`) exist once :meth:`deploy` or
    :meth:`attach` ran; before that, using them raises a RuntimeError."""

    def __init__(self, w3: Web3, operator: LocalAccount, *, in_process: bool, tester: EthereumTester | None = None,
                 artifacts: dict[str, Artifact] | None = None) -> None:
        self.w3 = w3
        self.operator = operator
        #: the chain is the in-process EVM (eth-tester), not a JSON-RPC node
        #: (``Chain.in_process`` is the constructor of such a chain)
        self.is_in_process = in_process
        self.tester = tester
        # the contracts compiled at build time (package data); never compiles nor runs node
        self.artifacts = artifacts or load_artifacts()
        self.chain_id = w3.eth.chain_id
        self.genesis_hash = "0x" + bytes(w3.eth.get_block(0)["hash"]).hex()
        self._nonce: int | None = None
        self._token: Contract | None = None
        self._registry: Contract | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def in_process(cls, operator_key: str | None = None, artifacts: dict[str, Artifact] | None = None) -> Chain:

        backend = PyEVMBackend()
        tester = EthereumTester(backend)
        w3 = Web3(EthereumTesterProvider(tester))
        # eth-tester charges eth_call to its sender's balance: read from the faucet account,
        # so reads keep working whatever the operator's balance
        w3.eth.default_account = w3.eth.accounts[-1]
        key = operator_key or backend.account_keys[0].to_hex()
        chain = cls(w3, Account.from_key(key), in_process=True, tester=tester, artifacts=artifacts)
        if operator_key:  # a key of our own: fund it from the tester's faucet account
            chain.faucet(chain.operator.address, 10**21)
        return chain

    @classmethod
    def rpc(cls, url: str, operator_key: str, artifacts: dict[str, Artifact] | None = None) -> Chain:

        w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))
        return cls(w3, Account.from_key(operator_key), in_process=False, artifacts=artifacts)

    @classmethod
    def from_settings(cls, settings: Settings, artifacts: dict[str, Artifact] | None = None) -> Chain:
        key = settings.chain_operator_key.get_secret_value() if settings.chain_operator_key else None
        if settings.chain_rpc_url:
            if not key:
                raise ValueError("chain_rpc_url needs chain_operator_key (VOLTBOURSE_CHAIN_OPERATOR_KEY)")
            return cls.rpc(settings.chain_rpc_url, key, artifacts)
        return cls.in_process(key, artifacts)

    def faucet(self, to: str, wei: int) -> None:
        """In process only: send ether from the tester's funded account (gas money)."""
        if self.tester is None:
            raise ChainError("no faucet on an external chain")
        # the last tester account: never the operator (its nonces are ours to count)
        self.w3.eth.send_transaction({"from": self.w3.eth.accounts[-1], "to": to, "value": Wei(wei), "gas": 21_000})

    # ------------------------------------------------------------------ contracts
    def deploy(self) -> Deployment:
        token = self._deploy("EuroCredit", self.operator.address)
        registry = self._deploy("SettlementRegistry", token, self.operator.address)
        self.attach(token, registry)
        return Deployment(token, registry, self.w3.eth.block_number)

    def _deploy(self, name: str, *args) -> str:
        art = self.artifacts[name]
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        receipt = self.transact(factory.constructor(*args), DEPLOY_GAS)
        return receipt["contractAddress"]

    def attach(self, token: str, registry: str) -> None:
        self._token = self.w3.eth.contract(address=Web3.to_checksum_address(token),
                                           abi=self.artifacts["EuroCredit"].abi)
        self._registry = self.w3.eth.contract(address=Web3.to_checksum_address(registry),
                                              abi=self.artifacts["SettlementRegistry"].abi)

    @property
    def attached(self) -> bool:
        """True once the contracts are deployed or attached."""
        return self._token is not None and self._registry is not None

    @property
    def token(self) -> Contract:
        """The EuroCredit (vEUR) contract."""
        if self._token is None:
            raise RuntimeError("settlement contracts not deployed yet: Chain.deploy() or Chain.attach() first")
        return self._token

    @property
    def registry(self) -> Contract:
        """The SettlementRegistry contract."""
        if self._registry is None:
            raise RuntimeError("settlement contracts not deployed yet: Chain.deploy() or Chain.attach() first")
        return self._registry

    def has_code(self, address: str) -> bool:
        return len(self.w3.eth.get_code(Web3.to_checksum_address(address))) > 0

    # ------------------------------------------------------------------ transactions
    def sign(self, call, gas: int) -> tuple[bytes, str]:
        """Build and sign ``call`` (a contract function or constructor) with the next
        operator nonce; returns (raw transaction, 0x tx hash). Nothing is sent."""
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.operator.address, "pending")
        tx = call.build_transaction({"from": self.operator.address, "nonce": self._nonce, "gas": gas,
                                     "gasPrice": self.w3.eth.gas_price, "chainId": self.chain_id})
        signed = self.operator.sign_transaction(tx)
        self._nonce += 1
        return bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex()

    def reset_nonce(self) -> None:
        """Forget the local nonce (re-read from the chain before the next signature)."""
        self._nonce = None

    def send_raw(self, raw: bytes) -> str:
        try:
            return "0x" + bytes(self.w3.eth.send_raw_transaction(raw)).hex()
        except Exception as exc:  # noqa: BLE001 - any provider error is a chain error here
            self._nonce = None  # re-read it: the transaction may or may not have been taken
            raise ChainError(f"send failed: {exc}") from exc

    def receipt(self, tx_hash: str, timeout: float = 30.0) -> Any | None:
        """The receipt, waiting up to ``timeout`` s; None when the chain does not know the tx."""

        try:
            if timeout <= 0:
                return self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            return self.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=timeout, poll_latency=0.05)
        except (TransactionNotFound, TimeExhausted):
            return None

    def transact(self, call, gas: int) -> Any:
        """Sign, send, wait; raises ChainError when the transaction reverts."""
        raw, tx_hash = self.sign(call, gas)
        self.send_raw(raw)
        receipt = self.receipt(tx_hash)
        if receipt is None:
            raise ChainError(f"no receipt for {tx_hash}")
        if receipt["status"] != 1:
            raise ChainError(f"transaction {tx_hash} reverted")
        return receipt

    def anchor_call(self, batch_id: int, root: bytes, trade_count: int, first_seq: int, last_seq: int,
                    nets: list[tuple[str, int]]):
        members = [Web3.to_checksum_address(m) for m, _ in nets]
        amounts = [a for _, a in nets]
        call = self.registry.functions.anchorBatch(batch_id, root, trade_count, first_seq, last_seq, members, amounts)
        return call, ANCHOR_GAS_BASE + ANCHOR_GAS_PER_MEMBER * len(nets)

    # ------------------------------------------------------------------ reads
    def batch_on_chain(self, batch_id: int) -> tuple[bytes, int, int, int, int]:
        """(root, first_seq, last_seq, trade_count, anchored_at); anchored_at 0: not anchored."""
        return tuple(self.registry.functions.batches(batch_id).call())

    def collateral(self, member: str) -> int:
        return self.registry.functions.collateral(Web3.to_checksum_address(member)).call()

    def verify_trade(self, batch_id: int, leaf: bytes, proof: list[bytes]) -> bool:
        return self.registry.functions.verifyTrade(batch_id, leaf, proof).call()

    def logs(self, event: str, from_block: int, to_block: int) -> list:
        """Decoded events of the registry in [from_block, to_block]."""
        return list(getattr(self.registry.events, event)().get_logs(from_block=from_block, to_block=to_block))

    # ------------------------------------------------------------------ operator/member helpers
    def mint(self, to: str, amount: int) -> Any:
        return self.transact(self.token.functions.mint(Web3.to_checksum_address(to), amount), CALL_GAS)

    def member_transact(self, account: LocalAccount, call, gas: int = CALL_GAS) -> Any:
        """A member's own transaction (deposit, withdrawal request), signed by its key."""
        nonce = self.w3.eth.get_transaction_count(account.address, "pending")
        tx = call.build_transaction({"from": account.address, "nonce": nonce, "gas": gas,
                                     "gasPrice": self.w3.eth.gas_price, "chainId": self.chain_id})
        signed = account.sign_transaction(tx)
        self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.receipt("0x" + bytes(signed.hash).hex())
        if receipt is None or receipt["status"] != 1:
            raise ChainError(f"member transaction {bytes(signed.hash).hex()} failed")
        return receipt

    def credit_member(self, member: str, amount: int) -> Any:
        """The operator's on-ramp: mint ``amount`` vEUR to itself and deposit it as the
        member's collateral (``depositFor``); no member key needed."""
        self.mint(self.operator.address, amount)
        self.transact(self.token.functions.approve(self.registry.address, amount), CALL_GAS)
        return self.transact(self.registry.functions.depositFor(Web3.to_checksum_address(member), amount), CALL_GAS)

    def fund_member(self, account: LocalAccount, deposit: int, *, mint: int | None = None) -> Any:
        """Mint ``mint`` (default: deposit) vEUR to the member, then approve and deposit
        ``deposit`` into the registry from the member's key (gas funded in process)."""
        if self.tester is not None and self.w3.eth.get_balance(account.address) < 10**16:
            self.faucet(account.address, 10**18)
        self.mint(account.address, deposit if mint is None else mint)
        self.member_transact(account, self.token.functions.approve(self.registry.address, deposit))
        return self.member_transact(account, self.registry.functions.deposit(deposit))
