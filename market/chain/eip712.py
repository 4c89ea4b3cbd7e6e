"""EIP-712 vouchers and receipts, hashed and signed fast enough for one signature per inference call.

The escrow's domain is ("MoeMarket Escrow", "1", chain id, escrow address) with
`Voucher(address client,uint256 expertId,uint256 cumulativeAmount)`; the dispute manager's is
("MoeMarket Disputes", "1", chain id, dispute manager address) with
`Receipt(uint256 expertId,bytes32 modelHash,bytes32 requestId,bytes32 inputHash,bytes32 outputHash,uint256 price)`.
Type hashes are module constants and each signer caches its domain separator, so a signature is two keccaks
and one secp256k1 signing with coincurve (eth_account's encode_typed_data costs ~100x more per call).

Signatures are 65 bytes r || s || v with v in {27, 28} and s in the lower half of the curve order, which is
what OpenZeppelin's ECDSA accepts; recovery rejects anything else so Python and the contracts agree on which
signatures are valid. Signers hold a private key: never log them or their keys.
"""

from __future__ import annotations

import time

import coincurve
from eth_hash.auto import keccak
from eth_utils import is_address, to_checksum_address

from market.errors import MarketInputError
from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher

ESCROW_DOMAIN_NAME = "MoeMarket Escrow"
DISPUTES_DOMAIN_NAME = "MoeMarket Disputes"
DOMAIN_VERSION = "1"

DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
VOUCHER_TYPE = "Voucher(address client,uint256 expertId,uint256 cumulativeAmount)"
RECEIPT_TYPE = "Receipt(uint256 expertId,bytes32 modelHash,bytes32 requestId,bytes32 inputHash,bytes32 outputHash,uint256 price)"

DOMAIN_TYPEHASH = keccak(DOMAIN_TYPE.encode())
VOUCHER_TYPEHASH = keccak(VOUCHER_TYPE.encode())
RECEIPT_TYPEHASH = keccak(RECEIPT_TYPE.encode())

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2
_UINT256_MAX = 2**256 - 1
_PREFIX = b"\x19\x01"


# ----------------------------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------------------------


