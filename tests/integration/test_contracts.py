"""The Solidity contracts (EuroCredit, SettlementRegistry) on the real in-process EVM.

Everything here runs the contracts compiled from ``contracts/src`` with the OpenZeppelin
files they import (py-solc-x over the npm solc shim, OpenZeppelin from
contracts/node_modules) on eth-tester/py-evm through web3 and ``settlement.chain.Chain``;
nothing is mocked. Custom errors (ours and OpenZeppelin's: ERC-6093 ``ERC20…``,
``Ownable…``) are checked by their 4-byte selector and ABI-decoded arguments.

How a revert surfaces here (checked, not assumed): ``fn.call(...)`` / ``estimate_gas``
raise ``eth_tester.exceptions.TransactionFailed`` whose message carries the raw revert
data as a bytes literal (web3's eth-tester provider re-raises it that way instead of a
``ContractCustomError``); a *sent* transaction is mined with status 0, which
``Chain.transact`` / ``Chain.member_transact`` turn into ``ChainError``. So every refusal
below is checked twice: the exact error via ``call`` and, where state matters, that the
real transaction reverts and changes nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import random

import pytest
import solcx
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak, to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.keys import KEYS, OUTSIDER
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.logs import DISCARD

from settlement.chain import CALL_GAS, ChainError
from settlement.compiler import (
    EVM_VERSION,
    NODE_MODULES,
    SHIM,
    _standard_input,
    compile_contracts,
    compiler_version,
    library_record,
)
from settlement.merkle import (
    LEAF_TYPES,
    ZERO32,
    MerkleTree,
    TradeRecord,
    hash_pair,
    leaf,
    leaf_body,
    product_hash,
    signatures_hash,
    verify,
)
from settlement.netting import net_amounts

pytestmark = pytest.mark.integration

ZERO_ADDRESS = "0x" + "00" * 20
MEMBERS = KEYS[:4]
DEPOSIT = 10**13  # 100 000 EUR in money units (1e-8 EUR)


# ---------------------------------------------------------------------- helpers
def selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def revert_data(exc: BaseException) -> bytes:
    """The raw revert data (selector + ABI args) of a failed call."""
    if isinstance(exc, ContractLogicError) and exc.data:
        data = exc.data
        return bytes.fromhex(data.removeprefix("0x")) if isinstance(data, str) else bytes(data)
    if isinstance(exc, TransactionFailed):
        msg = exc.args[0]
        if isinstance(msg, bytes):
            return msg
        prefix = "execution reverted: "
        assert isinstance(msg, str) and msg.startswith(prefix + "b"), f"no revert data in {msg!r}"
        return ast.literal_eval(msg[len(prefix):])
    raise AssertionError(f"not a revert: {exc!r}")


def assert_reverts(fn, signature: str, *args, sender: str | None = None) -> bytes:
    """``fn`` (a bound contract function) reverts with the custom error ``signature``,
    e.g. ``"OwnableUnauthorizedAccount(address)"``; when ``args`` are given they must equal the decoded
    error arguments. Returns the raw revert data."""
    with pytest.raises((TransactionFailed, ContractCustomError, ContractLogicError)) as info:
        fn.call({"from": sender} if sender else {})
    data = revert_data(info.value)
    assert data[:4] == selector(signature), (
        f"expected {signature} ({selector(signature).hex()}), got selector {data[:4].hex()}")
    if args:
        types = signature[signature.index("(") + 1:-1]
        decoded = abi_decode([t for t in types.split(",") if t], data[4:])
        norm = tuple(to_checksum_address(v) if isinstance(v, str) else v for v in decoded)
        assert norm == tuple(args), f"{signature}: args {norm} != {tuple(args)}"
    return data


def events(contract, name: str, receipt) -> list:
    return list(getattr(contract.events, name)().process_receipt(receipt, errors=DISCARD))


def op_tx(chain, call, gas: int = CALL_GAS):
    return chain.transact(call, gas)


def registry_state(chain, members=MEMBERS):
    r = chain.registry.functions
    return ([chain.collateral(m.address) for m in members], r.batchCount().call(),
            chain.token.functions.balanceOf(chain.registry.address).call())


NOT_OPERATOR = "OwnableUnauthorizedAccount(address)"
#: WithdrawalStatus (an enum in the contract, a uint8 in the ABI)
REQUESTED, EXECUTED, REJECTED = 1, 2, 3


def make_trades(n: int, seed: int, *, first_id: int = 1, members=MEMBERS, signed_every: int = 3):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        buyer, seller = rng.sample(members, 2)
        sigs = [None, None]
        if k % signed_every == 0:
            sigs = ["0x" + rng.randbytes(65).hex(), "0x" + rng.randbytes(65).hex()]
        out.append(TradeRecord(first_id + k, f"20261122T{rng.randint(0, 23):02d}00Z-60", buyer.address,
                               seller.address, rng.randint(1, 5_000), rng.randint(-500, 30_000), *sigs))
    return out


@pytest.fixture
def deployed(chain):
    chain.deploy()
    for m in (*MEMBERS, OUTSIDER):
        chain.faucet(m.address, 10**18)
    return chain


@pytest.fixture
def funded(deployed):
    for m in MEMBERS:
        deployed.fund_member(m, DEPOSIT)
    return deployed


def anchor(chain, batch_id: int, trades: list[TradeRecord]):
    tree = MerkleTree([leaf(t) for t in trades])
    nets = net_amounts(trades)
    call, gas = chain.anchor_call(batch_id, tree.root, len(trades), trades[0].trade_id, trades[-1].trade_id,
                                  list(nets.items()))
    return chain.transact(call, gas), tree, nets


# ---------------------------------------------------------------------- compilation
def test_compile_from_source_without_cache_matches_cache(artifacts):
    fresh = compile_contracts(use_cache=False)
    assert set(fresh) >= {"EuroCredit", "SettlementRegistry"}
    for name in ("EuroCredit", "SettlementRegistry"):
        assert fresh[name].bytecode == artifacts[name].bytecode
        assert fresh[name].abi == artifacts[name].abi
        assert fresh[name].bytecode.startswith("0x") and len(fresh[name].bytecode) > 1000


def test_compiler_is_solc_08_targeting_prague():
    version = compiler_version()
    assert version.startswith("0.8."), version
    assert int(version.split(".")[2].split("+")[0]) >= 24  # pragma ^0.8.24
    assert EVM_VERSION == "prague"
    data = _standard_input()
    assert data["settings"]["evmVersion"] == "prague"
    # the compiler itself records the target in the contract metadata
    data["settings"]["outputSelection"] = {"*": {"*": ["metadata"]}}
    out = solcx.compile_standard(data, solc_binary=SHIM, allow_empty=False)
    meta = json.loads(out["contracts"]["SettlementRegistry.sol"]["SettlementRegistry"]["metadata"])
    assert meta["settings"]["evmVersion"] == "prague"
    assert meta["compiler"]["version"] == version.removesuffix(".Emscripten.clang")


def test_openzeppelin_is_compiled_from_the_pinned_npm_package():
    """The building blocks come from contracts/node_modules at the version pinned in
    package.json and package-lock.json, passed to solc inline under their import paths."""
    root = NODE_MODULES.parent
    pinned = json.loads((root / "package.json").read_text())["dependencies"]["@openzeppelin/contracts"]
    locked = json.loads((root / "package-lock.json").read_text())["packages"]["node_modules/@openzeppelin/contracts"]
    installed = json.loads((NODE_MODULES / "@openzeppelin/contracts/package.json").read_text())["version"]
    assert pinned == locked["version"] == installed and pinned[0].isdigit()  # exact, no range
    sources = _standard_input()["sources"]
    for unit in ("token/ERC20/ERC20.sol", "access/Ownable2Step.sol", "token/ERC20/utils/SafeERC20.sol",
                 "utils/cryptography/MerkleProof.sol"):
        text = (NODE_MODULES / "@openzeppelin/contracts" / unit).read_text()
        assert sources["@openzeppelin/contracts/" + unit]["content"] == text
    assert all(u.startswith("@openzeppelin/contracts/") or u in ("EuroCredit.sol", "SettlementRegistry.sol")
               for u in sources)
    assert library_record()["@openzeppelin/contracts"]["version"] == pinned


# ---------------------------------------------------------------------- EuroCredit
def test_token_metadata_and_deployment(deployed):
    t = deployed.token.functions
    assert t.decimals().call() == 8
    assert t.symbol().call() == "vEUR"
    assert t.name().call() == "Voltbourse Euro Credit"
    assert t.owner().call() == deployed.operator.address
    assert t.totalSupply().call() == 0
    r = deployed.registry.functions
    assert r.token().call() == deployed.token.address
    assert r.owner().call() == deployed.operator.address
    assert deployed.operators() == {"token": (deployed.operator.address, ZERO_ADDRESS),
                                    "registry": (deployed.operator.address, ZERO_ADDRESS)}
    assert deployed.has_code(deployed.token.address) and deployed.has_code(deployed.registry.address)


def test_token_constructor_refuses_zero_operator(deployed):
    art = deployed.artifacts["EuroCredit"]
    ctor = deployed.w3.eth.contract(abi=art.abi, bytecode=art.bytecode).constructor(ZERO_ADDRESS)
    with pytest.raises(TransactionFailed) as info:
        deployed.w3.eth.call({"from": deployed.operator.address, "data": ctor.data_in_transaction})
    assert revert_data(info.value) == selector("OwnableInvalidOwner(address)") + bytes(32)
    with pytest.raises(ChainError):
        deployed.transact(ctor, 3_000_000)


def test_only_operator_mints(deployed):
    a, b = MEMBERS[0], MEMBERS[1]
    t = deployed.token
    assert_reverts(t.functions.mint(a.address, 5), NOT_OPERATOR, a.address, sender=a.address)
    with pytest.raises(ChainError):
        deployed.member_transact(a, t.functions.mint(a.address, 5))
    assert t.functions.totalSupply().call() == 0 and t.functions.balanceOf(a.address).call() == 0
    assert_reverts(t.functions.mint(ZERO_ADDRESS, 5), "ERC20InvalidReceiver(address)", ZERO_ADDRESS,
                   sender=deployed.operator.address)

    receipt = deployed.mint(a.address, 1_000)
    deployed.mint(b.address, 7)
    (ev,) = events(t, "Transfer", receipt)
    assert (ev.args["from"], ev.args["to"], ev.args["value"]) == (ZERO_ADDRESS, a.address, 1_000)
    assert ev.address == t.address
    assert t.functions.balanceOf(a.address).call() == 1_000
    assert t.functions.totalSupply().call() == 1_007


def test_transfer(deployed):
    a, b = MEMBERS[0], MEMBERS[1]
    t = deployed.token
    deployed.mint(a.address, 1_000)
    receipt = deployed.member_transact(a, t.functions.transfer(b.address, 400))
    (ev,) = events(t, "Transfer", receipt)
    assert (ev.args["from"], ev.args["to"], ev.args["value"]) == (a.address, b.address, 400)
    assert t.functions.balanceOf(a.address).call() == 600
    assert t.functions.balanceOf(b.address).call() == 400
    assert t.functions.transfer(b.address, 1).call({"from": a.address}) is True

    assert_reverts(t.functions.transfer(b.address, 601), "ERC20InsufficientBalance(address,uint256,uint256)",
                   a.address, 600, 601, sender=a.address)
    with pytest.raises(ChainError):
        deployed.member_transact(a, t.functions.transfer(b.address, 601))
    assert_reverts(t.functions.transfer(ZERO_ADDRESS, 1), "ERC20InvalidReceiver(address)", ZERO_ADDRESS,
                   sender=a.address)
    assert t.functions.balanceOf(a.address).call() == 600
    assert t.functions.totalSupply().call() == 1_000
    # self transfer keeps the balance
    deployed.member_transact(a, t.functions.transfer(a.address, 600))
    assert t.functions.balanceOf(a.address).call() == 600


def test_approve_allowance_and_transfer_from(deployed):
    owner, spender, dest = MEMBERS[0], MEMBERS[1], MEMBERS[2]
    t = deployed.token
    deployed.mint(owner.address, 1_000)
    receipt = deployed.member_transact(owner, t.functions.approve(spender.address, 300))
    (ap,) = events(t, "Approval", receipt)
    assert (ap.args["owner"], ap.args["spender"], ap.args["value"]) == (owner.address, spender.address, 300)
    assert t.functions.allowance(owner.address, spender.address).call() == 300

    receipt = deployed.member_transact(spender, t.functions.transferFrom(owner.address, dest.address, 120))
    (ev,) = events(t, "Transfer", receipt)
    assert (ev.args["from"], ev.args["to"], ev.args["value"]) == (owner.address, dest.address, 120)
    assert t.functions.allowance(owner.address, spender.address).call() == 180
    assert t.functions.balanceOf(dest.address).call() == 120

    assert_reverts(t.functions.transferFrom(owner.address, dest.address, 181),
                   "ERC20InsufficientAllowance(address,uint256,uint256)",
                   spender.address, 180, 181, sender=spender.address)
    # nobody else may spend the owner's tokens
    assert_reverts(t.functions.transferFrom(owner.address, dest.address, 1),
                   "ERC20InsufficientAllowance(address,uint256,uint256)",
                   dest.address, 0, 1, sender=dest.address)
    assert_reverts(t.functions.transferFrom(owner.address, ZERO_ADDRESS, 1), "ERC20InvalidReceiver(address)",
                   ZERO_ADDRESS, sender=spender.address)
    with pytest.raises(ChainError):
        deployed.member_transact(spender, t.functions.transferFrom(owner.address, dest.address, 181))
    assert t.functions.allowance(owner.address, spender.address).call() == 180

    # an allowance above the balance: the balance check refuses and the allowance is untouched
    deployed.member_transact(owner, t.functions.approve(spender.address, 10_000))
    assert_reverts(t.functions.transferFrom(owner.address, dest.address, 881),
                   "ERC20InsufficientBalance(address,uint256,uint256)", owner.address, 880, 881,
                   sender=spender.address)
    with pytest.raises(ChainError):
        deployed.member_transact(spender, t.functions.transferFrom(owner.address, dest.address, 881))
    assert t.functions.allowance(owner.address, spender.address).call() == 10_000
    assert t.functions.balanceOf(owner.address).call() == 880

    # the max allowance is never decremented
    deployed.member_transact(owner, t.functions.approve(spender.address, 2**256 - 1))
    deployed.member_transact(spender, t.functions.transferFrom(owner.address, dest.address, 80))
    assert t.functions.allowance(owner.address, spender.address).call() == 2**256 - 1
    assert t.functions.balanceOf(owner.address).call() == 800
    assert t.functions.totalSupply().call() == 1_000


def test_burn(deployed):
    a = MEMBERS[0]
    t = deployed.token
    deployed.mint(a.address, 500)
    receipt = deployed.member_transact(a, t.functions.burn(200))
    (ev,) = events(t, "Transfer", receipt)
    assert (ev.args["from"], ev.args["to"], ev.args["value"]) == (a.address, ZERO_ADDRESS, 200)
    assert t.functions.balanceOf(a.address).call() == 300
    assert t.functions.totalSupply().call() == 300
    assert_reverts(t.functions.burn(301), "ERC20InsufficientBalance(address,uint256,uint256)",
                   a.address, 300, 301, sender=a.address)
    assert_reverts(t.functions.burn(1), "ERC20InsufficientBalance(address,uint256,uint256)",
                   OUTSIDER.address, 0, 1, sender=OUTSIDER.address)
    with pytest.raises(ChainError):
        deployed.member_transact(a, t.functions.burn(301))
    assert t.functions.totalSupply().call() == 300
    # burnFrom spends an allowance: the operator cannot burn a member's credits without one
    op = deployed.operator.address
    assert_reverts(t.functions.burnFrom(a.address, 1), "ERC20InsufficientAllowance(address,uint256,uint256)",
                   op, 0, 1, sender=op)
    deployed.member_transact(a, t.functions.approve(op, 100))
    deployed.transact(t.functions.burnFrom(a.address, 60), CALL_GAS)
    assert t.functions.balanceOf(a.address).call() == 240 and t.functions.totalSupply().call() == 240
    assert t.functions.allowance(a.address, op).call() == 40


# ---------------------------------------------------------------------- deposits and withdrawals
def test_deposit(deployed):
    a = MEMBERS[0]
    r, t = deployed.registry, deployed.token
    assert_reverts(r.functions.deposit(0), "ZeroAmount()", sender=a.address)
    deployed.mint(a.address, 1_000)
    # without an approval the token refuses the pull (its error bubbles up)
    assert_reverts(r.functions.deposit(10), "ERC20InsufficientAllowance(address,uint256,uint256)",
                   r.address, 0, 10, sender=a.address)
    revert = deployed.simulate(r.functions.depositFor(a.address, 10))  # the operator has no allowance either
    assert revert is not None and (revert.name, revert.args) == (
        "ERC20InsufficientAllowance", {"spender": r.address, "allowance": 0, "needed": 10})
    deployed.member_transact(a, t.functions.approve(r.address, 1_000))
    receipt = deployed.member_transact(a, r.functions.deposit(600))
    (ev,) = events(r, "Deposited", receipt)
    assert (ev.args["member"], ev.args["amount"], ev.args["collateral"]) == (a.address, 600, 600)
    (tr,) = events(t, "Transfer", receipt)
    assert (tr.args["from"], tr.args["to"], tr.args["value"]) == (a.address, r.address, 600)
    receipt = deployed.member_transact(a, r.functions.deposit(400))
    assert events(r, "Deposited", receipt)[0].args["collateral"] == 1_000
    assert deployed.collateral(a.address) == 1_000
    assert t.functions.balanceOf(r.address).call() == 1_000
    assert t.functions.balanceOf(a.address).call() == 0
    with pytest.raises(ChainError):
        deployed.member_transact(a, r.functions.deposit(0))
    assert deployed.collateral(a.address) == 1_000


def test_withdrawal_request_execute_reject(funded):
    a, b = MEMBERS[0], MEMBERS[1]
    r, t = funded.registry, funded.token
    op = funded.operator.address
    assert_reverts(r.functions.requestWithdrawal(0), "ZeroAmount()", sender=a.address)
    assert_reverts(r.functions.requestWithdrawal(DEPOSIT + 1), "InsufficientCollateral(address,uint256,uint256)",
                   a.address, DEPOSIT, DEPOSIT + 1, sender=a.address)
    with pytest.raises(ChainError):
        funded.member_transact(a, r.functions.requestWithdrawal(DEPOSIT + 1))
    assert r.functions.withdrawalCount().call() == 0

    assert r.functions.requestWithdrawal(100).call({"from": a.address}) == 1
    receipt = funded.member_transact(a, r.functions.requestWithdrawal(3_000))
    (req,) = events(r, "WithdrawalRequested", receipt)
    assert (req.args["requestId"], req.args["member"], req.args["amount"]) == (1, a.address, 3_000)
    assert r.functions.withdrawals(1).call() == [a.address, 3_000, REQUESTED]
    # the status is an enum of the contract: a uint8 in the ABI, its values as before (worker)
    (getter,) = [e for e in r.abi if e.get("name") == "withdrawals"]
    status = getter["outputs"][2]
    assert (status["type"], status["internalType"]) == ("uint8", "enum SettlementRegistry.WithdrawalStatus")
    funded.member_transact(b, r.functions.requestWithdrawal(50))
    assert r.functions.withdrawalCount().call() == 2
    # a request alone moves nothing
    assert funded.collateral(a.address) == DEPOSIT

    for call in (r.functions.executeWithdrawal(1), r.functions.rejectWithdrawal(1, "no")):
        assert_reverts(call, NOT_OPERATOR, a.address, sender=a.address)
        with pytest.raises(ChainError):
            funded.member_transact(a, call)
    assert r.functions.withdrawals(1).call()[2] == REQUESTED

    receipt = op_tx(funded, r.functions.executeWithdrawal(1))
    (ex,) = events(r, "WithdrawalExecuted", receipt)
    assert dict(ex.args) == {"requestId": 1, "member": a.address, "amount": 3_000, "collateral": DEPOSIT - 3_000}
    (tr,) = events(t, "Transfer", receipt)
    assert (tr.args["from"], tr.args["to"], tr.args["value"]) == (r.address, a.address, 3_000)
    assert funded.collateral(a.address) == DEPOSIT - 3_000
    assert t.functions.balanceOf(a.address).call() == 3_000  # tokens back to the member
    assert t.functions.balanceOf(r.address).call() == len(MEMBERS) * DEPOSIT - 3_000
    assert r.functions.withdrawals(1).call()[2] == EXECUTED

    receipt = op_tx(funded, r.functions.rejectWithdrawal(2, "backs open orders"))
    (rj,) = events(r, "WithdrawalRejected", receipt)
    assert dict(rj.args) == {"requestId": 2, "member": b.address, "amount": 50, "reason": "backs open orders"}
    assert funded.collateral(b.address) == DEPOSIT
    assert r.functions.withdrawals(2).call()[2] == REJECTED

    # twice (either way) -> WithdrawalNotPending with the current status
    for rid, status in ((1, EXECUTED), (2, REJECTED)):
        for call in (r.functions.executeWithdrawal(rid), r.functions.rejectWithdrawal(rid, "again")):
            assert_reverts(call, "WithdrawalNotPending(uint256,uint8)", rid, status, sender=op)
    with pytest.raises(ChainError):
        op_tx(funded, r.functions.executeWithdrawal(1))
    assert funded.collateral(a.address) == DEPOSIT - 3_000
    # unknown ids
    for rid in (0, 3, 99):
        assert_reverts(r.functions.executeWithdrawal(rid), "UnknownWithdrawal(uint256)", rid, sender=op)
        assert_reverts(r.functions.rejectWithdrawal(rid, "?"), "UnknownWithdrawal(uint256)", rid, sender=op)


def test_execute_withdrawal_rechecks_collateral_after_settlement(funded):
    """A request made while covered is refused at execution once a batch has spent the
    collateral; it stays pending (and can then be rejected)."""
    a, b = MEMBERS[0], MEMBERS[1]
    r = funded.registry
    funded.member_transact(a, r.functions.requestWithdrawal(DEPOSIT))
    call, gas = funded.anchor_call(1, b"\x11" * 32, 1, 1, 1, [(a.address, -10), (b.address, 10)])
    funded.transact(call, gas)
    assert_reverts(r.functions.executeWithdrawal(1), "InsufficientCollateral(address,uint256,uint256)",
                   a.address, DEPOSIT - 10, DEPOSIT, sender=funded.operator.address)
    with pytest.raises(ChainError):
        op_tx(funded, r.functions.executeWithdrawal(1))
    assert r.functions.withdrawals(1).call()[2] == REQUESTED
    assert funded.collateral(a.address) == DEPOSIT - 10
    op_tx(funded, r.functions.rejectWithdrawal(1, "spent by batch 1"))
    assert r.functions.withdrawals(1).call()[2] == REJECTED


# ---------------------------------------------------------------------- anchorBatch refusals
ROOT = b"\xab" * 32
A, B, C = (m.address for m in MEMBERS[:3])

# (name, args (batch, root, count, first, last, members, amounts), error signature, error args)
REFUSALS = [
    ("batch-twice", (1, b"\xcd" * 32, 2, 3, 4, [A, B], [-5, 5]), "BatchAlreadyAnchored(uint64)", (1,)),
    ("net-not-zero", (2, ROOT, 2, 3, 4, [A, B], [-5, 6]), "NetNotZero(int256)", (1,)),
    ("net-not-zero-debit", (2, ROOT, 2, 3, 4, [A, B, C], [-5, 1, 1]), "NetNotZero(int256)", (-3,)),
    ("net-not-zero-single", (2, ROOT, 1, 3, 3, [A], [7]), "NetNotZero(int256)", (7,)),
    ("length-mismatch", (2, ROOT, 2, 3, 4, [A, B], [0]), "LengthMismatch(uint256,uint256)", (2, 1)),
    ("length-mismatch-amounts", (2, ROOT, 2, 3, 4, [A], [-1, 1]), "LengthMismatch(uint256,uint256)", (1, 2)),
    ("empty-root", (2, ZERO32, 2, 3, 4, [A, B], [-5, 5]), "EmptyRoot()", ()),
    ("bad-range", (2, ROOT, 2, 5, 4, [A, B], [-5, 5]), "BadSequenceRange(uint64,uint64,uint32)", (5, 4, 2)),
    ("zero-count", (2, ROOT, 0, 3, 4, [A, B], [-5, 5]), "BadSequenceRange(uint64,uint64,uint32)", (3, 4, 0)),
    ("over-collateral", (2, ROOT, 2, 3, 4, [A, B], [-(DEPOSIT + 1), DEPOSIT + 1]),
     "InsufficientCollateral(address,uint256,uint256)", (A, DEPOSIT - 5, DEPOSIT + 1)),  # A paid 5 in batch 1
    ("one-unit-over", (2, ROOT, 2, 3, 4, [A, B], [-(DEPOSIT - 4), DEPOSIT - 4]),
     "InsufficientCollateral(address,uint256,uint256)", (A, DEPOSIT - 5, DEPOSIT - 4)),
    # the second member's debit fails after the first was credited: all of it rolls back
    ("over-collateral-late", (2, ROOT, 3, 3, 5, [A, B, C], [DEPOSIT, 1, -(DEPOSIT + 1)]),
     "InsufficientCollateral(address,uint256,uint256)", (C, DEPOSIT, DEPOSIT + 1)),
]


@pytest.mark.parametrize(("args", "signature", "err_args"), [c[1:] for c in REFUSALS],
                         ids=[c[0] for c in REFUSALS])
def test_anchor_batch_refusals_change_nothing(funded, args, signature, err_args):
    r = funded.registry
    op = funded.operator.address
    # batch 1 anchored beforehand (A pays B 5): the baseline every refusal must leave intact
    funded.transact(*funded.anchor_call(1, ROOT, 2, 1, 2, [(A, -5), (B, 5)]))
    before = registry_state(funded)
    assert before[1] == 1 and funded.batch_root(1) == ROOT

    call = r.functions.anchorBatch(*args)
    assert_reverts(call, signature, *err_args, sender=op)
    with pytest.raises(ChainError):
        funded.transact(call, 500_000)
    assert registry_state(funded) == before
    assert funded.batch_root(1) == ROOT
    if args[0] != 1:
        assert funded.batch_root(args[0]) is None  # not anchored
        # the refusal left no trace: the same id still anchors once the batch is right
        funded.transact(*funded.anchor_call(args[0], ROOT, 1, 3, 3, [(A, -1), (B, 1)]))
        assert r.functions.batchCount().call() == 2


def test_anchor_batch_only_operator(funded):
    m = MEMBERS[0]
    r = funded.registry
    before = registry_state(funded)
    call = r.functions.anchorBatch(1, ROOT, 1, 1, 1, [A, B], [-5, 5])
    assert_reverts(call, NOT_OPERATOR, m.address, sender=m.address)
    with pytest.raises(ChainError):
        funded.member_transact(m, call, 500_000)
    assert registry_state(funded) == before
    assert funded.batch_root(1) is None and r.functions.batchRoot(1).call() == ZERO32
    assert funded.verify_trade(1, ROOT, []) is False


# ---------------------------------------------------------------------- netting on chain
def test_net_amounts_by_hand_with_negative_price():
    a, b, c = (m.address for m in MEMBERS[:3])
    trades = [
        TradeRecord(1, "p", buyer=a, seller=b, energy_wh=1_000, price_ticks=2_000),  # a pays b 2e6
        TradeRecord(2, "p", buyer=b, seller=c, energy_wh=500, price_ticks=-300),  # c pays b 150000
        TradeRecord(3, "p", buyer=c, seller=a, energy_wh=10, price_ticks=0),  # nothing moves
        TradeRecord(4, "p", buyer=a, seller=c, energy_wh=100, price_ticks=1_500),  # a pays c 150000
    ]
    nets = net_amounts(trades)
    assert nets == {a: -2_150_000, b: 2_150_000}  # c nets to zero: left out
    assert sum(nets.values()) == 0


def test_anchor_batch_moves_collateral_by_exactly_the_nets(funded):
    r = funded.registry
    addresses = [m.address for m in MEMBERS]
    batches = [(5, make_trades(9, seed=5, first_id=1)), (3, make_trades(12, seed=3, first_id=10)),
               (9, [TradeRecord(22, "neg", MEMBERS[0].address, MEMBERS[1].address, 4_000, -250),
                    TradeRecord(23, "neg", MEMBERS[2].address, MEMBERS[1].address, 1_000, -40)])]
    assert any(t.price_ticks < 0 for _, ts in batches for t in ts)
    expected = {a: DEPOSIT for a in addresses}
    for n, (batch_id, trades) in enumerate(batches, start=1):
        receipt, tree, nets = anchor(funded, batch_id, trades)
        for m, a in nets.items():
            expected[m] += a
        assert {a: funded.collateral(a) for a in addresses} == expected
        assert sum(nets.values()) == 0 and nets

        (ba,) = events(r, "BatchAnchored", receipt)
        assert dict(ba.args) == {"batchId": batch_id, "root": tree.root, "tradeCount": len(trades),
                                 "firstSeq": trades[0].trade_id, "lastSeq": trades[-1].trade_id,
                                 "members": len(nets)}
        settled = events(r, "NetSettled", receipt)
        assert [(e.args["batchId"], e.args["member"], e.args["amount"], e.args["collateral"]) for e in settled] == [
            (batch_id, to_checksum_address(m), a, expected[m]) for m, a in nets.items()]
        # storage keeps the root alone (the count and range are the event's)
        assert r.functions.batchRoot(batch_id).call() == tree.root == funded.batch_root(batch_id)
        assert r.functions.batchCount().call() == n
    # the last batch at negative prices: the sellers (member 1) pay, the buyers receive
    last = net_amounts(batches[2][1])
    assert last == {MEMBERS[0].address: 1_000_000, MEMBERS[1].address: -1_040_000, MEMBERS[2].address: 40_000}
    # money is conserved: the registry's tokens equal the sum of collateral
    assert sum(expected.values()) == len(MEMBERS) * DEPOSIT
    assert funded.token.functions.balanceOf(r.address).call() == sum(expected.values())


def test_anchor_batch_ids_in_any_order(funded):
    r = funded.registry
    funded.transact(*funded.anchor_call(10, ROOT, 1, 1, 1, [(A, -1), (B, 1)]))
    receipt = funded.transact(*funded.anchor_call(4, b"\x04" * 32, 1, 2, 2, []))  # all-zero: nothing to settle
    assert events(r, "NetSettled", receipt) == []
    assert funded.batch_root(10) == ROOT and funded.batch_root(4) == b"\x04" * 32
    assert funded.batch_root(5) is None
    assert r.functions.batchCount().call() == 2
    assert funded.collateral(A) == DEPOSIT - 1 and funded.collateral(B) == DEPOSIT + 1


def test_registry_storage_per_batch_is_the_root_alone():
    """What anchorBatch stores per batch: one slot (the root). The layout as solc reports it."""
    data = _standard_input()
    data["settings"]["outputSelection"] = {"SettlementRegistry.sol": {"SettlementRegistry": ["storageLayout"]}}
    out = solcx.compile_standard(data, solc_binary=SHIM, allow_empty=False)
    layout = out["contracts"]["SettlementRegistry.sol"]["SettlementRegistry"]["storageLayout"]
    types = layout["types"]
    got = {v["label"]: types[v["type"]]["label"] for v in layout["storage"]}
    assert got == {
        "_owner": "address", "_pendingOwner": "address",  # OpenZeppelin's Ownable2Step
        "batchRoot": "mapping(uint64 => bytes32)",
        "payoutBatches": "mapping(uint64 => bool)",
        "collateral": "mapping(address => uint256)",
        "withdrawals": "mapping(uint256 => struct SettlementRegistry.Withdrawal)",
        "withdrawalCount": "uint256",
        "batchCount": "uint64",
    }


def test_anchor_batch_gas_per_batch_and_per_member(funded):
    """Gas of anchorBatch = a fixed part per batch + a part per member with a net (its
    collateral slot and its NetSettled event); the trades cost nothing on chain. Budgets:
    before the registry kept only the root per batch (issue 12) it was ~82 700 + ~8 800 per
    member; the fixed part is now ~61 000 (21 000 of it the transaction itself)."""
    members = [m.address for m in MEMBERS]
    funded.transact(*funded.anchor_call(1, ROOT, 1, 1, 1, [(A, -1), (B, 1)]))  # batchCount 0 -> 1 paid here

    def gas(batch_id: int, n: int) -> int:
        nets = [(members[i], (-1) ** (i + 1) * (1_000 + i)) for i in range(n - 1)]
        nets.append((members[n - 1], -sum(a for _, a in nets)))
        receipt = funded.transact(*funded.anchor_call(batch_id, bytes([batch_id]) * 32, 12, batch_id * 100,
                                                      batch_id * 100 + 11, nets))
        return receipt["gasUsed"]

    g2, g4 = gas(2, 2), gas(3, 4)
    per_member = (g4 - g2) / 2
    fixed = g2 - 2 * per_member
    assert 7_000 < per_member < 8_800, per_member
    assert 50_000 < fixed < 63_000, fixed


def test_anchor_batch_may_debit_the_whole_collateral(funded):
    receipt = funded.transact(*funded.anchor_call(1, ROOT, 1, 1, 1, [(A, -DEPOSIT), (B, DEPOSIT)]))
    assert funded.collateral(A) == 0 and funded.collateral(B) == 2 * DEPOSIT
    assert [e.args["collateral"] for e in events(funded.registry, "NetSettled", receipt)] == [0, 2 * DEPOSIT]
    assert_reverts(funded.registry.functions.anchorBatch(2, ROOT, 1, 2, 2, [A, B], [-1, 1]),
                   "InsufficientCollateral(address,uint256,uint256)", A, 0, 1, sender=funded.operator.address)


# ---------------------------------------------------------------------- Merkle proofs on chain
def _flip(b: bytes, bit: int) -> bytes:
    x = bytearray(b)
    x[bit // 8] ^= 1 << (bit % 8)
    return bytes(x)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_every_leaf_verifies_on_chain_and_tampering_fails(funded, size):
    trades = make_trades(size, seed=size, first_id=100)
    other = make_trades(3, seed=999, first_id=1_000)
    _, tree, _ = anchor(funded, 7, trades)
    _, other_tree, _ = anchor(funded, 8, other)
    leaves = [leaf(t) for t in trades]
    if size == 1:
        assert tree.root == leaves[0] and tree.proof(0) == []
    assert funded.registry.functions.batchRoot(7).call() == tree.root
    vt = funded.verify_trade

    for i, lf in enumerate(leaves):
        proof = tree.proof(i)
        assert len(proof) <= max(0, (size - 1).bit_length())
        assert verify(lf, proof, tree.root)
        assert vt(7, lf, proof) is True, f"leaf {i} of {size}"

    rng = random.Random(size)
    sample = range(size) if size <= 7 else sorted({0, 1, size // 2, size - 2, size - 1, *rng.sample(range(size), 3)})
    for i in sample:
        lf, proof = leaves[i], tree.proof(i)
        for k in range(len(proof)):  # each proof element tampered by one bit
            bad = list(proof)
            bad[k] = _flip(bad[k], rng.randrange(256))
            assert vt(7, lf, bad) is False
            assert not verify(lf, bad, tree.root)
        assert vt(7, _flip(lf, rng.randrange(256)), proof) is False  # tampered leaf
        tampered_trade = dataclasses.replace(trades[i], energy_wh=trades[i].energy_wh + 1)
        assert vt(7, leaf(tampered_trade), proof) is False  # a different trade, same proof
        if size > 1:
            j = (i + 1 + rng.randrange(size - 1)) % size
            assert j != i
            assert vt(7, lf, tree.proof(j)) is False  # a proof for a different index
        assert vt(8, lf, proof) is False  # the wrong (anchored) batch
        assert vt(9, lf, proof) is False  # an un-anchored batch
        assert vt(7, lf, [*proof, lf]) is False  # an extra element
    # the other batch's leaves verify there and not here
    for i, t in enumerate(other):
        assert vt(8, leaf(t), other_tree.proof(i)) is True
        assert vt(7, leaf(t), other_tree.proof(i)) is False


def test_trade_leaf_on_chain_equals_off_chain(deployed):
    fn = deployed.registry.functions.tradeLeaf
    rng = random.Random(42)
    sig = lambda: "0x" + rng.randbytes(65).hex()  # noqa: E731
    a, b = MEMBERS[0].address, MEMBERS[1].address
    cases = [
        TradeRecord(1, "20261122T2300Z-60", a, b, 1_500, 12_345),
        TradeRecord(2, "20261122T2300Z-60", b, a, 1, -500, sig(), sig()),
        TradeRecord(3, "20261123T0000Z-15", a, b, 77, 0, sig(), None),
        TradeRecord(4, "20261123T0000Z-15", a, b, 77, 0, None, sig()),
        TradeRecord(2**64 - 1, "x" * 80, ZERO_ADDRESS, "0x" + "ff" * 20, 2**64 - 1, -(2**63), sig(), sig()),
        TradeRecord(0, "", a, a, 0, 2**63 - 1),
    ]
    for t in cases:
        sh = signatures_hash(t.buy_signature, t.sell_signature)
        if t.buy_signature is None and t.sell_signature is None:
            assert sh == ZERO32
        else:
            # an unsigned side is 65 zero bytes, so buy-only and sell-only differ
            raw = b"".join(bytes.fromhex(s[2:]) if s else bytes(65) for s in (t.buy_signature, t.sell_signature))
            assert sh == keccak(raw)
        fields = (t.trade_id, product_hash(t.product_id), to_checksum_address(t.buyer),
                  to_checksum_address(t.seller), t.energy_wh, t.price_ticks, sh)
        # the hand-written encoding is abi.encode
        assert leaf_body(t) == abi_encode(list(LEAF_TYPES), fields)
        assert fn(*fields).call() == leaf(t), t.trade_id
    # signatures change the leaf, and which side signed matters
    assert leaf(cases[2]) != leaf(TradeRecord(3, "20261123T0000Z-15", a, b, 77, 0))
    s1 = sig()
    assert signatures_hash(s1, None) != signatures_hash(None, s1)
    with pytest.raises(ValueError):
        leaf(TradeRecord(1, "p", a, b, 1, 2**63))


# ---------------------------------------------------------------------- payouts
def test_settle_payouts_credits_and_debits(funded):
    """settlePayouts: revenue shares in (pulled from the operator), penalties out (paid to the
    operator), the difference moved once; an id only once; the superseded creditPayouts is gone."""
    r, t = funded.registry, funded.token
    op = funded.operator.address
    a, b, c = MEMBERS[0].address, MEMBERS[1].address, MEMBERS[2].address
    names = {e.get("name") for e in r.abi}
    assert "settlePayouts" in names and "creditPayouts" not in names and "PayoutCredited" not in names

    call = r.functions.settlePayouts(7, [a, b, c], [300, 700, -200])
    assert_reverts(call, NOT_OPERATOR, a, sender=a)
    with pytest.raises(ChainError):
        funded.member_transact(MEMBERS[0], call)
    # the operator must hold and approve the net credit (1 000 - 200) first
    assert_reverts(call, "ERC20InsufficientAllowance(address,uint256,uint256)", r.address, 0, 800, sender=op)
    assert_reverts(r.functions.settlePayouts(7, [a], [1, 2]), "LengthMismatch(uint256,uint256)", 1, 2, sender=op)
    assert_reverts(r.functions.settlePayouts(7, [a], [-(DEPOSIT + 1)]),
                   "InsufficientCollateral(address,uint256,uint256)", a, DEPOSIT, DEPOSIT + 1, sender=op)
    funded.mint(op, 5_000)
    op_tx(funded, t.functions.approve(r.address, 800))
    reg_before = t.functions.balanceOf(r.address).call()

    receipt = op_tx(funded, call, 300_000)
    assert [dict(e.args) for e in events(r, "PayoutSettled", receipt)] == [
        {"payoutId": 7, "member": a, "amount": 300, "collateral": DEPOSIT + 300},
        {"payoutId": 7, "member": b, "amount": 700, "collateral": DEPOSIT + 700},
        {"payoutId": 7, "member": c, "amount": -200, "collateral": DEPOSIT - 200}]
    (tr,) = events(t, "Transfer", receipt)
    assert (tr.args["from"], tr.args["to"], tr.args["value"]) == (op, r.address, 800)
    assert [funded.collateral(m) for m in (a, b, c)] == [DEPOSIT + 300, DEPOSIT + 700, DEPOSIT - 200]
    assert t.functions.balanceOf(op).call() == 4_200
    assert t.functions.balanceOf(r.address).call() == reg_before + 800
    assert t.functions.allowance(op, r.address).call() == 0
    assert r.functions.payoutBatches(7).call() is True

    op_tx(funded, t.functions.approve(r.address, 1_000))
    assert_reverts(call, "PayoutAlreadySettled(uint64)", 7, sender=op)
    with pytest.raises(ChainError):
        op_tx(funded, call, 300_000)
    assert funded.collateral(a) == DEPOSIT + 300 and t.functions.balanceOf(op).call() == 4_200

    # penalties above the shares: the registry pays the operator the difference
    receipt = op_tx(funded, r.functions.settlePayouts(8, [a, b], [100, -600]), 300_000)
    (tr,) = events(t, "Transfer", receipt)
    assert (tr.args["from"], tr.args["to"], tr.args["value"]) == (r.address, op, 500)
    assert funded.collateral(a) == DEPOSIT + 400 and funded.collateral(b) == DEPOSIT + 100
    assert t.functions.balanceOf(op).call() == 4_700
    # money is conserved: the registry's tokens equal the sum of collateral
    assert t.functions.balanceOf(r.address).call() == sum(funded.collateral(m.address) for m in MEMBERS)


# ---------------------------------------------------------------------- operator key rotation
def test_operator_key_rotation_in_two_steps(funded):
    """Ownable2Step on both contracts: the operator proposes a key, which takes over only once
    it accepts; until then the old key acts; afterwards only the new one does."""
    chain = funded
    old, new = chain.operator, OUTSIDER
    r, t = chain.registry, chain.token
    assert_reverts(r.functions.transferOwnership(new.address), NOT_OPERATOR, new.address, sender=new.address)
    chain.propose_operator(new.address)
    assert chain.operators() == {"token": (old.address, new.address), "registry": (old.address, new.address)}
    # still the old operator's until accepted
    chain.transact(*chain.anchor_call(1, ROOT, 1, 1, 1, [(A, -1), (B, 1)]))
    assert_reverts(r.functions.anchorBatch(2, ROOT, 1, 2, 2, [], []), NOT_OPERATOR, new.address,
                   sender=new.address)
    # only the proposed key can accept
    assert_reverts(r.functions.acceptOwnership(), NOT_OPERATOR, A, sender=A)
    chain.accept_operator(new)
    assert chain.operators() == {"token": (new.address, ZERO_ADDRESS), "registry": (new.address, ZERO_ADDRESS)}

    for call in (r.functions.anchorBatch(2, ROOT, 1, 2, 2, [], []), t.functions.mint(A, 1),
                 r.functions.settlePayouts(9, [], [])):
        assert_reverts(call, NOT_OPERATOR, old.address, sender=old.address)
    # what the worker sees with the old key still configured: decoded, with its hint's name
    revert = chain.simulate(chain.anchor_call(2, ROOT, 1, 2, 2, [])[0])
    assert revert is not None and (revert.name, revert.args) == ("OwnableUnauthorizedAccount",
                                                                 {"account": old.address})
    with pytest.raises(ChainError):
        chain.transact(*chain.anchor_call(2, ROOT, 1, 2, 2, []))
    chain.member_transact(new, r.functions.anchorBatch(2, ROOT, 1, 2, 2, [], []), 200_000)
    chain.member_transact(new, t.functions.mint(A, 5))
    assert chain.batch_root(2) == ROOT and t.functions.balanceOf(A).call() == 5
    assert r.functions.batchCount().call() == 2


def test_operator_cannot_be_renounced(deployed):
    op = deployed.operator.address
    for contract in (deployed.token, deployed.registry):
        assert_reverts(contract.functions.renounceOwnership(), "RenounceDisabled()", sender=op)
        assert_reverts(contract.functions.renounceOwnership(), NOT_OPERATOR, A, sender=A)
        assert contract.functions.owner().call() == op


# ---------------------------------------------------------------------- pure Merkle property
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(leaves=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70, unique=True),
       data=st.data())
def test_merkle_proofs_property(leaves, data):
    tree = MerkleTree(leaves)
    n = len(leaves)
    for i, lf in enumerate(leaves):
        proof = tree.proof(i)
        assert len(proof) <= (n - 1).bit_length()
        assert verify(lf, proof, tree.root)
    if n == 1:
        assert tree.root == leaves[0] and tree.proof(0) == []
        return
    i = data.draw(st.integers(0, n - 1), label="index")
    proof = tree.proof(i)
    assert proof, "a tree of 2+ leaves has a non-empty proof"
    k = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 255), label="bit")
    bad = list(proof)
    bad[k] = _flip(bad[k], bit)
    assert not verify(leaves[i], bad, tree.root)
    assert not verify(_flip(leaves[i], bit), proof, tree.root)
    # the root is the fold of sorted pairs: recompute it independently for two leaves
    if n == 2:
        assert tree.root == hash_pair(leaves[1], leaves[0])


def test_verify_trade_fields_builds_the_leaf_itself(funded):
    """verifyTrade takes any bytes32, so an inner node passes it; verifyTradeFields computes
    the leaf from the trade's fields and cannot be fooled that way."""
    chain = funded
    trades = make_trades(4, seed=9)
    _, tree, _ = anchor(chain, 1, trades)
    reg = chain.registry.functions
    # the documented weakness of the raw check: an inner node with the rest of the path
    assert reg.verifyTrade(1, tree.levels[1][0], tree.proof(0)[1:]).call()
    for i, t in enumerate(trades):
        fields = (t.trade_id, product_hash(t.product_id), to_checksum_address(t.buyer),
                  to_checksum_address(t.seller), t.energy_wh, t.price_ticks,
                  signatures_hash(t.buy_signature, t.sell_signature))
        assert reg.verifyTradeFields(1, *fields, tree.proof(i)).call()
        tampered = (fields[0], fields[1], fields[2], fields[3], fields[4] + 1, *fields[5:])
        assert not reg.verifyTradeFields(1, *tampered, tree.proof(i)).call()
        assert not reg.verifyTradeFields(2, *fields, tree.proof(i)).call()


def test_operator_on_ramp_deposit_for(deployed):
    """credit_member: the operator mints to itself and deposits for a member (depositFor)."""
    chain = deployed
    member = MEMBERS[0].address
    receipt = chain.credit_member(member, 5_000)
    assert chain.collateral(member) == 5_000
    (ev,) = events(chain.registry, "Deposited", receipt)
    assert (ev["args"]["member"], ev["args"]["amount"], ev["args"]["collateral"]) == (member, 5_000, 5_000)
    assert chain.token.functions.balanceOf(chain.registry.address).call() == 5_000
    assert_reverts(chain.registry.functions.depositFor(member, 0), "ZeroAmount()", sender=chain.operator.address)
