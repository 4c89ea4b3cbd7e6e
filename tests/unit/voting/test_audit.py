"""market.audit: the closed forms against a Monte-Carlo of the same process, and the documented numbers."""

from __future__ import annotations

import math
import random

import pytest

from market.audit import (
    AuditPolicy,
    Redundancy,
    detection_probability,
    expected_compute,
    required_audit_rate,
    simulate_detection,
)
from market.errors import MarketInputError


@pytest.mark.parametrize(
    ("cheat_rate", "calls", "policy", "false_mismatch"),
    [
        (0.05, 200, AuditPolicy(0.10), 0.0),
        (0.05, 100, AuditPolicy(0.05, escalate_to=5), 0.02),
        (0.20, 30, AuditPolicy(0.15), 0.0),
        (0.02, 40, Redundancy(3), 0.0),
        (0.30, 10, Redundancy(1), 0.0),
    ],
)
def test_closed_form_matches_monte_carlo(
    cheat_rate: float, calls: int, policy: AuditPolicy | Redundancy, false_mismatch: float
) -> None:
    trials = 2_000
    sim = simulate_detection(
        cheat_rate, calls, policy, trials, random.Random(12345), false_mismatch_rate=false_mismatch
    )
    p = detection_probability(cheat_rate, calls, policy)
    sigma = math.sqrt(max(p * (1 - p), 1e-6) / trials)
    assert abs(sim.detection_probability - p) <= 4 * sigma + 1e-9
    compute = expected_compute(policy, cheat_rate, false_mismatch_rate=false_mismatch)
    # per call at most 1 + 1 + (escalate_to - 2) extra calls: a crude but safe bound on the spread
    spread = getattr(policy, "escalate_to", 2)
    assert abs(sim.compute_per_call - compute) <= 4 * spread / math.sqrt(trials * calls) + 1e-9


def test_documented_numbers() -> None:
    c, n = 0.05, 2000
    assert 1 - detection_probability(c, n, Redundancy(3)) < 1e-15
    assert expected_compute(Redundancy(3), c) == 3.0
    assert detection_probability(c, n, AuditPolicy(0.05)) == pytest.approx(0.99330, abs=1e-5)
    assert detection_probability(c, n, AuditPolicy(0.10)) == pytest.approx(0.999955, abs=1e-6)
    assert detection_probability(c, n, AuditPolicy(0.15)) == pytest.approx(0.9999997, abs=1e-7)
    assert expected_compute(AuditPolicy(0.05), c) == pytest.approx(1.0525)
    assert expected_compute(AuditPolicy(0.10), c) == pytest.approx(1.105)
    assert expected_compute(AuditPolicy(0.15), c) == pytest.approx(1.1575)
    rate = required_audit_rate(c, n, 0.99)
    assert rate == pytest.approx(0.0460, abs=1e-4)
    assert detection_probability(c, n, AuditPolicy(rate)) == pytest.approx(0.99)
    # the product target: >= 99 % detection at <= 1.15x compute
    assert (
        detection_probability(c, n, AuditPolicy(0.05)) >= 0.99
        and expected_compute(AuditPolicy(0.05), c) <= 1.15
    )


def test_should_audit_rate_and_escalation() -> None:
    policy = AuditPolicy(0.1, escalate_to=4)
    rng = random.Random(3)
    share = sum(policy.should_audit(rng) for _ in range(20_000)) / 20_000
    assert share == pytest.approx(0.1, abs=0.01)
    assert {policy.initial_experts(rng) for _ in range(100)} == {1, 2}
    assert policy.on_mismatch() == 4
    assert not AuditPolicy(0.0).should_audit(rng) and AuditPolicy(1.0).should_audit(rng)


def test_validation() -> None:
    with pytest.raises(MarketInputError):
        AuditPolicy(1.5)
    with pytest.raises(MarketInputError):
        AuditPolicy(0.1, escalate_to=1)
    with pytest.raises(MarketInputError):
        Redundancy(0)
    with pytest.raises(MarketInputError):
        detection_probability(2.0, 10, Redundancy(3))
    with pytest.raises(MarketInputError, match="even auditing every call"):
        required_audit_rate(0.001, 10, 0.99)
