"""The expert node's protocol handlers: quote, paid infer, and model fetch, over the market's libp2p host.

For each infer request the node checks, in order and before any compute (docs/protocol.md): the expert is
served here and the model hash matches; the tensors decode and fit the manifest; the voucher recovers to its
client under this escrow's EIP-712 domain and names this expert; the client's escrow balance (a cached chain
view, refreshed when it would not cover) covers what the node would be owed. Then the voucher is written to
the SQLite ledger (which refuses it unless it covers everything served plus this call), the runtime computes,
and the answer leaves with a receipt signed by the node's hot signer key. A compute failure reverts the
ledger entry, so the client is not charged for it.

Behaviours other than HONEST exist for demonstrations and tests of the dispute system only (a cheating or
lazy expert); they are never the default and the CLI names them `--unsafe-behaviour`.

This module must not block the trio loop: chain calls and SQLite go to worker threads; the model runs on
its runtime thread.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from market.chain.eip712 import ReceiptSigner, recover_voucher_signer
from market.errors import (
    ExpertBusyError,
    MalformedMessageError,
    MarketError,
    MarketInputError,
    RemoteError,
)
from market.models.package import LoadedModel, ModelStore
from market.protocol import codec
from market.protocol.hashing import tensor_hash
from market.protocol.ids import INFER, MODEL, QUOTE
from market.protocol.messages import (
    ErrorCode,
    ExpertQuote,
    InferRequest,
    InferResult,
    ModelRequest,
    ModelResponse,
    QuoteRequest,
    QuoteResponse,
)
from market.transport import MarketHost, PeerId
from market.types import Receipt, SignedReceipt
from node.ledger import VoucherLedger, VoucherTooLowError
from node.runtime import ModelRuntime

logger = logging.getLogger(__name__)


class Behaviour(enum.StrEnum):
    """How a served expert computes. Anything but HONEST is for demos and dispute tests only."""

    HONEST = "honest"
    PERTURB = "perturb"  # adds noise far beyond the tolerance to every output
    ZEROS = "zeros"  # lazy: returns zeros of the right shape without computing
    CACHED = "cached"  # lazy: returns the first answer it computed, whatever the input


@dataclass(slots=True)
class ServedExpert:
    """One registered expert id served by this node."""

    expert_id: int
    model: LoadedModel
    runtime: ModelRuntime
    price: int
    behaviour: Behaviour = Behaviour.HONEST
    _cached: dict[str, torch.Tensor] | None = None

    @property
    def manifest(self):  # noqa: ANN201 - ModelManifest; kept loose to avoid an import cycle in type checkers
        return self.model.manifest


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits of the infer handler."""

    max_rows_per_call: int = 256
    max_elements: int = 4 * 1024 * 1024
    deposit_ttl_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_rows_per_call < 1 or self.max_elements < 1 or self.deposit_ttl_s < 0:
            raise MarketInputError("server limits must be positive")


@dataclass(slots=True)
class ServerStats:
    """Counters the gateway exports as metrics."""

    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    earned_wei: int = 0

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class DepositView:
    """A cached view of clients' escrow balances: refreshed after `ttl` or when it would refuse a call.

    A refresh waits at most `timeout` seconds for the chain: when the RPC is unreachable the last known
    balance is used (it can only have grown, except by this node's own redemptions or a withdrawal, which
    waits longer than the redeem window), and a client never seen before is refused with a clear error
    before any voucher is recorded. A call is never left waiting on a stalled RPC.
    """

    def __init__(self, fetch: Callable[[str], int], ttl: float, timeout: float = 3.0) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._timeout = timeout
        self._cache: dict[str, tuple[int, float]] = {}

    async def balance(self, client: str, *, fresh: bool = False) -> int:
        hit = self._cache.get(client)
        now = time.monotonic()
        if hit is not None and not fresh and now - hit[1] < self._ttl:
            return hit[0]
        value: int | None = None
        with trio.move_on_after(self._timeout):
            try:
                value = await trio.to_thread.run_sync(self._fetch, client, abandon_on_cancel=True)
            except MarketError as exc:
                logger.warning("could not read the escrow balance of %s: %s", client, exc)
        if value is None:
            if hit is not None:
                logger.warning("chain unreachable: using the last known escrow balance of %s", client)
                return hit[0]
            raise _remote(ErrorCode.INTERNAL, "the chain is unreachable, so your deposit cannot be checked; try later")
        self._cache[client] = (value, now)
        return value


def _remote(code: ErrorCode, message: str) -> RemoteError:
    return RemoteError(str(code), message)


