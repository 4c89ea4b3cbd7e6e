"""The client's gate: which experts get a request, scored by reputation against price.

Pure decision logic: no I/O, no clock unless `now` is omitted, randomness only from the `random.Random`
passed in (or one seeded from `GatePolicy.seed`).

Eligibility (every rule holds for primary experts and for fallbacks):
  registered for the request's model hash (and/or capability); status ACTIVE; never slashed
  (`disputes_lost == 0 and slashed_total == 0`: a slashed expert is chosen by no one); stake >= min_stake;
  price <= max_price; not in `exclude`; not known to be slower than the deadline (latency EWMA over
  `deadline_ms` after `slow_after_samples` timed calls).

Utility (log form; `score` from market.reputation, `price` in wei):

    log u = a * ln(score) - b * ln(price + floor) + ln(1 + bonus) - lam * ln(1 + L / deadline_ms)

that is `u = score^a / (price / p_ref)^b * (1 + bonus) / (1 + L / deadline)^lam` for any reference price
p_ref: the ranking does not depend on how prices are normalized, so none is needed (defaults a = 2, b = 1:
halving the price is worth as much as a score sqrt(2) times higher). `floor` (1 wei) keeps free experts
finite. `bonus = exploration_bonus * max(0, 1 - calls / exploration_calls)` favours experts this client has
called little (UCB-like optimism that fades with evidence); the latency term (L = the client's EWMA, none
while unknown) prefers experts that answer well inside the deadline.

Choice: experts in order of utility; with `temperature > 0` a Gumbel perturbation of scale `temperature` is
added to log u first, which samples without replacement with probability proportional to u^(1/temperature)
(load spreads over near-equal experts, and colluders cannot predict being picked together); then, with
probability `epsilon`, the last primary slot goes to a uniformly random eligible expert (epsilon-greedy).
`GatePolicy.greedy()` switches all three exploration mechanisms off.

Redundancy sets are operator-distinct: `primary` never holds two experts of one operator. `fallbacks` are
the next experts in order (at most `fallbacks_per_operator` per operator) and `next_fallback` /
`substitute` only hand out one whose operator is not already in the remaining set.

Scale: `CandidateIndex` keeps, per model hash and per capability, the eligible experts in price buckets
(log2 price, 8 per octave), each sorted by the static part of log u, `a * ln(chain_score) - b * ln(price)`.
Everything the client has not observed shares one dynamic term, so the best unobserved experts come out of a
k-way merge of the buckets under max_price in exact order; experts in the reputation book are scored one by
one (memoized while their stats do not change). The merge stops as soon as the choice is settled (every
chosen expert beats everything not yet merged), so a selection costs O(buckets + pool * log buckets +
observed experts of the model), not O(experts). With exploration off it returns exactly what `select` over
the plain list returns for the same `now` (the tests check this); the Gumbel perturbation acts on the merged
pool (at least `pool_size` experts), not on every expert. Static keys age with `now` (the age term) and are
recomputed when older than `refresh_after_s`. Degenerate markets cost more: when fewer operators than the
redundancy serve a model, or a few operators own most of its experts, the merge runs further (up to every
expert of the model) before it can stop.

Measured with `bench_gate` (one model, redundancy 3, 100 observed experts, default policy, index built
beforehand; 2 cores shared with other work, so best / median of 5 runs of 500 selections): 0.10 / 0.11 ms
per selection at 10 candidates, 0.66 / 0.75 ms at 1,000 and 0.61 / 0.90 ms at 100,000 (the cost does not
grow with n; the observed experts are most of it). For contrast, `select` over the plain 100,000-expert
list took about 1 s, and building the index about 1.7 s (once; updates are incremental).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from market.errors import MarketInputError, NoExpertError, SelectionError
from market.reputation import LocalStats, ReputationBook, ReputationParams, chain_score, local_score
from market.types import ExpertInfo, ExpertStatus

__all__ = [
    "CandidateIndex",
    "GatePolicy",
    "GateRequest",
    "Selection",
    "bench_gate",
    "next_fallback",
    "select",
    "substitute",
]

logger = logging.getLogger(__name__)

_TINY = 1e-300
_BUCKETS_PER_OCTAVE = 8
_EXPLORE_TRIES = 32


# ---------------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateRequest:
    """What one call needs. At least one of `model_hash` / `capability`; amounts in wei."""

    model_hash: bytes | None = None
    capability: bytes | None = None
    redundancy: int = 1
    max_price: int | None = None
    min_stake: int = 0
    deadline_ms: int = 10_000
    exclude: frozenset[int] = frozenset()
    allow_partial: bool = False

    def __post_init__(self) -> None:
        if self.model_hash is None and self.capability is None:
            raise MarketInputError("a GateRequest needs a model_hash or a capability")
        if type(self.redundancy) is not int or self.redundancy < 1:
            raise MarketInputError(f"redundancy must be an integer >= 1, got {self.redundancy!r}")
        if self.max_price is not None and self.max_price < 0:
            raise MarketInputError(f"max_price must be >= 0 wei or None, got {self.max_price}")
        if self.min_stake < 0:
            raise MarketInputError(f"min_stake must be >= 0 wei, got {self.min_stake}")
        if not self.deadline_ms > 0:
            raise MarketInputError(f"deadline_ms must be positive, got {self.deadline_ms}")
        object.__setattr__(self, "exclude", frozenset(self.exclude))

    def describe(self) -> str:
        parts = []
        if self.model_hash is not None:
            parts.append(f"model 0x{self.model_hash.hex()}")
        if self.capability is not None:
            parts.append(f"capability 0x{self.capability.hex()}")
        return " with ".join(parts)

    def matches(self, info: ExpertInfo) -> bool:
        return (self.model_hash is None or info.model_hash == self.model_hash) and (
            self.capability is None or info.capability == self.capability
        )


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """How the gate trades reputation, price, latency and exploration (see the module docstring)."""

    reputation_weight: float = 2.0  # a
    price_weight: float = 1.0  # b
    latency_weight: float = 0.5  # lam
    epsilon: float = 0.05
    exploration_bonus: float = 0.5
    exploration_calls: int = 10
    temperature: float = 0.2
    max_fallbacks: int = 8
    fallbacks_per_operator: int = 2
    pool_size: int = 64
    slow_after_samples: int = 3
    price_floor_wei: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "reputation_weight",
            "price_weight",
            "latency_weight",
            "exploration_bonus",
            "temperature",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise MarketInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.epsilon <= 1:
            raise MarketInputError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.exploration_calls < 0 or self.max_fallbacks < 0 or self.slow_after_samples < 1:
            raise MarketInputError(
                "exploration_calls and max_fallbacks must be >= 0, slow_after_samples >= 1"
            )
        if self.fallbacks_per_operator < 1 or self.pool_size < 1 or self.price_floor_wei < 1:
            raise MarketInputError("fallbacks_per_operator, pool_size and price_floor_wei must be >= 1")

    @classmethod
    def greedy(cls, **overrides: object) -> GatePolicy:
        """No exploration at all: no epsilon, no bonus for new experts, no random perturbation."""
        return cls(**{"epsilon": 0.0, "exploration_bonus": 0.0, "temperature": 0.0, **overrides})  # type: ignore[arg-type]

    def make_rng(self) -> random.Random:
        return random.Random(self.seed)

    @property
    def _static_weights(self) -> tuple[float, float, int]:
        return (self.reputation_weight, self.price_weight, self.price_floor_wei)


@dataclass(frozen=True, slots=True)
class Selection:
    """The gate's answer: `primary` (operator-distinct, best first) and ordered `fallbacks` for failover.

    `shortfall` says why `primary` is shorter than `redundancy` (only with `allow_partial=True`);
    `explored` holds the ids that exploration put into `primary`.
    """

    primary: tuple[ExpertInfo, ...]
    fallbacks: tuple[ExpertInfo, ...]
    redundancy: int
    shortfall: str | None = None
    explored: frozenset[int] = field(default_factory=frozenset)

    @property
    def complete(self) -> bool:
        return len(self.primary) >= self.redundancy

    @property
    def expert_ids(self) -> tuple[int, ...]:
        return tuple(e.expert_id for e in self.primary)

    @property
    def operators(self) -> frozenset[str]:
        return frozenset(e.operator for e in self.primary)


def next_fallback(selection: Selection, failed_id: int) -> ExpertInfo | None:
    """The fallback that should replace primary expert `failed_id`, or None if none keeps the set
    operator-distinct. Experts of the failed expert's own operator come last (its node may be down)."""
    failed = _primary_member(selection, failed_id)
    held = {e.operator for e in selection.primary if e.expert_id != failed_id}
    usable = [e for e in selection.fallbacks if e.operator not in held]
    for expert in usable:
        if expert.operator != failed.operator:
            return expert
    return usable[0] if usable else None


