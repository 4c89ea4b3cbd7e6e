"""End to end: cheating experts are caught and slashed on chain by verifier PROCESSES; honest ones never are.

Everything is real: anvil with the market deployed (commit and reveal periods of an hour, moved forward with
evm_increaseTime, so nothing depends on how fast this machine is), one expert node process (`moe expert
serve`) serving five experts of the digits mixture with different behaviours, three verifier processes
(`moe verifier run`, re-executing with 2 torch threads while the node computes with 1), and a challenger in
this process: it pays for calls with signed vouchers, keeps the input and output of each call in an
EvidenceStore served over libp2p, and opens disputes with the expert's signed receipts.

    expert 1  perturb   outputs far off the model      -> disputed, GUILTY, slashed; the numbers add up to the wei
    expert 2  honest                                     -> a false dispute is INNOCENT; the challenger loses the bond
    (expert 2 again)     thread count / noise in tolerance -> INNOCENT
    expert 3  perturb   a fourth verifier lies (--unsafe-lie) while one honest one may not vote -> still GUILTY
    expert 4  zeros, expert 5 cached (lazy)              -> GUILTY

Verifiers A, B, C stake 1, 2 and 1.5 ETH (rewards are pro rata to stake); the liar L runs throughout but has
voting stake (1 ETH) only during its own test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from market.chain.contracts import MarketChain
from market.chain.deployment import save_deployment
from market.chain.devnet import Devnet, throwaway_signer
from market.chain.params import MarketParams
from market.chain.signer import LocalSigner, signer_from_keystore
from market.evidence import EvidenceStore, serve_evidence
from market.protocol.codec import decode_tensors, encode_tensors
from market.protocol.hashing import new_request_id, tensor_hash
from market.protocol.ids import INFER
from market.protocol.messages import ErrorMessage, InferRequest, InferResult, decode_response
from market.transport import open_host
from market.types import DisputeStatus, Receipt, SignedReceipt

pytestmark = pytest.mark.timeout(600)
log = logging.getLogger(__name__)

ETHER = 10**18
COMMIT = REVEAL = 3600
PARAMS = MarketParams(
    min_stake=ETHER, min_verifier_stake=ETHER, unbonding_period=3 * 86400, withdraw_delay=2 * 86400,
    dispute_bond=ETHER // 10, commit_period=COMMIT, reveal_period=REVEAL, quorum_stake=2 * ETHER,
    slash_bps=5_000, challenger_bps=4_000, verifier_bps=4_000, expert_bond_bps=5_000,
)  # fmt: skip
PRICE = 10**12
EXPERT_STAKE = 2 * ETHER
PASSWORD = "e2e-throwaway-password"  # protects throwaway devnet keys only
VERIFIER_STAKES = {"A": ETHER, "B": 2 * ETHER, "C": 3 * ETHER // 2, "L": ETHER}
BEHAVIOURS = ("perturb", "honest", "perturb", "zeros", "cached")
WAIT_S = 90.0
ZERO = bytes(32)


# ==================================================================================================
# harness


def _stop_process(popen: subprocess.Popen[bytes]) -> None:
    if popen.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(popen.pid, signal.SIGTERM)
    try:
        popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(timeout=10)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    home: Path

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class ChallengerNode:
    """A libp2p host in a trio thread: serves the evidence store and makes paid calls for the sync tests."""

    def __init__(self, store: EvidenceStore) -> None:
        self.store = store
        self.host: Any = None
        self._token: Any = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="challenger-trio", daemon=True)

    def start(self) -> ChallengerNode:
        self._thread.start()
        if not self._ready.wait(60) or self._failure is not None:
            raise RuntimeError(f"challenger host did not start: {self._failure!r}")
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # surfaced by start()
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        async with open_host() as host:
            serve_evidence(host, self.store)
            self.host = host
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    @property
    def endpoint(self) -> str:
        return str(self.host.listen_addrs[0])

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=15)


@dataclass
class Market:
    devnet: Devnet
    workdir: Path
    deployment_path: Path
    reader: MarketChain
    operator: LocalSigner
    client: LocalSigner  # pays for calls and opens disputes
    verifiers: dict[str, LocalSigner]
    node_home: Path
    node_peer: str
    node_addrs: list[str]
    expert_ids: dict[str, list[int]]  # behaviour -> expert ids
    challenger: ChallengerNode
    processes: dict[str, Proc] = field(default_factory=dict)
    cumulative: dict[int, int] = field(default_factory=dict)
    timings: list[float] = field(default_factory=list)

    def chain(self, signer: LocalSigner | None = None) -> MarketChain:
        return MarketChain(self.devnet.deployment, signer, receipt_timeout=30.0, poll_interval=0.02)

    def expert(self, behaviour: str, index: int = 0) -> int:
        return self.expert_ids[behaviour][index]

    # -- processes --------------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], home: Path, env: dict[str, str] | None = None) -> Proc:
        home.mkdir(parents=True, exist_ok=True)
        log_path = home / "process.log"
        full_env = {**os.environ, "MOE_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1",
                    "MOE_DEPLOYMENT": str(self.deployment_path), **(env or {})}  # fmt: skip
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "-v", *args], stdout=out, stderr=subprocess.STDOUT,
                env=full_env, start_new_session=True, cwd=str(self.workdir),
            )  # fmt: skip
        proc = Proc(name, popen, log_path, home)
        self.processes[name] = proc
        return proc

    def start_verifier(self, name: str, *extra: str, wait: bool = True) -> Proc:
        home = self.workdir / "verifiers" / name
        var = f"E2E_VERIFIER_KEY_{name}"
        key = "0x" + self.verifiers[name].unsafe_private_key().hex()
        proc = self.spawn(
            f"verifier-{name}",
            ["verifier", "run", "--key-env", var, "--state-dir", str(home), "--poll-interval", "0.3",
             "--threads", "2", *extra],
            home, {var: key},
        )  # fmt: skip
        if wait:
            self.wait_verifier(name)
        return proc

    def wait_verifier(self, name: str) -> None:
        ready = self.workdir / "verifiers" / name / "ready.json"
        wait_for(ready.exists, f"verifier {name} to start", self)

    def stop(self, *names: str) -> None:
        procs = [p for p in (self.processes.pop(n, None) for n in names) if p is not None]
        for proc in procs:  # all signalled first, then waited for: they stop in parallel
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in procs:
            _stop_process(proc.popen)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.tail()}" for p in self.processes.values())

    # -- the challenger's side ----------------------------------------------------------------------

    def infer(self, expert_id: int, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], SignedReceipt, tuple]:
        """One paid call to the node; returns outputs, the signed receipt and the encoded (input, output)."""
        deployment = self.devnet.deployment
        vouchers = self.client.voucher_signer(deployment.chain_id, deployment.escrow)
        self.cumulative[expert_id] = self.cumulative.get(expert_id, 0) + PRICE
        specs, payload = encode_tensors({"x": x})
        request = InferRequest(
            request_id=new_request_id(), expert_id=expert_id, model_hash=self.model_hash(expert_id),
            tensors=tuple(specs), voucher=vouchers.sign(expert_id, self.cumulative[expert_id]),
            deadline_ms=30_000, payload=payload,
        )  # fmt: skip

        async def call() -> tuple[dict, bytes]:
            return await self.challenger.host.request(
                self.node_peer, self.node_addrs, INFER, request.to_header(), request.payload, timeout=30
            )

        header, body = self.challenger.call(call)
        answer = decode_response(header, body)
        assert not isinstance(answer, ErrorMessage), answer
        assert isinstance(answer, InferResult)
        receipt = answer.receipt.receipt
        assert receipt.input_hash == tensor_hash(specs, payload)
        assert receipt.output_hash == tensor_hash(answer.tensors, answer.payload)
        outputs = decode_tensors(answer.tensors, answer.payload)
        return outputs, answer.receipt, ((specs, payload), (answer.tensors, answer.payload))

    def model_hash(self, expert_id: int) -> bytes:
        return self.reader.get_expert(expert_id).model_hash

    def dispute(self, receipt: SignedReceipt, evidence: tuple, opener: LocalSigner | None = None) -> int:
        """Keep the evidence, then open a dispute (bond paid by `opener`, the client by default)."""
        (in_specs, in_payload), (out_specs, out_payload) = evidence
        assert self.challenger.store.put_encoded(in_specs, in_payload) == receipt.receipt.input_hash
        assert self.challenger.store.put_encoded(out_specs, out_payload) == receipt.receipt.output_hash
        return self.chain(opener or self.client).open_dispute(receipt, self.challenger.endpoint)

    def node_receipt_signer(self) -> Any:
        hot = signer_from_keystore(self.node_home / "signer.json", PASSWORD)
        return hot.receipt_signer(self.devnet.deployment.chain_id, self.devnet.deployment.disputes)

    # -- driving a vote -------------------------------------------------------------------------------

    def decide(self, dispute_ids: list[int], voters: list[str]) -> None:
        """Wait for every voter's commit, move past the commit period, wait for the reveals, move past the
        reveal period, wait for the resolution and for the voters' claims."""
        started = time.monotonic()
        addresses = [self.verifiers[v].address for v in voters]
        r = self.reader
        wait_for(lambda: all(r.commitment_of(d, a) != ZERO for d in dispute_ids for a in addresses),
                 f"commits of {voters} on {dispute_ids}", self)  # fmt: skip
        r.increase_time(COMMIT + 1)
        wait_for(lambda: all(r.get_dispute(d).voters == len(voters) for d in dispute_ids),
                 f"reveals of {voters} on {dispute_ids}", self)  # fmt: skip
        r.increase_time(REVEAL + 1)
        wait_for(lambda: all(r.get_dispute(d).status is not DisputeStatus.OPEN for d in dispute_ids),
                 f"resolution of {dispute_ids}", self)  # fmt: skip
        wait_for(lambda: all(r.claimable(a) == 0 for a in addresses), f"claims of {voters}", self)
        elapsed = time.monotonic() - started
        self.timings.append(elapsed)
        log.warning("disputes %s decided in %.1f s (commit, reveal, resolve, claim)", dispute_ids, elapsed)

    def credits(self, dispute_id: int) -> dict[str, int]:
        """RewardCredited of one dispute: account -> wei."""
        out: dict[str, int] = {}
        logs = self.reader.disputes.events.RewardCredited().get_logs(
            from_block=0, argument_filters={"disputeId": dispute_id}
        )
        for event in logs:
            out[event["args"]["account"]] = out.get(event["args"]["account"], 0) + int(event["args"]["amount"])
        return out

    def claimed_by(self, account: str, from_block: int) -> int:
        logs = self.reader.disputes.events.RewardClaimed().get_logs(
            from_block=from_block, argument_filters={"account": account}
        )
        return sum(int(e["args"]["amount"]) for e in logs)


