// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Deploy} from "./utils/Deploy.sol";
import {EtherRejecter, Reenterer} from "./utils/Actors.sol";
import {DisputeManager} from "../src/DisputeManager.sol";
import {ExpertRegistry} from "../src/ExpertRegistry.sol";
import {IDisputeManager} from "../src/interfaces/IDisputeManager.sol";
import {IExpertRegistry} from "../src/interfaces/IExpertRegistry.sol";
import {TransientReentrancyGuard} from "../src/utils/TransientReentrancyGuard.sol";

contract DisputeManagerTest is Deploy {
    address internal constant BURN = 0x000000000000000000000000000000000000dEaD;

    address internal operator;
    address internal signer;
    uint256 internal signerKey;
    address internal challenger;
    address internal v1;
    address internal v2;
    address internal v3;
    uint256 internal expertId;
    IDisputeManager.Receipt internal receipt;
    bytes internal receiptSig;

    function setUp() public {
        deploy();
        operator = makeAddr("operator");
        (signer, signerKey) = makeAccount("signer");
        challenger = makeAddr("challenger");
        v1 = makeAddr("verifier1");
        v2 = makeAddr("verifier2");
        v3 = makeAddr("verifier3");
        expertId = registerExpert(operator, signer);
        registerVerifier(v1, 1 ether);
        registerVerifier(v2, 2 ether);
        registerVerifier(v3, 0.5 ether);
        receipt = receiptFor(expertId, keccak256("request 1"));
        receiptSig = signReceipt(signerKey, receipt);
        vm.deal(challenger, 10 ether);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Constructor and views
    // ----------------------------------------------------------------------------------------------------------

    function test_Constructor_SetsParameters() public view {
        assertEq(disputes.registry(), address(registry));
        assertEq(disputes.DISPUTE_BOND(), DISPUTE_BOND);
        assertEq(disputes.COMMIT_PERIOD(), COMMIT_PERIOD);
        assertEq(disputes.REVEAL_PERIOD(), REVEAL_PERIOD);
        assertEq(disputes.QUORUM_STAKE(), QUORUM_STAKE);
        assertEq(disputes.SLASH_BPS(), SLASH_BPS);
        assertEq(disputes.CHALLENGER_BPS(), CHALLENGER_BPS);
        assertEq(disputes.VERIFIER_BPS(), VERIFIER_BPS);
        assertEq(disputes.EXPERT_BOND_BPS(), EXPERT_BOND_BPS);
        assertEq(disputes.BURN_ADDRESS(), BURN);
        assertEq(disputes.MAX_VOTERS(), 64);
        assertEq(disputes.disputeCount(), 0);
    }

    function test_RevertIf_ConstructorInvalidParameters() public {
        uint256[9][7] memory bad = [
            [uint256(0), DISPUTE_BOND, 1, 1, 0, 0, 0, 0, 0], // zero registry
            [uint256(1), uint256(type(uint96).max) + 1, 1, 1, 0, 0, 0, 0, 0], // bond above uint96
            [uint256(1), 0, 0, 1, 0, 0, 0, 0, 0], // zero commit period
            [uint256(1), 0, 1, 0, 0, 0, 0, 0, 0], // zero reveal period
            [uint256(1), 0, 1, 1, 0, 10_001, 0, 0, 0], // slash above 100 %
            [uint256(1), 0, 1, 1, 0, 0, 6_000, 4_001, 0], // challenger + verifier above 100 %
            [uint256(1), 0, 1, 1, 0, 0, 0, 0, 10_001] // expert bond share above 100 %
        ];
        for (uint256 i; i < bad.length; ++i) {
            uint256[9] memory p = bad[i];
            vm.expectRevert(IDisputeManager.DisputeInvalidParameters.selector);
            new DisputeManager(address(uint160(p[0])), p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]);
        }
        // The edges are accepted.
        new DisputeManager(address(1), type(uint96).max, 1, 1, 0, 10_000, 6_000, 4_000, 10_000);
    }

    function test_ReceiptDigest_IsEip712() public view {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("MoeMarket Disputes"),
                keccak256("1"),
                block.chainid,
                address(disputes)
            )
        );
        bytes32 typeHash = keccak256(
            "Receipt(uint256 expertId,bytes32 modelHash,bytes32 requestId,bytes32 inputHash,bytes32 outputHash,uint256 price)"
        );
        assertEq(disputes.RECEIPT_TYPEHASH(), typeHash);
        bytes32 structHash = keccak256(
            abi.encode(
                typeHash,
                receipt.expertId,
                receipt.modelHash,
                receipt.requestId,
                receipt.inputHash,
                receipt.outputHash,
                receipt.price
            )
        );
        assertEq(disputes.receiptDigest(receipt), keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
    }

    function test_CommitmentFor() public view {
        assertEq(
            disputes.commitmentFor(7, true, bytes32("salt"), v1), keccak256(abi.encode(uint256(7), true, bytes32("salt"), v1))
        );
    }

    function test_GetDispute_UnknownIsEmpty() public view {
        assertTrue(disputes.getDispute(5).status == IDisputeManager.DisputeStatus.None);
    }

    function test_RevertIf_EtherNotFromRegistry() public {
        vm.expectRevert(abi.encodeWithSelector(DisputeManager.DisputeNotRegistry.selector, address(this)));
        (bool ok,) = address(disputes).call{value: 1}("");
        ok;
    }

    // ----------------------------------------------------------------------------------------------------------
    // openDispute
    // ----------------------------------------------------------------------------------------------------------

    function test_OpenDispute() public {
        vm.expectEmit(address(registry));
        emit IExpertRegistry.DisputeLockChanged(expertId, 1);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.DisputeOpened(
            1,
            expertId,
            challenger,
            MODEL,
            receipt.requestId,
            receipt.inputHash,
            receipt.outputHash,
            START + COMMIT_PERIOD,
            START + COMMIT_PERIOD + REVEAL_PERIOD,
            "/ip4/127.0.0.1/tcp/5000/p2p/QmEvidence"
        );
        uint256 id = _open();
        assertEq(id, 1);
        assertEq(disputes.disputeCount(), 1);
        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        assertEq(d.expertId, expertId);
        assertEq(d.challenger, challenger);
        assertEq(d.bond, DISPUTE_BOND);
        assertEq(d.modelHash, MODEL);
        assertEq(d.requestId, receipt.requestId);
        assertEq(d.inputHash, receipt.inputHash);
        assertEq(d.outputHash, receipt.outputHash);
        assertEq(d.commitEnds, START + COMMIT_PERIOD);
        assertEq(d.revealEnds, START + COMMIT_PERIOD + REVEAL_PERIOD);
        assertTrue(d.status == IDisputeManager.DisputeStatus.Open);
        assertEq(registry.getExpert(expertId).openDisputes, 1);
        assertEq(address(disputes).balance, DISPUTE_BOND);
    }

    function test_OpenDispute_OldSignerAfterRotation() public {
        vm.prank(operator);
        registry.updateExpert(expertId, makeAddr("new signer"), PRICE, NODE_KEY, ENDPOINT);
        assertEq(_open(), 1);
    }

    function test_OpenDispute_WhileUnbonding() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        uint256 id = _open();
        // The open dispute keeps the stake in place.
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryDisputesOpen.selector, expertId, 1));
        registry.withdrawStake(expertId);
        _runVote(id, true, true, false);
        disputes.resolve(id);
        vm.prank(operator);
        registry.withdrawStake(expertId);
        assertEq(operator.balance, MIN_STAKE / 2, "the unslashed half");
    }

    function test_RevertIf_OpenDisputeBondMismatch() public {
        vm.prank(challenger);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeBondMismatch.selector, DISPUTE_BOND - 1, DISPUTE_BOND)
        );
        disputes.openDispute{value: DISPUTE_BOND - 1}(receipt, receiptSig, "");
        vm.prank(challenger);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeBondMismatch.selector, DISPUTE_BOND + 1, DISPUTE_BOND)
        );
        disputes.openDispute{value: DISPUTE_BOND + 1}(receipt, receiptSig, "");
    }

    function test_RevertIf_OpenDisputeUnknownExpert() public {
        IDisputeManager.Receipt memory r = receiptFor(9, bytes32("x"));
        bytes memory sig = signReceipt(signerKey, r);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeUnknownExpert.selector, 9));
        disputes.openDispute{value: DISPUTE_BOND}(r, sig, "");
    }

    function test_RevertIf_OpenDisputeExpertWithdrawn() public {
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        vm.prank(operator);
        registry.withdrawStake(expertId);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeExpertNotSlashable.selector, expertId));
        disputes.openDispute{value: DISPUTE_BOND}(receipt, receiptSig, "");
    }

    function test_RevertIf_OpenDisputeExpertHasNoStake() public {
        // A market that slashes everything: after one guilty verdict nothing is left to dispute.
        ExpertRegistry reg = new ExpertRegistry(MIN_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD);
        DisputeManager dm = new DisputeManager(
            address(reg), DISPUTE_BOND, COMMIT_PERIOD, REVEAL_PERIOD, QUORUM_STAKE, 10_000, 0, 0, 0
        );
        reg.setDisputeManager(address(dm));
        vm.deal(operator, MIN_STAKE);
        vm.prank(operator);
        uint256 id = reg.registerExpert{value: MIN_STAKE}(expertParams(signer));
        vm.deal(v1, 1 ether);
        vm.prank(v1);
        reg.registerVerifier{value: 1 ether}();

        IDisputeManager.Receipt memory r = receiptFor(id, bytes32("a"));
        vm.prank(challenger);
        uint256 d = dm.openDispute{value: DISPUTE_BOND}(r, sign(signerKey, dm.receiptDigest(r)), "");
        vm.prank(v1);
        dm.commitVote(d, keccak256(abi.encode(d, true, bytes32("s"), v1)));
        vm.warp(START + COMMIT_PERIOD);
        vm.prank(v1);
        dm.revealVote(d, true, bytes32("s"));
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        dm.resolve(d);
        assertEq(reg.getExpert(id).stake, 0);
        assertEq(BURN.balance, MIN_STAKE, "everything burned");

        r = receiptFor(id, bytes32("b"));
        bytes memory sig = sign(signerKey, dm.receiptDigest(r));
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeExpertNotSlashable.selector, id));
        dm.openDispute{value: DISPUTE_BOND}(r, sig, "");
    }

    function test_RevertIf_OpenDisputeModelMismatch() public {
        IDisputeManager.Receipt memory r = receipt;
        r.modelHash = keccak256("another model");
        bytes memory sig = signReceipt(signerKey, r);
        vm.prank(challenger);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeModelMismatch.selector, expertId, r.modelHash, MODEL)
        );
        disputes.openDispute{value: DISPUTE_BOND}(r, sig, "");
    }

    function test_RevertIf_OpenDisputeWrongSigner() public {
        (address mallory, uint256 malloryKey) = makeAccount("mallory");
        bytes memory sig = signReceipt(malloryKey, receipt);
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeInvalidReceiptSigner.selector, expertId, mallory));
        disputes.openDispute{value: DISPUTE_BOND}(receipt, sig, "");
    }

    function test_RevertIf_OpenDisputeMalformedSignature() public {
        vm.prank(challenger);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeInvalidReceiptSigner.selector, expertId, address(0))
        );
        disputes.openDispute{value: DISPUTE_BOND}(receipt, new bytes(65), "");
    }

    function test_RevertIf_OpenDisputeTwice() public {
        _open();
        bytes32 digest = disputes.receiptDigest(receipt);
        vm.prank(v1);
        vm.deal(v1, DISPUTE_BOND);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeAlreadyOpened.selector, digest));
        disputes.openDispute{value: DISPUTE_BOND}(receipt, receiptSig, "");
    }

    // ----------------------------------------------------------------------------------------------------------
    // commitVote
    // ----------------------------------------------------------------------------------------------------------

    function test_CommitVote() public {
        uint256 id = _open();
        bytes32 c = disputes.commitmentFor(id, true, bytes32("salt"), v1);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.VoteCommitted(id, v1, 1 ether);
        vm.prank(v1);
        disputes.commitVote(id, c);
        assertEq(disputes.commitmentOf(id, v1), c);
        address[] memory committers = disputes.committersOf(id);
        assertEq(committers.length, 1);
        assertEq(committers[0], v1);
    }

    function test_RevertIf_CommitVoteUnknownDispute() public {
        vm.prank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeUnknown.selector, 3));
        disputes.commitVote(3, bytes32("c"));
    }

    function test_RevertIf_CommitVoteNotVerifier() public {
        uint256 id = _open();
        address stranger = makeAddr("stranger");
        vm.prank(stranger);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeNotVerifier.selector, stranger));
        disputes.commitVote(id, bytes32("c"));
    }

    function test_RevertIf_CommitVoteUnbondingVerifier() public {
        uint256 id = _open();
        vm.prank(v1);
        registry.requestVerifierUnbond();
        vm.prank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeNotVerifier.selector, v1));
        disputes.commitVote(id, bytes32("c"));
    }

    function test_RevertIf_CommitVoteByOperator() public {
        registerVerifier(operator, 1 ether);
        uint256 id = _open();
        vm.prank(operator);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeExpertCannotVote.selector, id, operator));
        disputes.commitVote(id, bytes32("c"));
    }

    function test_RevertIf_CommitVoteByChallenger() public {
        registerVerifier(challenger, 1 ether);
        uint256 id = _open();
        vm.prank(challenger);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeExpertCannotVote.selector, id, challenger));
        disputes.commitVote(id, bytes32("c"));
    }

    function test_RevertIf_CommitVoteClosed() public {
        uint256 id = _open();
        vm.warp(START + COMMIT_PERIOD);
        vm.prank(v1);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeCommitClosed.selector, id, START + COMMIT_PERIOD)
        );
        disputes.commitVote(id, bytes32("c"));
    }

    function test_RevertIf_CommitVoteTwice() public {
        uint256 id = _open();
        vm.startPrank(v1);
        disputes.commitVote(id, bytes32("c"));
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeAlreadyCommitted.selector, id, v1));
        disputes.commitVote(id, bytes32("d"));
        vm.stopPrank();
    }

    function test_CommitVote_FullListEvictsSmallestStake() public {
        uint256 id = _open();
        // v1, v2, v3 plus 61 minimum-stake verifiers fill the list.
        _commit(id, v1, true, "s1");
        _commit(id, v2, true, "s2");
        _commit(id, v3, true, "s3");
        address[] memory swarm = new address[](61);
        for (uint256 i; i < 61; ++i) {
            swarm[i] = address(uint160(0x5000 + i));
            registerVerifier(swarm[i], MIN_VERIFIER_STAKE);
            _commit(id, swarm[i], false, "x");
        }
        assertEq(disputes.committersOf(id).length, 64);

        // Equal stake cannot push anyone out.
        address late = makeAddr("late");
        registerVerifier(late, MIN_VERIFIER_STAKE);
        vm.prank(late);
        vm.expectRevert(abi.encodeWithSelector(DisputeManager.DisputeVotersFull.selector, id, MIN_VERIFIER_STAKE));
        disputes.commitVote(id, bytes32("c"));

        // More stake replaces the first committer with the smallest stake (v3, 0.5 ether).
        address whale = makeAddr("whale");
        registerVerifier(whale, 5 ether);
        vm.expectEmit(address(disputes));
        emit DisputeManager.VoteEvicted(id, v3, MIN_VERIFIER_STAKE);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.VoteCommitted(id, whale, 5 ether);
        _commit(id, whale, true, "w");
        address[] memory committers = disputes.committersOf(id);
        assertEq(committers.length, 64);
        assertEq(committers[2], whale);
        assertEq(disputes.commitmentOf(id, v3), bytes32(0));

        vm.warp(START + COMMIT_PERIOD);
        vm.prank(v3);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeNoCommit.selector, id, v3));
        disputes.revealVote(id, true, "s3");
        _reveal(id, whale, true, "w");
        _reveal(id, v1, true, "s1");
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        // 64 committers, resolve walks all of them.
        disputes.resolve(id);
        assertEq(disputes.claimable(v3), 0, "an evicted vote earns nothing");
        assertGt(disputes.claimable(whale), 0);
    }

    // ----------------------------------------------------------------------------------------------------------
    // revealVote
    // ----------------------------------------------------------------------------------------------------------

    function test_RevealVote() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        _commit(id, v3, false, "s3");
        vm.warp(START + COMMIT_PERIOD);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.VoteRevealed(id, v1, true, 1 ether);
        _reveal(id, v1, true, "s1");
        _reveal(id, v3, false, "s3");
        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        assertEq(d.guiltyStake, 1 ether);
        assertEq(d.innocentStake, 0.5 ether);
        assertEq(d.voters, 2);
    }

    function test_RevealVote_UsesStakeAtCommitTime() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        vm.deal(v1, 5 ether);
        vm.prank(v1);
        registry.addVerifierStake{value: 5 ether}();
        vm.warp(START + COMMIT_PERIOD);
        _reveal(id, v1, true, "s1");
        assertEq(disputes.getDispute(id).guiltyStake, 1 ether);
    }

    function test_RevertIf_RevealVoteUnknownDispute() public {
        vm.prank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeUnknown.selector, 1));
        disputes.revealVote(1, true, "s");
    }

    function test_RevertIf_RevealVoteNotOpen() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        vm.warp(START + COMMIT_PERIOD - 1);
        vm.prank(v1);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeRevealNotOpen.selector, id, START + COMMIT_PERIOD)
        );
        disputes.revealVote(id, true, "s1");
    }

    function test_RevertIf_RevealVoteClosed() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        vm.prank(v1);
        vm.expectRevert(
            abi.encodeWithSelector(
                IDisputeManager.DisputeRevealClosed.selector, id, START + COMMIT_PERIOD + REVEAL_PERIOD
            )
        );
        disputes.revealVote(id, true, "s1");
    }

    function test_RevertIf_RevealVoteNoCommit() public {
        uint256 id = _open();
        vm.warp(START + COMMIT_PERIOD);
        vm.prank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeNoCommit.selector, id, v1));
        disputes.revealVote(id, true, "s1");
    }

    function test_RevertIf_RevealVoteTwice() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        vm.warp(START + COMMIT_PERIOD);
        _reveal(id, v1, true, "s1");
        vm.prank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeAlreadyRevealed.selector, id, v1));
        disputes.revealVote(id, true, "s1");
    }

    function test_RevertIf_RevealVoteMismatch() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        vm.warp(START + COMMIT_PERIOD);
        vm.startPrank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeCommitMismatch.selector, id, v1));
        disputes.revealVote(id, false, "s1");
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeCommitMismatch.selector, id, v1));
        disputes.revealVote(id, true, "s2");
        vm.stopPrank();
    }

    // ----------------------------------------------------------------------------------------------------------
    // resolve
    // ----------------------------------------------------------------------------------------------------------

    function test_Resolve_Guilty() public {
        uint256 id = _open();
        _runVote(id, true, true, false); // v1 (1) and v2 (2) guilty, v3 (0.5) innocent

        uint256 slashed = MIN_STAKE * SLASH_BPS / 10_000; // 0.5 ether
        uint256 toChallenger = slashed * CHALLENGER_BPS / 10_000; // 0.1 ether
        uint256 pool = slashed * VERIFIER_BPS / 10_000; // 0.15 ether
        uint256 share1 = pool * 1 ether / 3 ether;
        uint256 share2 = pool * 2 ether / 3 ether;
        uint256 burned = slashed - toChallenger - share1 - share2;

        vm.expectEmit(address(registry));
        emit IExpertRegistry.DisputeLockChanged(expertId, 0);
        vm.expectEmit(address(registry));
        emit IExpertRegistry.ExpertSlashed(expertId, slashed, MIN_STAKE - slashed);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(v1, id, share1);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(v2, id, share2);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(challenger, id, DISPUTE_BOND + toChallenger);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.DisputeResolved(id, expertId, IDisputeManager.DisputeStatus.Guilty, slashed, burned);
        assertTrue(disputes.resolve(id) == IDisputeManager.DisputeStatus.Guilty);

        assertEq(disputes.claimable(challenger), DISPUTE_BOND + toChallenger);
        assertEq(disputes.claimable(v1), share1);
        assertEq(disputes.claimable(v2), share2);
        assertEq(disputes.claimable(v3), 0);
        assertEq(BURN.balance, burned);
        assertEq(burned, 0.25 ether);
        assertEq(address(disputes).balance, DISPUTE_BOND + toChallenger + share1 + share2);

        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        assertTrue(d.status == IDisputeManager.DisputeStatus.Guilty);
        assertEq(d.slashed, slashed);
        IExpertRegistry.Expert memory e = registry.getExpert(expertId);
        assertEq(e.stake, MIN_STAKE - slashed);
        assertEq(e.slashedTotal, slashed);
        assertEq(e.disputesLost, 1);
        assertEq(e.openDisputes, 0);
    }

    function test_Resolve_Innocent() public {
        uint256 id = _open();
        _runVote(id, false, false, true); // v1 (1) and v2 (2) innocent, v3 (0.5) guilty

        uint256 toExpert = DISPUTE_BOND * EXPERT_BOND_BPS / 10_000;
        uint256 pool = DISPUTE_BOND - toExpert;
        uint256 share1 = pool * 1 ether / 3 ether;
        uint256 share2 = pool * 2 ether / 3 ether;

        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(v1, id, share1);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(v2, id, share2);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(operator, id, DISPUTE_BOND - share1 - share2);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.DisputeResolved(id, expertId, IDisputeManager.DisputeStatus.Innocent, 0, 0);
        assertTrue(disputes.resolve(id) == IDisputeManager.DisputeStatus.Innocent);

        assertEq(disputes.claimable(operator), DISPUTE_BOND - share1 - share2);
        assertGe(disputes.claimable(operator), toExpert);
        assertEq(disputes.claimable(challenger), 0, "the bond is forfeited");
        assertEq(registry.getExpert(expertId).stake, MIN_STAKE);
        assertEq(registry.getExpert(expertId).disputesLost, 0);
        assertEq(address(disputes).balance, DISPUTE_BOND);
    }

    function test_Resolve_NoQuorum() public {
        uint256 id = _open();
        _commit(id, v3, true, "s3"); // 0.5 ether < quorum of 1 ether
        vm.warp(START + COMMIT_PERIOD);
        _reveal(id, v3, true, "s3");
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardCredited(challenger, id, DISPUTE_BOND);
        vm.expectEmit(address(disputes));
        emit IDisputeManager.DisputeResolved(id, expertId, IDisputeManager.DisputeStatus.NoQuorum, 0, 0);
        assertTrue(disputes.resolve(id) == IDisputeManager.DisputeStatus.NoQuorum);
        assertEq(disputes.claimable(challenger), DISPUTE_BOND);
        assertEq(disputes.claimable(v3), 0);
        assertEq(registry.getExpert(expertId).openDisputes, 0);
    }

    function test_Resolve_NoVotesIsNoQuorum() public {
        uint256 id = _open();
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        assertTrue(disputes.resolve(id) == IDisputeManager.DisputeStatus.NoQuorum);
    }

    function test_Resolve_TieIsNoQuorum() public {
        address v4 = makeAddr("verifier4");
        registerVerifier(v4, 1 ether);
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        _commit(id, v4, false, "s4");
        vm.warp(START + COMMIT_PERIOD);
        _reveal(id, v1, true, "s1");
        _reveal(id, v4, false, "s4");
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        assertTrue(disputes.resolve(id) == IDisputeManager.DisputeStatus.NoQuorum);
        assertEq(disputes.claimable(challenger), DISPUTE_BOND);
    }

    function test_Resolve_UnrevealedVotesDoNotCount() public {
        uint256 id = _open();
        _commit(id, v1, true, "s1");
        _commit(id, v2, false, "s2");
        vm.warp(START + COMMIT_PERIOD);
        _reveal(id, v1, true, "s1");
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        assertTrue(disputes.resolve(id) == IDisputeManager.DisputeStatus.Guilty);
        assertEq(disputes.claimable(v2), 0);
    }

    function test_Resolve_TwoDisputesSlashWhatIsLeft() public {
        uint256 first = _open();
        IDisputeManager.Receipt memory r2 = receiptFor(expertId, keccak256("request 2"));
        vm.prank(challenger);
        uint256 second = disputes.openDispute{value: DISPUTE_BOND}(r2, signReceipt(signerKey, r2), "");
        assertEq(registry.getExpert(expertId).openDisputes, 2);
        _commit(first, v2, true, "a");
        _commit(second, v2, true, "b");
        vm.warp(START + COMMIT_PERIOD);
        _reveal(first, v2, true, "a");
        _reveal(second, v2, true, "b");
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        disputes.resolve(first);
        assertEq(registry.getExpert(expertId).openDisputes, 1);
        disputes.resolve(second);
        assertEq(disputes.getDispute(second).slashed, MIN_STAKE / 4, "half of the half left");
        assertEq(registry.getExpert(expertId).stake, MIN_STAKE / 4);
        assertEq(registry.getExpert(expertId).disputesLost, 2);
    }

    function test_RevertIf_ResolveUnknown() public {
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeUnknown.selector, 0));
        disputes.resolve(0);
    }

    function test_RevertIf_ResolveNotOver() public {
        uint256 id = _open();
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD - 1);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeNotOver.selector, id, START + COMMIT_PERIOD + REVEAL_PERIOD)
        );
        disputes.resolve(id);
    }

    function test_RevertIf_ResolveTwice() public {
        uint256 id = _open();
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        disputes.resolve(id);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeAlreadyResolved.selector, id));
        disputes.resolve(id);
    }

    // ----------------------------------------------------------------------------------------------------------
    // claim
    // ----------------------------------------------------------------------------------------------------------

    function test_Claim() public {
        uint256 id = _open();
        _runVote(id, true, true, false);
        disputes.resolve(id);
        uint256 owed = disputes.claimable(challenger);
        uint256 before = challenger.balance;
        vm.expectEmit(address(disputes));
        emit IDisputeManager.RewardClaimed(challenger, owed);
        vm.prank(challenger);
        assertEq(disputes.claim(), owed);
        assertEq(challenger.balance, before + owed);
        assertEq(disputes.claimable(challenger), 0);
        vm.prank(v1);
        disputes.claim();
        vm.prank(v2);
        disputes.claim();
        assertEq(address(disputes).balance, 0, "everything owed is paid, nothing else is held");
    }

    function test_RevertIf_ClaimNothing() public {
        vm.prank(v1);
        vm.expectRevert(abi.encodeWithSelector(IDisputeManager.DisputeNothingToClaim.selector, v1));
        disputes.claim();
    }

    function test_RevertIf_ClaimTransferFails() public {
        EtherRejecter rejecter = new EtherRejecter();
        vm.deal(address(rejecter), DISPUTE_BOND);
        rejecter.act(
            address(disputes), DISPUTE_BOND, abi.encodeCall(IDisputeManager.openDispute, (receipt, receiptSig, ""))
        );
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        disputes.resolve(1);
        vm.expectRevert(
            abi.encodeWithSelector(IDisputeManager.DisputeTransferFailed.selector, address(rejecter), DISPUTE_BOND)
        );
        rejecter.act(address(disputes), 0, abi.encodeCall(IDisputeManager.claim, ()));
    }

    function test_Claim_ReentryIsBlocked() public {
        Reenterer attacker = new Reenterer();
        vm.deal(address(attacker), DISPUTE_BOND);
        attacker.act(
            address(disputes), DISPUTE_BOND, abi.encodeCall(IDisputeManager.openDispute, (receipt, receiptSig, ""))
        );
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        disputes.resolve(1);
        attacker.arm(address(disputes), abi.encodeCall(IDisputeManager.claim, ()));
        attacker.act(address(disputes), 0, abi.encodeCall(IDisputeManager.claim, ()));
        assertFalse(attacker.succeeded());
        assertEq(
            attacker.returned(), abi.encodeWithSelector(TransientReentrancyGuard.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(attacker.received(), DISPUTE_BOND, "paid once");
    }

    // ----------------------------------------------------------------------------------------------------------
    // Fuzz: every verdict pays out exactly what came in
    // ----------------------------------------------------------------------------------------------------------

    function testFuzz_Resolve_ConservesValue(uint256 s1, uint256 s2, uint256 s3, uint8 votes, uint256 stake)
        public
    {
        s1 = bound(s1, MIN_VERIFIER_STAKE, 100 ether);
        s2 = bound(s2, MIN_VERIFIER_STAKE, 100 ether);
        s3 = bound(s3, MIN_VERIFIER_STAKE, 100 ether);
        stake = bound(stake, 1, 1_000 ether);
        vm.deal(address(this), stake);
        registry.addStake{value: stake}(expertId);
        address[3] memory vs = [makeAddr("f1"), makeAddr("f2"), makeAddr("f3")];
        uint256[3] memory stakes = [s1, s2, s3];
        uint256 id = _open();
        for (uint256 i; i < 3; ++i) {
            registerVerifier(vs[i], stakes[i]);
            if (votes & (1 << (2 * i)) != 0) _commit(id, vs[i], votes & (2 << (2 * i)) != 0, "s");
        }
        vm.warp(START + COMMIT_PERIOD);
        for (uint256 i; i < 3; ++i) {
            if (votes & (1 << (2 * i)) != 0) _reveal(id, vs[i], votes & (2 << (2 * i)) != 0, "s");
        }
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
        uint256 stakeBefore = registry.getExpert(expertId).stake;
        disputes.resolve(id);

        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        uint256 owed = disputes.claimable(challenger) + disputes.claimable(operator);
        for (uint256 i; i < 3; ++i) {
            owed += disputes.claimable(vs[i]);
        }
        assertEq(address(disputes).balance, owed, "holds exactly what it owes");
        assertEq(owed + BURN.balance, DISPUTE_BOND + d.slashed, "bond + slash = credits + burn");
        assertEq(registry.getExpert(expertId).stake, stakeBefore - d.slashed);
        if (d.status == IDisputeManager.DisputeStatus.Guilty) {
            assertEq(d.slashed, stakeBefore * SLASH_BPS / 10_000);
        } else {
            assertEq(d.slashed, 0);
        }
    }

    // ----------------------------------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------------------------------

    function _open() internal returns (uint256 id) {
        vm.prank(challenger);
        id = disputes.openDispute{value: DISPUTE_BOND}(receipt, receiptSig, "/ip4/127.0.0.1/tcp/5000/p2p/QmEvidence");
    }

    function _commit(uint256 id, address verifier, bool guilty, bytes32 salt) internal {
        bytes32 c = disputes.commitmentFor(id, guilty, salt, verifier);
        vm.prank(verifier);
        disputes.commitVote(id, c);
    }

    function _reveal(uint256 id, address verifier, bool guilty, bytes32 salt) internal {
        vm.prank(verifier);
        disputes.revealVote(id, guilty, salt);
    }

    /// @dev v1, v2, v3 commit and reveal the given votes; leaves the clock at the end of the reveal period.
    function _runVote(uint256 id, bool g1, bool g2, bool g3) internal {
        _commit(id, v1, g1, "s1");
        _commit(id, v2, g2, "s2");
        _commit(id, v3, g3, "s3");
        vm.warp(disputes.getDispute(id).commitEnds);
        _reveal(id, v1, g1, "s1");
        _reveal(id, v2, g2, "s2");
        _reveal(id, v3, g3, "s3");
        vm.warp(disputes.getDispute(id).revealEnds);
    }
}
