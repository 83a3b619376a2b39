// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title SettlementRegistry: collateral escrow and trade-batch anchoring.
/// @notice Members deposit EuroCredit as collateral. The operator (the owner: the exchange's
/// settlement worker) anchors each batch of trades by its Merkle root and, in the same
/// transaction, applies the batch's net amount per member to their collateral: buyers pay
/// (negative), sellers receive (positive); a batch's amounts sum to zero. Withdrawals are
/// requested by the member and executed by the operator only after the exchange has released
/// the amount from the member's open orders and unsettled trades (the exchange holds the order
/// book, so it is the one that can tell). Flexibility payouts (revenue shares in, penalties
/// out) go through `settlePayouts`.
///
/// Storage per batch is its root alone (what `verifyTrade` needs); its trade count and
/// sequence range are in its `BatchAnchored` event.
///
/// Merkle tree: leaves are keccak256(0x00 || abi.encode(trade fields)) computed off chain
/// (docs/settlement.md); an inner node is keccak256(0x01 || min(a,b) || max(a,b)), folded by
/// OpenZeppelin's MerkleProof with that hasher.
/// @dev The operator is rotated in two steps (Ownable2Step), see EuroCredit. Renouncing is
/// refused: an operator-less registry could never anchor or release anything again.
contract SettlementRegistry is Ownable2Step {
    using SafeERC20 for IERC20;

    enum WithdrawalStatus {
        None,
        Requested,
        Executed,
        Rejected
    }

    struct Withdrawal {
        address member;
        uint96 amount;
        WithdrawalStatus status;
    }

    IERC20 public immutable token;

    /// @notice The Merkle root of each anchored batch; zero: not anchored.
    mapping(uint64 batchId => bytes32 root) public batchRoot;
    mapping(uint64 payoutId => bool settled) public payoutBatches;
    mapping(address member => uint256 amount) public collateral;
    mapping(uint256 requestId => Withdrawal) public withdrawals;
    uint256 public withdrawalCount;
    uint64 public batchCount;

    event Deposited(address indexed member, uint256 amount, uint256 collateral);
    event WithdrawalRequested(uint256 indexed requestId, address indexed member, uint256 amount);
    event WithdrawalExecuted(uint256 indexed requestId, address indexed member, uint256 amount, uint256 collateral);
    event WithdrawalRejected(uint256 indexed requestId, address indexed member, uint256 amount, string reason);
    event BatchAnchored(
        uint64 indexed batchId, bytes32 root, uint32 tradeCount, uint64 firstSeq, uint64 lastSeq, uint256 members
    );
    event NetSettled(uint64 indexed batchId, address indexed member, int256 amount, uint256 collateral);
    event PayoutSettled(uint64 indexed payoutId, address indexed member, int256 amount, uint256 collateral);

    error ZeroAmount();
    error BatchAlreadyAnchored(uint64 batchId);
    error PayoutAlreadySettled(uint64 payoutId);
    error EmptyRoot();
    error BadSequenceRange(uint64 firstSeq, uint64 lastSeq, uint32 tradeCount);
    error LengthMismatch(uint256 members, uint256 amounts);
    error NetNotZero(int256 sum);
    error InsufficientCollateral(address member, uint256 collateral, uint256 needed);
    error UnknownWithdrawal(uint256 requestId);
    error WithdrawalNotPending(uint256 requestId, WithdrawalStatus status);
    error RenounceDisabled();

    constructor(IERC20 token_, address operator_) Ownable(operator_) {
        token = token_;
    }

    function renounceOwnership() public view override onlyOwner {
        revert RenounceDisabled();
    }

    // ------------------------------------------------------------------ collateral

    /// @notice Move `amount` EuroCredit (approved beforehand) into collateral.
    function deposit(uint256 amount) external {
        _deposit(msg.sender, amount);
    }

    /// @notice Deposit `amount` of the caller's EuroCredit (approved beforehand) as
    /// `member`'s collateral: the operator's on-ramp credits members this way.
    function depositFor(address member, uint256 amount) external {
        _deposit(member, amount);
    }

    function _deposit(address member, uint256 amount) private {
        if (amount == 0) revert ZeroAmount();
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 c = collateral[member] + amount;
        collateral[member] = c;
        emit Deposited(member, amount, c);
    }

    /// @notice Ask to withdraw; the operator executes it once the exchange has
    /// released the amount, or rejects it (it backs open orders or unsettled trades).
    function requestWithdrawal(uint96 amount) external returns (uint256 requestId) {
        if (amount == 0) revert ZeroAmount();
        uint256 c = collateral[msg.sender];
        if (c < amount) revert InsufficientCollateral(msg.sender, c, amount);
        requestId = ++withdrawalCount;
        withdrawals[requestId] = Withdrawal(msg.sender, amount, WithdrawalStatus.Requested);
        emit WithdrawalRequested(requestId, msg.sender, amount);
    }

    function executeWithdrawal(uint256 requestId) external onlyOwner {
        Withdrawal storage w = _pending(requestId);
        (address member, uint256 amount) = (w.member, w.amount);
        uint256 c = collateral[member];
        if (c < amount) revert InsufficientCollateral(member, c, amount);
        w.status = WithdrawalStatus.Executed;
        unchecked {
            c -= amount;
        }
        collateral[member] = c;
        token.safeTransfer(member, amount);
        emit WithdrawalExecuted(requestId, member, amount, c);
    }

    function rejectWithdrawal(uint256 requestId, string calldata reason) external onlyOwner {
        Withdrawal storage w = _pending(requestId);
        w.status = WithdrawalStatus.Rejected;
        emit WithdrawalRejected(requestId, w.member, w.amount, reason);
    }

    function _pending(uint256 requestId) private view returns (Withdrawal storage w) {
        w = withdrawals[requestId];
        WithdrawalStatus s = w.status;
        if (s == WithdrawalStatus.None) revert UnknownWithdrawal(requestId);
        if (s != WithdrawalStatus.Requested) revert WithdrawalNotPending(requestId, s);
    }

    // ------------------------------------------------------------------ batches

    /// @notice Anchor a batch of trades and settle its net amounts, atomically.
    /// @param members members with a non-zero net amount in this batch
    /// @param amounts their net amounts: negative for net buyers, positive for net sellers
    function anchorBatch(
        uint64 batchId,
        bytes32 root,
        uint32 tradeCount,
        uint64 firstSeq,
        uint64 lastSeq,
        address[] calldata members,
        int256[] calldata amounts
    ) external onlyOwner {
        if (batchRoot[batchId] != bytes32(0)) revert BatchAlreadyAnchored(batchId);
        if (root == bytes32(0)) revert EmptyRoot();
        if (tradeCount == 0 || lastSeq < firstSeq) revert BadSequenceRange(firstSeq, lastSeq, tradeCount);
        uint256 n = members.length;
        if (n != amounts.length) revert LengthMismatch(n, amounts.length);
        int256 sum;
        for (uint256 i; i < n; ++i) {
            sum += amounts[i];
        }
        if (sum != 0) revert NetNotZero(sum);
        batchRoot[batchId] = root;
        for (uint256 i; i < n; ++i) {
            (address m, int256 a) = (members[i], amounts[i]);
            emit NetSettled(batchId, m, a, _applyDelta(m, a));
        }
        unchecked {
            ++batchCount;
        }
        emit BatchAnchored(batchId, root, tradeCount, firstSeq, lastSeq, n);
    }

    /// @notice Settle one flexibility event's payouts: positive amounts (revenue shares)
    /// are paid by the operator in EuroCredit (approved to this contract) into the
    /// members' collateral; negative amounts (shortfall penalties) are taken from the
    /// members' collateral and paid to the operator. Refuses an id twice.
    function settlePayouts(uint64 payoutId, address[] calldata members, int256[] calldata amounts)
        external
        onlyOwner
    {
        if (payoutBatches[payoutId]) revert PayoutAlreadySettled(payoutId);
        uint256 n = members.length;
        if (n != amounts.length) revert LengthMismatch(n, amounts.length);
        payoutBatches[payoutId] = true;
        uint256 credit;
        uint256 debit;
        for (uint256 i; i < n; ++i) {
            (address m, int256 a) = (members[i], amounts[i]);
            if (a < 0) debit += uint256(-a);
            else credit += uint256(a);
            emit PayoutSettled(payoutId, m, a, _applyDelta(m, a));
        }
        if (credit > debit) {
            token.safeTransferFrom(msg.sender, address(this), credit - debit);
        } else if (debit > credit) {
            token.safeTransfer(msg.sender, debit - credit);
        }
    }

    /// @dev Add `a` (negative: take) to `m`'s collateral; refuses to go below zero.
    function _applyDelta(address m, int256 a) private returns (uint256 c) {
        c = collateral[m];
        if (a < 0) {
            uint256 d = uint256(-a);
            if (c < d) revert InsufficientCollateral(m, c, d);
            unchecked {
                c -= d;
            }
        } else {
            c += uint256(a);
        }
        collateral[m] = c;
    }

    // ------------------------------------------------------------------ proofs

    /// @notice True when `leaf` is in the anchored batch `batchId` by `proof`.
    /// @dev `leaf` must be computed by the checker from the trade's fields (`tradeLeaf`),
    /// never taken from whoever supplies the proof: an inner node of the tree would pass
    /// as well. `verifyTradeFields` does both in one call.
    function verifyTrade(uint64 batchId, bytes32 leaf, bytes32[] calldata proof) public view returns (bool) {
        bytes32 root = batchRoot[batchId];
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leaf, _hashNode);
    }

    /// @notice Inclusion of the trade with these fields in batch `batchId`.
    function verifyTradeFields(
        uint64 batchId,
        uint64 tradeId,
        bytes32 productHash,
        address buyer,
        address seller,
        uint64 energyWh,
        int64 priceTicks,
        bytes32 signaturesHash,
        bytes32[] calldata proof
    ) external view returns (bool) {
        return verifyTrade(
            batchId, tradeLeaf(tradeId, productHash, buyer, seller, energyWh, priceTicks, signaturesHash), proof
        );
    }

    /// @notice The leaf of a trade, as the exchange computes it off chain.
    function tradeLeaf(
        uint64 tradeId,
        bytes32 productHash,
        address buyer,
        address seller,
        uint64 energyWh,
        int64 priceTicks,
        bytes32 signaturesHash
    ) public pure returns (bytes32) {
        return keccak256(
            abi.encodePacked(
                bytes1(0x00), abi.encode(tradeId, productHash, buyer, seller, energyWh, priceTicks, signaturesHash)
            )
        );
    }

    /// @dev An inner node of the tree: the pair sorted (so a proof is only the siblings),
    /// prefixed with 0x01 so no leaf (prefixed 0x00) can pass for a node.
    function _hashNode(bytes32 a, bytes32 b) private pure returns (bytes32) {
        return a < b ? keccak256(abi.encodePacked(bytes1(0x01), a, b)) : keccak256(abi.encodePacked(bytes1(0x01), b, a));
    }
}
