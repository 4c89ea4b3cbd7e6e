"""Benchmark 4: what checking costs and what it catches.

An expert cheats on 5 % of its calls; over 2,000 of its calls, how likely is it caught, and how many expert
calls does each answered call cost? Closed forms from `market.audit` (detection_probability,
expected_compute) and a Monte-Carlo of the same process call by call (`simulate_detection`, seeded) that
checks them. The baseline is redundancy 3 (every call to three experts), measured the same way.

Target: >= 99 % detection at <= 1.15x compute (one expert call per answered call = 1x).
"""

from __future__ import annotations

import random

from bench import TITLES
from bench.env import BenchContext
from bench.report import Figure, Target, figure

NAME = "checking"
TITLE = TITLES[NAME]
CHEAT_RATE = 0.05
CALLS = 2_000
TARGET = Target(">=", 0.99, "value", ">= 99% at <= 1.15x compute")
COMPUTE = Target("<=", 1.15, "value", "<= 1.15x compute")


def run(ctx: BenchContext) -> list[Figure]:
    from market.audit import (
        AuditPolicy,
        Redundancy,
        detection_probability,
        expected_compute,
        required_audit_rate,
        simulate_detection,
    )

    trials = ctx.pick(300, 3000)
    policies = [
        ("redundancy 3", Redundancy(3)),
        ("audit 5%", AuditPolicy(0.05)),
        ("audit 10%", AuditPolicy(0.10)),
        ("audit 15%", AuditPolicy(0.15)),
    ]
    rng = random.Random(7)
    results = {}
    for name, policy in policies:
        sim = simulate_detection(CHEAT_RATE, CALLS, policy, trials, rng)
        results[name] = (
            detection_probability(CHEAT_RATE, CALLS, policy),
            expected_compute(policy, CHEAT_RATE),
            sim,
        )
    base_p, base_compute, _ = results["redundancy 3"]
    figures = []
    for name, _policy in policies:
        p, compute, sim = results[name]
        figures.append(
            figure(
                NAME, f"{name}: P(detected) within {CALLS:,} calls", p, "probability",
                baseline=None if name == "redundancy 3" else base_p,
                baseline_name="" if name == "redundancy 3" else "redundancy 3",
                note=f"closed form; Monte-Carlo {sim.detection_probability:.4f} +- {sim.detection_stderr:.4f} "
                     f"over {trials} trials of {CALLS:,} calls (seed 7) at {sim.compute_per_call:.4f}x compute",
            )
        )  # fmt: skip
    for name, _policy in policies:
        p, compute, sim = results[name]
        figures.append(
            figure(
                NAME, f"{name}: expert calls per answered call", compute, "x",
                baseline=None if name == "redundancy 3" else base_compute,
                baseline_name="" if name == "redundancy 3" else "redundancy 3",
            )
        )  # fmt: skip
    # The target is met by a policy, not by every policy: the best detection within the compute budget.
    within = [(results[n][0], n) for n, _ in policies if results[n][1] <= COMPUTE.bound]
    if within:
        p, best = max(within)
        _, compute, sim = results[best]
        figures.append(
            figure(
                NAME, f"best policy within {COMPUTE.bound}x compute ({best}): P(detected)", p, "probability",
                baseline=base_p, baseline_name="redundancy 3", target=TARGET,
                limit="no audit rate both catches a 5% cheater in 2,000 calls and stays within 1.15x",
                note=f"{best} costs {compute:.4f}x compute against 3x for redundancy 3; Monte-Carlo "
                     f"{sim.detection_probability:.4f}; smallest rate reaching 99%: "
                     f"{required_audit_rate(CHEAT_RATE, CALLS, 0.99):.2%}",
            )
        )  # fmt: skip
    return figures
