"""Benchmark 6: resident memory of an expert node idle and under load, and its start-up time.

The node is the small-MLP node of benchmarks 1 and 2 (`moe expert serve`, a real process on a real chain).
- start-up: from spawning the process to its ready.json (keys decrypted, model loaded, listening);
- idle RSS: VmRSS a moment after it is ready;
- under load: the highest VmRSS sampled every 20 ms while 64 paying callers call it (and VmHWM after).
Baseline for all three, in the same run: a bare `python -c "import torch"` (its wall time from spawn to
exit, and its VmRSS once torch is imported). Diagnostics split the start-up: importing the node's code, and
decrypting its two key files (argon2id identity, the hot signer's keystore).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time

import torch
import trio

from bench import TITLES
from bench.env import BenchContext, read_rss_kib
from bench.report import Figure, figure

NAME = "memory"
TITLE = TITLES[NAME]

_PROBE = (
    "import time, pathlib; t = time.perf_counter(); import {module}; "
    "rss = [l for l in pathlib.Path('/proc/self/status').read_text().splitlines() if l.startswith('VmRSS:')]; "
    "import json; print(json.dumps({{'rss_kib': int(rss[0].split()[1]), 'import_s': time.perf_counter() - t}}))"
)


def probe(module: str) -> tuple[float, float, float]:
    """(spawn-to-exit seconds, import seconds inside, VmRSS MiB after the import) of a python importing `module`."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)], capture_output=True, text=True, timeout=300, check=True
    )
    wall = time.perf_counter() - start
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, info["import_s"], info["rss_kib"] / 1024


def key_decrypt_seconds(home, password: str) -> tuple[float, float]:  # noqa: ANN001 - a Path
    """Seconds to decrypt the node's identity (argon2id) and its hot signer keystore."""
    from market.chain.signer import signer_from_keystore
    from market.transport import NodeIdentity
    from node.app import IDENTITY_FILE, SIGNER_FILE

    t0 = time.perf_counter()
    NodeIdentity.load(home / IDENTITY_FILE, password)
    t1 = time.perf_counter()
    signer_from_keystore(home / SIGNER_FILE, password)
    return t1 - t0, time.perf_counter() - t1


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread; `peak_mib` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, _ = read_rss_kib(self.pid)
            except OSError:
                return
            self.peak_kib = max(self.peak_kib, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


def run(ctx: BenchContext) -> list[Figure]:
    from bench.throughput import CALLERS, paid_load
    from node.localnet import PASSWORD

    node = ctx.env.mlp_node()
    startups = [node.startup_s]
    for _ in range(ctx.pick(0, 2)):
        node = ctx.env.restart_timed("mlp")
        startups.append(node.startup_s)
    time.sleep(1.0)  # let the fresh node settle before reading its idle memory
    idle_mib = read_rss_kib(node.pid)[0] / 1024

    keys = ctx.env.clients(CALLERS)
    x = torch.rand(1, 256)
    with RssSampler(node.pid) as sampler:
        stats, _ = trio.run(paid_load, node, keys, ctx.pick(5, 40), x, ctx.env.vouchers)
    rss_now, hwm = read_rss_kib(node.pid)
    loaded_mib = max(sampler.peak_mib, rss_now / 1024)

    # Alternate the two probes so that load on the shared machine falls on both alike.
    torch_runs, node_runs = [], []
    for _ in range(ctx.pick(1, 3)):
        torch_runs.append(probe("torch"))
        node_runs.append(probe("node.app, node.cli"))
    torch_wall = statistics.median(r[0] for r in torch_runs)
    torch_rss = statistics.median(r[2] for r in torch_runs)
    node_import_wall = statistics.median(r[0] for r in node_runs)
    node_import_s = statistics.median(r[1] for r in node_runs)
    node_import_rss = statistics.median(r[2] for r in node_runs)
    identity_s, keystore_s = key_decrypt_seconds(ctx.env.market().nodes["mlp"].home, PASSWORD)
    startup = statistics.median(startups)

    b = NAME
    return [
        figure(b, "node RSS, idle", idle_mib, "MiB", baseline=torch_rss, baseline_name="python + import torch",
               note="VmRSS 1 s after ready.json; one expert (MLP 256-256-256), ledger open, redeemer running"),
        figure(b, "node RSS, under load (64 callers)", loaded_mib, "MiB", baseline=torch_rss,
               baseline_name="python + import torch",
               note=f"highest VmRSS sampled every 20 ms over {stats.calls} paid calls at "
                    f"{stats.calls_per_s:.0f} calls/s; the process's lifetime peak VmHWM, {hwm / 1024:.0f} MiB, is "
                    f"from start-up: decrypting the hot signer's keystore with eth_account's default scrypt "
                    f"(n=2^18, r=8) takes 256 MiB"),
        figure(b, "node start-up (spawn to ready.json)", startup, "s", baseline=torch_wall,
               baseline_name="python -c 'import torch'",
               note=f"median of {len(startups)} start(s): {', '.join(f'{s:.2f}' for s in startups)} s"),
        figure(b, "diag: importing node.app + node.cli", node_import_wall, "s", baseline=torch_wall,
               baseline_name="python -c 'import torch'",
               note=f"spawn to exit; the import itself {node_import_s:.2f} s, VmRSS {node_import_rss:.0f} MiB"),
        figure(b, "diag: decrypting the node's keys", identity_s + keystore_s, "s", baseline=startup,
               baseline_name="node start-up",
               note=f"identity (argon2id) {identity_s:.2f} s + hot signer keystore {keystore_s:.2f} s"),
    ]  # fmt: skip
