"""Scenario 8: a flaky chain RPC. The nodes and the client reach anvil only through rpc_fault_proxy.py.

One LocalMarket for the module: anvil, two `moe expert serve` processes serving the same digits model
(redeeming every 0.5 s, batch age 1 s) whose node.toml names a second deployment file, identical but for
its rpc_url: the proxy's. The client SDK (in this process) opens that file too. With the faults on, the
client deposits and tops up through the proxy (one attempt per amount, each amount distinct) and makes
paid calls; the nodes check deposits and redeem through it. Then, faults still on, the test waits until the
nodes have redeemed what their ledgers hold, turns the faults off, and checks against anvil directly:
paid = redeemed, no lost voucher, no double payment, both node processes alive (and no redemption round
that died of an unexpected exception), and each deposit attempt made once or, after an error, at most
once and only if the error said the transaction may have gone out.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from market_harness import digits_bundle, ledger_holdings
from reliability_rows import Row, money_row
from rpc_fault_proxy import FaultPlan, RpcFaultProxy

from market.chain.contracts import MarketChain
from market.chain.deployment import save_deployment
from market.client import Client, ClientConfig
from market.errors import MarketError
from market.models.digits import load_digits_gate
from node.app import NodeConfig
from node.localnet import LocalMarket, NodeSpec
from node.redeemer import RedeemPolicy

pytestmark = pytest.mark.timeout(900)

PRICE = 10**12
DEPOSIT = 10**16
SEED = 8
# A quarter of the other requests faulted (a third of all, sends counted); a send loses its answer 3 times in 10.
# Slow answers take up to 1.5 s: past the client's RPC timeout (1 s; web3 then sends the request again), not
# past the nodes' (30 s) nor their 3 s wait for a deposit check.
QUICK = FaultPlan(error_p=0.08, reset_p=0.06, lost_p=0.05, slow_p=0.06, send_lost_p=0.3, send_slow_p=0.1,
                  delay_s=(0.05, 1.5))
LONG = FaultPlan(error_p=0.12, reset_p=0.1, lost_p=0.08, slow_p=0.1, send_lost_p=0.4, send_slow_p=0.15,
                 delay_s=(0.05, 1.5))
SENT_MAYBE = "before sending it again"  # what an error says when the transaction may have gone out


@dataclasses.dataclass
class FlakyMarket:
    market: LocalMarket
    proxy: RpcFaultProxy
    deployment: Path  # the deployment file whose rpc_url is the proxy's
    model_hash: bytes


@pytest.fixture(scope="module")
def flaky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlakyMarket]:
    bundle = digits_bundle()
    m = LocalMarket(tmp_path_factory.mktemp("reliability-rpc"))
    m.start()
    proxy = RpcFaultProxy(m.devnet.rpc_url, QUICK, seed=SEED, enabled=False).start()
    try:
        path = m.workdir / "deployment-flaky.json"
        save_deployment(path, dataclasses.replace(m.devnet.deployment, rpc_url=proxy.url), m.params.as_dict())
        for name in ("a", "b"):
            node = m.add_node(NodeSpec(name, (bundle.expert_dir(0),), price=PRICE), start=False)
            redeem = RedeemPolicy(threshold_wei=10**18, max_age_s=1.0, max_batch=500, interval_s=0.5,
                                  max_backoff_s=2.0)
            dataclasses.replace(NodeConfig.load(node.home), deployment=path, redeem=redeem).save()
        for name in ("a", "b"):
            m.start_node(name, wait=False)
        for name in ("a", "b"):
            m.wait_ready(name)
        _, hashes = load_digits_gate(bundle.root)
        yield FlakyMarket(m, proxy, path, hashes[0])
    finally:
        proxy.enabled = False  # the nodes' last redemption on the way out goes through
        m.stop()
        proxy.stop()




def wait_redeemed(market: LocalMarket, client: str, seconds: float) -> tuple[dict[int, int], dict[int, int], bool]:
    """(held, redeemed, equal) once the chain (read directly) has redeemed what the ledgers hold, or at the end."""
    chain = market.chain()
    deadline = time.monotonic() + seconds
    while True:
        held = ledger_holdings(market, client)
        redeemed = {eid: chain.redeemed(client, eid) for eid in held}
        if redeemed == held or time.monotonic() > deadline:
            return held, redeemed, redeemed == held
        time.sleep(0.3)


def node_log_count(market: LocalMarket, text: str) -> int:
    return sum(n.process.log.read_text(errors="replace").count(text) for n in market.nodes.values() if n.process)


def deposited(chain: MarketChain, client: str) -> list[int]:
    """Every Deposited amount for `client`, read from anvil directly."""
    logs = chain.escrow.events.Deposited().get_logs(from_block=0, argument_filters={"client": client})
    return [int(ev["args"]["amount"]) for ev in logs]


def deposit_as_reported(outcome: str, made: int) -> bool:
    """A deposit attempt is right when made once and reported "ok", or not made and reported as an error,
    or made once after an error that said the transaction may have gone out. Never made twice."""
    if outcome == "ok":
        return made == 1
    return made == 0 or (made == 1 and SENT_MAYBE in outcome)


def run_flaky_rpc(flaky: FlakyMarket, plan: FaultPlan, calls: int, topups: int, record_row, name: str) -> None:
    market, proxy = flaky.market, flaky.proxy
    direct = market.chain()
    account = market.new_account()
    config = ClientConfig(deployment=flaky.deployment, account=account, state_dir=market.workdir / "clients" / name,
                          deadline_s=60.0, call_timeout_s=10.0, rpc_timeout_s=1.0, tx_timeout_s=30.0, seed=SEED)
    row = Row(name)
    started = time.monotonic()
    before = Counter(proxy.counts)
    failed_rounds_before = node_log_count(market, "redemption failed")
    attempts: list[tuple[int, str]] = []  # (amount, "ok" or the error) per deposit attempt
    answered: Counter[int] = Counter()
    errors: list[str] = []
    proxy.plan = plan
    proxy.enabled = True
    try:
        with Client(config) as client:

            def deposit(amount: int) -> None:
                try:
                    client.deposit(amount)
                    attempts.append((amount, "ok"))
                except MarketError as exc:
                    attempts.append((amount, f"{type(exc).__name__}: {exc}"))

            while direct.balance_of(account.address) == 0 and len(attempts) < 10:  # as a careful user
                deposit(DEPOSIT + len(attempts))
            every = max(calls // (topups + 1), 1)
            for i in range(calls):
                if i and i % every == 0:
                    deposit(10**15 + i)  # a top-up while calls go on
                row.attempted += 1
                try:
                    result = client.infer(flaky.model_hash, {"x": torch.rand(3, 64)}, redundancy=1)
                    row.succeeded += 1
                    answered.update(list(result.receipts))
                except MarketError as exc:
                    row.failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
            # Faults still on: the nodes must redeem everything through the flaky RPC.
            _, _, redeemed_while_flaky = wait_redeemed(market, account.address, 60)
            faults = {k: v - before[k] for k, v in proxy.counts.items() if v - before[k]}
            proxy.enabled = False
            balance = client.balance()
    finally:
        proxy.enabled = False
    paid = dict(balance.spent_per_expert)
    held, redeemed, _ = wait_redeemed(market, account.address, 30)
    money_row(row, price=PRICE, paid=paid, answered=dict(answered), redeemed=redeemed, held=held)
    row.seconds = time.monotonic() - started
    # Each attempt's amount is distinct: the chain's Deposited events say how often each was made.
    on_chain = Counter(deposited(direct, account.address))
    made = {amount: on_chain[amount] for amount, _ in attempts}
    wrong = [(a, o, made[a]) for a, o in attempts if not deposit_as_reported(o, made[a])]
    escrow = direct.escrow_account(account.address)
    intended = sum(a for a, o in attempts if made[a] == 1 and deposit_as_reported(o, 1))
    crashed_rounds = node_log_count(market, "redemption round failed")
    requests = faults.pop("requests", 0)
    kinds = {k: v for k, v in faults.items() if " " not in k}
    row.notes.update(
        requests=requests, faulted=f"{sum(kinds.values()) / max(requests, 1):.0%}", faults=kinds,
        faults_on_send={k.split()[0]: v for k, v in faults.items() if k.endswith("eth_sendRawTransaction")},
        deposits=[(a, o[:160]) for a, o in attempts], redeemed_while_faults_on=redeemed_while_flaky,
        redemption_rounds_failed=node_log_count(market, "redemption failed") - failed_rounds_before,
        answered={str(k): v for k, v in answered.items()}, errors=errors[:3], in_flight_after=balance.in_flight,
        crashed_redemption_rounds=crashed_rounds, paid_for_unanswered_calls=row.paid_wei - row.succeeded * PRICE,
    )
    record_row(row)
    assert all(n.process and n.process.alive() for n in market.nodes.values()), "a node process died"
    assert crashed_rounds == 0, "a redemption round died of an unexpected exception (see the node logs)"
    assert not wrong, f"deposit attempts made twice, or not as reported: {wrong}"
    total = sum(amount * n for amount, n in on_chain.items())
    assert escrow.balance + sum(redeemed.values()) == intended == total, (escrow, intended, on_chain)
    assert row.lost_vouchers == 0 and row.double_payments == 0, row
    assert row.paid_wei == row.redeemed_wei == sum(held.values()), row
    assert redeemed_while_flaky, "the nodes did not redeem everything while the faults were on"
    # A call may fail only where the chain did not answer (the client's deposit check after a top-up, or
    # both nodes' check of a client they never saw) through all of web3's retries: nothing paid for it.
    assert all("chain" in e.lower() or "rpc" in e.lower() for e in errors), errors
    assert row.failed <= max(1, calls // 20), errors
    assert faults.get("lost_answer", 0) > 0, "no answer was lost: the scenario tested nothing"


def test_flaky_rpc_quick(flaky, record_row) -> None:
    run_flaky_rpc(flaky, QUICK, calls=30, topups=2, record_row=record_row, name="8 flaky RPC (quick)")


@pytest.mark.chaos
def test_flaky_rpc_long(flaky, record_row) -> None:
    run_flaky_rpc(flaky, LONG, calls=300, topups=10, record_row=record_row, name="8 flaky RPC (long)")
