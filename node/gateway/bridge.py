"""The gateway's seam to the market: `MarketBackend`, the JSON <-> tensor conversions, and `ClientBackend`,
the implementation over the client SDK.

How the threads meet (DESIGN: "the aiohttp HTTP gateway runs its asyncio loop in its own thread and crosses
over with trio's thread portals"):

    gateway thread (asyncio, aiohttp)           worker threads (ThreadPoolExecutor)       client thread (trio)
    handler --loop.run_in_executor(pool, f)-->  ClientBackend.f -> market.Client.f  --portal-->  AsyncClient.f

The gateway calls the client's **blocking facade** from a thread pool, and the facade crosses into the trio
core with `trio.from_thread.run` and the trio token it owns. This is the clean one of the two choices:

- `trio.from_thread.run` blocks its caller until the trio side returns, so it can never be called on the
  asyncio loop itself (one slow call would stall every request): a worker thread is needed either way, and
  the facade already is "a worker-thread call into trio", with its token, its start-up and its shutdown.
- The gateway stays free of trio: its only contract with the market is `MarketBackend`, a handful of
  blocking methods, which is also what the fake backend of the tests implements.
- Everything the facade does has a finite deadline (the SDK's `deadline_s`, and the per-request deadline
  the gateway passes), so a worker whose HTTP request was abandoned (client gone, gateway timeout) is busy
  only until that deadline, never forever. The gateway counts such workers against its infer limit until
  they finish, so abandoned calls cannot pile up behind its back.

Registry and dispute listings are chain reads; `ClientBackend` caches them for `cache_ttl_s` (1 s) so a few
dashboards polling every 2 s cost one read per second, not one per viewer.

It must not: import web3 (chain reads go through market.chain's MarketChain), sign anything itself, or touch
the asyncio loop (everything here is blocking and thread-safe).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from market.errors import MarketInputError, ModelError, NoExpertError
from market.protocol.messages import receipt_to_json

if TYPE_CHECKING:
    import torch

    from market.chain.records import DisputeInfo
    from market.reputation import LocalStats
    from market.types import ExpertInfo

__all__ = [
    "ClientBackend",
    "MarketBackend",
    "TensorInput",
    "UnknownModelError",
    "cast_to_schema",
    "decode_inputs",
    "dispute_json",
    "expert_json",
    "outputs_json",
    "parse_model_hash",
    "receipt_json",
]

logger = logging.getLogger(__name__)

MAX_INPUT_TENSORS = 64
MAX_INPUT_NDIM = 16
MAX_INPUT_ELEMENTS = 2**24


class UnknownModelError(NoExpertError):
    """No expert at all is registered for the model hash (as opposed to none fitting the request)."""


@dataclass(frozen=True, slots=True)
class TensorInput:
    """One input tensor of an HTTP request.

    `dtype_given` is False for nested JSON lists: their dtype is only a guess (float32 for numbers with a
    fraction, int64 for integers, bool for booleans), so the backend casts them to the dtype the model's
    manifest asks for. Tensors sent as base64 with an explicit dtype are passed on exactly as given.
    """

    tensor: torch.Tensor
    dtype_given: bool


class MarketBackend(Protocol):
    """What the gateway needs from the market. Blocking and thread-safe: the gateway calls every method from
    worker threads. Errors are `market.errors.MarketError` subclasses (the gateway maps them to HTTP codes);
    anything else is a bug and becomes a 500."""

    def infer(
        self,
        model_hash: bytes,
        inputs: Mapping[str, TensorInput],
        *,
        redundancy: int | None,
        max_price: int | None,
        deadline_s: float | None,
    ) -> dict[str, Any]:
        """One checked, paid call: a JSON-ready dict with outputs, agreeing, receipts, paid (see openapi.yaml)."""
        ...

    def experts(self, model_hash: bytes | None = None) -> list[dict[str, Any]]:
        """Every registered expert (of `model_hash` when given), as JSON-ready dicts (see expert_json)."""
        ...

    def disputes(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest `limit` disputes of the market, newest first (see dispute_json)."""
        ...

    def balances(self) -> dict[str, Any]:
        """The client's money: escrow, signed, redeemed, available, claimable rewards (wei as strings)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Cheap facts for /v1/health and /metrics: client address, chain id, experts and disputes counts."""
        ...


