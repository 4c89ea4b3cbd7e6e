"""A real market for the client's integration tests: anvil, the contracts, and three expert node processes
serving digits expert 0: "a" (honest, cheapest), "b" (honest) and "c" (perturbs its outputs, priciest)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from market_harness import digits_bundle

from market.chain.signer import LocalSigner
from market.client import Client, ClientConfig
from market.gate import GatePolicy
from market.models.digits import DigitsBundle
from node.localnet import LocalMarket, NodeSpec

PRICES = {"a": 10**12, "b": 2 * 10**12, "c": 3 * 10**12}


@pytest.fixture(scope="session")
def prices() -> dict[str, int]:
    """Price per call of each node's expert (test modules take it from here, not by importing conftest)."""
    return dict(PRICES)


@pytest.fixture(scope="session")
def bundle() -> DigitsBundle:
    return digits_bundle()


@pytest.fixture(scope="session")
def market(tmp_path_factory: pytest.TempPathFactory, bundle: DigitsBundle) -> Iterator[LocalMarket]:
    workdir = tmp_path_factory.mktemp("client-market")
    market = LocalMarket(workdir)
    market.start()
    try:
        for name, behaviour in (("a", "honest"), ("b", "honest"), ("c", "perturb")):
            market.add_node(NodeSpec(name, (bundle.expert_dir(0),), behaviour=behaviour, price=PRICES[name]), start=False)
        for name in PRICES:
            market.start_node(name, wait=False)
        for name in PRICES:
            market.wait_ready(name)
        yield market
    finally:
        market.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def open_client(market: LocalMarket, tmp_path: Any) -> Iterator[Any]:
    """open_client(account=None, name="client", **config) -> a started Client (closed after the test)."""
    opened: list[Client] = []

    def make(account: LocalSigner | None = None, name: str = "client", **config: Any) -> Client:
        assert market.deployment_path is not None
        settings: dict[str, Any] = dict(
            deployment=market.deployment_path,
            account=account or market.new_account(),
            state_dir=tmp_path / name,
            gate=GatePolicy.greedy(),
            deadline_s=60.0,
            call_timeout_s=20.0,
        )
        settings.update(config)
        client = Client(ClientConfig(**settings))
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.close()