def substitute(selection: Selection, failed_id: int) -> Selection:
    """`selection` with `failed_id` replaced by `next_fallback` (same position); NoExpertError if none fits."""
    replacement = next_fallback(selection, failed_id)
    if replacement is None:
        held = sorted({e.operator for e in selection.primary if e.expert_id != failed_id})
        raise NoExpertError(
            f"expert {failed_id} failed and none of the {len(selection.fallbacks)} fallbacks can replace it "
            f"without a second expert of an operator already in the set ({', '.join(held) or 'none'}); "
            "select again with a larger max_fallbacks or exclude the failed expert"
        )
    primary = tuple(replacement if e.expert_id == failed_id else e for e in selection.primary)
    fallbacks = tuple(e for e in selection.fallbacks if e.expert_id != replacement.expert_id)
    return replace(selection, primary=primary, fallbacks=fallbacks)


def _primary_member(selection: Selection, failed_id: int) -> ExpertInfo:
    for expert in selection.primary:
        if expert.expert_id == failed_id:
            return expert
    raise MarketInputError(f"expert {failed_id} is not in the selection's primary set {selection.expert_ids}")


# ---------------------------------------------------------------------------------------------------------
# Scoring terms shared by the list path and the index path (so both give bit-identical utilities)
# ---------------------------------------------------------------------------------------------------------

