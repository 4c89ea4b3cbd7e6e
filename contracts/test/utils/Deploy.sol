// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "./Test.sol";
import {ExpertRegistry} from "../../src/ExpertRegistry.sol";
import {PaymentEscrow} from "../../src/PaymentEscrow.sol";
import {DisputeManager} from "../../src/DisputeManager.sol";
import {IExpertRegistry} from "../../src/interfaces/IExpertRegistry.sol";
import {IPaymentEscrow} from "../../src/interfaces/IPaymentEscrow.sol";
import {IDisputeManager} from "../../src/interfaces/IDisputeManager.sol";

/// @notice Deploy fixture: the three contracts wired as the deploy code wires them (the test contract is the
/// deployer), realistic parameters, and helpers that register, deposit and sign.
abstract contract Deploy is Test {
    uint256 internal constant MIN_STAKE = 1 ether;
    uint256 internal constant MIN_VERIFIER_STAKE = 0.5 ether;
    uint256 internal constant UNBONDING_PERIOD = 7 days;
    uint256 internal constant WITHDRAW_DELAY = 2 days;
    uint256 internal constant DISPUTE_BOND = 0.1 ether;
    uint256 internal constant COMMIT_PERIOD = 1 days;
    uint256 internal constant REVEAL_PERIOD = 1 days;
    uint256 internal constant QUORUM_STAKE = 1 ether;
    uint256 internal constant SLASH_BPS = 5_000;
    uint256 internal constant CHALLENGER_BPS = 2_000;
    uint256 internal constant VERIFIER_BPS = 3_000;
    uint256 internal constant EXPERT_BOND_BPS = 5_000;
    uint256 internal constant START = 1_700_000_000;

    bytes32 internal constant MODEL = keccak256("digits-mlp-v1 manifest");
    bytes32 internal constant CAPABILITY = keccak256("digits-expert");
    bytes32 internal constant NODE_KEY = keccak256("ed25519 node key");
    string internal constant ENDPOINT = "/ip4/127.0.0.1/tcp/40123";
    uint96 internal constant PRICE = 0.001 ether;

    ExpertRegistry internal registry;
    PaymentEscrow internal escrow;
    DisputeManager internal disputes;

    function deploy() internal {
        vm.warp(START);
        registry = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        escrow = new PaymentEscrow(address(registry), WITHDRAW_DELAY);
        disputes = new DisputeManager(
            address(registry),
            DISPUTE_BOND,
            COMMIT_PERIOD,
            REVEAL_PERIOD,
            QUORUM_STAKE,
            SLASH_BPS,
            CHALLENGER_BPS,
            VERIFIER_BPS,
            EXPERT_BOND_BPS
        );
        registry.setDisputeManager(address(disputes));
        vm.label(address(registry), "registry");
        vm.label(address(escrow), "escrow");
        vm.label(address(disputes), "disputes");
    }

    // ----------------------------------------------------------------------------------------------------------
    // Registry helpers
    // ----------------------------------------------------------------------------------------------------------

    function expertParams(address signer) internal pure returns (IExpertRegistry.ExpertParams memory) {
        return expertParams(signer, MODEL, CAPABILITY);
    }

    function expertParams(address signer, bytes32 model, bytes32 capability)
        internal
        pure
        returns (IExpertRegistry.ExpertParams memory)
    {
        return IExpertRegistry.ExpertParams({
            signer: signer,
            modelHash: model,
            capability: capability,
            pricePerCall: PRICE,
            nodeKey: NODE_KEY,
            endpoint: ENDPOINT
        });
    }

    function registerExpert(address operator, address signer) internal returns (uint256 expertId) {
        return registerExpert(operator, expertParams(signer), MIN_STAKE);
    }

    function registerExpert(address operator, IExpertRegistry.ExpertParams memory params, uint256 stake)
        internal
        returns (uint256 expertId)
    {
        vm.deal(operator, operator.balance + stake);
        vm.prank(operator);
        expertId = registry.registerExpert{value: stake}(params);
    }

    function registerVerifier(address verifier, uint256 stake) internal {
        vm.deal(verifier, verifier.balance + stake);
        vm.prank(verifier);
        registry.registerVerifier{value: stake}();
    }

    // ----------------------------------------------------------------------------------------------------------
    // Escrow helpers
    // ----------------------------------------------------------------------------------------------------------

    function depositFor(address client, uint256 amount) internal {
        vm.deal(address(this), address(this).balance + amount);
        escrow.depositFor{value: amount}(client);
    }

    function signVoucher(uint256 clientKey, uint256 expertId, uint256 cumulative)
        internal
        view
        returns (IPaymentEscrow.Voucher memory voucher, bytes memory signature)
    {
        voucher = IPaymentEscrow.Voucher({client: vm.addr(clientKey), expertId: expertId, cumulativeAmount: cumulative});
        signature = sign(clientKey, escrow.voucherDigest(voucher));
    }

    // ----------------------------------------------------------------------------------------------------------
    // Dispute helpers
    // ----------------------------------------------------------------------------------------------------------

    function receiptFor(uint256 expertId, bytes32 requestId) internal pure returns (IDisputeManager.Receipt memory) {
        return IDisputeManager.Receipt({
            expertId: expertId,
            modelHash: MODEL,
            requestId: requestId,
            inputHash: keccak256(abi.encode("input", requestId)),
            outputHash: keccak256(abi.encode("output", requestId)),
            price: PRICE
        });
    }

    function signReceipt(uint256 signerKey, IDisputeManager.Receipt memory receipt)
        internal
        view
        returns (bytes memory)
    {
        return sign(signerKey, disputes.receiptDigest(receipt));
    }

    function sign(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev Test contracts fund deposits from their own balance and receive slashed ether when they act as the
    /// dispute manager of a registry under test.
    receive() external payable virtual {}
}
