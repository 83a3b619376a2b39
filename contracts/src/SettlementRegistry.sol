// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

interface IEuroCredit {
    function transfer(address to, uint256 value) external returns (bool);
    function transferFrom(address from, address to, uint256 value) external returns (bool);
}

/// @title SettlementRegistry: collateral escrow and trade-batch anchoring.
/// @notice Members deposit EuroCredit as collateral. The operator (the exchange's
/// settlement worker) anchors each batch of trades by its Merkle root and, in the
/// same transaction, applies the batch's net amount per member to their collateral:
/// buyers pay (negative), sellers receive (positive); a batch's amounts sum to zero.
/// Withdrawals are requested by the member and executed by the operator only after
/// the exchange has released the amount from the member's open orders and unsettled
/// trades (the exchange holds the order book, so it is the one that can tell).
/// Flexibility revenue from outside the community enters through `creditPayouts`.
///
/// Merkle tree: leaves are keccak256(0x00 || abi.encode(trade fields)) computed off
/// chain (docs/settlement.md); an inner node is keccak256(0x01 || min(a,b) || max(a,b)).
contract SettlementRegistry {
    struct Batch {
        bytes32 root;
        uint64 firstSeq;
        uint64 lastSeq;
        uint32 tradeCount;
        uint64 anchoredAt; // block timestamp; non-zero means anchored
    }

    struct Withdrawal {
        address member;
        uint96 amount;
        uint8 status; // 1 requested, 2 executed, 3 rejected
    }

    IEuroCredit public immutable token;
    address public immutable operator;

    mapping(uint64 => Batch) public batches;
    mapping(uint64 => bool) public payoutBatches;
    mapping(address => uint256) public collateral;
    mapping(uint256 => Withdrawal) public withdrawals;
    uint256 public withdrawalCount;
    uint64 public batchCount;
    uint64 public lastBatchId;

    event Deposited(address indexed member, uint256 amount, uint256 collateral);
    event WithdrawalRequested(uint256 indexed requestId, address indexed member, uint256 amount);
    event WithdrawalExecuted(uint256 indexed requestId, address indexed member, uint256 amount, uint256 collateral);
    event WithdrawalRejected(uint256 indexed requestId, address indexed member, uint256 amount, string reason);
    event BatchAnchored(
        uint64 indexed batchId, bytes32 root, uint32 tradeCount, uint64 firstSeq, uint64 lastSeq, uint256 members
    );
    event NetSettled(uint64 indexed batchId, address indexed member, int256 amount, uint256 collateral);
    event PayoutCredited(uint64 indexed payoutId, address indexed member, uint256 amount, uint256 collateral);
    event PayoutSettled(uint64 indexed payoutId, address indexed member, int256 amount, uint256 collateral);

    error NotOperator(address caller);
    error ZeroAmount();
    error BatchAlreadyAnchored(uint64 batchId);
    error PayoutAlreadyCredited(uint64 payoutId);
    error EmptyRoot();
    error BadSequenceRange(uint64 firstSeq, uint64 lastSeq, uint32 tradeCount);
    error LengthMismatch(uint256 members, uint256 amounts);
    error NetNotZero(int256 sum);
    error InsufficientCollateral(address member, uint256 collateral, uint256 needed);
    error UnknownWithdrawal(uint256 requestId);
    error WithdrawalNotPending(uint256 requestId, uint8 status);
    error TransferFailed();

    modifier onlyOperator() {
        if (msg.sender != operator) revert NotOperator(msg.sender);
        _;
    }

    constructor(IEuroCredit token_, address operator_) {
        token = token_;
        operator = operator_;
    }

    // ------------------------------------------------------------------ collateral

    /// @notice Move `amount` EuroCredit (approved beforehand) into collateral.
    function deposit(uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
        uint256 c = collateral[msg.sender] + amount;
        collateral[msg.sender] = c;
        emit Deposited(msg.sender, amount, c);
    }

    /// @notice Deposit `amount` of the caller's EuroCredit (approved beforehand) as
    /// `member`'s collateral: the operator's on-ramp credits members this way.
    function depositFor(address member, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        if (!token.transferFrom(msg.sender, address(this), amount)) revert TransferFailed();
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
        withdrawals[requestId] = Withdrawal(msg.sender, amount, 1);
        emit WithdrawalRequested(requestId, msg.sender, amount);
    }

    function executeWithdrawal(uint256 requestId) external onlyOperator {
        Withdrawal storage w = _pending(requestId);
        uint256 c = collateral[w.member];
        if (c < w.amount) revert InsufficientCollateral(w.member, c, w.amount);
        w.status = 2;
        unchecked {
            c -= w.amount;
        }
        collateral[w.member] = c;
        if (!token.transfer(w.member, w.amount)) revert TransferFailed();
        emit WithdrawalExecuted(requestId, w.member, w.amount, c);
    }

    function rejectWithdrawal(uint256 requestId, string calldata reason) external onlyOperator {
        Withdrawal storage w = _pending(requestId);
        w.status = 3;
        emit WithdrawalRejected(requestId, w.member, w.amount, reason);
    }

    function _pending(uint256 requestId) private view returns (Withdrawal storage w) {
        w = withdrawals[requestId];
        if (w.status == 0) revert UnknownWithdrawal(requestId);
        if (w.status != 1) revert WithdrawalNotPending(requestId, w.status);
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
    ) external onlyOperator {
        if (batches[batchId].anchoredAt != 0) revert BatchAlreadyAnchored(batchId);
        if (root == bytes32(0)) revert EmptyRoot();
        if (tradeCount == 0 || lastSeq < firstSeq) revert BadSequenceRange(firstSeq, lastSeq, tradeCount);
        if (members.length != amounts.length) revert LengthMismatch(members.length, amounts.length);
        int256 sum;
        for (uint256 i; i < members.length; ++i) {
            sum += amounts[i];
        }
        if (sum != 0) revert NetNotZero(sum);
        batches[batchId] = Batch(root, firstSeq, lastSeq, tradeCount, uint64(block.timestamp));
        for (uint256 i; i < members.length; ++i) {
            emit NetSettled(batchId, members[i], amounts[i], _applyDelta(members[i], amounts[i]));
        }
        unchecked {
            ++batchCount;
        }
        if (batchId > lastBatchId) lastBatchId = batchId;
        emit BatchAnchored(batchId, root, tradeCount, firstSeq, lastSeq, members.length);
    }

    /// @notice Credit flexibility revenue shares: the operator pays `amounts` in
    /// EuroCredit (approved to this contract) into the members' collateral.
    function creditPayouts(uint64 payoutId, address[] calldata members, uint256[] calldata amounts)
        external
        onlyOperator
    {
        if (payoutBatches[payoutId]) revert PayoutAlreadyCredited(payoutId);
        if (members.length != amounts.length) revert LengthMismatch(members.length, amounts.length);
        payoutBatches[payoutId] = true;
        uint256 total;
        for (uint256 i; i < members.length; ++i) {
            total += amounts[i];
        }
        if (total != 0 && !token.transferFrom(msg.sender, address(this), total)) revert TransferFailed();
        for (uint256 i; i < members.length; ++i) {
            uint256 c = collateral[members[i]] + amounts[i];
            collateral[members[i]] = c;
            emit PayoutCredited(payoutId, members[i], amounts[i], c);
        }
    }

    /// @notice Settle one flexibility event's payouts: positive amounts (revenue shares)
    /// are paid by the operator in EuroCredit (approved to this contract) into the
    /// members' collateral; negative amounts (shortfall penalties) are taken from the
    /// members' collateral and paid to the operator. Refuses an id twice.
    function settlePayouts(uint64 payoutId, address[] calldata members, int256[] calldata amounts)
        external
        onlyOperator
    {
        if (payoutBatches[payoutId]) revert PayoutAlreadyCredited(payoutId);
        if (members.length != amounts.length) revert LengthMismatch(members.length, amounts.length);
        payoutBatches[payoutId] = true;
        uint256 credit;
        uint256 debit;
        for (uint256 i; i < members.length; ++i) {
            int256 a = amounts[i];
            if (a < 0) debit += uint256(-a);
            else credit += uint256(a);
            emit PayoutSettled(payoutId, members[i], a, _applyDelta(members[i], a));
        }
        if (credit > debit) {
            if (!token.transferFrom(msg.sender, address(this), credit - debit)) revert TransferFailed();
        } else if (debit > credit) {
            if (!token.transfer(msg.sender, debit - credit)) revert TransferFailed();
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
        bytes32 root = batches[batchId].root;
        if (root == bytes32(0)) return false;
        bytes32 h = leaf;
        for (uint256 i; i < proof.length; ++i) {
            bytes32 p = proof[i];
            h = h < p ? keccak256(abi.encodePacked(bytes1(0x01), h, p)) : keccak256(abi.encodePacked(bytes1(0x01), p, h));
        }
        return h == root;
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
}
