// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Deploy} from "./utils/Deploy.sol";
import {EtherRejecter, PaymentCounter, Reenterer} from "./utils/Actors.sol";
import {PaymentEscrow} from "../src/PaymentEscrow.sol";
import {IPaymentEscrow} from "../src/interfaces/IPaymentEscrow.sol";
import {TransientReentrancyGuard} from "../src/utils/TransientReentrancyGuard.sol";

contract PaymentEscrowTest is Deploy {
    address internal operator;
    address internal signer;
    address internal client;
    uint256 internal clientKey;
    uint256 internal expertId;

    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    function setUp() public {
        deploy();
        operator = makeAddr("operator");
        signer = makeAddr("signer");
        (client, clientKey) = makeAccount("client");
        expertId = registerExpert(operator, signer);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Constructor and views
    // ----------------------------------------------------------------------------------------------------------

    function test_Constructor_SetsParameters() public view {
        assertEq(escrow.registry(), address(registry));
        assertEq(escrow.WITHDRAW_DELAY(), WITHDRAW_DELAY);
        assertEq(escrow.totalBalances(), 0);
    }

    function test_RevertIf_ConstructorZeroRegistry() public {
        vm.expectRevert(IPaymentEscrow.EscrowZeroAddress.selector);
        new PaymentEscrow(address(0), WITHDRAW_DELAY);
    }

    function test_VoucherDigest_IsEip712() public view {
        IPaymentEscrow.Voucher memory v = IPaymentEscrow.Voucher(client, expertId, 123);
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("MoeMarket Escrow"),
                keccak256("1"),
                block.chainid,
                address(escrow)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(keccak256("Voucher(address client,uint256 expertId,uint256 cumulativeAmount)"), client, expertId, 123)
        );
        assertEq(escrow.voucherDigest(v), keccak256(abi.encodePacked("\x19\x01", domain, structHash)));
        assertEq(escrow.VOUCHER_TYPEHASH(), keccak256("Voucher(address client,uint256 expertId,uint256 cumulativeAmount)"));
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = escrow.eip712Domain();
        assertEq(name, "MoeMarket Escrow");
        assertEq(version, "1");
        assertEq(chainId, block.chainid);
        assertEq(verifying, address(escrow));
    }

    // ----------------------------------------------------------------------------------------------------------
    // Deposits
    // ----------------------------------------------------------------------------------------------------------

    function test_Deposit() public {
        vm.deal(client, 3 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.Deposited(client, client, 1 ether, 1 ether);
        vm.prank(client);
        escrow.deposit{value: 1 ether}();
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.Deposited(client, client, 2 ether, 3 ether);
        vm.prank(client);
        escrow.deposit{value: 2 ether}();
        assertEq(escrow.balanceOf(client), 3 ether);
        assertEq(escrow.account(client).balance, 3 ether);
        assertEq(escrow.totalBalances(), 3 ether);
        assertEq(address(escrow).balance, 3 ether);
    }

    function test_DepositFor() public {
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.Deposited(client, address(this), 1 ether, 1 ether);
        depositFor(client, 1 ether);
        assertEq(escrow.balanceOf(client), 1 ether);
        assertEq(escrow.balanceOf(address(this)), 0);
    }

    function test_RevertIf_DepositZero() public {
        vm.expectRevert(IPaymentEscrow.EscrowZeroDeposit.selector);
        escrow.deposit();
        vm.expectRevert(IPaymentEscrow.EscrowZeroDeposit.selector);
        escrow.depositFor(client);
    }

    function test_RevertIf_DepositForZeroAddress() public {
        vm.expectRevert(IPaymentEscrow.EscrowZeroAddress.selector);
        escrow.depositFor{value: 1}(address(0));
    }

    function test_RevertIf_DepositAboveUint128() public {
        uint256 max = type(uint128).max;
        vm.deal(client, max + 1);
        vm.prank(client);
        escrow.deposit{value: max}();
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowAmountTooLarge.selector, 1));
        escrow.deposit{value: 1}();
    }

    function testFuzz_Deposit(uint256 first, uint256 second) public {
        first = bound(first, 1, type(uint128).max / 2);
        second = bound(second, 1, type(uint128).max / 2);
        depositFor(client, first);
        depositFor(client, second);
        assertEq(escrow.balanceOf(client), first + second);
        assertEq(escrow.totalBalances(), first + second);
        assertEq(address(escrow).balance, first + second);
    }

    // ----------------------------------------------------------------------------------------------------------
    // Withdrawals
    // ----------------------------------------------------------------------------------------------------------

    function test_RequestWithdraw() public {
        depositFor(client, 1 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.WithdrawRequested(client, 0.4 ether, START + WITHDRAW_DELAY);
        vm.prank(client);
        escrow.requestWithdraw(0.4 ether);
        IPaymentEscrow.Account memory a = escrow.account(client);
        assertEq(a.balance, 1 ether, "balance stays usable during the delay");
        assertEq(a.withdrawAmount, 0.4 ether);
        assertEq(a.withdrawableAt, START + WITHDRAW_DELAY);
    }

    function test_RequestWithdraw_ReplacesAndRestartsDelay() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(0.4 ether);
        vm.warp(START + 1 days);
        vm.prank(client);
        escrow.requestWithdraw(0.7 ether);
        IPaymentEscrow.Account memory a = escrow.account(client);
        assertEq(a.withdrawAmount, 0.7 ether);
        assertEq(a.withdrawableAt, START + 1 days + WITHDRAW_DELAY);
    }

    function test_RequestWithdraw_ZeroCancels() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(0.4 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.WithdrawRequested(client, 0, 0);
        vm.prank(client);
        escrow.requestWithdraw(0);
        assertEq(escrow.account(client).withdrawAmount, 0);
        vm.warp(START + WITHDRAW_DELAY);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowNoWithdrawRequested.selector, client));
        escrow.withdraw();
    }

    function test_RevertIf_RequestWithdrawTooLarge() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowWithdrawTooLarge.selector, 1 ether + 1, 1 ether));
        escrow.requestWithdraw(1 ether + 1);
    }

    function test_Withdraw() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(0.4 ether);
        vm.warp(START + WITHDRAW_DELAY);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.Withdrawn(client, 0.4 ether);
        vm.prank(client);
        escrow.withdraw();
        assertEq(client.balance, 0.4 ether);
        IPaymentEscrow.Account memory a = escrow.account(client);
        assertEq(a.balance, 0.6 ether);
        assertEq(a.withdrawAmount, 0);
        assertEq(a.withdrawableAt, 0);
        assertEq(escrow.totalBalances(), 0.6 ether);
        assertEq(address(escrow).balance, 0.6 ether);
    }

    function test_Withdraw_PaysWhatVouchersLeft() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(1 ether);
        // The node redeems during the delay: the withdrawal gets the rest.
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.3 ether);
        escrow.redeem(v, sig);
        vm.warp(START + WITHDRAW_DELAY);
        vm.prank(client);
        escrow.withdraw();
        assertEq(client.balance, 0.7 ether);
        assertEq(escrow.balanceOf(client), 0);
        assertEq(address(escrow).balance, 0);
    }

    function test_Withdraw_NothingLeft() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 1 ether);
        escrow.redeem(v, sig);
        vm.warp(START + WITHDRAW_DELAY);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.Withdrawn(client, 0);
        vm.prank(client);
        escrow.withdraw();
        assertEq(client.balance, 0);
        assertEq(escrow.account(client).withdrawAmount, 0);
    }

    function test_RevertIf_WithdrawNotRequested() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowNoWithdrawRequested.selector, client));
        escrow.withdraw();
    }

    function test_RevertIf_WithdrawTooEarly() public {
        depositFor(client, 1 ether);
        vm.prank(client);
        escrow.requestWithdraw(1 ether);
        vm.warp(START + WITHDRAW_DELAY - 1);
        vm.prank(client);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentEscrow.EscrowWithdrawTooEarly.selector, client, START + WITHDRAW_DELAY)
        );
        escrow.withdraw();
    }

    function test_RevertIf_WithdrawTransferFails() public {
        EtherRejecter rejecter = new EtherRejecter();
        depositFor(address(rejecter), 1 ether);
        rejecter.act(address(escrow), 0, abi.encodeCall(IPaymentEscrow.requestWithdraw, (1 ether)));
        vm.warp(START + WITHDRAW_DELAY);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentEscrow.EscrowTransferFailed.selector, address(rejecter), 1 ether)
        );
        rejecter.act(address(escrow), 0, abi.encodeCall(IPaymentEscrow.withdraw, ()));
    }

    function test_Withdraw_ReentryIsBlocked() public {
        Reenterer attacker = new Reenterer();
        depositFor(address(attacker), 1 ether);
        attacker.act(address(escrow), 0, abi.encodeCall(IPaymentEscrow.requestWithdraw, (0.5 ether)));
        vm.warp(START + WITHDRAW_DELAY);
        attacker.arm(address(escrow), abi.encodeCall(IPaymentEscrow.withdraw, ()));
        attacker.act(address(escrow), 0, abi.encodeCall(IPaymentEscrow.withdraw, ()));
        assertFalse(attacker.succeeded());
        assertEq(
            attacker.returned(), abi.encodeWithSelector(TransientReentrancyGuard.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(attacker.received(), 0.5 ether);
        assertEq(escrow.balanceOf(address(attacker)), 0.5 ether);
    }

    // ----------------------------------------------------------------------------------------------------------
    // redeem
    // ----------------------------------------------------------------------------------------------------------

    function test_Redeem_PaysDeltaToOperator() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.2 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.VoucherRedeemed(client, expertId, 0.2 ether, 0.2 ether, operator);
        uint256 paid = escrow.redeem(v, sig);
        assertEq(paid, 0.2 ether);
        assertEq(operator.balance, 0.2 ether);

        (v, sig) = signVoucher(clientKey, expertId, 0.5 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.VoucherRedeemed(client, expertId, 0.5 ether, 0.3 ether, operator);
        paid = escrow.redeem(v, sig);
        assertEq(paid, 0.3 ether);
        assertEq(operator.balance, 0.5 ether);
        assertEq(escrow.redeemed(client, expertId), 0.5 ether);
        assertEq(escrow.expertVolume(expertId), 0.5 ether);
        assertEq(escrow.balanceOf(client), 0.5 ether);
        assertEq(escrow.totalBalances(), 0.5 ether);
        assertEq(address(escrow).balance, 0.5 ether);
    }

    function test_Redeem_AnyoneMaySubmit() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.2 ether);
        vm.prank(makeAddr("relayer"));
        escrow.redeem(v, sig);
        assertEq(operator.balance, 0.2 ether, "the operator is paid, whoever submits");
    }

    function test_Redeem_ShortBalancePaysPartAndRestLater() public {
        depositFor(client, 0.1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.3 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.VoucherRedeemed(client, expertId, 0.3 ether, 0.1 ether, operator);
        assertEq(escrow.redeem(v, sig), 0.1 ether);
        assertEq(escrow.redeemed(client, expertId), 0.1 ether);
        // The same voucher stays redeemable for the rest once the client deposits again.
        depositFor(client, 1 ether);
        assertEq(escrow.redeem(v, sig), 0.2 ether);
        assertEq(escrow.redeemed(client, expertId), 0.3 ether);
        assertEq(operator.balance, 0.3 ether);
    }

    function test_Redeem_VouchersAreSeparatePerExpert() public {
        uint256 other = registerExpert(makeAddr("operator2"), signer);
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.2 ether);
        escrow.redeem(v, sig);
        (v, sig) = signVoucher(clientKey, other, 0.2 ether);
        escrow.redeem(v, sig);
        assertEq(escrow.redeemed(client, expertId), 0.2 ether);
        assertEq(escrow.redeemed(client, other), 0.2 ether);
        assertEq(escrow.balanceOf(client), 0.6 ether);
    }

    function test_Redeem_WithdrawnExpertStillPaid() public {
        depositFor(client, 1 ether);
        vm.prank(operator);
        registry.requestUnbond(expertId);
        vm.warp(START + UNBONDING_PERIOD);
        vm.prank(operator);
        registry.withdrawStake(expertId);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.2 ether);
        assertEq(escrow.redeem(v, sig), 0.2 ether);
    }

    function test_RevertIf_RedeemWrongSigner() public {
        depositFor(client, 1 ether);
        (address mallory, uint256 malloryKey) = makeAccount("mallory");
        IPaymentEscrow.Voucher memory v = IPaymentEscrow.Voucher(client, expertId, 1 ether);
        bytes memory sig = sign(malloryKey, escrow.voucherDigest(v));
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowInvalidSignature.selector, client, mallory));
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemTamperedAmount() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.1 ether);
        v.cumulativeAmount = 1 ether;
        address recovered = _recover(escrow.voucherDigest(v), sig);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowInvalidSignature.selector, client, recovered));
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemBadSignatureLength() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v,) = signVoucher(clientKey, expertId, 0.1 ether);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowInvalidSignature.selector, client, address(0)));
        escrow.redeem(v, new bytes(64));
    }

    function test_RevertIf_RedeemMalleableSignature() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v,) = signVoucher(clientKey, expertId, 0.1 ether);
        (uint8 rv, bytes32 r, bytes32 s) = vm.sign(clientKey, escrow.voucherDigest(v));
        // The same signature with s' = n - s and the other v recovers the same key: it must be rejected.
        bytes memory flipped = abi.encodePacked(r, bytes32(SECP256K1_N - uint256(s)), rv == 27 ? uint8(28) : uint8(27));
        assertEq(_recover(escrow.voucherDigest(v), flipped), client, "ecrecover accepts the flipped signature");
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowInvalidSignature.selector, client, address(0)));
        escrow.redeem(v, flipped);
    }

    function test_RevertIf_RedeemForAnotherEscrow() public {
        PaymentEscrow other = new PaymentEscrow(address(registry), WITHDRAW_DELAY);
        depositFor(client, 1 ether);
        IPaymentEscrow.Voucher memory v = IPaymentEscrow.Voucher(client, expertId, 0.1 ether);
        bytes memory sig = sign(clientKey, other.voucherDigest(v));
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentEscrow.EscrowInvalidSignature.selector, client, _recover(escrow.voucherDigest(v), sig)
            )
        );
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemUnknownExpert() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, 77, 0.1 ether);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowUnknownExpert.selector, 77));
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemSameVoucherTwice() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.1 ether);
        escrow.redeem(v, sig);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentEscrow.EscrowVoucherNotIncreasing.selector, client, expertId, 0.1 ether, 0.1 ether
            )
        );
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemOlderVoucher() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory older, bytes memory olderSig) = signVoucher(clientKey, expertId, 0.1 ether);
        (IPaymentEscrow.Voucher memory newer, bytes memory newerSig) = signVoucher(clientKey, expertId, 0.3 ether);
        escrow.redeem(newer, newerSig);
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentEscrow.EscrowVoucherNotIncreasing.selector, client, expertId, 0.1 ether, 0.3 ether
            )
        );
        escrow.redeem(older, olderSig);
    }

    function test_RevertIf_RedeemZeroVoucher() public {
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentEscrow.EscrowVoucherNotIncreasing.selector, client, expertId, 0, 0)
        );
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemEmptyBalance() public {
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, 0.1 ether);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowInsufficientBalance.selector, client, 0));
        escrow.redeem(v, sig);
    }

    function test_RevertIf_RedeemTransferFails() public {
        EtherRejecter rejecter = new EtherRejecter();
        vm.deal(address(rejecter), MIN_STAKE);
        bytes memory ret = rejecter.act(
            address(registry), MIN_STAKE, abi.encodeCall(registry.registerExpert, (expertParams(signer)))
        );
        uint256 id = abi.decode(ret, (uint256));
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, id, 0.1 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentEscrow.EscrowTransferFailed.selector, address(rejecter), 0.1 ether)
        );
        escrow.redeem(v, sig);
    }

    function test_Redeem_ReentryIsBlocked() public {
        Reenterer attacker = new Reenterer();
        vm.deal(address(attacker), MIN_STAKE);
        bytes memory ret = attacker.act(
            address(registry), MIN_STAKE, abi.encodeCall(registry.registerExpert, (expertParams(signer)))
        );
        uint256 id = abi.decode(ret, (uint256));
        depositFor(client, 1 ether);
        (IPaymentEscrow.Voucher memory v1, bytes memory s1) = signVoucher(clientKey, id, 0.1 ether);
        (IPaymentEscrow.Voucher memory v2, bytes memory s2) = signVoucher(clientKey, id, 0.5 ether);
        attacker.arm(address(escrow), abi.encodeCall(IPaymentEscrow.redeem, (v2, s2)));
        escrow.redeem(v1, s1);
        assertTrue(attacker.attempted());
        assertFalse(attacker.succeeded());
        assertEq(
            attacker.returned(), abi.encodeWithSelector(TransientReentrancyGuard.ReentrancyGuardReentrantCall.selector)
        );
        assertEq(escrow.redeemed(client, id), 0.1 ether);
    }

    function testFuzz_Redeem_PaysDeltaCappedByBalance(uint256 deposit_, uint256 first, uint256 second) public {
        deposit_ = bound(deposit_, 1, 1_000 ether);
        first = bound(first, 1, 2_000 ether);
        second = bound(second, first + 1, 4_000 ether);
        depositFor(client, deposit_);

        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(clientKey, expertId, first);
        uint256 paid1 = escrow.redeem(v, sig);
        assertEq(paid1, first < deposit_ ? first : deposit_);

        (v, sig) = signVoucher(clientKey, expertId, second);
        uint256 left = deposit_ - paid1;
        if (left == 0) {
            vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowInsufficientBalance.selector, client, 0));
            escrow.redeem(v, sig);
        } else {
            uint256 paid2 = escrow.redeem(v, sig);
            uint256 delta = second - paid1;
            assertEq(paid2, delta < left ? delta : left);
        }
        uint256 total = escrow.redeemed(client, expertId);
        assertLe(total, second, "never more than signed");
        assertEq(total, operator.balance, "operator got exactly what was redeemed");
        assertEq(escrow.balanceOf(client), deposit_ - total);
        assertEq(address(escrow).balance, escrow.totalBalances());
    }

    function testFuzz_Redeem_RejectsForeignKeys(uint256 key, uint256 amount) public {
        key = bound(key, 1, SECP256K1_N - 1);
        amount = bound(amount, 1, 1 ether);
        address signerOfVoucher = vm.addr(key);
        depositFor(client, 1 ether);
        IPaymentEscrow.Voucher memory v = IPaymentEscrow.Voucher(client, expertId, amount);
        bytes memory sig = sign(key, escrow.voucherDigest(v));
        if (signerOfVoucher == client) {
            assertEq(escrow.redeem(v, sig), amount);
        } else {
            vm.expectRevert(
                abi.encodeWithSelector(IPaymentEscrow.EscrowInvalidSignature.selector, client, signerOfVoucher)
            );
            escrow.redeem(v, sig);
        }
    }

    // ----------------------------------------------------------------------------------------------------------
    // redeemMany
    // ----------------------------------------------------------------------------------------------------------

    function test_RedeemMany_OneTransferPerOperatorRun() public {
        PaymentCounter counter = new PaymentCounter();
        uint256 a = registerExpert(address(counter), signer);
        uint256 b = registerExpert(address(counter), signer); // same operator, second expert
        uint256 c = registerExpert(operator, signer);

        uint256 n = 5;
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](n);
        bytes[] memory sigs = new bytes[](n);
        uint256[5] memory experts = [a, a, b, c, a];
        for (uint256 i; i < n; ++i) {
            (address who, uint256 key) = makeAccount(string(abi.encodePacked("batch client ", bytes1(uint8(65 + i)))));
            depositFor(who, 1 ether);
            (vs[i], sigs[i]) = signVoucher(key, experts[i], 0.1 ether * (i + 1));
        }
        uint256 paid = escrow.redeemMany(vs, sigs);
        assertEq(paid, 1.5 ether);
        // Runs by operator: [a, a, b] -> one transfer, [c] -> one, [a] -> one.
        assertEq(counter.payments(), 2);
        assertEq(counter.received(), 0.1 ether + 0.2 ether + 0.3 ether + 0.5 ether);
        assertEq(operator.balance, 0.4 ether);
        assertEq(escrow.expertVolume(a), 0.8 ether);
        assertEq(escrow.expertVolume(b), 0.3 ether);
        assertEq(escrow.expertVolume(c), 0.4 ether);
        assertEq(escrow.totalBalances(), 5 ether - 1.5 ether);
        assertEq(address(escrow).balance, escrow.totalBalances());
    }

    function test_RedeemMany_SameClientTwiceMustIncrease() public {
        depositFor(client, 1 ether);
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](2);
        bytes[] memory sigs = new bytes[](2);
        (vs[0], sigs[0]) = signVoucher(clientKey, expertId, 0.1 ether);
        (vs[1], sigs[1]) = signVoucher(clientKey, expertId, 0.4 ether);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.VoucherRedeemed(client, expertId, 0.1 ether, 0.1 ether, operator);
        vm.expectEmit(address(escrow));
        emit IPaymentEscrow.VoucherRedeemed(client, expertId, 0.4 ether, 0.3 ether, operator);
        assertEq(escrow.redeemMany(vs, sigs), 0.4 ether);
        assertEq(operator.balance, 0.4 ether);

        (vs[0], sigs[0]) = signVoucher(clientKey, expertId, 0.5 ether);
        vs[1] = vs[0];
        sigs[1] = sigs[0];
        vm.expectRevert(
            abi.encodeWithSelector(
                IPaymentEscrow.EscrowVoucherNotIncreasing.selector, client, expertId, 0.5 ether, 0.5 ether
            )
        );
        escrow.redeemMany(vs, sigs);
    }

    function test_RevertIf_RedeemManyOneInvalid() public {
        depositFor(client, 1 ether);
        (address other, uint256 otherKey) = makeAccount("other client");
        depositFor(other, 1 ether);
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](2);
        bytes[] memory sigs = new bytes[](2);
        (vs[0], sigs[0]) = signVoucher(clientKey, expertId, 0.1 ether);
        (vs[1], sigs[1]) = signVoucher(otherKey, 99, 0.1 ether);
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowUnknownExpert.selector, 99));
        escrow.redeemMany(vs, sigs);
        assertEq(escrow.redeemed(client, expertId), 0, "the whole batch reverted");
    }

    function test_RevertIf_RedeemManyEmpty() public {
        vm.expectRevert(IPaymentEscrow.EscrowEmptyBatch.selector);
        escrow.redeemMany(new IPaymentEscrow.Voucher[](0), new bytes[](0));
    }

    function test_RevertIf_RedeemManyLengthMismatch() public {
        vm.expectRevert(abi.encodeWithSelector(IPaymentEscrow.EscrowLengthMismatch.selector, 1, 2));
        escrow.redeemMany(new IPaymentEscrow.Voucher[](1), new bytes[](2));
    }

    function test_RevertIf_RedeemManyTransferFails() public {
        EtherRejecter rejecter = new EtherRejecter();
        vm.deal(address(rejecter), MIN_STAKE);
        bytes memory ret = rejecter.act(
            address(registry), MIN_STAKE, abi.encodeCall(registry.registerExpert, (expertParams(signer)))
        );
        uint256 id = abi.decode(ret, (uint256));
        depositFor(client, 1 ether);
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](2);
        bytes[] memory sigs = new bytes[](2);
        (vs[0], sigs[0]) = signVoucher(clientKey, expertId, 0.1 ether);
        (vs[1], sigs[1]) = signVoucher(clientKey, id, 0.2 ether);
        vm.expectRevert(
            abi.encodeWithSelector(IPaymentEscrow.EscrowTransferFailed.selector, address(rejecter), 0.2 ether)
        );
        escrow.redeemMany(vs, sigs);
    }

    function testFuzz_RedeemMany_MatchesSingleRedeems(uint256 seed, uint8 count) public {
        uint256 n = bound(count, 1, 12);
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](n);
        bytes[] memory sigs = new bytes[](n);
        uint256 expected;
        for (uint256 i; i < n; ++i) {
            uint256 key = uint256(keccak256(abi.encode(seed, i % 4))) % (SECP256K1_N - 1) + 1;
            address who = vm.addr(key);
            if (i < 4) depositFor(who, 1 ether);
            uint256 cumulative = bound(uint256(keccak256(abi.encode(seed, "amount", i))), 1, 0.2 ether) + (i / 4) * 0.2 ether;
            (vs[i], sigs[i]) = signVoucher(key, expertId, cumulative);
        }
        // Vouchers of one client appear in increasing order (i / 4 rounds), so every voucher is valid.
        for (uint256 i; i < n; ++i) {
            uint256 prev = i >= 4 ? vs[i - 4].cumulativeAmount : 0;
            expected += vs[i].cumulativeAmount - prev;
        }
        uint256 paid = escrow.redeemMany(vs, sigs);
        assertEq(paid, expected);
        assertEq(operator.balance, expected);
        assertEq(escrow.expertVolume(expertId), expected);
        assertEq(address(escrow).balance, escrow.totalBalances());
    }

    // ----------------------------------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------------------------------

    function _recover(bytes32 digest, bytes memory sig) internal pure returns (address) {
        bytes32 r;
        bytes32 s;
        uint8 v;
        assembly ("memory-safe") {
            r := mload(add(sig, 0x20))
            s := mload(add(sig, 0x40))
            v := byte(0, mload(add(sig, 0x60)))
        }
        return ecrecover(digest, v, r, s);
    }
}
