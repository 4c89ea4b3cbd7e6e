// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {Deploy} from "./utils/Deploy.sol";
import {console} from "./utils/console.sol";
import {IExpertRegistry} from "../src/interfaces/IExpertRegistry.sol";
import {IPaymentEscrow} from "../src/interfaces/IPaymentEscrow.sol";
import {IDisputeManager} from "../src/interfaces/IDisputeManager.sol";

/// @notice Shared gas bookkeeping. forge runs setUp and the test function as separate transactions, so storage
/// prepared in setUp is cold when the measured call touches it, as on chain. `snapshotGasLastCall` records the
/// gas used inside the called contract; a transaction also pays 21,000 plus its calldata, which `_record` adds so
/// the figures in snapshots/*.json and docs/contracts.md are what a sender pays.
abstract contract GasBase is Deploy {
    string internal constant GROUP = "gas";
    uint256 internal lastExecution;

    /// @dev Records `name` (execution gas of the last call) and `name + " (tx)"` (with intrinsic and calldata
    /// gas, Cancun pricing) and returns the transaction figure.
    function _record(string memory name, bytes memory callData) internal returns (uint256 txGas) {
        uint256 execution = vm.snapshotGasLastCall(GROUP, name);
        lastExecution = execution;
        txGas = execution + 21_000 + _calldataGas(callData);
        vm.snapshotValue(GROUP, string.concat(name, " (tx)"), txGas);
        console.log(string.concat(name, ": execution gas"), execution);
        console.log(string.concat(name, ": transaction gas"), txGas);
    }

    function _calldataGas(bytes memory data) internal pure returns (uint256 g) {
        for (uint256 i; i < data.length; ++i) {
            g += data[i] == 0 ? 4 : 16;
        }
    }

    function _clientKey(uint256 i) internal pure returns (uint256) {
        return uint256(keccak256(abi.encode("gas client", i)));
    }
}

contract GasTest is GasBase {
    address internal operator;
    address internal signer;
    uint256 internal signerKey;
    uint256 internal expertId;
    uint256 internal neverPaidExpert;

    function setUp() public {
        deploy();
        operator = makeAddr("operator");
        (signer, signerKey) = makeAccount("signer");
        // Operators hold some ether already (paying an empty account would add 25,000 gas).
        vm.deal(operator, 1 ether);
        expertId = registerExpert(operator, signer);
        neverPaidExpert = registerExpert(operator, signer);
        for (uint256 i; i < 3; ++i) {
            depositFor(vm.addr(_clientKey(i)), 1 ether);
        }
        // Client 0 has been paid for before (its running total is on chain); client 1 has not.
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(_clientKey(0), expertId, 0.001 ether);
        escrow.redeem(v, sig);
        registerVerifier(makeAddr("verifier"), 1 ether);
    }

    function test_Gas_RegisterExpert() public {
        IExpertRegistry.ExpertParams memory p = expertParams(signer);
        vm.deal(operator, 10 ether);
        vm.prank(operator);
        registry.registerExpert{value: MIN_STAKE}(p);
        uint256 txGas = _record("registerExpert (known model)", abi.encodeCall(registry.registerExpert, (p)));
        assertLe(txGas, 250_000, "registerExpert over budget");
    }

    function test_Gas_RegisterExpertNewModel() public {
        IExpertRegistry.ExpertParams memory p = expertParams(signer, keccak256("new model"), keccak256("new cap"));
        vm.deal(operator, 10 ether);
        vm.prank(operator);
        registry.registerExpert{value: MIN_STAKE}(p);
        uint256 txGas = _record("registerExpert (new model)", abi.encodeCall(registry.registerExpert, (p)));
        assertLe(txGas, 250_000, "registerExpert over budget");
    }

    function test_Gas_Deposit() public {
        address client = makeAddr("new client");
        vm.deal(client, 1 ether);
        vm.prank(client);
        escrow.deposit{value: 1 ether}();
        _record("deposit (new client)", abi.encodeCall(escrow.deposit, ()));
    }

    function test_Gas_RedeemOne() public {
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(_clientKey(0), expertId, 0.002 ether);
        escrow.redeem(v, sig);
        uint256 txGas = _record("redeem (client paid before)", abi.encodeCall(escrow.redeem, (v, sig)));
        assertLe(txGas, 70_000, "redeem over budget");
        assertLe(lastExecution, 70_000);
    }

    function test_Gas_RedeemOneNewClient() public {
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(_clientKey(1), expertId, 0.001 ether);
        escrow.redeem(v, sig);
        _record("redeem (first voucher of a client)", abi.encodeCall(escrow.redeem, (v, sig)));
        // The transaction pays 22,100 for the client's first running total on top; execution stays in budget.
        assertLe(lastExecution, 70_000);
    }

    function test_Gas_RedeemOneNewExpert() public {
        (IPaymentEscrow.Voucher memory v, bytes memory sig) =
            signVoucher(_clientKey(2), neverPaidExpert, 0.001 ether);
        escrow.redeem(v, sig);
        _record("redeem (first payment to an expert)", abi.encodeCall(escrow.redeem, (v, sig)));
    }

    function test_Gas_OpenDispute() public {
        IDisputeManager.Receipt memory r = receiptFor(expertId, keccak256("request"));
        bytes memory sig = signReceipt(signerKey, r);
        string memory evidence = "/ip4/127.0.0.1/tcp/40124/p2p/12D3KooWEvidenceEvidenceEvidenceEvidenceEvid";
        address challenger = makeAddr("challenger");
        vm.deal(challenger, 1 ether);
        vm.prank(challenger);
        disputes.openDispute{value: DISPUTE_BOND}(r, sig, evidence);
        _record("openDispute", abi.encodeCall(disputes.openDispute, (r, sig, evidence)));
    }
}

