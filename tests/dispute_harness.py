"""A small dispute market of real processes, shared by tests/e2e/test_disputes.py and the verifier faults of
tests/reliability/test_verifier_faults.py.

`open_market` starts anvil with the market deployed (the caller's MarketParams: long commit and reveal
periods, moved forward with `Market.decide` / evm_increaseTime, so nothing depends on the machine's speed),
registers one expert node serving the digits model once per behaviour (`perturb`, `honest`, `zeros`,
`cached`, ...: node.server.Behaviour), stakes verifiers, deposits for the client, starts a ChallengerNode
(a libp2p host in a trio thread serving an EvidenceStore, optionally through an EvidenceGate that holds
chosen verifiers' requests) and spawns the node process (`moe expert serve`) and the verifier processes
(`moe verifier run`, re-executing with 2 torch threads while the node computes with 1). The yielded
`Market` pays for calls with signed vouchers, opens disputes with the node's signed receipts, drives a vote
through commit, reveal, resolution and claims, reads the credits and claims from the chain, and can SIGKILL
and restart a verifier on its state directory.

Imported as a plain module (tests/ has no __init__.py and pytest puts tests/ on sys.path), like
tests/market_harness.py. Keys are THROWAWAY TEST KEYS (anvil's accounts): 1 operates the node, 2 is the
client and challenger, 3 onwards are the verifiers, in the order of `verifier_stakes`.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from market.protocol.ids import EVIDENCE, INFER
from market.protocol.messages import ErrorMessage, InferRequest, InferResult, decode_response
from market.transport import open_host
from market.types import DisputeStatus, SignedReceipt

__all__ = [
    "ETHER",
    "PASSWORD",
    "WAIT_S",
    "ZERO",
    "ChallengerNode",
    "EvidenceGate",
    "Market",
    "Proc",
    "digits_input",
    "digits_package",
    "open_market",
    "wait_for",
]

log = logging.getLogger(__name__)

ETHER = 10**18
PASSWORD = "e2e-throwaway-password"  # protects throwaway devnet keys only
WAIT_S = 90.0
ZERO = bytes(32)
STATE_FILE = "verifier-state.json"  # node.verifier.STATE_FILE (not imported: it pulls in torch models)
READY_FILE = "ready.json"


def stop_process(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait; SIGKILL it if it has not stopped after 20 s."""
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