# -- JSON <-> tensors -------------------------------------------------------------------------------------


def parse_model_hash(value: object, what: str = "model") -> bytes:
    """`0x` + 64 hex digits -> 32 bytes (MarketInputError naming `what` otherwise)."""
    if not isinstance(value, str) or len(value) != 66 or not value.startswith(("0x", "0X")):
        raise MarketInputError(f"{what} must be a model hash: 0x followed by 64 hex digits, got {_short(value)}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise MarketInputError(f"{what} must be a model hash: 0x followed by 64 hex digits, got {_short(value)}") from None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def decode_inputs(raw: object, *, max_elements: int = MAX_INPUT_ELEMENTS) -> dict[str, TensorInput]:
    """The `inputs` object of an infer request -> tensors (MarketInputError saying what is wrong).

    Each value is either nested JSON lists of numbers or booleans (rectangular), or an object
    ``{"dtype": "float32", "shape": [2, 64], "data_b64": "..."}`` holding the little-endian bytes, C order.
    """
    from market.protocol.codec import decode_tensors
    from market.protocol.specs import TensorSpec

    if not isinstance(raw, dict) or not raw:
        raise MarketInputError('inputs must be a non-empty object of tensors, e.g. {"x": [[0.0, 1.0]]}')
    if len(raw) > MAX_INPUT_TENSORS:
        raise MarketInputError(f"inputs has {len(raw)} tensors; at most {MAX_INPUT_TENSORS} are accepted")
    out: dict[str, TensorInput] = {}
    total = 0
    for name, value in raw.items():
        if isinstance(value, dict):
            unknown = set(value) - {"dtype", "shape", "data_b64"}
            missing = {"dtype", "shape", "data_b64"} - set(value)
            if unknown or missing:
                raise MarketInputError(
                    f"inputs.{name}: a binary tensor is {{\"dtype\", \"shape\", \"data_b64\"}}"
                    + (f"; missing {', '.join(sorted(missing))}" if missing else "")
                    + (f"; unknown {', '.join(sorted(unknown))}" if unknown else "")
                )
            shape = value["shape"]
            if not isinstance(shape, list) or any(type(d) is not int for d in shape):
                raise MarketInputError(f"inputs.{name}.shape must be a list of integers, got {_short(shape)}")
            if not isinstance(value["data_b64"], str):
                raise MarketInputError(f"inputs.{name}.data_b64 must be a base64 string")
            try:
                spec = TensorSpec(name, value["dtype"], tuple(shape))
                payload = base64.b64decode(value["data_b64"], validate=True)
                tensor = decode_tensors([spec], payload, max(max_elements - total, 0))[name]
            except (binascii.Error, ValueError) as exc:
                # MalformedMessageError is a ValueError; so are bad base64 and bad names.
                raise MarketInputError(f"inputs.{name}: {_reason(exc)}") from None
            out[name] = TensorInput(tensor, dtype_given=True)
        elif isinstance(value, list):
            _check_name(name)
            tensor = _tensor_from_lists(name, value, max_elements - total)
            out[name] = TensorInput(tensor, dtype_given=False)
        else:
            raise MarketInputError(
                f"inputs.{name} must be nested lists of numbers or {{\"dtype\", \"shape\", \"data_b64\"}}, "
                f"got {type(value).__name__}"
            )
        total += out[name].tensor.numel()
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, binascii.Error):
        return f"data_b64 is not valid base64 ({exc})"
    return str(exc)


