"""Chain access with web3: the in-process py-evm chain (eth-tester) by default, any
JSON-RPC node when ``chain_rpc_url`` is set.

The in-process chain keeps its blocks and state on disk (settlement/chainstore.py, one
SQLite file per chain directory, a block committed whole or not at all) and is reopened
where it stopped; ``chain_data_dir = "ephemeral"`` (or ``Chain.in_process()`` without a
directory) keeps it in memory, empty at every start.

Every transaction is built with explicit gas, signed locally by the operator key and
sent raw, so its hash is known (and recorded) before it leaves the process: the
worker's exactly-once protocol depends on that. Events are read from receipts, and
chain-initiated events (deposits, withdrawal requests) from bounded block ranges
after a cursor, never by scanning the whole chain.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import rlp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester
from eth_typing import HexStr
from eth_utils import keccak
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.providers.eth_tester.defaults import API_ENDPOINTS, static_return
from web3.types import Wei

from exchange.runtime.config import Settings
from settlement.chainstore import EphemeralPyEVMBackend, PersistentPyEVMBackend, SqliteChainDB, stored_history_start
from settlement.compiler import Artifact, load_artifacts
from settlement.reverts import ALREADY_KNOWN, OTHER, Revert, RevertDecoder, classify_send_error, revert_data

#: the in-process chain's id when none is given: the settings' default signing domain
DEFAULT_CHAIN_ID = Settings.model_fields["chain_id"].default

log = logging.getLogger(__name__)

#: gas for anchorBatch: a base plus a storage update per member (cold slot, event),
#: generous so a batch never runs out; unused gas is not charged.
ANCHOR_GAS_BASE = 150_000
ANCHOR_GAS_PER_MEMBER = 40_000
DEPLOY_GAS = 3_000_000
CALL_GAS = 200_000


#: init code run by ``eth_call`` (no ``to``) to check the node's EVM has what the contracts
#: need (cancun): MSTORE 42 at 0; MCOPY it to 0x20 (EIP-5656); TSTORE 7 at slot 0 and TLOAD
#: it back (EIP-1153); add; return the 32 bytes at 0x20, i.e. 49. PUSH0-era opcodes only
#: otherwise, so a pre-cancun EVM fails at MCOPY with an invalid opcode.
EVM_PROBE = bytes.fromhex("602a600052" "602060006020" "5e" "60076000" "5d" "6000" "5c" "602051" "01" "602052"
                          "60206020" "f3")
EVM_PROBE_RESULT = (49).to_bytes(32, "big")


class ChainError(RuntimeError):
    """The chain is unreachable or refused a transaction."""


class SendRefused(ChainError):
    """``eth_sendRawTransaction`` refused: ``kind`` is one of settlement.reverts'
    ``NONCE_TOO_LOW``, ``NONCE_TOO_HIGH`` or ``OTHER`` (``already known`` is not a refusal:
    the transaction is pending)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class TxReverted(ChainError):
    """A transaction was mined and reverted; ``revert`` is why, as far as a replay
    (``eth_call`` of the same call now) tells."""

    def __init__(self, message: str, revert: Revert | None, tx_hash: str | None = None) -> None:
        super().__init__(message)
        self.revert = revert
        self.tx_hash = tx_hash


class EvmTooOld(ChainError):
    """The node's EVM lacks an opcode the contracts use (they are compiled for prague)."""


EPHEMERAL = "ephemeral"


def chain_data_path(settings: Settings) -> Path | None:
    """Where the in-process chain of these settings lives: ``chain_data_dir``, by default
    ``<data_dir>/chain/<market_id>`` (next to the embedded PostgreSQL's ``<data_dir>/pg``;
    one chain per market, as one journal per market); None for ``ephemeral`` (in memory)."""
    if settings.chain_data_dir == EPHEMERAL:
        return None
    if settings.chain_data_dir is not None:
        return Path(settings.chain_data_dir)
    name = settings.market_id
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", name):  # not a plain file name: a safe one
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40].lstrip(".") + "-" + sha256(name.encode()).hexdigest()[:12]
    return Path(settings.data_dir) / "chain" / name


