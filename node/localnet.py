"""A whole market on one machine: anvil with the contracts, expert node processes, verifier processes.

Used by `moe demo` and by the end-to-end tests, so both run the same real thing: a real chain, real
separate processes talking libp2p on 127.0.0.1, real models. Every process it starts is stopped by `stop()`
(also on error and Ctrl-C when used as a context manager).

Everything runs on 127.0.0.1 by default. For a multi-host layout on one machine (network namespaces, see
tests/reliability/netlab.py) each process can get an argv prefix (`launcher`, e.g. `("ip", "netns", "exec",
"exp-a")`) and its own addresses: `chain_host` / `chain_port` / `chain_launcher` for anvil (the deployment
file's rpc_url then names that address), `NodeSpec.listen_host` / `listen_port` / `announce_host` /
`launcher` for a node, `add_verifier(launcher=...)` for a verifier.

Accounts: this is a devnet, so anvil's well-known THROWAWAY keys are used: account 0 deploys, accounts
1..n operate the expert nodes, then the verifiers, then the clients. Beyond the ten anvil accounts, fresh
keys are generated and funded from account 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from market.chain.contracts import MarketChain
from market.chain.deployment import save_deployment
from market.chain.devnet import Devnet, throwaway_signer
from market.chain.params import MarketParams
from market.chain.signer import LocalSigner
from market.errors import MarketConfigError, MarketError
from node.app import READY_FILE, register_node

logger = logging.getLogger(__name__)

PASSWORD = "localnet-throwaway-password"  # protects throwaway keys of a local devnet only
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    model_dirs: tuple[Path, ...]
    behaviour: str = "honest"
    price: int = 10**12
    stake: int = 10**18
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # 0: a free port on listen_host (give one when listen_host is not local here)
    announce_host: str | None = None  # the address registered on chain (default: listen_host)
    launcher: tuple[str, ...] = ()  # argv prefix the node process is started with


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    home: Path

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class RunningNode:
    spec: NodeSpec
    home: Path
    operator: LocalSigner
    expert_ids: tuple[int, ...]
    process: Process | None = None
    peer_id: str = ""
    addrs: tuple[str, ...] = ()


@dataclass
class LocalMarket:
    """Start with `start()` (or `with LocalMarket(...) as market:`), stop with `stop()`."""

    workdir: Path
    params: MarketParams = field(default_factory=MarketParams.devnet)
    chain_host: str = "127.0.0.1"
    chain_port: int | None = None  # None: a free port (needs chain_host to be local here)
    chain_launcher: tuple[str, ...] = ()  # argv prefix anvil is started with
    nodes: dict[str, RunningNode] = field(default_factory=dict)
    verifiers: dict[str, Process] = field(default_factory=dict)
    devnet: Devnet | None = None
    deployment_path: Path | None = None
    _next_account: int = 1
    _extra_signers: list[LocalSigner] = field(default_factory=list)

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> LocalMarket:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.devnet = Devnet(
            params=self.params, host=self.chain_host, port=self.chain_port, launcher=self.chain_launcher
        ).start()
        self.deployment_path = self.workdir / "deployment.json"
        save_deployment(self.deployment_path, self.devnet.deployment, self.params.as_dict())

    def stop(self) -> None:
        processes = [n.process for n in self.nodes.values() if n.process] + list(self.verifiers.values())
        for p in processes:
            _terminate(p)
        for n in self.nodes.values():
            n.process = None
        self.verifiers.clear()
        if self.devnet is not None:
            self.devnet.stop()
            self.devnet = None

    # -- accounts ---------------------------------------------------------------------------------

    def chain(self, account: LocalSigner | None = None) -> MarketChain:
        assert self.devnet is not None, "start() first"
        return MarketChain(self.devnet.deployment, account)

    def new_account(self, fund: int = 100 * 10**18) -> LocalSigner:
        """The next throwaway anvil account, or a fresh key funded from account 0 once those run out."""
        if self._next_account < 10:
            signer = throwaway_signer(self._next_account)
            self._next_account += 1
            return signer
        signer = LocalSigner.generate()
        self.chain(throwaway_signer(0)).send_value(signer.address, fund)
        self._extra_signers.append(signer)
        return signer

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MOE_PASSWORD"] = PASSWORD
        env["PYTHONUNBUFFERED"] = "1"
        if self.deployment_path is not None:
            env["MOE_DEPLOYMENT"] = str(self.deployment_path)
        return env

    # -- experts ----------------------------------------------------------------------------------

    def add_node(self, spec: NodeSpec, *, start: bool = True) -> RunningNode:
        """Register the node's experts (stake from a fresh operator account) and start its process."""
        assert self.deployment_path is not None, "start() first"
        operator = self.new_account()
        home = self.workdir / "nodes" / spec.name
        os.environ.setdefault("MOE_PASSWORD", PASSWORD)
        previous = os.environ.get("MOE_PASSWORD")
        os.environ["MOE_PASSWORD"] = PASSWORD
        try:
            registration = register_node(
                home,
                self.deployment_path,
                operator,
                spec.model_dirs,
                price=spec.price,
                stake=spec.stake,
                behaviour=spec.behaviour,
                listen_host=spec.listen_host,
                listen_port=spec.listen_port,
                announce_host=spec.announce_host,
            )
        finally:
            if previous is not None:
                os.environ["MOE_PASSWORD"] = previous
        node = RunningNode(spec, home, operator, tuple(r.expert_id for r in registration.registered))
        self.nodes[spec.name] = node
        if start:
            self.start_node(spec.name)
        return node

    def start_node(self, name: str, *, wait: bool = True) -> RunningNode:
        node = self.nodes[name]
        (node.home / READY_FILE).unlink(missing_ok=True)
        node.process = self._spawn(
            name, ["expert", "serve", "--home", str(node.home)], node.home, node.spec.launcher
        )
        if wait:
            self.wait_ready(name)
        return node

    def wait_ready(self, name: str, timeout: float = READY_TIMEOUT_S) -> RunningNode:
        node = self.nodes[name]
        ready = node.home / READY_FILE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process is None or not node.process.alive():
                raise MarketError(
                    f"node {name} exited during start-up; see {node.process.log if node.process else ''}"
                )
            if ready.exists():
                try:
                    data = json.loads(ready.read_text())
                except json.JSONDecodeError:
                    time.sleep(0.05)
                    continue
                node.peer_id = data["peer_id"]
                node.addrs = tuple(data["addrs"])
                return node
            time.sleep(0.1)
        raise MarketError(f"node {name} did not become ready within {timeout:.0f} s")

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[name]
        if node.process is not None and node.process.alive():
            node.process.popen.send_signal(sig)
            node.process.popen.wait(timeout=30)

    def stop_node(self, name: str) -> None:
        node = self.nodes[name]
        if node.process is not None:
            _terminate(node.process)

    # -- verifiers --------------------------------------------------------------------------------

    def add_verifier(
        self,
        name: str,
        *,
        stake: int | None = None,
        extra_args: Sequence[str] = (),
        launcher: Sequence[str] = (),
    ) -> Process:
        """Stake a verifier from a fresh account and start `moe verifier run` for it (behind `launcher`)."""
        account = self.new_account()
        stake = stake if stake is not None else self.params.min_verifier_stake
        self.chain(account).register_verifier(stake)
        home = self.workdir / "verifiers" / name
        home.mkdir(parents=True, exist_ok=True)
        env_var = f"MOE_VERIFIER_KEY_{name.upper().replace('-', '_')}"
        os.environ[env_var] = "0x" + account.unsafe_private_key().hex()
        process = self._spawn(
            name,
            ["verifier", "run", "--key-env", env_var, "--state-dir", str(home), *extra_args],
            home,
            launcher,
        )
        self.verifiers[name] = process
        return process

    # -- processes --------------------------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str], home: Path, launcher: Sequence[str] = ()) -> Process:
        home.mkdir(parents=True, exist_ok=True)
        log = home / "process.log"
        out = open(log, "ab")  # noqa: SIM115 - handed to the child; closed when the parent exits
        popen = subprocess.Popen(
            [*launcher, sys.executable, "-m", "node.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )
        out.close()
        return Process(name, popen, log, home)


def _terminate(process: Process, timeout: float = 20.0) -> None:
    if not process.alive():
        return
    try:
        os.killpg(process.popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop on SIGTERM; killing it", process.name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)


def require_models(model_dirs: Sequence[Path]) -> None:
    for d in model_dirs:
        if not (Path(d) / "manifest.json").exists():
            raise MarketConfigError(f"{d} is not a model package (no manifest.json)")
