// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

/// @title EuroCredit (vEUR): the community's euro credit.
/// @notice An ERC-20 token (OpenZeppelin's) with 8 decimals: one unit is 1e-8 EUR, exactly
/// the exchange's money unit (Wh x ticks of 0.01 EUR/MWh). The operator (the owner) mints it,
/// standing in for a fiat on-ramp; holders burn their own to redeem (`burn`, or `burnFrom`
/// with an allowance).
/// @dev The operator is rotated in two steps (Ownable2Step): the current operator calls
/// `transferOwnership(next)`, then `next` calls `acceptOwnership()`. Renouncing is refused:
/// a token nobody can mint would strand the on-ramp.
contract EuroCredit is ERC20, ERC20Burnable, Ownable2Step {
    error RenounceDisabled();

    constructor(address operator_) ERC20("Voltbourse Euro Credit", "vEUR") Ownable(operator_) {}

    function decimals() public pure override returns (uint8) {
        return 8;
    }

    /// @notice The operator's on-ramp: new credits to `to`.
    function mint(address to, uint256 value) external onlyOwner {
        _mint(to, value);
    }

    function renounceOwnership() public view override onlyOwner {
        revert RenounceDisabled();
    }
}
