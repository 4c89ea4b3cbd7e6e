// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IPaymentEscrow
/// @notice Client deposits and per-call payment with EIP-712 cumulative vouchers.
/// @dev A client deposits once and signs, per call, a voucher for the running total it owes one expert
/// (`Voucher(address client,uint256 expertId,uint256 cumulativeAmount)`, domain "MoeMarket Escrow" version "1",
/// this chain id and this contract). The node redeems the latest voucher per client when it chooses; the escrow
/// pays the expert's operator only the delta over what was redeemed before, so a voucher can never be paid
/// twice and gas per call tends to zero. Withdrawals wait `WITHDRAW_DELAY`, longer than the window nodes use to
/// redeem, so a client cannot run off with vouchers outstanding.
interface IPaymentEscrow {
    struct Voucher {
        address client;
        uint256 expertId;
        uint256 cumulativeAmount;
    }

    struct Account {
        uint128 balance; // wei available to pay vouchers (includes an amount waiting to be withdrawn)
        uint128 withdrawAmount; // amount asked for by requestWithdraw (0 if none)
        uint64 withdrawableAt; // when withdraw() may pay withdrawAmount
    }

    error EscrowZeroDeposit();
    error EscrowZeroAddress();
    error EscrowInvalidSignature(address client, address recovered);
    error EscrowVoucherNotIncreasing(address client, uint256 expertId, uint256 cumulativeAmount, uint256 redeemed);
    error EscrowInsufficientBalance(address client, uint256 balance);
    error EscrowUnknownExpert(uint256 expertId);
    error EscrowNoWithdrawRequested(address client);
    error EscrowWithdrawTooEarly(address client, uint256 withdrawableAt);
    error EscrowWithdrawTooLarge(uint256 requested, uint256 balance);
    error EscrowEmptyBatch();
    error EscrowLengthMismatch(uint256 vouchers, uint256 signatures);
    error EscrowTransferFailed(address to, uint256 amount);
    error EscrowAmountTooLarge(uint256 amount);

    event Deposited(address indexed client, address indexed from, uint256 amount, uint256 balance);
    event WithdrawRequested(address indexed client, uint256 amount, uint256 withdrawableAt);
    event Withdrawn(address indexed client, uint256 amount);
    /// @notice `paid` can be less than `cumulativeAmount - previous` when the client's balance ran short;
    /// the rest stays redeemable with the same voucher once the client deposits again.
    event VoucherRedeemed(
        address indexed client, uint256 indexed expertId, uint256 cumulativeAmount, uint256 paid, address operator
    );

    /// @notice Adds `msg.value` to the caller's balance.
    function deposit() external payable;

    /// @notice Adds `msg.value` to `client`'s balance.
    function depositFor(address client) external payable;

    /// @notice Asks to withdraw `amount` after `WITHDRAW_DELAY`. Replaces an earlier request and restarts the delay.
    function requestWithdraw(uint256 amount) external;

    /// @notice Pays the requested amount (or the balance, if vouchers took some meanwhile) to the caller.
    function withdraw() external;

    /// @notice Redeems one voucher; pays the expert's operator the delta over what was redeemed before.
    /// @return paid the wei paid to the operator.
    function redeem(Voucher calldata voucher, bytes calldata signature) external returns (uint256 paid);

    /// @notice Redeems many vouchers in one transaction; reverts as a whole if any is invalid.
    /// @return paid the total wei paid.
    function redeemMany(Voucher[] calldata vouchers, bytes[] calldata signatures) external returns (uint256 paid);

    function WITHDRAW_DELAY() external view returns (uint256);
    function registry() external view returns (address);
    function account(address client) external view returns (Account memory);
    function balanceOf(address client) external view returns (uint256);
    /// @notice Amount already paid on vouchers of `client` to `expertId`.
    function redeemed(address client, uint256 expertId) external view returns (uint256);
    /// @notice Total ever paid to an expert (a reputation fact: volume served).
    function expertVolume(uint256 expertId) external view returns (uint256);
    function voucherDigest(Voucher calldata voucher) external view returns (bytes32);
    function totalBalances() external view returns (uint256);
}
