"""The client SDK against real expert node processes, a real chain and real libp2p.

What the unit tests take from fakes is checked here for real: the node accepts the client's vouchers and
signs receipts the contract accepts; a client that lost its voucher book resumes from the node's amount
(VOUCHER_TOO_LOW with `cumulative`, and the quote); a minority answer becomes an on-chain dispute whose
evidence verifiers can fetch from the client over libp2p; deposits and withdrawals move real wei.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
import trio

from market.chain.eip712 import receipt_digest, recover_receipt_signer
from market.client import Client
from market.evidence import fetch_evidence
from market.models.digits import DigitsBundle, load_digits_split
from market.protocol.hashing import tensors_hash
from market.transport import open_host
from market.types import DisputeStatus
from node.localnet import LocalMarket

pytestmark = pytest.mark.timeout(300)

DEPOSIT = 10**16


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return load_digits_split(0).x_test[:12]


def node_experts(market: LocalMarket) -> dict[str, int]:
    return {name: node.expert_ids[0] for name, node in market.nodes.items()}


def test_a_paid_checked_call_with_a_receipt_the_contract_accepts(
    market: LocalMarket, open_client: Any, bundle: DigitsBundle, x: torch.Tensor, prices: dict[str, int]
) -> None:
    client: Client = open_client()
    client.deposit(DEPOSIT)
    model = bundle.model_hashes[0]
    result = client.infer(model, {"x": x})
    expert_a = node_experts(market)["a"]
    assert result.agreeing == (expert_a,)  # the cheapest honest expert (greedy gate)
    with torch.no_grad():
        assert torch.allclose(result.output(), bundle.model.experts[0](x), atol=1e-5)
    signed = result.receipts[expert_a]
    chain = market.chain()
    info = chain.get_expert(expert_a)
    deployment = chain.deployment
    assert recover_receipt_signer(signed, deployment.chain_id, deployment.disputes) == info.signer
    assert chain.onchain_receipt_digest(signed.receipt) == receipt_digest(
        signed.receipt, deployment.chain_id, deployment.disputes
    )
    assert signed.receipt.input_hash == tensors_hash({"x": x})
    balance = client.balance()
    assert result.paid == prices["a"] == balance.spent == balance.spent_per_expert[expert_a]
    assert balance.escrow == DEPOSIT


def test_a_client_that_lost_its_book_resumes_from_the_node(
    market: LocalMarket, open_client: Any, bundle: DigitsBundle, x: torch.Tensor, prices: dict[str, int]
) -> None:
    account = market.new_account()
    model = bundle.model_hashes[0]
    expert_a = node_experts(market)["a"]
    first = open_client(account, name="first")
    first.deposit(DEPOSIT)
    for _ in range(3):
        first.infer(model, {"x": x})
    first.close()
    # Same key, empty state directory: the first voucher is too low; the node says what it holds.
    second = open_client(account, name="second")
    result = second.infer(model, {"x": x})
    assert result.agreeing == (expert_a,) and result.failures == ()
    assert second.core.wallet.cumulative(expert_a) == 4 * prices["a"]

    # An unknown outcome (a crash mid-call, say): the next call resyncs from the node's quote first.
    wallet = second.core.wallet
    amount = wallet.reserve(expert_a, prices["a"])
    wallet.release(expert_a, amount, kept=True)
    assert wallet.needs_resync(expert_a)
    second.infer(model, {"x": x})
    assert not wallet.needs_resync(expert_a)
    # The book counted the unknown call as paid (at most one price lost, by design: the node might hold it);
    # the node's amount is lower, so the next voucher builds on the book's: no call is refused or paid twice.
    assert wallet.cumulative(expert_a) == 6 * prices["a"]
    node_view = second.resync([expert_a])
    assert node_view == {expert_a: 6 * prices["a"]}


def test_concurrent_calls_to_one_expert_pay_exactly_their_price(
    market: LocalMarket, open_client: Any, bundle: DigitsBundle, x: torch.Tensor, prices: dict[str, int]
) -> None:
    # Calls in flight at once travel on separate streams, so their vouchers reach the node in any order. Under
    # the node's older rule (each voucher above the last) a late one was refused and the client's resend paid
    # one price more: 17 of 400 calls with 4 threads, 121 of 800 with 16, on this machine.
    client: Client = open_client()
    client.deposit(DEPOSIT)
    expert_a = node_experts(market)["a"]
    answered: list[int] = []

    def calls() -> None:
        for _ in range(12):
            answered.append(client.infer(bundle.model_hashes[0], {"x": x}, max_price=prices["a"]).paid)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answered == [prices["a"]] * 96
    assert client.balance().spent_per_expert == {expert_a: 96 * prices["a"]}
    assert client.resync([expert_a]) == {expert_a: 96 * prices["a"]}  # what the node holds: exactly the calls


def test_a_cheater_is_outvoted_disputed_and_its_evidence_served(
    market: LocalMarket, open_client: Any, bundle: DigitsBundle, x: torch.Tensor
) -> None:
    experts = node_experts(market)
    client: Client = open_client(auto_dispute=True)
    client.deposit(DEPOSIT)
    result = client.infer(bundle.model_hashes[0], {"x": x}, redundancy=3)
    assert set(result.agreeing) == {experts["a"], experts["b"]}
    with torch.no_grad():
        assert torch.allclose(result.output(), bundle.model.experts[0](x), atol=1e-5)
    (item,) = result.evidence
    assert item.expert_id == experts["c"] and item.reason == "minority"
    (dispute_id,) = result.disputes
    chain = market.chain()
    dispute = chain.get_dispute(dispute_id)
    assert dispute.status == DisputeStatus.OPEN and dispute.expert_id == experts["c"]
    assert dispute.request_id == result.request_id and dispute.output_hash == item.output_hash
    (opened,) = [e for e in chain.disputes_opened() if e.dispute_id == dispute_id]
    assert opened.evidence_endpoint == client.evidence_endpoint and "/p2p/" in opened.evidence_endpoint

    # A verifier fetches the input and the claimed output from the client by their hashes.
    async def fetch() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        async with open_host() as verifier:
            return (
                await fetch_evidence(verifier, opened.evidence_endpoint, dispute.input_hash, timeout=20),
                await fetch_evidence(verifier, opened.evidence_endpoint, dispute.output_hash, timeout=20),
            )

    inputs, claimed = trio.run(fetch)
    assert torch.equal(inputs["x"], x)
    assert torch.equal(claimed["logits"], item.outputs["logits"])

    # Nobody votes on this devnet: once the periods are over the dispute resolves without a quorum.
    records = client.disputes()
    assert [(r.dispute_id, r.status) for r in records] == [(dispute_id, DisputeStatus.OPEN)]
    chain.increase_time(dispute.reveal_ends - chain.block_timestamp() + 1)
    record = client.wait_dispute(dispute_id, timeout=60, poll_s=0.2)
    assert record.status == DisputeStatus.NO_QUORUM
    assert [r.status for r in client.disputes()] == [DisputeStatus.NO_QUORUM]


def test_deposit_request_withdraw_and_withdraw(market: LocalMarket, open_client: Any) -> None:
    client: Client = open_client()
    client.deposit(DEPOSIT)
    at = client.request_withdraw(DEPOSIT // 4)
    balance = client.balance()
    assert balance.withdraw_pending == DEPOSIT // 4 and balance.withdrawable_at == at
    assert balance.available == DEPOSIT - DEPOSIT // 4
    chain = market.chain()
    chain.increase_time(at - chain.block_timestamp() + 1)
    assert client.withdraw() == DEPOSIT // 4
    balance = client.balance()
    assert balance.escrow == DEPOSIT - DEPOSIT // 4 and balance.withdraw_pending == 0
