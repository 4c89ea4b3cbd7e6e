// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IExpertRegistry
/// @notice Registration, stake, unbonding and slashing of experts and verifiers in the moe-market.
/// @dev Stake is the Sybil cost: every expert id holds at least `MIN_STAKE` of its own. Stake leaves only
/// through an unbonding delay so that work done before can still be disputed and slashed. Only the dispute
/// manager (set once at deployment) can slash or lock stake.
interface IExpertRegistry {
    // ----------------------------------------------------------------------------------------------------------
    // Types
    // ----------------------------------------------------------------------------------------------------------

    enum ExpertStatus {
        None, // no such expert id
        Active, // staked and selectable
        Unbonding, // asked to leave; still slashable until withdrawn
        Withdrawn // stake paid out; kept for history
    }

    /// @notice What an operator submits to register an expert.
    struct ExpertParams {
        address signer; // hot key of the serving node: signs receipts
        bytes32 modelHash; // keccak256 of the canonical model manifest
        bytes32 capability; // keccak256 of a capability name such as "digits-expert"
        uint96 pricePerCall; // wei per call
        bytes32 nodeKey; // ed25519 public key of the node's libp2p identity (peer id derives from it)
        string endpoint; // multiaddrs of the node without the /p2p part, separated by spaces
    }

    struct Expert {
        address operator; // owner of the stake; receives payments
        uint96 pricePerCall;
        address signer;
        uint96 stake;
        bytes32 modelHash;
        bytes32 capability;
        bytes32 nodeKey;
        uint40 registeredAt;
        uint40 unbondsAt; // when the stake can be withdrawn (0 while active)
        uint96 slashedTotal;
        uint32 disputesLost;
        uint32 openDisputes; // disputes in progress; stake cannot be withdrawn while > 0
        ExpertStatus status;
        string endpoint;
    }

    struct Verifier {
        uint96 stake;
        uint40 registeredAt;
        uint40 unbondsAt; // 0 while active
        bool active;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Errors
    // ----------------------------------------------------------------------------------------------------------

    error RegistryStakeTooLow(uint256 sent, uint256 minimum);
    error RegistryUnknownExpert(uint256 expertId);
    error RegistryNotOperator(uint256 expertId, address caller);
    error RegistryExpertNotActive(uint256 expertId);
    error RegistryNotUnbonding(uint256 expertId);
    error RegistryUnbondingNotOver(uint256 expertId, uint256 unbondsAt);
    error RegistryDisputesOpen(uint256 expertId, uint256 openDisputes);
    error RegistryZeroAddress();
    error RegistryZeroModelHash();
    error RegistryEndpointTooLong(uint256 length, uint256 maximum);
    error RegistryNotDisputeManager(address caller);
    error RegistryDisputeManagerAlreadySet();
    error RegistryNotDeployer(address caller);
    error RegistryVerifierExists(address verifier);
    error RegistryUnknownVerifier(address verifier);
    error RegistryVerifierNotActive(address verifier);
    error RegistryVerifierNotUnbonding(address verifier);
    error RegistryVerifierUnbondingNotOver(address verifier, uint256 unbondsAt);
    error RegistryTransferFailed(address to, uint256 amount);
    error RegistryPageTooLarge(uint256 limit, uint256 maximum);

    // ----------------------------------------------------------------------------------------------------------
    // Events
    // ----------------------------------------------------------------------------------------------------------

    event ExpertRegistered(
        uint256 indexed expertId,
        address indexed operator,
        bytes32 indexed modelHash,
        bytes32 capability,
        address signer,
        uint256 pricePerCall,
        uint256 stake,
        bytes32 nodeKey,
        string endpoint
    );
    event ExpertUpdated(
        uint256 indexed expertId, address signer, uint256 pricePerCall, bytes32 nodeKey, string endpoint
    );
    event StakeAdded(uint256 indexed expertId, uint256 amount, uint256 stake);
    event UnbondingRequested(uint256 indexed expertId, uint256 unbondsAt);
    event StakeWithdrawn(uint256 indexed expertId, address indexed operator, uint256 amount);
    event ExpertSlashed(uint256 indexed expertId, uint256 amount, uint256 stakeLeft);
    event DisputeLockChanged(uint256 indexed expertId, uint256 openDisputes);
    event VerifierRegistered(address indexed verifier, uint256 stake);
    event VerifierStakeAdded(address indexed verifier, uint256 amount, uint256 stake);
    event VerifierUnbondingRequested(address indexed verifier, uint256 unbondsAt);
    event VerifierWithdrawn(address indexed verifier, uint256 amount);
    event DisputeManagerSet(address disputeManager);

