// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {TransientReentrancyGuard} from "./utils/TransientReentrancyGuard.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {IExpertRegistry} from "./interfaces/IExpertRegistry.sol";
import {IPaymentEscrow} from "./interfaces/IPaymentEscrow.sol";

/// @title PaymentEscrow
/// @notice Client deposits and per-call payment with EIP-712 cumulative vouchers.
/// @dev Balances change in three places only (`_deposit`, `withdraw`, `_redeem` with its caller), each of which
/// moves the account and `_totalBalances` together, so `_totalBalances == address(this).balance` (bar ether forced
/// in by selfdestruct, which only ever makes the contract hold more than it owes). Funds are pulled in before they
/// are credited and debited before they are paid out.
contract PaymentEscrow is IPaymentEscrow, EIP712, TransientReentrancyGuard {
    // ----------------------------------------------------------------------------------------------------------
    // Constants and immutables
    // ----------------------------------------------------------------------------------------------------------

    /// @notice EIP-712 type hash of a voucher.
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(address client,uint256 expertId,uint256 cumulativeAmount)");

    /// @inheritdoc IPaymentEscrow
    uint256 public immutable WITHDRAW_DELAY;

    IExpertRegistry private immutable _registry;

    // ----------------------------------------------------------------------------------------------------------
    // Storage
    // ----------------------------------------------------------------------------------------------------------

    /// @dev What the escrow knows about an expert in one slot: its operator (copied from the registry the first
    /// time the expert is paid; operators never change there) and the volume paid to it.
    struct ExpertBook {
        address operator;
        uint96 volume; // saturates at 2^96 - 1 wei (79 billion ether)
    }

    mapping(address client => Account) private _accounts;
    mapping(address client => mapping(uint256 expertId => uint256 amount)) private _redeemed;
    mapping(uint256 expertId => ExpertBook) private _books;
    uint256 private _totalBalances;

    // ----------------------------------------------------------------------------------------------------------
    // Constructor
    // ----------------------------------------------------------------------------------------------------------

    constructor(address registry_, uint256 withdrawDelay) EIP712("MoeMarket Escrow", "1") {
        if (registry_ == address(0)) revert EscrowZeroAddress();
        _registry = IExpertRegistry(registry_);
        WITHDRAW_DELAY = withdrawDelay;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Deposits and withdrawals
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentEscrow
    function deposit() external payable {
        _deposit(msg.sender);
    }

    /// @inheritdoc IPaymentEscrow
    function depositFor(address client) external payable {
        if (client == address(0)) revert EscrowZeroAddress();
        _deposit(client);
    }

    /// @inheritdoc IPaymentEscrow
    /// @dev `amount == 0` cancels a pending request (emitted as `WithdrawRequested(client, 0, 0)`).
    function requestWithdraw(uint256 amount) external {
        Account storage a = _accounts[msg.sender];
        uint256 balance = a.balance;
        if (amount > balance) revert EscrowWithdrawTooLarge(amount, balance);
        // SafeCast: an absurd WITHDRAW_DELAY makes requests revert rather than wrap to an early time.
        uint64 withdrawableAt = amount == 0 ? 0 : SafeCast.toUint64(block.timestamp + WITHDRAW_DELAY);
        // Cannot truncate: amount <= balance < 2^128.
        // forge-lint: disable-next-line(unsafe-typecast)
        a.withdrawAmount = uint128(amount);
        a.withdrawableAt = withdrawableAt;
        emit WithdrawRequested(msg.sender, amount, withdrawableAt);
    }

    /// @inheritdoc IPaymentEscrow
    function withdraw() external nonReentrant {
        Account storage a = _accounts[msg.sender];
        uint256 requested = a.withdrawAmount;
        if (requested == 0) revert EscrowNoWithdrawRequested(msg.sender);
        uint256 withdrawableAt = a.withdrawableAt;
        if (block.timestamp < withdrawableAt) revert EscrowWithdrawTooEarly(msg.sender, withdrawableAt);

        uint128 balance = a.balance;
        // Vouchers redeemed during the delay may have left less than was asked for. The cast is taken only when
        // requested < balance < 2^128.
        // forge-lint: disable-next-line(unsafe-typecast)
        uint128 amount = requested < balance ? uint128(requested) : balance;
        // Debit before paying out. Cannot underflow: amount <= balance <= _totalBalances.
        unchecked {
            a.balance = balance - amount;
            _totalBalances -= amount;
        }
        a.withdrawAmount = 0;
        a.withdrawableAt = 0;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Vouchers
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentEscrow
    function redeem(Voucher calldata voucher, bytes calldata signature) external nonReentrant returns (uint256 paid) {
        address operator;
        (operator, paid) = _redeem(voucher, signature);
        _books[voucher.expertId].volume = _addVolume(_books[voucher.expertId].volume, paid);
        // Cannot underflow: paid was taken from one account's balance, which is part of the total.
        unchecked {
            _totalBalances -= paid;
        }
        _send(operator, paid);
    }

    /// @inheritdoc IPaymentEscrow
    /// @dev Checks and books every voucher first, then pays: consecutive vouchers whose experts share an operator
    /// are paid in one transfer, and an expert's volume is written once per consecutive run.
    function redeemMany(Voucher[] calldata vouchers, bytes[] calldata signatures)
        external
        nonReentrant
        returns (uint256 paid)
    {
        uint256 n = vouchers.length;
        if (n == 0) revert EscrowEmptyBatch();
        if (n != signatures.length) revert EscrowLengthMismatch(n, signatures.length);

        address[] memory payees = new address[](n);
        uint256[] memory amounts = new uint256[](n);
        uint256 runs = 0; // payees[0, runs) and amounts[0, runs) are in use
        uint256 runExpert = 0; // expert of the current run of vouchers (set from the first voucher on)
        uint256 runVolume = 0; // paid to runExpert in the current run, written to its book when the run ends

        for (uint256 i; i < n; ++i) {
            uint256 expertId = vouchers[i].expertId;
            (address operator, uint256 one) = _redeem(vouchers[i], signatures[i]);
            if (i != 0 && expertId != runExpert) {
                _books[runExpert].volume = _addVolume(_books[runExpert].volume, runVolume);
                runVolume = 0;
            }
            runExpert = expertId;
            // Cannot overflow: every term was taken from a balance and their sum is at most _totalBalances.
            unchecked {
                runVolume += one;
                paid += one;
                if (runs != 0 && payees[runs - 1] == operator) {
                    amounts[runs - 1] += one;
                } else {
                    payees[runs] = operator;
                    amounts[runs] = one;
                    ++runs;
                }
            }
        }
        _books[runExpert].volume = _addVolume(_books[runExpert].volume, runVolume);
        // Cannot underflow: paid was taken from account balances, which are part of the total.
        unchecked {
            _totalBalances -= paid;
        }
        for (uint256 j; j < runs; ++j) {
            _send(payees[j], amounts[j]);
        }
    }

    // ----------------------------------------------------------------------------------------------------------
    // Views
    // ----------------------------------------------------------------------------------------------------------

    /// @inheritdoc IPaymentEscrow
    function registry() external view returns (address) {
        return address(_registry);
    }

    /// @inheritdoc IPaymentEscrow
    function account(address client) external view returns (Account memory) {
        return _accounts[client];
    }

    /// @inheritdoc IPaymentEscrow
    function balanceOf(address client) external view returns (uint256) {
        return _accounts[client].balance;
    }

    /// @inheritdoc IPaymentEscrow
    function redeemed(address client, uint256 expertId) external view returns (uint256) {
        return _redeemed[client][expertId];
    }

    /// @inheritdoc IPaymentEscrow
    function expertVolume(uint256 expertId) external view returns (uint256) {
        return _books[expertId].volume;
    }

    /// @inheritdoc IPaymentEscrow
    function voucherDigest(Voucher calldata voucher) external view returns (bytes32) {
        return _voucherDigest(voucher);
    }

    /// @inheritdoc IPaymentEscrow
    function totalBalances() external view returns (uint256) {
        return _totalBalances;
    }

    // ----------------------------------------------------------------------------------------------------------
    // Internal
    // ----------------------------------------------------------------------------------------------------------

    function _deposit(address client) private {
        if (msg.value == 0) revert EscrowZeroDeposit();
        Account storage a = _accounts[client];
        uint256 balance = uint256(a.balance) + msg.value;
        if (balance > type(uint128).max) revert EscrowAmountTooLarge(msg.value);
        // Cannot truncate: checked just above.
        // forge-lint: disable-next-line(unsafe-typecast)
        a.balance = uint128(balance);
        // Cannot overflow: the total is bounded by the ether supply, far below 2^256.
        unchecked {
            _totalBalances += msg.value;
        }
        emit Deposited(client, msg.sender, msg.value, balance);
    }

    /// @dev Checks one voucher and books it against the client's account and `_redeemed`. Leaves the expert's
    /// volume, `_totalBalances` and the transfer to the caller, which may batch them.
    function _redeem(Voucher calldata voucher, bytes calldata signature)
        private
        returns (address operator, uint256 paid)
    {
        address client = voucher.client;
        uint256 expertId = voucher.expertId;
        uint256 cumulative = voucher.cumulativeAmount;

        // tryRecover rejects malleable (high-s) signatures; on any error it returns address(0), reported as such.
        // The third return value only details the error (a length or an s value); the error kind is enough here.
        // slither-disable-next-line unused-return
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(_voucherDigest(voucher), signature);
        if (err != ECDSA.RecoverError.NoError || recovered != client) revert EscrowInvalidSignature(client, recovered);

        operator = _operatorOf(expertId);

        uint256 already = _redeemed[client][expertId];
        if (cumulative <= already) revert EscrowVoucherNotIncreasing(client, expertId, cumulative, already);

        Account storage a = _accounts[client];
        uint128 balance = a.balance;
        // Cannot underflow: cumulative > already.
        uint256 delta;
        unchecked {
            delta = cumulative - already;
        }
        // A short balance pays what it can; the rest stays redeemable with the same voucher.
        paid = delta < balance ? delta : balance;
        if (paid == 0) revert EscrowInsufficientBalance(client, balance);
        // Cannot underflow or overflow: paid <= balance, and already + paid <= cumulative.
        unchecked {
            // Cannot truncate: paid <= balance < 2^128.
            // forge-lint: disable-next-line(unsafe-typecast)
            a.balance = balance - uint128(paid);
            _redeemed[client][expertId] = already + paid;
        }
        emit VoucherRedeemed(client, expertId, cumulative, paid, operator);
    }

    /// @dev The operator of an expert, cached in the escrow's own slot after the first payment: the registry never
    /// changes an expert's operator, and the cache saves an external call on every later redemption.
    function _operatorOf(uint256 expertId) private returns (address operator) {
        operator = _books[expertId].operator;
        if (operator == address(0)) {
            operator = _registry.operatorOf(expertId);
            if (operator == address(0)) revert EscrowUnknownExpert(expertId);
            _books[expertId].operator = operator;
        }
    }

    function _addVolume(uint96 volume, uint256 amount) private pure returns (uint96) {
        uint256 sum = uint256(volume) + amount;
        // Saturates rather than reverting: volume is a reputation figure and must never block a payment.
        // Cannot truncate: the cast is taken only when sum <= type(uint96).max.
        // forge-lint: disable-next-line(unsafe-typecast)
        return sum > type(uint96).max ? type(uint96).max : uint96(sum);
    }

    function _voucherDigest(Voucher calldata voucher) private view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(VOUCHER_TYPEHASH, voucher.client, voucher.expertId, voucher.cumulativeAmount))
        );
    }

    /// @dev `to` is never chosen by the caller: it is `msg.sender` paying itself its own debited balance, or an
    /// expert's operator as recorded in the registry, paid what a voucher signed by the client owes.
    function _send(address to, uint256 amount) private {
        if (amount == 0) return;
        // slither-disable-next-line arbitrary-send-eth
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert EscrowTransferFailed(to, amount);
    }
}
