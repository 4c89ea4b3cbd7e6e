"""Devnet helpers that need no running chain: finding anvil, the throwaway keys, the stopped state."""

from __future__ import annotations

import pytest
from eth_account import Account

from market.chain import devnet
from market.chain.devnet import (
    ANVIL_TEST_KEYS,
    ANVIL_TEST_MNEMONIC,
    anvil_command,
    devnet_down,
    devnet_status,
    find_anvil,
    throwaway_signer,
)
from market.errors import MarketConfigError


def test_throwaway_keys_derive_from_anvils_public_mnemonic() -> None:
    Account.enable_unaudited_hdwallet_features()
    for i, key in enumerate(ANVIL_TEST_KEYS):
        derived = Account.from_mnemonic(ANVIL_TEST_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        assert derived.key.hex().removeprefix("0x") == key.removeprefix("0x")
        assert throwaway_signer(i).address == derived.address


def test_find_anvil_honours_moe_anvil(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MOE_ANVIL", str(fake))
    assert find_anvil() == str(fake)
    monkeypatch.setenv("MOE_ANVIL", str(tmp_path / "missing"))
    with pytest.raises(MarketConfigError, match="MOE_ANVIL"):
        find_anvil()


def test_missing_anvil_says_npm_ci(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MOE_ANVIL", raising=False)
    monkeypatch.setattr(devnet, "_REPO_ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MarketConfigError, match="npm ci"):
        find_anvil()


def test_anvil_listens_on_loopback_only(monkeypatch) -> None:
    command = anvil_command(9999, anvil="anvil")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--silent" in command and command[command.index("--chain-id") + 1] == "31337"


def test_anvil_command_takes_a_host() -> None:
    command = anvil_command(9999, anvil="anvil", host="10.213.7.2")
    assert command[command.index("--host") + 1] == "10.213.7.2"


def test_a_port_on_an_address_of_another_namespace_is_not_reported_in_use() -> None:
    # 203.0.113.0/24 is TEST-NET-3: never an address of this machine, so it cannot be bound here.
    assert devnet._port_in_use(8545, "203.0.113.77") is False


def test_devnet_urls_bracket_ipv6() -> None:
    assert devnet._url("10.0.0.2", 8545) == "http://10.0.0.2:8545"
    assert devnet._url("::1", 8545) == "http://[::1]:8545"


def test_a_devnet_on_a_foreign_address_needs_a_port() -> None:
    with pytest.raises(MarketConfigError, match="give the devnet a port"):
        devnet.Devnet(host="203.0.113.77").start()


def test_status_and_down_of_an_empty_state_dir(tmp_path) -> None:
    status = devnet_status(tmp_path)
    assert (status.running, status.answering, status.deployment) == (False, False, None)
    assert devnet_down(tmp_path) is False
    (tmp_path / "anvil.pid").write_text("999999999\n")  # stale pid: nothing to kill
    assert devnet_down(tmp_path) is False
    assert not (tmp_path / "anvil.pid").exists()
