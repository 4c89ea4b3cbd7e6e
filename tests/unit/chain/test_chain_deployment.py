"""The deployment file: round trip, and a clear error for each way it can be missing or wrong."""

from __future__ import annotations

import json

import pytest

from market.chain.deployment import load_deployment, load_deployment_params, save_deployment
from market.chain.params import MarketParams
from market.errors import MarketConfigError
from market.types import Deployment

DEPLOYMENT = Deployment(
    chain_id=31337,
    rpc_url="http://127.0.0.1:8545",
    registry="0x5FbDB2315678afecb367f032d93F642f64180aa3",
    escrow="0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    disputes="0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0",
    block=1,
)


def test_roundtrip_with_params(tmp_path) -> None:
    path = save_deployment(tmp_path / "sub" / "deployment.json", DEPLOYMENT, MarketParams.devnet().as_dict())
    assert load_deployment(path) == DEPLOYMENT
    assert MarketParams(**load_deployment_params(path)) == MarketParams.devnet()
    assert not list(path.parent.glob("*.tmp"))


def test_lowercase_addresses_are_checksummed(tmp_path) -> None:
    path = tmp_path / "d.json"
    data = json.loads(save_deployment(path, DEPLOYMENT).read_text())
    data["escrow"] = data["escrow"].lower()
    path.write_text(json.dumps(data))
    assert load_deployment(path).escrow == DEPLOYMENT.escrow
    assert load_deployment_params(path) == {}


def test_missing_file_says_what_to_run(tmp_path) -> None:
    with pytest.raises(MarketConfigError, match="moe devnet up"):
        load_deployment(tmp_path / "nothing.json")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("escrow"), "missing field"),
        (lambda d: d.update(registry="0x1234"), "registry must be"),
        (lambda d: d.update(chain_id="31337"), "chain_id"),
        (lambda d: d.update(block=-1), "block"),
        (lambda d: d.update(rpc_url="ws://x"), "rpc_url"),
    ],
)
def test_bad_fields_are_named(tmp_path, mutate, message) -> None:
    path = tmp_path / "d.json"
    data = json.loads(save_deployment(path, DEPLOYMENT).read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(MarketConfigError, match=message):
        load_deployment(path)


def test_not_json_or_not_an_object(tmp_path) -> None:
    path = tmp_path / "d.json"
    path.write_text("{")
    with pytest.raises(MarketConfigError, match="not valid JSON"):
        load_deployment(path)
    path.write_text("[]")
    with pytest.raises(MarketConfigError, match="JSON object"):
        load_deployment(path)