class ExpertServer:
    """Serves the experts of one node on a MarketHost.

    `chain_id`, `escrow` and `disputes` come from the deployment; `balance_of(client) -> wei` reads the
    client's escrow balance (a blocking call, run in a worker thread).
    """

    def __init__(
        self,
        *,
        experts: Sequence[ServedExpert],
        ledger: VoucherLedger,
        receipt_signer: ReceiptSigner,
        chain_id: int,
        escrow: str,
        balance_of: Callable[[str], int],
        store: ModelStore | None = None,
        config: ServerConfig | None = None,
    ) -> None:
        self.experts: dict[int, ServedExpert] = {e.expert_id: e for e in experts}
        if len(self.experts) != len(experts):
            raise MarketInputError("an expert id is served twice")
        self.ledger = ledger
        self.receipt_signer = receipt_signer
        self.chain_id = chain_id
        self.escrow = escrow
        self.store = store
        self.config = config or ServerConfig()
        self.deposits = DepositView(balance_of, self.config.deposit_ttl_s)
        self.stats = ServerStats()

    def install(self, host: MarketHost) -> None:
        host.serve(QUOTE, self.on_quote)
        host.serve(INFER, self.on_infer)
        host.serve(MODEL, self.on_model)

    # -- quote ------------------------------------------------------------------------------------

    async def on_quote(self, header: Mapping[str, Any], payload: bytes, peer: PeerId) -> tuple[dict, bytes]:
        request = QuoteRequest.from_header(header, payload)
        experts = [
            e for e in self.experts.values() if request.model_hash is None or e.model.model_hash == request.model_hash
        ]
        cumulative: dict[int, int] = {}
        if request.client is not None:
            held = await trio.to_thread.run_sync(self.ledger.cumulative_for, request.client)
            cumulative = {eid: amount for eid, amount in held.items() if eid in self.experts}
        quotes = tuple(
            ExpertQuote(
                expert_id=e.expert_id,
                model_hash=e.model.model_hash,
                price=e.price,
                inputs=tuple(_schema(s) for s in e.manifest.inputs),
                outputs=tuple(_schema(s) for s in e.manifest.outputs),
                tolerance={"atol": e.manifest.tolerance.atol, "rtol": e.manifest.tolerance.rtol},
                max_batch=self.config.max_rows_per_call,
            )
            for e in experts
        )
        queue = sum(e.runtime.queued for e in self.experts.values())
        answer = QuoteResponse(experts=quotes, queue=queue, cumulative=cumulative)
        return answer.to_header(), answer.body_payload

    # -- infer ------------------------------------------------------------------------------------

    async def on_infer(self, header: Mapping[str, Any], payload: bytes, peer: PeerId) -> tuple[dict, bytes]:
        try:
            return await self._infer(header, payload)
        except RemoteError as exc:
            self.stats.count_error(exc.code)
            raise
        except (MalformedMessageError, MarketInputError) as exc:
            self.stats.count_error("BAD_INPUT" if isinstance(exc, MarketInputError) else "MALFORMED")
            raise

    async def _infer(self, header: Mapping[str, Any], payload: bytes) -> tuple[dict, bytes]:
        started = time.perf_counter()
        request = InferRequest.from_header(header, payload)
        served = self.experts.get(request.expert_id)
        if served is None:
            raise _remote(ErrorCode.UNKNOWN_EXPERT, f"expert {request.expert_id} is not served by this node")
        if request.model_hash != served.model.model_hash:
            raise _remote(
                ErrorCode.UNKNOWN_EXPERT,
                f"expert {request.expert_id} serves model 0x{served.model.model_hash.hex()}, "
                f"not 0x{request.model_hash.hex()}",
            )
        if request.deadline_ms <= 0:
            raise _remote(ErrorCode.DEADLINE, "the deadline passed before the request arrived")
        deadline = trio.current_time() + request.deadline_ms / 1000.0

        try:
            tensors = codec.decode_tensors(request.tensors, request.payload, self.config.max_elements)
        except MalformedMessageError as exc:
            raise _remote(ErrorCode.BAD_INPUT, str(exc)) from exc
        rows = served.model.check_inputs(tensors)  # MarketInputError -> BAD_INPUT
        if rows > self.config.max_rows_per_call:
            raise _remote(
                ErrorCode.BAD_INPUT, f"{rows} rows in one call; this node takes at most {self.config.max_rows_per_call}"
            )

        signed = request.voucher
        voucher = signed.voucher
        if voucher.expert_id != served.expert_id:
            raise _remote(ErrorCode.BAD_VOUCHER, f"voucher is for expert {voucher.expert_id}, not {served.expert_id}")
        try:
            signer = recover_voucher_signer(signed, self.chain_id, self.escrow)
        except MarketError as exc:
            raise _remote(ErrorCode.BAD_VOUCHER, f"voucher signature does not recover: {exc}") from exc
        if signer.lower() != voucher.client.lower():
            raise _remote(
                ErrorCode.BAD_VOUCHER,
                "voucher signature does not match its client for this escrow and chain "
                f"(chain {self.chain_id}, escrow {self.escrow})",
            )

        await self._check_deposit(voucher.client, served, voucher.cumulative_amount)
        try:
            await trio.to_thread.run_sync(self.ledger.record_voucher, signed, served.price)
        except VoucherTooLowError as exc:
            error = RemoteError(str(ErrorCode.VOUCHER_TOO_LOW), str(exc))
            error.cumulative = exc.held  # type: ignore[attr-defined]  # the transport sends it along
            raise error from exc

        if trio.current_time() > deadline:
            await trio.to_thread.run_sync(self.ledger.revert_voucher, signed, served.price)
            raise _remote(ErrorCode.DEADLINE, "the deadline passed while the request waited")
        try:
            with trio.fail_after(max(deadline - trio.current_time(), 0.001)):
                outputs = await self._compute(served, tensors)
        except BaseException as exc:
            # Not answered: the client is not charged for this call.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.ledger.revert_voucher, signed, served.price)
            if isinstance(exc, trio.TooSlowError):
                raise _remote(ErrorCode.DEADLINE, "the deadline passed during compute") from None
            if isinstance(exc, ExpertBusyError):
                raise _remote(ErrorCode.BUSY, "the model queue is full; try another expert") from None
            if isinstance(exc, MarketInputError):
                raise
            if isinstance(exc, Exception):
                logger.exception("expert %d failed to compute", served.expert_id)
                raise _remote(ErrorCode.INTERNAL, "the model failed on this input; you were not charged") from exc
            raise

        specs, out_payload = codec.encode_tensors(outputs)
        receipt = Receipt(
            expert_id=served.expert_id,
            model_hash=served.model.model_hash,
            request_id=request.request_id,
            input_hash=tensor_hash(request.tensors, request.payload),
            output_hash=tensor_hash(specs, out_payload),
            price=served.price,
        )
        signed_receipt: SignedReceipt = self.receipt_signer.sign(receipt)
        await trio.to_thread.run_sync(self.ledger.record_receipt, signed_receipt, voucher.client)
        self.stats.calls += 1
        self.stats.earned_wei += served.price
        result = InferResult(
            request_id=request.request_id,
            tensors=tuple(specs),
            receipt=signed_receipt,
            compute_ms=(time.perf_counter() - started) * 1000.0,
            payload=out_payload,
        )
        return result.to_header(), result.body_payload

    async def _check_deposit(self, client: str, served: ServedExpert, cumulative: int) -> None:
        """The client's escrow balance must cover what this node would be owed after accepting the voucher."""
        def read() -> tuple[int, int]:
            return self.ledger.outstanding_amount(client), self.ledger.last_cumulative(client, served.expert_id)

        owed_before, held = await trio.to_thread.run_sync(read)
        owed_after = owed_before + max(cumulative - held, 0)
        balance = await self.deposits.balance(client)
        if balance < owed_after:
            balance = await self.deposits.balance(client, fresh=True)
        if balance < owed_after:
            raise _remote(
                ErrorCode.INSUFFICIENT_DEPOSIT,
                f"escrow balance {balance} wei does not cover {owed_after} wei owed to this node; deposit more",
            )

    async def _compute(self, served: ServedExpert, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        behaviour = served.behaviour
        if behaviour is Behaviour.ZEROS:
            rows = next(iter(tensors.values())).shape[0]
            return {
                s.name: torch.zeros((rows, *[d if d > 0 else 1 for d in s.shape[1:]]), dtype=_torch_dtype(s.dtype))
                for s in served.manifest.outputs
            }
        if behaviour is Behaviour.CACHED and served._cached is not None:
            return {k: v.clone() for k, v in served._cached.items()}
        outputs = await served.runtime.run(tensors)
        if behaviour is Behaviour.CACHED:
            served._cached = {k: v.clone() for k, v in outputs.items()}
        if behaviour is Behaviour.PERTURB:
            generator = torch.Generator().manual_seed(int.from_bytes(served.model.model_hash[:4], "big"))
            outputs = {
                k: v + (torch.randn(v.shape, generator=generator) * 0.5 + 1.0).to(v.dtype)
                if v.is_floating_point()
                else v
                for k, v in outputs.items()
            }
        return outputs

    # -- model fetch ------------------------------------------------------------------------------

    async def on_model(self, header: Mapping[str, Any], payload: bytes, peer: PeerId) -> tuple[dict, bytes]:
        request = ModelRequest.from_header(header, payload)
        if self.store is None or not self.store.has(request.model_hash):
            raise _remote(ErrorCode.NOT_FOUND, f"model 0x{request.model_hash.hex()} is not held by this node")
        manifest_bytes = await trio.to_thread.run_sync(self.store.manifest_bytes, request.model_hash)
        weights = await trio.to_thread.run_sync(self.store.weights_bytes, request.model_hash)
        import json

        answer = ModelResponse(manifest=json.loads(manifest_bytes), payload=weights)
        return answer.to_header(), answer.body_payload


def _schema(schema: Any) -> Any:
    from market.protocol.specs import TensorSchema

    return TensorSchema(name=schema.name, dtype=schema.dtype, shape=tuple(schema.shape))


def _torch_dtype(name: str) -> torch.dtype:
    return codec.TORCH_DTYPES[name]
