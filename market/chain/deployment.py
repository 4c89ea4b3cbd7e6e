"""Saving and loading the deployment file: where the market lives (chain, RPC URL, contract addresses).

`moe devnet up` and `moe deploy` write it; every other command reads it. The JSON looks like

    {"format": 1, "chain_id": 31337, "rpc_url": "http://127.0.0.1:8545",
     "registry": "0x..", "escrow": "0x..", "disputes": "0x..", "block": 3,
     "params": {"min_stake": 1000000000000000000, ...}}

`params` records the constructor arguments the contracts were deployed with (informational: the chain is
the source of truth). Loading checks every field and says which one is wrong.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from market.errors import MarketConfigError
from market.types import Deployment

FORMAT = 1
_ADDRESS_FIELDS = ("registry", "escrow", "disputes")


def deployment_to_dict(deployment: Deployment, params: Mapping[str, int] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": FORMAT,
        "chain_id": deployment.chain_id,
        "rpc_url": deployment.rpc_url,
        "registry": deployment.registry,
        "escrow": deployment.escrow,
        "disputes": deployment.disputes,
        "block": deployment.block,
    }
    if params is not None:
        data["params"] = {k: int(v) for k, v in params.items()}
    return data


def deployment_from_dict(data: Mapping[str, Any], source: str = "deployment") -> Deployment:
    """A Deployment from parsed JSON; MarketConfigError naming the bad field."""
    if not isinstance(data, Mapping):
        raise MarketConfigError(f"{source}: expected a JSON object")
    missing = [k for k in ("chain_id", "rpc_url", *_ADDRESS_FIELDS, "block") if k not in data]
    if missing:
        raise MarketConfigError(f"{source}: missing field(s) {', '.join(missing)}")
    for key in ("chain_id", "block"):
        if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0:
            raise MarketConfigError(f"{source}: {key} must be a non-negative integer, got {data[key]!r}")
    rpc_url = data["rpc_url"]
    if not isinstance(rpc_url, str) or not rpc_url.startswith(("http://", "https://")):
        raise MarketConfigError(f"{source}: rpc_url must be an http(s) URL, got {rpc_url!r}")
    addresses = {}
    for key in _ADDRESS_FIELDS:
        value = data[key]
        if not isinstance(value, str) or not is_address(value):
            raise MarketConfigError(f"{source}: {key} must be a 0x-prefixed contract address, got {value!r}")
        addresses[key] = to_checksum_address(value)
    return Deployment(chain_id=data["chain_id"], rpc_url=rpc_url, block=data["block"], **addresses)


def save_deployment(
    path: str | Path, deployment: Deployment, params: Mapping[str, int] | None = None
) -> Path:
    """Writes the deployment file atomically (write to a temp file, then rename) and returns its path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(deployment_to_dict(deployment, params), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MarketConfigError(
            f"no deployment file at {path}: start a local chain with `moe devnet up` or deploy with `moe deploy`"
        ) from None
    except OSError as exc:
        raise MarketConfigError(f"cannot read deployment file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MarketConfigError(f"deployment file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MarketConfigError(f"deployment file {path}: expected a JSON object")
    return path, data


def load_deployment(path: str | Path) -> Deployment:
    """The Deployment saved at `path`."""
    path, data = _read(path)
    return deployment_from_dict(data, source=f"deployment file {path}")


def load_deployment_params(path: str | Path) -> dict[str, int]:
    """The constructor parameters recorded with the deployment at `path` (empty when none were recorded)."""
    path, data = _read(path)
    params = data.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, int) for v in params.values()):
        raise MarketConfigError(f"deployment file {path}: params must map names to integers")
    return dict(params)