def _ready(path: Path) -> dict[str, Any] | None:
    """A ready file's contents once it is whole (the node writes it in place)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("addrs") else None


def wait_for(predicate: Callable[[], bool], what: str, market: Market | None = None, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if market is not None:
            dead = [p.name for p in market.processes.values() if p.popen.poll() is not None]
            if dead:
                pytest.fail(f"process(es) {dead} exited while waiting for {what}\n{market.logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{market.logs() if market else ''}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Market]:
    from market.models.digits import build_or_load_cached
    from node.app import NodeConfig, register_node
    from node.server import Behaviour

    workdir = tmp_path_factory.mktemp("disputes-e2e")
    # Trained once, then reused by later runs from pytest's cache.
    cache = getattr(request.config, "cache", None)
    bundle = build_or_load_cached(cache.mkdir("moe-digits") if cache else workdir / "digits", epochs=2)
    package = bundle.expert_dir(0)
    with contextlib.ExitStack() as stack:
        devnet = stack.enter_context(Devnet(params=PARAMS))
        deployment_path = save_deployment(workdir / "deployment.json", devnet.deployment, PARAMS.as_dict())
        # THROWAWAY TEST KEYS (anvil's accounts): 1 operates the node, 2 is the client, 3-6 are verifiers.
        operator, client = throwaway_signer(1), throwaway_signer(2)
        verifiers = {name: throwaway_signer(3 + i) for i, name in enumerate(VERIFIER_STAKES)}
        reader = MarketChain(devnet.deployment, None, receipt_timeout=30.0, poll_interval=0.02)

        node_home = workdir / "node"
        previous = os.environ.get("MOE_PASSWORD")
        os.environ["MOE_PASSWORD"] = PASSWORD
        try:
            # One registration (keys are created and unlocked once), then each expert gets its behaviour.
            registration = register_node(
                node_home, deployment_path, operator, [package] * len(BEHAVIOURS), price=PRICE,
                stake=EXPERT_STAKE,
            )  # fmt: skip
        finally:
            if previous is None:
                os.environ.pop("MOE_PASSWORD", None)
            else:
                os.environ["MOE_PASSWORD"] = previous
        config = NodeConfig.load(node_home)
        entries = [replace(e, behaviour=Behaviour(b)) for e, b in zip(config.experts, BEHAVIOURS, strict=True)]
        config.with_experts(entries).save()
        expert_ids: dict[str, list[int]] = {}
        for entry in entries:
            expert_ids.setdefault(str(entry.behaviour), []).append(entry.expert_id)
        assert [r.expert_id for r in registration.registered] == [e.expert_id for e in entries]
        for name in ("A", "B", "C"):  # L stakes only for its own test: until then it may not vote
            MarketChain(devnet.deployment, verifiers[name], receipt_timeout=30.0).register_verifier(
                VERIFIER_STAKES[name]
            )
        MarketChain(devnet.deployment, client, receipt_timeout=30.0).deposit(ETHER)

        challenger = ChallengerNode(EvidenceStore(workdir / "evidence")).start()
        stack.callback(challenger.close)
        m = Market(devnet, workdir, deployment_path, reader, operator, client, verifiers, node_home, "", [],
                   expert_ids, challenger)  # fmt: skip
        stack.callback(lambda: m.stop(*m.processes))

        m.spawn("expert-node", ["expert", "serve", "--home", str(node_home)], node_home)
        m.start_verifier("L", "--unsafe-lie", wait=False)
        for name in ("A", "B", "C"):
            m.start_verifier(name, wait=False)
        wait_for(lambda: _ready(node_home / "ready.json") is not None, "the expert node to start", m)
        ready = _ready(node_home / "ready.json")
        m.node_peer, m.node_addrs = ready["peer_id"], ready["addrs"]
        for name in ("A", "B", "C", "L"):
            m.wait_verifier(name)
        yield m
        if m.timings:
            log.warning("e2e dispute cycles: %s s", ", ".join(f"{t:.1f}" for t in m.timings))


def digits_input(rows: int, seed: int) -> torch.Tensor:
    return torch.rand((rows, 64), generator=torch.Generator().manual_seed(seed))


def stakes(*names: str) -> dict[str, int]:
    return {n: VERIFIER_STAKES[n] for n in names}


# ==================================================================================================
# scenarios


def test_a_cheating_expert_is_voted_guilty_and_slashed_and_the_numbers_add_up(market: Market) -> None:
    expert_id = market.expert("perturb")
    _, receipt, evidence = market.infer(expert_id, digits_input(3, 1))
    r = market.reader
    stake_before = r.get_expert(expert_id).stake
    burn = r.disputes.functions.BURN_ADDRESS().call()
    burn_before = r.native_balance(burn)
    dispute_id = market.dispute(receipt, evidence)
    from_block = r.block_number()

    market.decide([dispute_id], ["A", "B", "C"])

    d = r.get_dispute(dispute_id)
    assert d.status is DisputeStatus.GUILTY
    voters = stakes("A", "B", "C")
    guilty_stake = sum(voters.values())
    assert (d.guilty_stake, d.innocent_stake, d.voters) == (guilty_stake, 0, 3)
    slashed = stake_before * PARAMS.slash_bps // 10_000
    to_challenger = slashed * PARAMS.challenger_bps // 10_000
    pool = slashed * PARAMS.verifier_bps // 10_000
    shares = {market.verifiers[n].address: pool * s // guilty_stake for n, s in voters.items()}
    burned = slashed - to_challenger - sum(shares.values())
    assert d.slashed == slashed
    assert market.credits(dispute_id) == {market.client.address: PARAMS.dispute_bond + to_challenger, **shares}
    assert r.native_balance(burn) - burn_before == burned
    expert = r.get_expert(expert_id)
    assert expert.stake == stake_before - slashed and expert.disputes_lost == 1
    # Each verifier process claimed exactly its share.
    for address, share in shares.items():
        assert market.claimed_by(address, from_block) == share
    # The challenger claims its bond back plus its share.
    challenger = market.chain(market.client)
    balance = challenger.native_balance()
    assert challenger.claim() == PARAMS.dispute_bond + to_challenger
    fee = challenger.last_transaction().fee
    assert challenger.native_balance() == balance + PARAMS.dispute_bond + to_challenger - fee


def test_a_false_dispute_is_innocent_and_the_challenger_loses_the_bond(market: Market) -> None:
    expert_id = market.expert("honest")
    _, receipt, evidence = market.infer(expert_id, digits_input(5, 2))
    r = market.reader
    stake_before = r.get_expert(expert_id).stake
    dispute_id = market.dispute(receipt, evidence)

    market.decide([dispute_id], ["A", "B", "C"])

    d = r.get_dispute(dispute_id)
    assert d.status is DisputeStatus.INNOCENT and d.slashed == 0
    voters = stakes("A", "B", "C")
    innocent_stake = sum(voters.values())
    assert (d.guilty_stake, d.innocent_stake) == (0, innocent_stake)
    bond = PARAMS.dispute_bond
    pool = bond - bond * PARAMS.expert_bond_bps // 10_000
    shares = {market.verifiers[n].address: pool * s // innocent_stake for n, s in voters.items()}
    # The operator gets its share of the bond plus the rounding dust; the challenger gets nothing back.
    assert market.credits(dispute_id) == {market.operator.address: bond - sum(shares.values()), **shares}
    assert r.claimable(market.client.address) == 0
    assert r.get_expert(expert_id).stake == stake_before


def test_honest_float_differences_within_tolerance_are_never_guilty(market: Market) -> None:
    """The node computes with 1 torch thread, the verifiers with 2; and an expert on another machine whose
    floats differ slightly (simulated: its receipt signed for the output plus noise well within the
    tolerance) is innocent too."""
    expert_id = market.expert("honest")
    _, big_receipt, big_evidence = market.infer(expert_id, digits_input(128, 3))

    outputs, real, ((in_specs, in_payload), _) = market.infer(expert_id, digits_input(7, 4))
    logits = outputs["logits"]
    noisy = {"logits": logits + 2e-5 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))}
    out_specs, out_payload = encode_tensors(noisy)
    assert tensor_hash(out_specs, out_payload) != real.receipt.output_hash
    receipt = Receipt(
        expert_id=expert_id, model_hash=real.receipt.model_hash, request_id=new_request_id(),
        input_hash=real.receipt.input_hash, output_hash=tensor_hash(out_specs, out_payload), price=PRICE,
    )  # fmt: skip
    noisy_receipt = market.node_receipt_signer().sign(receipt)

    ids = [
        market.dispute(big_receipt, big_evidence),
        market.dispute(noisy_receipt, ((in_specs, in_payload), (out_specs, out_payload))),
    ]
    market.decide(ids, ["A", "B", "C"])
    for dispute_id in ids:
        d = market.reader.get_dispute(dispute_id)
        assert d.status is DisputeStatus.INNOCENT and d.guilty_stake == 0, dispute_id


def test_one_lying_verifier_among_three_does_not_change_the_verdict(market: Market) -> None:
    """The liar L (running with --unsafe-lie since the start, without stake so far) stakes for this dispute
    only, and verifier C opens the dispute itself so it may not vote: the voters are A, B and L."""
    r = market.reader
    liar = market.chain(market.verifiers["L"])
    liar.register_verifier(VERIFIER_STAKES["L"])
    try:
        expert_id = market.expert("perturb", 1)
        _, receipt, evidence = market.infer(expert_id, digits_input(2, 6))
        from_block = r.block_number()
        dispute_id = market.dispute(receipt, evidence, opener=market.verifiers["C"])
        market.decide([dispute_id], ["A", "B", "L"])
    finally:
        liar.request_verifier_unbond()  # no voting stake any more: it sits out the other scenarios

    d = r.get_dispute(dispute_id)
    assert d.status is DisputeStatus.GUILTY
    assert (d.guilty_stake, d.innocent_stake) == (VERIFIER_STAKES["A"] + VERIFIER_STAKES["B"], VERIFIER_STAKES["L"])
    votes = {v.verifier: v.guilty for v in r.votes_revealed(from_block) if v.dispute_id == dispute_id}
    v = market.verifiers
    assert votes == {v["A"].address: True, v["B"].address: True, v["L"].address: False}
    credits = market.credits(dispute_id)
    assert v["L"].address not in credits and v["C"].address in credits  # C is paid as the challenger
    assert r.commitment_of(dispute_id, v["C"].address) == ZERO


def test_lazy_experts_returning_zeros_or_a_cached_answer_are_caught(market: Market) -> None:
    _, zeros_receipt, zeros_evidence = market.infer(market.expert("zeros"), digits_input(4, 7))
    cached = market.expert("cached")
    first, _, _ = market.infer(cached, digits_input(4, 8))
    second, cached_receipt, cached_evidence = market.infer(cached, digits_input(4, 9))
    assert torch.equal(first["logits"], second["logits"])  # the lazy node replayed its first answer

    ids = [market.dispute(zeros_receipt, zeros_evidence), market.dispute(cached_receipt, cached_evidence)]
    market.decide(ids, ["A", "B", "C"])
    for dispute_id in ids:
        d = market.reader.get_dispute(dispute_id)
        assert d.status is DisputeStatus.GUILTY and d.innocent_stake == 0, dispute_id
        assert d.slashed == EXPERT_STAKE * PARAMS.slash_bps // 10_000