_Ranked = tuple[float, int, int, ExpertInfo]  # (-log u, price, expert_id, info): ascending = best first


def _static_key(chain: float, price: int, weights: tuple[float, float, int]) -> float:
    a, b, floor = weights
    return a * math.log(max(chain, _TINY)) - b * math.log(price + floor)


class _Dynamic:
    """The per-request dynamic term of log u: local score, exploration bonus, deadline fit.

    `cache` (kept by a CandidateIndex across calls) memoizes the deadline-free part per expert id, keyed
    by the stats it was computed from, so unchanged observations are not re-scored on every call.
    """

    __slots__ = ("fresh", "_a", "_bonus", "_cache", "_calls", "_deadline", "_lam", "_params", "_slow_after")

    def __init__(
        self,
        request: GateRequest,
        params: ReputationParams,
        policy: GatePolicy,
        cache: dict[int, tuple[tuple[int, int, int, int, int, float], float]] | None = None,
    ) -> None:
        self._a = policy.reputation_weight
        self._bonus = policy.exploration_bonus
        self._calls = policy.exploration_calls
        self._lam = policy.latency_weight
        self._deadline = float(request.deadline_ms)
        self._slow_after = policy.slow_after_samples
        self._params = params
        self._cache = cache
        fresh = self.term(LocalStats())
        assert fresh is not None  # an expert with no timed call is never too slow
        self.fresh = fresh

    def _base(self, stats: LocalStats) -> float:
        value = self._a * math.log(max(local_score(stats, self._params), _TINY))
        if self._bonus and self._calls:
            value += math.log1p(self._bonus * max(0.0, 1.0 - stats.calls / self._calls))
        return value

    def term(self, stats: LocalStats, expert_id: int | None = None) -> float | None:
        """The dynamic part of log u, or None when the expert is known to miss the deadline."""
        samples = stats.latency_samples
        if samples >= self._slow_after and stats.latency_ewma_ms > self._deadline:
            return None
        if self._cache is None or expert_id is None:
            value = self._base(stats)
        else:
            seen = (
                stats.calls,
                stats.successes,
                stats.agreements,
                stats.disagreements,
                samples,
                stats.latency_ewma_ms,
            )
            hit = self._cache.get(expert_id)
            if hit is not None and hit[0] == seen:
                value = hit[1]
            else:
                value = self._base(stats)
                self._cache[expert_id] = (seen, value)
        if samples and self._lam:
            value -= self._lam * math.log1p(stats.latency_ewma_ms / self._deadline)
        return value


def _statically_eligible(info: ExpertInfo) -> bool:
    return info.status == ExpertStatus.ACTIVE and info.disputes_lost == 0 and info.slashed_total == 0


def _fits_request(info: ExpertInfo, request: GateRequest) -> bool:
    return (
        (request.max_price is None or info.price <= request.max_price)
        and info.stake >= request.min_stake
        and info.expert_id not in request.exclude
    )


# ---------------------------------------------------------------------------------------------------------
# Choosing from a ranked list
# ---------------------------------------------------------------------------------------------------------


