// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TransientReentrancyGuard} from "./utils/TransientReentrancyGuard.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IExpertRegistry} from "./interfaces/IExpertRegistry.sol";

/// @title ExpertRegistry
/// @notice Registration, stake, unbonding and slashing of experts and verifiers.
/// @dev Storage is laid out for a cheap `registerExpert`: the interface's `Expert` struct packs into seven slots
/// (six fixed plus a short endpoint), the current signer is not duplicated into the signer history (only replaced
/// signers are), and the by-model / by-capability indexes pack the count and 64-bit ids four to a slot.
contract ExpertRegistry is IExpertRegistry, TransientReentrancyGuard {
    // ----------------------------------------------------------------------------------------------------------
    // Constants and immutables
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IExpertRegistry
    uint256 public constant MAX_PAGE = 100;
    /// @notice Longest endpoint string accepted, in bytes.
    uint256 public constant MAX_ENDPOINT_LENGTH = 256;

    /// @inheritdoc IExpertRegistry
    uint256 public immutable MIN_STAKE;
    /// @inheritdoc IExpertRegistry
    uint256 public immutable MIN_VERIFIER_STAKE;
    /// @inheritdoc IExpertRegistry
    uint256 public immutable UNBONDING_PERIOD;

    /// @dev The only account allowed to call `setDisputeManager`, once.
    address private immutable _deployer;

    // Index words: word 0 holds the count in its low 64 bits and the first three ids in the lanes above;
    // every further word holds four ids. Position p of the list lives in lane (p + 1) % 4 of word (p + 1) / 4.
    uint256 private constant _LANES = 4;
    uint256 private constant _LANE_BITS = 64;
    uint256 private constant _LANE_MASK = type(uint64).max;

    // ----------------------------------------------------------------------------------------------------------
    // Storage
    // ----------------------------------------------------------------------------------------------------------

    // One slot: the manager is read by every hook, the count written by every registration (after the manager is
    // set the slot is non-zero, so a registration pays 5,000 rather than 22,100 gas for the count).
    address private _disputeManager;
    uint64 private _expertCount;

    mapping(uint256 expertId => Expert) private _experts;
    /// @dev Signers an expert had before its current one; the current signer lives in `_experts[id].signer`.
    mapping(uint256 expertId => mapping(address signer => bool)) private _pastSigners;
    mapping(bytes32 modelHash => mapping(uint256 word => uint256 packed)) private _byModel;
    mapping(bytes32 capability => mapping(uint256 word => uint256 packed)) private _byCapability;

    mapping(address verifier => Verifier) private _verifiers;
    uint256 private _verifierCount;
    uint256 private _totalVerifierStake;

    // ----------------------------------------------------------------------------------------------------------
    // Modifiers
    // ----------------------------------------------------------------------------------------------------------

    modifier onlyDisputeManager() {
        if (msg.sender != _disputeManager) revert RegistryNotDisputeManager(msg.sender);
        _;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Constructor
    // ----------------------------------------------------------------------------------------------------------

    constructor(uint256 minStake, uint256 minVerifierStake, uint256 unbondingPeriod) {
        MIN_STAKE = minStake;
        MIN_VERIFIER_STAKE = minVerifierStake;
        UNBONDING_PERIOD = unbondingPeriod;
        _deployer = msg.sender;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Experts
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IExpertRegistry
    function registerExpert(ExpertParams calldata params) external payable returns (uint256 expertId) {
        if (msg.value < MIN_STAKE) revert RegistryStakeTooLow(msg.value, MIN_STAKE);
        _checkServing(params.signer, params.nodeKey, params.endpoint);
        if (params.modelHash == bytes32(0)) revert RegistryZeroModelHash();
        uint96 stake = SafeCast.toUint96(msg.value);

        // Checked: a uint64 id would take 2^64 registrations to overflow, and then this reverts.
        expertId = ++_expertCount;
        Expert storage e = _experts[expertId];
        e.operator = msg.sender;
        e.pricePerCall = params.pricePerCall;
        e.signer = params.signer;
        e.stake = stake;
        e.modelHash = params.modelHash;
        e.capability = params.capability;
        e.nodeKey = params.nodeKey;
        // Timestamps fit in 40 bits until the year 36812.
        e.registeredAt = uint40(block.timestamp);
        e.status = ExpertStatus.Active;
        e.endpoint = params.endpoint;
        _pushIndex(_byModel[params.modelHash], expertId);
        _pushIndex(_byCapability[params.capability], expertId);

        emit ExpertRegistered(
            expertId,
            msg.sender,
            params.modelHash,
            params.capability,
            params.signer,
            params.pricePerCall,
            msg.value,
            params.nodeKey,
            params.endpoint
        );
    }

    /// @inheritdoc IExpertRegistry
    function updateExpert(
        uint256 expertId,
        address signer,
        uint96 pricePerCall,
        bytes32 nodeKey,
        string calldata endpoint
    ) external {
        Expert storage e = _operatorsActiveExpert(expertId);
        _checkServing(signer, nodeKey, endpoint);
        address previous = e.signer;
        if (signer != previous) {
            // Receipts signed by the old key stay disputable.
            _pastSigners[expertId][previous] = true;
            e.signer = signer;
        }
        e.pricePerCall = pricePerCall;
        e.nodeKey = nodeKey;
        e.endpoint = endpoint;
        emit ExpertUpdated(expertId, signer, pricePerCall, nodeKey, endpoint);
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Reverts `RegistryStakeTooLow(0, 1)` on a zero top-up.
    function addStake(uint256 expertId) external payable {
        Expert storage e = _existing(expertId);
        if (e.status != ExpertStatus.Active) revert RegistryExpertNotActive(expertId);
        if (msg.value == 0) revert RegistryStakeTooLow(0, 1);
        uint96 stake = SafeCast.toUint96(uint256(e.stake) + msg.value);
        e.stake = stake;
        emit StakeAdded(expertId, msg.value, stake);
    }

    /// @inheritdoc IExpertRegistry
    function requestUnbond(uint256 expertId) external {
        Expert storage e = _operatorsActiveExpert(expertId);
        uint40 unbondsAt = SafeCast.toUint40(block.timestamp + UNBONDING_PERIOD);
        e.status = ExpertStatus.Unbonding;
        e.unbondsAt = unbondsAt;
        emit UnbondingRequested(expertId, unbondsAt);
    }

    /// @inheritdoc IExpertRegistry
    function withdrawStake(uint256 expertId) external nonReentrant {
        Expert storage e = _existing(expertId);
        address operator = e.operator;
        if (msg.sender != operator) revert RegistryNotOperator(expertId, msg.sender);
        if (e.status != ExpertStatus.Unbonding) revert RegistryNotUnbonding(expertId);
        if (block.timestamp < e.unbondsAt) revert RegistryUnbondingNotOver(expertId, e.unbondsAt);
        if (e.openDisputes != 0) revert RegistryDisputesOpen(expertId, e.openDisputes);

        // Debit before paying out: the stake is zero and the status final before any external call.
        uint256 amount = e.stake;
        e.stake = 0;
        e.status = ExpertStatus.Withdrawn;
        emit StakeWithdrawn(expertId, operator, amount);
        _send(operator, amount);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Verifiers
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IExpertRegistry
    /// @dev A verifier that withdrew may register again.
    function registerVerifier() external payable {
        Verifier storage v = _verifiers[msg.sender];
        if (v.active || v.stake != 0) revert RegistryVerifierExists(msg.sender);
        if (msg.value < MIN_VERIFIER_STAKE) revert RegistryStakeTooLow(msg.value, MIN_VERIFIER_STAKE);
        uint96 stake = SafeCast.toUint96(msg.value);
        v.stake = stake;
        // Timestamps fit in 40 bits until the year 36812.
        v.registeredAt = uint40(block.timestamp);
        v.unbondsAt = 0;
        v.active = true;
        ++_verifierCount;
        _totalVerifierStake += stake;
        emit VerifierRegistered(msg.sender, stake);
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Reverts `RegistryStakeTooLow(0, 1)` on a zero top-up.
    function addVerifierStake() external payable {
        Verifier storage v = _activeVerifier(msg.sender);
        if (msg.value == 0) revert RegistryStakeTooLow(0, 1);
        uint96 stake = SafeCast.toUint96(uint256(v.stake) + msg.value);
        v.stake = stake;
        _totalVerifierStake += msg.value;
        emit VerifierStakeAdded(msg.sender, msg.value, stake);
    }

    /// @inheritdoc IExpertRegistry
    function requestVerifierUnbond() external {
        Verifier storage v = _activeVerifier(msg.sender);
        uint40 unbondsAt = SafeCast.toUint40(block.timestamp + UNBONDING_PERIOD);
        v.active = false;
        v.unbondsAt = unbondsAt;
        // Cannot underflow: an active verifier is counted once and its stake is part of the total.
        unchecked {
            --_verifierCount;
            _totalVerifierStake -= v.stake;
        }
        emit VerifierUnbondingRequested(msg.sender, unbondsAt);
    }

    /// @inheritdoc IExpertRegistry
    function withdrawVerifierStake() external nonReentrant {
        Verifier storage v = _verifiers[msg.sender];
        if (v.registeredAt == 0) revert RegistryUnknownVerifier(msg.sender);
        if (v.active || v.unbondsAt == 0) revert RegistryVerifierNotUnbonding(msg.sender);
        if (block.timestamp < v.unbondsAt) revert RegistryVerifierUnbondingNotOver(msg.sender, v.unbondsAt);

        uint256 amount = v.stake;
        v.stake = 0;
        v.unbondsAt = 0;
        emit VerifierWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Dispute manager hooks
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IExpertRegistry
    function setDisputeManager(address disputeManager_) external {
        if (msg.sender != _deployer) revert RegistryNotDeployer(msg.sender);
        if (_disputeManager != address(0)) revert RegistryDisputeManagerAlreadySet();
        if (disputeManager_ == address(0)) revert RegistryZeroAddress();
        _disputeManager = disputeManager_;
        emit DisputeManagerSet(disputeManager_);
    }

    /// @inheritdoc IExpertRegistry
    function lockForDispute(uint256 expertId, bool open) external onlyDisputeManager {
        Expert storage e = _existing(expertId);
        // Checked: closing more disputes than were opened is a dispute manager bug and must revert.
        uint32 openDisputes = open ? e.openDisputes + 1 : e.openDisputes - 1;
        e.openDisputes = openDisputes;
        emit DisputeLockChanged(expertId, openDisputes);
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Works while the expert is Active or Unbonding; reverts `RegistryExpertNotActive` once withdrawn.
    function slash(uint256 expertId, uint256 amount) external onlyDisputeManager nonReentrant returns (uint256 taken) {
        Expert storage e = _existing(expertId);
        ExpertStatus status = e.status;
        if (status != ExpertStatus.Active && status != ExpertStatus.Unbonding) revert RegistryExpertNotActive(expertId);

        uint96 stake = e.stake;
        taken = amount < stake ? amount : stake;
        uint96 left;
        // Cannot underflow or truncate: taken <= stake < 2^96.
        unchecked {
            // forge-lint: disable-next-line(unsafe-typecast)
            left = stake - uint96(taken);
        }
        e.stake = left;
        // Checked: slashedTotal is bounded by all stake ever added, but a devnet with absurd balances must revert
        // rather than wrap. The cast cannot truncate: taken <= stake < 2^96.
        // forge-lint: disable-next-line(unsafe-typecast)
        e.slashedTotal += uint96(taken);
        ++e.disputesLost;
        emit ExpertSlashed(expertId, taken, left);
        _send(msg.sender, taken);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IExpertRegistry
    function disputeManager() external view returns (address) {
        return _disputeManager;
    }

    /// @inheritdoc IExpertRegistry
    function expertCount() external view returns (uint256) {
        return _expertCount;
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Returns an all-zero struct (status None) for an unknown id.
    function getExpert(uint256 expertId) external view returns (Expert memory) {
        return _experts[expertId];
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Reverts `RegistryPageTooLarge` when `limit > MAX_PAGE`; an offset past the end gives an empty array.
    function expertsByModel(bytes32 modelHash, uint256 offset, uint256 limit) external view returns (uint256[] memory) {
        return _page(_byModel[modelHash], offset, limit);
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Reverts `RegistryPageTooLarge` when `limit > MAX_PAGE`; an offset past the end gives an empty array.
    function expertsByCapability(bytes32 capability, uint256 offset, uint256 limit)
        external
        view
        returns (uint256[] memory)
    {
        return _page(_byCapability[capability], offset, limit);
    }

    /// @inheritdoc IExpertRegistry
    function countByModel(bytes32 modelHash) external view returns (uint256) {
        return _byModel[modelHash][0] & _LANE_MASK;
    }

    /// @inheritdoc IExpertRegistry
    function countByCapability(bytes32 capability) external view returns (uint256) {
        return _byCapability[capability][0] & _LANE_MASK;
    }

    /// @inheritdoc IExpertRegistry
    function wasSigner(uint256 expertId, address signer) external view returns (bool) {
        if (signer == address(0)) return false;
        return _experts[expertId].signer == signer || _pastSigners[expertId][signer];
    }

    /// @inheritdoc IExpertRegistry
    /// @dev address(0) for an unknown id.
    function operatorOf(uint256 expertId) external view returns (address) {
        return _experts[expertId].operator;
    }

    /// @inheritdoc IExpertRegistry
    function getVerifier(address verifier) external view returns (Verifier memory) {
        return _verifiers[verifier];
    }

    /// @inheritdoc IExpertRegistry
    function votingStake(address verifier) external view returns (uint256) {
        Verifier storage v = _verifiers[verifier];
        return v.active ? v.stake : 0;
    }

    /// @inheritdoc IExpertRegistry
    /// @dev Counts active verifiers only (those that can vote now).
    function verifierCount() external view returns (uint256) {
        return _verifierCount;
    }

    /// @inheritdoc IExpertRegistry
    function totalVerifierStake() external view returns (uint256) {
        return _totalVerifierStake;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Internal
    // ----------------------------------------------------------------------------------------------------------

    function _existing(uint256 expertId) private view returns (Expert storage e) {
        e = _experts[expertId];
        if (e.status == ExpertStatus.None) revert RegistryUnknownExpert(expertId);
    }

    function _operatorsActiveExpert(uint256 expertId) private view returns (Expert storage e) {
        e = _existing(expertId);
        if (msg.sender != e.operator) revert RegistryNotOperator(expertId, msg.sender);
        if (e.status != ExpertStatus.Active) revert RegistryExpertNotActive(expertId);
    }

    function _activeVerifier(address verifier) private view returns (Verifier storage v) {
        v = _verifiers[verifier];
        if (v.registeredAt == 0) revert RegistryUnknownVerifier(verifier);
        if (!v.active) revert RegistryVerifierNotActive(verifier);
    }

    /// @dev A zero node key is reported as `RegistryZeroAddress` too: it is the node's identity address.
    function _checkServing(address signer, bytes32 nodeKey, string calldata endpoint) private pure {
        if (signer == address(0) || nodeKey == bytes32(0)) revert RegistryZeroAddress();
        if (bytes(endpoint).length > MAX_ENDPOINT_LENGTH) {
            revert RegistryEndpointTooLong(bytes(endpoint).length, MAX_ENDPOINT_LENGTH);
        }
    }

    function _pushIndex(mapping(uint256 word => uint256 packed) storage index, uint256 expertId) private {
        uint256 head = index[0];
        uint256 count = head & _LANE_MASK;
        // Cannot overflow: count < 2^64 (ids are uint64) and the lane shift is below 256.
        unchecked {
            uint256 position = count + 1;
            uint256 shifted = expertId << ((position % _LANES) * _LANE_BITS);
            uint256 word = position / _LANES;
            if (word == 0) {
                index[0] = (head + 1) | shifted;
            } else {
                index[word] |= shifted;
                index[0] = head + 1;
            }
        }
    }

    function _page(mapping(uint256 word => uint256 packed) storage index, uint256 offset, uint256 limit)
        private
        view
        returns (uint256[] memory ids)
    {
        if (limit > MAX_PAGE) revert RegistryPageTooLarge(limit, MAX_PAGE);
        uint256 count = index[0] & _LANE_MASK;
        if (offset >= count) return new uint256[](0);
        uint256 n = count - offset;
        if (n > limit) n = limit;
        ids = new uint256[](n);
        // Cannot overflow: offset < count < 2^64 and i < n <= MAX_PAGE.
        unchecked {
            uint256 loaded = type(uint256).max; // index of the word in `packed` (none yet)
            uint256 packed = 0;
            for (uint256 i; i < n; ++i) {
                uint256 position = offset + i + 1;
                uint256 word = position / _LANES;
                if (word != loaded) {
                    packed = index[word];
                    loaded = word;
                }
                ids[i] = (packed >> ((position % _LANES) * _LANE_BITS)) & _LANE_MASK;
            }
        }
    }

    /// @dev `to` is never chosen by the caller: it is the expert's operator (only it may withdraw), the verifier
    /// withdrawing its own stake, or the dispute manager receiving slashed stake.
    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        // slither-disable-next-line arbitrary-send-eth
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert RegistryTransferFailed(to, amount);
    }
}
