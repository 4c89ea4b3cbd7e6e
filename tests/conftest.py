"""Shared pytest fixtures: a local chain with the market deployed, per-test isolation, funded throwaway accounts.

`devnet` (session) starts anvil on a free 127.0.0.1 port and deploys the market once; it is stopped when the
session ends. `isolated_devnet` (function) takes an evm_snapshot before the test and reverts to it after,
so every test starts from the freshly deployed market. The accounts are THROWAWAY TEST KEYS (anvil's
default accounts, or fresh random keys funded with anvil_setBalance): only tests and devnets use them.
Chain modules are imported inside the fixtures so tests that need no chain do not pay for web3's import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from market.chain.contracts import MarketChain
    from market.chain.devnet import Devnet
    from market.chain.signer import LocalSigner
    from market.types import Deployment


@pytest.fixture(scope="session")
def devnet() -> Iterator[Devnet]:
    """anvil with the market deployed (devnet parameters), shared by the whole session."""
    from market.chain.devnet import Devnet

    with Devnet() as net:
        yield net


@pytest.fixture(scope="session")
def deployment(devnet: Devnet) -> Deployment:
    assert devnet.deployment is not None
    return devnet.deployment


@pytest.fixture
def isolated_devnet(devnet: Devnet) -> Iterator[Devnet]:
    """The session devnet, reverted after the test to the state it had before (evm_snapshot / evm_revert)."""
    from market.chain.devnet import rpc_request

    snapshot = rpc_request(devnet.rpc_url, "evm_snapshot")
    try:
        yield devnet
    finally:
        assert rpc_request(devnet.rpc_url, "evm_revert", [snapshot]), "evm_revert failed"


@pytest.fixture
def anvil_accounts(isolated_devnet: Devnet) -> list[LocalSigner]:
    """THROWAWAY TEST KEYS: anvil's ten accounts with 10000 ETH each (index 0 deployed the market)."""
    return isolated_devnet.accounts


@pytest.fixture
def funded_account(isolated_devnet: Devnet) -> Callable[..., LocalSigner]:
    """Factory: a fresh random key holding `balance` wei (default 100 ETH) on the devnet."""
    from market.chain.devnet import rpc_request
    from market.chain.signer import LocalSigner

    def make(balance: int = 100 * 10**18) -> LocalSigner:
        signer = LocalSigner.generate()
        rpc_request(isolated_devnet.rpc_url, "anvil_setBalance", [signer.address, hex(balance)])
        return signer

    return make


@pytest.fixture
def chain_for(isolated_devnet: Devnet) -> Callable[..., MarketChain]:
    """Factory: a MarketChain on the devnet sending as the given signer (read-only when None)."""
    from market.chain.contracts import MarketChain

    assert isolated_devnet.deployment is not None
    deployment = isolated_devnet.deployment

    def make(signer: LocalSigner | None = None) -> MarketChain:
        return MarketChain(deployment, signer, receipt_timeout=30.0, poll_interval=0.02)

    return make
