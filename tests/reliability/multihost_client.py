"""The client host of the multi-host scenario (test_multihost.py): the client SDK calling one model in a loop.

Run inside the client's network namespace as `python multihost_client.py CONFIG_JSON`. The config (written
by the test) names the deployment file, the environment variable holding the (throwaway) key, the state
dir, the model hash, the address to listen on (its own namespace's, so verifiers can fetch its dispute
evidence), the progress file, the control file and the client's timeouts.

`workers` threads call `Client.infer` (redundancy 1) back to back while the control file says "run". The
test steers the phases by rewriting the control file: "stop" ends the calls; with `dispute_calls` > 0 the
child then waits for "dispute", waits until it sees a third expert registered (the test has started a
cheating one), makes that many calls with redundancy 3 (the SDK opens disputes against the minority by
itself: auto_dispute) and waits until the verifiers have decided them. Progress lines (JSON, flushed):

    {"kind": "call", "w": worker, "t0": start, "t1": end (time.time()), "eid": [expert ids that answered],
     "failures": [[expert id, kind], ...]}  or the same with "error" instead of "eid"
    {"kind": "ready", "address": client address, "evidence": evidence endpoint}
    {"kind": "stopped"}                                       (the calls of the "run" mode are over)
    {"kind": "disputes", "records": [...]}                    (dispute phase only)
    {"kind": "summary", "spent": {eid: wei}, "in_flight": wei, "paid": wei}
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from market.client import Client, ClientConfig
from market.errors import MarketError
from market.gate import GatePolicy
from market.transport import TransportConfig
from market.types import DisputeStatus


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    control = Path(cfg["control"])
    config = ClientConfig(
        deployment=cfg["deployment"],
        unsafe_private_key=os.environ[cfg["key_env"]],
        state_dir=cfg["state_dir"],
        transport=TransportConfig(listen_host=cfg["listen_host"]),
        deadline_s=cfg["deadline_s"],
        call_timeout_s=cfg["call_timeout_s"],
        down_for_s=cfg["down_for_s"],
        registry_ttl_s=cfg.get("registry_ttl_s", 2.0),
        # Equal prices: a uniform choice between the experts, whatever their reputation after a partition,
        # so the healed one is called again.
        gate=GatePolicy(
            reputation_weight=0.0,
            latency_weight=0.0,
            exploration_bonus=0.0,
            temperature=1.0,
            epsilon=0.0,
            seed=cfg.get("seed", 5),
        ),
        auto_dispute=True,
        seed=cfg.get("seed", 5),
    )
    model_hash = cfg["model_hash"]
    lock = threading.Lock()
    torch.manual_seed(0)
    with Client(config) as client, open(cfg["progress"], "a") as out:

        def emit(line: dict) -> None:
            with lock:
                out.write(json.dumps(line) + "\n")
                out.flush()

        def mode() -> str:
            try:
                return control.read_text().strip()
            except FileNotFoundError:
                return "run"

        def call(worker: int, redundancy: int) -> None:
            x = torch.rand(2, 64)
            t0 = time.time()
            try:
                result = client.infer(model_hash, {"x": x}, redundancy=redundancy)
                line = {
                    "eid": sorted(result.receipts),
                    "failures": [[f.expert_id, f.kind] for f in result.failures],
                    "evidence": len(result.evidence),
                }
            except MarketError as exc:
                line = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            emit({"kind": "call", "w": worker, "t0": t0, "t1": time.time(), **line})

        emit({"kind": "ready", "address": client.address, "evidence": client.evidence_endpoint})

        def worker(w: int) -> None:
            for _ in range(cfg["max_calls"]):
                if mode() != "run":
                    return
                call(w, 1)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(cfg["workers"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        emit({"kind": "stopped"})

        if cfg.get("dispute_calls", 0) > 0:
            while mode() != "dispute":
                time.sleep(0.1)
            while (
                len(client.experts(model_hash, refresh=True)) < 3
            ):  # until the new (cheating) expert is seen
                time.sleep(0.5)
            for _ in range(cfg["dispute_calls"]):
                call(0, 3)
            deadline = time.monotonic() + cfg.get("dispute_wait_s", 300)
            records = client.disputes()
            while time.monotonic() < deadline:
                records = client.disputes()
                if records and all(r.status not in (DisputeStatus.NONE, DisputeStatus.OPEN) for r in records):
                    break
                time.sleep(1.0)
            emit({"kind": "disputes", "records": [r.to_json() for r in records]})

        balance = client.balance()
        emit(
            {
                "kind": "summary",
                "spent": {str(k): v for k, v in balance.spent_per_expert.items()},
                "in_flight": balance.in_flight,
                "paid": client.paid,
            }
        )


if __name__ == "__main__":
    main()
