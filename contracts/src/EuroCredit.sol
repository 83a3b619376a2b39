// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title EuroCredit (vEUR): the community's euro credit.
/// @notice An ERC-20 token with 8 decimals: one unit is 1e-8 EUR, exactly the
/// exchange's money unit (Wh x ticks of 0.01 EUR/MWh). The operator mints it to
/// members, standing in for a fiat on-ramp, and burns it on the way out.
contract EuroCredit {
    string public constant name = "Voltbourse Euro Credit";
    string public constant symbol = "vEUR";
    uint8 public constant decimals = 8;

    address public immutable operator;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error NotOperator(address caller);
    error InsufficientBalance(address account, uint256 balance, uint256 needed);
    error InsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);
    error ZeroAddress();

    constructor(address operator_) {
        if (operator_ == address(0)) revert ZeroAddress();
        operator = operator_;
    }

    function mint(address to, uint256 value) external {
        if (msg.sender != operator) revert NotOperator(msg.sender);
        if (to == address(0)) revert ZeroAddress();
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    /// @notice Redeem credits (the fiat off-ramp): the holder burns its own tokens.
    function burn(uint256 value) external {
        _debit(msg.sender, value);
        totalSupply -= value;
        emit Transfer(msg.sender, address(0), value);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _move(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert InsufficientAllowance(from, msg.sender, allowed, value);
            allowance[from][msg.sender] = allowed - value;
        }
        _move(from, to, value);
        return true;
    }

    function _move(address from, address to, uint256 value) private {
        if (to == address(0)) revert ZeroAddress();
        _debit(from, value);
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }

    function _debit(address account, uint256 value) private {
        uint256 balance = balanceOf[account];
        if (balance < value) revert InsufficientBalance(account, balance, value);
        unchecked {
            balanceOf[account] = balance - value;
        }
    }
}
