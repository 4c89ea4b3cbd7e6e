// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "../utils/Test.sol";
import {Deploy} from "../utils/Deploy.sol";
import {ExpertRegistry} from "../../src/ExpertRegistry.sol";
import {DisputeManager} from "../../src/DisputeManager.sol";
import {IExpertRegistry} from "../../src/interfaces/IExpertRegistry.sol";
import {IDisputeManager} from "../../src/interfaces/IDisputeManager.sol";

/// @notice Drives the registry and the dispute manager together: experts register, top up, unbond and withdraw;
/// verifiers register, top up, unbond and withdraw; challengers open disputes on signed receipts; verifiers commit
/// and reveal; anyone resolves and claims; time passes. Every action checks its own preconditions, so a revert
/// is a bug (the suite runs with fail_on_revert).
contract StakeHandler is Test {
    ExpertRegistry internal immutable registry;
    DisputeManager internal immutable disputes;

    uint256 internal constant OPERATORS = 3;
    uint256 internal constant VERIFIERS = 4;
    bytes32 internal constant MODEL = keccak256("invariant model");

    address[] public operators;
    address[] public verifiers;
    address public challenger;
    uint256[] public experts;
    mapping(uint256 expertId => uint256 key) internal _signerKey;

    // Ghosts
    mapping(uint256 expertId => uint256) public staked; // everything ever added to the expert's stake
    mapping(uint256 expertId => uint256) public paidOut; // what its operator received from withdrawStake
    mapping(address verifier => uint256) public verifierStaked;
    mapping(address verifier => uint256) public verifierPaidOut;
    uint256[] public disputeIds;
    mapping(uint256 disputeId => mapping(address verifier => bool guilty)) internal _intent;
    uint256 public burned;
    uint256 public requests;

    constructor(ExpertRegistry registry_, DisputeManager disputes_) {
        registry = registry_;
        disputes = disputes_;
        for (uint256 i; i < OPERATORS; ++i) {
            operators.push(address(uint160(0x0A0000 + i)));
        }
        for (uint256 i; i < VERIFIERS; ++i) {
            verifiers.push(address(uint160(0x0B0000 + i)));
        }
        challenger = address(uint160(0x0C0000));
    }

    function expertCount() external view returns (uint256) {
        return experts.length;
    }

    function disputeCount() external view returns (uint256) {
        return disputeIds.length;
    }

    function verifierCount() external pure returns (uint256) {
        return VERIFIERS;
    }

    function operatorCount() external pure returns (uint256) {
        return OPERATORS;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Experts
    // ----------------------------------------------------------------------------------------------------------

    function registerExpert(uint256 operatorSeed, uint256 stake) external {
        if (experts.length >= 8) return;
        address operator = operators[operatorSeed % OPERATORS];
        stake = bound(stake, registry.MIN_STAKE(), 5 ether);
        uint256 key = uint256(keccak256(abi.encode("expert signer", experts.length)));
        IExpertRegistry.ExpertParams memory p = IExpertRegistry.ExpertParams({
            signer: vm.addr(key),
            modelHash: MODEL,
            capability: bytes32("cap"),
            pricePerCall: 1,
            nodeKey: bytes32("node"),
            endpoint: "/ip4/127.0.0.1/tcp/1"
        });
        vm.deal(operator, operator.balance + stake);
        vm.prank(operator);
        uint256 id = registry.registerExpert{value: stake}(p);
        experts.push(id);
        _signerKey[id] = key;
        staked[id] = stake;
    }

    function addStake(uint256 expertSeed, uint256 amount) external {
        if (experts.length == 0) return;
        uint256 id = experts[expertSeed % experts.length];
        if (registry.getExpert(id).status != IExpertRegistry.ExpertStatus.Active) return;
        amount = bound(amount, 1, 2 ether);
        vm.deal(address(this), amount);
        registry.addStake{value: amount}(id);
        staked[id] += amount;
    }

    function requestUnbond(uint256 expertSeed) external {
        if (experts.length == 0) return;
        uint256 id = experts[expertSeed % experts.length];
        IExpertRegistry.Expert memory e = registry.getExpert(id);
        if (e.status != IExpertRegistry.ExpertStatus.Active) return;
        vm.prank(e.operator);
        registry.requestUnbond(id);
    }

    function withdrawStake(uint256 expertSeed) external {
        if (experts.length == 0) return;
        uint256 id = experts[expertSeed % experts.length];
        IExpertRegistry.Expert memory e = registry.getExpert(id);
        if (e.status == IExpertRegistry.ExpertStatus.Withdrawn) {
            // Paying twice must be impossible.
            vm.prank(e.operator);
            vm.expectRevert(abi.encodeWithSelector(IExpertRegistry.RegistryNotUnbonding.selector, id));
            registry.withdrawStake(id);
            return;
        }
        if (e.status != IExpertRegistry.ExpertStatus.Unbonding || block.timestamp < e.unbondsAt) return;
        if (e.openDisputes != 0) {
            vm.prank(e.operator);
            vm.expectRevert(
                abi.encodeWithSelector(IExpertRegistry.RegistryDisputesOpen.selector, id, e.openDisputes)
            );
            registry.withdrawStake(id);
            return;
        }
        uint256 before = e.operator.balance;
        vm.prank(e.operator);
        registry.withdrawStake(id);
        paidOut[id] += e.operator.balance - before;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Verifiers
    // ----------------------------------------------------------------------------------------------------------

    function registerVerifier(uint256 verifierSeed, uint256 stake) external {
        address v = verifiers[verifierSeed % VERIFIERS];
        IExpertRegistry.Verifier memory info = registry.getVerifier(v);
        if (info.active || info.stake != 0) return;
        stake = bound(stake, registry.MIN_VERIFIER_STAKE(), 3 ether);
        vm.deal(v, v.balance + stake);
        vm.prank(v);
        registry.registerVerifier{value: stake}();
        verifierStaked[v] += stake;
    }

    function addVerifierStake(uint256 verifierSeed, uint256 amount) external {
        address v = verifiers[verifierSeed % VERIFIERS];
        if (!registry.getVerifier(v).active) return;
        amount = bound(amount, 1, 2 ether);
        vm.deal(v, v.balance + amount);
        vm.prank(v);
        registry.addVerifierStake{value: amount}();
        verifierStaked[v] += amount;
    }

    function requestVerifierUnbond(uint256 verifierSeed) external {
        address v = verifiers[verifierSeed % VERIFIERS];
        if (!registry.getVerifier(v).active) return;
        vm.prank(v);
        registry.requestVerifierUnbond();
    }

    function withdrawVerifierStake(uint256 verifierSeed) external {
        address v = verifiers[verifierSeed % VERIFIERS];
        IExpertRegistry.Verifier memory info = registry.getVerifier(v);
        if (info.active || info.unbondsAt == 0 || block.timestamp < info.unbondsAt) return;
        uint256 before = v.balance;
        vm.prank(v);
        registry.withdrawVerifierStake();
        verifierPaidOut[v] += v.balance - before;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Disputes
    // ----------------------------------------------------------------------------------------------------------

    function openDispute(uint256 expertSeed) external {
        if (experts.length == 0) return;
        uint256 id = experts[expertSeed % experts.length];
        IExpertRegistry.Expert memory e = registry.getExpert(id);
        bool slashable = e.status == IExpertRegistry.ExpertStatus.Active
            || e.status == IExpertRegistry.ExpertStatus.Unbonding;
        if (!slashable || e.stake == 0) return;
        IDisputeManager.Receipt memory r = IDisputeManager.Receipt({
            expertId: id,
            modelHash: MODEL,
            requestId: bytes32(++requests),
            inputHash: bytes32("in"),
            outputHash: bytes32("out"),
            price: 1
        });
        (uint8 v, bytes32 rr, bytes32 s) = vm.sign(_signerKey[id], disputes.receiptDigest(r));
        uint256 bond = disputes.DISPUTE_BOND();
        vm.deal(challenger, challenger.balance + bond);
        vm.prank(challenger);
        disputeIds.push(disputes.openDispute{value: bond}(r, abi.encodePacked(rr, s, v), ""));
    }

    /// @dev A whole dispute in one step (open, every active verifier commits a seeded vote, reveal, resolve), so
    /// that short call sequences reach Guilty and Innocent verdicts, not only NoQuorum.
    function fullDispute(uint256 expertSeed, uint256 votes) external {
        uint256 before = disputeIds.length;
        this.openDispute(expertSeed);
        if (disputeIds.length == before) return;
        uint256 id = disputeIds[before];
        for (uint256 i; i < VERIFIERS; ++i) {
            this.commitVote(before, i, (votes >> i) & 1 == 1);
        }
        vm.warp(disputes.getDispute(id).commitEnds);
        for (uint256 i; i < VERIFIERS; ++i) {
            this.revealVote(before, i);
        }
        vm.warp(disputes.getDispute(id).revealEnds);
        this.resolve(before);
    }

    function commitVote(uint256 disputeSeed, uint256 verifierSeed, bool guilty) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[disputeSeed % disputeIds.length];
        address v = verifiers[verifierSeed % VERIFIERS];
        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        if (block.timestamp >= d.commitEnds || registry.votingStake(v) == 0) return;
        if (disputes.commitmentOf(id, v) != bytes32(0)) return;
        bytes32 c = disputes.commitmentFor(id, guilty, bytes32(uint256(uint160(v))), v);
        _intent[id][v] = guilty;
        vm.prank(v);
        disputes.commitVote(id, c);
    }

    function revealVote(uint256 disputeSeed, uint256 verifierSeed) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[disputeSeed % disputeIds.length];
        address v = verifiers[verifierSeed % VERIFIERS];
        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        if (block.timestamp < d.commitEnds || block.timestamp >= d.revealEnds) return;
        if (disputes.commitmentOf(id, v) == bytes32(0)) return;
        bool guilty = _intent[id][v];
        vm.prank(v);
        try disputes.revealVote(id, guilty, bytes32(uint256(uint160(v)))) {}
        catch (bytes memory reason) {
            require(bytes4(reason) == IDisputeManager.DisputeAlreadyRevealed.selector, "unexpected reveal revert");
        }
    }

    function resolve(uint256 disputeSeed) external {
        if (disputeIds.length == 0) return;
        uint256 id = disputeIds[disputeSeed % disputeIds.length];
        IDisputeManager.Dispute memory d = disputes.getDispute(id);
        if (block.timestamp < d.revealEnds || d.status != IDisputeManager.DisputeStatus.Open) return;
        uint256 before = disputes.BURN_ADDRESS().balance;
        disputes.resolve(id);
        burned += disputes.BURN_ADDRESS().balance - before;
    }

    function claim(uint256 actorSeed) external {
        uint256 k = actorSeed % (OPERATORS + VERIFIERS + 1);
        address who = k < OPERATORS ? operators[k] : k < OPERATORS + VERIFIERS ? verifiers[k - OPERATORS] : challenger;
        if (disputes.claimable(who) == 0) return;
        vm.prank(who);
        disputes.claim();
    }

    function warp(uint256 secondsForward) external {
        vm.warp(block.timestamp + bound(secondsForward, 1, 4 days));
    }

    receive() external payable {}
}

contract StakeInvariantTest is Deploy {
    StakeHandler internal handler;

    function setUp() public {
        deploy();
        handler = new StakeHandler(registry, disputes);
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](17);
        selectors[0] = StakeHandler.registerExpert.selector;
        selectors[1] = StakeHandler.addStake.selector;
        selectors[2] = StakeHandler.requestUnbond.selector;
        selectors[3] = StakeHandler.withdrawStake.selector;
        selectors[4] = StakeHandler.registerVerifier.selector;
        selectors[5] = StakeHandler.addVerifierStake.selector;
        selectors[6] = StakeHandler.requestVerifierUnbond.selector;
        selectors[7] = StakeHandler.withdrawVerifierStake.selector;
        selectors[8] = StakeHandler.openDispute.selector;
        selectors[9] = StakeHandler.commitVote.selector;
        selectors[10] = StakeHandler.revealVote.selector;
        selectors[11] = StakeHandler.resolve.selector;
        selectors[12] = StakeHandler.claim.selector;
        selectors[13] = StakeHandler.warp.selector;
        selectors[14] = StakeHandler.registerExpert.selector; // registrations twice as likely early on
        selectors[15] = StakeHandler.fullDispute.selector;
        selectors[16] = StakeHandler.registerVerifier.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// (1) The registry holds exactly the stakes it records (experts' and verifiers').
    function invariant_RegistryHoldsStakes() public view {
        uint256 sum;
        for (uint256 i; i < handler.expertCount(); ++i) {
            sum += registry.getExpert(handler.experts(i)).stake;
        }
        uint256 active;
        for (uint256 i; i < handler.verifierCount(); ++i) {
            IExpertRegistry.Verifier memory v = registry.getVerifier(handler.verifiers(i));
            sum += v.stake;
            if (v.active) active += v.stake;
        }
        assertEq(address(registry).balance, sum, "registry ether != recorded stakes");
        assertEq(registry.totalVerifierStake(), active, "totalVerifierStake != active stakes");
    }

    /// (1) The dispute manager holds exactly the bonds of open disputes plus what it has credited and not paid.
    function invariant_DisputeManagerHoldsWhatItOwes() public view {
        uint256 owed;
        for (uint256 i; i < handler.disputeCount(); ++i) {
            IDisputeManager.Dispute memory d = disputes.getDispute(handler.disputeIds(i));
            if (d.status == IDisputeManager.DisputeStatus.Open) owed += d.bond;
        }
        for (uint256 i; i < handler.operatorCount(); ++i) {
            owed += disputes.claimable(handler.operators(i));
        }
        for (uint256 i; i < handler.verifierCount(); ++i) {
            owed += disputes.claimable(handler.verifiers(i));
        }
        owed += disputes.claimable(handler.challenger());
        assertEq(address(disputes).balance, owed, "dispute manager ether != bonds + claimable");
    }

    /// (3) Slashed or withdrawn stake is never paid twice: an operator receives at most what was staked minus
    /// what was slashed, and exactly that once withdrawn; what is still held is the rest.
    function invariant_StakeNeverPaidTwice() public view {
        for (uint256 i; i < handler.expertCount(); ++i) {
            uint256 id = handler.experts(i);
            IExpertRegistry.Expert memory e = registry.getExpert(id);
            uint256 staked = handler.staked(id);
            uint256 paid = handler.paidOut(id);
            assertLe(paid + e.slashedTotal, staked, "paid out more than staked minus slashed");
            assertEq(e.stake, staked - e.slashedTotal - paid, "stake != staked - slashed - paid");
            if (e.status == IExpertRegistry.ExpertStatus.Withdrawn) {
                assertEq(paid, staked - e.slashedTotal, "withdrawn expert not paid its remaining stake");
            } else {
                assertEq(paid, 0, "paid before withdrawal");
            }
        }
        for (uint256 i; i < handler.verifierCount(); ++i) {
            address v = handler.verifiers(i);
            assertEq(
                registry.getVerifier(v).stake + handler.verifierPaidOut(v),
                handler.verifierStaked(v),
                "verifier stake paid twice or lost"
            );
        }
    }

    /// Everything slashed went to the dispute manager's credits or the burn address, nothing else.
    function invariant_SlashedIsCreditedOrBurned() public view {
        uint256 slashed;
        for (uint256 i; i < handler.expertCount(); ++i) {
            slashed += registry.getExpert(handler.experts(i)).slashedTotal;
        }
        uint256 recorded;
        for (uint256 i; i < handler.disputeCount(); ++i) {
            recorded += disputes.getDispute(handler.disputeIds(i)).slashed;
        }
        assertEq(slashed, recorded, "registry and dispute manager disagree on slashed stake");
        assertLe(handler.burned(), slashed);
    }
}
