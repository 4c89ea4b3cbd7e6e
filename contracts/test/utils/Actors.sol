// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @notice An account that refuses ether, to drive the TransferFailed paths.
contract EtherRejecter {
    error Refused();

    /// @dev Forwards a call so the rejecter can act (register, deposit, claim) as `msg.sender`.
    function act(address target, uint256 value, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        revert Refused();
    }
}

/// @notice An account that, when paid, calls back into `target` once with `data` and records the outcome.
contract Reenterer {
    address public target;
    bytes public data;
    bool public attempted;
    bool public succeeded;
    bytes public returned;
    uint256 public received;
    uint256 public payments;

    function arm(address target_, bytes calldata data_) external {
        target = target_;
        data = data_;
    }

    function act(address to, uint256 value, bytes calldata call_) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = to.call{value: value}(call_);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return ret;
    }

    receive() external payable {
        received += msg.value;
        ++payments;
        if (target != address(0) && !attempted) {
            attempted = true;
            (succeeded, returned) = target.call(data);
        }
    }
}

/// @notice Counts the payments it receives (to check that a batch pays an operator once per run).
contract PaymentCounter {
    uint256 public payments;
    uint256 public received;

    receive() external payable {
        ++payments;
        received += msg.value;
    }
}
