"""Fixtures of the chain integration tests: every test runs on a snapshot of the session devnet, with the
market's roles played by THROWAWAY TEST KEYS (anvil's accounts and fresh funded keys)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from market.chain.contracts import MarketChain, capability_id
from market.chain.signer import LocalSigner

MODEL = bytes.fromhex("11" * 32)
NODE_KEY = bytes.fromhex("22" * 32)
CAPABILITY = capability_id("digits-expert")
PRICE = 10**15
ENDPOINT = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]


@pytest.fixture(autouse=True)
def _isolated(isolated_devnet):
    return isolated_devnet


@dataclass
class Market:
    """One actor per role, each with its own client; `hot` is the expert node's receipt signer."""

    operator: MarketChain
    client: MarketChain
    relayer: MarketChain
    verifiers: list[MarketChain]
    challenger: MarketChain
    hot: LocalSigner
    reader: MarketChain

    MODEL = MODEL
    NODE_KEY = NODE_KEY
    CAPABILITY = CAPABILITY
    PRICE = PRICE
    ENDPOINT = tuple(ENDPOINT)

    def register(self, stake: int | None = None, model: bytes = MODEL, price: int = PRICE) -> int:
        return self.operator.register_expert(
            self.hot.address,
            model,
            CAPABILITY,
            price,
            NODE_KEY,
            ENDPOINT,
            stake or self.reader.params().min_stake,
        )


@pytest.fixture
def market(chain_for: Callable[..., MarketChain], funded_account: Callable[..., LocalSigner]) -> Market:
    return Market(
        operator=chain_for(funded_account()),
        client=chain_for(funded_account()),
        relayer=chain_for(funded_account()),
        verifiers=[chain_for(funded_account()) for _ in range(3)],
        challenger=chain_for(funded_account()),
        hot=LocalSigner.generate(),
        reader=chain_for(None),
    )
