"""Remote experts as torch modules: `RemoteExpert` (one model on the market) and `RemoteMixtureOfExperts`
(a local gate routing each example to k remote experts).

    client = Client(config)
    gate, expert_hashes = load_digits_gate("models/digits")          # the gate stays local
    moe = RemoteMixtureOfExperts(gate, expert_hashes, client, k=2)
    logits = moe(x)                                                   # [N, 10], paid and checked

Every forward is real money: each expert slot that receives rows is one paid, checked call per chunk of at
most the node's rows per call (`max_rows`), the chunks and the slots run concurrently on the client's trio
thread. The combination is the same arithmetic as `DigitsMoE.forward` / `sparse_forward` (gate weights
times each chosen expert's output, accumulated with `index_add_` in ascending expert order), so the remote
mixture predicts what the local model predicts, within the models' tolerance.

Gradients: none flow through a remote call (the market returns numbers, not a graph): an expert's output
is a constant that does not require grad. The local gate's weights do take part in autograd, so a gate can
be trained against fixed remote experts; the experts cannot be trained this way.

`forward` needs the blocking `Client`; with an `AsyncClient`, `await module.forward_async(x)` instead.
It must not: keep tensors of callers, or retry a paid call by itself (the client's failover does).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import trio
from torch import nn

from market.audit import AuditPolicy
from market.client.calls import gather
from market.client.core import AsyncClient
from market.client.facade import Client
from market.errors import MarketInputError
from market.manifest import ModelManifest, parse_model_hash

__all__ = ["RemoteExpert", "RemoteMixtureOfExperts"]

logger = logging.getLogger(__name__)

MAX_CONCURRENT_CHUNKS = 8  # per expert and forward; the transport pools 8 streams per node by default


def _core_of(client: Client | AsyncClient) -> AsyncClient | None:
    return client if isinstance(client, AsyncClient) else None


class RemoteExpert(nn.Module):
    """One model on the market as a module: `forward(x)` -> the model's output for x (see the module docstring).

    `input_name` / `output_name` default to the manifest's only input / output. The checking policy,
    `max_price` and `deadline` default to the client's configuration. `calls` and `paid` count what this
    module spent.
    """

    def __init__(
        self,
        client: Client | AsyncClient,
        model_hash: bytes | str,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        max_rows: int | None = None,
        redundancy: int | None = None,
        audit: AuditPolicy | None = None,
        max_price: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(client, Client | AsyncClient):
            raise MarketInputError(f"client must be a market.Client or market.AsyncClient, got {type(client).__name__}")
        if max_rows is not None and (type(max_rows) is not int or max_rows < 1):
            raise MarketInputError(f"max_rows must be a positive integer, got {max_rows!r}")
        self.client = client
        self.model_hash = parse_model_hash(model_hash)
        self.input_name = input_name
        self.output_name = output_name
        self.max_rows = max_rows or client.config.max_rows_per_call
        self.redundancy = redundancy
        self.audit = audit
        self.max_price = max_price
        self.deadline = deadline
        self.calls = 0
        self.paid = 0

    def extra_repr(self) -> str:
        return f"model=0x{self.model_hash.hex()[:12]}.., max_rows={self.max_rows}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.client, AsyncClient):
            raise MarketInputError("with an AsyncClient, use `await module.forward_async(x)`")
        return self.client.run(lambda core: self.forward_with(core, x), timeout=self._timeout(x))

    async def forward_async(self, x: torch.Tensor) -> torch.Tensor:
        core = _core_of(self.client)
        if core is None:
            raise MarketInputError("forward_async needs an AsyncClient; with a Client, call the module directly")
        return await self.forward_with(core, x)

    def _timeout(self, x: torch.Tensor) -> float:
        config = self.client.config
        per_call = (self.deadline or config.deadline_s) + config.manifest_timeout_s + config.rpc_timeout_s
        return per_call + 10.0

    async def forward_with(self, core: AsyncClient, x: torch.Tensor) -> torch.Tensor:
        """The forward pass on the client's trio thread (what `forward` runs there)."""
        manifest = await core.manifest(self.model_hash)
        input_name = self._input_name(manifest)
        output_name = self._output_name(manifest)
        if not isinstance(x, torch.Tensor):
            raise MarketInputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        x = x.detach()
        rows = x.shape[0] if x.dim() else 0
        if rows == 0:
            schema = next(s for s in manifest.outputs if s.name == output_name)
            shape = (0, *[d if d > 0 else 0 for d in schema.shape[1:]])
            return torch.empty(shape, dtype=schema.torch_dtype)
        chunks = list(torch.split(x, self.max_rows))
        outs: list[torch.Tensor | None] = [None] * len(chunks)
        # Bounded: a request waiting for a free stream would eat into its own timeout.
        limit = trio.Semaphore(MAX_CONCURRENT_CHUNKS)

        async def one(i: int, chunk: torch.Tensor) -> None:
            async with limit:
                result = await self._call(core, input_name, chunk)
            self.calls += 1
            self.paid += result.paid
            outs[i] = result.outputs[output_name]

        await gather([lambda i=i, c=c: one(i, c) for i, c in enumerate(chunks)])
        out = torch.cat([o for o in outs if o is not None], dim=0)
        return out.detach()

    async def _call(self, core: AsyncClient, input_name: str, chunk: torch.Tensor) -> Any:
        return await core.infer(
            self.model_hash,
            {input_name: chunk.contiguous()},
            redundancy=self.redundancy,
            audit=self.audit,
            max_price=self.max_price,
            deadline=self.deadline,
        )

    def _input_name(self, manifest: ModelManifest) -> str:
        names = [s.name for s in manifest.inputs]
        if self.input_name is not None:
            if self.input_name not in names:
                raise MarketInputError(f"model {manifest.name} has no input {self.input_name!r}; it takes {names}")
            return self.input_name
        if len(names) != 1:
            raise MarketInputError(f"model {manifest.name} takes several inputs {names}: pass input_name")
        return names[0]

    def _output_name(self, manifest: ModelManifest) -> str:
        names = [s.name for s in manifest.outputs]
        if self.output_name is not None:
            if self.output_name not in names:
                raise MarketInputError(f"model {manifest.name} has no output {self.output_name!r}; it gives {names}")
            return self.output_name
        if len(names) != 1:
            raise MarketInputError(f"model {manifest.name} gives several outputs {names}: pass output_name")
        return names[0]