def _greedy(
    order: Sequence[_Ranked], redundancy: int, max_fallbacks: int, per_operator: int
) -> tuple[list[_Ranked], list[_Ranked], int]:
    """Primary: the first expert of each new operator until `redundancy`; fallbacks: the rest in order, at
    most `per_operator` per operator. Returns (primary, fallbacks, index of the last item looked at)."""
    primary: list[_Ranked] = []
    fallbacks: list[_Ranked] = []
    operators: set[str] = set()
    fallback_ops: dict[str, int] = {}
    last = -1
    for last, item in enumerate(order):
        if len(primary) >= redundancy and len(fallbacks) >= max_fallbacks:
            last -= 1
            break
        op = item[3].operator
        if len(primary) < redundancy and op not in operators:
            primary.append(item)
            operators.add(op)
        elif len(fallbacks) < max_fallbacks and fallback_ops.get(op, 0) < per_operator:
            fallbacks.append(item)
            fallback_ops[op] = fallback_ops.get(op, 0) + 1
    return primary, fallbacks, last


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(rng.random() or _TINY) or _TINY)


_Sampler = Callable[[random.Random], "ExpertInfo | None"]


def _choose(
    ranked: list[_Ranked],
    request: GateRequest,
    policy: GatePolicy,
    rng: random.Random,
    sample: _Sampler,
    is_valid_pick: Callable[[ExpertInfo], bool],
) -> Selection:
    """Apply the perturbation and epsilon-greedy to an exactly ranked list, then build the Selection."""
    r = request.redundancy
    order = ranked
    if policy.temperature > 0:
        t = policy.temperature
        order = sorted((item[0] - t * _gumbel(rng), item[1], item[2], item[3]) for item in ranked)
    primary_items, fallback_items, _ = _greedy(order, r, policy.max_fallbacks, policy.fallbacks_per_operator)
    primary = [item[3] for item in primary_items]
    explored: frozenset[int] = frozenset()
    if primary and policy.epsilon > 0 and rng.random() < policy.epsilon:
        keep = primary[:-1]
        taken_ops = {e.operator for e in keep}
        taken_ids = {e.expert_id for e in primary}
        for _ in range(_EXPLORE_TRIES):
            pick = sample(rng)
            if pick is None:
                break
            if pick.operator in taken_ops or not is_valid_pick(pick):
                continue
            if pick.expert_id not in taken_ids:
                displaced = primary[-1]
                primary = [*keep, pick]
                explored = frozenset((pick.expert_id,))
                fallback_items = _refill_fallbacks(order, primary, displaced, policy)
            break
    fallbacks = tuple(item[3] for item in fallback_items)
    shortfall = None
    if len(primary) < r:
        operators = len({item[3].operator for item in ranked})
        shortfall = (
            f"only {operators} distinct operator(s) offer {request.describe()} within the request's limits, "
            f"but redundancy {r} needs {r}: a redundancy set never holds two experts of one operator"
        )
        if not request.allow_partial:
            raise SelectionError(f"{shortfall}; lower the redundancy or pass allow_partial=True")
    return Selection(tuple(primary), fallbacks, r, shortfall, explored)


def _refill_fallbacks(
    order: Sequence[_Ranked], primary: list[ExpertInfo], displaced: ExpertInfo, policy: GatePolicy
) -> list[_Ranked]:
    chosen = {e.expert_id for e in primary}
    head: _Ranked = (0.0, displaced.price, displaced.expert_id, displaced)
    out: list[_Ranked] = [head] if policy.max_fallbacks else []
    per_op = {displaced.operator: len(out)}
    for item in order:
        if len(out) >= policy.max_fallbacks:
            break
        eid, op = item[2], item[3].operator
        if eid in chosen or eid == displaced.expert_id or per_op.get(op, 0) >= policy.fallbacks_per_operator:
            continue
        out.append(item)
        per_op[op] = per_op.get(op, 0) + 1
    return out