class EvidenceGate:
    """Holds the evidence requests of chosen peers (by peer id) until they are released; thread-safe.

    A verifier asks the challenger for the evidence right after it sees a dispute and before it can decide:
    holding its requests pins it in "fetching" without any timing, e.g. to kill it there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._pending: dict[str, int] = {}

    def hold(self, *peers: str) -> None:
        with self._lock:
            self._held.update(peers)

    def release(self, *peers: str) -> None:
        """Release these peers (all when none are named)."""
        with self._lock:
            if peers:
                self._held.difference_update(peers)
            else:
                self._held.clear()

    def pending(self, peer: str) -> int:
        """How many requests of `peer` are being held now."""
        with self._lock:
            return self._pending.get(peer, 0)

    def wrap(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        async def gated(header: Any, payload: bytes, peer: Any) -> Any:
            who = str(peer)
            with self._lock:
                held = who in self._held
                if held:
                    self._pending[who] = self._pending.get(who, 0) + 1
            if held:
                try:
                    while held:
                        await trio.sleep(0.02)
                        with self._lock:
                            held = who in self._held
                finally:
                    with self._lock:
                        self._pending[who] -= 1
            return await handler(header, payload, peer)

        return gated


class _Capture:
    """Stands in for a host to take the handler that serve_evidence registers."""

    handler: Any = None

    def serve(self, protocol_id: str, handler: Any) -> None:
        self.handler = handler


class ChallengerNode:
    """A libp2p host in a trio thread: serves the evidence store (through `gate` when given) and makes paid
    calls for the sync tests."""

    def __init__(self, store: EvidenceStore, gate: EvidenceGate | None = None) -> None:
        self.store = store
        self.gate = gate
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
            if self.gate is None:
                serve_evidence(host, self.store)
            else:
                capture = _Capture()
                serve_evidence(capture, self.store)  # type: ignore[arg-type]
                host.serve(EVIDENCE, self.gate.wrap(capture.handler))
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
    params: MarketParams
    price: int
    workdir: Path
    deployment_path: Path
    reader: MarketChain
    operator: LocalSigner
    client: LocalSigner  # pays for calls and opens disputes
    verifiers: dict[str, LocalSigner]
    verifier_stakes: dict[str, int]
    node_home: Path
    node_peer: str
    node_addrs: list[str]
    expert_ids: dict[str, list[int]]  # behaviour -> expert ids
    challenger: ChallengerNode
    verifier_args: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra `verifier run` options
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

    def verifier_home(self, name: str) -> Path:
        return self.workdir / "verifiers" / name

    def start_verifier(self, name: str, *extra: str, wait: bool = True) -> Proc:
        home = self.verifier_home(name)
        var = f"E2E_VERIFIER_KEY_{name}"
        key = "0x" + self.verifiers[name].unsafe_private_key().hex()
        proc = self.spawn(
            f"verifier-{name}",
            ["verifier", "run", "--key-env", var, "--state-dir", str(home), "--poll-interval", "0.3",
             "--threads", "2", *self.verifier_args.get(name, ()), *extra],
            home, {var: key},
        )  # fmt: skip
        if wait:
            self.wait_verifier(name)
        return proc

    def wait_verifier(self, name: str) -> None:
        ready = self.verifier_home(name) / READY_FILE
        wait_for(ready.exists, f"verifier {name} to start", self)

    def kill_verifier(self, name: str) -> None:
        """SIGKILL the verifier's process group and reap it (nothing runs on the way out)."""
        proc = self.processes.pop(f"verifier-{name}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=30)
        with open(proc.log, "ab") as out:
            out.write(b"\n===== SIGKILLed by the test =====\n")

    def restart_verifier(self, name: str, *, wait: bool = True) -> Proc:
        """Start the verifier again on its state directory (its ready file of the killed run removed first)."""
        (self.verifier_home(name) / READY_FILE).unlink(missing_ok=True)
        return self.start_verifier(name, wait=wait)

    def verifier_peer(self, name: str) -> str:
        """The libp2p peer id of the verifier's running process (a fresh one per run)."""
        ready = ready_file(self.verifier_home(name) / READY_FILE)
        assert ready is not None, f"verifier {name} is not running"
        return str(ready["peer_id"])

    def verifier_state(self, name: str) -> dict[str, Any]:
        """The verifier's state file as JSON ({} when there is none yet)."""
        try:
            return json.loads((self.verifier_home(name) / STATE_FILE).read_text())
        except FileNotFoundError:
            return {}

    def verifier_record(self, name: str, dispute_id: int) -> dict[str, Any] | None:
        """The verifier's record of one dispute from its state file, or None when it has not seen it."""
        try:
            return self.verifier_state(name).get("disputes", {}).get(str(dispute_id))
        except ValueError:  # the file is replaced atomically, but be lenient with a reader racing it
            return None

    def stop(self, *names: str) -> None:
        procs = [p for p in (self.processes.pop(n, None) for n in names) if p is not None]
        for proc in procs:  # all signalled first, then waited for: they stop in parallel
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        for proc in procs:
            stop_process(proc.popen)

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.tail()}" for p in self.processes.values())

    # -- the challenger's side ----------------------------------------------------------------------

    def infer(self, expert_id: int, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], SignedReceipt, tuple]:
        """One paid call to the node; returns outputs, the signed receipt and the encoded (input, output)."""
        deployment = self.devnet.deployment
        vouchers = self.client.voucher_signer(deployment.chain_id, deployment.escrow)
        self.cumulative[expert_id] = self.cumulative.get(expert_id, 0) + self.price
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

    def wait_commits(self, dispute_ids: Sequence[int], voters: Sequence[str]) -> None:
        addresses = [self.verifiers[v].address for v in voters]
        r = self.reader
        wait_for(lambda: all(r.commitment_of(d, a) != ZERO for d in dispute_ids for a in addresses),
                 f"commits of {list(voters)} on {list(dispute_ids)}", self)  # fmt: skip

    def wait_reveals(self, dispute_ids: Sequence[int], voters: Sequence[str]) -> None:
        r = self.reader
        wait_for(lambda: all(r.get_dispute(d).voters == len(voters) for d in dispute_ids),
                 f"reveals of {list(voters)} on {list(dispute_ids)}", self)  # fmt: skip

    def wait_resolved(self, dispute_ids: Sequence[int]) -> None:
        r = self.reader
        wait_for(lambda: all(r.get_dispute(d).status is not DisputeStatus.OPEN for d in dispute_ids),
                 f"resolution of {list(dispute_ids)}", self)  # fmt: skip

    def wait_claims(self, voters: Sequence[str]) -> None:
        addresses = [self.verifiers[v].address for v in voters]
        r = self.reader
        wait_for(lambda: all(r.claimable(a) == 0 for a in addresses), f"claims of {list(voters)}", self)

    def decide(self, dispute_ids: list[int], voters: list[str]) -> None:
        """Wait for every voter's commit, move past the commit period, wait for the reveals, move past the
        reveal period, wait for the resolution and for the voters' claims."""
        started = time.monotonic()
        self.wait_commits(dispute_ids, voters)
        self.reader.increase_time(self.params.commit_period + 1)
        self.wait_reveals(dispute_ids, voters)
        self.reader.increase_time(self.params.reveal_period + 1)
        self.wait_resolved(dispute_ids)
        self.wait_claims(voters)
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