/// @notice `resolve` at the cap: 64 committed and revealed guilty votes, each credited.
contract GasResolveTest is GasBase {
    uint256 internal disputeId;

    function setUp() public {
        deploy();
        (address signer, uint256 signerKey) = makeAccount("signer");
        uint256 expertId = registerExpert(makeAddr("operator"), signer);
        IDisputeManager.Receipt memory r = receiptFor(expertId, keccak256("request"));
        bytes memory sig = signReceipt(signerKey, r);
        address challenger = makeAddr("challenger");
        vm.deal(challenger, 1 ether);
        vm.prank(challenger);
        disputeId = disputes.openDispute{value: DISPUTE_BOND}(r, sig, "");
        uint256 n = disputes.MAX_VOTERS();
        for (uint256 i; i < n; ++i) {
            address v = address(uint160(0xA000 + i));
            registerVerifier(v, 1 ether);
            bytes32 c = disputes.commitmentFor(disputeId, true, bytes32(i), v);
            vm.prank(v);
            disputes.commitVote(disputeId, c);
        }
        vm.warp(START + COMMIT_PERIOD);
        for (uint256 i; i < n; ++i) {
            address v = address(uint160(0xA000 + i));
            vm.prank(v);
            disputes.revealVote(disputeId, true, bytes32(i));
        }
        vm.warp(START + COMMIT_PERIOD + REVEAL_PERIOD);
    }

    function test_Gas_ResolveGuilty64Voters() public {
        disputes.resolve(disputeId);
        _record("resolve (guilty, 64 voters)", abi.encodeCall(disputes.resolve, (disputeId)));
    }
}