def _explain_empty(
    experts: Iterable[ExpertInfo],
    request: GateRequest,
    stats: Mapping[int, LocalStats],
    policy: GatePolicy,
) -> NoExpertError:
    """Why nothing fits: the first filter (in a fixed order) that leaves no expert, with the numbers."""
    what = request.describe()
    stage = [e for e in experts if request.matches(e)]
    if not stage:
        return NoExpertError(
            f"no expert is registered for {what}; check the model hash or capability, "
            "or wait until an operator registers one"
        )
    n = len(stage)
    stage = [e for e in stage if e.status == ExpertStatus.ACTIVE]
    if not stage:
        return NoExpertError(
            f"none of the {n} experts registered for {what} is active (all unbonding or withdrawn)"
        )
    n = len(stage)
    stage = [e for e in stage if e.disputes_lost == 0 and e.slashed_total == 0]
    if not stage:
        return NoExpertError(
            f"all {n} active experts for {what} have been slashed (lost a dispute); the gate never chooses them"
        )
    n = len(stage)
    top_stake = max(e.stake for e in stage)
    stage = [e for e in stage if e.stake >= request.min_stake]
    if not stage:
        return NoExpertError(
            f"none of the {n} active, unslashed experts for {what} has stake >= min_stake {request.min_stake} wei "
            f"(the largest stake is {top_stake} wei); lower min_stake"
        )
    n = len(stage)
    stage = [e for e in stage if e.expert_id not in request.exclude]
    if not stage:
        return NoExpertError(f"all {n} experts for {what} that meet min_stake are excluded by the request")
    n = len(stage)
    cheapest = min(e.price for e in stage)
    stage = [e for e in stage if request.max_price is None or e.price <= request.max_price]
    if not stage:
        return NoExpertError(
            f"all {n} experts for {what} that fit the request are over max_price {request.max_price} wei; "
            f"the cheapest asks {cheapest} wei: raise max_price to at least that"
        )
    fastest = min((stats[e.expert_id].latency_ewma_ms for e in stage if e.expert_id in stats), default=0.0)
    return NoExpertError(
        f"all {len(stage)} experts for {what} that fit the request answer slower than the deadline "
        f"({request.deadline_ms} ms; the fastest averages {fastest:.0f} ms): raise deadline_ms"
    )


# ---------------------------------------------------------------------------------------------------------
# select over a plain list
# ---------------------------------------------------------------------------------------------------------


def select(
    candidates: Sequence[ExpertInfo] | CandidateIndex,
    request: GateRequest,
    book: ReputationBook,
    policy: GatePolicy | None = None,
    rng: random.Random | None = None,
    now: int | None = None,
) -> Selection:
    """Choose `request.redundancy` operator-distinct experts plus fallbacks (see the module docstring).

    `candidates` is the chain's list of experts or a `CandidateIndex` built from it (much faster at scale).
    Pass one long-lived `rng` for all calls: without it each call seeds a fresh one from `policy.seed`, which
    with a fixed seed repeats the same draws every call (fine for a test, wrong for a client). `now` (unix
    seconds, for the age term) defaults to the clock.
    Raises NoExpertError when nothing fits (the message says which filter emptied the set) and
    SelectionError when fewer distinct operators than `redundancy` fit and `allow_partial` is not set.
    """
    policy = policy or GatePolicy()
    rng = rng if rng is not None else policy.make_rng()
    if isinstance(candidates, CandidateIndex):
        return candidates.select(request, book, policy, rng, now)
    now = int(time.time()) if now is None else now
    stats = book.view()
    dynamic = _Dynamic(request, book.params, policy)
    weights = policy._static_weights
    ranked: list[_Ranked] = []
    seen: set[int] = set()
    for info in candidates:
        if info.expert_id in seen:
            raise MarketInputError(f"expert id {info.expert_id} appears twice among the candidates")
        seen.add(info.expert_id)
        if not (request.matches(info) and _statically_eligible(info) and _fits_request(info, request)):
            continue
        st = stats.get(info.expert_id)
        dyn = dynamic.fresh if st is None else dynamic.term(st)
        if dyn is None:
            continue
        key = _static_key(chain_score(info, now, book.params), info.price, weights)
        ranked.append((-(key + dyn), info.price, info.expert_id, info))
    if not ranked:
        raise _explain_empty(candidates, request, stats, policy)
    ranked.sort()
    pool = [item[3] for item in ranked]
    return _choose(ranked, request, policy, rng, lambda g: g.choice(pool), lambda _info: True)


# ---------------------------------------------------------------------------------------------------------
# CandidateIndex
# ---------------------------------------------------------------------------------------------------------

_Entry = tuple[float, int, int]  # (-static key, price, expert_id) in a bucket, ascending = best first


def _bucket_of(price: int) -> int:
    return int(math.log2(price + 1) * _BUCKETS_PER_OCTAVE)


