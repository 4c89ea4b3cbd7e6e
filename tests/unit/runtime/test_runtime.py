"""The batching runtime: batches under concurrency, per-request results and errors, BUSY, close, trio."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import trio
from torch import nn

from market.errors import ExpertBusyError, MarketConfigError, MarketInputError, ModelError
from market.manifest import ModelManifest, TensorSchema, Tolerance, WeightsRef, outputs_match
from market.models.architectures import MLP
from market.models.package import LoadedModel, load_package, pack
from node.runtime import ModelRuntime, RuntimeClosedError

BLOCK = 1234.0  # x[:, 0] == BLOCK: the forward waits until released
FAIL = -999.0  # x[:, 0] == FAIL: the forward raises


class Gated(nn.Module):
    """A tiny model with hooks to hold the runtime thread and to fail on purpose."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batch_rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_rows.append(x.shape[0])
        if bool((x[:, 0] == BLOCK).any()):
            self.entered.set()
            assert self.release.wait(10)
        if bool((x[:, 0] == FAIL).any()):
            raise ValueError("poisoned input")
        return self.linear(x)


def gated_model(width: int = 4) -> tuple[LoadedModel, Gated]:
    module = Gated()
    manifest = ModelManifest(
        name="gated",
        architecture="mlp",
        config={"sizes": [4, 2], "activation": "relu"},
        weights=WeightsRef(keccak256=b"\x00" * 32, size=0),
        inputs=(TensorSchema("x", "float32", (-1, width)),),
        outputs=(TensorSchema("y", "float32", (-1, 2)),),
        tolerance=Tolerance(1e-5, 1e-4),
        capability="test",
    )
    return LoadedModel(manifest, module), module


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("mlp")
    pack(
        MLP([64, 128, 128, 10], "gelu"),
        "mlp",
        {"sizes": [64, 128, 128, 10], "activation": "gelu"},
        [{"name": "x", "dtype": "float32", "shape": [-1, 64]}],
        [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
        (1e-4, 1e-3),
        "runtime-test",
        "runtime-test",
        out,
    )
    return load_package(out)


def inputs(rows: int, seed: int) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(rows, 64, generator=torch.Generator().manual_seed(seed))}


def hold(runtime: ModelRuntime, module: Gated):  # noqa: ANN201
    """Occupy the runtime thread with a blocking request; returns its future."""
    future = runtime.submit({"x": torch.full((1, 4), BLOCK)})
    assert module.entered.wait(5)
    return future


def test_concurrent_submissions_are_batched_and_match_single_forwards(mlp_model: LoadedModel) -> None:
    requests = [inputs(1 + i % 3, seed=i) for i in range(96)]
    with ModelRuntime(mlp_model, max_batch=32, max_wait_ms=20) as runtime:
        with ThreadPoolExecutor(8) as pool:
            futures = list(pool.map(runtime.submit, requests))
        results = [f.result(timeout=10) for f in futures]
        stats = runtime.stats()
    assert stats.requests == 96 and stats.rows == sum(r["x"].shape[0] for r in requests)
    assert stats.batches < 96 and stats.mean_batch_size > 1
    assert stats.errors == 0 and stats.queued == 0
    for request, result in zip(requests, results, strict=True):
        single = mlp_model.forward(request)
        assert result["logits"].shape == (request["x"].shape[0], 10)
        assert outputs_match(result, single, mlp_model.manifest.tolerance)


def test_batches_never_exceed_max_batch_rows_but_a_big_request_runs_alone() -> None:
    model, module = gated_model()
    with ModelRuntime(model, max_batch=8, max_wait_ms=50) as runtime:
        blocker = hold(runtime, module)
        small = [runtime.submit({"x": torch.rand(3, 4)}) for _ in range(6)]
        big = runtime.submit({"x": torch.rand(20, 4)})
        module.release.set()
        for f in [blocker, *small, big]:
            f.result(timeout=5)
    assert module.batch_rows[0] == 1
    assert max(module.batch_rows[1:]) == 20
    assert sorted(module.batch_rows[1:]) == [6, 6, 6, 20]