def _uint(value: int, what: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT256_MAX:
        raise MarketInputError(f"{what} must be an integer in [0, 2**256), got {value!r}")
    return value.to_bytes(32, "big")


def _bytes32(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise MarketInputError(f"{what} must be 32 bytes, got {value!r}")
    return bytes(value)


def _address_word(address: str, what: str) -> bytes:
    if not isinstance(address, str) or not is_address(address):
        raise MarketInputError(f"{what} must be a 0x-prefixed 20-byte address, got {address!r}")
    return bytes(12) + bytes.fromhex(address[2:])


def domain_separator(
    name: str, chain_id: int, verifying_contract: str, version: str = DOMAIN_VERSION
) -> bytes:
    """keccak256 of the EIP-712 domain (name, version, chainId, verifyingContract), as OpenZeppelin's EIP712 builds it."""
    return keccak(
        DOMAIN_TYPEHASH
        + keccak(name.encode())
        + keccak(version.encode())
        + _uint(chain_id, "chain id")
        + _address_word(verifying_contract, "verifying contract")
    )


def escrow_domain_separator(chain_id: int, escrow: str) -> bytes:
    return domain_separator(ESCROW_DOMAIN_NAME, chain_id, escrow)


def disputes_domain_separator(chain_id: int, disputes: str) -> bytes:
    return domain_separator(DISPUTES_DOMAIN_NAME, chain_id, disputes)


def _voucher_struct_hash(client_word: bytes, expert_id: int, cumulative: int) -> bytes:
    return keccak(
        VOUCHER_TYPEHASH
        + client_word
        + _uint(expert_id, "expert id")
        + _uint(cumulative, "cumulative amount")
    )


def _receipt_struct_hash(receipt: Receipt) -> bytes:
    return keccak(
        RECEIPT_TYPEHASH
        + _uint(receipt.expert_id, "expert id")
        + _bytes32(receipt.model_hash, "model hash")
        + _bytes32(receipt.request_id, "request id")
        + _bytes32(receipt.input_hash, "input hash")
        + _bytes32(receipt.output_hash, "output hash")
        + _uint(receipt.price, "price")
    )


def _typed_digest(separator: bytes, struct_hash: bytes) -> bytes:
    return keccak(_PREFIX + separator + struct_hash)


def voucher_digest(voucher: Voucher, chain_id: int, escrow: str) -> bytes:
    """The 32-byte EIP-712 digest of `voucher` under the escrow's domain (equals PaymentEscrow.voucherDigest)."""
    struct_hash = _voucher_struct_hash(
        _address_word(voucher.client, "client"), voucher.expert_id, voucher.cumulative_amount
    )
    return _typed_digest(escrow_domain_separator(chain_id, escrow), struct_hash)


def receipt_digest(receipt: Receipt, chain_id: int, disputes: str) -> bytes:
    """The 32-byte EIP-712 digest of `receipt` under the dispute manager's domain (equals receiptDigest)."""
    return _typed_digest(disputes_domain_separator(chain_id, disputes), _receipt_struct_hash(receipt))


# ----------------------------------------------------------------------------------------------------------------
# Signing and recovery
# ----------------------------------------------------------------------------------------------------------------


def _private_key(private_key: bytes) -> coincurve.PrivateKey:
    if not isinstance(private_key, bytes | bytearray) or len(private_key) != 32:
        raise MarketInputError("a private key must be 32 bytes")
    try:
        return coincurve.PrivateKey(bytes(private_key))
    except ValueError as exc:
        raise MarketInputError("the private key is not a valid secp256k1 key") from exc


def _address_of(public_key: coincurve.PublicKey) -> str:
    return to_checksum_address(keccak(public_key.format(compressed=False)[1:])[-20:])


def sign_digest(key: coincurve.PrivateKey, digest: bytes) -> bytes:
    """r || s || v (v in {27, 28}); libsecp256k1 always produces the low-s form."""
    sig = key.sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes((sig[64] + 27,))


def recover_digest_signer(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed `digest`; MarketInputError for a malformed or malleable signature."""
    if not isinstance(signature, bytes | bytearray) or len(signature) != 65:
        raise MarketInputError("a signature must be 65 bytes r || s || v")
    v = signature[64]
    if v not in (27, 28):
        raise MarketInputError(f"signature v must be 27 or 28, got {v}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < r < SECP256K1_N or not 0 < s <= _HALF_N:
        raise MarketInputError("signature r/s out of range (s must be in the lower half of the curve order)")
    try:
        public_key = coincurve.PublicKey.from_signature_and_message(
            bytes(signature[:64]) + bytes((v - 27,)), digest, hasher=None
        )
    except ValueError as exc:
        raise MarketInputError("the signature does not recover to any key") from exc
    return _address_of(public_key)


class VoucherSigner:
    """Signs cumulative vouchers for one client key, one chain and one escrow."""

    __slots__ = ("_key", "_client_word", "_separator", "address", "chain_id", "escrow")

    def __init__(self, private_key: bytes, chain_id: int, escrow: str) -> None:
        self._key = _private_key(private_key)
        self.address = _address_of(self._key.public_key)
        self._client_word = bytes(12) + bytes.fromhex(self.address[2:])
        self.chain_id = chain_id
        self.escrow = to_checksum_address(escrow)
        self._separator = escrow_domain_separator(chain_id, self.escrow)

    def __repr__(self) -> str:
        return f"VoucherSigner(address={self.address}, chain_id={self.chain_id}, escrow={self.escrow})"

    def digest(self, expert_id: int, cumulative: int) -> bytes:
        return _typed_digest(self._separator, _voucher_struct_hash(self._client_word, expert_id, cumulative))

    def sign(self, expert_id: int, cumulative: int) -> SignedVoucher:
        """A voucher saying this client owes `expert_id` a running total of `cumulative` wei."""
        signature = sign_digest(self._key, self.digest(expert_id, cumulative))
        return SignedVoucher(Voucher(self.address, expert_id, cumulative), signature)


class ReceiptSigner:
    """Signs receipts for an expert's hot signer key under one chain's dispute manager domain."""

    __slots__ = ("_key", "_separator", "address", "chain_id", "disputes")

    def __init__(self, private_key: bytes, chain_id: int, disputes: str) -> None:
        self._key = _private_key(private_key)
        self.address = _address_of(self._key.public_key)
        self.chain_id = chain_id
        self.disputes = to_checksum_address(disputes)
        self._separator = disputes_domain_separator(chain_id, self.disputes)

    def __repr__(self) -> str:
        return f"ReceiptSigner(address={self.address}, chain_id={self.chain_id}, disputes={self.disputes})"

    def digest(self, receipt: Receipt) -> bytes:
        return _typed_digest(self._separator, _receipt_struct_hash(receipt))

    def sign(self, receipt: Receipt) -> SignedReceipt:
        return SignedReceipt(receipt, sign_digest(self._key, self.digest(receipt)))


def recover_voucher_signer(signed: SignedVoucher, chain_id: int, escrow: str) -> str:
    """Who signed the voucher under this escrow's domain (compare it with `signed.voucher.client`)."""
    return recover_digest_signer(voucher_digest(signed.voucher, chain_id, escrow), signed.signature)


def recover_receipt_signer(signed: SignedReceipt, chain_id: int, disputes: str) -> str:
    """Who signed the receipt under this dispute manager's domain (compare it with the expert's signer)."""
    return recover_digest_signer(receipt_digest(signed.receipt, chain_id, disputes), signed.signature)


def sign_rate(n: int = 10_000) -> float:
    """Vouchers signed per second by VoucherSigner on this machine (a micro-benchmark for bench/)."""
    throwaway_key = keccak(b"moe-market sign_rate benchmark key")
    signer = VoucherSigner(throwaway_key, 31337, "0x" + "11" * 20)
    start = time.perf_counter()
    for i in range(n):
        signer.sign(1, i + 1)
    elapsed = time.perf_counter() - start
    return n / elapsed if elapsed > 0 else float("inf")