class _Group:
    """The experts of one model hash (or one capability)."""

    __slots__ = ("bucket_nos", "buckets", "members", "pool", "pool_pos")

    def __init__(self) -> None:
        self.members: set[int] = set()  # every expert registered under the key, whatever its status
        self.buckets: dict[int, list[_Entry]] = {}  # only eligible experts (active, never slashed)
        self.bucket_nos: list[int] = []
        self.pool: list[int] = []  # eligible ids, for uniform sampling (epsilon-greedy)
        self.pool_pos: dict[int, int] = {}

    def add(self, entry: _Entry, bucket: int, *, sort: bool = True) -> None:
        lst = self.buckets.get(bucket)
        if lst is None:
            lst = self.buckets[bucket] = []
            bisect.insort(self.bucket_nos, bucket)
        if sort:
            bisect.insort(lst, entry)
        else:
            lst.append(entry)
        self.pool_pos[entry[2]] = len(self.pool)
        self.pool.append(entry[2])

    def discard(self, entry: _Entry, bucket: int) -> None:
        lst = self.buckets[bucket]
        i = bisect.bisect_left(lst, entry)
        if i < len(lst) and lst[i] == entry:
            del lst[i]
        if not lst:
            del self.buckets[bucket]
            self.bucket_nos.pop(bisect.bisect_left(self.bucket_nos, bucket))
        pos = self.pool_pos.pop(entry[2])
        last = self.pool.pop()
        if pos < len(self.pool):
            self.pool[pos] = last
            self.pool_pos[last] = pos


class _Merge:
    """k-way merge of the buckets whose prices can be <= max_price, best static key first."""

    __slots__ = ("_buckets", "_heap")

    def __init__(self, group: _Group, max_price: int | None) -> None:
        nos = group.bucket_nos
        if max_price is not None:
            nos = nos[: bisect.bisect_right(nos, _bucket_of(max_price))]
        self._buckets = group.buckets
        self._heap = [(group.buckets[no][0], no, 0) for no in nos]
        heapq.heapify(self._heap)

    def peek(self) -> _Entry | None:
        return self._heap[0][0] if self._heap else None

    def pop(self) -> _Entry:
        entry, no, pos = self._heap[0]
        lst = self._buckets[no]
        if pos + 1 < len(lst):
            heapq.heapreplace(self._heap, (lst[pos + 1], no, pos + 1))
        else:
            heapq.heappop(self._heap)
        return entry


