"""Spot-check auditing, the cheaper alternative to full redundancy, and the numbers that compare them.

Pure logic: the client's per-call decision (`AuditPolicy.should_audit`, `initial_experts`) and the
analysis used by benchmarks and docs (closed forms, plus a Monte-Carlo simulation that checks them).

Audit policy. Each call goes to one expert; with probability `rate` the same input also goes to a second
expert of another operator (an audit). If the two answers differ beyond the model's tolerance the call
escalates to `escalate_to` answers in all (`escalate_to - 2` more experts) and the majority decides; the
minority's signed receipt goes to a dispute. Redundancy r instead sends every call to r experts.

Model and assumptions (for the analysis, not the client): the expert under study cheats on each call
independently with probability c; auditors and escalation experts are honest and a tolerance comparison
always tells a cheat from a correct answer; honest experts disagree spuriously with probability m
(`false_mismatch_rate`, default 0). Over n calls served by the cheating expert:

    audit at rate q:  P(detected) = 1 - (1 - c q)^n
                      expert calls per answered call = 1 + q + q (c + (1 - c) m) (escalate_to - 2)
    redundancy r>=2:  P(detected) = 1 - (1 - c)^n,   expert calls per answered call = r
    redundancy 1:     P(detected) = 0,               1 call

Numbers for the product target (>= 99 % detection at <= 1.15x compute), c = 5 %, n = 2,000 calls,
escalate_to = 3, m = 0 (`python -c "import market.audit as a; a.print_table()"` prints them):

    policy             P(detected)       expert calls / answered call
    redundancy 3       1 - 2.8e-45       3.000
    audit  5 %         0.99330           1.0525
    audit 10 %         0.999955          1.1050
    audit 15 %         0.9999997         1.1575   (over the 1.15x budget)

`simulate_detection` agrees: 1,000 trials of 2,000 calls (seed 7) give 0.989 +- 0.003 detection at 1.0522x
for the 5 % rate, 1.000 at 1.1049x for 10 %.

So a 5 % audit rate already meets the target (99.3 % at 1.05x); 10 % gives 99.995 % at 1.105x, about a
third of the compute of redundancy 3 for practically the same assurance over 2,000 calls. The smallest
rate that reaches 99 % is `required_audit_rate(0.05, 2000, 0.99)` = 4.6 %. What audits do not give is
per-call assurance: one given call is checked with probability q only, so use redundancy where a single
wrong answer is costly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from market.errors import MarketInputError

__all__ = [
    "AuditPolicy",
    "Redundancy",
    "SimulationResult",
    "detection_probability",
    "expected_compute",
    "print_table",
    "required_audit_rate",
    "simulate_detection",
]


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    """Audit a share `rate` of calls with a second expert; on mismatch ask until `escalate_to` answers."""

    rate: float
    escalate_to: int = 3

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, int | float) and 0 <= self.rate <= 1):
            raise MarketInputError(f"audit rate must be in [0, 1], got {self.rate!r}")
        if type(self.escalate_to) is not int or self.escalate_to < 2:
            raise MarketInputError(f"escalate_to must be an integer >= 2, got {self.escalate_to!r}")

    def should_audit(self, rng: random.Random) -> bool:
        return rng.random() < self.rate

    def initial_experts(self, rng: random.Random) -> int:
        """How many experts to ask first: 2 for an audited call, else 1."""
        return 2 if self.should_audit(rng) else 1

    def on_mismatch(self) -> int:
        """The redundancy to escalate to when the audited answers disagree."""
        return self.escalate_to


@dataclass(frozen=True, slots=True)
class Redundancy:
    """Full redundancy: every call goes to `r` operator-distinct experts."""

    r: int

    def __post_init__(self) -> None:
        if type(self.r) is not int or self.r < 1:
            raise MarketInputError(f"redundancy must be an integer >= 1, got {self.r!r}")


Checking = AuditPolicy | Redundancy


def _check_rates(cheat_rate: float, calls: int) -> None:
    if not 0 <= cheat_rate <= 1:
        raise MarketInputError(f"cheat_rate must be in [0, 1], got {cheat_rate}")
    if type(calls) is not int or calls < 0:
        raise MarketInputError(f"calls must be an integer >= 0, got {calls!r}")


def _per_call_detection(cheat_rate: float, policy: Checking) -> float:
    if isinstance(policy, Redundancy):
        return cheat_rate if policy.r >= 2 else 0.0
    return cheat_rate * policy.rate


def detection_probability(cheat_rate: float, calls: int, policy: Checking) -> float:
    """P(at least one cheat is caught) over `calls` calls of an expert that cheats on a `cheat_rate` share."""
    _check_rates(cheat_rate, calls)
    p = _per_call_detection(cheat_rate, policy)
    if p >= 1.0:
        return 1.0 if calls else 0.0
    return -math.expm1(calls * math.log1p(-p))


def expected_compute(policy: Checking, cheat_rate: float = 0.0, *, false_mismatch_rate: float = 0.0) -> float:
    """Expected expert calls per answered call (1.0 = no checking overhead)."""
    _check_rates(cheat_rate, 0)
    if not 0 <= false_mismatch_rate <= 1:
        raise MarketInputError(f"false_mismatch_rate must be in [0, 1], got {false_mismatch_rate}")
    if isinstance(policy, Redundancy):
        return float(policy.r)
    mismatch = cheat_rate + (1 - cheat_rate) * false_mismatch_rate
    return 1.0 + policy.rate + policy.rate * mismatch * (policy.escalate_to - 2)


def required_audit_rate(cheat_rate: float, calls: int, target: float) -> float:
    """The smallest audit rate that catches the cheater with probability >= `target` within `calls` calls."""
    _check_rates(cheat_rate, calls)
    if not 0 < target < 1:
        raise MarketInputError(f"target must be in (0, 1), got {target}")
    if cheat_rate == 0 or calls == 0:
        raise MarketInputError("an expert that never cheats, or never serves, cannot be caught at any rate")
    per_call = -math.expm1(math.log1p(-target) / calls)
    rate = per_call / cheat_rate
    if rate > 1:
        raise MarketInputError(
            f"even auditing every call catches a {cheat_rate:.2%} cheater within {calls} calls with probability "
            f"{detection_probability(cheat_rate, calls, AuditPolicy(1.0)):.4f} < {target}"
        )
    return rate


@dataclass(frozen=True, slots=True)
class SimulationResult:
    trials: int
    calls: int
    detected: int
    expert_calls: int

    @property
    def detection_probability(self) -> float:
        return self.detected / self.trials

    @property
    def compute_per_call(self) -> float:
        return self.expert_calls / (self.trials * self.calls)

    @property
    def detection_stderr(self) -> float:
        p = self.detection_probability
        return math.sqrt(p * (1 - p) / self.trials)


def simulate_detection(
    cheat_rate: float,
    calls: int,
    policy: Checking,
    trials: int,
    rng: random.Random,
    *,
    false_mismatch_rate: float = 0.0,
) -> SimulationResult:
    """Monte-Carlo of the same process, call by call (cheat? audited? mismatch? escalate?)."""
    _check_rates(cheat_rate, calls)
    if type(trials) is not int or trials < 1 or calls < 1:
        raise MarketInputError("simulate_detection needs trials >= 1 and calls >= 1")
    detected = 0
    expert_calls = 0
    rand = rng.random
    for _ in range(trials):
        caught = False
        if isinstance(policy, Redundancy):
            expert_calls += policy.r * calls
            if policy.r >= 2:
                caught = any(rand() < cheat_rate for _ in range(calls))
        else:
            rate, extra = policy.rate, policy.escalate_to - 2
            for _ in range(calls):
                cheated = rand() < cheat_rate
                expert_calls += 1
                if rand() < rate:
                    expert_calls += 1
                    if cheated:
                        caught = True
                        expert_calls += extra
                    elif false_mismatch_rate and rand() < false_mismatch_rate:
                        expert_calls += extra
        detected += caught
    return SimulationResult(trials=trials, calls=calls, detected=detected, expert_calls=expert_calls)


def print_table(
    cheat_rate: float = 0.05, calls: int = 2000, rates: tuple[float, ...] = (0.05, 0.10, 0.15)
) -> None:
    """Print the comparison in the module docstring (for docs and benchmarks)."""
    policies: list[tuple[str, Checking]] = [("redundancy 3", Redundancy(3))]
    policies += [(f"audit {r:.0%}", AuditPolicy(r)) for r in rates]
    print(f"cheat rate {cheat_rate:.1%}, {calls} calls")
    for name, policy in policies:
        p = detection_probability(cheat_rate, calls, policy)
        miss = math.exp(calls * math.log1p(-_per_call_detection(cheat_rate, policy)))
        print(
            f"  {name:<14} P(detected) = {p:.7f} (miss {miss:.2e})  compute = {expected_compute(policy, cheat_rate):.4f}x"
        )
    print(f"  smallest audit rate for 99%: {required_audit_rate(cheat_rate, calls, 0.99):.4f}")
