"""market.moe over fake nodes: the remote mixture computes what the local DigitsMoE computes, and pays per call."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import trio
from client_fakes import PRICE, Market

from market.client import AsyncClient, Client, ClientConfig
from market.errors import MarketInputError
from market.manifest import ModelManifest, TensorSchema, Tolerance, WeightsRef
from market.models.digits import DigitsMoE
from market.moe import RemoteExpert, RemoteMixtureOfExperts


def expert_manifest(i: int) -> ModelManifest:
    return ModelManifest(
        name=f"digits-expert-{i}",
        architecture="mlp",
        config={"sizes": [64, 8, 10], "activation": "relu"},
        weights=WeightsRef(keccak256=bytes([i]) * 32, size=0),
        inputs=(TensorSchema("x", "float32", (-1, 64)),),
        outputs=(TensorSchema("logits", "float32", (-1, 10)),),
        tolerance=Tolerance(atol=1e-4, rtol=1e-3),
        capability=f"digits-expert-{i}",
    )


@pytest.fixture
def local_model() -> DigitsMoE:
    torch.manual_seed(3)
    return DigitsMoE(num_experts=4, hidden=8, top_k=2).eval().requires_grad_(False)


@pytest.fixture
def served(market: Market, local_model: DigitsMoE) -> list[bytes]:
    hashes = []
    for i, expert in enumerate(local_model.experts):
        manifest = expert_manifest(i)

        def fn(inputs: dict[str, torch.Tensor], expert: torch.nn.Module = expert) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return {"logits": expert(inputs["x"])}

        for _ in range(2):  # two experts (of different operators) per model
            market.add_expert(manifest=manifest, fn=fn)
        hashes.append(manifest.model_hash)
    return hashes


def test_remote_mixture_equals_the_local_model(
    market: Market, config_for: Callable[..., ClientConfig], local_model: DigitsMoE, served: list[bytes]
) -> None:
    x = torch.rand(50, 64)
    with Client(config_for(max_rows_per_call=16), chain=market.chain, link=market.link, serve=False) as client:
        moe = RemoteMixtureOfExperts(local_model.gate, served, client, k=2)
        out = moe(x)
        calls, paid = moe.calls, moe.paid
        spent = client.balance().spent
    with torch.no_grad():
        expected = local_model(x)
        sparse = local_model.sparse_forward(x, lambda i, rows: local_model.experts[i](rows))
    # Same arithmetic as sparse_forward; matmuls over other row counts may differ in the last bit.
    assert torch.allclose(out, sparse, atol=1e-6, rtol=0)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out.argmax(1), expected.argmax(1))
    assert not out.requires_grad
    # Each slot with rows is one call per chunk of at most 16 rows.
    _, indices = local_model.gate(x)
    expected_calls = sum(-(-int((indices == e).sum()) // 16) for e in indices.unique().tolist())
    assert calls == expected_calls and paid == calls * PRICE == spent


def test_gradients_reach_the_local_gate_only(
    market: Market, config_for: Callable[..., ClientConfig], local_model: DigitsMoE, served: list[bytes]
) -> None:
    gate = local_model.gate.requires_grad_(True)
    x = torch.rand(10, 64)
    with Client(config_for(), chain=market.chain, link=market.link, serve=False) as client:
        out = RemoteMixtureOfExperts(gate, served, client, k=2)(x)
        out.sum().backward()
    assert gate.linear.weight.grad is not None and gate.linear.weight.grad.abs().sum() > 0


def test_remote_expert_splits_into_chunks(
    market: Market, config_for: Callable[..., ClientConfig], local_model: DigitsMoE, served: list[bytes]
) -> None:
    x = torch.rand(37, 64)
    with Client(config_for(), chain=market.chain, link=market.link, serve=False) as client:
        expert = RemoteExpert(client, served[1], max_rows=10)
        out = expert(x)
        assert expert.calls == 4 and expert.paid == 4 * PRICE
        empty = expert(torch.zeros(0, 64))
    assert torch.allclose(out, local_model.experts[1](x), atol=1e-6)
    assert empty.shape == (0, 10)


def test_async_forward(
    market: Market, config_for: Callable[..., ClientConfig], local_model: DigitsMoE, served: list[bytes]
) -> None:
    x = torch.rand(20, 64)

    async def main() -> torch.Tensor:
        async with AsyncClient.open(config_for(), chain=market.chain, link=market.link, serve=False) as client:
            moe = RemoteMixtureOfExperts(local_model.gate, served, client, k=2)
            with pytest.raises(MarketInputError, match="forward_async"):
                moe(x)
            return await moe.forward_async(x)

    out = trio.run(main)
    with torch.no_grad():
        assert torch.equal(out.argmax(1), local_model(x).argmax(1))


def test_gate_given_as_logits(
    market: Market, config_for: Callable[..., ClientConfig], local_model: DigitsMoE, served: list[bytes]
) -> None:
    x = torch.rand(12, 64)
    with Client(config_for(), chain=market.chain, link=market.link, serve=False) as client:
        out = RemoteMixtureOfExperts(local_model.gate.linear, served, client, k=2)(x)
    with torch.no_grad():
        assert torch.allclose(out, local_model(x), atol=1e-6)


def test_bad_arguments(market: Market, config_for: Callable[..., ClientConfig], served: list[bytes]) -> None:
    with Client(config_for(), chain=market.chain, link=market.link, serve=False) as client:
        with pytest.raises(MarketInputError, match="k must be"):
            RemoteMixtureOfExperts(torch.nn.Linear(64, 4), served, client, k=5)
        with pytest.raises(MarketInputError, match="outside"):
            RemoteMixtureOfExperts(torch.nn.Linear(64, 6), served, client, k=2)(torch.rand(3, 64) * 100)
