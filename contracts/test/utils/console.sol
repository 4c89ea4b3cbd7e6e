// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice The two `console.log` overloads the tests print with; forge decodes calls to the console address.
library console {
    address private constant _CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function log(string memory message) internal view {
        _send(abi.encodeWithSignature("log(string)", message));
    }

    function log(string memory message, uint256 value) internal view {
        _send(abi.encodeWithSignature("log(string,uint256)", message, value));
    }

    /// @dev The console is called from view functions, so the call goes through a pure-cast staticcall.
    function _send(bytes memory payload) private view {
        (bool ok,) = _CONSOLE.staticcall(payload);
        ok; // forge intercepts the call; nothing to check
    }
}