def _check_name(name: str) -> None:
    from market.protocol.specs import NAME_PATTERN

    if NAME_PATTERN.fullmatch(name) is None:
        raise MarketInputError(f"input name {_short(name)} must be 1-128 characters of A-Z a-z 0-9 _ . : / -")


def _tensor_from_lists(name: str, value: list[Any], budget: int) -> torch.Tensor:
    import torch

    # Walk the nesting first: torch.tensor accepts strings-as-errors only late and recurses without a cap.
    shape: list[int] = []
    level: Any = value
    while isinstance(level, list):
        if len(shape) >= MAX_INPUT_NDIM:
            raise MarketInputError(f"inputs.{name} has more than {MAX_INPUT_NDIM} dimensions")
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    if math.prod(shape) > budget:
        raise MarketInputError(f"inputs.{name} has more elements than the gateway accepts ({MAX_INPUT_ELEMENTS} in all)")
    kinds: set[type] = set()
    _check_rectangular(name, value, shape, 0, kinds)
    if float in kinds:
        dtype = torch.float32
    elif int in kinds:
        dtype = torch.int64
    elif bool in kinds:
        dtype = torch.bool
    else:
        dtype = torch.float32  # an empty tensor: the backend casts it to the model's dtype anyway
    try:
        return torch.tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise MarketInputError(f"inputs.{name} is not a tensor: {exc}") from None


def _check_rectangular(name: str, value: Any, shape: Sequence[int], depth: int, kinds: set[type]) -> None:
    if depth == len(shape):
        if type(value) not in (int, float, bool):
            raise MarketInputError(
                f"inputs.{name}: element {_short(value)} is not a number or a boolean (or the lists are ragged)"
            )
        if type(value) is float and not math.isfinite(value):
            raise MarketInputError(f"inputs.{name}: elements must be finite numbers")
        if type(value) is int and not -(2**63) <= value < 2**63:
            raise MarketInputError(f"inputs.{name}: integer {value} does not fit 64 bits")
        kinds.add(type(value))
        return
    if not isinstance(value, list) or len(value) != shape[depth]:
        raise MarketInputError(
            f"inputs.{name} is ragged: every list at depth {depth} must have {shape[depth]} elements"
        )
    for item in value:
        _check_rectangular(name, item, shape, depth + 1, kinds)