def ready_file(path: Path) -> dict[str, Any] | None:
    """A ready file's contents once it is whole (the node writes it in place)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("addrs") else None


def wait_for(predicate: Callable[[], bool], what: str, market: Market | None = None, timeout: float = WAIT_S) -> None:
    """Poll `predicate` every 0.1 s; fail with the processes' logs if one of them exits or on the timeout."""
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


def digits_package(config: pytest.Config, workdir: Path) -> Path:
    """One expert package of the digits mixture: trained once, then reused from pytest's cache."""
    from market.models.digits import build_or_load_cached

    cache = getattr(config, "cache", None)
    bundle = build_or_load_cached(cache.mkdir("moe-digits") if cache else workdir / "digits", epochs=2)
    return bundle.expert_dir(0)


def digits_input(rows: int, seed: int) -> torch.Tensor:
    return torch.rand((rows, 64), generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def open_market(
    workdir: Path,
    package: Path,
    *,
    params: MarketParams,
    behaviours: Sequence[str],
    verifier_stakes: Mapping[str, int],
    price: int,
    expert_stake: int,
    staked: Sequence[str] | None = None,
    start: Sequence[str] | None = None,
    verifier_args: Mapping[str, Sequence[str]] | None = None,
    deposit: int = ETHER,
    evidence_gate: EvidenceGate | None = None,
    redeem: Any = None,
    label: str = "dispute",
) -> Iterator[Market]:
    """The market of the module docstring, stopped on exit.

    One expert per entry of `behaviours` (all the same digits package), verifiers named by `verifier_stakes`
    (`staked`: those registered with their stake now, default all; `start`: those whose processes start, in
    this order, default all), `verifier_args`: extra `verifier run` options per verifier. `evidence_gate`:
    holds chosen peers' evidence requests (see EvidenceGate); `redeem`: the node's RedeemPolicy
    (default: the node's own)."""
    from node.app import NodeConfig, register_node
    from node.server import Behaviour

    names = list(verifier_stakes)
    with contextlib.ExitStack() as stack:
        devnet = stack.enter_context(Devnet(params=params))
        deployment_path = save_deployment(workdir / "deployment.json", devnet.deployment, params.as_dict())
        # THROWAWAY TEST KEYS (anvil's accounts): 1 operates the node, 2 is the client, 3... are verifiers.
        operator, client = throwaway_signer(1), throwaway_signer(2)
        verifiers = {name: throwaway_signer(3 + i) for i, name in enumerate(names)}
        reader = MarketChain(devnet.deployment, None, receipt_timeout=30.0, poll_interval=0.02)

        node_home = workdir / "node"
        previous = os.environ.get("MOE_PASSWORD")
        os.environ["MOE_PASSWORD"] = PASSWORD
        try:
            # One registration (keys are created and unlocked once), then each expert gets its behaviour.
            registration = register_node(
                node_home, deployment_path, operator, [package] * len(behaviours), price=price,
                stake=expert_stake,
            )  # fmt: skip
        finally:
            if previous is None:
                os.environ.pop("MOE_PASSWORD", None)
            else:
                os.environ["MOE_PASSWORD"] = previous
        config = NodeConfig.load(node_home)
        entries = [replace(e, behaviour=Behaviour(b)) for e, b in zip(config.experts, behaviours, strict=True)]
        config = config.with_experts(entries)
        if redeem is not None:
            config = replace(config, redeem=redeem)
        config.save()
        expert_ids: dict[str, list[int]] = {}
        for entry in entries:
            expert_ids.setdefault(str(entry.behaviour), []).append(entry.expert_id)
        assert [r.expert_id for r in registration.registered] == [e.expert_id for e in entries]
        for name in names if staked is None else staked:
            MarketChain(devnet.deployment, verifiers[name], receipt_timeout=30.0).register_verifier(
                verifier_stakes[name]
            )
        MarketChain(devnet.deployment, client, receipt_timeout=30.0).deposit(deposit)

        challenger = ChallengerNode(EvidenceStore(workdir / "evidence"), evidence_gate).start()
        stack.callback(challenger.close)
        m = Market(
            devnet, params, price, workdir, deployment_path, reader, operator, client, verifiers,
            dict(verifier_stakes), node_home, "", [], expert_ids, challenger,
            verifier_args={k: tuple(v) for k, v in (verifier_args or {}).items()},
        )  # fmt: skip
        stack.callback(lambda: m.stop(*m.processes))

        m.spawn("expert-node", ["expert", "serve", "--home", str(node_home)], node_home)
        started = list(names if start is None else start)
        for name in started:
            m.start_verifier(name, wait=False)
        wait_for(lambda: ready_file(node_home / "ready.json") is not None, "the expert node to start", m)
        ready = ready_file(node_home / "ready.json")
        assert ready is not None
        m.node_peer, m.node_addrs = ready["peer_id"], ready["addrs"]
        for name in started:
            m.wait_verifier(name)
        yield m
        if m.timings:
            log.warning("%s cycles: %s s", label, ", ".join(f"{t:.1f}" for t in m.timings))