class CandidateIndex:
    """The chain's experts indexed for fast selection; keep it current with `upsert` / `remove`.

    Static keys use `params` (the book's ReputationParams) and the policy's reputation and price weights;
    a `select` with different ones, or with `now` more than `refresh_after_s` past the keys' time,
    recomputes every key first (O(n log n), logged).
    """

    def __init__(
        self,
        candidates: Iterable[ExpertInfo] = (),
        *,
        now: int,
        params: ReputationParams | None = None,
        policy: GatePolicy | None = None,
        refresh_after_s: int = 3600,
    ) -> None:
        if refresh_after_s <= 0:
            raise MarketInputError("refresh_after_s must be positive")
        self.refresh_after_s = refresh_after_s
        self._params = params or ReputationParams()
        self._weights = (policy or GatePolicy())._static_weights
        self._now = now
        self._infos: dict[int, ExpertInfo] = {}
        self._entries: dict[int, tuple[_Entry, int]] = {}  # eligible experts: (entry, bucket)
        self._groups: dict[tuple[str, bytes], _Group] = {}
        self._terms: dict[int, tuple[tuple[int, int, int, int, int, float], float]] = {}
        self._terms_for: tuple[object, ...] = ()
        for info in candidates:
            if info.expert_id in self._infos:
                raise MarketInputError(f"expert id {info.expert_id} appears twice among the candidates")
            self._infos[info.expert_id] = info
        self._rebuild()

    # -- maintenance -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, expert_id: object) -> bool:
        return expert_id in self._infos

    def get(self, expert_id: int) -> ExpertInfo | None:
        return self._infos.get(expert_id)

    def upsert(self, info: ExpertInfo) -> None:
        """Add an expert or replace what the index knows about it (price, stake, status, slashing...)."""
        self._unlink(info.expert_id)
        self._infos[info.expert_id] = info
        self._link(info, sort=True)

    def update(self, infos: Iterable[ExpertInfo]) -> None:
        for info in infos:
            self.upsert(info)

    def remove(self, expert_id: int) -> None:
        self._unlink(expert_id)
        self._infos.pop(expert_id, None)

    def _group_keys(self, info: ExpertInfo) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
        return (("m", info.model_hash), ("c", info.capability))

    def _link(self, info: ExpertInfo, *, sort: bool) -> None:
        groups = []
        for key in self._group_keys(info):
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group()
            groups.append(group)
        for group in groups:
            group.members.add(info.expert_id)
        if not _statically_eligible(info):
            return
        key = _static_key(chain_score(info, self._now, self._params), info.price, self._weights)
        entry: _Entry = (-key, info.price, info.expert_id)
        bucket = _bucket_of(info.price)
        self._entries[info.expert_id] = (entry, bucket)
        for group in groups:
            group.add(entry, bucket, sort=sort)

    def _unlink(self, expert_id: int) -> None:
        info = self._infos.get(expert_id)
        if info is None:
            return
        placed = self._entries.pop(expert_id, None)
        for key in self._group_keys(info):
            group = self._groups[key]
            group.members.discard(expert_id)
            if placed is not None:
                group.discard(*placed)
            if not group.members:
                del self._groups[key]

    def _rebuild(self) -> None:
        self._entries.clear()
        self._groups.clear()
        for info in self._infos.values():
            self._link(info, sort=False)
        for group in self._groups.values():
            for lst in group.buckets.values():
                lst.sort()

    def refresh(
        self, now: int, params: ReputationParams | None = None, policy: GatePolicy | None = None
    ) -> None:
        """Recompute every static key for `now` (and new params or policy weights)."""
        self._now = now
        if params is not None:
            self._params = params
        if policy is not None:
            self._weights = policy._static_weights
        self._rebuild()

    def _term_cache(
        self, params: ReputationParams, policy: GatePolicy
    ) -> dict[int, tuple[tuple[int, int, int, int, int, float], float]]:
        key = (params, policy.reputation_weight, policy.exploration_bonus, policy.exploration_calls)
        if key != self._terms_for:
            self._terms = {}
            self._terms_for = key
        return self._terms

    # -- selection ---------------------------------------------------------------------------------------

    def select(
        self,
        request: GateRequest,
        book: ReputationBook,
        policy: GatePolicy | None = None,
        rng: random.Random | None = None,
        now: int | None = None,
    ) -> Selection:
        """Like `market.gate.select` over the indexed experts, without looking at all of them."""
        policy = policy or GatePolicy()
        rng = rng if rng is not None else policy.make_rng()
        now = self._now if now is None else now
        if (
            (book.params is not self._params and book.params != self._params)
            or policy._static_weights != self._weights
            or now - self._now > self.refresh_after_s
        ):
            logger.info(
                "re-keying the candidate index (%d experts) for new weights or time", len(self._infos)
            )
            self.refresh(now, book.params, policy)

        group_key = ("m", request.model_hash) if request.model_hash is not None else ("c", request.capability)
        group = self._groups.get(group_key)  # type: ignore[arg-type]
        stats = book.view()
        if group is None:
            raise _explain_empty((), request, stats, policy)
        dynamic = _Dynamic(request, book.params, policy, self._term_cache(book.params, policy))
        fresh = dynamic.fresh
        infos = self._infos
        both_keys = request.model_hash is not None and request.capability is not None

        # Experts this client has observed: each has its own dynamic term, so score them one by one.
        observed: list[_Ranked] = []
        entries = self._entries
        for eid in group.members.intersection(stats):
            placed = entries.get(eid)
            if placed is None:
                continue
            info = infos[eid]
            if (both_keys and not request.matches(info)) or not _fits_request(info, request):
                continue
            dyn = dynamic.term(stats[eid], eid)
            if dyn is not None:
                observed.append((-(-placed[0][0] + dyn), info.price, eid, info))

        # Everyone else shares `fresh`: merge the buckets in static-key order until the choice is settled.
        merge = _Merge(group, request.max_price)
        cap = 1 + policy.fallbacks_per_operator  # more of one operator can never be chosen
        per_op: dict[str, int] = {}
        unobserved: list[_Ranked] = []
        target = max(policy.pool_size, request.redundancy + policy.max_fallbacks)
        while True:
            while len(unobserved) < target and merge.peek() is not None:
                neg_key, price, eid = merge.pop()
                if eid in stats:
                    continue
                info = infos[eid]
                if (both_keys and not request.matches(info)) or not _fits_request(info, request):
                    continue
                op = info.operator
                count = per_op.get(op, 0)
                if count >= cap:
                    continue
                per_op[op] = count + 1
                unobserved.append((-(-neg_key + fresh), price, eid, info))
            ranked = sorted(observed + unobserved)
            nxt = merge.peek()
            if nxt is None:
                break
            primary, fallbacks, last = _greedy(
                ranked, request.redundancy, policy.max_fallbacks, policy.fallbacks_per_operator
            )
            settled = len(primary) >= request.redundancy and len(fallbacks) >= policy.max_fallbacks
            if settled and -ranked[last][0] > -nxt[0] + fresh:
                break
            target *= 2

        if not ranked:
            raise _explain_empty((infos[eid] for eid in group.members), request, stats, policy)

        def sample(g: random.Random) -> ExpertInfo | None:
            return infos[group.pool[g.randrange(len(group.pool))]] if group.pool else None

        def valid(info: ExpertInfo) -> bool:
            if not (request.matches(info) and _fits_request(info, request)):
                return False
            st = stats.get(info.expert_id)
            return st is None or dynamic.term(st) is not None

        return _choose(ranked, request, policy, rng, sample, valid)


