"""Fixtures of the client's unit tests: a fake market and a way to run an AsyncClient against it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from client_fakes import DEPLOYMENT, ETHER, EVIDENCE_ENDPOINT, Market

from market.chain.signer import LocalSigner
from market.client import AsyncClient, ClientConfig
from market.gate import GatePolicy


@pytest.fixture
def market() -> Market:
    m = Market()
    m.chain.balance = ETHER
    return m


@pytest.fixture
def account() -> LocalSigner:
    return LocalSigner.generate()


@pytest.fixture
def config_for(tmp_path: Path, account: LocalSigner) -> Callable[..., ClientConfig]:
    def make(**overrides: Any) -> ClientConfig:
        values: dict[str, Any] = dict(
            deployment=DEPLOYMENT,
            account=account,
            state_dir=tmp_path / "state",
            evidence_endpoint=EVIDENCE_ENDPOINT,
            gate=GatePolicy.greedy(seed=1),
            deadline_s=10.0,
            call_timeout_s=5.0,
            seed=1,
        )
        values.update(overrides)
        return ClientConfig(**values)

    return make


@pytest.fixture
def with_client(market: Market, config_for: Callable[..., ClientConfig]) -> Callable[..., Any]:
    """with_client(body, **config): runs `await body(client)` inside a trio run, returns its result."""

    def run(body: Callable[[AsyncClient], Awaitable[Any]], **overrides: Any) -> Any:
        config = config_for(**overrides)

        async def main() -> Any:
            with trio.fail_after(30):
                async with AsyncClient.open(config, chain=market.chain, link=market.link, serve=False) as client:
                    return await body(client)

        return trio.run(main)

    return run
