"""The demo's real model: a mixture of experts trained locally on scikit-learn's digits (8x8 images, 10 classes).

    load_digits_split(seed)        1,437 train / 360 test examples, 64 floats in [0, 1] each
    DigitsMoE                      a linear gate over E expert MLPs (64 -> hidden -> 10 logits), top-k routing
    train_digits_moe(...)          deterministic training (fixed seed, one thread) in a few seconds on a CPU
    pack_digits_experts(model, d)  every expert as its own "mlp" package, plus the gate, which the client keeps
    build_or_load_cached(d, ...)   train once per config, reuse the packages on later runs
    load_digits_moe(d)             the local model rebuilt from packed experts and gate

A remote mixture uses the same pieces: the client runs the gate (`DigitsGate`), sends each example to the
experts it routes to, and combines their logits with the gate's softmax weights (`DigitsMoE.sparse_forward`
does exactly that with any callable in place of the network, which is how tests compare both).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from market.errors import ModelError
from market.manifest import ModelManifest, Tolerance, canonical_json, keccak256
from market.models.architectures import MLP
from market.models.package import load_package, load_safetensors, pack, safetensors_bytes

__all__ = [
    "DIGITS_TOLERANCE",
    "DigitsBundle",
    "DigitsGate",
    "DigitsMetrics",
    "DigitsMoE",
    "DigitsPrediction",
    "DigitsSplit",
    "build_or_load_cached",
    "digits_local_predictions",
    "load_digits_gate",
    "load_digits_moe",
    "load_digits_split",
    "pack_digits_experts",
    "train_digits_moe",
]

log = logging.getLogger(__name__)

IN_FEATURES = 64
NUM_CLASSES = 10
TEST_SIZE = 360
DIGITS_TOLERANCE = Tolerance(atol=1e-4, rtol=1e-3)
GATE_FORMAT = "moe-gate/1"
GATE_DIR = "gate"
GATE_WEIGHTS = "gate.safetensors"
GATE_INFO = "gate.json"
METRICS_FILE = "metrics.json"
# Bump when training changes in a way that changes the weights for the same config.
_CACHE_VERSION = "digits-moe/1"


@dataclass(frozen=True, slots=True)
class DigitsSplit:
    x_train: torch.Tensor  # float32 [1437, 64] in [0, 1]
    y_train: torch.Tensor  # int64 [1437]
    x_test: torch.Tensor  # float32 [360, 64]
    y_test: torch.Tensor  # int64 [360]


def load_digits_split(seed: int = 0, test_size: int = TEST_SIZE) -> DigitsSplit:
    """scikit-learn's digits (shipped with it, nothing downloaded), shuffled by `seed`, split train/test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.data, dtype=np.float32) / np.float32(16.0)
    y = np.asarray(data.target, dtype=np.int64)
    # The legacy RandomState stream is frozen by numpy, so the split is the same everywhere.
    order = np.random.RandomState(seed).permutation(len(x))
    test, train = order[:test_size], order[test_size:]
    return DigitsSplit(
        x_train=torch.from_numpy(x[train].copy()),
        y_train=torch.from_numpy(y[train].copy()),
        x_test=torch.from_numpy(x[test].copy()),
        y_test=torch.from_numpy(y[test].copy()),
    )


def _expert_config(hidden: int) -> dict[str, Any]:
    return {"sizes": [IN_FEATURES, hidden, NUM_CLASSES], "activation": "relu"}


