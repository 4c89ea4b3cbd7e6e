"""Fixtures for expert-node integration tests: a devnet with one real node process serving digits experts."""

from __future__ import annotations

import pytest
from market_harness import digits_bundle

from node.localnet import LocalMarket, NodeSpec


@pytest.fixture(scope="session")
def bundle():
    return digits_bundle()


@pytest.fixture(scope="module")
def one_node_market(tmp_path_factory, bundle):
    market = LocalMarket(tmp_path_factory.mktemp("node-market"))
    market.start()
    try:
        market.add_node(NodeSpec("node-a", (bundle.expert_dir(0), bundle.expert_dir(1)), price=10**12))
        yield market
    finally:
        market.stop()