/// @notice Batches of first vouchers: every client is redeemed for the first time (a zero-to-non-zero write each).
contract GasBatchTest is GasBase {
    uint256 internal constant CLIENTS = 1_000;
    uint256 internal expertId;

    function setUp() public virtual {
        deploy();
        address operator = makeAddr("operator");
        vm.deal(operator, 1 ether);
        expertId = registerExpert(operator, makeAddr("signer"));
        for (uint256 i; i < CLIENTS; ++i) {
            depositFor(vm.addr(_clientKey(i)), 1 ether);
        }
        // The expert has been paid before, by someone else.
        (address warm, uint256 warmKey) = makeAccount("warm client");
        depositFor(warm, 1 ether);
        (IPaymentEscrow.Voucher memory v, bytes memory sig) = signVoucher(warmKey, expertId, 1);
        escrow.redeem(v, sig);
    }

    function _batch(uint256 n, uint256 amount)
        internal
        view
        returns (IPaymentEscrow.Voucher[] memory vs, bytes[] memory sigs)
    {
        vs = new IPaymentEscrow.Voucher[](n);
        sigs = new bytes[](n);
        for (uint256 i; i < n; ++i) {
            (vs[i], sigs[i]) = signVoucher(_clientKey(i), expertId, amount);
        }
    }

    function _measure(string memory name, uint256 n, uint256 amount) internal {
        (IPaymentEscrow.Voucher[] memory vs, bytes[] memory sigs) = _batch(n, amount);
        uint256 paid = escrow.redeemMany(vs, sigs);
        uint256 txGas = _record(name, abi.encodeCall(escrow.redeemMany, (vs, sigs)));
        vm.snapshotValue(GROUP, string.concat(name, " (tx per voucher)"), txGas / n);
        console.log(string.concat(name, ": transaction gas per voucher"), txGas / n);
        assertEq(paid, n * amount);
    }

    function test_Gas_RedeemMany1() public {
        _measure("redeemMany 1 first voucher", 1, 0.001 ether);
    }

    function test_Gas_RedeemMany100() public {
        _measure("redeemMany 100 first vouchers", 100, 0.001 ether);
    }

    function test_Gas_RedeemMany1000() public {
        _measure("redeemMany 1000 first vouchers", 1_000, 0.001 ether);
    }
}

/// @notice The steady state: every client has been redeemed before and signs a higher running total.
contract GasBatchRepeatTest is GasBase {
    uint256 internal constant CLIENTS = 1_000;
    uint256 internal expertId;

    function setUp() public {
        deploy();
        address operator = makeAddr("operator");
        vm.deal(operator, 1 ether);
        expertId = registerExpert(operator, makeAddr("signer"));
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](CLIENTS);
        bytes[] memory sigs = new bytes[](CLIENTS);
        for (uint256 i; i < CLIENTS; ++i) {
            depositFor(vm.addr(_clientKey(i)), 1 ether);
            (vs[i], sigs[i]) = signVoucher(_clientKey(i), expertId, 0.001 ether);
        }
        escrow.redeemMany(vs, sigs);
    }

    function _measure(string memory name, uint256 n) internal {
        IPaymentEscrow.Voucher[] memory vs = new IPaymentEscrow.Voucher[](n);
        bytes[] memory sigs = new bytes[](n);
        for (uint256 i; i < n; ++i) {
            (vs[i], sigs[i]) = signVoucher(_clientKey(i), expertId, 0.002 ether);
        }
        uint256 paid = escrow.redeemMany(vs, sigs);
        uint256 txGas = _record(name, abi.encodeCall(escrow.redeemMany, (vs, sigs)));
        vm.snapshotValue(GROUP, string.concat(name, " (tx per voucher)"), txGas / n);
        console.log(string.concat(name, ": transaction gas per voucher"), txGas / n);
        assertEq(paid, n * 0.001 ether);
    }

    function test_Gas_RedeemManyRepeat1() public {
        _measure("redeemMany 1 repeat voucher", 1);
    }

    function test_Gas_RedeemManyRepeat100() public {
        _measure("redeemMany 100 repeat vouchers", 100);
    }

    function test_Gas_RedeemManyRepeat1000() public {
        _measure("redeemMany 1000 repeat vouchers", 1_000);
    }
}