class DigitsGate(nn.Module):
    """The client's half of the mixture: a linear gate that picks `top_k` experts per example."""

    def __init__(self, num_experts: int, top_k: int, in_features: int = IN_FEATURES) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ModelError(f"top_k must be in 1..{num_experts}, got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.linear = nn.Linear(in_features, num_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [N, k] summing to 1, expert indices [N, k]) for each example."""
        logits = self.linear(x)
        top, indices = logits.topk(self.top_k, dim=1)
        return top.softmax(dim=1), indices

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class DigitsMoE(nn.Module):
    """Gate + E expert MLPs; the output is the gate-weighted sum of the chosen experts' logits."""

    def __init__(self, num_experts: int = 4, hidden: int = 32, top_k: int = 2) -> None:
        super().__init__()
        self.hidden = hidden
        self.gate = DigitsGate(num_experts, top_k)
        self.experts = nn.ModuleList(
            MLP([IN_FEATURES, hidden, NUM_CLASSES], "relu") for _ in range(num_experts)
        )

    @property
    def num_experts(self) -> int:
        return self.gate.num_experts

    @property
    def top_k(self) -> int:
        return self.gate.top_k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, indices = self.gate(x)
        # Dense: every expert sees every row. Cheap at this size and it keeps training simple.
        outs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [N, E, C]
        chosen = outs.gather(1, indices[..., None].expand(-1, -1, outs.shape[-1]))  # [N, k, C]
        return (weights[..., None] * chosen).sum(dim=1)

    def sparse_forward(
        self, x: torch.Tensor, call_expert: Callable[[int, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Like `forward`, but each expert i is asked only for the rows routed to it, by ``call_expert(i, rows)``
        (a local expert, or a remote one over the network). Returns the combined logits [N, 10]."""
        weights, indices = self.gate(x)
        out = torch.zeros(x.shape[0], NUM_CLASSES, dtype=x.dtype)
        for expert in indices.unique().tolist():
            rows, slot = (indices == expert).nonzero(as_tuple=True)
            logits = call_expert(expert, x[rows])
            out.index_add_(0, rows, weights[rows, slot][:, None] * logits)
        return out


@dataclass(frozen=True, slots=True)
class DigitsMetrics:
    test_accuracy: float
    train_accuracy: float
    train_seconds: float
    epochs: int
    seed: int
    num_experts: int
    hidden: int
    top_k: int
    expert_usage: tuple[float, ...]  # share of test examples routed to each expert (sums to top_k)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expert_usage"] = list(self.expert_usage)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DigitsMetrics:
        values = dict(d)
        values["expert_usage"] = tuple(values["expert_usage"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class DigitsPrediction:
    logits: torch.Tensor  # [N, 10] combined
    labels: torch.Tensor  # [N] argmax
    gate_weights: torch.Tensor  # [N, k]
    expert_indices: torch.Tensor  # [N, k]
    expert_logits: torch.Tensor  # [N, E, 10], every expert on every row


def digits_local_predictions(model: DigitsMoE, x: torch.Tensor) -> DigitsPrediction:
    """Everything the local model says about `x`, for comparison with a remote mixture's answer."""
    model.eval()
    with torch.no_grad():
        weights, indices = model.gate(x)
        logits = model(x)
        expert_logits = torch.stack([expert(x) for expert in model.experts], dim=1)
    return DigitsPrediction(logits, logits.argmax(dim=1), weights, indices, expert_logits)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).to(torch.float64).mean())


def train_digits_moe(
    num_experts: int = 4,
    hidden: int = 32,
    top_k: int = 2,
    epochs: int = 20,
    seed: int = 0,
    lr: float = 0.01,
    batch_size: int = 64,
    balance: float = 0.1,
) -> tuple[DigitsMoE, DigitsMetrics]:
    """Train a DigitsMoE; the same arguments give bit-identical weights (one thread, fixed seeds).

    `balance` weighs an auxiliary loss that keeps the gate from sending everything to one expert.
    The global torch RNG and thread count are restored afterwards.
    """
    split = load_digits_split(seed)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsMoE(num_experts, hidden, top_k)
            order = torch.Generator().manual_seed(seed)
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            n = split.x_train.shape[0]
            model.train()
            for _ in range(epochs):
                for batch in torch.randperm(n, generator=order).split(batch_size):
                    x, y = split.x_train[batch], split.y_train[batch]
                    importance = model.gate.logits(x).softmax(dim=1).mean(dim=0)
                    loss = F.cross_entropy(model(x), y) + balance * num_experts * (importance**2).sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        model.eval().requires_grad_(False)
        with torch.no_grad():
            _, chosen = model.gate(split.x_test)
        usage = (
            torch.bincount(chosen.reshape(-1), minlength=num_experts).to(torch.float64)
            / split.x_test.shape[0]
        )
        metrics = DigitsMetrics(
            test_accuracy=_accuracy(model, split.x_test, split.y_test),
            train_accuracy=_accuracy(model, split.x_train, split.y_train),
            train_seconds=round(time.perf_counter() - started, 3),
            epochs=epochs,
            seed=seed,
            num_experts=num_experts,
            hidden=hidden,
            top_k=top_k,
            expert_usage=tuple(round(float(u), 4) for u in usage),
        )
    finally:
        torch.set_num_threads(threads)
    log.info("trained digits MoE: test accuracy %.4f in %.2fs", metrics.test_accuracy, metrics.train_seconds)
    return model, metrics


def pack_digits_experts(model: DigitsMoE, out_dir: str | Path) -> list[ModelManifest]:
    """Pack each expert as ``<out_dir>/expert-<i>`` ("mlp", x float32 [N, 64] -> logits float32 [N, 10],
    capability "digits-expert-<i>") and the gate as ``<out_dir>/gate`` (kept by the client, never served)."""
    out = Path(out_dir)
    manifests = []
    for i, expert in enumerate(model.experts):
        manifests.append(
            pack(
                expert,
                "mlp",
                _expert_config(model.hidden),
                inputs=[{"name": "x", "dtype": "float32", "shape": [-1, IN_FEATURES]}],
                outputs=[{"name": "logits", "dtype": "float32", "shape": [-1, NUM_CLASSES]}],
                tolerance=DIGITS_TOLERANCE,
                name=f"digits-expert-{i}",
                capability=f"digits-expert-{i}",
                out_dir=out / f"expert-{i}",
            )
        )
    gate_dir = out / GATE_DIR
    gate_dir.mkdir(parents=True, exist_ok=True)
    weights = safetensors_bytes(model.gate.state_dict())
    (gate_dir / GATE_WEIGHTS).write_bytes(weights)
    info = {
        "format": GATE_FORMAT,
        "in_features": IN_FEATURES,
        "num_experts": model.num_experts,
        "top_k": model.top_k,
        "hidden": model.hidden,
        "experts": [m.model_hash_hex for m in manifests],
        "weights_keccak256": "0x" + keccak256(weights).hex(),
    }
    (gate_dir / GATE_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return manifests


def load_digits_gate(package_root: str | Path) -> tuple[DigitsGate, list[bytes]]:
    """The gate packed by `pack_digits_experts` and the modelHash of each expert, in gate order."""
    gate_dir = Path(package_root) / GATE_DIR
    try:
        info = json.loads((gate_dir / GATE_INFO).read_text())
        weights = (gate_dir / GATE_WEIGHTS).read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelError(f"{gate_dir} does not hold a readable digits gate: {exc}") from exc
    if info.get("format") != GATE_FORMAT:
        raise ModelError(
            f"{gate_dir / GATE_INFO}: format is {info.get('format')!r}, expected {GATE_FORMAT!r}"
        )
    if "0x" + keccak256(weights).hex() != info["weights_keccak256"]:
        raise ModelError(f"{gate_dir / GATE_WEIGHTS} does not match the keccak256 in {GATE_INFO}")
    gate = DigitsGate(int(info["num_experts"]), int(info["top_k"]), int(info["in_features"]))
    gate.load_state_dict(load_safetensors(weights), strict=True)
    gate.eval().requires_grad_(False)
    experts = [bytes.fromhex(h[2:]) for h in info["experts"]]
    if len(experts) != gate.num_experts:
        raise ModelError(f"{GATE_INFO} lists {len(experts)} experts for a gate over {gate.num_experts}")
    return gate, experts


def load_digits_moe(package_root: str | Path) -> DigitsMoE:
    """Rebuild the local DigitsMoE from packed experts and gate (every hash checked)."""
    root = Path(package_root)
    gate, hashes = load_digits_gate(root)
    info = json.loads((root / GATE_DIR / GATE_INFO).read_text())
    model = DigitsMoE(gate.num_experts, int(info["hidden"]), gate.top_k)
    model.gate.load_state_dict(gate.state_dict(), strict=True)
    for i, model_hash in enumerate(hashes):
        loaded = load_package(root / f"expert-{i}", expected_model_hash=model_hash)
        model.experts[i].load_state_dict(loaded.module.state_dict(), strict=True)
    model.eval().requires_grad_(False)
    return model


@dataclass(frozen=True, slots=True)
class DigitsBundle:
    """A trained (or cached) digits mixture and its packages."""

    model: DigitsMoE
    metrics: DigitsMetrics
    manifests: tuple[ModelManifest, ...]
    root: Path  # holds expert-<i>/, gate/ and metrics.json

    def expert_dir(self, i: int) -> Path:
        return self.root / f"expert-{i}"

    @property
    def gate_dir(self) -> Path:
        return self.root / GATE_DIR

    @property
    def model_hashes(self) -> list[bytes]:
        return [m.model_hash for m in self.manifests]


def _load_bundle(root: Path) -> DigitsBundle:
    metrics = DigitsMetrics.from_dict(json.loads((root / METRICS_FILE).read_text()))
    model = load_digits_moe(root)
    manifests = tuple(
        ModelManifest.from_json((root / f"expert-{i}" / "manifest.json").read_bytes())
        for i in range(model.num_experts)
    )
    return DigitsBundle(model, metrics, manifests, root)


def build_or_load_cached(
    cache_dir: str | Path,
    num_experts: int = 4,
    hidden: int = 32,
    top_k: int = 2,
    epochs: int = 20,
    seed: int = 0,
) -> DigitsBundle:
    """Train and pack once per config under ``<cache_dir>/digits-<key>/``; later calls load the packages.

    A cache entry appears whole or not at all (built in a temporary folder, then renamed), so concurrent
    processes may call this at once. A damaged entry is rebuilt.
    """
    config = {
        "version": _CACHE_VERSION,
        "num_experts": num_experts,
        "hidden": hidden,
        "top_k": top_k,
        "epochs": epochs,
        "seed": seed,
    }
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / f"digits-{keccak256(canonical_json(config)).hex()[:16]}"
    if root.is_dir():
        try:
            return _load_bundle(root)
        except (ModelError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("digits cache %s is damaged (%s); rebuilding it", root, exc)
            shutil.rmtree(root, ignore_errors=True)
    model, metrics = train_digits_moe(num_experts, hidden, top_k, epochs, seed)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=cache))
    try:
        pack_digits_experts(model, tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics.to_dict(), indent=2, sort_keys=True) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_bundle(root)