def test_full_queue_answers_busy() -> None:
    model, module = gated_model()
    with ModelRuntime(model, max_queue=3) as runtime:
        blocker = hold(runtime, module)
        queued = [runtime.submit({"x": torch.rand(1, 4)}) for _ in range(3)]
        with pytest.raises(ExpertBusyError) as info:
            runtime.submit({"x": torch.rand(1, 4)})
        assert info.value.code == "BUSY"
        assert runtime.stats().rejected == 1 and runtime.queued == 3
        # A cancelled request frees its place.
        assert queued[0].cancel()
        extra = runtime.submit({"x": torch.rand(1, 4)})
        module.release.set()
        assert blocker.result(timeout=5) and extra.result(timeout=5)
        assert all(f.result(timeout=5)["y"].shape == (1, 2) for f in queued[1:])


def test_an_error_reaches_only_its_own_request() -> None:
    model, module = gated_model()
    with ModelRuntime(model, max_batch=32, max_wait_ms=50) as runtime:
        blocker = hold(runtime, module)
        good = [runtime.submit({"x": torch.rand(2, 4)}) for _ in range(4)]
        bad = runtime.submit({"x": torch.tensor([[FAIL, 0.0, 0.0, 0.0]])})
        more = [runtime.submit({"x": torch.rand(1, 4)}) for _ in range(3)]
        module.release.set()
        blocker.result(timeout=5)
        with pytest.raises(ModelError, match="poisoned input") as info:
            bad.result(timeout=5)
        assert isinstance(info.value.__cause__, ValueError)
        for f in good + more:
            assert f.result(timeout=5)["y"].shape[1] == 2
        assert runtime.stats().errors == 1
        # The runtime keeps serving afterwards.
        assert runtime.submit({"x": torch.rand(1, 4)}).result(timeout=5)["y"].shape == (1, 2)
    assert 12 in module.batch_rows  # the mixed batch was tried whole first


def test_bad_inputs_are_refused_at_submit(mlp_model: LoadedModel) -> None:
    with ModelRuntime(mlp_model) as runtime:
        with pytest.raises(MarketInputError):
            runtime.submit({"x": torch.rand(2, 63)})
        with pytest.raises(MarketInputError):
            runtime.submit({"x": torch.rand(2, 64, dtype=torch.float64)})
        assert runtime.stats().requests == 0


def test_close_fails_pending_requests_and_finishes_the_running_one() -> None:
    model, module = gated_model()
    runtime = ModelRuntime(model)
    blocker = hold(runtime, module)
    pending = [runtime.submit({"x": torch.rand(1, 4)}) for _ in range(3)]
    closer = threading.Thread(target=runtime.close)
    closer.start()
    for f in pending:
        with pytest.raises(RuntimeClosedError, match="closed before this request ran"):
            f.result(timeout=5)
    module.release.set()
    closer.join(5)
    assert not closer.is_alive()
    assert blocker.result(timeout=5)["y"].shape == (1, 2)
    with pytest.raises(RuntimeClosedError):
        runtime.submit({"x": torch.rand(1, 4)})
    runtime.close()  # twice is fine
    assert runtime.closed


def test_requests_with_different_variable_dims_are_not_concatenated() -> None:
    class RowSum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[int, ...]] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(tuple(x.shape))
            return x.sum(dim=1, keepdim=True)

    module = RowSum()
    manifest = ModelManifest(
        name="rowsum",
        architecture="mlp",
        config={},
        weights=WeightsRef(keccak256=b"\x00" * 32, size=0),
        inputs=(TensorSchema("x", "float32", (-1, -1)),),
        outputs=(TensorSchema("s", "float32", (-1, 1)),),
        tolerance=Tolerance(1e-5, 1e-5),
        capability="test",
    )
    requests = [torch.ones(1, 3 + i % 2) for i in range(10)]
    with ModelRuntime(LoadedModel(manifest, module), max_wait_ms=50) as runtime:
        futures = [runtime.submit({"x": x}) for x in requests]
        results = [f.result(timeout=5)["s"] for f in futures]
    assert [float(r) for r in results] == [3.0 + i % 2 for i in range(10)]
    assert all(len(shape) == 2 for shape in module.seen)
    assert {shape[1] for shape in module.seen} == {3, 4}


