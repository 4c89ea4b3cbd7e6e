"""moe-market benchmarks: each figure next to a baseline measured in the same run, and the ratio between them.

    python -m bench                    # the quick suite (a few minutes on two cores)
    python -m bench --long             # longer loops, steadier figures
    python -m bench --only latency,gas # some benchmarks only
    python -m bench --list

One module per benchmark, run in this order (cheap pure ones first, then those that need the local market):

    gate        5. gate selection time at 10 / 1,000 / 100,000 experts vs a naive full sort
    checking    4. compute overhead and detection probability of redundancy and audit policies
    memory      6. node RSS idle and under load, node start-up time, vs a bare python importing torch
    latency     1. one paid, receipted call vs raw py-libp2p and a local forward
    throughput  2. one node under 64 concurrent callers vs raw py-libp2p and a local batched forward
    digits      7. the remote digits MoE through the market (redundancy 1 and 3) vs the local model
    gas         3. gas per paid call amortized over calls per redemption, per-voucher gas of redeemMany

Each module has NAME, TITLE and `run(ctx) -> list[Figure]`. Results: bench/results/latest.json and
latest.md (bench.report); docs/performance.md quotes the latest table. The benchmarks bind 127.0.0.1 only,
bound every loop, stop what they start, and exit 0 when a target is missed (the report says what limits it).
"""

from __future__ import annotations

TITLES: dict[str, str] = {
    "gate": "5. gate selection time vs a naive full sort",
    "checking": "4. checking: compute overhead and detection of a 5% cheater",
    "memory": "6. node memory (RSS) idle and under load, start-up time",
    "latency": "1. latency of one paid, receipted call",
    "throughput": "2. throughput of one node, 64 concurrent callers",
    "digits": "7. remote digits MoE through the market vs the local model",
    "gas": "3. gas per paid call amortized over calls per redemption",
}
BENCHMARKS: tuple[str, ...] = tuple(TITLES)
