"""`Client`: the blocking face of the SDK, for plain scripts, notebooks and asyncio programs.

    with Client(ClientConfig(deployment="...", keystore="...", keystore_password=os.environ["PW"])) as client:
        client.deposit(10**17)
        result = client.infer("0x<modelHash>", {"x": x})

The trio core (`AsyncClient`) runs in a background thread of its own (`trio.run`); each method hands its
coroutine to that thread with `trio.from_thread.run` and waits for the answer, always with a finite
timeout. So the facade works from any thread that is not the client's own: a script's main thread, a
notebook, or an asyncio program (call it through `asyncio.to_thread` so the event loop is not blocked while
a call is in flight). `close()` (or leaving the `with` block) stops the core and joins its thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from market.audit import AuditPolicy
from market.client.config import ClientConfig
from market.client.core import AsyncClient
from market.client.results import Balance, DisputeRecord, EvidenceItem, InferResult
from market.errors import MarketError, PeerTimeoutError
from market.manifest import ModelManifest
from market.types import ExpertInfo, SignedReceipt

__all__ = ["Client", "ClientClosedError"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClientClosedError(MarketError, RuntimeError):
    """The client was closed (or its background thread stopped); open a new one."""


class Client:
    """Blocking client (see the module docstring). Same methods as AsyncClient, without `await`."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        start_timeout: float = 60.0,
        **open_kwargs: Any,
    ) -> None:
        self.config = config
        self._open_kwargs = open_kwargs
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._core: AsyncClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._thread_main, name="moe-market-client", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise PeerTimeoutError(f"the client did not start within {start_timeout:g}s")
        if self._error is not None:
            self._thread.join(timeout=10)
            raise self._error

    # -- the background thread --------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the caller of __init__, or logged
            if not self._ready.is_set():
                self._error = exc
            else:
                logger.error("the client's background thread stopped with an error", exc_info=True)
        finally:
            self._closed = True
            self._ready.set()

    async def _main(self) -> None:
        async with AsyncClient.open(self.config, **self._open_kwargs) as core:
            self._core = core
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    # -- plumbing ---------------------------------------------------------------------------------------

    @property
    def core(self) -> AsyncClient:
        """The AsyncClient running in the background thread (touch it only from that thread)."""
        if self._core is None or self._closed:
            raise ClientClosedError("the client is closed")
        return self._core

    def run(self, fn: Callable[[AsyncClient], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run `await fn(async_client)` on the client's trio thread and return its result (blocking).

        This is how code that needs the async core (several calls at once, say) runs from blocking code.
        """
        if self._closed or self._token is None:
            raise ClientClosedError("the client is closed")
        core = self.core
        limit = self._default_timeout() if timeout is None else timeout

        async def runner() -> T:
            with trio.fail_after(limit):
                return await fn(core)

        try:
            return trio.from_thread.run(runner, trio_token=self._token)
        except trio.TooSlowError:
            raise PeerTimeoutError(f"the client call did not finish within {limit:g}s") from None
        except trio.RunFinishedError:
            raise ClientClosedError("the client closed while the call was waiting") from None

    def _default_timeout(self) -> float:
        c = self.config
        return c.deadline_s + c.tx_timeout_s + c.manifest_timeout_s + c.rpc_timeout_s

    def close(self, timeout: float = 30.0) -> None:
        """Stop the client: saves the reputation book, closes the voucher book and the libp2p host."""
        if self._closed:
            self._thread.join(timeout)
            return
        token, stop = self._token, self._stop
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the client's background thread did not stop within %gs", timeout)
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Client({state}, address={self._core.address if self._core else '?'})"

    # -- the SDK ----------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self.core.address

    @property
    def evidence_endpoint(self) -> str:
        return self.run(lambda c: _value(c.evidence_endpoint), timeout=10)

    @property
    def paid(self) -> int:
        return self.core.paid

    def deposit(self, wei: int) -> None:
        self.run(lambda c: c.deposit(wei), timeout=self.config.tx_timeout_s + 10)

    def request_withdraw(self, wei: int) -> int:
        return self.run(lambda c: c.request_withdraw(wei), timeout=self.config.tx_timeout_s + 10)

    def withdraw(self) -> int:
        return self.run(lambda c: c.withdraw(), timeout=self.config.tx_timeout_s + 10)

    def balance(self) -> Balance:
        return self.run(lambda c: c.balance(), timeout=self.config.rpc_timeout_s * 4 + 10)

    def experts(
        self, model_hash: bytes | str | None = None, capability: str | bytes | None = None, refresh: bool = False
    ) -> list[ExpertInfo]:
        return self.run(lambda c: c.experts(model_hash, capability, refresh), timeout=self.config.rpc_timeout_s * 4 + 10)

    def add_manifest(self, manifest: Any) -> ModelManifest:
        return self.run(lambda c: _value(c.add_manifest(manifest)), timeout=10)

    def manifest(self, model: bytes | str) -> ModelManifest:
        return self.run(lambda c: c.manifest(model), timeout=self.config.manifest_timeout_s + self.config.rpc_timeout_s + 10)

    def infer(
        self,
        model: bytes | str | None,
        inputs: Mapping[str, Any] | Any,
        *,
        capability: str | bytes | None = None,
        redundancy: int | None = None,
        audit: AuditPolicy | None = None,
        quorum: int | None = None,
        max_price: int | None = None,
        deadline: float | None = None,
    ) -> InferResult:
        return self.run(
            lambda c: c.infer(
                model, inputs, capability=capability, redundancy=redundancy, audit=audit, quorum=quorum,
                max_price=max_price, deadline=deadline,
            ),
            timeout=(deadline or self.config.deadline_s) + self.config.manifest_timeout_s + self.config.rpc_timeout_s + 10,
        )

    def evidence(self, request_id: bytes | str | None = None) -> list[EvidenceItem]:
        return self.run(lambda c: c.evidence(request_id), timeout=60)

    def dispute(self, item: EvidenceItem | SignedReceipt) -> int:
        return self.run(lambda c: c.dispute(item), timeout=self.config.tx_timeout_s + 10)

    def disputes(self, refresh: bool = True) -> list[DisputeRecord]:
        return self.run(lambda c: c.disputes(refresh), timeout=self.config.rpc_timeout_s * 10 + 10)

    def wait_dispute(
        self, dispute_id: int, *, timeout: float = 600.0, poll_s: float = 1.0, resolve: bool = True
    ) -> DisputeRecord:
        return self.run(
            lambda c: c.wait_dispute(dispute_id, timeout=timeout, poll_s=poll_s, resolve=resolve),
            timeout=timeout + self.config.tx_timeout_s + 10,
        )

    def resync(self, expert_ids: list[int] | None = None) -> dict[int, int]:
        return self.run(lambda c: c.resync(expert_ids), timeout=self.config.call_timeout_s * 10 + 10)


async def _value(value: T) -> T:
    return value