# ---------------------------------------------------------------------------------------------------------
# Benchmark helper
# ---------------------------------------------------------------------------------------------------------


def _random_market(n: int, rng: random.Random, model: bytes, now: int) -> list[ExpertInfo]:
    """n experts of one model: ~n/4 operators, log-uniform prices over two decades, 5% inactive, 2% slashed."""
    ether = 10**18
    experts = []
    for i in range(n):
        roll = rng.random()
        experts.append(
            ExpertInfo(
                expert_id=i,
                operator=f"0x{rng.randrange(max(n // 4, 2)):040x}",
                signer=f"0x{i:040x}",
                model_hash=model,
                capability=b"\x01" * 32,
                price=int(10 ** rng.uniform(12, 14)),
                stake=rng.randint(1, 40) * ether,
                node_key=b"\x00" * 32,
                endpoint=(),
                registered_at=now - rng.randrange(90 * 86_400),
                slashed_total=ether if 0.05 <= roll < 0.07 else 0,
                disputes_lost=1 if 0.05 <= roll < 0.07 else 0,
                status=ExpertStatus.UNBONDING if roll < 0.05 else ExpertStatus.ACTIVE,
                volume=rng.randrange(10 * ether),
            )
        )
    return experts


@dataclass(frozen=True, slots=True)
class BenchMarket:
    """The random market the gate benchmarks run on: candidates, a book with observations, a request."""

    experts: list[ExpertInfo]
    book: ReputationBook
    policy: GatePolicy
    request: GateRequest
    now: int


def bench_market(n: int, *, redundancy: int = 3, observed: int = 100, seed: int = 0) -> BenchMarket:
    """n experts of one model; the client has observed `observed` random ones; the request asks `redundancy`
    experts under the median price with a minimum stake; the default policy (with exploration)."""
    rng = random.Random(seed)
    now = 1_700_000_000
    model = b"\x42" * 32
    experts = _random_market(n, rng, model, now)
    book = ReputationBook()
    for info in rng.sample(experts, min(observed, n)):
        st = book.stats(info.expert_id)
        for _ in range(rng.randrange(1, 30)):
            if rng.random() < 0.95:
                st.record_success(rng.uniform(20, 400), now=now)
            else:
                st.record_failure("timeout", now=now)
            st.record_vote(rng.random() < 0.97)
    prices = sorted(e.price for e in experts)
    request = GateRequest(
        model_hash=model,
        redundancy=redundancy,
        max_price=prices[len(prices) // 2],
        min_stake=2 * 10**18,
        deadline_ms=1_000,
        allow_partial=True,
    )
    return BenchMarket(experts, book, GatePolicy(seed=seed), request, now)


def bench_gate(
    n: int, *, selections: int = 200, redundancy: int = 3, observed: int = 100, seed: int = 0
) -> float:
    """Milliseconds per `CandidateIndex.select` over `bench_market(n)` (index built beforehand)."""
    if n < 1 or selections < 1:
        raise MarketInputError("bench_gate needs n >= 1 and selections >= 1")
    m = bench_market(n, redundancy=redundancy, observed=observed, seed=seed)
    index = CandidateIndex(m.experts, now=m.now, params=m.book.params, policy=m.policy)
    select_rng = random.Random(seed)
    start = time.perf_counter()
    for _ in range(selections):
        index.select(m.request, m.book, m.policy, select_rng, m.now)
    return (time.perf_counter() - start) * 1000 / selections