def cast_to_schema(inputs: Mapping[str, TensorInput], schema: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Tensors for the call: JSON-list inputs cast to the dtype of the schema entry of the same name.

    A float input is never truncated to an integer dtype: that is refused, the caller sends integers (or a
    base64 tensor with an explicit dtype). Shapes are left to the client's schema check.
    """
    from market.protocol.codec import TORCH_DTYPES

    wanted = {entry.name: entry.dtype for entry in schema}
    out: dict[str, torch.Tensor] = {}
    for name, item in inputs.items():
        tensor = item.tensor
        dtype_name = wanted.get(name)
        if not item.dtype_given and dtype_name is not None:
            target = TORCH_DTYPES[dtype_name]
            if tensor.dtype != target:
                if tensor.is_floating_point() and not target.is_floating_point and tensor.numel():
                    raise MarketInputError(
                        f"inputs.{name} holds fractional numbers but the model takes {dtype_name}; send integers"
                    )
                tensor = tensor.to(target)
        out[name] = tensor
    return out


def _finite_list(tensor: torch.Tensor) -> Any:
    import torch

    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    data = tensor.tolist()
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        return _replace_non_finite(data)
    return data


def _replace_non_finite(data: Any) -> Any:
    if isinstance(data, list):
        return [_replace_non_finite(x) for x in data]
    return data if math.isfinite(data) else None


def outputs_json(outputs: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(nested lists by name, specs) of output tensors. JSON has no NaN or infinity: those become null."""
    from market.protocol.codec import dtype_name

    lists = {name: _finite_list(t.detach().cpu()) for name, t in outputs.items()}
    specs = [{"name": name, "dtype": dtype_name(t.dtype), "shape": list(t.shape)} for name, t in outputs.items()]
    return lists, specs


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


receipt_json = receipt_to_json  # one JSON form of a receipt, shared with the client's evidence files


def expert_json(info: ExpertInfo, *, score: float | None = None, seen: LocalStats | None = None) -> dict[str, Any]:
    """An expert as the API shows it: the chain's record (wei as decimal strings) and what this client saw."""
    return {
        "expert_id": info.expert_id,
        "operator": info.operator,
        "signer": info.signer,
        "model_hash": _hex(info.model_hash),
        "capability": _hex(info.capability),
        "price": str(info.price),
        "stake": str(info.stake),
        "status": info.status.name.lower(),
        "registered_at": info.registered_at,
        "unbonds_at": info.unbonds_at,
        "disputes_lost": info.disputes_lost,
        "open_disputes": info.open_disputes,
        "slashed": str(info.slashed_total),
        "volume": str(info.volume),
        "endpoint": list(info.endpoint),
        "reputation": None if score is None else round(float(score), 6),
        "seen": {
            "calls": seen.calls if seen else 0,
            "successes": seen.successes if seen else 0,
            "failures": seen.failures if seen else 0,
            "timeouts": seen.timeouts if seen else 0,
            "agreements": seen.agreements if seen else 0,
            "disagreements": seen.disagreements if seen else 0,
            "latency_ms": round(seen.latency_ewma_ms, 3) if seen and seen.latency_samples else None,
        },
    }


def dispute_json(info: DisputeInfo, *, client: str | None = None) -> dict[str, Any]:
    return {
        "dispute_id": info.dispute_id,
        "expert_id": info.expert_id,
        "challenger": info.challenger,
        "mine": client is not None and info.challenger.lower() == client.lower(),
        "status": info.status.name.lower(),
        "bond": str(info.bond),
        "model_hash": _hex(info.model_hash),
        "request_id": _hex(info.request_id),
        "commit_ends": info.commit_ends,
        "reveal_ends": info.reveal_ends,
        "voters": info.voters,
        "guilty_stake": str(info.guilty_stake),
        "innocent_stake": str(info.innocent_stake),
        "slashed": str(info.slashed),
    }


# -- the implementation over the client SDK ---------------------------------------------------------------


class _TtlCache:
    """A value per key, recomputed when older than `ttl_s`; one computation at a time per cache."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._values.get(key)
            if hit is not None and self._clock() - hit[0] < self._ttl:
                return hit[1]
            value = compute()
            self._values[key] = (self._clock(), value)
            return value

    def peek(self, key: Any) -> Any:
        hit = self._values.get(key)
        return None if hit is None else hit[1]


class ClientBackend:
    """`MarketBackend` over a started `market.client.Client` (the blocking facade; see the module docstring).

    Market-wide listings (all experts, all disputes, claimable rewards) are chain reads through a read-only
    `MarketChain` of the client's deployment (thread-safe, shared by the workers); what only the client
    knows (its reputation book, its voucher book) is read on the client's own trio thread via `Client.run`.
    """

    def __init__(self, client: Any, *, chain: Any = None, cache_ttl_s: float = 1.0) -> None:
        self.client = client
        if chain is None:
            from market.chain.contracts import MarketChain
            from market.client.config import resolve_deployment

            chain = MarketChain(resolve_deployment(client.config.deployment), rpc_timeout=client.config.rpc_timeout_s)
        self.chain = chain
        self._cache = _TtlCache(cache_ttl_s)

    # The client SDK is reached only through the methods below, so a change in its API shows up here.

    def infer(
        self,
        model_hash: bytes,
        inputs: Mapping[str, TensorInput],
        *,
        redundancy: int | None,
        max_price: int | None,
        deadline_s: float | None,
    ) -> dict[str, Any]:
        manifest = self._manifest(model_hash)
        tensors = cast_to_schema(inputs, manifest.inputs)
        result = self.client.infer(
            model_hash, tensors, redundancy=redundancy, max_price=max_price, deadline=deadline_s
        )
        outputs, specs = outputs_json(result.outputs)
        return {
            "model": _hex(result.model_hash),
            "request_id": _hex(result.request_id),
            "outputs": outputs,
            "output_specs": specs,
            "agreeing": list(result.agreeing),
            "receipts": [receipt_json(r) for _, r in sorted(result.receipts.items())],
            "paid": str(result.paid),
            "latency_ms": round(float(result.latency_ms), 3),
            "failures": [
                {"expert_id": f.expert_id, "kind": f.kind, "message": f.message} for f in result.failures
            ],
            "evidence": [e.to_json() for e in result.evidence],
            "disputes": list(result.disputes),
            "audited": result.audited,
            "escalated": result.escalated,
        }

    def _manifest(self, model_hash: bytes) -> Any:
        """The model's manifest (the schema the JSON lists are cast to), or UnknownModelError."""
        try:
            return self.client.manifest(model_hash)
        except (NoExpertError, ModelError) as exc:
            if not self.experts(model_hash):
                raise UnknownModelError(
                    f"no expert is registered for model 0x{model_hash.hex()}; "
                    "GET /v1/experts lists the models on offer"
                ) from exc
            raise

    def experts(self, model_hash: bytes | None = None) -> list[dict[str, Any]]:
        return self._cache.get(("experts", model_hash), lambda: self._read_experts(model_hash))

    def _read_experts(self, model_hash: bytes | None) -> list[dict[str, Any]]:
        infos = sorted(self.client.experts(model_hash), key=lambda i: i.expert_id)
        views = self.client.run(lambda core: _reputation_views(core, infos), timeout=10)
        return [expert_json(info, score=score, seen=seen) for info, (score, seen) in zip(infos, views, strict=True)]

    def disputes(self, limit: int = 100) -> list[dict[str, Any]]:
        return self._cache.get(("disputes", limit), lambda: self._read_disputes(limit))

    def _read_disputes(self, limit: int) -> list[dict[str, Any]]:
        count = self.chain.dispute_count()
        address = self.client.address
        newest = range(count, max(count - limit, 0), -1)  # dispute ids start at 1
        return [dispute_json(self.chain.get_dispute(i), client=address) for i in newest]

    def balances(self) -> dict[str, Any]:
        return self._cache.get("balances", self._read_balances)

    def _read_balances(self) -> dict[str, Any]:
        balance = self.client.balance()
        out = balance.to_json()
        out["paid_since_start"] = str(self.client.paid)
        out["claimable"] = str(self.chain.claimable(balance.client))
        out["gas_balance"] = str(self.chain.native_balance(balance.client))
        return out

    def stats(self) -> dict[str, Any]:
        experts = self._cache.peek(("experts", None))
        disputes = self._cache.peek(("disputes", 100))
        by_status: dict[str, int] = {}
        for d in disputes or ():
            by_status[d["status"]] = by_status.get(d["status"], 0) + 1
        return {
            "client": self.client.address,
            "chain_id": self.chain.deployment.chain_id,
            "block": self.chain.block_number(),
            "experts": None if experts is None else len(experts),
            "experts_active": None if experts is None else sum(e["status"] == "active" for e in experts),
            "disputes": None if disputes is None else by_status,
        }


async def _reputation_views(core: Any, infos: Sequence[ExpertInfo]) -> list[tuple[float, LocalStats | None]]:
    """(score, a copy of the local stats) per expert, read on the client's trio thread that owns the book."""
    book = core.reputation
    now = int(time.time())
    out: list[tuple[float, LocalStats | None]] = []
    for info in infos:
        stats = book.get(info.expert_id)
        out.append((book.score(info, now), None if stats is None else dataclasses.replace(stats)))
    return out
