"""Benchmark 7: the remote digits mixture of experts through the market against the local model.

Three expert node processes of three operators each serve the four digits experts (node.localnet); the
client SDK (`market.Client` + `market.RemoteMixtureOfExperts`, the gate kept local) sends the 360-example
test set through the market in one forward: every routed expert slot is one paid, checked call per chunk
of at most 256 rows. Redundancy 1, then redundancy 3 (each call to three operator-distinct experts, the
majority within the model's tolerance wins). Baseline in the same run: the same model's local forward.
Accuracy must be equal: the remote predictions are compared with the local ones example by example.

No target was set for the wall time; the figures say what a remote mixture costs on this machine.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench import TITLES
from bench.env import BenchContext
from bench.report import Figure, Target, figure, not_measured

NAME = "digits"
TITLE = TITLES[NAME]
EQUAL = Target(">=", 1.0, "ratio", "all 360 predictions equal")
DEPOSIT = 10**17
PRICE = 10**12  # what bench.env registers every expert at
REPO = Path(__file__).resolve().parents[1]


def _sdk() -> tuple[Any, Any, Any] | str:
    """(Client, ClientConfig, RemoteMixtureOfExperts), or why the SDK cannot be used."""
    try:
        from market.client import Client, ClientConfig
        from market.moe import RemoteMixtureOfExperts
    except ImportError as exc:
        return f"SDK missing ({exc})"
    return Client, ClientConfig, RemoteMixtureOfExperts


def bundle() -> Any:
    """The trained digits mixture, from the same cache the tests use (trained in seconds on a miss)."""
    from market.models.digits import build_or_load_cached

    return build_or_load_cached(Path(os.environ.get("MOE_CACHE_DIR", REPO / ".moe" / "cache")))


def run(ctx: BenchContext) -> list[Figure]:
    sdk = _sdk()
    if isinstance(sdk, str):
        return [not_measured(NAME, "360 test examples through the market (redundancy 1 and 3)", sdk)]
    Client, ClientConfig, RemoteMixtureOfExperts = sdk
    from bench.latency import torch_threads
    from market.gate import GatePolicy
    from market.models.digits import digits_local_predictions, load_digits_gate, load_digits_split

    repeats = ctx.pick(2, 8)
    digits = bundle()
    split = load_digits_split(0)
    x, y = split.x_test, split.y_test
    started = time.perf_counter()
    ctx.env.digits_nodes(digits, 3)
    ctx.log(f"  (3 digits nodes registered and started in {time.perf_counter() - started:.1f} s)")

    local = digits_local_predictions(digits.model, x)
    # One torch thread, like the nodes: two intra-op threads on two cores shared with four node processes
    # can make a millisecond forward take a hundred times longer.
    with torch.no_grad(), torch_threads(1):
        for _ in range(5):
            digits.model(x)
        local_times = []
        for _ in range(max(20, repeats * 10)):
            t0 = time.perf_counter()
            digits.model(x)
            local_times.append(time.perf_counter() - t0)
    local_s = statistics.median(local_times)
    local_accuracy = float((local.labels == y).double().mean())

    market = ctx.env.market()
    gate, hashes = load_digits_gate(digits.root)
    figures: list[Figure] = []
    for redundancy in (1, 3):
        config = ClientConfig(
            deployment=market.deployment_path,
            account=market.new_account(),
            state_dir=ctx.workdir / "clients" / f"digits-r{redundancy}",
            redundancy=redundancy,
            deadline_s=120.0,
            call_timeout_s=60.0,
            gate=GatePolicy(seed=7),
            seed=7,
        )
        with Client(config) as client:
            client.deposit(DEPOSIT)
            moe = RemoteMixtureOfExperts(gate, hashes, client, k=digits.model.top_k)
            moe(x[:8])  # untimed: fetches the manifests, reads the registry, opens the connections
            calls_before = moe.calls
            times = []
            logits = None
            for _ in range(repeats):
                t0 = time.perf_counter()
                logits = moe(x)
                times.append(time.perf_counter() - t0)
            calls = (moe.calls - calls_before) // repeats
            paid = client.balance().spent
        assert logits is not None
        wall = statistics.median(times)
        predictions = logits.argmax(dim=1)
        equal = int((predictions == local.labels).sum())
        close = bool(torch.allclose(logits, local.logits, atol=1e-4, rtol=1e-3))
        accuracy = float((predictions == y).double().mean())
        figures += [
            figure(NAME, f"360 examples through the market, redundancy {redundancy}", wall, "s",
                   baseline=local_s, baseline_name="local forward of the model",
                   note=f"median of {repeats} forwards after a warm-up; {calls} checked calls per forward (one per "
                        f"routed expert slot) = {calls * redundancy} paid expert calls, 3 nodes; "
                        f"{paid // PRICE} expert calls paid in all, warm-up included"),
            figure(NAME, f"predictions equal to the local model's, redundancy {redundancy}", equal, "count",
                   baseline=len(x), baseline_name="test examples", target=EQUAL,
                   limit="the remote answers differ from the local model beyond the argmax",
                   note=f"{equal}/{len(x)} equal; logits within the model's tolerance: {close}; accuracy "
                        f"{accuracy:.4f} remote vs {local_accuracy:.4f} local"),
            figure(NAME, f"test accuracy through the market, redundancy {redundancy}", accuracy, "probability",
                   baseline=local_accuracy, baseline_name="local model"),
        ]  # fmt: skip
    return figures
