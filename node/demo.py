"""`moe demo`: the whole market on one machine, end to end, with real parts only.

1. anvil on 127.0.0.1 with the three contracts deployed (devnet parameters: 20 s commit and reveal periods);
2. the digits mixture of experts trained locally (cached after the first run) and packed, one package per expert;
3. four expert node processes, each staking and serving all four experts; one of them cheats (its outputs are
   perturbed far beyond the tolerance);
4. three verifier processes, staked;
5. a client that deposits and runs `RemoteMixtureOfExperts` over the digits test set with redundancy 3: every
   call is paid by voucher and checked by vote; the cheater's receipts become evidence and disputes are opened
   automatically (one per cheating expert);
6. the verifiers re-execute and vote; the disputes resolve; the cheater is slashed;
7. the nodes stop gracefully, redeeming every voucher they hold, and the money is checked.

Every process is stopped on exit, on error and on Ctrl-C (LocalMarket.stop in a finally block).
The summary (`--json`) has the fields the product owner asked for; see `DemoSummary`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from market.chain.params import MarketParams
from market.errors import MarketError
from node.localnet import LocalMarket, NodeSpec

logger = logging.getLogger(__name__)

PRICE_WEI = 10**12  # 1000 gwei per call
STAKE_WEI = 10**18
DEPOSIT_WEI = 10**18


@dataclass
class DemoSummary:
    experts: int = 0
    verifiers: int = 0
    requests: int = 0
    expert_calls: int = 0
    failed_requests: int = 0
    accuracy_local: float = 0.0
    accuracy_remote: float = 0.0
    predictions_equal: float = 0.0
    paid_wei: int = 0
    redeemed_wei: int = 0
    gas_per_request: float = 0.0
    payment_transactions: int = 0
    disputes: int = 0
    cheaters: list[int] = field(default_factory=list)
    slashed: list[int] = field(default_factory=list)
    honest_slashed: int = 0
    slashed_wei: int = 0
    duration_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[str, int, int], None]


def _noop(step: str, done: int, total: int) -> None:
    pass


def run_demo(
    workdir: Path | None = None,
    *,
    cache_dir: Path | None = None,
    nodes: int = 4,
    verifiers: int = 3,
    redundancy: int = 3,
    batch_size: int = 40,
    progress: Progress = _noop,
    params: MarketParams | None = None,
) -> DemoSummary:
    """Run the demo and return its summary (raises MarketError when a step fails)."""
    from market.models.digits import build_or_load_cached, digits_local_predictions, load_digits_split

    started = time.monotonic()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="moe-demo-"))
    cache_dir = Path(cache_dir or Path(".moe") / "cache")
    summary = DemoSummary()

    progress("training or loading the digits experts", 0, 1)
    bundle = build_or_load_cached(cache_dir)
    split = load_digits_split()
    x_test, y_test = split.x_test, split.y_test
    local = digits_local_predictions(bundle.model, x_test)
    summary.accuracy_local = float((local.labels == y_test).float().mean())
    progress("training or loading the digits experts", 1, 1)

    market = LocalMarket(workdir / "market", params=params or MarketParams.devnet())
    try:
        progress("starting the chain and deploying the contracts", 0, 1)
        market.start()
        progress("starting the chain and deploying the contracts", 1, 1)

        model_dirs = tuple(bundle.expert_dir(i) for i in range(len(bundle.manifests)))
        specs = [
            NodeSpec(f"node-{i + 1}", model_dirs, behaviour="perturb" if i == nodes - 1 else "honest",
                     price=PRICE_WEI, stake=STAKE_WEI)
            for i in range(nodes)
        ]
        for i, spec in enumerate(specs):
            progress("staking and registering experts", i, len(specs))
            market.add_node(spec, start=False)
        progress("staking and registering experts", len(specs), len(specs))
        for spec in specs:
            market.start_node(spec.name, wait=False)
        for i, spec in enumerate(specs):
            market.wait_ready(spec.name)
            progress("starting expert nodes", i + 1, len(specs))
        cheaters = sorted(e for spec in specs if spec.behaviour != "honest" for e in market.nodes[spec.name].expert_ids)
        summary.cheaters = cheaters
        summary.experts = sum(len(n.expert_ids) for n in market.nodes.values())

        for i in range(verifiers):
            market.add_verifier(f"verifier-{i + 1}")
            progress("staking and starting verifiers", i + 1, verifiers)
        summary.verifiers = verifiers

        start_block = market.chain().block_number()
        remote_labels, summary.failed_requests, requests, client_stats = _run_client(
            market, bundle, x_test, redundancy=redundancy, batch_size=batch_size, progress=progress,
            expected_disputes=len(cheaters),
        )
        summary.requests = requests
        summary.accuracy_remote = float((remote_labels == y_test).float().mean())
        summary.predictions_equal = float((remote_labels == local.labels).float().mean())
        summary.paid_wei = client_stats["paid_wei"]
        summary.expert_calls = client_stats["expert_calls"]
        summary.disputes = client_stats["disputes"]

        progress("stopping nodes (they redeem every voucher on the way out)", 0, len(specs))
        for i, spec in enumerate(specs):
            market.stop_node(spec.name)
            progress("stopping nodes (they redeem every voucher on the way out)", i + 1, len(specs))

        chain = market.chain()
        client_address = client_stats["address"]
        all_ids = [e for n in market.nodes.values() for e in n.expert_ids]
        summary.redeemed_wei = sum(chain.redeemed(client_address, e) for e in all_ids)
        txs, gas = chain.payment_gas(start_block)
        summary.payment_transactions = txs
        summary.gas_per_request = gas / requests if requests else 0.0
        infos = chain.get_experts(all_ids)
        slashed = sorted(e.expert_id for e in infos if e.slashed_total > 0)
        summary.slashed = slashed
        summary.slashed_wei = sum(e.slashed_total for e in infos)
        summary.honest_slashed = len([e for e in slashed if e not in cheaters])
    finally:
        progress("stopping every process", 0, 1)
        market.stop()
        progress("stopping every process", 1, 1)
    summary.duration_s = round(time.monotonic() - started, 1)
    return summary


def _run_client(
    market: LocalMarket,
    bundle: Any,
    x_test: torch.Tensor,
    *,
    redundancy: int,
    batch_size: int,
    progress: Progress,
    expected_disputes: int,
) -> tuple[torch.Tensor, int, int, dict[str, Any]]:
    from market.client import Client, ClientConfig
    from market.gate import GatePolicy
    from market.models.digits import load_digits_gate
    from market.moe import RemoteMixtureOfExperts
    from market.types import DisputeStatus

    account = market.new_account()
    config = ClientConfig(
        deployment=market.deployment_path,
        account=account,
        state_dir=market.workdir / "client",
        redundancy=redundancy,
        max_price=10 * PRICE_WEI,
        auto_dispute=True,
        gate=GatePolicy(seed=0),
        seed=0,
    )
    gate, hashes = load_digits_gate(bundle.root)
    labels: list[torch.Tensor] = []
    failed = 0
    requests = 0
    with Client(config) as client:
        progress("client deposits into the escrow", 0, 1)
        client.deposit(DEPOSIT_WEI)
        progress("client deposits into the escrow", 1, 1)
        moe = RemoteMixtureOfExperts(gate, hashes, client, k=bundle.model.top_k, redundancy=redundancy)
        total = len(x_test)
        done = 0
        for start in range(0, total, batch_size):
            x = x_test[start : start + batch_size]
            calls_before = moe.calls
            try:
                logits = moe(x)
                labels.append(logits.argmax(dim=1))
            except MarketError as exc:
                logger.warning("a batch failed: %s", exc)
                failed += 1
                labels.append(torch.full((len(x),), -1, dtype=torch.long))
            requests += moe.calls - calls_before
            done += len(x)
            progress(f"remote mixture of experts over the digits test set (redundancy {redundancy})", done, total)

        progress("verifiers re-execute and vote on the disputes", 0, max(expected_disputes, 1))
        records = client.disputes()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            records = client.disputes()
            resolved = [r for r in records if r.status not in (DisputeStatus.NONE, DisputeStatus.OPEN)]
            progress("verifiers re-execute and vote on the disputes", len(resolved), max(len(records), 1))
            if records and len(resolved) == len(records):
                break
            time.sleep(1.0)
        stats = {
            "paid_wei": client.paid,
            "expert_calls": client.paid // PRICE_WEI,
            "disputes": len(records),
            "address": client.address,
        }
    return torch.cat(labels), failed, requests, stats
