// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TransientReentrancyGuard} from "./utils/TransientReentrancyGuard.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IExpertRegistry} from "./interfaces/IExpertRegistry.sol";
import {IDisputeManager} from "./interfaces/IDisputeManager.sol";

/// @title DisputeManager
/// @notice Disputes against an expert's signed receipt, decided by a commit-reveal vote of staked verifiers.
/// @dev At most `MAX_VOTERS` verifiers commit on one dispute, so that `resolve` walks a bounded list. When the list
/// is full a new committer takes the place of the committer with the least stake if it has more (the evicted vote
/// is dropped, `VoteEvicted`), so a swarm of minimum-stake accounts cannot lock honest stake out of a vote.
/// Every reward is credited to `claimable` and paid by `claim()`; the only pushes are the burn (to a fixed address)
/// and the claim itself. The contract holds exactly the bonds of open disputes plus everything credited and not yet
/// claimed.
contract DisputeManager is IDisputeManager, EIP712, TransientReentrancyGuard {
    // ----------------------------------------------------------------------------------------------------------
    // Errors and events added to the interface's
    // ----------------------------------------------------------------------------------------------------------

    /// @notice The dispute already has `MAX_VOTERS` committers and the caller's stake does not exceed the smallest.
    error DisputeVotersFull(uint256 disputeId, uint256 smallestStake);
    /// @notice Ether arrives only from the registry (slashed stake).
    error DisputeNotRegistry(address sender);

    /// @notice A committed vote was dropped to make room for a verifier with more stake.
    event VoteEvicted(uint256 indexed disputeId, address indexed verifier, uint256 stake);

    // ----------------------------------------------------------------------------------------------------------
    // Constants and immutables
    // ----------------------------------------------------------------------------------------------------------

    /// @notice EIP-712 type hash of a receipt.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(uint256 expertId,bytes32 modelHash,bytes32 requestId,bytes32 inputHash,bytes32 outputHash,uint256 price)"
    );
    /// @notice Most verifiers that can hold a committed vote on one dispute.
    uint256 public constant MAX_VOTERS = 64;
    /// @inheritdoc IDisputeManager
    address public constant BURN_ADDRESS = 0x000000000000000000000000000000000000dEaD;
    uint256 private constant _BPS = 10_000;

    /// @inheritdoc IDisputeManager
    uint256 public immutable DISPUTE_BOND;
    /// @inheritdoc IDisputeManager
    uint256 public immutable COMMIT_PERIOD;
    /// @inheritdoc IDisputeManager
    uint256 public immutable REVEAL_PERIOD;
    /// @inheritdoc IDisputeManager
    uint256 public immutable QUORUM_STAKE;
    /// @inheritdoc IDisputeManager
    uint256 public immutable SLASH_BPS;
    /// @inheritdoc IDisputeManager
    uint256 public immutable CHALLENGER_BPS;
    /// @inheritdoc IDisputeManager
    uint256 public immutable VERIFIER_BPS;
    /// @inheritdoc IDisputeManager
    uint256 public immutable EXPERT_BOND_BPS;

    IExpertRegistry private immutable _registry;

    // ----------------------------------------------------------------------------------------------------------
    // Storage
    // ----------------------------------------------------------------------------------------------------------

    struct Vote {
        bytes32 commitment;
        uint96 stake; // voting stake at commit time; non-zero iff committed
        bool revealed;
        bool guilty;
    }

    uint256 private _disputeCount;
    mapping(uint256 disputeId => Dispute) private _disputes;
    mapping(bytes32 receiptDigest => bool) private _opened;
    mapping(uint256 disputeId => mapping(address verifier => Vote)) private _votes;
    mapping(uint256 disputeId => address[]) private _committers;
    mapping(address account => uint256 amount) private _claimable;

    // ----------------------------------------------------------------------------------------------------------
    // Constructor
    // ----------------------------------------------------------------------------------------------------------

    constructor(
        address registry_,
        uint256 disputeBond,
        uint256 commitPeriod,
        uint256 revealPeriod,
        uint256 quorumStake,
        uint256 slashBps,
        uint256 challengerBps,
        uint256 verifierBps,
        uint256 expertBondBps
    ) EIP712("MoeMarket Disputes", "1") {
        if (
            registry_ == address(0) || disputeBond > type(uint96).max || commitPeriod == 0 || revealPeriod == 0
                || slashBps > _BPS || challengerBps + verifierBps > _BPS || expertBondBps > _BPS
        ) revert DisputeInvalidParameters();
        _registry = IExpertRegistry(registry_);
        DISPUTE_BOND = disputeBond;
        COMMIT_PERIOD = commitPeriod;
        REVEAL_PERIOD = revealPeriod;
        QUORUM_STAKE = quorumStake;
        SLASH_BPS = slashBps;
        CHALLENGER_BPS = challengerBps;
        VERIFIER_BPS = verifierBps;
        EXPERT_BOND_BPS = expertBondBps;
    }

    /// @notice Accepts slashed stake from the registry, nothing else.
    receive() external payable {
        if (msg.sender != address(_registry)) revert DisputeNotRegistry(msg.sender);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Disputes
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IDisputeManager
    function openDispute(Receipt calldata receipt, bytes calldata signature, string calldata evidenceEndpoint)
        external
        payable
        returns (uint256 disputeId)
    {
        if (msg.value != DISPUTE_BOND) revert DisputeBondMismatch(msg.value, DISPUTE_BOND);
        uint256 expertId = receipt.expertId;
        IExpertRegistry.Expert memory expert = _registry.getExpert(expertId);
        if (expert.status == IExpertRegistry.ExpertStatus.None) revert DisputeUnknownExpert(expertId);
        if (
            (expert.status != IExpertRegistry.ExpertStatus.Active
                    && expert.status != IExpertRegistry.ExpertStatus.Unbonding) || expert.stake == 0
        ) revert DisputeExpertNotSlashable(expertId);
        if (receipt.modelHash != expert.modelHash) {
            revert DisputeModelMismatch(expertId, receipt.modelHash, expert.modelHash);
        }
        bytes32 digest = _receiptDigest(receipt);
        // tryRecover rejects malleable (high-s) signatures; on any error it returns address(0), reported as such.
        // The third return value only details the error (a length or an s value); the error kind is enough here.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError || !_registry.wasSigner(expertId, recovered)) {
            revert DisputeInvalidReceiptSigner(expertId, recovered);
        }
        if (_opened[digest]) revert DisputeAlreadyOpened(digest);

        _opened[digest] = true;
        disputeId = ++_disputeCount;
        uint40 commitEnds = SafeCast.toUint40(block.timestamp + COMMIT_PERIOD);
        uint40 revealEnds = SafeCast.toUint40(uint256(commitEnds) + REVEAL_PERIOD);
        Dispute storage d = _disputes[disputeId];
        d.expertId = expertId;
        d.challenger = msg.sender;
        // Cannot truncate: the constructor keeps DISPUTE_BOND below 2^96 and msg.value equals it.
        d.bond = uint96(msg.value);
        d.modelHash = receipt.modelHash;
        d.requestId = receipt.requestId;
        d.inputHash = receipt.inputHash;
        d.outputHash = receipt.outputHash;
        d.commitEnds = commitEnds;
        d.revealEnds = revealEnds;
        d.status = DisputeStatus.Open;

        // The registry is trusted code set at deployment; the lock keeps the stake in place until `resolve`.
        _registry.lockForDispute(expertId, true);
        _emitOpened(disputeId, receipt, commitEnds, revealEnds, evidenceEndpoint);
    }

    /// @inheritdoc IDisputeManager
    function commitVote(uint256 disputeId, bytes32 commitment) external {
        Dispute storage d = _existing(disputeId);
        uint256 stake = _registry.votingStake(msg.sender);
        if (stake == 0) revert DisputeNotVerifier(msg.sender);
        if (msg.sender == d.challenger || msg.sender == _registry.operatorOf(d.expertId)) {
            revert DisputeExpertCannotVote(disputeId, msg.sender);
        }
        if (block.timestamp >= d.commitEnds) revert DisputeCommitClosed(disputeId, d.commitEnds);
        Vote storage v = _votes[disputeId][msg.sender];
        if (v.stake != 0) revert DisputeAlreadyCommitted(disputeId, msg.sender);

        if (_committers[disputeId].length < MAX_VOTERS) {
            _committers[disputeId].push(msg.sender);
        } else {
            (uint256 index, address weakest, uint256 weakestStake) = _weakestCommitter(disputeId);
            if (stake <= weakestStake) revert DisputeVotersFull(disputeId, weakestStake);
            delete _votes[disputeId][weakest];
            _committers[disputeId][index] = msg.sender;
            emit VoteEvicted(disputeId, weakest, weakestStake);
        }
        v.commitment = commitment;
        v.stake = SafeCast.toUint96(stake);
        emit VoteCommitted(disputeId, msg.sender, stake);
    }

    /// @inheritdoc IDisputeManager
    function revealVote(uint256 disputeId, bool guilty, bytes32 salt) external {
        Dispute storage d = _existing(disputeId);
        if (block.timestamp < d.commitEnds) revert DisputeRevealNotOpen(disputeId, d.commitEnds);
        if (block.timestamp >= d.revealEnds) revert DisputeRevealClosed(disputeId, d.revealEnds);
        Vote storage v = _votes[disputeId][msg.sender];
        uint96 stake = v.stake;
        if (stake == 0) revert DisputeNoCommit(disputeId, msg.sender);
        if (v.revealed) revert DisputeAlreadyRevealed(disputeId, msg.sender);
        if (_commitment(disputeId, guilty, salt, msg.sender) != v.commitment) {
            revert DisputeCommitMismatch(disputeId, msg.sender);
        }

        v.revealed = true;
        v.guilty = guilty;
        // Cannot overflow: at most MAX_VOTERS stakes below 2^96 each are added to a 128-bit sum.
        if (guilty) d.guiltyStake += stake;
        else d.innocentStake += stake;
        ++d.voters;
        emit VoteRevealed(disputeId, msg.sender, guilty, stake);
    }

    /// @inheritdoc IDisputeManager
    function resolve(uint256 disputeId) external nonReentrant returns (DisputeStatus status) {
        Dispute storage d = _existing(disputeId);
        if (block.timestamp < d.revealEnds) revert DisputeNotOver(disputeId, d.revealEnds);
        if (d.status != DisputeStatus.Open) revert DisputeAlreadyResolved(disputeId);

        uint256 expertId = d.expertId;
        uint256 guiltyStake = d.guiltyStake;
        uint256 innocentStake = d.innocentStake;
        uint256 bond = d.bond;
        address challenger = d.challenger;
        uint256 slashed = 0;
        uint256 burned = 0;

        if (guiltyStake + innocentStake < QUORUM_STAKE || guiltyStake == innocentStake) {
            status = DisputeStatus.NoQuorum;
            d.status = status;
            _registry.lockForDispute(expertId, false);
            _credit(challenger, disputeId, bond);
        } else if (guiltyStake > innocentStake) {
            status = DisputeStatus.Guilty;
            d.status = status;
            _registry.lockForDispute(expertId, false);
            // The registry is trusted; the slashed ether arrives through receive() before slash returns, and
            // the whole function is nonReentrant.
            uint256 stake = _registry.getExpert(expertId).stake;
            slashed = _registry.slash(expertId, stake * SLASH_BPS / _BPS);
            // Cannot truncate: slashed <= the expert's uint96 stake.
            // forge-lint: disable-next-line(unsafe-typecast)
            d.slashed = uint96(slashed);
            uint256 toChallenger = slashed * CHALLENGER_BPS / _BPS;
            uint256 distributed = _rewardMajority(disputeId, true, slashed * VERIFIER_BPS / _BPS, guiltyStake);
            // Cannot underflow: CHALLENGER_BPS + VERIFIER_BPS <= 10,000 and shares are rounded down.
            unchecked {
                burned = slashed - toChallenger - distributed;
            }
            _credit(challenger, disputeId, bond + toChallenger);
        } else {
            status = DisputeStatus.Innocent;
            d.status = status;
            _registry.lockForDispute(expertId, false);
            address operator = _registry.operatorOf(expertId);
            uint256 toExpert = bond * EXPERT_BOND_BPS / _BPS;
            uint256 distributed = _rewardMajority(disputeId, false, bond - toExpert, innocentStake);
            // The operator gets its share plus the rounding dust of the verifiers' shares.
            _credit(operator, disputeId, bond - distributed);
        }

        emit DisputeResolved(disputeId, expertId, status, slashed, burned);
        if (burned != 0) {
            (bool ok,) = BURN_ADDRESS.call{value: burned}("");
            if (!ok) revert DisputeTransferFailed(BURN_ADDRESS, burned);
        }
    }

    /// @inheritdoc IDisputeManager
    function claim() external nonReentrant returns (uint256 amount) {
        amount = _claimable[msg.sender];
        if (amount == 0) revert DisputeNothingToClaim(msg.sender);
        // Debit before paying out.
        _claimable[msg.sender] = 0;
        emit RewardClaimed(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert DisputeTransferFailed(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IDisputeManager
    function registry() external view returns (address) {
        return address(_registry);
    }

    /// @inheritdoc IDisputeManager
    function disputeCount() external view returns (uint256) {
        return _disputeCount;
    }

    /// @inheritdoc IDisputeManager
    /// @dev An all-zero struct (status None) for an unknown id.
    function getDispute(uint256 disputeId) external view returns (Dispute memory) {
        return _disputes[disputeId];
    }

    /// @inheritdoc IDisputeManager
    function claimable(address account) external view returns (uint256) {
        return _claimable[account];
    }

    /// @inheritdoc IDisputeManager
    function commitmentOf(uint256 disputeId, address verifier) external view returns (bytes32) {
        return _votes[disputeId][verifier].commitment;
    }

    /// @notice Verifiers holding a committed vote on `disputeId` (at most `MAX_VOTERS`).
    function committersOf(uint256 disputeId) external view returns (address[] memory) {
        return _committers[disputeId];
    }

    /// @inheritdoc IDisputeManager
    function receiptDigest(Receipt calldata receipt) external view returns (bytes32) {
        return _receiptDigest(receipt);
    }

    /// @inheritdoc IDisputeManager
    function commitmentFor(uint256 disputeId, bool guilty, bytes32 salt, address verifier)
        external
        pure
        returns (bytes32)
    {
        return _commitment(disputeId, guilty, salt, verifier);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Internal
    // ----------------------------------------------------------------------------------------------------------

    function _existing(uint256 disputeId) private view returns (Dispute storage d) {
        d = _disputes[disputeId];
        if (d.status == DisputeStatus.None) revert DisputeUnknown(disputeId);
    }

    function _credit(address account, uint256 disputeId, uint256 amount) private {
        if (amount == 0) return;
        _claimable[account] += amount;
        emit RewardCredited(account, disputeId, amount);
    }

    /// @dev Credits `pool` to the revealed voters on the `guilty` side pro rata to their stake and returns what
    /// was credited (at most `pool`: shares are rounded down). The list holds at most MAX_VOTERS entries.
    function _rewardMajority(uint256 disputeId, bool guilty, uint256 pool, uint256 majorityStake)
        private
        returns (uint256 distributed)
    {
        if (pool == 0) return 0;
        address[] storage committers = _committers[disputeId];
        uint256 n = committers.length;
        for (uint256 i; i < n; ++i) {
            address verifier = committers[i];
            Vote storage v = _votes[disputeId][verifier];
            if (v.revealed && v.guilty == guilty) {
                // Cannot overflow: pool < 2^128 (ether) and stake < 2^96.
                uint256 share = pool * v.stake / majorityStake;
                distributed += share;
                _credit(verifier, disputeId, share);
            }
        }
    }

    function _weakestCommitter(uint256 disputeId)
        private
        view
        returns (uint256 index, address weakest, uint256 weakestStake)
    {
        address[] storage committers = _committers[disputeId];
        weakestStake = type(uint256).max;
        uint256 n = committers.length;
        for (uint256 i; i < n; ++i) {
            address verifier = committers[i];
            uint256 stake = _votes[disputeId][verifier].stake;
            if (stake < weakestStake) {
                (index, weakest, weakestStake) = (i, verifier, stake);
            }
        }
    }

    function _receiptDigest(Receipt calldata receipt) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH,
                    receipt.expertId,
                    receipt.modelHash,
                    receipt.requestId,
                    receipt.inputHash,
                    receipt.outputHash,
                    receipt.price
                )
            )
        );
    }

    function _commitment(uint256 disputeId, bool guilty, bytes32 salt, address verifier)
        private
        pure
        returns (bytes32)
    {
        return keccak256(abi.encode(disputeId, guilty, salt, verifier));
    }

    function _emitOpened(
        uint256 disputeId,
        Receipt calldata receipt,
        uint40 commitEnds,
        uint40 revealEnds,
        string calldata evidenceEndpoint
    ) private {
        emit DisputeOpened(
            disputeId,
            receipt.expertId,
            msg.sender,
            receipt.modelHash,
            receipt.requestId,
            receipt.inputHash,
            receipt.outputHash,
            commitEnds,
            revealEnds,
            evidenceEndpoint
        );
    }
}
