"""Fixtures for the HTTP gateway tests: a fake market backend and a gateway serving it on a free 127.0.0.1 port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_fakes import FakeBackend, Http

from node.gateway.app import Gateway, GatewayConfig


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def gateway_config() -> GatewayConfig:
    return GatewayConfig(port=0, max_body_bytes=64 * 1024, max_concurrent_infer=2, read_workers=2)


@pytest.fixture
def gateway(fake: FakeBackend, gateway_config: GatewayConfig) -> Iterator[Gateway]:
    gw = Gateway(fake, gateway_config).start()
    try:
        yield gw
    finally:
        if fake.block is not None:
            fake.block.set()  # let blocked workers finish before the gateway goes
        gw.stop()


@pytest.fixture
def http(gateway: Gateway) -> Http:
    return Http(gateway.url)
