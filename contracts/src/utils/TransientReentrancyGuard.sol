// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title TransientReentrancyGuard
/// @notice The `nonReentrant` guard of OpenZeppelin's ReentrancyGuardTransient, on a `transient` state variable.
/// @dev Same semantics, same error (`ReentrancyGuardReentrantCall()`, so revert decoders see the selector they know)
/// and the same cost (one TLOAD and two TSTOREs per guarded call). It exists because slither 0.11.6 cannot build its
/// IR for OpenZeppelin's guard (library calls through `using TransientSlot for *`) in a contract that also inherits
/// EIP712, and then silently skips or misreports the whole contract; a transient variable analyses cleanly.
abstract contract TransientReentrancyGuard {
    /// @notice A guarded function was entered again before it returned.
    error ReentrancyGuardReentrantCall();

    bool private transient _entered;

    modifier nonReentrant() {
        if (_entered) revert ReentrancyGuardReentrantCall();
        _entered = true;
        _;
        _entered = false;
    }
}
