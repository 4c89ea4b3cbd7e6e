// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Test} from "../utils/Test.sol";
import {Deploy} from "../utils/Deploy.sol";
import {PaymentEscrow} from "../../src/PaymentEscrow.sol";
import {ExpertRegistry} from "../../src/ExpertRegistry.sol";
import {IPaymentEscrow} from "../../src/interfaces/IPaymentEscrow.sol";

/// @notice Drives the escrow the way clients and nodes do: deposits, withdrawal requests, withdrawals, single and
/// batched redemptions of fresh vouchers and re-submissions of old ones. Ghost variables record what was signed,
/// deposited, withdrawn and received by operators.
contract EscrowHandler is Test {
    PaymentEscrow internal immutable escrow;

    uint256 internal constant CLIENTS = 5;
    uint256[] internal _clientKeys;
    address[] public clients;
    uint256[] public experts;
    address[] public operators;

    // Ghosts
    mapping(address client => mapping(uint256 expertId => uint256)) public maxSigned;
    mapping(address client => mapping(uint256 expertId => IPaymentEscrow.Voucher)) internal _lastVoucher;
    mapping(address client => mapping(uint256 expertId => bytes)) internal _lastSignature;
    uint256 public deposited;
    uint256 public withdrawn;
    uint256 public redeemedTotal;
    mapping(address operator => uint256) public received;
    uint256 public calls;

    constructor(PaymentEscrow escrow_, uint256[] memory experts_, address[] memory operators_) {
        escrow = escrow_;
        experts = experts_;
        operators = operators_;
        for (uint256 i; i < CLIENTS; ++i) {
            uint256 key = uint256(keccak256(abi.encode("invariant client", i)));
            _clientKeys.push(key);
            clients.push(vm.addr(key));
        }
    }

    function clientCount() external pure returns (uint256) {
        return CLIENTS;
    }

    function expertCount() external view returns (uint256) {
        return experts.length;
    }

    function deposit(uint256 clientSeed, uint256 amount) external {
        address client = clients[clientSeed % CLIENTS];
        amount = bound(amount, 1, 5 ether);
        vm.deal(client, client.balance + amount);
        vm.prank(client);
        escrow.deposit{value: amount}();
        deposited += amount;
        ++calls;
    }

    function requestWithdraw(uint256 clientSeed, uint256 amount) external {
        address client = clients[clientSeed % CLIENTS];
        amount = bound(amount, 0, escrow.balanceOf(client));
        vm.prank(client);
        escrow.requestWithdraw(amount);
        ++calls;
    }

    function withdraw(uint256 clientSeed, uint256 wait) external {
        address client = clients[clientSeed % CLIENTS];
        vm.warp(block.timestamp + bound(wait, 0, 3 days));
        IPaymentEscrow.Account memory a = escrow.account(client);
        if (a.withdrawAmount == 0 || block.timestamp < a.withdrawableAt) return;
        uint256 before = client.balance;
        vm.prank(client);
        escrow.withdraw();
        withdrawn += client.balance - before;
        ++calls;
    }

    /// @dev The client signs a higher running total for an expert; the node redeems it.
    function redeem(uint256 clientSeed, uint256 expertSeed, uint256 increment) external {
        uint256 c = clientSeed % CLIENTS;
        uint256 expertId = experts[expertSeed % experts.length];
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = _signNext(c, expertId, increment);
        if (escrow.balanceOf(v.client) == 0) return;
        _redeemOne(v, sig);
    }

    /// @dev The node re-submits the last voucher it holds: pays the rest when an earlier redemption fell short,
    /// otherwise reverts as not increasing.
    function redeemAgain(uint256 clientSeed, uint256 expertSeed) external {
        address client = clients[clientSeed % CLIENTS];
        uint256 expertId = experts[expertSeed % experts.length];
        IPaymentEscrow.Voucher memory v = _lastVoucher[client][expertId];
        if (v.client == address(0)) return;
        uint256 already = escrow.redeemed(client, expertId);
        if (v.cumulativeAmount <= already) {
            vm.expectRevert(
                abi.encodeWithSelector(
                    IPaymentEscrow.EscrowVoucherNotIncreasing.selector, client, expertId, v.cumulativeAmount, already
                )
            );
            escrow.redeem(v, _lastSignature[client][expertId]);
            return;
        }
        if (escrow.balanceOf(client) == 0) return;
        _redeemOne(v, _lastSignature[client][expertId]);
    }

    function redeemMany(uint256 seed, uint256 count) external {
        uint256 n = bound(count, 1, 6);
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](n);
        bytes[] memory sigs = new bytes[](n);
        uint256[] memory before = new uint256[](operators.length);
        for (uint256 j; j < operators.length; ++j) {
            before[j] = operators[j].balance;
        }
        for (uint256 i; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(seed, i)));
            (vs[i], sigs[i]) = _signNext(r % CLIENTS, experts[(r >> 8) % experts.length], r >> 16);
        }
        try escrow.redeemMany(vs, sigs) returns (uint256 paid) {
            redeemedTotal += paid;
            for (uint256 j; j < operators.length; ++j) {
                received[operators[j]] += operators[j].balance - before[j];
            }
            ++calls;
        } catch (bytes memory reason) {
            // The only legitimate failure: a client in the batch ran out of balance.
            require(bytes4(reason) == IPaymentEscrow.EscrowInsufficientBalance.selector, "unexpected batch revert");
        }
    }

    function _signNext(uint256 c, uint256 expertId, uint256 increment)
        internal
        returns (IPaymentEscrow.Voucher memory v, bytes memory sig)
    {
        address client = clients[c];
        uint256 cumulative = maxSigned[client][expertId] + bound(increment, 1, 2 ether);
        v = IPaymentEscrow.Voucher({client: client, expertId: expertId, cumulativeAmount: cumulative});
        (uint8 pv, bytes32 r, bytes32 s) = vm.sign(_clientKeys[c], escrow.voucherDigest(v));
        sig = abi.encodePacked(r, s, pv);
        maxSigned[client][expertId] = cumulative;
        _lastVoucher[client][expertId] = v;
        _lastSignature[client][expertId] = sig;
    }

    function _redeemOne(IPaymentEscrow.Voucher memory v, bytes memory sig) internal {
        address operator = ExpertRegistry(escrow.registry()).operatorOf(v.expertId);
        uint256 before = operator.balance;
        uint256 paid = escrow.redeem(v, sig);
        require(operator.balance - before == paid, "operator not paid what redeem returned");
        received[operator] += paid;
        redeemedTotal += paid;
        ++calls;
    }
}

