// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IDisputeManager
/// @notice Disputes against an expert's signed receipt, decided by a commit-reveal vote of staked verifiers.
/// @dev A receipt is the EIP-712 struct
/// `Receipt(uint256 expertId,bytes32 modelHash,bytes32 requestId,bytes32 inputHash,bytes32 outputHash,uint256 price)`
/// under domain "MoeMarket Disputes" version "1", this chain id and this contract, signed by the expert's
/// signer (current or any earlier one). Anyone holding a receipt opens a dispute with `DISPUTE_BOND`.
/// Verifiers commit `keccak256(abi.encode(disputeId, guilty, salt, verifier))` during the commit period and
/// reveal during the reveal period; their weight is their voting stake at commit time. After the reveal period
/// anyone resolves: with revealed stake below `QUORUM_STAKE`, or a tie, the bond goes back to the challenger
/// (NoQuorum). Guilty (guilty stake > innocent stake): `SLASH_BPS` of the expert's stake is slashed;
/// `CHALLENGER_BPS` of it goes to the challenger with the bond back, `VERIFIER_BPS` to the majority verifiers pro
/// rata to stake, the rest is burned. Innocent: `EXPERT_BOND_BPS` of the bond to the expert's operator, the rest to
/// the majority verifiers pro rata. Rewards are credited and paid by `claim()`.
interface IDisputeManager {
    enum DisputeStatus {
        None,
        Open,
        Guilty,
        Innocent,
        NoQuorum
    }

    struct Receipt {
        uint256 expertId;
        bytes32 modelHash;
        bytes32 requestId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint256 price;
    }

    struct Dispute {
        uint256 expertId;
        address challenger;
        uint96 bond;
        bytes32 modelHash;
        bytes32 requestId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint40 commitEnds;
        uint40 revealEnds;
        DisputeStatus status;
        uint128 guiltyStake;
        uint128 innocentStake;
        uint96 slashed;
        uint32 voters; // verifiers that revealed
    }

    error DisputeBondMismatch(uint256 sent, uint256 required);
    error DisputeInvalidReceiptSigner(uint256 expertId, address recovered);
    error DisputeUnknownExpert(uint256 expertId);
    error DisputeExpertNotSlashable(uint256 expertId);
    error DisputeModelMismatch(uint256 expertId, bytes32 receiptModel, bytes32 expertModel);
    error DisputeAlreadyOpened(bytes32 receiptDigest);
    error DisputeUnknown(uint256 disputeId);
    error DisputeNotVerifier(address caller);
    error DisputeCommitClosed(uint256 disputeId, uint256 commitEnds);
    error DisputeRevealNotOpen(uint256 disputeId, uint256 commitEnds);
    error DisputeRevealClosed(uint256 disputeId, uint256 revealEnds);
    error DisputeAlreadyCommitted(uint256 disputeId, address verifier);
    error DisputeNoCommit(uint256 disputeId, address verifier);
    error DisputeAlreadyRevealed(uint256 disputeId, address verifier);
    error DisputeCommitMismatch(uint256 disputeId, address verifier);
    error DisputeExpertCannotVote(uint256 disputeId, address verifier);
    error DisputeNotOver(uint256 disputeId, uint256 revealEnds);
    error DisputeAlreadyResolved(uint256 disputeId);
    error DisputeNothingToClaim(address account);
    error DisputeTransferFailed(address to, uint256 amount);
    error DisputeInvalidParameters();

    event DisputeOpened(
        uint256 indexed disputeId,
        uint256 indexed expertId,
        address indexed challenger,
        bytes32 modelHash,
        bytes32 requestId,
        bytes32 inputHash,
        bytes32 outputHash,
        uint256 commitEnds,
        uint256 revealEnds,
        string evidenceEndpoint
    );
    event VoteCommitted(uint256 indexed disputeId, address indexed verifier, uint256 stake);
    event VoteRevealed(uint256 indexed disputeId, address indexed verifier, bool guilty, uint256 stake);
    event DisputeResolved(
        uint256 indexed disputeId, uint256 indexed expertId, DisputeStatus status, uint256 slashed, uint256 burned
    );
    event RewardCredited(address indexed account, uint256 indexed disputeId, uint256 amount);
    event RewardClaimed(address indexed account, uint256 amount);

    /// @notice Opens a dispute against a signed receipt; `msg.value` must equal `DISPUTE_BOND`.
    /// @param evidenceEndpoint full multiaddr (with /p2p/<peer id>) where verifiers fetch the input and the
    /// claimed output by their hashes; emitted, not stored.
    function openDispute(Receipt calldata receipt, bytes calldata signature, string calldata evidenceEndpoint)
        external
        payable
        returns (uint256 disputeId);

    function commitVote(uint256 disputeId, bytes32 commitment) external;

    function revealVote(uint256 disputeId, bool guilty, bytes32 salt) external;

    function resolve(uint256 disputeId) external returns (DisputeStatus status);

    /// @notice Pays the caller everything credited to it.
    function claim() external returns (uint256 amount);

    function registry() external view returns (address);
    function DISPUTE_BOND() external view returns (uint256);
    function COMMIT_PERIOD() external view returns (uint256);
    function REVEAL_PERIOD() external view returns (uint256);
    function QUORUM_STAKE() external view returns (uint256);
    function SLASH_BPS() external view returns (uint256);
    function CHALLENGER_BPS() external view returns (uint256);
    function VERIFIER_BPS() external view returns (uint256);
    function EXPERT_BOND_BPS() external view returns (uint256);
    function BURN_ADDRESS() external view returns (address);
    function disputeCount() external view returns (uint256);
    function getDispute(uint256 disputeId) external view returns (Dispute memory);
    function claimable(address account) external view returns (uint256);
    function commitmentOf(uint256 disputeId, address verifier) external view returns (bytes32);
    function receiptDigest(Receipt calldata receipt) external view returns (bytes32);
    function commitmentFor(uint256 disputeId, bool guilty, bytes32 salt, address verifier)
        external
        pure
        returns (bytes32);
}