    // ----------------------------------------------------------------------------------------------------------
    // Experts
    // ----------------------------------------------------------------------------------------------------------

    /// @notice Registers an expert with `msg.value` as its stake (at least `MIN_STAKE`).
    /// @return expertId the new expert's id; ids start at 1 and increase by one.
    function registerExpert(ExpertParams calldata params) external payable returns (uint256 expertId);

    /// @notice Changes the serving details of an active expert. Only its operator. modelHash and capability
    /// never change: a new model is a new expert.
    function updateExpert(uint256 expertId, address signer, uint96 pricePerCall, bytes32 nodeKey, string calldata endpoint)
        external;

    /// @notice Adds `msg.value` to an active expert's stake. Anyone may top up.
    function addStake(uint256 expertId) external payable;

    /// @notice Starts unbonding: the expert stops being selectable and its stake can be withdrawn after
    /// `UNBONDING_PERIOD`. Only its operator.
    function requestUnbond(uint256 expertId) external;

    /// @notice Pays the remaining stake to the operator once unbonding is over and no dispute is open.
    function withdrawStake(uint256 expertId) external;

    // ----------------------------------------------------------------------------------------------------------
    // Verifiers
    // ----------------------------------------------------------------------------------------------------------

    /// @notice Registers `msg.sender` as a verifier with `msg.value` (at least `MIN_VERIFIER_STAKE`).
    function registerVerifier() external payable;

    function addVerifierStake() external payable;

    function requestVerifierUnbond() external;

    function withdrawVerifierStake() external;

    // ----------------------------------------------------------------------------------------------------------
    // Dispute manager hooks
    // ----------------------------------------------------------------------------------------------------------

    /// @notice Sets the dispute manager. Once, by the deployer.
    function setDisputeManager(address disputeManager) external;

    /// @notice Counts a dispute as open (`open` true) or closed against an expert. Only the dispute manager.
    function lockForDispute(uint256 expertId, bool open) external;

    /// @notice Takes up to `amount` from the expert's stake, sends it to the dispute manager and records the
    /// loss. Only the dispute manager. Returns what was taken (less than `amount` if the stake is smaller).
    function slash(uint256 expertId, uint256 amount) external returns (uint256 taken);

    // ----------------------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------------------

    function MIN_STAKE() external view returns (uint256);
    function MIN_VERIFIER_STAKE() external view returns (uint256);
    function UNBONDING_PERIOD() external view returns (uint256);
    function MAX_PAGE() external view returns (uint256);
    function disputeManager() external view returns (address);
    function expertCount() external view returns (uint256);
    function getExpert(uint256 expertId) external view returns (Expert memory);
    /// @notice Experts (any status) registered for `modelHash`, `limit` ids from `offset`.
    function expertsByModel(bytes32 modelHash, uint256 offset, uint256 limit) external view returns (uint256[] memory);
    function expertsByCapability(bytes32 capability, uint256 offset, uint256 limit)
        external
        view
        returns (uint256[] memory);
    function countByModel(bytes32 modelHash) external view returns (uint256);
    function countByCapability(bytes32 capability) external view returns (uint256);
    /// @notice Whether `signer` has ever been a signer of the expert (receipts stay disputable after rotation).
    function wasSigner(uint256 expertId, address signer) external view returns (bool);
    function operatorOf(uint256 expertId) external view returns (address);
    function getVerifier(address verifier) external view returns (Verifier memory);
    /// @notice Stake of a verifier that can vote now (0 when unknown, unbonding or withdrawn).
    function votingStake(address verifier) external view returns (uint256);
    function verifierCount() external view returns (uint256);
    function totalVerifierStake() external view returns (uint256);
}