def test_runtime_thread_uses_its_own_thread_count(mlp_model: LoadedModel) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    model, module = gated_model()
    original = module.forward

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return original(x)

    module.forward = spy  # type: ignore[method-assign]
    with ModelRuntime(model, threads=1) as runtime:
        runtime.submit({"x": torch.rand(1, 4)}).result(timeout=5)
    assert seen == [1]
    assert torch.get_num_threads() == before


def test_config_is_validated(mlp_model: LoadedModel) -> None:
    for kwargs in ({"max_batch": 0}, {"max_wait_ms": -1}, {"threads": 0}, {"max_queue": 0}):
        with pytest.raises(MarketConfigError):
            ModelRuntime(mlp_model, **kwargs)


def test_trio_callers_are_batched_without_blocking_the_loop(mlp_model: LoadedModel) -> None:
    requests = [inputs(1, seed=100 + i) for i in range(40)]
    results: dict[int, dict[str, torch.Tensor]] = {}
    ticks = 0

    async def main() -> None:
        nonlocal ticks
        async with ModelRuntime(mlp_model, max_batch=16, max_wait_ms=20) as runtime:

            async def one(i: int) -> None:
                results[i] = await runtime.run(requests[i])

            async def ticker() -> None:
                nonlocal ticks
                while len(results) < len(requests):
                    ticks += 1
                    await trio.sleep(0.001)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ticker)
                    for i in range(len(requests)):
                        nursery.start_soon(one, i)
            assert runtime.stats().mean_batch_size > 1

    trio.run(main)
    assert ticks > 0
    for i, request in enumerate(requests):
        assert outputs_match(results[i], mlp_model.forward(request), mlp_model.manifest.tolerance)


def test_trio_cancellation_drops_a_queued_request() -> None:
    model, module = gated_model()

    async def main() -> None:
        with ModelRuntime(model) as runtime:
            blocker = runtime.submit({"x": torch.full((1, 4), BLOCK)})
            await trio.to_thread.run_sync(module.entered.wait, 5)
            with trio.move_on_after(0.05) as scope:
                await runtime.run({"x": torch.rand(1, 4)})
            assert scope.cancelled_caught
            assert runtime.queued == 1
            module.release.set()
            await trio.to_thread.run_sync(blocker.result, 5)
            deadline = time.monotonic() + 5
            while runtime.queued and time.monotonic() < deadline:
                await trio.sleep(0.01)
            assert runtime.stats().requests == 1  # the cancelled request never ran

    trio.run(main)


def test_digits_expert_batched_equals_single(tmp_path: Path) -> None:
    """The real demo model: batched answers equal one-by-one answers within the manifest tolerance."""
    from market.models.digits import DigitsMoE, load_digits_split, pack_digits_experts

    torch.manual_seed(0)
    model = DigitsMoE()  # untrained weights batch the same way as trained ones
    manifest = pack_digits_experts(model, tmp_path)[0]
    expert = load_package(tmp_path / "expert-0", expected_model_hash=manifest.model_hash)
    x = load_digits_split(0).x_test[:64]
    with ModelRuntime(expert, max_batch=32, max_wait_ms=20) as runtime:
        futures = [runtime.submit({"x": x[i : i + 1]}) for i in range(64)]
        batched = torch.cat([f.result(timeout=5)["logits"] for f in futures])
        assert runtime.stats().mean_batch_size > 1
    single = torch.cat([expert.forward({"x": x[i : i + 1]})["logits"] for i in range(64)])
    assert outputs_match({"logits": batched}, {"logits": single}, manifest.tolerance)
