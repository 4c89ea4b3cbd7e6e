"""The gateway over a REAL market: anvil with the contracts, one `moe expert serve` process with two digits
experts, a real client (libp2p, vouchers, receipts) behind the gateway, and plain HTTP calls to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from gateway_fakes import Http
from market_harness import digits_bundle

from market.client import Client, ClientConfig
from market.models.digits import load_digits_split
from market.models.package import load_package
from node.gateway import ClientBackend, Gateway, GatewayConfig
from node.localnet import LocalMarket, NodeSpec

PRICE = 10**12
DEPOSIT = 10**16


@pytest.fixture(scope="module")
def bundle():
    return digits_bundle()


@pytest.fixture(scope="module")
def market_gateway(tmp_path_factory, bundle) -> Iterator[tuple[LocalMarket, Client, Gateway]]:
    workdir = tmp_path_factory.mktemp("gateway-market")
    market = LocalMarket(workdir)
    market.start()
    try:
        market.add_node(NodeSpec("node-a", (bundle.expert_dir(0), bundle.expert_dir(1)), price=PRICE))
        config = ClientConfig(
            deployment=market.deployment_path, account=market.new_account(), state_dir=workdir / "client",
            deadline_s=30.0,
        )
        with Client(config) as client:
            client.deposit(DEPOSIT)
            gateway = Gateway(ClientBackend(client), GatewayConfig(port=0)).start()
            try:
                yield market, client, gateway
            finally:
                gateway.stop()
    finally:
        market.stop()


def test_infer_and_experts_over_http(market_gateway, bundle) -> None:
    market, client, gateway = market_gateway
    http = Http(gateway.url)
    expert_ids = market.nodes["node-a"].expert_ids
    model0 = "0x" + bundle.model_hashes[0].hex()

    status, _, body = http.get("/v1/experts")
    assert status == 200, body
    assert sorted(e["expert_id"] for e in body["experts"]) == sorted(expert_ids)
    by_id = {e["expert_id"]: e for e in body["experts"]}
    assert {e["model_hash"] for e in body["experts"]} == {"0x" + h.hex() for h in bundle.model_hashes[:2]}
    assert all(e["status"] == "active" and e["price"] == str(PRICE) for e in body["experts"])

    x = load_digits_split().x_test[:3]
    status, _, result = http.post(
        "/v1/infer", {"model": model0, "inputs": {"x": x.tolist()}, "redundancy": 1, "deadline_ms": 20_000}
    )
    assert status == 200, result
    expected = load_package(bundle.expert_dir(0)).forward({"x": x})
    assert set(result["outputs"]) == set(expected)
    for name, tensor in expected.items():
        assert torch.allclose(torch.tensor(result["outputs"][name]), tensor, atol=1e-4, rtol=1e-3)
    (receipt,) = result["receipts"]
    assert result["agreeing"] == [receipt["expert_id"]]
    assert by_id[receipt["expert_id"]]["model_hash"] == model0
    assert receipt["model_hash"] == model0 and len(receipt["signature"]) == 2 + 130
    assert result["paid"] == str(PRICE)

    # The call shows up in what the gateway's client saw, and the escrow side agrees.
    status, _, body = http.get(f"/v1/experts?model={model0}")
    assert status == 200
    (expert,) = body["experts"]
    assert expert["seen"]["calls"] >= 1 and expert["seen"]["latency_ms"] is not None
    assert 0 < expert["reputation"] <= 1
    status, _, balances = http.get("/v1/balances")
    assert status == 200
    assert balances["client"] == client.address and balances["escrow"] == str(DEPOSIT)
    assert int(balances["spent"]) == PRICE

    status, _, body = http.post("/v1/infer", {"model": model0, "inputs": {"x": [[0.5] * 63]}})
    assert status == 400 and body["error"]["code"] == "bad_input"
    status, _, body = http.post("/v1/infer", {"model": "0x" + "99" * 32, "inputs": {"x": x.tolist()}})
    assert status == 404 and body["error"]["code"] == "unknown_model"

    status, _, health = http.get("/v1/health")
    assert status == 200 and health["chain_id"] == market.devnet.deployment.chain_id
    assert http.get("/v1/disputes")[0] == 200
