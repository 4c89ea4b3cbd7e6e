// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Deploy} from "./utils/Deploy.sol";
import {EtherRejecter, Reenterer} from "./utils/Actors.sol";
import {ExpertRegistry} from "../src/ExpertRegistry.sol";
import {IExpertRegistry} from "../src/interfaces/IExpertRegistry.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {TransientReentrancyGuard} from "../src/utils/TransientReentrancyGuard.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @dev Unit tests of the registry. `registry` is a registry whose dispute manager is this test contract, so that
/// the hooks (lockForDispute, slash) can be driven directly.
contract ExpertRegistryTest is Deploy {
    address internal operator;
    address internal signer;
    address internal verifier;
    uint256 internal expertId;

    function setUp() public {
        vm.warp(START);
        registry = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        registry.setDisputeManager(address(this));
        operator = makeAddr("operator");
        signer = makeAddr("signer");
        verifier = makeAddr("verifier");
        expertId = registerExpert(operator, signer);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Constructor and setDisputeManager
    // ----------------------------------------------------------------------------------------------------------

    function test_Constructor_SetsParameters() public view {
        assertEq(registry.MIN_STAKE(), MIN_STAKE);
        assertEq(registry.MIN_VERIFIER_STAKE(), MIN_VERIFIER_STAKE);
        assertEq(registry.UNBONDING_PERIOD(), UNBONDING_PERIOD);
        assertEq(registry.MAX_PAGE(), 100);
        assertEq(registry.MAX_ENDPOINT_LENGTH(), 256);
        assertEq(registry.disputeManager(), address(this));
    }

    function test_SetDisputeManager() public {
        ExpertRegistry fresh = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        vm.expectEmit(address(fresh));
        emit IExpertRegistry.DisputeManagerSet(address(0xD15));
        fresh.setDisputeManager(address(0xD15));
        assertEq(fresh.disputeManager(), address(0xD15));
    }

    function test_RevertIf_SetDisputeManagerNotDeployer() public {
        ExpertRegistry fresh = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotDeployer.selector, operator));
        fresh.setDisputeManager(address(0xD15));
    }

    function test_RevertIf_SetDisputeManagerTwice() public {
        vm.expectRevert(IExpertRegistry.RegistryDisputeManagerAlreadySet.selector);
        registry.setDisputeManager(address(0xD15));
    }

    function test_RevertIf_SetDisputeManagerZero() public {
        ExpertRegistry fresh = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        vm.expectRevert(IExpertRegistry.RegistryZeroAddress.selector);
        fresh.setDisputeManager(address(0));
    }

    // ----------------------------------------------------------------------------------------------------------
    // registerExpert
    // ----------------------------------------------------------------------------------------------------------

    function test_RegisterExpert_StoresEverything() public view {
        assertEq(expertId, 1, "ids start at 1");
        assertEq(registry.expertCount(), 1);
        IExpertRegistry.Expert memory e = registry.getExpert(expertId);
        assertEq(e.operator, operator);
        assertEq(e.pricePerCall, PRICE);
        assertEq(e.signer, signer);
        assertEq(e.stake, MIN_STAKE);
        assertEq(e.modelHash, MODEL);
        assertEq(e.capability, CAPABILITY);
        assertEq(e.nodeKey, NODE_KEY);
        assertEq(e.registeredAt, START);
        assertEq(e.unbondsAt, 0);
        assertEq(e.slashedTotal, 0);
        assertEq(e.disputesLost, 0);
        assertEq(e.openDisputes, 0);
        assertTrue(e.status == IExpertRegistry.ExpertStatus.Active);
        assertEq(e.endpoint, ENDPOINT);
        assertEq(registry.operatorOf(expertId), operator);
        assertTrue(registry.wasSigner(expertId, signer));
        assertEq(address(registry).balance, MIN_STAKE);
    }

    function test_RegisterExpert_EmitsEvent() public {
        address op = makeAddr("op2");
        vm.deal(op, 2 ether);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.ExpertRegistered(2, op, MODEL, CAPABILITY, signer, PRICE, 2 ether, NODE_KEY, ENDPOINT);
        vm.prank(op);
        registry.registerExpert{value: 2 ether}(expertParams(signer));
    }

    function test_RegisterExpert_IdsIncreaseAndIndex() public {
        bytes32 otherModel = keccak256("other model");
        uint256 second = registerExpert(operator, expertParams(signer, otherModel, CAPABILITY), MIN_STAKE);
        uint256 third = registerExpert(operator, expertParams(signer, MODEL, keccak256("other")), MIN_STAKE);
        assertEq(second, 2);
        assertEq(third, 3);
        assertEq(registry.expertCount(), 3);
        assertEq(registry.countByModel(MODEL), 2);
        assertEq(registry.countByModel(otherModel), 1);
        assertEq(registry.countByCapability(CAPABILITY), 2);
        uint256[] memory ids = registry.expertsByModel(MODEL, 0, 10);
        assertEq(ids.length, 2);
        assertEq(ids[0], 1);
        assertEq(ids[1], 3);
        ids = registry.expertsByCapability(CAPABILITY, 0, 10);
        assertEq(ids.length, 2);
        assertEq(ids[0], 1);
        assertEq(ids[1], 2);
    }

    function test_RegisterExpert_EndpointAtMaximum() public {
        IExpertRegistry.ExpertParams memory p = expertParams(signer);
        p.endpoint = string(new bytes(256));
        uint256 id = registerExpert(operator, p, MIN_STAKE);
        assertEq(bytes(registry.getExpert(id).endpoint).length, 256);
    }

    function test_RevertIf_RegisterStakeTooLow() public {
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(IExpertRegistry.RegistryStakeTooLow.selector, MIN_STAKE - 1, MIN_STAKE)
        );
        registry.registerExpert{value: MIN_STAKE - 1}(expertParams(signer));
    }

    function test_RevertIf_RegisterZeroSigner() public {
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        vm.expectRevert(IExpertRegistry.RegistryZeroAddress.selector);
        registry.registerExpert{value: MIN_STAKE}(expertParams(address(0)));
    }

    function test_RevertIf_RegisterZeroNodeKey() public {
        IExpertRegistry.ExpertParams memory p = expertParams(signer);
        p.nodeKey = bytes32(0);
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        vm.expectRevert(IExpertRegistry.RegistryZeroAddress.selector);
        registry.registerExpert{value: MIN_STAKE}(p);
    }

    function test_RevertIf_RegisterZeroModelHash() public {
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        vm.expectRevert(IExpertRegistry.RegistryZeroModelHash.selector);
        registry.registerExpert{value: MIN_STAKE}(expertParams(signer, bytes32(0), CAPABILITY));
    }

    function test_RevertIf_RegisterEndpointTooLong() public {
        IExpertRegistry.ExpertParams memory p = expertParams(signer);
        p.endpoint = string(new bytes(257));
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryEndpointTooLong.selector, 257, 256));
        registry.registerExpert{value: MIN_STAKE}(p);
    }

    function test_RevertIf_RegisterStakeAboveUint96() public {
        uint256 huge = uint256(type(uint96).max) + 1;
        vm.deal(operator, huge);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(SafeCast.SafeCastOverflowedUintDowncast.selector, 96, huge));
        registry.registerExpert{value: huge}(expertParams(signer));
    }

    function testFuzz_RegisterExpert_Stake(uint256 stake, uint96 price) public {
        stake = bound(stake, MIN_STAKE, type(uint96).max);
        IExpertRegistry.ExpertParams memory p = expertParams(signer);
        p.pricePerCall = price;
        uint256 id = registerExpert(operator, p, stake);
        IExpertRegistry.Expert memory e = registry.getExpert(id);
        assertEq(e.stake, stake);
        assertEq(e.pricePerCall, price);
        assertEq(address(registry).balance, MIN_STAKE + stake);
    }

    // ----------------------------------------------------------------------------------------------------------
    // updateExpert
    // ----------------------------------------------------------------------------------------------------------

    function test_UpdateExpert_RotatesSignerAndKeepsHistory() public {
        address newSigner = makeAddr("newSigner");
        bytes32 newKey = keccak256("new node key");
        vm.expectEmit(address(registry));
        emit IExpertRegistry.ExpertUpdated(expertId, newSigner, 7, newKey, "/ip4/10.0.0.1/tcp/1");
        vm.prank(operator);
        registry.updateExpert(expertId, newSigner, 7, newKey, "/ip4/10.0.0.1/tcp/1");

        IExpertRegistry.Expert memory e = registry.getExpert(expertId);
        assertEq(e.signer, newSigner);
        assertEq(e.pricePerCall, 7);
        assertEq(e.nodeKey, newKey);
        assertEq(e.endpoint, "/ip4/10.0.0.1/tcp/1");
        assertEq(e.modelHash, MODEL, "model never changes");
        assertTrue(registry.wasSigner(expertId, signer), "old signer stays valid");
        assertTrue(registry.wasSigner(expertId, newSigner));
        assertFalse(registry.wasSigner(expertId, makeAddr("stranger")));
        assertFalse(registry.wasSigner(expertId, address(0)));
        assertFalse(registry.wasSigner(2, signer), "unknown expert");
    }

    function test_UpdateExpert_SameSigner() public {
        vm.prank(operator);
        registry.updateExpert(expertId, signer, 9, NODE_KEY, ENDPOINT);
        assertEq(registry.getExpert(expertId).pricePerCall, 9);
        assertTrue(registry.wasSigner(expertId, signer));
    }

    function test_RevertIf_UpdateUnknownExpert() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownExpert.selector, 9));
        registry.updateExpert(9, signer, 1, NODE_KEY, ENDPOINT);
    }

    function test_RevertIf_UpdateNotOperator() public {
        vm.prank(signer);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotOperator.selector, expertId, signer));
        registry.updateExpert(expertId, signer, 1, NODE_KEY, ENDPOINT);
    }

    function test_RevertIf_UpdateNotActive() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryExpertNotActive.selector, expertId));
        registry.updateExpert(expertId, signer, 1, NODE_KEY, ENDPOINT);
    }

    function test_RevertIf_UpdateZeroSigner() public {
        vm.prank(operator);
        vm.expectRevert(IExpertRegistry.RegistryZeroAddress.selector);
        registry.updateExpert(expertId, address(0), 1, NODE_KEY, ENDPOINT);
    }

    function test_RevertIf_UpdateZeroNodeKey() public {
        vm.prank(operator);
        vm.expectRevert(IExpertRegistry.RegistryZeroAddress.selector);
        registry.updateExpert(expertId, signer, 1, bytes32(0), ENDPOINT);
    }

    function test_RevertIf_UpdateEndpointTooLong() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryEndpointTooLong.selector, 300, 256));
        registry.updateExpert(expertId, signer, 1, NODE_KEY, string(new bytes(300)));
    }

    // ----------------------------------------------------------------------------------------------------------
    // addStake, requestUnbond, withdrawStake
    // ----------------------------------------------------------------------------------------------------------

    function test_AddStake_ByAnyone() public {
        vm.deal(verifier, 3 ether);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.StakeAdded(expertId, 3 ether, MIN_STAKE + 3 ether);
        vm.prank(verifier);
        registry.addStake{value: 3 ether}(expertId);
        assertEq(registry.getExpert(expertId).stake, MIN_STAKE + 3 ether);
    }

    function test_RevertIf_AddStakeUnknownExpert() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownExpert.selector, 5));
        registry.addStake{value: 1}(5);
    }

    function test_RevertIf_AddStakeNotActive() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryExpertNotActive.selector, expertId));
        registry.addStake{value: 1}(expertId);
    }

    function test_RevertIf_AddStakeZero() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryStakeTooLow.selector, 0, 1));
        registry.addStake(expertId);
    }

    function test_RequestUnbond() public {
        vm.expectEmit(address(registry));
        emit IExpertRegistry.UnbondingRequested(expertId, START + UNBONDING_PERIOD);
        vm.prank(operator);
        registry.requestUnbond(expertId);
        IExpertRegistry.Expert memory e = registry.getExpert(expertId);
        assertTrue(e.status == IExpertRegistry.ExpertStatus.Unbonding);
        assertEq(e.unbondsAt, START + UNBONDING_PERIOD);
    }

    function test_RevertIf_RequestUnbondUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownExpert.selector, 0));
        registry.requestUnbond(0);
    }

    function test_RevertIf_RequestUnbondNotOperator() public {
        vm.expectRevert(
            abi.encodeWithSelector(IExpertRegistry.RegistryNotOperator.selector, expertId, address(this))
        );
        registry.requestUnbond(expertId);
    }

    function test_RevertIf_RequestUnbondTwice() public {
        vm.startPrank(operator);
        registry.requestUnbond(expertId);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryExpertNotActive.selector, expertId));
        registry.requestUnbond(expertId);
        vm.stopPrank();
    }

    function test_WithdrawStake() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        uint256 before = operator.balance;
        vm.expectEmit(address(registry));
        emit IExpertRegistry.StakeWithdrawn(expertId, operator, MIN_STAKE);
        vm.prank(operator);
        registry.withdrawStake(expertId);
        assertEq(operator.balance, before + MIN_STAKE);
        IExpertRegistry.Expert memory e = registry.getExpert(expertId);
        assertEq(e.stake, 0);
        assertTrue(e.status == IExpertRegistry.ExpertStatus.Withdrawn);
        assertEq(address(registry).balance, 0);
    }

    function test_WithdrawStake_AfterSlashPaysTheRest() public {
        registry.slash(expertId, 0.4 ether);
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        uint256 before = operator.balance;
        vm.prank(operator);
        registry.withdrawStake(expertId);
        assertEq(operator.balance, before + MIN_STAKE - 0.4 ether);
    }

    function test_WithdrawStake_ZeroStakeAfterFullSlash() public {
        registry.slash(expertId, MIN_STAKE);
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        uint256 before = operator.balance;
        vm.prank(operator);
        registry.withdrawStake(expertId);
        assertEq(operator.balance, before);
        assertTrue(registry.getExpert(expertId).status == IExpertRegistry.ExpertStatus.Withdrawn);
    }

    function test_RevertIf_WithdrawStakeUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownExpert.selector, 7));
        registry.withdrawStake(7);
    }

    function test_RevertIf_WithdrawStakeNotOperator() public {
        vm.expectRevert(
            abi.encodeWithSelector(IExpertRegistry.RegistryNotOperator.selector, expertId, address(this))
        );
        registry.withdrawStake(expertId);
    }

    function test_RevertIf_WithdrawStakeNotUnbonding() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotUnbonding.selector, expertId));
        registry.withdrawStake(expertId);
    }

    function test_RevertIf_WithdrawStakeTwice() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        vm.startPrank(operator);
        registry.withdrawStake(expertId);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotUnbonding.selector, expertId));
        registry.withdrawStake(expertId);
        vm.stopPrank();
    }

    function test_RevertIf_WithdrawStakeTooEarly() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD - 1);
        vm.prank(operator);
        vm.expectRevert(
            abi.encodeWithSelector(
                IExpertRegistry.RegistryUnbondingNotOver.selector, expertId, START + UNBONDING_PERIOD
            )
        );
        registry.withdrawStake(expertId);
    }

    function test_RevertIf_WithdrawStakeDisputesOpen() public {
        registry.lockForDispute(expertId, true);
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryDisputesOpen.selector, expertId, 1));
        registry.withdrawStake(expertId);
        // Closing the dispute releases the stake.
        registry.lockForDispute(expertId, false);
        vm.prank(operator);
        registry.withdrawStake(expertId);
    }

    function test_RevertIf_WithdrawStakeTransferFails() public {
        EtherRejecter rejecter = new EtherRejecter();
        vm.deal(address(rejecter), MIN_STAKE);
        bytes memory ret = rejecter.act(
            address(registry), MIN_STAKE, abi.encodeCall(IExpertRegistry.registerExpert, (expertParams(signer)))
        );
        uint256 id = abi.decode(ret, (uint256));
        rejecter.act(address(registry), 0, abi.encodeCall(IExpertRegistry.requestUnbond, (id)));
        vm.warp(START + UNBONDING_PERIOD);
        vm.expectRevert(
            abi.encodeWithSelector(IExpertRegistry.RegistryTransferFailed.selector, address(rejecter), MIN_STAKE)
        );
        rejecter.act(address(registry), 0, abi.encodeCall(IExpertRegistry.withdrawStake, (id)));
    }

    function test_ReentrancyGuard_SameErrorAsOpenZeppelin() public pure {
        assertEq(
            TransientReentrancyGuard.ReentrancyGuardReentrantCall.selector,
            ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector
        );
    }

    function test_WithdrawStake_ReentryIsBlocked() public {
        Reenterer attacker = new Reenterer();
        vm.deal(address(attacker), MIN_STAKE);
        bytes memory ret = attacker.act(
            address(registry), MIN_STAKE, abi.encodeCall(IExpertRegistry.registerExpert, (expertParams(signer)))
        );
        uint256 id = abi.decode(ret, (uint256));
        attacker.act(address(registry), 0, abi.encodeCall(IExpertRegistry.requestUnbond, (id)));
        vm.warp(START + UNBONDING_PERIOD);
        attacker.arm(address(registry), abi.encodeCall(IExpertRegistry.withdrawStake, (id)));
        attacker.act(address(registry), 0, abi.encodeCall(IExpertRegistry.withdrawStake, (id)));
        assertTrue(attacker.attempted());
        assertFalse(attacker.succeeded());
        assertEq(
            attacker.returned(), abi.encodeWithSelector(TransientReentrancyGuard.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(attacker.received(), MIN_STAKE, "paid once");
    }

    // ----------------------------------------------------------------------------------------------------------
    // Dispute manager hooks
    // ----------------------------------------------------------------------------------------------------------

    function test_LockForDispute_CountsOpenAndClose() public {
        vm.expectEmit(address(registry));
        emit IExpertRegistry.DisputeLockChanged(expertId, 1);
        registry.lockForDispute(expertId, true);
        registry.lockForDispute(expertId, true);
        assertEq(registry.getExpert(expertId).openDisputes, 2);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.DisputeLockChanged(expertId, 1);
        registry.lockForDispute(expertId, false);
        assertEq(registry.getExpert(expertId).openDisputes, 1);
    }

    function test_RevertIf_LockForDisputeNotManager() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotDisputeManager.selector, operator));
        registry.lockForDispute(expertId, true);
    }

    function test_RevertIf_LockForDisputeUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownExpert.selector, 4));
        registry.lockForDispute(4, true);
    }

    function test_Slash_TakesAndSends() public {
        uint256 before = address(this).balance;
        vm.expectEmit(address(registry));
        emit IExpertRegistry.ExpertSlashed(expertId, 0.25 ether, 0.75 ether);
        uint256 taken = registry.slash(expertId, 0.25 ether);
        assertEq(taken, 0.25 ether);
        assertEq(address(this).balance, before + 0.25 ether);
        IExpertRegistry.Expert memory e = registry.getExpert(expertId);
        assertEq(e.stake, 0.75 ether);
        assertEq(e.slashedTotal, 0.25 ether);
        assertEq(e.disputesLost, 1);
    }

    function test_Slash_CapsAtStake() public {
        uint256 taken = registry.slash(expertId, 10 ether);
        assertEq(taken, MIN_STAKE);
        assertEq(registry.getExpert(expertId).stake, 0);
        // A second loss with nothing left still counts.
        taken = registry.slash(expertId, 1);
        assertEq(taken, 0);
        assertEq(registry.getExpert(expertId).disputesLost, 2);
        assertEq(registry.getExpert(expertId).slashedTotal, MIN_STAKE);
    }

    function test_Slash_WhileUnbonding() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        assertEq(registry.slash(expertId, 0.5 ether), 0.5 ether);
    }

    function test_RevertIf_SlashNotManager() public {
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotDisputeManager.selector, operator));
        registry.slash(expertId, 1);
    }

    function test_RevertIf_SlashUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownExpert.selector, 3));
        registry.slash(3, 1);
    }

    function test_RevertIf_SlashWithdrawn() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        vm.prank(operator);
        registry.withdrawStake(expertId);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryExpertNotActive.selector, expertId));
        registry.slash(expertId, 1);
    }

    function test_RevertIf_SlashTransferFails() public {
        EtherRejecter manager = new EtherRejecter();
        ExpertRegistry other = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        other.setDisputeManager(address(manager));
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        uint256 id = other.registerExpert{value: MIN_STAKE}(expertParams(signer));
        vm.expectRevert(
            abi.encodeWithSelector(IExpertRegistry.RegistryTransferFailed.selector, address(manager), 1 ether)
        );
        manager.act(address(other), 0, abi.encodeCall(IExpertRegistry.slash, (id, 1 ether)));
    }

    // ----------------------------------------------------------------------------------------------------------
    // Verifiers
    // ----------------------------------------------------------------------------------------------------------

    function test_RegisterVerifier() public {
        vm.deal(verifier, 1 ether);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.VerifierRegistered(verifier, 1 ether);
        vm.prank(verifier);
        registry.registerVerifier{value: 1 ether}();
        IExpertRegistry.Verifier memory v = registry.getVerifier(verifier);
        assertEq(v.stake, 1 ether);
        assertEq(v.registeredAt, START);
        assertEq(v.unbondsAt, 0);
        assertTrue(v.active);
        assertEq(registry.votingStake(verifier), 1 ether);
        assertEq(registry.verifierCount(), 1);
        assertEq(registry.totalVerifierStake(), 1 ether);
    }

    function test_RevertIf_RegisterVerifierStakeTooLow() public {
        vm.deal(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(
            abi.encodeWithSelector(
                IExpertRegistry.RegistryStakeTooLow.selector, MIN_VERIFIER_STAKE - 1, MIN_VERIFIER_STAKE
            )
        );
        registry.registerVerifier{value: MIN_VERIFIER_STAKE - 1}();
    }

    function test_RevertIf_RegisterVerifierTwice() public {
        registerVerifier(verifier, 1 ether);
        vm.deal(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryVerifierExists.selector, verifier));
        registry.registerVerifier{value: 1 ether}();
    }

    function test_RevertIf_RegisterVerifierWhileUnbonding() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        vm.deal(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryVerifierExists.selector, verifier));
        registry.registerVerifier{value: 1 ether}();
    }

    function test_RegisterVerifier_AgainAfterWithdraw() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        vm.warp(START + UNBONDING_PERIOD);
        vm.prank(verifier);
        registry.withdrawVerifierStake();
        registerVerifier(verifier, 2 ether);
        assertEq(registry.votingStake(verifier), 2 ether);
        assertEq(registry.verifierCount(), 1);
        assertEq(registry.totalVerifierStake(), 2 ether);
        assertEq(registry.getVerifier(verifier).unbondsAt, 0);
    }

    function test_AddVerifierStake() public {
        registerVerifier(verifier, 1 ether);
        vm.deal(verifier, 2 ether);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.VerifierStakeAdded(verifier, 2 ether, 3 ether);
        vm.prank(verifier);
        registry.addVerifierStake{value: 2 ether}();
        assertEq(registry.votingStake(verifier), 3 ether);
        assertEq(registry.totalVerifierStake(), 3 ether);
    }

    function test_RevertIf_AddVerifierStakeUnknown() public {
        vm.deal(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownVerifier.selector, verifier));
        registry.addVerifierStake{value: 1 ether}();
    }

    function test_RevertIf_AddVerifierStakeNotActive() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        vm.deal(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryVerifierNotActive.selector, verifier));
        registry.addVerifierStake{value: 1 ether}();
    }

    function test_RevertIf_AddVerifierStakeZero() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryStakeTooLow.selector, 0, 1));
        registry.addVerifierStake();
    }

    function test_RequestVerifierUnbond() public {
        registerVerifier(verifier, 1 ether);
        registerVerifier(makeAddr("v2"), 2 ether);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.VerifierUnbondingRequested(verifier, START + UNBONDING_PERIOD);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        assertEq(registry.votingStake(verifier), 0);
        assertEq(registry.verifierCount(), 1);
        assertEq(registry.totalVerifierStake(), 2 ether);
        IExpertRegistry.Verifier memory v = registry.getVerifier(verifier);
        assertFalse(v.active);
        assertEq(v.stake, 1 ether);
        assertEq(v.unbondsAt, START + UNBONDING_PERIOD);
    }

    function test_RevertIf_RequestVerifierUnbondUnknown() public {
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownVerifier.selector, verifier));
        registry.requestVerifierUnbond();
    }

    function test_RevertIf_RequestVerifierUnbondTwice() public {
        registerVerifier(verifier, 1 ether);
        vm.startPrank(verifier);
        registry.requestVerifierUnbond();
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryVerifierNotActive.selector, verifier));
        registry.requestVerifierUnbond();
        vm.stopPrank();
    }

    function test_WithdrawVerifierStake() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        vm.warp(START + UNBONDING_PERIOD);
        uint256 before = verifier.balance;
        vm.expectEmit(address(registry));
        emit IExpertRegistry.VerifierWithdrawn(verifier, 1 ether);
        vm.prank(verifier);
        registry.withdrawVerifierStake();
        assertEq(verifier.balance, before + 1 ether);
        IExpertRegistry.Verifier memory v = registry.getVerifier(verifier);
        assertEq(v.stake, 0);
        assertFalse(v.active);
    }

    function test_RevertIf_WithdrawVerifierStakeUnknown() public {
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryUnknownVerifier.selector, verifier));
        registry.withdrawVerifierStake();
    }

    function test_RevertIf_WithdrawVerifierStakeActive() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryVerifierNotUnbonding.selector, verifier));
        registry.withdrawVerifierStake();
    }

    function test_RevertIf_WithdrawVerifierStakeTwice() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        vm.warp(START + UNBONDING_PERIOD);
        vm.startPrank(verifier);
        registry.withdrawVerifierStake();
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryVerifierNotUnbonding.selector, verifier));
        registry.withdrawVerifierStake();
        vm.stopPrank();
    }

    function test_RevertIf_WithdrawVerifierStakeTooEarly() public {
        registerVerifier(verifier, 1 ether);
        vm.prank(verifier);
        registry.requestVerifierUnbond();
        vm.prank(verifier);
        vm.expectRevert(
            abi.encodeWithSelector(
                IExpertRegistry.RegistryVerifierUnbondingNotOver.selector, verifier, START + UNBONDING_PERIOD
            )
        );
        registry.withdrawVerifierStake();
    }

    function test_RevertIf_WithdrawVerifierStakeTransferFails() public {
        EtherRejecter rejecter = new EtherRejecter();
        vm.deal(address(rejecter), 1 ether);
        rejecter.act(address(registry), 1 ether, abi.encodeCall(IExpertRegistry.registerVerifier, ()));
        rejecter.act(address(registry), 0, abi.encodeCall(IExpertRegistry.requestVerifierUnbond, ()));
        vm.warp(START + UNBONDING_PERIOD);
        vm.expectRevert(
            abi.encodeWithSelector(IExpertRegistry.RegistryTransferFailed.selector, address(rejecter), 1 ether)
        );
        rejecter.act(address(registry), 0, abi.encodeCall(IExpertRegistry.withdrawVerifierStake, ()));
    }

    // ----------------------------------------------------------------------------------------------------------
    // Views and pages
    // ----------------------------------------------------------------------------------------------------------

    function test_GetExpert_UnknownIsEmpty() public view {
        IExpertRegistry.Expert memory e = registry.getExpert(42);
        assertTrue(e.status == IExpertRegistry.ExpertStatus.None);
        assertEq(e.operator, address(0));
        assertEq(registry.operatorOf(42), address(0));
        assertEq(registry.votingStake(address(0xBEEF)), 0);
        assertEq(registry.getVerifier(address(0xBEEF)).registeredAt, 0);
    }

    function test_Pages_AcrossPackedWords() public {
        // 1 registered in setUp; add 9 more: ids 1..10 span three packed index words.
        for (uint256 i; i < 9; ++i) {
            registerExpert(operator, signer);
        }
        assertEq(registry.countByModel(MODEL), 10);
        uint256[] memory all = registry.expertsByModel(MODEL, 0, 100);
        assertEq(all.length, 10);
        for (uint256 i; i < 10; ++i) {
            assertEq(all[i], i + 1);
        }
        uint256[] memory mid = registry.expertsByCapability(CAPABILITY, 3, 4);
        assertEq(mid.length, 4);
        assertEq(mid[0], 4);
        assertEq(mid[3], 7);
        uint256[] memory tail = registry.expertsByModel(MODEL, 8, 5);
        assertEq(tail.length, 2);
        assertEq(tail[1], 10);
        assertEq(registry.expertsByModel(MODEL, 10, 5).length, 0, "offset at the end");
        assertEq(registry.expertsByModel(MODEL, 99, 5).length, 0, "offset past the end");
        assertEq(registry.expertsByModel(MODEL, 0, 0).length, 0, "limit zero");
        assertEq(registry.expertsByModel(keccak256("none"), 0, 5).length, 0, "unknown model");
    }

    function test_RevertIf_PageTooLarge() public {
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryPageTooLarge.selector, 101, 100));
        registry.expertsByModel(MODEL, 0, 101);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryPageTooLarge.selector, 101, 100));
        registry.expertsByCapability(CAPABILITY, 0, 101);
    }

    function testFuzz_Pages(uint256 count, uint256 offset, uint256 limit) public {
        count = bound(count, 0, 24);
        offset = bound(offset, 0, 30);
        limit = bound(limit, 0, 100);
        bytes32 model = keccak256("fuzz model");
        for (uint256 i; i < count; ++i) {
            registerExpert(operator, expertParams(signer, model, CAPABILITY), MIN_STAKE);
        }
        uint256[] memory ids = registry.expertsByModel(model, offset, limit);
        uint256 expected = offset >= count ? 0 : (count - offset < limit ? count - offset : limit);
        assertEq(ids.length, expected);
        for (uint256 i; i < ids.length; ++i) {
            // Ids of this model are 2..count+1 in registration order (id 1 is setUp's expert).
            assertEq(ids[i], offset + i + 2);
        }
    }
}