contract EscrowInvariantTest is Deploy {
    EscrowHandler internal handler;

    function setUp() public {
        deploy();
        address[] memory operators = new address[](2);
        operators[0] = makeAddr("operator A");
        operators[1] = makeAddr("operator B");
        uint256[] memory experts = new uint256[](3);
        experts[0] = registerExpert(operators[0], makeAddr("signer"));
        experts[1] = registerExpert(operators[0], makeAddr("signer"));
        experts[2] = registerExpert(operators[1], makeAddr("signer"));
        handler = new EscrowHandler(escrow, experts, operators);
        targetContract(address(handler));
        bytes4[] memory selectors = new bytes4[](6);
        selectors[0] = EscrowHandler.deposit.selector;
        selectors[1] = EscrowHandler.requestWithdraw.selector;
        selectors[2] = EscrowHandler.withdraw.selector;
        selectors[3] = EscrowHandler.redeem.selector;
        selectors[4] = EscrowHandler.redeemAgain.selector;
        selectors[5] = EscrowHandler.redeemMany.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
    }

    /// (1) The escrow holds exactly what it owes its clients.
    function invariant_EscrowHoldsWhatItOwes() public view {
        uint256 sum;
        for (uint256 i; i < handler.clientCount(); ++i) {
            sum += escrow.balanceOf(handler.clients(i));
        }
        assertEq(sum, escrow.totalBalances(), "sum of balances != totalBalances");
        assertEq(escrow.totalBalances(), address(escrow).balance, "totalBalances != ether held");
        assertEq(handler.deposited() - handler.withdrawn() - handler.redeemedTotal(), sum, "flows do not add up");
    }

    /// (2) No client ever pays an expert more than the highest running total it signed for that expert.
    function invariant_RedeemedNeverExceedsSigned() public view {
        for (uint256 i; i < handler.clientCount(); ++i) {
            address client = handler.clients(i);
            for (uint256 j; j < handler.expertCount(); ++j) {
                uint256 expertId = handler.experts(j);
                assertLe(escrow.redeemed(client, expertId), handler.maxSigned(client, expertId), "paid above signed");
            }
        }
    }

    /// Operators received exactly what was redeemed, and each expert's volume is its share.
    function invariant_OperatorsReceiveWhatIsRedeemed() public view {
        uint256 redeemedSum;
        uint256 volumeSum;
        for (uint256 j; j < handler.expertCount(); ++j) {
            uint256 expertId = handler.experts(j);
            uint256 perExpert;
            for (uint256 i; i < handler.clientCount(); ++i) {
                perExpert += escrow.redeemed(handler.clients(i), expertId);
            }
            assertEq(escrow.expertVolume(expertId), perExpert, "volume != redeemed");
            redeemedSum += perExpert;
            volumeSum += escrow.expertVolume(expertId);
        }
        address a = handler.operators(0);
        address b = handler.operators(1);
        assertEq(redeemedSum, handler.redeemedTotal());
        assertEq(handler.received(a) + handler.received(b), redeemedSum, "operators' receipts != redeemed");
        assertEq(a.balance + b.balance, redeemedSum, "operator balances != redeemed");
        assertEq(volumeSum, redeemedSum);
    }
}
