"""Keystores and throwaway keys: loading, creating, refusing bad input, never showing the key."""

from __future__ import annotations

import json
import stat

import pytest

from market.chain.signer import (
    LocalSigner,
    Signer,
    create_keystore,
    password_from_env,
    signer_from_keystore,
    unsafe_signer_from_hex,
)
from market.errors import MarketConfigError

KEY_HEX = (
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"  # THROWAWAY TEST KEY (anvil #2)
)
ADDRESS = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
CHEAP = {"kdf": "pbkdf2", "iterations": 2}  # keystores in tests: fast KDF


def test_unsafe_hex_with_and_without_prefix() -> None:
    assert unsafe_signer_from_hex(KEY_HEX).address == ADDRESS
    assert unsafe_signer_from_hex(KEY_HEX[2:] + "\n").address == ADDRESS
    assert isinstance(unsafe_signer_from_hex(KEY_HEX), Signer)


@pytest.mark.parametrize("bad", ["", "0x1234", "zz" * 32, "0x" + "00" * 32])
def test_unsafe_hex_refuses_bad_keys(bad: str) -> None:
    with pytest.raises(MarketConfigError) as info:
        unsafe_signer_from_hex(bad)
    assert bad[2:] not in str(info.value) or not bad[2:]


def test_keystore_roundtrip(tmp_path) -> None:
    path = tmp_path / "keys" / "operator.json"
    signer = unsafe_signer_from_hex(KEY_HEX)
    signer.to_keystore(path, "pw", **CHEAP)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert KEY_HEX[2:] not in path.read_text()
    assert signer_from_keystore(path, "pw").address == ADDRESS


def test_create_keystore_refuses_overwrite_and_empty_password(tmp_path) -> None:
    path = tmp_path / "new.json"
    signer = create_keystore(path, "secret", **CHEAP)
    assert signer_from_keystore(path, "secret").address == signer.address
    with pytest.raises(MarketConfigError, match="already exists"):
        create_keystore(path, "secret", **CHEAP)
    with pytest.raises(MarketConfigError, match="password"):
        create_keystore(tmp_path / "other.json", "", **CHEAP)


def test_keystore_errors_are_clear(tmp_path) -> None:
    path = tmp_path / "k.json"
    unsafe_signer_from_hex(KEY_HEX).to_keystore(path, "right", **CHEAP)
    with pytest.raises(MarketConfigError, match="wrong password"):
        signer_from_keystore(path, "wrong")
    with pytest.raises(MarketConfigError, match="does not exist"):
        signer_from_keystore(tmp_path / "missing.json", "pw")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(MarketConfigError, match="not a readable JSON keystore"):
        signer_from_keystore(tmp_path / "garbage.json", "pw")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(MarketConfigError):
        signer_from_keystore(tmp_path / "other.json", "pw")


def test_repr_and_messages_hide_the_key() -> None:
    signer = unsafe_signer_from_hex(KEY_HEX)
    assert KEY_HEX[2:] not in repr(signer)
    assert ADDRESS in repr(signer)


def test_signers_derived_from_the_key_agree() -> None:
    signer = unsafe_signer_from_hex(KEY_HEX)
    assert signer.voucher_signer(31337, "0x" + "11" * 20).address == ADDRESS
    assert signer.receipt_signer(31337, "0x" + "22" * 20).address == ADDRESS
    assert LocalSigner.generate().address != ADDRESS


def test_signed_transaction_is_raw_bytes() -> None:
    tx = {"to": ADDRESS, "value": 1, "gas": 21000, "maxFeePerGas": 10, "maxPriorityFeePerGas": 1, "nonce": 0,
          "chainId": 31337}  # fmt: skip
    raw = unsafe_signer_from_hex(KEY_HEX).sign_transaction(tx)
    assert isinstance(raw, bytes) and raw[0] == 2  # EIP-1559 typed transaction


def test_password_from_env(monkeypatch) -> None:
    monkeypatch.setenv("MOE_TEST_PW", "pw")
    assert password_from_env("MOE_TEST_PW") == "pw"
    monkeypatch.delenv("MOE_TEST_PW")
    with pytest.raises(MarketConfigError, match="MOE_TEST_PW"):
        password_from_env("MOE_TEST_PW")
