"""Revert data decoding into named ContractRevertErrors, and translation of transport failures."""

from __future__ import annotations

import eth_abi
import pytest
import requests
from eth_hash.auto import keccak

from market.chain.artifacts import CONTRACTS, load_abi
from market.chain.errors import RevertDecoder, default_decoder, translate, translate_errors
from market.errors import ChainError, ContractRevertError

CLIENT = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def _encode(signature: str, types: list[str], values: list[object]) -> bytes:
    return keccak(signature.encode())[:4] + eth_abi.encode(types, values)


def test_every_interface_error_is_known() -> None:
    names = default_decoder().names
    for contract in CONTRACTS:
        for item in load_abi(contract):
            if item["type"] == "error":
                assert item["name"] in names
    for expected in ("EscrowInvalidSignature", "EscrowVoucherNotIncreasing", "RegistryStakeTooLow",
                     "EscrowWithdrawTooEarly", "DisputeCommitClosed", "DisputeRevealNotOpen"):  # fmt: skip
        assert expected in names


def test_custom_error_decodes_name_and_args() -> None:
    data = _encode(
        "EscrowVoucherNotIncreasing(address,uint256,uint256,uint256)",
        ["address", "uint256", "uint256", "uint256"],
        [CLIENT, 3, 10, 12],
    )
    err = default_decoder().decode("0x" + data.hex())
    assert isinstance(err, ContractRevertError)
    assert err.name == "EscrowVoucherNotIncreasing"
    assert err.args_by_name == {"client": CLIENT, "expertId": 3, "cumulativeAmount": 10, "redeemed": 12}
    assert "EscrowVoucherNotIncreasing(client=0x3C44" in str(err)


def test_bytes_args_are_shown_as_hex() -> None:
    digest = b"\xab" * 32
    err = default_decoder().decode(_encode("DisputeAlreadyOpened(bytes32)", ["bytes32"], [digest]))
    assert err.args_by_name == {"receiptDigest": digest}
    assert "0x" + "ab" * 32 in str(err)


def test_error_string_panic_empty_and_unknown() -> None:
    decoder = default_decoder()
    err = decoder.decode(_encode("Error(string)", ["string"], ["nope"]))
    assert (err.name, err.args_by_name) == ("Error", {"message": "nope"})
    err = decoder.decode(_encode("Panic(uint256)", ["uint256"], [0x11]))
    assert (err.name, err.args_by_name["code"]) == ("Panic", 0x11)
    assert "overflow" in str(err)
    assert decoder.decode(b"").name == "Revert"
    assert decoder.decode(None).name == "Revert"
    err = decoder.decode(b"\xde\xad\xbe\xef\x00")
    assert err.name == "UnknownRevert"
    assert err.args_by_name["selector"] == "0xdeadbeef"


def test_truncated_arguments_are_unknown_not_a_crash() -> None:
    data = _encode("RegistryStakeTooLow(uint256,uint256)", ["uint256", "uint256"], [1, 2])[:36]
    assert default_decoder().decode(data).name == "UnknownRevert"


def test_decoder_from_custom_abi_and_selector_lookup() -> None:
    abi = [{"type": "error", "name": "Thing", "inputs": [{"name": "", "type": "uint8"}]}]
    decoder = RevertDecoder([abi])
    assert decoder.selector("Thing") == keccak(b"Thing(uint8)")[:4]
    assert decoder.decode(decoder.selector("Thing") + eth_abi.encode(["uint8"], [7])).args_by_name == {
        "arg0": 7
    }
    with pytest.raises(KeyError):
        decoder.selector("Other")


def test_connection_failures_become_chain_errors() -> None:
    assert isinstance(translate(requests.exceptions.ConnectionError("refused")), ChainError)
    assert "did not answer" in str(translate(requests.exceptions.ReadTimeout("slow")))
    with pytest.raises(ChainError) as info, translate_errors():
        raise ConnectionRefusedError("refused")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
