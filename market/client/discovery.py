"""Which experts exist: the registry read once per model (or capability), cached in a `CandidateIndex`, kept
fresh from registry events, and re-read in full now and then.

    ensure(model_hash=..)   first use: every expert registered for the model (all pages, one batched read)
                            later: at most every `ttl_s`, the ExpertRegistered / ExpertUpdated /
                            DisputeResolved events since the last block seen; the experts they touch are
                            re-read (new experts, price or key changes, slashing)
                            every `full_refresh_s` (or `refresh=True`): everything again, which also catches
                            what has no event reader (unbonding, withdrawal)

A registry that cannot be reached during a refresh is logged and the cache keeps serving: a call can still
go to the experts known, and the chain stays the judge of payments and disputes.

Chain calls block, so they run in worker threads. It must not: sign, pay or talk to nodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from market.errors import ChainError
from market.gate import CandidateIndex, GatePolicy
from market.reputation import ReputationParams
from market.types import ExpertInfo

__all__ = ["ExpertDirectory", "RegistryReader"]

logger = logging.getLogger(__name__)

Key = tuple[str, bytes]


class RegistryReader(Protocol):
    """The registry reads the directory needs (market.chain.contracts.MarketChain has them all)."""

    def block_number(self) -> int: ...

    def expert_count(self) -> int: ...

    def experts_by_model(self, model_hash: bytes) -> list[ExpertInfo]: ...

    def experts_by_capability(self, capability: bytes) -> list[ExpertInfo]: ...

    def get_experts(self, expert_ids: Iterable[int]) -> list[ExpertInfo]: ...

    def experts_registered(self, from_block: int = 0, to_block: Any = None) -> list[Any]: ...

    def experts_updated(self, from_block: int = 0, to_block: Any = None) -> list[Any]: ...

    def disputes_resolved(self, from_block: int = 0, to_block: Any = None) -> list[Any]: ...


@dataclass(slots=True)
class _Tracked:
    members: set[int] = field(default_factory=set)
    loaded_at: float = 0.0


class ExpertDirectory:
    """The client's cached view of the registry (see the module docstring). One per client; trio only."""

    def __init__(
        self,
        chain: RegistryReader,
        *,
        params: ReputationParams,
        policy: GatePolicy,
        ttl_s: float = 15.0,
        full_refresh_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._chain = chain
        self._clock = clock
        self._wall = wall_clock
        self.ttl_s = ttl_s
        self.full_refresh_s = full_refresh_s
        self.index = CandidateIndex(now=int(wall_clock()), params=params, policy=policy)
        self._tracked: dict[Key, _Tracked] = {}
        self._block: int | None = None
        self._events_at = clock()
        self._lock = trio.Lock()

    # -- reads ----------------------------------------------------------------------------------------

    @staticmethod
    def key(model_hash: bytes | None, capability: bytes | None) -> Key:
        if model_hash is not None:
            return ("m", bytes(model_hash))
        if capability is not None:
            return ("c", bytes(capability))
        raise ValueError("a model hash or a capability is needed")

    def members(self, model_hash: bytes | None = None, capability: bytes | None = None) -> list[ExpertInfo]:
        """The experts cached for the key (any status), by id; both keys narrow to experts matching both."""
        tracked = self._tracked.get(self.key(model_hash, capability))
        if tracked is None:
            return []
        out = []
        for eid in sorted(tracked.members):
            info = self.index.get(eid)
            if info is None:
                continue
            if capability is not None and info.capability != capability:
                continue
            if model_hash is not None and info.model_hash != model_hash:
                continue
            out.append(info)
        return out

    def get(self, expert_id: int) -> ExpertInfo | None:
        return self.index.get(expert_id)

    # -- refresh --------------------------------------------------------------------------------------

    async def ensure(
        self, model_hash: bytes | None = None, capability: bytes | None = None, *, refresh: bool = False
    ) -> list[ExpertInfo]:
        """The experts for a model hash (or a capability), loaded or refreshed as the module docstring says."""
        key = self.key(model_hash, capability)
        async with self._lock:
            tracked = self._tracked.get(key)
            now = self._clock()
            if tracked is None or refresh or now - tracked.loaded_at > self.full_refresh_s:
                await self._load(key)
            elif now - self._events_at > self.ttl_s:
                await self._poll_events()
        return self.members(model_hash, capability)

    async def all_experts(self) -> list[ExpertInfo]:
        """Every registered expert (any status), read now: for listings, not for the hot path."""

        def read() -> list[ExpertInfo]:
            count = self._chain.expert_count()
            return self._chain.get_experts(range(1, count + 1)) if count else []

        infos = await trio.to_thread.run_sync(read)
        self.index.update(infos)
        return infos

    async def forget_cache(self, expert_ids: Sequence[int]) -> None:
        """Re-read these experts now (after a dispute against them was resolved, say)."""
        if not expert_ids:
            return
        infos = await trio.to_thread.run_sync(self._chain.get_experts, list(expert_ids))
        self.index.update(infos)

    async def _load(self, key: Key) -> None:
        kind, value = key

        def read() -> tuple[int, list[ExpertInfo]]:
            block = self._chain.block_number()
            if kind == "m":
                return block, self._chain.experts_by_model(value)
            return block, self._chain.experts_by_capability(value)

        try:
            block, infos = await trio.to_thread.run_sync(read)
        except ChainError:
            if key in self._tracked:
                logger.warning("registry unreachable; keeping the cached experts for %s", _describe(key), exc_info=True)
                self._tracked[key].loaded_at = self._clock()
                return
            raise
        self.index.update(infos)
        tracked = self._tracked.setdefault(key, _Tracked())
        tracked.members = {i.expert_id for i in infos}
        tracked.loaded_at = self._clock()
        if self._block is None:
            self._block = block
            self._events_at = self._clock()
        logger.debug("loaded %d experts for %s at block %d", len(infos), _describe(key), block)

    async def _poll_events(self) -> None:
        self._events_at = self._clock()
        since = self._block
        if since is None:
            return
        tracked = set(self._tracked)
        known = set().union(*(t.members for t in self._tracked.values()))

        def read() -> tuple[int, list[ExpertInfo]]:
            head = self._chain.block_number()
            if head <= since:
                return head, []
            ids = {
                e.expert_id
                for e in self._chain.experts_registered(since + 1, head)
                if ("m", e.model_hash) in tracked or ("c", e.capability) in tracked
            }
            changed = {e.expert_id for e in self._chain.experts_updated(since + 1, head)}
            changed |= {e.expert_id for e in self._chain.disputes_resolved(since + 1, head)}
            ids |= {eid for eid in changed if eid in known}
            return head, self._chain.get_experts(sorted(ids)) if ids else []

        try:
            head, infos = await trio.to_thread.run_sync(read)
        except ChainError:
            logger.warning("could not read registry events; keeping the cached experts", exc_info=True)
            return
        self.index.update(infos)
        for info in infos:
            for key in (("m", info.model_hash), ("c", info.capability)):
                if key in self._tracked:
                    self._tracked[key].members.add(info.expert_id)
        if infos:
            logger.debug("registry events since block %d touched experts %s", since, [i.expert_id for i in infos])
        self._block = head


def _describe(key: Key) -> str:
    kind, value = key
    return f"{'model' if kind == 'm' else 'capability'} 0x{value.hex()}"
