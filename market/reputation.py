"""Reputation: what the chain proves about an expert combined with what this client saw itself.

Pure logic. The only I/O is the explicit `ReputationBook.save` / `ReputationBook.load` of the client's own
observations (a small JSON file written atomically); the chain facts arrive as `ExpertInfo` values.

Formula (all terms in [0, 1]; `score = chain_score * local_score`, so the score is in [0, 1]):

    chain_score(info, now) = base * penalty
        base    = w0 + w_stake * stake / (stake + S_ref)                 stake, diminishing returns
                     + w_age * (1 - exp(-age / T_age))                   age = now - registered_at (>= 0)
                     + w_volume * volume / (volume + V_ref)              volume redeemed, mild, diminishing
                  with w0 + w_stake + w_age + w_volume = 1 (defaults 0.40 / 0.30 / 0.20 / 0.10)
        penalty = d ** disputes_lost * S_ref / (S_ref + k * slashed_total)    (defaults d = 0.2, k = 10)

    local_score(stats) = agreement ** p * reliability * speed
        agreement   = (agreements + alpha) / (agreements + disagreements + alpha + beta)
                      Beta(alpha=4, beta=1) prior: an expert never seen in a vote starts at 0.8; p = 2
        reliability = (successes + rho * m) / (calls + m)                prior: 95 % success, weight m = 10
        speed       = 1 - w_latency * L / (L + L_ref)                    L = latency EWMA in ms, or L_ref when
                      no call was timed yet (defaults w_latency = 0.3, L_ref = 250 ms)

Monotonicity, which the tests check: the score never rises with more disagreements, more failures or
timeouts, higher latency, more disputes lost or more slashed stake; it never falls with more stake, more
age, more volume, more agreements or more successes. It does not depend on anything else (no randomness,
no clock: `now` is passed in). A slashed expert is excluded by the gate anyway; the penalty keeps its score
honest for display and for any caller that ranks without the gate.

`calls` counts every recorded call: `calls == successes + failures + timeouts` (timeouts are not failures).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from market.durable import atomic_write
from market.errors import MarketConfigError, MarketInputError
from market.types import ExpertInfo

__all__ = [
    "LATENCY_EWMA_ALPHA",
    "FailureKind",
    "LocalStats",
    "ReputationBook",
    "ReputationParams",
    "chain_score",
    "local_score",
]

logger = logging.getLogger(__name__)

LATENCY_EWMA_ALPHA = 0.2
"""Weight of the newest latency sample in the EWMA (about the last 10 calls matter)."""

_FILE_FORMAT = "moe-market/reputation"
_FILE_VERSION = 1
_ETHER = 10**18


class FailureKind(enum.StrEnum):
    """Why a call failed, as far as reputation cares."""

    ERROR = "error"  # an error answer, a broken stream, a malformed or unverifiable answer
    TIMEOUT = "timeout"  # no answer before the deadline


@dataclass(frozen=True, slots=True)
class ReputationParams:
    """The constants of the formula in the module docstring. Amounts in wei, times in seconds and ms.

    `reference_stake` is the stake that earns half of the stake weight; a few times the registry's
    `MIN_STAKE` is a good value (the default fits `MarketParams.mainnet_like()`, 10 ETH minimum).
    """

    reference_stake: int = 10 * _ETHER
    reference_volume: int = _ETHER // 10
    age_scale_s: float = 30 * 86_400.0
    base_weight: float = 0.40
    stake_weight: float = 0.30
    age_weight: float = 0.20
    volume_weight: float = 0.10
    dispute_factor: float = 0.2
    slash_severity: float = 10.0
    agreement_prior: tuple[float, float] = (4.0, 1.0)
    agreement_power: float = 2.0
    success_prior: float = 0.95
    success_prior_weight: float = 10.0
    latency_weight: float = 0.3
    reference_latency_ms: float = 250.0

    def __post_init__(self) -> None:
        if self.reference_stake <= 0 or self.reference_volume <= 0:
            raise MarketInputError("reference_stake and reference_volume must be positive (wei)")
        if self.age_scale_s <= 0 or self.reference_latency_ms <= 0:
            raise MarketInputError("age_scale_s and reference_latency_ms must be positive")
        weights = (self.base_weight, self.stake_weight, self.age_weight, self.volume_weight)
        if min(weights) < 0 or not math.isclose(sum(weights), 1.0, rel_tol=1e-9):
            raise MarketInputError(f"base/stake/age/volume weights must be >= 0 and sum to 1, got {weights}")
        if not 0 < self.dispute_factor <= 1 or self.slash_severity < 0:
            raise MarketInputError("dispute_factor must be in (0, 1] and slash_severity >= 0")
        alpha, beta = self.agreement_prior
        if alpha <= 0 or beta <= 0 or self.agreement_power <= 0:
            raise MarketInputError("agreement_prior entries and agreement_power must be positive")
        if not 0 <= self.success_prior <= 1 or self.success_prior_weight <= 0:
            raise MarketInputError("success_prior must be in [0, 1] and success_prior_weight positive")
        if not 0 <= self.latency_weight <= 1:
            raise MarketInputError("latency_weight must be in [0, 1]")


@dataclass(slots=True)
class LocalStats:
    """What this client saw of one expert. Mutable; owned by a `ReputationBook`."""

    calls: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    agreements: int = 0
    disagreements: int = 0
    latency_ewma_ms: float = 0.0
    latency_samples: int = 0
    last_seen: int | None = None

    def record_success(self, latency_ms: float, *, now: int | None = None) -> None:
        """A call answered in `latency_ms`. `now` (unix seconds), when given, becomes `last_seen`."""
        if not math.isfinite(latency_ms) or latency_ms < 0:
            raise MarketInputError(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
        self.calls += 1
        self.successes += 1
        if self.latency_samples == 0:
            self.latency_ewma_ms = float(latency_ms)
        else:
            self.latency_ewma_ms += LATENCY_EWMA_ALPHA * (latency_ms - self.latency_ewma_ms)
        self.latency_samples += 1
        self._seen(now)

    def record_failure(self, kind: FailureKind | str = FailureKind.ERROR, *, now: int | None = None) -> None:
        """A call failed (`FailureKind.ERROR`) or timed out (`FailureKind.TIMEOUT`)."""
        try:
            kind = FailureKind(kind)
        except ValueError:
            choices = ", ".join(k.value for k in FailureKind)
            raise MarketInputError(f"unknown failure kind {kind!r}; use one of: {choices}") from None
        self.calls += 1
        if kind is FailureKind.TIMEOUT:
            self.timeouts += 1
        else:
            self.failures += 1
        self._seen(now)

    def record_vote(self, agreed: bool, *, now: int | None = None) -> None:
        """The expert's answer was (`agreed=True`) or was not in the winning group of a vote."""
        if agreed:
            self.agreements += 1
        else:
            self.disagreements += 1
        self._seen(now)

    def _seen(self, now: int | None) -> None:
        if now is not None and (self.last_seen is None or now > self.last_seen):
            self.last_seen = int(now)


