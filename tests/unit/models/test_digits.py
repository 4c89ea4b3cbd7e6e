"""The digits mixture of experts: accuracy, determinism, packing, the gate, the cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from market.manifest import outputs_match
from market.models.digits import (
    DIGITS_TOLERANCE,
    DigitsMoE,
    build_or_load_cached,
    digits_local_predictions,
    load_digits_gate,
    load_digits_moe,
    load_digits_split,
    pack_digits_experts,
    train_digits_moe,
)
from market.models.package import load_package


@pytest.fixture(scope="module")
def trained() -> tuple[DigitsMoE, object]:
    return train_digits_moe()  # the demo's default config


def test_split_is_fixed_and_scaled() -> None:
    a, b = load_digits_split(0), load_digits_split(0)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert float(a.x_train.min()) >= 0.0 and float(a.x_train.max()) <= 1.0
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_test, load_digits_split(1).y_test)


def test_training_reaches_95_percent_quickly(trained: tuple[DigitsMoE, object]) -> None:
    model, metrics = trained
    assert metrics.test_accuracy >= 0.95
    # About 2-3 s on one idle core; the bound leaves room for a CPU shared with other jobs.
    assert metrics.train_seconds < 30
    assert (metrics.num_experts, metrics.hidden, metrics.top_k) == (4, 32, 2)
    assert sum(metrics.expert_usage) == pytest.approx(2.0, abs=1e-3)
    assert all(u > 0.05 for u in metrics.expert_usage), "the balance loss keeps every expert in use"
    split = load_digits_split(0)
    prediction = digits_local_predictions(model, split.x_test)
    assert float((prediction.labels == split.y_test).float().mean()) == pytest.approx(metrics.test_accuracy)


def test_training_restores_global_torch_state() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    train_digits_moe(epochs=1)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.rand(3), expected)


def test_same_seed_gives_the_same_model_hashes(tmp_path: Path) -> None:
    a = pack_digits_experts(train_digits_moe(epochs=2, seed=7)[0], tmp_path / "a")
    b = pack_digits_experts(train_digits_moe(epochs=2, seed=7)[0], tmp_path / "b")
    c = pack_digits_experts(train_digits_moe(epochs=2, seed=8)[0], tmp_path / "c")
    assert [m.model_hash for m in a] == [m.model_hash for m in b]
    assert len({m.model_hash for m in a}) == 4
    assert {m.model_hash for m in a}.isdisjoint(m.model_hash for m in c)


def test_packed_experts_match_the_local_model(trained: tuple[DigitsMoE, object], tmp_path: Path) -> None:
    model, _ = trained
    manifests = pack_digits_experts(model, tmp_path)
    x = load_digits_split(0).x_test
    local = digits_local_predictions(model, x)
    for i, manifest in enumerate(manifests):
        assert manifest.capability == f"digits-expert-{i}"
        assert manifest.architecture == "mlp"
        assert manifest.tolerance == DIGITS_TOLERANCE
        assert [s.to_dict() for s in manifest.inputs] == [
            {"name": "x", "dtype": "float32", "shape": [-1, 64]}
        ]
        assert [s.to_dict() for s in manifest.outputs] == [
            {"name": "logits", "dtype": "float32", "shape": [-1, 10]}
        ]
        expert = load_package(tmp_path / f"expert-{i}", expected_model_hash=manifest.model_hash)
        assert torch.equal(expert.forward({"x": x})["logits"], local.expert_logits[:, i])

    gate, hashes = load_digits_gate(tmp_path)
    assert hashes == [m.model_hash for m in manifests]
    weights, indices = gate(x)
    assert torch.equal(indices, local.expert_indices)
    assert torch.equal(weights, local.gate_weights)

    rebuilt = load_digits_moe(tmp_path)
    assert torch.equal(digits_local_predictions(rebuilt, x).logits, local.logits)


def test_sparse_forward_through_packages_matches_dense(
    trained: tuple[DigitsMoE, object], tmp_path: Path
) -> None:
    """What a remote mixture does: the gate routes, each expert package sees only its rows."""
    model, _ = trained
    pack_digits_experts(model, tmp_path)
    experts = [load_package(tmp_path / f"expert-{i}") for i in range(model.num_experts)]
    calls: list[int] = []

    def call(i: int, rows: torch.Tensor) -> torch.Tensor:
        calls.append(rows.shape[0])
        return experts[i].forward({"x": rows})["logits"]

    x = load_digits_split(0).x_test
    with torch.no_grad():
        sparse = model.sparse_forward(x, call)
    local = digits_local_predictions(model, x)
    assert sum(calls) == 2 * x.shape[0]
    assert outputs_match({"logits": sparse}, {"logits": local.logits}, DIGITS_TOLERANCE)
    assert torch.equal(sparse.argmax(dim=1), local.labels)


def test_cache_trains_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_or_load_cached(tmp_path, epochs=2)
    assert (first.root / "metrics.json").is_file() and first.gate_dir.is_dir()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("market.models.digits.train_digits_moe", no_training)
    second = build_or_load_cached(tmp_path, epochs=2)
    assert second.model_hashes == first.model_hashes
    assert second.metrics == first.metrics
    x = load_digits_split(0).x_test[:20]
    assert torch.equal(second.model(x), first.model(x))
    monkeypatch.undo()
    other = build_or_load_cached(tmp_path, epochs=3)
    assert other.root != first.root and other.model_hashes != first.model_hashes


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    first = build_or_load_cached(tmp_path, epochs=2)
    weights = first.expert_dir(1) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    again = build_or_load_cached(tmp_path, epochs=2)
    assert again.model_hashes == first.model_hashes
    assert load_package(again.expert_dir(1)).model_hash == first.model_hashes[1]
