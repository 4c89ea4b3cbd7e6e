// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "./Vm.sol";

/// @notice A small test base: the cheatcode handle, assertions that delegate to forge's assertion cheatcodes,
/// `bound`, named accounts, and the invariant targeting functions that forge reads from a test contract
/// (`targetContracts()`, `targetSelectors()`, `targetSenders()`, `excludeSenders()`, `excludeContracts()`).
abstract contract Test {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @dev Invariant targeting (shape as forge expects it).
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] private _targetedContracts;
    address[] private _targetedSenders;
    address[] private _excludedSenders;
    address[] private _excludedContracts;
    FuzzSelector[] private _targetedSelectors;

    // ----------------------------------------------------------------------------------------------------------
    // Assertions
    // ----------------------------------------------------------------------------------------------------------

    function assertTrue(bool condition) internal pure {
        vm.assertTrue(condition, "assertTrue");
    }

    function assertTrue(bool condition, string memory err) internal pure {
        vm.assertTrue(condition, err);
    }

    function assertFalse(bool condition) internal pure {
        vm.assertFalse(condition, "assertFalse");
    }

    function assertFalse(bool condition, string memory err) internal pure {
        vm.assertFalse(condition, err);
    }

    function assertEq(bool left, bool right) internal pure {
        vm.assertEq(left, right, "assertEq(bool)");
    }

    function assertEq(uint256 left, uint256 right) internal pure {
        vm.assertEq(left, right, "assertEq(uint256)");
    }

    function assertEq(uint256 left, uint256 right, string memory err) internal pure {
        vm.assertEq(left, right, err);
    }

    function assertEq(address left, address right) internal pure {
        vm.assertEq(left, right, "assertEq(address)");
    }

    function assertEq(address left, address right, string memory err) internal pure {
        vm.assertEq(left, right, err);
    }

    function assertEq(bytes32 left, bytes32 right) internal pure {
        vm.assertEq(left, right, "assertEq(bytes32)");
    }

    function assertEq(bytes32 left, bytes32 right, string memory err) internal pure {
        vm.assertEq(left, right, err);
    }

    function assertEq(string memory left, string memory right) internal pure {
        vm.assertEq(left, right, "assertEq(string)");
    }

    function assertEq(bytes memory left, bytes memory right) internal pure {
        vm.assertEq(left, right, "assertEq(bytes)");
    }

    function assertEq(uint256[] memory left, uint256[] memory right) internal pure {
        vm.assertEq(left, right, "assertEq(uint256[])");
    }

    function assertLe(uint256 left, uint256 right) internal pure {
        vm.assertLe(left, right, "assertLe");
    }

    function assertLe(uint256 left, uint256 right, string memory err) internal pure {
        vm.assertLe(left, right, err);
    }

    function assertGe(uint256 left, uint256 right) internal pure {
        vm.assertGe(left, right, "assertGe");
    }

    function assertGt(uint256 left, uint256 right) internal pure {
        vm.assertGt(left, right, "assertGt");
    }

    function assertLt(uint256 left, uint256 right) internal pure {
        vm.assertLt(left, right, "assertLt");
    }

    // ----------------------------------------------------------------------------------------------------------
    // Fuzzing helpers
    // ----------------------------------------------------------------------------------------------------------

    /// @dev Maps `x` into [min, max] without discarding runs: values already inside stay unchanged, the rest
    /// wrap around the range.
    function bound(uint256 x, uint256 min, uint256 max) internal pure returns (uint256) {
        require(min <= max, "bound: min > max");
        if (x >= min && x <= max) return x;
        uint256 size = max - min;
        if (size == type(uint256).max) return x;
        unchecked {
            return min + (x % (size + 1));
        }
    }

    /// @dev A deterministic key and its address, labelled in traces.
    function makeAccount(string memory name) internal returns (address account, uint256 key) {
        key = uint256(keccak256(bytes(name)));
        account = vm.addr(key);
        vm.label(account, name);
    }

    function makeAddr(string memory name) internal returns (address account) {
        (account,) = makeAccount(name);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Invariant targeting
    // ----------------------------------------------------------------------------------------------------------

    function targetContract(address target) internal {
        _targetedContracts.push(target);
    }

    function targetSelector(FuzzSelector memory selector) internal {
        _targetedSelectors.push(selector);
    }

    function targetSender(address sender) internal {
        _targetedSenders.push(sender);
    }

    function excludeSender(address sender) internal {
        _excludedSenders.push(sender);
    }

    function excludeContract(address target) internal {
        _excludedContracts.push(target);
    }

    function targetContracts() public view returns (address[] memory) {
        return _targetedContracts;
    }

    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetedSelectors;
    }

    function targetSenders() public view returns (address[] memory) {
        return _targetedSenders;
    }

    function excludeSenders() public view returns (address[] memory) {
        return _excludedSenders;
    }

    function excludeContracts() public view returns (address[] memory) {
        return _excludedContracts;
    }
}
