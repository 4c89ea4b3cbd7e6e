"""Scenario 6, multi-host: the market's processes on separate "hosts" (Linux network namespaces) joined by a
bridge, with added latency, and partitions that heal; the money is checked afterwards.

Topology (tests/reliability/netlab.py builds it; every process below runs inside its own namespace):

    root namespace: the bridge with <subnet>.1 (only so this test process can read the chain and the
                    ledgers; nothing listens here)
    chain           anvil with the contracts, listening on its namespace's address only
    exp-a, exp-b    `moe expert serve` nodes serving the same digits model (exp-c: a cheating node, long form)
    wan             delay_relay.py: the experts' registered endpoints are /ip4/<wan>/tcp/<port>, and the relay
                    forwards each to the expert's own address with 25 ms added per direction (50 ms round
                    trip). The latency is added in USER SPACE: the kernel of the test machines has no netem
                    qdisc (`tc qdisc ... netem`: "Specified qdisc kind is unknown"). Chain traffic is direct.
    client          multihost_client.py: the client SDK (redundancy 1, a uniform choice between the
                    experts), calling from 2 threads; it listens on its namespace's address (dispute evidence)
    verifier        three `moe verifier run` processes (long form)

A partition sets the bridge side of a host's veth down: the host is cut off from every other one, the chain
included (its redeemer cannot reach the chain until it heals). The test steers the phases by what the client
reports (calls answered, by whom), never by elapsed time, and waits with generous bounds.

Quick form (`make test`): expert b is partitioned right after it answered a call (calls fail over to a; a call
in flight to b times out; its voucher is counted as possibly held and never paid twice), healed once the
client has seen b fail and a few more calls were answered; calls continue until b has answered again. Then:
while the nodes run, the chain must come to hold every voucher the ledgers hold (b's redeemer retries after
the heal); then both nodes stop gracefully and the money is checked as in test_market_faults.py (0 lost
vouchers, 0 double payments, redeemed == what the ledgers hold, failed calls only while no expert was
reachable: none here).

Long form (`-m chaos`): several hundred calls through four partitions: b (held until its redeemer has logged
a failed redemption), a, both a and b at once (the only window where calls may fail), b again. Then a
cheating node c (behaviour "perturb") is started in exp-c; the client makes calls with redundancy 3, catches
c in the minority and opens a dispute by itself; three verifier processes in the verifier namespace fetch
the model through the relay and the evidence from the client's namespace, vote, and c is slashed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netlab
import pytest
from market_harness import digits_bundle, ledger_holdings
from netlab import NetLab, netns_available
from reliability_rows import Row, money_row

from market.models.digits import load_digits_gate
from market.types import DisputeStatus
from node.app import NodeConfig
from node.localnet import LocalMarket, NodeSpec
from node.redeemer import RedeemPolicy

PRICE = 10**12
DEPOSIT = 10**17
HERE = Path(__file__).resolve().parent
CHAIN_PORT = 8545
EXPERT_PORTS = {"a": 4101, "b": 4102, "c": 4103}
DELAY_MS = 25
WAIT_S = 180.0  # the most any one phase waits for what it needs (a liveness bound, not a timing check)


@pytest.fixture
def netns() -> None:
    ok, reason = netns_available()
    if not ok:
        pytest.skip(f"multi-host scenario needs Linux network namespaces: {reason}")


def test_the_probe_says_why_namespaces_are_not_available(monkeypatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert netlab._probe() == (False, "network namespaces need root (run the tests as root, as CI does)")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netlab.shutil, "which", lambda name: None)
    ok, reason = netlab._probe()
    assert not ok and "`ip` command" in reason


@pytest.fixture(scope="module")
def model_hash() -> bytes:
    _, hashes = load_digits_gate(digits_bundle().root)
    return hashes[0]


# ---- the topology ---------------------------------------------------------------------------------------


@dataclass
class Hosts:
    lab: NetLab
    market: LocalMarket
    workdir: Path
    relay: subprocess.Popen[bytes] | None = None
    startup_s: float = 0.0

    def eid(self, name: str) -> int:
        return self.market.nodes[name].expert_ids[0]

    def node_log(self, name: str) -> str:
        log = self.market.nodes[name].home / "process.log"
        return log.read_text(errors="replace") if log.exists() else ""


def _redeem_often(market: LocalMarket, name: str) -> None:
    # Redeem often, so redemptions happen (and fail) during the partitions, not only on the way out.
    config = NodeConfig.load(market.nodes[name].home)
    redeem = RedeemPolicy(
        threshold_wei=10**18, max_age_s=1.0, max_batch=500, interval_s=0.5, max_backoff_s=4.0
    )
    dataclasses.replace(config, redeem=redeem).save()


def add_expert(hosts: Hosts, name: str, behaviour: str = "honest") -> None:
    lab, market = hosts.lab, hosts.market
    host = f"exp-{name}"
    spec = NodeSpec(
        name,
        (digits_bundle().expert_dir(0),),
        behaviour=behaviour,
        price=PRICE,
        listen_host=lab.ip(host),
        listen_port=EXPERT_PORTS[name],
        announce_host=lab.ip("wan"),
        launcher=lab.launcher(host),
    )
    market.add_node(spec, start=False)
    _redeem_often(market, name)


@contextmanager
def multihost(workdir: Path, *, cheater: bool, verifiers: int) -> Iterator[Hosts]:
    names = (
        ["chain", "wan", "exp-a", "exp-b", "client"]
        + (["exp-c"] if cheater else [])
        + (["verifier"] if verifiers else [])
    )
    started = time.monotonic()
    with NetLab(names) as lab:
        market = LocalMarket(
            workdir / "market",
            chain_host=lab.ip("chain"),
            chain_port=CHAIN_PORT,
            chain_launcher=lab.launcher("chain"),
        )
        hosts = Hosts(lab, market, workdir)
        try:
            market.start()
            for name in ("a", "b"):
                add_expert(hosts, name)
            routes = [
                f"{lab.ip('wan')}:{port}={lab.ip('exp-' + n)}:{port}"
                for n, port in EXPERT_PORTS.items()
                if f"exp-{n}" in lab.hosts
            ]
            ready = workdir / "relay.ready"
            with open(workdir / "relay.log", "ab") as log:
                hosts.relay = lab.run_in(
                    "wan",
                    [
                        sys.executable,
                        str(HERE / "delay_relay.py"),
                        "--delay-ms",
                        str(DELAY_MS),
                        "--ready",
                        str(ready),
                        "--stats",
                        str(workdir / "relay-stats.json"),
                        *routes,
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            for name in ("a", "b"):
                market.start_node(name, wait=False)
            wait_for(lambda: ready.exists(), "the delay relay to listen", alive=[hosts.relay])
            for name in ("a", "b"):
                market.wait_ready(name)
            for i in range(verifiers):
                market.add_verifier(f"verifier-{i + 1}", launcher=lab.launcher("verifier"))
            hosts.startup_s = time.monotonic() - started
            yield hosts
        finally:
            for host in lab.hosts:  # heal everything so the nodes can redeem on the way out
                with suppress(Exception):
                    lab.heal(host)
            market.stop()
            if hosts.relay is not None and hosts.relay.poll() is None:
                hosts.relay.terminate()
                with suppress(subprocess.TimeoutExpired):
                    hosts.relay.wait(10)


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = WAIT_S,
    alive: list[subprocess.Popen[Any]] = (),
) -> None:
    """Poll until `condition` holds; fail naming `what` if it never does within `timeout` (a liveness bound)."""
    deadline = time.monotonic() + timeout
    while not condition():
        for p in alive:
            if p.poll() is not None:
                raise AssertionError(f"a process exited (status {p.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# ---- the client host ------------------------------------------------------------------------------------


class ClientHost:
    """The client process in the client namespace, its progress and the control file that steers it."""

    def __init__(self, hosts: Hosts, model_hash: bytes, *, workers: int, dispute_calls: int = 0) -> None:
        market, lab = hosts.market, hosts.lab
        self.hosts = hosts
        self.signer = market.new_account()
        market.chain(self.signer).deposit(DEPOSIT)
        root = hosts.workdir / "client"
        root.mkdir(parents=True, exist_ok=True)
        self.progress = root / "progress.jsonl"
        self.control = root / "control"
        self.log = root / "client.log"
        key_env = "MOE_MULTIHOST_CLIENT_KEY"
        config = {
            "deployment": str(market.deployment_path),
            "key_env": key_env,
            "state_dir": str(root / "state"),
            "model_hash": "0x" + model_hash.hex(),
            "listen_host": lab.ip("client"),
            "progress": str(self.progress),
            "control": str(self.control),
            "workers": workers,
            "max_calls": 100_000,
            "deadline_s": 15.0,
            "call_timeout_s": 4.0,
            "down_for_s": 2.0,
            "dispute_calls": dispute_calls,
            "seed": 5,
        }
        (root / "config.json").write_text(json.dumps(config))
        self.set_mode("run")
        env = {**market.env(), key_env: "0x" + self.signer.unsafe_private_key().hex()}
        with open(self.log, "ab") as log:
            self.proc = lab.run_in(
                "client",
                [sys.executable, str(HERE / "multihost_client.py"), str(root / "config.json")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def set_mode(self, mode: str) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(mode)
        os.replace(tmp, self.control)

    def lines(self) -> list[dict[str, Any]]:
        if not self.progress.exists():
            return []
        text = self.progress.read_text()
        return [json.loads(t) for t in text[: text.rfind("\n") + 1].splitlines()]

    def calls(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["kind"] == "call"]

    def wait(
        self, condition: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT_S
    ) -> None:
        wait_for(lambda: condition(self.calls()), what, timeout=timeout, alive=[self.proc])

    def address(self) -> str:
        return next(line for line in self.lines() if line["kind"] == "ready")["address"]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def answered_by(calls: list[dict[str, Any]], eid: int, since: float = 0.0) -> int:
    return sum(1 for c in calls if eid in c.get("eid", ()) and c["t0"] >= since)


def finished_since(calls: list[dict[str, Any]], since: float) -> int:
    return sum(1 for c in calls if c["t0"] >= since)


def failed_on(calls: list[dict[str, Any]], eid: int, since: float) -> int:
    """Calls since `since` in which an attempt at `eid` failed (the client noticed it was gone)."""
    return sum(1 for c in calls if c["t1"] >= since and any(f[0] == eid for f in c.get("failures", ())))


def partition_right_after_answer(client: ClientHost, name: str, *also: str) -> float:
    """Partition expert `name` (and the hosts in `also`) as soon as it has answered a call: that node then
    holds a fresh voucher its redeemer has not redeemed yet, and another call may be in flight to it."""
    hosts = client.hosts
    eid, now = hosts.eid(name), time.time()
    client.wait(
        lambda calls: answered_by([c for c in calls if c["t1"] >= now], eid) > 0,
        f"expert {name} to answer a call before its partition",
    )
    for host in (f"exp-{name}", *also):
        hosts.lab.partition(host)
    return time.time()


def all_down_windows(lab: NetLab, experts: list[str]) -> list[tuple[float, float]]:
    """The time intervals during which every expert host was partitioned (no expert reachable)."""
    down: set[str] = set()
    windows: list[tuple[float, float]] = []
    start: float | None = None
    for host, what, t in lab.partitions:
        if host not in experts:
            continue
        (down.add if what == "down" else down.discard)(host)
        if start is None and down == set(experts):
            start = t
        elif start is not None and down != set(experts):
            windows.append((start, t))
            start = None
    if start is not None:
        windows.append((start, time.time()))
    return windows


# ---- the money ------------------------------------------------------------------------------------------




def settle(hosts: Hosts, client: str, row: Row) -> tuple[dict[int, int], dict[int, int]]:
    """Wait (nodes running) until the chain has redeemed what the ledgers hold; then stop the nodes gracefully
    (they redeem on the way out) and return (held, redeemed) per expert id."""
    market = hosts.market
    chain = market.chain()
    t0 = time.monotonic()
    matched = False
    deadline = t0 + WAIT_S
    while time.monotonic() < deadline:
        held = ledger_holdings(market, client)
        if {eid: chain.redeemed(client, eid) for eid in held} == held:
            matched = True
            break
        time.sleep(0.3)
    row.notes["all_redeemed_while_running"] = matched
    row.notes["redeemed_while_running_after_s"] = round(time.monotonic() - t0, 1)
    for name in market.nodes:
        market.stop_node(name)
    held = ledger_holdings(market, client)
    return held, {eid: chain.redeemed(client, eid) for eid in held}


def finish_row(
    row: Row, hosts: Hosts, client: ClientHost, started: float
) -> tuple[dict[int, int], list[dict]]:
    """Fill `row` from the client's progress and the chain once the client has exited; returns (held, failed
    calls outside the no-expert windows)."""
    assert client.proc.wait(WAIT_S * 2) == 0, client.tail()
    lines = client.lines()
    summary = next(line for line in lines if line["kind"] == "summary")
    address = client.address()
    calls = [line for line in lines if line["kind"] == "call"]
    row.attempted = len(calls)
    row.succeeded = sum(1 for c in calls if "eid" in c)
    row.failed = sum(1 for c in calls if "error" in c)
    answered: Counter[int] = Counter(e for c in calls for e in c.get("eid", ()))
    paid = {int(k): v for k, v in summary["spent"].items()}
    held, redeemed = settle(hosts, address, row)
    money_row(row, price=PRICE, paid=paid, answered=dict(answered), redeemed=redeemed, held=held)
    row.seconds = time.monotonic() - started
    windows = all_down_windows(hosts.lab, [f"exp-{n}" for n in ("a", "b")])
    outside = [
        c for c in calls if "error" in c and not any(c["t0"] <= e and c["t1"] >= s for s, e in windows)
    ]
    failures = Counter(f"{f[0]}:{f[1]}" for c in calls for f in c.get("failures", ()))
    relay_stats = hosts.workdir / "relay-stats.json"
    if hosts.relay is not None and hosts.relay.poll() is None:
        hosts.relay.terminate()
        hosts.relay.wait(10)
    row.notes.update(
        answered={str(k): v for k, v in answered.items()},
        in_flight_after=summary["in_flight"],
        attempt_failures=dict(failures),
        no_expert_windows_s=[round(e - s, 1) for s, e in windows],
        failed_outside_windows=len(outside),
        errors=[c["error"][:160] for c in calls if "error" in c][:3],
        startup_s=round(hosts.startup_s, 1),
        delay_ms_each_way=DELAY_MS,
        relay=json.loads(relay_stats.read_text()) if relay_stats.exists() else None,
        partitions=[(h, w, round(t - hosts.lab.partitions[0][2], 1)) for h, w, t in hosts.lab.partitions],
    )
    return held, outside


def check_money(row: Row, held: dict[int, int]) -> None:
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
    assert row.redeemed_wei == sum(held.values()), row
    assert row.notes["all_redeemed_while_running"], row


def check_failures(outside: list[dict[str, Any]]) -> None:
    """Failed calls only while no expert was reachable."""
    assert not outside, f"calls failed while an expert was reachable: {outside[:3]}"


def redemption_failures(hosts: Hosts, name: str) -> int:
    return len(re.findall(r"redemption failed", hosts.node_log(name)))


# ---- quick form -----------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_multihost_partition_heals_quick(netns, tmp_path, model_hash, record_row) -> None:
    row = Row("6 multi-host: partition b, heal")
    with multihost(tmp_path, cheater=False, verifiers=0) as hosts:
        started = time.monotonic()
        a, b = hosts.eid("a"), hosts.eid("b")
        client = ClientHost(hosts, model_hash, workers=2)
        try:
            client.wait(
                lambda calls: len(calls) >= 5 and answered_by(calls, b) > 0, "5 calls, one answered by b"
            )
            redeem_failures_before = redemption_failures(hosts, "b")
            cut = partition_right_after_answer(client, "b")
            address = client.address()
            held_at_cut = ledger_holdings(hosts.market, address).get(b, 0)
            unredeemed_at_cut = held_at_cut - hosts.market.chain().redeemed(address, b)
            client.wait(
                lambda calls: failed_on(calls, b, cut) > 0 and finished_since(calls, cut) >= 6,
                "the client to find b unreachable and 6 calls to finish during the partition",
            )
            hosts.lab.heal("exp-b")
            healed = time.time()
            client.wait(
                lambda calls: answered_by(calls, b, healed) >= 2 and finished_since(calls, healed) >= 6,
                "b to answer 2 calls after the heal",
            )
            client.set_mode("stop")
            held, outside = finish_row(row, hosts, client, started)
        finally:
            if client.proc.poll() is None:
                client.proc.kill()
        calls = client.calls()
        row.notes.update(
            b_unredeemed_at_partition_wei=unredeemed_at_cut,
            b_timeouts_during_partition=sum(1 for c in calls if [b, "timeout"] in c.get("failures", [])),
            b_redemption_failures_logged=redemption_failures(hosts, "b") - redeem_failures_before,
            answered_after_heal={"a": answered_by(calls, a, healed), "b": answered_by(calls, b, healed)},
        )
    record_row(row)
    check_money(row, held)
    assert row.notes["answered_after_heal"]["b"] >= 2
    check_failures(outside)
    assert row.failed == 0, row.notes["errors"]


# ---- long form ------------------------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_multihost_partitions_and_dispute_long(netns, tmp_path, model_hash, record_row) -> None:
    row = Row("6 multi-host: 4 partitions + dispute (long)")
    with multihost(tmp_path, cheater=True, verifiers=3) as hosts:
        started = time.monotonic()
        lab = hosts.lab
        a, b = hosts.eid("a"), hosts.eid("b")
        client = ClientHost(hosts, model_hash, workers=2, dispute_calls=3)
        phases: list[dict[str, Any]] = []

        def phase(name: str, cut: float, healed: float) -> None:
            calls = client.calls()
            during = [c for c in calls if cut <= c["t0"] < healed]
            phases.append(
                {
                    "phase": name,
                    "calls_during": len(during),
                    "failed_during": sum("error" in c for c in during),
                    "partition_s": round(healed - cut, 1),
                }
            )

        def after_heal(healed: float, *names: str, calls: int = 40) -> None:
            eids = [hosts.eid(n) for n in names]
            client.wait(
                lambda cs: (
                    all(answered_by(cs, e, healed) >= 3 for e in eids) and finished_since(cs, healed) >= calls
                ),
                f"{', '.join(names)} to answer again after the heal",
            )

        try:
            client.wait(lambda calls: len(calls) >= 30 and answered_by(calls, b) > 0, "30 warm-up calls")
            # 1. b, until its redeemer has failed to reach the chain at least once
            failures_before = redemption_failures(hosts, "b")
            cut = partition_right_after_answer(client, "b")
            client.wait(
                lambda calls: failed_on(calls, b, cut) > 0 and finished_since(calls, cut) >= 40,
                "the client to find b unreachable",
            )
            wait_for(
                lambda: redemption_failures(hosts, "b") > failures_before,
                "b's redeemer to log a failed redemption during the partition",
            )
            lab.heal("exp-b")
            healed = time.time()
            phase("b", cut, healed)
            after_heal(healed, "b")
            # 2. a
            cut = partition_right_after_answer(client, "a")
            client.wait(
                lambda calls: failed_on(calls, a, cut) > 0 and finished_since(calls, cut) >= 40,
                "the client to find a unreachable",
            )
            lab.heal("exp-a")
            healed = time.time()
            phase("a", cut, healed)
            after_heal(healed, "a")
            # 3. a and b at once: no expert left, the only window in which calls may fail
            cut = partition_right_after_answer(client, "a", "exp-b")
            client.wait(
                lambda calls: sum(1 for c in calls if "error" in c and c["t0"] >= cut) >= 3,
                "3 calls to fail while no expert is reachable",
            )
            lab.heal("exp-a")
            lab.heal("exp-b")
            healed = time.time()
            phase("a+b", cut, healed)
            after_heal(healed, "a", "b")
            # 4. b again
            cut = partition_right_after_answer(client, "b")
            client.wait(
                lambda calls: failed_on(calls, b, cut) > 0 and finished_since(calls, cut) >= 40,
                "the client to find b unreachable again",
            )
            lab.heal("exp-b")
            healed = time.time()
            phase("b again", cut, healed)
            after_heal(healed, "b", calls=60)
            client.set_mode("stop")
            wait_for(
                lambda: any(line["kind"] == "stopped" for line in client.lines()),
                "the calls to stop",
                alive=[client.proc],
            )
            # 5. a cheating expert c joins; the client catches it with redundancy 3 and disputes it; the
            #    verifiers (namespace "verifier") fetch the model through the relay and the evidence from the
            #    client's namespace, vote, and c is slashed.
            add_expert(hosts, "c", behaviour="perturb")
            hosts.market.start_node("c")
            client.set_mode("dispute")
            held, outside = finish_row(row, hosts, client, started)
        finally:
            if client.proc.poll() is None:
                client.proc.kill()
        c = hosts.eid("c")
        records = next((line["records"] for line in client.lines() if line["kind"] == "disputes"), [])
        infos = {e.expert_id: e for e in hosts.market.chain().get_experts([a, b, c])}
        row.notes.update(
            phases=phases,
            redemption_failures_logged={n: redemption_failures(hosts, n) for n in ("a", "b")},
            disputes=[{k: r[k] for k in ("dispute_id", "expert_id", "status")} for r in records],
            slashed_wei={str(e): infos[e].slashed_total for e in (a, b, c)},
            verifier_namespace_pids=len(lab.pids("verifier")),
        )
    record_row(row)
    check_money(row, held)
    assert row.notes["redemption_failures_logged"]["b"] > 0
    assert any(r["expert_id"] == c and r["status"] == DisputeStatus.GUILTY.name for r in records), records
    assert infos[c].slashed_total > 0 and infos[a].slashed_total == infos[b].slashed_total == 0, infos
    check_failures(outside)