def chain_score(info: ExpertInfo, now: int, params: ReputationParams) -> float:
    """The on-chain half of the score, in [0, 1] (see the module docstring)."""
    p = params
    stake = max(info.stake, 0)
    volume = max(info.volume, 0)
    age = max(now - info.registered_at, 0)
    base = (
        p.base_weight
        + p.stake_weight * (stake / (stake + p.reference_stake))
        + p.age_weight * -math.expm1(-age / p.age_scale_s)
        + p.volume_weight * (volume / (volume + p.reference_volume))
    )
    penalty = p.dispute_factor ** max(info.disputes_lost, 0)
    slashed = max(info.slashed_total, 0)
    if slashed:
        penalty *= p.reference_stake / (p.reference_stake + p.slash_severity * slashed)
    return min(max(base * penalty, 0.0), 1.0)


def local_score(stats: LocalStats, params: ReputationParams) -> float:
    """The client's own half of the score, in [0, 1] (see the module docstring)."""
    p = params
    alpha, beta = p.agreement_prior
    agreement = (stats.agreements + alpha) / (stats.agreements + stats.disagreements + alpha + beta)
    m = p.success_prior_weight
    reliability = (stats.successes + p.success_prior * m) / (stats.calls + m)
    latency = stats.latency_ewma_ms if stats.latency_samples else p.reference_latency_ms
    speed = 1.0 - p.latency_weight * latency / (latency + p.reference_latency_ms)
    return min(max(agreement**p.agreement_power * reliability * speed, 0.0), 1.0)


_FRESH = LocalStats()