def tx_nonce(raw: bytes) -> int:
    """The nonce of a signed raw transaction (legacy or typed, EIP-2718)."""
    if raw[0] >= 0xC0:  # legacy: rlp([nonce, gasPrice, gas, to, value, data, v, r, s])
        return int.from_bytes(rlp.decode(raw)[0], "big")
    return int.from_bytes(rlp.decode(raw[1:])[1], "big")  # typed: type || rlp([chainId, nonce, ...])


def tx_hash_of(raw: bytes) -> str:
    return "0x" + keccak(raw).hex()


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
                 artifacts: dict[str, Artifact] | None = None, ephemeral: bool | None = None,
                 store: SqliteChainDB | None = None) -> None:
        self.w3 = w3
        self.operator = operator
        #: the chain is the in-process EVM (eth-tester), not a JSON-RPC node
        #: (``Chain.in_process`` is the constructor of such a chain)
        self.is_in_process = in_process
        #: the in-process chain's store on disk (None: in memory, or a JSON-RPC node)
        self.store = store
        #: the chain starts empty with every process (the in-memory EVM): finding our
        #: contracts gone is expected there, and the worker deploys anew. On any other
        #: chain (a node, or the in-process EVM on disk) a lost deployment is refused unless
        #: the operator approves a redeployment.
        self.ephemeral = (in_process and store is None) if ephemeral is None else ephemeral
        self.tester = tester
        # the contracts compiled at build time (package data); never compiles nor runs node
        self.artifacts = artifacts or load_artifacts()
        self.decoder = RevertDecoder(a.abi for a in self.artifacts.values())
        self.chain_id = w3.eth.chain_id
        self.genesis_hash = "0x" + bytes(w3.eth.get_block(0)["hash"]).hex()
        self._nonce: int | None = None
        self._token: Contract | None = None
        self._registry: Contract | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def in_process(cls, operator_key: str | None = None, artifacts: dict[str, Artifact] | None = None,
                   data_dir: Path | None = None, chain_id: int = DEFAULT_CHAIN_ID) -> Chain:
        """The in-process py-evm chain: in memory (empty, gone with the process) without
        ``data_dir``; else stored in ``data_dir`` (created if missing, locked while open) and
        resumed from its last block when it holds one. :meth:`close` releases it. Its chain id
        is ``chain_id`` (the signing domain's), except for a store created before the chain
        took it (eth-tester's fixed id, recorded with its deployment)."""
        store = SqliteChainDB(data_dir) if data_dir is not None else None
        try:
            backend = (EphemeralPyEVMBackend(chain_id) if store is None
                       else PersistentPyEVMBackend(store, chain_id))
            tester = EthereumTester(backend)
            # eth_chainId answers the chain's own id (web3's tester provider has a fixed one)
            endpoints = {**API_ENDPOINTS, "eth": {**API_ENDPOINTS["eth"],
                                                  "chainId": static_return(backend.chain.chain_id)}}
            w3 = Web3(EthereumTesterProvider(tester, api_endpoints=endpoints))
            # eth-tester charges eth_call to its sender's balance: read from the faucet account,
            # so reads keep working whatever the operator's balance
            w3.eth.default_account = w3.eth.accounts[-1]
            key = operator_key or backend.account_keys[0].to_hex()
            chain = cls(w3, Account.from_key(key), in_process=True, tester=tester, artifacts=artifacts, store=store)
            if operator_key and chain.w3.eth.get_balance(chain.operator.address) < 10**20:
                # a key of our own: fund it from the tester's faucet account (once per chain)
                chain.faucet(chain.operator.address, 10**21)
        except BaseException:
            if store is not None:
                store.close()
            raise
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
        return cls.in_process(key, artifacts, chain_data_path(settings), settings.chain_id)

    def history_start(self) -> int:
        """The first block after the genesis whose transactions, receipts and logs the chain
        still has: 0 but on an in-process chain whose store was compacted
        (settlement.chainstore.compact), which keeps only recent blocks. A node is taken to
        keep its history."""
        return stored_history_start(self.store) if self.store is not None else 0

    def close(self) -> None:
        """Release what the chain holds: the in-process chain's store is committed and
        closed (its directory unlocked). Nothing to do for a node or an in-memory chain."""
        if self.store is not None:
            self.store.close()

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

    @property
    def local_nonce(self) -> int | None:
        """The nonce the next signature will use (None: read from the node first)."""
        return self._nonce

    def set_nonce(self, nonce: int) -> None:
        self._nonce = nonce

    def pending_nonce(self) -> int:
        """The operator's next nonce as the node sees it (mined plus pending transactions)."""
        return int(self.w3.eth.get_transaction_count(self.operator.address, "pending"))

    def mined_nonce(self) -> int:
        """The operator's transactions mined so far (its nonce in the latest block)."""
        return int(self.w3.eth.get_transaction_count(self.operator.address, "latest"))

    def send_raw(self, raw: bytes) -> str:
        """Broadcast; returns the hash. A node that already has the transaction (``already
        known``/``already imported``, -32003) is not an error: it is pending."""
        try:
            return "0x" + bytes(self.w3.eth.send_raw_transaction(raw)).hex()
        except Exception as exc:  # noqa: BLE001 - any provider error is a chain error here
            kind = classify_send_error(exc)
            if kind == ALREADY_KNOWN:
                log.info("settlement: node already has transaction %s: waiting for it", tx_hash_of(raw))
                return tx_hash_of(raw)
            self._nonce = None  # re-read it: the transaction may or may not have been taken
            raise SendRefused(f"send failed ({kind.replace('_', ' ')}): {exc}" if kind != OTHER
                              else f"send failed: {exc}", kind) from exc

    def simulate(self, call) -> Revert | None:
        """``eth_call`` of ``call`` from the operator at the latest block: None when it would
        succeed, else the decoded revert. A node that cannot be asked raises ChainError."""
        try:
            call.call({"from": self.operator.address})
        except Exception as exc:  # noqa: BLE001 - sorted below
            reverted, data, text = revert_data(exc)
            if not reverted:
                raise ChainError(f"eth_call failed: {exc}") from exc
            return self.decoder.decode(data, text)
        return None

    def check_evm(self) -> None:
        """Refuse a node whose EVM lacks cancun's MCOPY or transient storage (the contracts
        are compiled for prague; ``verifyTradeFields`` uses MCOPY): EvmTooOld says so."""
        try:
            out = bytes(self.w3.eth.call({"data": EVM_PROBE, "gas": 100_000}))
        except Exception as exc:  # noqa: BLE001 - sorted below
            reverted, _data, text = revert_data(exc)
            low = str(exc).lower()
            if reverted or "opcode" in low or "not activated" in low or "not defined" in low:
                raise EvmTooOld(f"the node's EVM cannot run cancun opcodes (MCOPY, TSTORE/TLOAD), which the "
                                f"contracts need (compiled for prague): the probe failed with {text or exc}. "
                                "Use a node at cancun or later (geth, anvil with --hardfork prague, ...)") from exc
            raise ChainError(f"cannot probe the node's EVM: {exc}") from exc
        if out != EVM_PROBE_RESULT:
            raise EvmTooOld(f"the node's EVM ran the cancun probe (MCOPY, TSTORE/TLOAD) wrongly: returned "
                            f"0x{out.hex()}, expected 0x{EVM_PROBE_RESULT.hex()}; use a node at cancun or later")

    def receipt(self, tx_hash: str, timeout: float = 30.0) -> Any | None:
        """The receipt, waiting up to ``timeout`` s; None when the chain does not know the tx."""

        try:
            if timeout <= 0:
                return self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            return self.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=timeout, poll_latency=0.05)
        except (TransactionNotFound, TimeExhausted):
            return None

    def transact(self, call, gas: int) -> Any:
        """Sign, send, wait; raises TxReverted (with the decoded error) when the
        transaction reverts, ChainError when it is refused or not mined."""
        raw, tx_hash = self.sign(call, gas)
        self.send_raw(raw)
        receipt = self.receipt(tx_hash)
        if receipt is None:
            raise ChainError(f"no receipt for {tx_hash}")
        if receipt["status"] != 1:
            why = None
            try:
                why = self.simulate(call)
            except ChainError:
                pass
            raise TxReverted(f"transaction {tx_hash} reverted: {why or 'reason unknown'}", why, tx_hash)
        return receipt

    def anchor_call(self, batch_id: int, root: bytes, trade_count: int, first_seq: int, last_seq: int,
                    nets: list[tuple[str, int]]):
        members = [Web3.to_checksum_address(m) for m, _ in nets]
        amounts = [a for _, a in nets]
        call = self.registry.functions.anchorBatch(batch_id, root, trade_count, first_seq, last_seq, members, amounts)
        return call, ANCHOR_GAS_BASE + ANCHOR_GAS_PER_MEMBER * len(nets)

    # ------------------------------------------------------------------ reads
    def batch_root(self, batch_id: int) -> bytes | None:
        """The root the registry holds for the batch; None when it is not anchored there.
        (The registry stores only the root; the batch's trade count and sequence range are
        in its ``BatchAnchored`` event.)"""
        root = bytes(self.registry.functions.batchRoot(batch_id).call())
        return None if root == bytes(32) else root

    def collateral(self, member: str) -> int:
        return self.registry.functions.collateral(Web3.to_checksum_address(member)).call()

    def verify_trade(self, batch_id: int, leaf: bytes, proof: list[bytes]) -> bool:
        return self.registry.functions.verifyTrade(batch_id, leaf, proof).call()

    def logs(self, event: str, from_block: int, to_block: int) -> list:
        """Decoded events of the registry in [from_block, to_block]."""
        return self.registry_logs((event,), from_block, to_block)[event]

    def registry_logs(self, events: Sequence[str], from_block: int, to_block: int) -> dict[str, list]:
        """Decoded events of the registry of each name in ``events``, in [from_block, to_block]:
        one ``eth_getLogs`` for all of them (its topic an OR of theirs). On the in-process EVM a
        query reads every receipt of every block in its range (an anchor's holds a log per
        member), so one query instead of one per event halves a chain scan. Blocks a compaction
        dropped (below :meth:`history_start`) are not read: they have no logs any more."""
        from_block = max(from_block, self.history_start())
        out: dict[str, list] = {name: [] for name in events}
        if from_block > to_block:
            return out
        by_topic = {}
        for name in events:
            ev = getattr(self.registry.events, name)()
            by_topic[bytes.fromhex(ev.topic.removeprefix("0x"))] = ev
        logs = self.w3.eth.get_logs({"address": self.registry.address, "fromBlock": from_block, "toBlock": to_block,
                                     "topics": [["0x" + t.hex() for t in by_topic]]})
        for log_entry in logs:
            ev = by_topic[bytes(log_entry["topics"][0])]
            out[ev.event_name].append(ev.process_log(log_entry))
        return out

    # ------------------------------------------------------------------ operator key rotation
    def operators(self) -> dict[str, tuple[str, str]]:
        """(operator, pending operator) of each contract (the zero address: none pending)."""
        return {name: (c.functions.owner().call(), c.functions.pendingOwner().call())
                for name, c in (("token", self.token), ("registry", self.registry))}

    def propose_operator(self, new_operator: str) -> None:
        """Step 1 of a key rotation, signed by the current operator: ``new_operator`` becomes
        the pending operator of both contracts (nothing changes until it accepts)."""
        new = Web3.to_checksum_address(new_operator)
        for contract in (self.token, self.registry):
            self.transact(contract.functions.transferOwnership(new), CALL_GAS)

    def accept_operator(self, account: LocalAccount) -> None:
        """Step 2, signed by the new operator's key: it takes over both contracts. The
        exchange must then run with that key (``VOLTBOURSE_CHAIN_OPERATOR_KEY``)."""
        for contract in (self.token, self.registry):
            self.member_transact(account, contract.functions.acceptOwnership())

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
