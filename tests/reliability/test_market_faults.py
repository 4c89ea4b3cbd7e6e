"""Faults, load and hostile input against real processes, with the money checked after each.

Scenarios: (1) an expert node SIGKILLed mid-load (failover, restart), (2) the chain RPC frozen (SIGSTOP
anvil), (3) a client process SIGKILLed mid-call and restarted on the same state dir, (4) a stream flood
and an idle-connection flood against one node, (5) garbage frames on every protocol of a live node.

One LocalMarket per module: anvil + contracts + two expert node processes serving the same digits model
(so a client can fail over), redeeming often. Quick forms (`make test`) check the money by waiting until
the chain has redeemed what the node ledgers hold; long forms (`-m chaos`) stop both nodes gracefully
after each scenario (they redeem on the way out) and start them again. The module's last test stops both
nodes gracefully and checks every client's money once more.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import pytest
import torch
import trio
from market_harness import digits_bundle, ledger_holdings
from reliability_rows import Row, money_row

from market.chain.eip712 import VoucherSigner
from market.client import Client, ClientConfig
from market.errors import MarketError
from market.models.digits import load_digits_gate
from market.protocol import codec
from market.protocol.framing import read_frame, write_frame
from market.protocol.hashing import new_request_id
from market.protocol.ids import INFER, MODEL, QUOTE
from market.protocol.messages import (
    HEADER_LENGTH_SIZE,
    ErrorMessage,
    InferRequest,
    InferResult,
    QuoteRequest,
    decode_body,
    encode_body,
)
from market.transport import open_host
from node.app import NodeConfig
from node.localnet import LocalMarket, NodeSpec
from node.redeemer import RedeemPolicy

pytestmark = pytest.mark.timeout(900)

PRICE = 10**12
DEPOSIT = 10**17
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    bundle = digits_bundle()
    m = LocalMarket(tmp_path_factory.mktemp("reliability-faults"))
    m.start()
    try:
        for name in ("a", "b"):
            node = m.add_node(NodeSpec(name, (bundle.expert_dir(0),), price=PRICE), start=False)
            # Redeem often, so redemptions happen (and fail) during the faults, not only on the way out.
            config = NodeConfig.load(node.home)
            redeem = RedeemPolicy(threshold_wei=10**18, max_age_s=1.0, max_batch=500, interval_s=0.5,
                                  max_backoff_s=4.0)
            dataclasses.replace(config, redeem=redeem).save()
        for name in ("a", "b"):
            m.start_node(name, wait=False)
        for name in ("a", "b"):
            m.wait_ready(name)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def model_hash() -> bytes:
    _, hashes = load_digits_gate(digits_bundle().root)
    return hashes[0]


def all_expert_ids(market: LocalMarket) -> list[int]:
    return [eid for n in market.nodes.values() for eid in n.expert_ids]


CLIENTS: dict[str, dict[int, int]] = {}  # every client address used here -> what it signed per expert


def settle(market: LocalMarket, client: str, *, graceful: bool) -> tuple[dict[int, int], dict[int, int]]:
    """Held (node ledgers) and redeemed (chain) per expert id for `client`.

    graceful: stop every node (each redeems on the way out), read, start them again (long forms).
    Otherwise wait, nodes running, until the chain has redeemed what the ledgers hold (quick forms; the
    module's last test stops the nodes gracefully once for every client)."""
    chain = market.chain()
    if graceful:
        for name in market.nodes:
            market.stop_node(name)
        held = ledger_holdings(market, client)
        redeemed = {eid: chain.redeemed(client, eid) for eid in held}
        for name in market.nodes:
            market.start_node(name, wait=False)
        for name in market.nodes:
            market.wait_ready(name)
        return held, redeemed
    deadline = time.monotonic() + 60
    while True:
        held = ledger_holdings(market, client)
        redeemed = {eid: chain.redeemed(client, eid) for eid in held}
        if redeemed == held or time.monotonic() > deadline:
            return held, redeemed
        time.sleep(0.3)




# ---- 1. an expert node SIGKILLed mid-load, failover, restart ---------------------------------------------


def run_node_kill(market: LocalMarket, model_hash: bytes, calls: int, record_row, name: str, graceful: bool) -> None:
    account = market.new_account()
    config = ClientConfig(deployment=market.deployment_path, account=account,
                          state_dir=market.workdir / "clients" / name, deadline_s=30.0, call_timeout_s=10.0, seed=3)
    row = Row(name)
    started = time.monotonic()
    answered: Counter[int] = Counter()
    errors: list[str] = []
    alive_at_failure: list[int] = []
    with Client(config) as client:
        client.deposit(DEPOSIT)
        killer = threading.Thread(target=market.kill_node, args=("a",))
        restarter = threading.Thread(target=market.start_node, args=("a",))
        for i in range(calls):
            if i == calls // 3:
                killer.start()
            if i == 2 * calls // 3:
                killer.join(60)
                restarter.start()
            row.attempted += 1
            try:
                result = client.infer(model_hash, {"x": torch.rand(3, 64)}, redundancy=1)
                row.succeeded += 1
                answered.update(list(result.receipts))
            except MarketError as exc:
                row.failed += 1
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                alive_at_failure.append(sum(1 for n in market.nodes.values() if n.process and n.process.alive()))
        for t in (killer, restarter):
            if t.ident is not None:
                t.join(120)
        balance = client.balance()
        paid = dict(balance.spent_per_expert)
        address = client.address
        row.notes["in_flight_after"] = balance.in_flight
    CLIENTS[address] = paid
    held, redeemed = settle(market, address, graceful=graceful)
    money_row(row, price=PRICE, paid=paid, answered=dict(answered), redeemed=redeemed, held=held)
    row.seconds = time.monotonic() - started
    row.notes.update(answered={str(k): v for k, v in answered.items()}, errors=errors[:3])
    record_row(row)
    # Failed calls only where no expert was left alive (node b never stops here).
    assert all(n == 0 for n in alive_at_failure), errors
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
    assert row.redeemed_wei == sum(held.values())


def test_node_sigkill_mid_load_quick(market, model_hash, record_row) -> None:
    run_node_kill(market, model_hash, 12, record_row, "1 node SIGKILL (quick)", False)


@pytest.mark.chaos
def test_node_sigkill_mid_load_long(market, model_hash, record_row) -> None:
    run_node_kill(market, model_hash, 300, record_row, "1 node SIGKILL (long)", True)


# ---- 2. the chain RPC frozen (SIGSTOP anvil) while calls continue ---------------------------------------


class RawPayer:
    """A hand-rolled paying client (as in tests/integration/node): no chain access on the client side."""

    def __init__(self, market: LocalMarket, host, signer) -> None:
        deployment = market.devnet.deployment
        self.market = market
        self.host = host
        self.vouchers = VoucherSigner(signer.unsafe_private_key(), deployment.chain_id, deployment.escrow)
        self.cumulative: dict[int, int] = {}
        self.answered: Counter[int] = Counter()

    async def call(self, node_name: str, model_hash: bytes, timeout: float = 15.0) -> str:
        node = self.market.nodes[node_name]
        eid = node.expert_ids[0]
        amount = self.cumulative.get(eid, 0) + PRICE
        voucher = self.vouchers.sign(eid, amount)
        specs, payload = codec.encode_tensors({"x": torch.rand(2, 64)})
        request = InferRequest(request_id=new_request_id(), expert_id=eid, model_hash=model_hash,
                               tensors=tuple(specs), voucher=voucher, deadline_ms=int(timeout * 1000), payload=payload)
        try:
            header, body = await self.host.session(node.peer_id, node.addrs, INFER).call(
                request.to_header(), request.body_payload, timeout=timeout)
        except MarketError as exc:
            # Unknown outcome: the node may hold the voucher; count it as signed.
            self.cumulative[eid] = amount
            return f"transport: {type(exc).__name__}"
        if header["type"] == "error":
            error = ErrorMessage.from_header(header, body)
            return f"error: {error.code}"
        InferResult.from_header(header, body)
        self.cumulative[eid] = amount
        self.answered[eid] += 1
        return "ok"


def run_chain_freeze(market: LocalMarket, model_hash: bytes, freeze_s: float, record_row, name: str, graceful: bool) -> None:
    signer = market.new_account()
    market.chain(signer).deposit(DEPOSIT)
    anvil_pid = market.devnet._proc.pid  # noqa: SLF001 - the test freezes the chain process itself
    row = Row(name)
    started = time.monotonic()
    outcomes: Counter[str] = Counter()
    during: Counter[str] = Counter()
    slowest: list = [0.0]  # [seconds, started at (s after the freeze began), node, outcome]

    async def scenario() -> RawPayer:
        async with open_host() as host:
            payer = RawPayer(market, host, signer)
            for node in ("a", "b"):  # warm up: the deposit view is fresh when the freeze starts
                outcomes[await payer.call(node, model_hash)] += 1
            os.kill(anvil_pid, signal.SIGSTOP)
            try:
                end = trio.current_time() + freeze_s
                i = 0
                while trio.current_time() < end:
                    t0 = trio.current_time()
                    outcome = await payer.call("ab"[i % 2], model_hash, timeout=freeze_s + (10 if freeze_s <= 5 else 40))
                    took = trio.current_time() - t0
                    if took > slowest[0]:
                        slowest[:] = [round(took, 2), round(t0 - end + freeze_s, 2), "ab"[i % 2], outcome]
                    outcomes[outcome] += 1
                    during[outcome] += 1
                    i += 1
                    await trio.sleep(0.05)
            finally:
                os.kill(anvil_pid, signal.SIGCONT)
            for i in range(6):
                outcomes[await payer.call("ab"[i % 2], model_hash)] += 1
            return payer

    payer = trio.run(scenario)
    row.attempted = sum(outcomes.values())
    row.succeeded = outcomes["ok"]
    row.failed = row.attempted - row.succeeded
    # Eventually redeemed while the nodes keep running (retry with backoff), then settle for the figures.
    chain = market.chain()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(chain.redeemed(signer.address, eid) >= amount for eid, amount in payer.cumulative.items()):
            break
        time.sleep(0.5)
    row.notes["redeemed_while_running_s"] = round(time.monotonic() - deadline + 30, 1)
    row.notes["all_redeemed_while_running"] = all(
        chain.redeemed(signer.address, eid) >= amount for eid, amount in payer.cumulative.items())
    CLIENTS[signer.address] = dict(payer.cumulative)
    held, redeemed = settle(market, signer.address, graceful=graceful)
    money_row(row, price=PRICE, paid=dict(payer.cumulative), answered=dict(payer.answered), redeemed=redeemed,
              held=held)
    row.seconds = time.monotonic() - started
    row.notes.update(freeze_s=freeze_s, outcomes=dict(outcomes), during_freeze=dict(during), slowest_call=slowest)
    record_row(row)
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
    assert row.notes["all_redeemed_while_running"], row
    if row.failed:
        # Seen in 7 of 8 runs: one call sent ~5 s into the freeze (when the node's deposit view of the client
        # expires, DepositView ttl 5 s) gets no answer at all, even 40 s after SIGCONT, although the node
        # recorded its voucher and later redeemed it; calls sent after SIGCONT are answered at once.
        # A deposit refresh alone across a freeze is answered (test_call_needing_a_deposit_refresh...), so it
        # takes the freeze plus the redeemer's concurrent chain traffic. See docs/reliability.md, "Bugs".
        pytest.xfail(f"BUG: a call in flight when the chain froze was never answered: {row.notes['slowest_call']}")


def test_chain_rpc_frozen_quick(market, model_hash, record_row) -> None:
    run_chain_freeze(market, model_hash, 5.0, record_row, "2 anvil SIGSTOP 5s", False)


@pytest.mark.chaos
def test_chain_rpc_frozen_long(market, model_hash, record_row) -> None:
    run_chain_freeze(market, model_hash, 30.0, record_row, "2 anvil SIGSTOP 30s", True)


def test_call_needing_a_deposit_refresh_during_a_freeze_is_answered(market, model_hash, record_row) -> None:
    """A call whose deposit check needs the chain while anvil is frozen must be answered once it resumes."""
    signer = market.new_account()
    market.chain(signer).deposit(DEPOSIT)  # never seen by the nodes: their deposit view must fetch it
    anvil_pid = market.devnet._proc.pid  # noqa: SLF001
    row = Row("2b deposit refresh across a 2s freeze")
    started = time.monotonic()
    result: dict = {}

    async def scenario() -> RawPayer:
        async with open_host() as host:
            payer = RawPayer(market, host, signer)
            os.kill(anvil_pid, signal.SIGSTOP)
            try:
                async with trio.open_nursery() as nursery:
                    async def go() -> None:
                        t0 = trio.current_time()
                        result["outcome"] = await payer.call("a", model_hash, timeout=40.0)
                        result["took"] = round(trio.current_time() - t0, 2)
                    nursery.start_soon(go)
                    await trio.sleep(2.0)
                    os.kill(anvil_pid, signal.SIGCONT)
            finally:
                os.kill(anvil_pid, signal.SIGCONT)
            return payer

    payer = trio.run(scenario)
    CLIENTS[signer.address] = dict(payer.cumulative)
    held, redeemed = settle(market, signer.address, graceful=False)
    row.attempted = 1
    row.succeeded = int(result["outcome"] == "ok")
    row.failed = 1 - row.succeeded
    money_row(row, price=PRICE, paid=dict(payer.cumulative), answered=dict(payer.answered), redeemed=redeemed,
              held=held)
    row.seconds = time.monotonic() - started
    row.notes.update(result)
    record_row(row)
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
    assert result["outcome"] == "ok" and result["took"] < 15, result


# ---- 3. the client process SIGKILLed between paying and receiving ---------------------------------------


def run_client_kill(market: LocalMarket, model_hash: bytes, rounds: int, record_row, name: str, graceful: bool) -> None:
    from market.wallet import VoucherBook

    signer = market.new_account()
    market.chain(signer).deposit(DEPOSIT)
    key_env = "MOE_RELIABILITY_CLIENT_KEY"
    env = {**market.env(), key_env: "0x" + signer.unsafe_private_key().hex()}
    state = market.workdir / "clients" / name.replace(" ", "_")
    progress = state.parent / (state.name + ".jsonl")
    state.parent.mkdir(parents=True, exist_ok=True)
    deployment = market.devnet.deployment
    rng = random.Random(1234)
    row = Row(name)
    started = time.monotonic()
    over_book: list[tuple[int, int, int]] = []

    def child(n: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(HERE / "sdk_child.py"), str(market.deployment_path), key_env, str(state),
             "0x" + model_hash.hex(), str(n), str(progress)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def lines() -> list[dict]:
        text = progress.read_text() if progress.exists() else ""
        # A line cut by the kill (no newline yet) was never finished: only whole lines count.
        return [json.loads(t) for t in text[: text.rfind("\n") + 1].splitlines()]

    def check_holdings() -> None:
        book_dir = next(state.iterdir())
        with VoucherBook(book_dir / "wallet.db", escrow=deployment.escrow, chain_id=deployment.chain_id,
                         client=signer.address) as book:
            signed = book.spent_per_expert()
        for eid, amount in ledger_holdings(market, signer.address).items():
            if amount > signed.get(eid, 0) + PRICE:
                over_book.append((eid, amount, signed.get(eid, 0)))

    kills = 0
    for _ in range(rounds):
        before = len(lines())
        proc = child(1000)
        deadline = time.monotonic() + 120
        while len(lines()) < before + 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the middle of a call
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        kills += 1
        check_holdings()
    final = child(2)
    assert final.wait(180) == 0
    check_holdings()
    records = lines()
    spent = {int(k): v for k, v in records[-1]["spent"].items()}
    calls = [r for r in records if "eid" in r or "error" in r]
    answered: Counter[int] = Counter(e for r in calls for e in r.get("eid", []))
    row.succeeded = sum(1 for r in calls if "eid" in r)
    row.failed = sum(1 for r in calls if "error" in r)
    row.attempted = row.succeeded + row.failed + kills  # each kill interrupted one call
    CLIENTS[signer.address] = spent
    held, redeemed = settle(market, signer.address, graceful=graceful)
    money_row(row, price=PRICE, paid=spent, answered=dict(answered), redeemed=redeemed, held=held)
    row.seconds = time.monotonic() - started
    row.notes.update(kills=kills, over_book=over_book, in_flight=records[-1]["in_flight"],
                     errors=[r["error"] for r in calls if "error" in r][:3])
    record_row(row)
    assert not over_book, over_book
    assert row.failed == 0
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
    assert records[-1]["in_flight"] == 0


def test_client_sigkill_quick(market, model_hash, record_row) -> None:
    run_client_kill(market, model_hash, 1, record_row, "3 client SIGKILL (quick)", False)


@pytest.mark.chaos
def test_client_sigkill_long(market, model_hash, record_row) -> None:
    run_client_kill(market, model_hash, 10, record_row, "3 client SIGKILL (long)", True)


# ---- 4. load: a stream flood and an idle-connection flood against one node --------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def real_call(market: LocalMarket, signer, model_hash: bytes, node: str = "a") -> tuple[str, float]:
    """One paid call from a brand-new host (a new connection), and how long it took."""
    start = trio.current_time()
    async with open_host() as host:
        payer = RawPayer(market, host, signer)
        payer.cumulative = dict(REAL_CALLS.get(signer.address, {}))
        outcome = await payer.call(node, model_hash, timeout=30.0)
        REAL_CALLS[signer.address] = payer.cumulative
    return outcome, trio.current_time() - start


REAL_CALLS: dict[str, dict[int, int]] = {}


def run_load(market: LocalMarket, model_hash: bytes, hosts: int, per_host: int, idle: int, record_row,
             name: str) -> None:
    signer = market.new_account()
    market.chain(signer).deposit(DEPOSIT)
    node = market.nodes["a"]
    pid = node.process.popen.pid
    port = int(node.addrs[0].split("/tcp/")[1].split("/")[0])
    rss_before = rss_kib(pid)
    outcomes: Counter[str] = Counter()
    row = Row(name)
    started = time.monotonic()
    notes: dict = {}

    async def flood() -> None:
        release = trio.Event()
        answered = [0]
        total = hosts * per_host

        async def one(host, k: int) -> None:
            stream = None
            try:
                stream = await host.open_stream(node.peer_id, node.addrs, QUOTE)
                await write_frame(stream, encode_body(QuoteRequest(client=signer.address).to_header()))
                header, _ = decode_body(await read_frame(stream, 64 * 1024, timeout=60))
                outcomes["ok" if header["type"] == "quote" else header.get("code", header["type"])] += 1
            except Exception as exc:  # refused: counted, never fatal for the flood
                outcomes[f"refused {type(exc).__name__}"] += 1
            finally:
                answered[0] += 1
                if answered[0] == total:
                    release.set()
                await release.wait()  # every stream stays open until all have their answer
                if stream is not None:
                    with trio.move_on_after(5):
                        await stream.close()

        async with AsyncExitStack() as stack:
            hs = [await stack.enter_async_context(open_host()) for _ in range(hosts)]
            with trio.fail_after(300):
                async with trio.open_nursery() as nursery:
                    for h in hs:
                        for k in range(per_host):
                            nursery.start_soon(one, h, k)
        notes["rss_peak_during_kib"] = rss_kib(pid)

    async def idle_flood(source: str) -> tuple[str, float, int]:
        socks = []
        try:
            for _ in range(idle):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.bind((source, 0))
                with suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
                socks.append(s)
            await trio.sleep(0.5)
            # A real client from the flooding address itself is refused while the per-IP slots are taken,
            # until the node drops the idle sockets (handshake timeout): retry and measure the lockout.
            start = trio.current_time()
            tries = 0
            while True:
                tries += 1
                outcome, _ = await real_call(market, signer, model_hash)
                if outcome == "ok" or trio.current_time() - start > 30:
                    return outcome, trio.current_time() - start, tries
                await trio.sleep(0.5)
        finally:
            for s in socks:
                s.close()

    async def scenario() -> None:
        await flood()
        after_flood = await real_call(market, signer, model_hash)
        notes["real_call_after_stream_flood"] = [after_flood[0], round(after_flood[1], 2)]
        other_ip = await idle_flood("127.0.0.2")
        notes["real_call_during_idle_flood_other_ip"] = [other_ip[0], round(other_ip[1], 2), other_ip[2]]
        same_ip = await idle_flood("127.0.0.1")
        notes["real_call_during_idle_flood_same_ip"] = [same_ip[0], round(same_ip[1], 2), same_ip[2]]

    trio.run(scenario)
    rss_after = rss_kib(pid)
    row.attempted = sum(outcomes.values()) + 3
    reals = [notes[k][0] for k in notes if k.startswith("real_call")]
    row.succeeded = outcomes["ok"] + sum(1 for r in reals if r == "ok")
    row.failed = row.attempted - row.succeeded
    paid = REAL_CALLS[signer.address]
    CLIENTS[signer.address] = paid
    held, redeemed = settle(market, signer.address, graceful=False)
    answered = {eid: sum(1 for r in reals if r == "ok") for eid in paid}
    money_row(row, price=PRICE, paid=paid, answered=answered, redeemed=redeemed, held=held)
    row.seconds = time.monotonic() - started
    row.notes.update(streams=hosts * per_host, idle_sockets=idle, outcomes=dict(outcomes),
                     rss_before_kib=rss_before, rss_after_kib=rss_after, **notes)
    record_row(row)
    assert node.process.alive(), "the node died under load"
    assert rss_after - rss_before < 300 * 1024, row.notes
    assert set(outcomes) <= {"ok", "BUSY"} | {k for k in outcomes if k.startswith("refused")}, outcomes
    assert outcomes["ok"] >= min(per_host, 64) * hosts * 0.9 or outcomes["ok"] >= 64, outcomes
    assert all(r == "ok" for r in reals), notes
    assert notes["real_call_during_idle_flood_other_ip"][2] == 1, "an idle flood from another address locked out a client"
    assert row.lost_vouchers == 0 and row.double_payments == 0, row


def test_load_quick(market, model_hash, record_row) -> None:
    run_load(market, model_hash, hosts=3, per_host=67, idle=100, record_row=record_row, name="4 load 200 streams")


@pytest.mark.chaos
def test_load_long(market, model_hash, record_row) -> None:
    run_load(market, model_hash, hosts=5, per_host=200, idle=300, record_row=record_row, name="4 load 1000 streams")


# ---- 5. hostile input on a live node: garbage frames on every protocol -----------------------------------


def garbage(rng: random.Random, protocol: str) -> tuple[str, bytes]:
    """One hostile case: (kind, bytes to write)."""
    kind = rng.choice(["raw", "frame-random", "frame-short-header", "frame-json", "frame-wrong-type", "huge-length",
                       "zero-length", "many-frames", "truncated"])
    body = rng.randbytes(rng.randint(0, 300))
    if kind == "raw":
        return kind, body
    if kind == "frame-random":
        return kind, len(body).to_bytes(4, "big") + body
    if kind == "frame-short-header":
        return kind, (2).to_bytes(4, "big") + b"\x00\x09"
    if kind == "frame-json":
        fields = {"type": rng.choice(["quote", "infer", "model", "evidence", "result", "error", "x"]),
                  rng.choice(["client", "expert_id", "tensors", "voucher", "hash", "model_hash"]):
                      rng.choice([None, -1, 2**300, "0x", "0x" + "11" * 32, [1, 2], {"a": []}, "x" * 1000])}
        raw = json.dumps(fields).encode()
        b = len(raw).to_bytes(HEADER_LENGTH_SIZE, "big") + raw + rng.randbytes(rng.randint(0, 64))
        return kind, len(b).to_bytes(4, "big") + b
    if kind == "frame-wrong-type":
        b = encode_body({"type": "result"})
        return kind, len(b).to_bytes(4, "big") + b
    if kind == "huge-length":
        return kind, (2**32 - 1).to_bytes(4, "big") + body
    if kind == "zero-length":
        return kind, b"\x00\x00\x00\x00"
    if kind == "many-frames":
        b = encode_body({"type": "quote", "client": "0x" + "11" * 20})
        return kind, (len(b).to_bytes(4, "big") + b) * 20
    return kind, (1000).to_bytes(4, "big") + body[:10]  # truncated: says 1000 bytes, sends fewer


def run_live_fuzz(market: LocalMarket, model_hash: bytes, cases: int, record_row, name: str) -> None:
    signer = market.new_account()
    market.chain(signer).deposit(DEPOSIT)
    node = market.nodes["b"]
    rng = random.Random(99)
    outcomes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    row = Row(name)
    started = time.monotonic()

    async def one(host, protocol: str, limit: trio.Semaphore) -> None:
        kind, data = garbage(rng, protocol)
        async with limit:
            try:
                stream = await host.open_stream(node.peer_id, node.addrs, protocol)
            except MarketError as exc:
                outcome = f"open failed {type(exc).__name__}"
            else:
                try:
                    await stream.write(data)
                    header, _ = decode_body(await read_frame(stream, 16 * 1024 * 1024, timeout=40))
                    outcome = "answered " + str(header.get("code", header["type"]))
                except MarketError as exc:
                    text = f"{type(exc).__name__}"
                    outcome = "hung" if "Timeout" in text else "closed"
                except Exception as exc:
                    outcome = f"closed {type(exc).__name__}"
                finally:
                    with trio.move_on_after(5):
                        await stream.reset()
        outcomes[outcome.split(" ")[0]] += 1
        by_kind.setdefault(f"{protocol.split('/')[2]}:{kind}", Counter())[outcome] += 1

    async def scenario() -> str:
        async with open_host() as host:
            limit = trio.Semaphore(40)
            async with trio.open_nursery() as nursery:
                for i in range(cases):
                    nursery.start_soon(one, host, (QUOTE, INFER, MODEL)[i % 3], limit)
        outcome, _ = await real_call(market, signer, model_hash, node="b")
        return outcome

    after = trio.run(scenario)
    row.attempted = cases + 1
    row.succeeded = outcomes["answered"] + outcomes["closed"] + (after == "ok")
    row.failed = row.attempted - row.succeeded
    paid = REAL_CALLS[signer.address]
    CLIENTS[signer.address] = paid
    held, redeemed = settle(market, signer.address, graceful=False)
    money_row(row, price=PRICE, paid=paid, answered={eid: int(after == "ok") for eid in paid}, redeemed=redeemed,
              held=held)
    row.seconds = time.monotonic() - started
    row.notes.update(outcomes=dict(outcomes), real_call_after=after,
                     by_kind={k: dict(v) for k, v in sorted(by_kind.items())})
    record_row(row)
    assert node.process.alive(), "the node died on hostile input"
    assert outcomes["hung"] == 0 and outcomes["open"] == 0, row.notes
    assert after == "ok"
    assert row.lost_vouchers == 0 and row.double_payments == 0, row


def test_live_garbage_quick(market, model_hash, record_row) -> None:
    run_live_fuzz(market, model_hash, 90, record_row, "5 live garbage frames")


@pytest.mark.chaos
def test_live_garbage_long(market, model_hash, record_row) -> None:
    run_live_fuzz(market, model_hash, 3000, record_row, "5 live garbage frames (long)")


# ---- last: both nodes stop gracefully; every client's money is checked once more ------------------------


def test_graceful_stop_redeems_everything(market, record_row) -> None:
    row = Row("graceful stop: all clients")
    started = time.monotonic()
    for name in market.nodes:
        market.stop_node(name)
    chain = market.chain()
    paid_all: dict[int, int] = {}
    redeemed_all: dict[int, int] = {}
    held_all: dict[int, int] = {}
    for client, paid in CLIENTS.items():
        held = ledger_holdings(market, client)
        redeemed = {eid: chain.redeemed(client, eid) for eid in held}
        for eid in held:
            key = hash((client, eid))
            paid_all[key], redeemed_all[key], held_all[key] = paid.get(eid, 0), redeemed[eid], held[eid]
    money_row(row, price=PRICE, paid=paid_all, answered={}, redeemed=redeemed_all, held=held_all)
    row.seconds = time.monotonic() - started
    row.notes["clients"] = len(CLIENTS)
    record_row(row)
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