class ReputationBook:
    """LocalStats per expert id, and the combined score. Not thread-safe: one owner (the client's gate)."""

    __slots__ = ("_stats", "params")

    def __init__(self, params: ReputationParams | None = None) -> None:
        self.params = params or ReputationParams()
        self._stats: dict[int, LocalStats] = {}

    # -- observations ------------------------------------------------------------------------------------

    def stats(self, expert_id: int) -> LocalStats:
        """The stats of `expert_id`, created empty on first use (record on the returned object)."""
        found = self._stats.get(expert_id)
        if found is None:
            found = self._stats[expert_id] = LocalStats()
        return found

    def get(self, expert_id: int) -> LocalStats | None:
        """The stats of `expert_id`, or None if this client never recorded anything about it."""
        return self._stats.get(expert_id)

    def forget(self, expert_id: int) -> None:
        self._stats.pop(expert_id, None)

    def items(self) -> Iterator[tuple[int, LocalStats]]:
        return iter(self._stats.items())

    def view(self) -> Mapping[int, LocalStats]:
        """A read-only live view of the stats by expert id (what the gate reads on its hot path)."""
        return MappingProxyType(self._stats)

    def __contains__(self, expert_id: object) -> bool:
        return expert_id in self._stats

    def __len__(self) -> int:
        return len(self._stats)

    # -- scoring -----------------------------------------------------------------------------------------

    def local_score(self, expert_id: int) -> float:
        return local_score(self._stats.get(expert_id, _FRESH), self.params)

    def score(self, info: ExpertInfo, now: int) -> float:
        """Reputation of `info` in [0, 1] at unix time `now`: chain_score * local_score."""
        return chain_score(info, now, self.params) * self.local_score(info.expert_id)

    # -- persistence -------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the observations as JSON, atomically (temp file in the same folder, fsync, os.replace)."""
        target = Path(path)
        doc = {
            "format": _FILE_FORMAT,
            "version": _FILE_VERSION,
            "experts": {str(eid): asdict(st) for eid, st in sorted(self._stats.items())},
        }
        data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        atomic_write(target, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str], params: ReputationParams | None = None) -> ReputationBook:
        """Read a book written by `save`. A missing file gives an empty book; a corrupt one MarketConfigError."""
        source = Path(path)
        book = cls(params)
        try:
            raw = source.read_bytes()
        except FileNotFoundError:
            logger.debug("no reputation file at %s: starting with an empty book", source)
            return book
        try:
            doc = json.loads(raw)
            book._stats = _parse_document(doc)
        except (ValueError, TypeError) as exc:
            raise MarketConfigError(
                f"reputation file {source} is corrupt ({exc}); delete it to start with an empty book "
                "(this client's own history is lost, the chain's is not) or restore a backup"
            ) from exc
        return book


_INT_FIELDS = tuple(f.name for f in fields(LocalStats) if f.name not in ("latency_ewma_ms", "last_seen"))


def _parse_document(doc: Any) -> dict[int, LocalStats]:
    if not isinstance(doc, dict) or doc.get("format") != _FILE_FORMAT:
        raise ValueError(f"not a {_FILE_FORMAT} document")
    if doc.get("version") != _FILE_VERSION:
        raise ValueError(f"unsupported version {doc.get('version')!r} (this code reads {_FILE_VERSION})")
    experts = doc.get("experts")
    if not isinstance(experts, dict):
        raise ValueError("'experts' must be an object")
    out: dict[int, LocalStats] = {}
    for key, entry in experts.items():
        if not key.isdigit():
            raise ValueError(f"expert id {key!r} is not a non-negative integer")
        out[int(key)] = _parse_stats(key, entry)
    return out


def _parse_stats(key: str, entry: Any) -> LocalStats:
    if not isinstance(entry, dict) or set(entry) != {f.name for f in fields(LocalStats)}:
        raise ValueError(f"expert {key}: expected exactly the fields of LocalStats")
    for name in _INT_FIELDS:
        value = entry[name]
        if type(value) is not int or value < 0:
            raise ValueError(f"expert {key}: {name} must be an integer >= 0, got {value!r}")
    ewma = entry["latency_ewma_ms"]
    if type(ewma) not in (int, float) or not math.isfinite(ewma) or ewma < 0:
        raise ValueError(f"expert {key}: latency_ewma_ms must be a finite number >= 0, got {ewma!r}")
    last_seen = entry["last_seen"]
    if last_seen is not None and type(last_seen) is not int:
        raise ValueError(f"expert {key}: last_seen must be an integer or null, got {last_seen!r}")
    stats = LocalStats(**{**entry, "latency_ewma_ms": float(ewma)})
    if stats.calls != stats.successes + stats.failures + stats.timeouts:
        raise ValueError(f"expert {key}: calls != successes + failures + timeouts")
    if stats.latency_samples > stats.successes:
        raise ValueError(f"expert {key}: more latency samples than successful calls")
    return stats
