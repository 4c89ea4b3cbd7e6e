"""The blocking Client: same calls as the trio core from plain code, from other threads and from asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import torch
from client_fakes import PRICE, WEIGHTS, Market

from market.client import Client, ClientClosedError, ClientConfig
from market.errors import MarketConfigError, MarketInputError, NoExpertError

X = torch.arange(8, dtype=torch.float32).reshape(2, 4)


def open_client(market: Market, config: ClientConfig) -> Client:
    return Client(config, chain=market.chain, link=market.link, serve=False)


def test_blocking_calls(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    market.add_expert()
    with open_client(market, config_for()) as client:
        client.deposit(5 * PRICE)
        result = client.infer(market.model_hash, {"x": X})
        assert torch.allclose(result.output(), X @ WEIGHTS)
        balance = client.balance()
        assert balance.spent == PRICE and balance.in_flight == 0
        assert balance.escrow == market.chain.balance
        assert balance.available == market.chain.balance - PRICE
        assert [e.expert_id for e in client.experts(market.model_hash)] == [1]
        assert client.paid == PRICE
        assert client.manifest(market.model_hash) == market.manifest
    assert client.closed
    assert market.chain.deposits == [5 * PRICE]


def test_errors_come_out_as_themselves(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    market.add_expert()
    with open_client(market, config_for()) as client:
        with pytest.raises(MarketInputError, match="shape"):
            client.infer(market.model_hash, {"x": torch.zeros(1, 3)})
        with pytest.raises(NoExpertError):
            client.infer(b"\x09" * 32, {"x": X})
        # the client still works after an error
        assert client.infer(market.model_hash, {"x": X}).agreeing == (1,)


def test_calls_from_many_threads(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    for _ in range(2):
        market.add_expert()
    errors: list[BaseException] = []
    with open_client(market, config_for()) as client:

        def worker() -> None:
            try:
                for _ in range(5):
                    client.infer(market.model_hash, {"x": X})
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert client.balance().spent == 20 * PRICE


def test_from_inside_an_asyncio_program(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    market.add_expert()

    async def app() -> list[torch.Tensor]:
        client = await asyncio.to_thread(open_client, market, config_for())
        try:
            results = await asyncio.gather(
                *(asyncio.to_thread(client.infer, market.model_hash, {"x": X}) for _ in range(3))
            )
            return [r.output() for r in results]
        finally:
            await asyncio.to_thread(client.close)

    outputs = asyncio.run(app())
    assert len(outputs) == 3 and all(torch.allclose(o, X @ WEIGHTS) for o in outputs)


def test_closed_client_refuses_calls(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    client = open_client(market, config_for())
    client.close()
    client.close()  # idempotent
    with pytest.raises(ClientClosedError):
        client.balance()


def test_start_up_errors_are_raised_by_the_constructor(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    config = config_for(account=None)
    with pytest.raises(MarketConfigError, match="no client account"):
        open_client(market, config)


def test_one_state_directory_per_process(market: Market, config_for: Callable[..., ClientConfig]) -> None:
    config = config_for()
    with open_client(market, config), pytest.raises(MarketConfigError, match="another process"):
        open_client(market, config)
