"""End to end: the client SDK's remote mixture of experts against a real market.

Everything is real: anvil with the contracts, expert node PROCESSES (`moe expert serve`, node.localnet)
serving the four digits experts over libp2p, and the SDK (`market.Client` + `RemoteMixtureOfExperts`) in
this process, paying every call with vouchers and checking every answer. The client-issue done-means:

    (a) three honest nodes: the remote mixture's predictions on the whole digits test set (360 examples)
        equal the local model's; every call is paid; the vouchers the nodes redeem add up to exactly what
        the client's book says it spent
    (b) redundancy 3 with one node perturbing its outputs: every result is right, and the cheating node's
        signed receipts are the evidence
    (c) a node SIGKILLed in the middle of a run: no call fails (failover), and nobody is owed more than
        the calls lost with it
    (d) bad input, max price below every expert, no expert registered, deposit exhausted: a clear
        MarketError each, and nothing paid

The test set goes through the market in chunks (one call per routed expert slot per chunk), which keeps
the run short on two shared cores. No timing is asserted.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from market_harness import digits_bundle

from market.client import Client, ClientConfig
from market.errors import InsufficientDepositError, MarketInputError, NoExpertError
from market.gate import GatePolicy
from market.models.digits import DigitsBundle, digits_local_predictions, load_digits_gate, load_digits_split
from market.moe import RemoteMixtureOfExperts
from node.localnet import PASSWORD, LocalMarket, NodeSpec

pytestmark = pytest.mark.timeout(600)

PRICE = 10**12
DEPOSIT = 10**16


@pytest.fixture(scope="module")
def bundle() -> DigitsBundle:
    return digits_bundle()


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, bundle: DigitsBundle) -> Iterator[LocalMarket]:
    workdir = tmp_path_factory.mktemp("client-e2e")
    market = LocalMarket(workdir)
    market.start()
    try:
        dirs = tuple(bundle.expert_dir(i) for i in range(4))
        for name in ("a", "b", "c"):
            market.add_node(NodeSpec(name, dirs, price=PRICE), start=False)
        for name in ("a", "b", "c"):  # start all three at once, then wait for each
            market.start_node(name, wait=False)
        for name in ("a", "b", "c"):
            market.wait_ready(name)
        yield market
    finally:
        market.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def split() -> Any:
    return load_digits_split(0)


def open_client(market: LocalMarket, name: str, deposit: int = DEPOSIT, **config: Any) -> Client:
    assert market.deployment_path is not None
    account = market.new_account()
    settings: dict[str, Any] = dict(
        deployment=market.deployment_path,
        account=account,
        state_dir=market.workdir / "clients" / name,
        deadline_s=60.0,
        call_timeout_s=20.0,
        gate=GatePolicy(seed=7),
        seed=7,
    )
    settings.update(config)
    client = Client(ClientConfig(**settings))
    if deposit:
        client.deposit(deposit)
    return client


def remote_mixture(bundle: DigitsBundle, client: Client, **kw: Any) -> RemoteMixtureOfExperts:
    gate, hashes = load_digits_gate(bundle.root)
    return RemoteMixtureOfExperts(gate, hashes, client, k=2, **kw)


def redeem_all(market: LocalMarket) -> None:
    """What each node's `moe expert redeem` does, run here: every voucher in its ledger to the chain."""
    from market.chain.contracts import MarketChain
    from node.app import LEDGER_FILE, NodeConfig, load_or_create_signer
    from node.ledger import VoucherLedger
    from node.redeemer import Redeemer

    assert market.devnet is not None and market.devnet.deployment is not None
    deployment = market.devnet.deployment
    for node in market.nodes.values():
        config = NodeConfig.load(node.home)
        chain = MarketChain(deployment, load_or_create_signer(node.home, PASSWORD))
        with VoucherLedger(node.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
            redeemer = Redeemer(ledger, chain, [e.expert_id for e in config.experts], config.redeem)
            redeemer.sync_from_chain()
            report = redeemer.redeem_once(force=True)
            assert report.errors == (), report.errors


def test_a_remote_mixture_predicts_like_the_local_model_and_pays_exactly(
    market: LocalMarket, bundle: DigitsBundle, split: Any
) -> None:
    local = digits_local_predictions(bundle.model, split.x_test)
    with open_client(market, "a") as client:
        moe = remote_mixture(bundle, client)
        logits = torch.cat([moe(chunk) for chunk in split.x_test.split(90)])
        assert logits.shape == (360, 10)
        assert torch.equal(logits.argmax(dim=1), local.labels)
        assert torch.allclose(logits, local.logits, atol=1e-4, rtol=1e-3)
        # Every call was paid, at the registered price, and the book agrees.
        balance = client.balance()
        assert moe.calls >= 16  # 4 chunks x the routed slots
        assert moe.paid == moe.calls * PRICE == balance.spent == client.paid
        assert balance.in_flight == 0
        spent = dict(balance.spent_per_expert)
        address = client.address

    redeem_all(market)
    chain = market.chain()
    redeemed = {eid: chain.redeemed(address, eid) for eid in spent}
    assert redeemed == spent
    assert sum(redeemed.values()) == moe.paid


def test_d_refusals_are_clear_and_cost_nothing(market: LocalMarket, bundle: DigitsBundle, split: Any) -> None:
    _, hashes = load_digits_gate(bundle.root)
    x = split.x_test[:8]
    with open_client(market, "d", deposit=PRICE) as client:
        escrow = client.balance().escrow

        def nothing_paid() -> None:
            balance = client.balance()
            assert balance.spent == 0 and balance.escrow == escrow

        with pytest.raises(MarketInputError, match=r"shape \[8, 63\].*x: float32\[N, 64\]"):
            client.infer(hashes[0], {"x": x[:, :63]})
        nothing_paid()
        with pytest.raises(NoExpertError, match=rf"over max_price {PRICE - 1} wei; the cheapest asks {PRICE} wei"):
            client.infer(hashes[0], {"x": x}, max_price=PRICE - 1)
        nothing_paid()
        with pytest.raises(NoExpertError, match="no expert is registered"):
            client.infer(b"\x5a" * 32, {"x": x})
        nothing_paid()
        with pytest.raises(InsufficientDepositError, match="deposit"):
            client.infer(hashes[0], {"x": x}, redundancy=2)  # two prices; one is deposited
        nothing_paid()
        assert client.infer(hashes[0], {"x": x}).paid == PRICE  # exactly the deposit
        with pytest.raises(InsufficientDepositError, match="deposit at least"):
            client.infer(hashes[0], {"x": x})
        assert client.balance().spent == PRICE


def test_c_a_node_killed_mid_run_fails_no_call(market: LocalMarket, bundle: DigitsBundle, split: Any) -> None:
    from node.app import LEDGER_FILE
    from node.ledger import VoucherLedger

    local = digits_local_predictions(bundle.model, split.x_test)
    chunks = list(split.x_test.split(30))
    with open_client(market, "c") as client:
        moe = remote_mixture(bundle, client)
        # SIGKILL node c from another thread while forward 3 runs (calls may be in flight to it), and
        # before forward 6 starts at the latest: the kill lands in the middle of the run, whatever the speed.
        killer = threading.Thread(target=market.kill_node, args=("c",))
        outputs = []
        try:
            for i, chunk in enumerate(chunks):
                if i == 3:
                    killer.start()
                if i == 6:
                    killer.join(timeout=60)
                    assert not killer.is_alive() and not market.nodes["c"].process.alive()  # type: ignore[union-attr]
                outputs.append(moe(chunk))
        finally:
            if killer.ident is not None:  # started: never leave the test with the thread running
                killer.join(timeout=60)
        logits = torch.cat(outputs)
        assert torch.equal(logits.argmax(dim=1), local.labels)
        balance = client.balance()
        address = client.address
        stats = client.core.reputation
        failed = sum(stats.stats(eid).failures + stats.stats(eid).timeouts for eid in market.nodes["c"].expert_ids)
    # Money after the kill: the dead node holds at most what the client counted (never more), and the client
    # counted at most one price more per call to the node that failed (its answer lost with the node).
    killed = market.nodes["c"]
    assert market.devnet is not None and market.devnet.deployment is not None
    deployment = market.devnet.deployment
    with VoucherLedger(killed.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        held = ledger.cumulative_for(address)
    for eid in killed.expert_ids:
        assert held.get(eid, 0) <= balance.spent_per_expert.get(eid, 0)
    lost = sum(balance.spent_per_expert.get(eid, 0) - held.get(eid, 0) for eid in killed.expert_ids)
    assert 0 <= lost <= failed * PRICE


def test_b_redundancy_three_outvotes_a_cheating_node(market: LocalMarket, bundle: DigitsBundle, split: Any) -> None:
    # Three operators alive: a, b and the cheater d (c is dead after test c; make sure of it here).
    market.kill_node("c")
    dirs = tuple(bundle.expert_dir(i) for i in range(4))
    cheat = market.add_node(NodeSpec("d", dirs, price=PRICE, behaviour="perturb"))
    local = digits_local_predictions(bundle.model, split.x_test)
    with open_client(market, "b") as client:
        moe = remote_mixture(bundle, client, redundancy=3)
        logits = torch.cat([moe(chunk) for chunk in split.x_test.split(120)])
        assert torch.equal(logits.argmax(dim=1), local.labels)
        assert torch.allclose(logits, local.logits, atol=1e-4, rtol=1e-3)
        evidence = client.evidence()
        balance = client.balance()
    # Every call had the cheater in its set (the only third operator alive): one evidence item per call,
    # each the cheater's signed receipt, its tensors kept for a dispute.
    assert len(evidence) == moe.calls
    assert {e.expert_id for e in evidence} <= set(cheat.expert_ids)
    assert all(e.reason == "minority" and e.receipt.receipt.expert_id == e.expert_id for e in evidence)
    assert all(e.outputs and not torch.allclose(e.outputs["logits"], torch.zeros(1)) for e in evidence)
    assert balance.spent == moe.paid

