"""market.chain.eip712 against eth_account's reference EIP-712 implementation (the only test importing it)."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from market.chain import eip712
from market.chain.eip712 import (
    SECP256K1_N,
    ReceiptSigner,
    VoucherSigner,
    receipt_digest,
    recover_receipt_signer,
    recover_voucher_signer,
    sign_rate,
    voucher_digest,
)
from market.errors import MarketInputError
from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher

KEY = bytes.fromhex("59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")  # THROWAWAY TEST KEY
ESCROW = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
DISPUTES = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"

uint256 = st.integers(min_value=0, max_value=2**256 - 1)
bytes32 = st.binary(min_size=32, max_size=32)
chain_ids = st.integers(min_value=1, max_value=2**64)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))

DOMAIN_FIELDS = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def _voucher_message(voucher: Voucher, chain_id: int, escrow: str):
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": DOMAIN_FIELDS,
                "Voucher": [
                    {"name": "client", "type": "address"},
                    {"name": "expertId", "type": "uint256"},
                    {"name": "cumulativeAmount", "type": "uint256"},
                ],
            },
            "primaryType": "Voucher",
            "domain": {
                "name": "MoeMarket Escrow",
                "version": "1",
                "chainId": chain_id,
                "verifyingContract": escrow,
            },
            "message": {
                "client": voucher.client,
                "expertId": voucher.expert_id,
                "cumulativeAmount": voucher.cumulative_amount,
            },
        }
    )


def _receipt_message(receipt: Receipt, chain_id: int, disputes: str):
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": DOMAIN_FIELDS,
                "Receipt": [
                    {"name": "expertId", "type": "uint256"},
                    {"name": "modelHash", "type": "bytes32"},
                    {"name": "requestId", "type": "bytes32"},
                    {"name": "inputHash", "type": "bytes32"},
                    {"name": "outputHash", "type": "bytes32"},
                    {"name": "price", "type": "uint256"},
                ],
            },
            "primaryType": "Receipt",
            "domain": {
                "name": "MoeMarket Disputes",
                "version": "1",
                "chainId": chain_id,
                "verifyingContract": disputes,
            },
            "message": {
                "expertId": receipt.expert_id,
                "modelHash": receipt.model_hash,
                "requestId": receipt.request_id,
                "inputHash": receipt.input_hash,
                "outputHash": receipt.output_hash,
                "price": receipt.price,
            },
        }
    )


def _eth_account_digest(signable) -> bytes:
    from eth_account.messages import _hash_eip191_message

    return bytes(_hash_eip191_message(signable))


@settings(max_examples=60, deadline=None)
@given(key=keys, expert_id=uint256, cumulative=uint256, chain_id=chain_ids, escrow=addresses)
def test_voucher_matches_eth_account(
    key: bytes, expert_id: int, cumulative: int, chain_id: int, escrow: str
) -> None:
    signer = VoucherSigner(key, chain_id, escrow)
    signed = signer.sign(expert_id, cumulative)
    reference = Account.from_key(key)
    message = _voucher_message(signed.voucher, chain_id, signer.escrow)

    assert signer.address == reference.address
    assert voucher_digest(signed.voucher, chain_id, escrow) == _eth_account_digest(message)
    assert signed.signature == bytes(reference.sign_message(message).signature)  # RFC 6979: same nonce
    assert Account.recover_message(message, signature=signed.signature) == signer.address
    assert recover_voucher_signer(signed, chain_id, escrow) == signer.address


@settings(max_examples=60, deadline=None)
@given(key=keys, expert_id=uint256, price=uint256, hashes=st.tuples(bytes32, bytes32, bytes32, bytes32),
       chain_id=chain_ids, disputes=addresses)  # fmt: skip
def test_receipt_matches_eth_account(key, expert_id, price, hashes, chain_id, disputes) -> None:
    receipt = Receipt(expert_id, *hashes, price)
    signer = ReceiptSigner(key, chain_id, disputes)
    signed = signer.sign(receipt)
    reference = Account.from_key(key)
    message = _receipt_message(receipt, chain_id, signer.disputes)

    assert receipt_digest(receipt, chain_id, disputes) == _eth_account_digest(message)
    assert signed.signature == bytes(reference.sign_message(message).signature)
    assert recover_receipt_signer(signed, chain_id, disputes) == reference.address


def test_signature_shape_is_rsv_low_s() -> None:
    signer = VoucherSigner(KEY, 31337, ESCROW)
    for amount in range(1, 50):
        sig = signer.sign(1, amount).signature
        assert len(sig) == 65
        assert sig[64] in (27, 28)
        assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2


def test_recovery_rejects_malleable_and_malformed_signatures() -> None:
    signed = VoucherSigner(KEY, 31337, ESCROW).sign(7, 100)
    r, s, v = signed.signature[:32], int.from_bytes(signed.signature[32:64], "big"), signed.signature[64]
    high_s = (
        r + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - v,))
    )  # the other valid-for-ecrecover form
    for bad in (high_s, signed.signature[:64] + b"\x00", signed.signature[:64], b"\x00" * 65):
        with pytest.raises(MarketInputError):
            recover_voucher_signer(SignedVoucher(signed.voucher, bad), 31337, ESCROW)


def test_domain_binds_chain_and_escrow() -> None:
    signer = VoucherSigner(KEY, 31337, ESCROW)
    signed = signer.sign(3, 10**18)
    assert recover_voucher_signer(signed, 31337, ESCROW) == signer.address
    assert recover_voucher_signer(signed, 1, ESCROW) != signer.address
    assert recover_voucher_signer(signed, 31337, DISPUTES) != signer.address
    receipt = ReceiptSigner(KEY, 31337, DISPUTES).sign(
        Receipt(1, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 5)
    )
    assert recover_receipt_signer(receipt, 31337, ESCROW) != signer.address
    tampered = SignedReceipt(
        Receipt(1, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 6), receipt.signature
    )
    assert recover_receipt_signer(tampered, 31337, DISPUTES) != signer.address


@pytest.mark.parametrize(
    ("expert_id", "cumulative"), [(-1, 1), (1, -1), (2**256, 1), (1, 2**256), (True, 1), (1, 1.5)]
)
def test_out_of_range_values_are_refused(expert_id, cumulative) -> None:
    with pytest.raises(MarketInputError):
        VoucherSigner(KEY, 31337, ESCROW).sign(expert_id, cumulative)


def test_bad_keys_and_addresses_are_refused() -> None:
    with pytest.raises(MarketInputError):
        VoucherSigner(b"\x00" * 32, 31337, ESCROW)
    with pytest.raises(MarketInputError):
        VoucherSigner(b"\x01" * 31, 31337, ESCROW)
    with pytest.raises(MarketInputError):
        voucher_digest(Voucher("0x1234", 1, 1), 31337, ESCROW)
    with pytest.raises(MarketInputError):
        receipt_digest(Receipt(1, b"\x01" * 31, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, 5), 31337, DISPUTES)


def test_repr_hides_the_key() -> None:
    signer = VoucherSigner(KEY, 31337, ESCROW)
    assert KEY.hex() not in repr(signer)
    assert KEY.hex() not in repr(ReceiptSigner(KEY, 31337, DISPUTES))


def test_type_hashes_are_the_documented_types() -> None:
    assert eip712.VOUCHER_TYPE == "Voucher(address client,uint256 expertId,uint256 cumulativeAmount)"
    assert eip712.RECEIPT_TYPE == (
        "Receipt(uint256 expertId,bytes32 modelHash,bytes32 requestId,bytes32 inputHash,bytes32 outputHash,uint256 price)"
    )


def test_sign_rate_reports_a_positive_rate() -> None:
    assert sign_rate(200) > 0
