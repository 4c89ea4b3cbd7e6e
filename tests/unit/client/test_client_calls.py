"""The paid call around fake nodes and a fake chain: payments, failover, voting, audits, evidence, disputes.

Each test drives a real AsyncClient (real voucher book, reputation book, gate, voting, receipt checks,
EIP-712 signatures); only the network and the chain are fakes (client_fakes.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from client_fakes import EVIDENCE_ENDPOINT, PRICE, WEIGHTS, Market, toy_manifest

from market.audit import AuditPolicy
from market.client import AsyncClient
from market.errors import (
    InsufficientDepositError,
    MarketError,
    MarketInputError,
    NoExpertError,
    SelectionError,
    VerificationError,
)
from market.types import DisputeStatus

X = torch.arange(8, dtype=torch.float32).reshape(2, 4)
EXPECTED = X @ WEIGHTS


def spent(client: AsyncClient) -> int:
    return client.wallet.spent()


def test_one_expert_answers_is_checked_and_paid(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X})
        return result, spent(client), client.wallet.settled(node.info.expert_id)

    result, total, settled = with_client(body)
    assert torch.allclose(result.outputs["y"], EXPECTED)
    assert result.agreeing == (node.info.expert_id,)
    assert set(result.receipts) == {node.info.expert_id}
    assert result.receipts[node.info.expert_id].receipt.price == PRICE
    assert result.paid == PRICE and total == PRICE and settled == PRICE
    assert node.held  # the node holds the voucher the client paid with
    assert result.evidence == () and result.failures == ()


def test_consecutive_calls_sign_increasing_cumulative_amounts(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> int:
        for _ in range(5):
            await client.infer(market.model_hash, {"x": X})
        return spent(client)

    assert with_client(body) == 5 * PRICE
    amounts = [r.voucher.voucher.cumulative_amount for r in node.requests]
    assert amounts == [PRICE * i for i in range(1, 6)]


def test_concurrent_calls_to_one_expert_all_succeed(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> tuple[int, int]:
        results = await client.call_many([(market.model_hash, {"x": X}) for _ in range(12)])
        assert all(torch.allclose(r.outputs["y"], EXPECTED) for r in results)
        return spent(client), len(results)

    total, n = with_client(body)
    assert n == 12 and total == 12 * PRICE and node.served == 12


def test_unreachable_node_fails_over_without_paying_it(market: Market, with_client: Any) -> None:
    dead = market.add_expert(behaviour="down", price=PRICE)
    alive = market.add_expert(price=2 * PRICE)  # pricier: the gate prefers the dead one first

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X})
        return result, client.wallet.spent_per_expert()

    result, per_expert = with_client(body)
    assert result.agreeing == (alive.info.expert_id,)
    assert [f.kind for f in result.failures] == ["transport"]
    assert per_expert == {alive.info.expert_id: 2 * PRICE}  # nothing signed for the unreachable node
    assert dead.received == 0


def test_a_dead_node_is_skipped_for_all_its_experts(market: Market, with_client: Any) -> None:
    dead = market.add_expert(behaviour="down", price=PRICE)
    sibling = market.add_expert(behaviour="down", price=2 * PRICE, node_key=dead.info.node_key, operator=5)
    alive = market.add_expert(price=3 * PRICE)

    async def body(client: AsyncClient) -> Any:
        first = await client.infer(market.model_hash, {"x": X})
        second = await client.infer(market.model_hash, {"x": X})
        return first, second

    first, second = with_client(body)
    assert first.agreeing == second.agreeing == (alive.info.expert_id,)
    # The sibling expert on the same dead node is skipped without a dial; later calls avoid the node.
    assert dead.connects == 1 and sibling.connects == 0
    assert [f.expert_id for f in first.failures] == [dead.info.expert_id, sibling.info.expert_id]
    assert second.failures == ()


def test_lost_answer_counts_as_paid_marks_resync_and_fails_over(market: Market, with_client: Any) -> None:
    flaky = market.add_expert(behaviour="timeout", price=PRICE)
    good = market.add_expert(price=2 * PRICE)

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X})
        needs = client.wallet.needs_resync(flaky.info.expert_id)
        return result, needs, client.wallet.spent_per_expert()

    result, needs, per_expert = with_client(body)
    assert result.agreeing == (good.info.expert_id,)
    assert result.failures[0].kind == "timeout"
    # The node kept the voucher (its answer was lost): the book counts it, at most one price, and resyncs.
    assert per_expert == {flaky.info.expert_id: PRICE, good.info.expert_id: 2 * PRICE}
    assert result.paid == 3 * PRICE
    assert needs
    assert flaky.held == {flaky.requests[0].voucher.voucher.client: PRICE}


def test_error_answer_is_not_charged_and_fails_over(market: Market, with_client: Any) -> None:
    broken = market.add_expert(behaviour="error:INTERNAL", price=PRICE)
    good = market.add_expert(price=2 * PRICE)

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X})
        return result, client.wallet.spent_per_expert(), client.reputation.stats(broken.info.expert_id)

    result, per_expert, stats = with_client(body)
    assert result.agreeing == (good.info.expert_id,)
    assert per_expert == {good.info.expert_id: 2 * PRICE}
    assert stats.failures == 1 and stats.successes == 0


def test_voucher_too_low_resyncs_from_the_node_and_retries_once(market: Market, with_client: Any) -> None:
    node = market.add_expert(behaviour="too_low_once")

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X})
        return result, client.wallet.cumulative(node.info.expert_id)

    result, cumulative = with_client(body)
    assert result.agreeing == (node.info.expert_id,)
    assert cumulative == 6 * PRICE  # the node's 5 prices, plus this call
    assert [r.voucher.voucher.cumulative_amount for r in node.requests] == [PRICE, 6 * PRICE]


def test_voucher_too_low_again_and_again_resends_while_the_node_moves_on(market: Market, with_client: Any) -> None:
    """Concurrent calls to one expert can reach its node out of order: a resend can lose the race again."""
    node = market.add_expert(behaviour="too_low_4")

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X})
        return result, client.wallet.cumulative(node.info.expert_id)

    result, cumulative = with_client(body)
    assert result.agreeing == (node.info.expert_id,)
    assert cumulative == 21 * PRICE  # 4 x 5 prices the node reported, plus this call
    assert [r.voucher.voucher.cumulative_amount for r in node.requests] == [PRICE, 6 * PRICE, 11 * PRICE,
                                                                            16 * PRICE, 21 * PRICE]


def test_voucher_too_low_forever_fails_after_a_bounded_number_of_sends(market: Market, with_client: Any) -> None:
    from market.client.calls import MAX_VOUCHER_SENDS

    node = market.add_expert(behaviour="too_low_always")

    async def body(client: AsyncClient) -> Any:
        with pytest.raises(MarketError, match="VOUCHER_TOO_LOW"):
            await client.infer(market.model_hash, {"x": X})
        return client.wallet.cumulative(node.info.expert_id)

    cumulative = with_client(body)
    assert node.received == MAX_VOUCHER_SENDS
    # Nothing was kept by the node, so nothing is owed beyond what it said it holds.
    assert cumulative == node.held[next(iter(node.held))]


def test_resync_before_calling_an_expert_left_in_an_unknown_state(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> list[int]:
        amount = client.wallet.reserve(node.info.expert_id, PRICE)
        client.wallet.release(node.info.expert_id, amount, kept=True)  # e.g. a crash mid-call
        assert client.wallet.needs_resync(node.info.expert_id)
        await client.infer(market.model_hash, {"x": X})
        assert not client.wallet.needs_resync(node.info.expert_id)
        return [r.voucher.voucher.cumulative_amount for r in node.requests]

    # The unknown call counted as paid (the node never got it): one price lost, never a refused call.
    assert with_client(body) == [2 * PRICE]


def test_redundancy_three_outvotes_a_cheater_and_keeps_its_receipt_as_evidence(
    market: Market, with_client: Any
) -> None:
    honest = [market.add_expert(), market.add_expert()]
    cheat = market.add_expert(behaviour="perturb")

    async def body(client: AsyncClient) -> Any:
        result = await client.infer(market.model_hash, {"x": X}, redundancy=3)
        stored = [h in client.evidence_store for h in (result.evidence[0].input_hash, result.evidence[0].output_hash)]
        logged = await client.evidence(result.request_id)
        return result, stored, logged, client.reputation.stats(cheat.info.expert_id)

    result, stored, logged, stats = with_client(body)
    assert torch.allclose(result.outputs["y"], EXPECTED)
    assert set(result.agreeing) == {n.info.expert_id for n in honest}
    assert [e.expert_id for e in result.evidence] == [cheat.info.expert_id]
    item = result.evidence[0]
    assert item.reason == "minority" and item.receipt.receipt.expert_id == cheat.info.expert_id
    assert torch.allclose(item.outputs["y"], EXPECTED + 1.0)
    assert stored == [True, True]
    assert [e.expert_id for e in logged] == [cheat.info.expert_id]
    assert stats.disagreements == 1 and stats.agreements == 0
    assert result.paid == 3 * PRICE


def test_redundancy_needs_distinct_operators(market: Market, with_client: Any) -> None:
    market.add_expert(operator=0)
    market.add_expert(operator=0)

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": X}, redundancy=2)

    with pytest.raises(SelectionError, match="distinct operator"):
        with_client(body)


def test_no_majority_raises_verification_error(market: Market, with_client: Any) -> None:
    market.add_expert()
    market.add_expert(behaviour="perturb")

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": X}, redundancy=2)

    with pytest.raises(VerificationError, match="no quorum"):
        with_client(body)


def test_schema_breaking_signed_answer_is_evidence_and_fails_over(market: Market, with_client: Any) -> None:
    bad = market.add_expert(behaviour="wrongshape", price=PRICE)
    good = market.add_expert(price=2 * PRICE)

    async def body(client: AsyncClient) -> Any:
        return await client.infer(market.model_hash, {"x": X})

    result = with_client(body)
    assert result.agreeing == (good.info.expert_id,)
    assert [(e.expert_id, e.reason) for e in result.evidence] == [(bad.info.expert_id, "bad output")]
    assert result.failures[0].kind == "bad answer"
    assert result.paid == 3 * PRICE  # the bad answer was paid for: the node holds the voucher


def test_unsigned_answer_is_refused_and_not_evidence(market: Market, with_client: Any) -> None:
    forger = market.add_expert(behaviour="badsig", price=PRICE)
    good = market.add_expert(price=2 * PRICE)

    async def body(client: AsyncClient) -> Any:
        return await client.infer(market.model_hash, {"x": X})

    result = with_client(body)
    assert result.agreeing == (good.info.expert_id,)
    assert result.evidence == ()
    assert "signed by" in result.failures[0].message
    assert forger.info.expert_id not in result.receipts


def test_audit_escalates_on_mismatch_and_the_majority_wins(market: Market, with_client: Any) -> None:
    a = market.add_expert(price=PRICE)
    cheat = market.add_expert(price=PRICE, behaviour="perturb")
    c = market.add_expert(price=PRICE)

    async def body(client: AsyncClient) -> Any:
        return await client.infer(market.model_hash, {"x": X}, audit=AuditPolicy(rate=1.0, escalate_to=3))

    result = with_client(body)
    assert result.audited and result.escalated
    assert set(result.agreeing) == {a.info.expert_id, c.info.expert_id}
    assert [e.expert_id for e in result.evidence] == [cheat.info.expert_id]


def test_audit_rate_zero_calls_one_expert(market: Market, with_client: Any) -> None:
    for _ in range(3):
        market.add_expert()

    async def body(client: AsyncClient) -> Any:
        return await client.infer(market.model_hash, {"x": X}, audit=AuditPolicy(rate=0.0))

    result = with_client(body)
    assert not result.audited and len(result.agreeing) == 1 and result.paid == PRICE


# -- refusals before anything is paid ------------------------------------------------------------------


def test_wrong_input_shape_is_refused_before_paying(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": torch.zeros(2, 5)})

    with pytest.raises(MarketInputError, match=r"shape \[2, 5\].*x: float32\[N, 4\]"):
        with_client(body)
    assert node.received == 0


def test_wrong_input_shape_is_refused_before_paying_with_a_cached_manifest(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> int:
        await client.infer(market.model_hash, {"x": X})
        with pytest.raises(MarketInputError, match="do not fit model toy"):
            await client.infer(market.model_hash, {"x": X.to(torch.float64)})
        return spent(client)

    assert with_client(body) == PRICE
    assert node.received == 1


def test_max_price_below_every_expert(market: Market, with_client: Any) -> None:
    market.add_expert(price=500)
    market.add_expert(price=700)

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": X}, max_price=100)

    with pytest.raises(NoExpertError, match="over max_price 100 wei; the cheapest asks 500 wei"):
        with_client(body)


def test_no_expert_registered(market: Market, with_client: Any) -> None:
    other = toy_manifest(name="other")

    async def body(client: AsyncClient) -> None:
        await client.infer(other.model_hash, {"x": X})

    with pytest.raises(NoExpertError, match="no expert is registered"):
        with_client(body)


def test_slashed_experts_are_never_chosen(market: Market, with_client: Any) -> None:
    market.add_expert(disputes_lost=1, slashed_total=10**17)

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": X})

    with pytest.raises(NoExpertError, match="slashed"):
        with_client(body)


def test_exhausted_deposit_is_refused_before_paying(market: Market, with_client: Any) -> None:
    node = market.add_expert()
    market.chain.balance = 2 * PRICE

    async def body(client: AsyncClient) -> int:
        await client.infer(market.model_hash, {"x": X})
        await client.infer(market.model_hash, {"x": X})
        with pytest.raises(InsufficientDepositError, match="deposit at least 1000 wei more"):
            await client.infer(market.model_hash, {"x": X})
        return spent(client)

    assert with_client(body) == 2 * PRICE
    assert node.received == 2


def test_redundancy_total_price_must_fit_the_deposit(market: Market, with_client: Any) -> None:
    nodes = [market.add_expert() for _ in range(3)]
    market.chain.balance = 2 * PRICE

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": X}, redundancy=3)

    with pytest.raises(InsufficientDepositError, match="needs 3000 wei"):
        with_client(body)
    assert all(n.received == 0 for n in nodes)


def test_redeemed_vouchers_free_the_deposit_again(market: Market, with_client: Any) -> None:
    node = market.add_expert()
    market.chain.balance = PRICE

    async def body(client: AsyncClient) -> None:
        await client.infer(market.model_hash, {"x": X})
        # The node redeems: the balance moves to the redeemed amount; then the client deposits more.
        client_address = client.address
        market.chain.balance = 0
        market.chain.redeemed_amounts[(client_address, node.info.expert_id)] = PRICE
        await client.deposit(PRICE)
        await client.infer(market.model_hash, {"x": X})

    with_client(body)
    assert node.served == 2


def test_node_saying_insufficient_deposit_raises_it(market: Market, with_client: Any) -> None:
    market.add_expert(behaviour="insufficient")

    async def body(client: AsyncClient) -> int:
        with pytest.raises(InsufficientDepositError, match="node says"):
            await client.infer(market.model_hash, {"x": X})
        return spent(client)

    assert with_client(body) == 0


# -- disputes -----------------------------------------------------------------------------------------


def test_dispute_from_evidence_and_auto_dispute_once_per_expert(market: Market, with_client: Any) -> None:
    market.add_expert()
    market.add_expert()
    cheat = market.add_expert(behaviour="perturb")

    async def body(client: AsyncClient) -> Any:
        first = await client.infer(market.model_hash, {"x": X}, redundancy=3)
        second = await client.infer(market.model_hash, {"x": X}, redundancy=3)
        listed = await client.disputes()
        record = await client.wait_dispute(first.disputes[0], timeout=5, poll_s=0.01)
        return first, second, listed, record

    first, second, listed, record = with_client(body, auto_dispute=True)
    assert len(first.disputes) == 1 and second.disputes == ()  # one open dispute per expert
    assert [(d.expert_id, d.status) for d in listed] == [(cheat.info.expert_id, DisputeStatus.OPEN)]
    assert record.status == DisputeStatus.GUILTY
    opened = market.chain.disputes[first.disputes[0]]
    assert opened.receipt == first.evidence[0].receipt
    assert opened.endpoint == EVIDENCE_ENDPOINT


def test_dispute_requires_the_evidence_tensors(market: Market, with_client: Any) -> None:
    market.add_expert()
    market.add_expert()
    market.add_expert(behaviour="perturb")

    async def body(client: AsyncClient) -> None:
        result = await client.infer(market.model_hash, {"x": X}, redundancy=3)
        item = result.evidence[0]
        assert client.evidence_store is not None
        client.evidence_store.remove(item.input_hash)
        await client.dispute(item)

    with pytest.raises(MarketInputError, match="does not hold the input tensors"):
        with_client(body)


def test_infer_by_capability(market: Market, with_client: Any) -> None:
    node = market.add_expert()

    async def body(client: AsyncClient) -> Any:
        return await client.infer(None, X, capability="toy")

    result = with_client(body)
    assert result.model_hash == market.model_hash and result.agreeing == (node.info.expert_id,)
