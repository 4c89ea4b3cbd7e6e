"""The one thread that owns a served model and batches concurrent requests into single forward passes.

Shape of hivemind's task pool + runtime, without its mixed sync/async API:

    handlers (any thread, or trio via `await runtime.run(...)`)
        -> submit(): inputs checked against the manifest, queued (bounded: full -> ExpertBusyError, code BUSY)
    runtime thread (owns the model; torch.set_num_threads(threads) is called in it)
        -> takes the oldest request, then for up to `max_wait_ms` more requests whose non-batch shapes match,
           until `max_batch` rows; concatenates along dim 0, runs ONE forward, splits the outputs per request
        -> a failing batch is retried one request at a time, so an error reaches only the request that caused it

Batched results equal per-request results within the manifest's tolerance, not always bitwise: a matrix
product over 32 rows may sum in a different order than over 1 row (differences around 1e-7). That is why every
comparison in the market uses the model's registered tolerance.

This module does no network I/O and never blocks a trio event loop: `run` waits on a trio Event woken from
the runtime thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from market.errors import ExpertBusyError, MarketConfigError, MarketError, ModelError
from market.models.package import LoadedModel

__all__ = ["ModelRuntime", "RuntimeClosedError", "RuntimeStats"]

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


class RuntimeClosedError(MarketError):
    """The runtime was closed before the request ran (the server answers INTERNAL; retry elsewhere)."""


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    requests: int  # requests answered, with a result or an error
    batches: int  # forward passes over concatenated requests
    rows: int  # examples computed
    errors: int  # requests answered with an error
    rejected: int  # requests refused because the queue was full
    queued: int  # requests waiting now

    @property
    def mean_batch_size(self) -> float:
        """Requests per forward pass."""
        return self.requests / self.batches if self.batches else 0.0

    @property
    def mean_batch_rows(self) -> float:
        return self.rows / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Task:
    inputs: Tensors
    rows: int
    key: tuple[tuple[int, ...], ...]  # non-batch shapes: only equal keys can be concatenated
    future: Future[Tensors] = field(default_factory=Future)


class ModelRuntime:
    """Serve one LoadedModel from one thread, batching concurrent requests.

    `max_batch` counts rows (examples): a batch holds requests until their rows reach it, and a single request
    with more rows than `max_batch` runs alone. `max_queue` bounds the requests waiting; past it `submit`
    raises ExpertBusyError. The thread starts at construction; `close()` (or leaving a ``with`` /
    ``async with`` block) stops it and fails what is still queued with RuntimeClosedError.
    """

    def __init__(
        self,
        model: LoadedModel,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        threads: int = 1,
        max_queue: int = 256,
        name: str | None = None,
    ) -> None:
        if max_batch < 1:
            raise MarketConfigError(f"max_batch must be >= 1, got {max_batch}")
        if not 0 <= max_wait_ms <= 10_000:
            raise MarketConfigError(f"max_wait_ms must be in 0..10000, got {max_wait_ms}")
        if threads < 1:
            raise MarketConfigError(f"threads must be >= 1, got {threads}")
        if max_queue < 1:
            raise MarketConfigError(f"max_queue must be >= 1, got {max_queue}")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.threads = threads
        self.max_queue = max_queue
        self._names = [s.name for s in model.manifest.inputs]
        self._cond = threading.Condition()
        self._queue: deque[_Task] = deque()
        self._closed = False
        self._requests = self._batches = self._rows = self._errors = self._rejected = 0
        self._thread = threading.Thread(
            target=self._loop, name=name or f"moe-runtime-{model.model_hash.hex()[:8]}", daemon=True
        )
        self._thread.start()

    # -- callers -----------------------------------------------------------------------------------------

    def submit(self, inputs: Mapping[str, torch.Tensor]) -> Future[Tensors]:
        """Queue one request; the future resolves to its outputs (or its own error).

        Raises at once: MarketInputError (inputs do not match the manifest), ExpertBusyError (queue full),
        RuntimeClosedError (closed).
        """
        rows = self.model.check_inputs(inputs)
        task = _Task(
            inputs={name: inputs[name].detach() for name in self._names},
            rows=rows,
            key=tuple(tuple(inputs[name].shape[1:]) for name in self._names),
        )
        with self._cond:
            if self._closed:
                raise RuntimeClosedError("the model runtime is closed; this node is shutting down")
            if len(self._queue) >= self.max_queue:
                self._queue = deque(t for t in self._queue if not t.future.cancelled())
            if len(self._queue) >= self.max_queue:
                self._rejected += 1
                raise ExpertBusyError(
                    "BUSY", f"{len(self._queue)} requests are queued (the limit); try another expert"
                )
            self._queue.append(task)
            self._cond.notify()
        return task.future

    async def run(self, inputs: Mapping[str, torch.Tensor]) -> Tensors:
        """`submit` for trio code: waits without blocking the event loop; cancelling it drops a queued request."""
        import trio

        future = self.submit(inputs)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[Tensors]) -> None:
            # The trio run may already be over (the caller gave up); nobody is left to wake.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    @property
    def queued(self) -> int:
        """Requests waiting now (what the quote answer reports as load)."""
        with self._cond:
            return len(self._queue)

    def stats(self) -> RuntimeStats:
        with self._cond:
            return RuntimeStats(
                requests=self._requests,
                batches=self._batches,
                rows=self._rows,
                errors=self._errors,
                rejected=self._rejected,
                queued=len(self._queue),
            )

    def close(self, timeout: float = 10.0) -> None:
        """Stop taking requests, fail the queued ones with RuntimeClosedError, let the running batch finish
        and join the thread (at most `timeout` seconds). Safe to call twice."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for task in pending:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(
                    RuntimeClosedError(
                        "the model runtime was closed before this request ran; retry elsewhere"
                    )
                )
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ModelRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ModelRuntime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        import trio

        await trio.to_thread.run_sync(self.close)

    # -- the runtime thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # never leave a caller waiting on a future nobody will resolve
                for task in batch:
                    if not task.future.done():
                        task.future.set_exception(ModelError(f"the model runtime failed: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise
                log.exception("model runtime batch failed")

    def _take(self) -> list[_Task] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            head = self._queue.popleft()
            batch, rows = [head], head.rows
            if not self._queue:
                # Nothing else is waiting: a lone request runs at once instead of paying `max_wait` for a
                # batch that is not coming. Under load the queue fills while a batch runs, and waiting pays.
                return batch
            deadline = time.monotonic() + self.max_wait
            while rows < self.max_batch and not self._closed:
                rows = self._gather(head.key, batch, rows)
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _gather(self, key: tuple[tuple[int, ...], ...], batch: list[_Task], rows: int) -> int:
        """Move queued requests with the same non-batch shapes into `batch` (in order) while rows fit."""
        if not self._queue:
            return rows
        keep: deque[_Task] = deque()
        while self._queue:
            task = self._queue.popleft()
            if task.key == key and rows + task.rows <= self.max_batch:
                batch.append(task)
                rows += task.rows
                if rows >= self.max_batch:
                    break
            else:
                keep.append(task)
        keep.extend(self._queue)
        self._queue = keep
        return rows

    def _run(self, batch: list[_Task]) -> None:
        tasks = [t for t in batch if t.future.set_running_or_notify_cancel()]
        if not tasks:
            return
        if len(tasks) == 1:
            self._run_one(tasks[0])
            return
        try:
            inputs = {name: torch.cat([t.inputs[name] for t in tasks]) for name in self._names}
            outputs = self.model.forward(inputs)
        except Exception:
            # Find the culprit: each request alone, so one bad input cannot fail its neighbours.
            log.debug("batch of %d failed; running its requests one by one", len(tasks), exc_info=True)
            for task in tasks:
                self._run_one(task)
            return
        results = []
        offset = 0
        for task in tasks:
            results.append({name: out[offset : offset + task.rows].clone() for name, out in outputs.items()})
            offset += task.rows
        self._count(len(tasks), offset, errors=0)
        for task, result in zip(tasks, results, strict=True):
            task.future.set_result(result)

    def _run_one(self, task: _Task) -> None:
        try:
            result = self.model.forward(task.inputs)
        except Exception as exc:
            self._count(1, task.rows, errors=1)
            if not isinstance(exc, MarketError):
                log.warning("model %s failed on a request: %r", self.model.model_hash_hex, exc)
                wrapped = ModelError(f"the model failed on this request: {type(exc).__name__}: {exc}")
                wrapped.__cause__ = exc
                exc = wrapped
            task.future.set_exception(exc)
            return
        self._count(1, task.rows, errors=0)
        task.future.set_result(result)

    def _count(self, requests: int, rows: int, errors: int) -> None:
        with self._cond:
            self._requests += requests
            self._batches += 1
            self._rows += rows
            self._errors += errors

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"ModelRuntime({self.model.manifest.name!r}, requests={s.requests}, batches={s.batches}, "
            f"queued={s.queued}, closed={self._closed})"
        )
