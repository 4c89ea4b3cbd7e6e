"""Turns contract reverts into `market.errors.ContractRevertError(name, args)` and web3 failures into ChainError.

Revert data is decoded with the custom-error selectors of the three market ABIs (the shipped artifacts,
which include the interfaces' errors and anything the implementations add, such as OpenZeppelin's), plus
the built-in `Error(string)` and `Panic(uint256)`. `translate_errors()` is the one boundary where web3's
exceptions (ContractCustomError, ContractLogicError, RPC errors, timeouts, connection failures) become
market errors, always with `raise ... from` so the original stays attached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import Any, TypeVar

import eth_abi
import requests
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak
from eth_utils import to_checksum_address
from web3.exceptions import (
    ContractLogicError,
    MismatchedABI,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
    Web3ValidationError,
)

from market.chain.artifacts import CONTRACTS, load_abi
from market.errors import ChainError, ContractRevertError, MarketError, MarketInputError

T = TypeVar("T")

ERROR_STRING_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)

PANIC_CODES = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x22: "bad storage byte array",
    0x31: "pop on an empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to a zero function",
}

# What the user should do about the reverts a user can cause (the rest print their name and values).
HINTS = {
    "EscrowInsufficientBalance": "deposit more with `moe client deposit`",
    "EscrowWithdrawTooEarly": "wait until the withdraw delay is over",
    "EscrowNoWithdrawRequested": "request a withdrawal first",
    "EscrowInvalidSignature": "the voucher was not signed by the client for this escrow and chain",
    "EscrowVoucherNotIncreasing": "a voucher must exceed what was already redeemed",
    "RegistryStakeTooLow": "send at least the minimum stake",
    "RegistryUnbondingNotOver": "wait until the unbonding period is over",
    "RegistryVerifierUnbondingNotOver": "wait until the unbonding period is over",
    "RegistryDisputesOpen": "wait until the open disputes are resolved",
    "DisputeBondMismatch": "send exactly the dispute bond",
    "DisputeNotVerifier": "register as a verifier with `moe verifier register`",
    "DisputeNotOver": "wait until the reveal period is over",
    "DisputeNothingToClaim": "nothing is credited to this account",
}


def _canonical_type(param: dict[str, Any]) -> str:
    kind = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def _plain(value: Any, kind: str) -> Any:
    """Decoded ABI values as plain Python: checksummed addresses, bytes, ints, lists."""
    if kind == "address":
        return to_checksum_address(value)
    if isinstance(value, tuple | list):
        return [_plain(v, "") for v in value]
    return value


def _shown(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


class RevertDecoder:
    """Maps 4-byte selectors of custom errors to their names and argument types."""

    def __init__(self, abis: Iterable[list[dict[str, Any]]]) -> None:
        self._errors: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = [_canonical_type(p) for p in item.get("inputs", [])]
                names = [p.get("name") or f"arg{i}" for i, p in enumerate(item.get("inputs", []))]
                selector = keccak(f"{item['name']}({','.join(types)})".encode())[:4]
                self._errors[selector] = (item["name"], types, names)

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self._errors.values()}

    def selector(self, name: str) -> bytes:
        for selector, (known, _, _) in self._errors.items():
            if known == name:
                return selector
        raise KeyError(name)

    def decode(self, data: bytes | str | None) -> ContractRevertError:
        """The named error that `data` (revert data, bytes or 0x-hex) encodes."""
        raw = _as_bytes(data)
        if raw is None or len(raw) == 0:
            return ContractRevertError("Revert", {}, "the contract reverted without a reason")
        selector, body = raw[:4], raw[4:]
        try:
            if selector == ERROR_STRING_SELECTOR:
                (message,) = eth_abi.decode(["string"], body)
                return ContractRevertError("Error", {"message": message}, f"the contract reverted: {message}")
            if selector == PANIC_SELECTOR:
                (code,) = eth_abi.decode(["uint256"], body)
                what = PANIC_CODES.get(code, "unknown panic")
                return ContractRevertError(
                    "Panic", {"code": code}, f"the contract panicked: {what} (0x{code:02x})"
                )
            if selector in self._errors:
                name, types, names = self._errors[selector]
                values = eth_abi.decode(types, body)
                args = {n: _plain(v, t) for n, t, v in zip(names, types, values, strict=True)}
                detail = ", ".join(f"{k}={_shown(v)}" for k, v in args.items())
                hint = HINTS.get(name)
                message = f"{name}({detail})" + (f": {hint}" if hint else "")
                return ContractRevertError(name, args, message)
        except (DecodingError, ValueError, OverflowError):
            pass
        return ContractRevertError(
            "UnknownRevert",
            {"selector": "0x" + selector.hex(), "data": "0x" + raw.hex()},
            f"the contract reverted with unknown data 0x{raw.hex()}",
        )


def _as_bytes(data: bytes | str | None) -> bytes | None:
    if data is None:
        return None
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    text = data.strip()
    if text.startswith("Reverted "):
        text = text.split(" ", 1)[1]
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            return None
    return None


@cache
def default_decoder() -> RevertDecoder:
    """A decoder for the errors of all three market contracts."""
    return RevertDecoder(load_abi(name) for name in CONTRACTS)


def revert_data_of(exc: BaseException) -> bytes | None:
    """The raw revert data carried by a web3 exception, when there is any."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    raw = _as_bytes(data) if isinstance(data, str | bytes) else None
    if raw is not None:
        return raw
    if isinstance(exc, Web3RPCError) and isinstance(exc.rpc_response, dict):
        error = exc.rpc_response.get("error")
        if isinstance(error, dict) and isinstance(error.get("data"), str):
            return _as_bytes(error["data"])
    return None


def translate(exc: BaseException, decoder: RevertDecoder | None = None) -> MarketError:
    """The market error that stands for web3's `exc`."""
    decoder = decoder or default_decoder()
    if isinstance(exc, MarketError):
        return exc
    if isinstance(exc, ContractLogicError):
        return decoder.decode(revert_data_of(exc))
    if isinstance(exc, Web3RPCError):
        data = revert_data_of(exc)
        if data is not None:
            return decoder.decode(data)
        return ChainError(f"the RPC node refused the request: {exc.message}")
    if isinstance(exc, Web3ValidationError | MismatchedABI):
        return MarketInputError(f"invalid arguments for the contract call: {exc}")
    if isinstance(exc, TimeExhausted):
        return ChainError(f"timed out waiting for the chain: {exc}")
    if isinstance(exc, TransactionNotFound):
        return ChainError(f"transaction not found: {exc}")
    if isinstance(exc, requests.exceptions.Timeout):
        return ChainError(f"the RPC node did not answer in time: {exc}")
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError):
        return ChainError(f"cannot reach the RPC node: {exc}; is the chain running (`moe devnet up`)?")
    if isinstance(exc, Web3Exception):
        return ChainError(f"chain call failed: {exc}")
    return ChainError(f"chain call failed: {type(exc).__name__}: {exc}")


_TRANSLATED = (Web3Exception, requests.exceptions.RequestException, ConnectionError, TimeoutError)


@contextlib.contextmanager
def translate_errors(decoder: RevertDecoder | None = None) -> Iterator[None]:
    """Re-raises web3 and HTTP failures inside the block as market errors (`raise ... from`)."""
    try:
        yield
    except _TRANSLATED as exc:
        raise translate(exc, decoder) from exc


def call_translating(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` with web3 errors translated into market errors."""
    with translate_errors():
        return fn(*args, **kwargs)
