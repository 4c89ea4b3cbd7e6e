"""Helpers of the gateway tests: a fake market backend (for these tests only) and a small blocking HTTP client
(urllib) that returns (status, headers, body). A module of its own, not conftest.py: several conftest modules
share that name, so importing from one is ambiguous."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from market.errors import MarketInputError, NoExpertError
from node.gateway.bridge import TensorInput, UnknownModelError, cast_to_schema, outputs_json

MODEL = "0x" + "11" * 32
OTHER_MODEL = "0x" + "22" * 32  # registered, but its only expert is over any max_price the tests give
UNKNOWN_MODEL = "0x" + "99" * 32
PRICE = 10**9
WAIT_S = 30.0  # generous: how long a test waits for a thread to reach a point, never asserted on


@dataclass(frozen=True, slots=True)
class _Schema:
    name: str
    dtype: str


def _expert(expert_id: int, model: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    base = {
        "expert_id": expert_id,
        "operator": "0x" + f"{expert_id:040x}",
        "signer": "0x" + f"{expert_id + 100:040x}",
        "model_hash": model,
        "capability": "0x" + "00" * 32,
        "price": str(PRICE),
        "stake": str(10**18),
        "status": status,
        "registered_at": 1_700_000_000,
        "unbonds_at": 0,
        "disputes_lost": 0,
        "open_disputes": 0,
        "slashed": "0",
        "volume": "0",
        "endpoint": ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWfake"],
        "reputation": 0.5,
        "seen": {"calls": 0, "successes": 0, "failures": 0, "timeouts": 0, "agreements": 0,
                 "disagreements": 0, "latency_ms": None},
    }
    base.update(extra)
    return base


@dataclass
class FakeBackend:
    """A market in memory: model MODEL takes x: float32 [batch, 4] and answers y = 2x, from experts 1-3.

    `block` makes infer wait (for the concurrency and timeout tests); `entered` counts calls that reached
    the backend; `fail_with` makes the next infer calls raise it.
    """

    experts_list: list[dict[str, Any]] = field(default_factory=lambda: [
        _expert(1, MODEL, reputation=0.9, seen={"calls": 3, "successes": 3, "failures": 0, "timeouts": 0,
                                               "agreements": 2, "disagreements": 0, "latency_ms": 4.5}),
        _expert(2, MODEL),
        _expert(3, MODEL, status="unbonding"),
        _expert(4, OTHER_MODEL, price=str(10**20)),
    ])
    fail_with: BaseException | None = None
    stats_fail_with: BaseException | None = None
    block: threading.Event | None = None
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    calls: list[dict[str, Any]] = field(default_factory=list)

    def infer(self, model_hash: bytes, inputs: Mapping[str, TensorInput], *, redundancy, max_price, deadline_s):
        import torch

        self.entered.release()
        if self.block is not None:
            self.block.wait(WAIT_S)
        if self.fail_with is not None:
            raise self.fail_with
        model = "0x" + model_hash.hex()
        if model not in {e["model_hash"] for e in self.experts_list}:
            raise UnknownModelError(f"no expert is registered for model {model}")
        if model == OTHER_MODEL:
            raise NoExpertError("every expert of the model costs more than max_price")
        tensors = cast_to_schema(inputs, [_Schema("x", "float32")])
        if set(tensors) != {"x"}:
            raise MarketInputError(f"the model takes one input x, got {', '.join(sorted(tensors))}")
        x = tensors["x"]
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] != 4:
            raise MarketInputError(f"x must be float32 (batch, 4), got {str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}")
        self.calls.append({"model": model, "redundancy": redundancy, "max_price": max_price, "deadline_s": deadline_s})
        outputs, specs = outputs_json({"y": x * 2})
        r = redundancy or 1
        return {
            "model": model,
            "request_id": "0x" + "ab" * 32,
            "outputs": outputs,
            "output_specs": specs,
            "agreeing": list(range(1, r + 1)),
            "receipts": [
                {"expert_id": i, "model_hash": model, "request_id": "0x" + "ab" * 32, "input_hash": "0x" + "01" * 32,
                 "output_hash": "0x" + "02" * 32, "price": str(PRICE), "signature": "0x" + "1b" * 65}
                for i in range(1, r + 1)
            ],
            "paid": str(PRICE * r),
            "latency_ms": 1.0,
            "failures": [],
            "evidence": [],
            "disputes": [],
            "audited": False,
            "escalated": False,
        }

    def experts(self, model_hash: bytes | None = None) -> list[dict[str, Any]]:
        if model_hash is None:
            return list(self.experts_list)
        return [e for e in self.experts_list if e["model_hash"] == "0x" + model_hash.hex()]

    def disputes(self, limit: int = 100) -> list[dict[str, Any]]:
        items = [
            {"dispute_id": 2, "expert_id": 3, "challenger": "0x" + "aa" * 20, "mine": True, "status": "open",
             "bond": str(10**16), "model_hash": MODEL, "request_id": "0x" + "cd" * 32, "commit_ends": 0,
             "reveal_ends": 0, "voters": 1, "guilty_stake": str(10**18), "innocent_stake": "0", "slashed": "0"},
            {"dispute_id": 1, "expert_id": 2, "challenger": "0x" + "bb" * 20, "mine": False, "status": "innocent",
             "bond": str(10**16), "model_hash": MODEL, "request_id": "0x" + "ce" * 32, "commit_ends": 0,
             "reveal_ends": 0, "voters": 2, "guilty_stake": "0", "innocent_stake": str(2 * 10**18), "slashed": "0"},
        ]
        return items[:limit]

    def balances(self) -> dict[str, Any]:
        return {"client": "0x" + "aa" * 20, "escrow": str(10**17), "withdraw_pending": "0", "withdrawable_at": 0,
                "spent": str(3 * PRICE), "redeemed": "0", "unredeemed": str(3 * PRICE), "in_flight": "0",
                "available": str(10**17 - 3 * PRICE), "spent_per_expert": {"1": str(3 * PRICE)},
                "claimable": "0", "gas_balance": str(10**18)}

    def stats(self) -> dict[str, Any]:
        if self.stats_fail_with is not None:
            raise self.stats_fail_with
        return {"client": "0x" + "aa" * 20, "chain_id": 31337, "block": 7, "experts": 4, "experts_active": 3,
                "disputes": {"open": 1, "innocent": 1}}


@dataclass
class Http:
    """Blocking JSON-over-HTTP calls to one gateway."""

    base: str

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, Mapping[str, str], Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=dict(headers or {}))
        if data is not None and "Content-Type" not in req.headers:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.headers, _decode(resp.headers, resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, _decode(exc.headers, exc.read())

    def get(self, path: str) -> tuple[int, Mapping[str, str], Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Mapping[str, str], Any]:
        return self.request("POST", path, body, **kwargs)


def _decode(headers: Mapping[str, str], data: bytes) -> Any:
    if (headers.get("Content-Type") or "").startswith("application/json"):
        return json.loads(data)
    return data.decode("utf-8", "replace")
