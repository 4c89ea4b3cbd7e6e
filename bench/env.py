"""What the benchmarks share: the run's settings, one local market started on first use, and small helpers.

`BenchContext` is handed to every benchmark: quick or long, a work folder, and `env`, a `MarketEnv` that
starts what a benchmark asks for the first time it is asked (anvil with the contracts, a real expert node
process serving a small MLP, funded client keys, the digits nodes, the out-of-process echo baselines) and
stops all of it in `close()`. Everything binds 127.0.0.1; every wait has a deadline.

The node under test is started by `node.localnet.LocalMarket`, the same code `moe demo` and the end-to-end
tests use: real processes, real chain, real libp2p.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MLP_IN = 256  # float32 [1, 256] = 1 KB in, 1 KB out
MLP_SIZES = [MLP_IN, 256, MLP_IN]
PRICE = 10**12  # wei per call
CLIENT_DEPOSIT = 10**17  # wei per client key: 100,000 calls at PRICE
READY_POLL_S = 0.01
START_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class ExpertTarget:
    """Everything a paying client needs to call one served expert."""

    peer_id: str
    addrs: tuple[str, ...]
    expert_id: int
    model_hash: bytes
    price: int
    signer: str  # the node's hot signer: receipts must recover to it
    chain_id: int
    escrow: str
    disputes: str


@dataclass(slots=True)
class StartedNode:
    name: str
    target: ExpertTarget
    pid: int
    startup_s: float  # process spawn to ready.json


def read_rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in KiB, from /proc: resident now, and the peak so far."""
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (all its threads), from /proc/<pid>/stat."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) a live process's threads have used so far, grouped by role: the main
    thread ("event loop": trio, libp2p, parsing, signatures), trio's worker threads ("worker threads":
    SQLite ledger, chain reads) and any other thread ("other threads": the model runtime)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    groups = {"event loop": 0.0, "worker threads": 0.0, "other threads": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended between listing and reading
        seconds = (int(fields[11]) + int(fields[12])) / tick
        group = "event loop" if int(tid) == pid else "worker threads" if name.startswith("Trio") else "other threads"
        groups[group] += seconds
    return groups


def pack_mlp(out_dir: Path) -> Path:
    """The small MLP of benchmarks 1, 2 and 6 (256 -> 256 -> 256, relu), packed as a model package."""
    import torch

    from market.models.architectures import MLP
    from market.models.package import pack

    if (out_dir / "manifest.json").exists():
        return out_dir
    torch.manual_seed(0)
    module = MLP(MLP_SIZES, "relu")
    pack(
        module,
        "mlp",
        {"sizes": MLP_SIZES, "activation": "relu"},
        inputs=[{"name": "x", "dtype": "float32", "shape": [-1, MLP_IN]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [-1, MLP_IN]}],
        tolerance=(1e-4, 1e-3),
        name="bench-mlp-256",
        capability="bench-mlp",
        out_dir=out_dir,
    )
    return out_dir


def _selector(signature: str) -> str:
    from market.protocol.hashing import keccak256

    return keccak256(signature.encode("ascii"))[:4].hex()


class RpcConnection:
    """JSON-RPC over one kept-alive HTTP connection (set-up traffic only: a thousand calls in seconds)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"benchmarks talk to a local chain only, not {parts.hostname}")
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        self._path = parts.path or "/"
        self._id = 0

    def call(self, method: str, params: list[Any]) -> Any:
        self._id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        self._conn.request("POST", self._path, body=body, headers={"Content-Type": "application/json"})
        answer = json.loads(self._conn.getresponse().read())
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        self._conn.close()


def deposit_for_many(rpc_url: str, escrow: str, funder: str, clients: Sequence[str], amount: int) -> None:
    """`escrow.depositFor(client)` with `amount` wei for every client, sent from anvil's unlocked `funder`.

    Benchmark set-up, not a measurement: anvil's dev accounts are unlocked, so plain eth_sendTransaction
    calls on one kept-alive connection fund a thousand clients in seconds (automine mines each at once).
    """
    selector = _selector("depositFor(address)")
    rpc = RpcConnection(rpc_url)
    try:
        hashes = [
            rpc.call("eth_sendTransaction", [{
                "from": funder,
                "to": escrow,
                "value": hex(amount),
                "gas": hex(120_000),
                "data": "0x" + selector + bytes(12).hex() + client[2:].lower(),
            }])
            for client in clients
        ]  # fmt: skip
        deadline = time.monotonic() + 60
        for client, tx_hash in zip(clients, hashes, strict=True):
            # automine mines each transaction as it arrives, but the receipt may trail the answer a little
            receipt = rpc.call("eth_getTransactionReceipt", [tx_hash])
            while receipt is None and time.monotonic() < deadline:
                time.sleep(0.02)
                receipt = rpc.call("eth_getTransactionReceipt", [tx_hash])
            if receipt is None or int(receipt["status"], 16) != 1:
                raise RuntimeError(f"depositFor({client}) failed: {receipt}")
    finally:
        rpc.close()


class EchoServer:
    """`python -m bench.echo_server` as a child process: the raw libp2p and market-transport echo baselines."""

    def __init__(self, timeout: float = 60.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.echo_server", "--max-seconds", "1800"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        line = _readline_with_timeout(self._proc, timeout)
        info = json.loads(line)
        self.raw_peer_id: str = info["raw"]["peer_id"]
        self.raw_addr: str = info["raw"]["addr"]
        self.market_peer_id: str = info["market"]["peer_id"]
        self.market_addrs: tuple[str, ...] = tuple(info["market"]["addrs"])
        self.pid = self._proc.pid

    def close(self) -> None:
        if self._proc.poll() is not None:
            return
        with contextlib.suppress(OSError):
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)


def _readline_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"bench.echo_server exited with status {proc.returncode} before it was ready")
            if sel.select(timeout=0.1):
                line = proc.stdout.readline()
                if line:
                    return line
    proc.kill()
    proc.wait(timeout=10)
    raise RuntimeError(f"bench.echo_server did not print its addresses within {timeout:.0f} s")


@dataclass
class MarketEnv:
    """Starts what the benchmarks ask for on first use; `close()` stops all of it."""

    workdir: Path
    log: Callable[[str], None] = print
    _market: Any = None  # node.localnet.LocalMarket
    _nodes: dict[str, StartedNode] = field(default_factory=dict)
    _clients: list[Any] = field(default_factory=list)  # LocalSigner, with CLIENT_DEPOSIT in the escrow
    _echo: EchoServer | None = None
    _local_mlp: Any = None
    vouchers: dict[tuple[str, int], int] = field(default_factory=dict)  # (client, expert) -> cumulative wei signed

    # -- the chain ---------------------------------------------------------------------------------

    def market(self) -> Any:
        if self._market is None:
            from node.localnet import LocalMarket

            started = time.perf_counter()
            market = LocalMarket(self.workdir / "market")
            market.start()
            self._market = market
            self.log(f"  (local market: anvil + contracts in {time.perf_counter() - started:.1f} s)")
        return self._market

    @property
    def deployment(self) -> Any:
        return self.market().devnet.deployment

    def clients(self, n: int) -> list[Any]:
        """`n` fresh client keys, each with CLIENT_DEPOSIT in the escrow (one key per concurrent caller:
        a node accepts one client's vouchers to one expert only in increasing order)."""
        from market.chain.devnet import throwaway_signer
        from market.chain.signer import LocalSigner

        if len(self._clients) < n:
            fresh = [LocalSigner.generate() for _ in range(n - len(self._clients))]
            deployment = self.deployment
            deposit_for_many(
                deployment.rpc_url, deployment.escrow, throwaway_signer(0).address,
                [k.address for k in fresh], CLIENT_DEPOSIT,
            )  # fmt: skip
            self._clients.extend(fresh)
        return self._clients[:n]

    # -- nodes -------------------------------------------------------------------------------------

    def _start_timed(self, name: str) -> float:
        """Spawn node `name` and wait for its ready.json; returns seconds from spawn to ready."""
        from node.app import READY_FILE

        market = self.market()
        node = market.nodes[name]
        ready = node.home / READY_FILE
        ready.unlink(missing_ok=True)
        started = time.perf_counter()
        market.start_node(name, wait=False)
        deadline = started + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            if node.process is None or not node.process.alive():
                raise RuntimeError(f"node {name} exited during start-up; see {node.process.log if node.process else ''}")
            if ready.exists():
                try:
                    json.loads(ready.read_text())
                except (json.JSONDecodeError, OSError):
                    pass
                else:
                    elapsed = time.perf_counter() - started
                    market.wait_ready(name, timeout=10)
                    return elapsed
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"node {name} was not ready within {START_TIMEOUT_S:.0f} s")

    def _target(self, name: str, expert_id: int) -> ExpertTarget:
        market = self.market()
        node = market.nodes[name]
        info = market.chain().get_expert(expert_id)
        d = self.deployment
        return ExpertTarget(
            peer_id=node.peer_id,
            addrs=tuple(node.addrs),
            expert_id=expert_id,
            model_hash=info.model_hash,
            price=info.price,
            signer=info.signer,
            chain_id=d.chain_id,
            escrow=d.escrow,
            disputes=d.disputes,
        )

    def mlp_node(self) -> StartedNode:
        """The node of benchmarks 1, 2 and 6: one expert serving the small MLP, started and timed once."""
        existing = self._nodes.get("mlp")
        if existing is not None:
            return existing
        from node.localnet import NodeSpec

        market = self.market()
        package = pack_mlp(self.workdir / "models" / "mlp")
        registered = time.perf_counter()
        node = market.add_node(NodeSpec("mlp", (package,), price=PRICE), start=False)
        self.log(f"  (node 'mlp' registered on chain in {time.perf_counter() - registered:.1f} s)")
        startup = self._start_timed("mlp")
        started = StartedNode("mlp", self._target("mlp", node.expert_ids[0]), node.process.popen.pid, startup)
        self.log(f"  (node 'mlp' ready in {startup:.2f} s, pid {started.pid})")
        self._nodes["mlp"] = started
        return started

    def restart_timed(self, name: str) -> StartedNode:
        """Stop node `name` gracefully and start it again; returns it with the new start-up time."""
        market = self.market()
        market.stop_node(name)
        startup = self._start_timed(name)
        node = market.nodes[name]
        old = self._nodes[name]
        started = StartedNode(name, self._target(name, old.target.expert_id), node.process.popen.pid, startup)
        self._nodes[name] = started
        return started

    def local_mlp(self) -> Any:
        """The MLP loaded in this process (market.models.package.LoadedModel): the local baseline."""
        if self._local_mlp is None:
            from market.models.package import load_package

            self._local_mlp = load_package(pack_mlp(self.workdir / "models" / "mlp"))
        return self._local_mlp

    def digits_nodes(self, bundle: Any, count: int = 3) -> list[Any]:
        """`count` nodes of distinct operators, each serving every digits expert (for redundancy up to
        `count`); started in parallel. Returns the RunningNodes."""
        from node.localnet import NodeSpec

        market = self.market()
        experts = tuple(bundle.expert_dir(i) for i in range(bundle.model.num_experts))
        names = [f"digits-{i}" for i in range(count)]
        fresh = [n for n in names if n not in market.nodes]
        for name in fresh:
            market.add_node(NodeSpec(name, experts, price=PRICE), start=False)
        for name in fresh:
            market.start_node(name, wait=False)
        for name in fresh:
            market.wait_ready(name)
        return [market.nodes[n] for n in names]

    # -- baselines ---------------------------------------------------------------------------------

    def echo_server(self) -> EchoServer:
        if self._echo is None:
            self._echo = EchoServer()
        return self._echo

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self._echo is not None:
            self._echo.close()
            self._echo = None
        if self._market is not None:
            self._market.stop()
            self._market = None
        self._nodes.clear()


@dataclass
class BenchContext:
    """What one run hands every benchmark."""

    long: bool
    workdir: Path
    env: MarketEnv
    log: Callable[[str], None] = print

    def pick(self, quick: Any, long: Any) -> Any:
        """The quick or the long setting of a loop bound."""
        return long if self.long else quick