class RemoteMixtureOfExperts(nn.Module):
    """A sparse mixture whose gate runs here and whose experts are on the market (see the module docstring).

    `gate(x)` returns either `(weights [N, k], indices [N, k])` (like `DigitsGate`) or logits `[N, E]`, of
    which the top `k` are taken and softmax-normalized. `expert_model_hashes[i]` is the model of expert slot
    i. Per forward, the rows routed to each slot go to the market in one batched call per chunk, all slots
    concurrently; `calls` and `paid` count what the layer spent.
    """

    def __init__(
        self,
        gate: nn.Module,
        expert_model_hashes: Sequence[bytes | str],
        client: Client | AsyncClient,
        k: int = 2,
        *,
        redundancy: int | None = None,
        audit: AuditPolicy | None = None,
        max_price: int | None = None,
        deadline: float | None = None,
        max_rows: int | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        super().__init__()
        if not expert_model_hashes:
            raise MarketInputError("a mixture needs at least one expert model hash")
        if type(k) is not int or not 1 <= k <= len(expert_model_hashes):
            raise MarketInputError(f"k must be in 1..{len(expert_model_hashes)}, got {k!r}")
        self.gate = gate
        self.k = k
        self.client = client
        self.experts = nn.ModuleList(
            RemoteExpert(
                client, h, input_name=input_name, output_name=output_name, max_rows=max_rows,
                redundancy=redundancy, audit=audit, max_price=max_price, deadline=deadline,
            )
            for h in expert_model_hashes
        )

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def calls(self) -> int:
        return sum(e.calls for e in self.experts)  # type: ignore[union-attr]

    @property
    def paid(self) -> int:
        return sum(e.paid for e in self.experts)  # type: ignore[union-attr]

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [N, k], expert indices [N, k]) from the local gate."""
        routed: Any = self.gate(x)
        if isinstance(routed, tuple) and len(routed) == 2:
            weights, indices = routed
        elif isinstance(routed, torch.Tensor) and routed.dim() == 2:
            top, indices = routed.topk(self.k, dim=1)
            weights = top.softmax(dim=1)
        else:
            raise MarketInputError("the gate must return (weights, indices) or logits of shape [N, num_experts]")
        if indices.shape != weights.shape or indices.dim() != 2 or indices.shape[1] != self.k:
            raise MarketInputError(
                f"the gate routed each example to {indices.shape[-1] if indices.dim() else 0} experts, expected k={self.k}"
            )
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_experts):
            raise MarketInputError(f"the gate chose an expert index outside 0..{self.num_experts - 1}")
        return weights, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.client, AsyncClient):
            raise MarketInputError("with an AsyncClient, use `await moe.forward_async(x)`")
        weights, indices = self.route(x)
        timeout = self.experts[0]._timeout(x) * 2  # type: ignore[operator]
        outputs = self.client.run(lambda core: self._experts_with(core, x, indices), timeout=timeout)
        return self._combine(x, weights, indices, outputs)

    async def forward_async(self, x: torch.Tensor) -> torch.Tensor:
        core = _core_of(self.client)
        if core is None:
            raise MarketInputError("forward_async needs an AsyncClient; with a Client, call the module directly")
        weights, indices = self.route(x)
        outputs = await self._experts_with(core, x, indices)
        return self._combine(x, weights, indices, outputs)

    async def _experts_with(
        self, core: AsyncClient, x: torch.Tensor, indices: torch.Tensor
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """expert index -> (rows, slot, output for x[rows]), every routed slot called concurrently."""
        plan = {}
        for expert in indices.unique().tolist():
            rows, slot = (indices == expert).nonzero(as_tuple=True)
            plan[int(expert)] = (rows, slot)
        results: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

        async def one(expert: int) -> None:
            rows, slot = plan[expert]
            module: RemoteExpert = self.experts[expert]  # type: ignore[assignment]
            results[expert] = (rows, slot, await module.forward_with(core, x.detach()[rows]))

        await gather([lambda e=e: one(e) for e in plan])
        return results

    @staticmethod
    def _combine(
        x: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
        outputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        if not outputs:
            raise MarketInputError("no example was routed to any expert (empty batch?)")
        width = next(iter(outputs.values()))[2].shape[1:]
        out = torch.zeros((x.shape[0], *width), dtype=x.dtype)
        # Ascending expert order, as DigitsMoE.sparse_forward: the same additions in the same order.
        for expert in sorted(outputs):
            rows, slot, logits = outputs[expert]
            w = weights[rows, slot]
            out = out.index_add(0, rows, w.reshape(-1, *([1] * (logits.dim() - 1))) * logits.to(out.dtype))
        return out
