"""A dispute through the wrappers: open with a Python-signed receipt, three verifiers commit and reveal, resolve,
claim; plus the vote-window errors and local/on-chain agreement of digests and commitments."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.chain.contracts import commitment_for
from market.chain.eip712 import receipt_digest
from market.errors import ContractRevertError
from market.types import DisputeStatus, Receipt

EVIDENCE = "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"


def _receipt(market, expert: int, request: bytes = b"\x0a" * 32) -> Receipt:
    return Receipt(expert, market.MODEL, request, b"\x0b" * 32, b"\x0c" * 32, market.PRICE)


def _signed_receipt(market, expert: int, request: bytes = b"\x0a" * 32):
    d = market.reader.deployment
    return market.hot.receipt_signer(d.chain_id, d.disputes).sign(_receipt(market, expert, request))


def test_full_dispute_guilty(market) -> None:
    params = market.reader.params()
    stakes = [2 * 10**18, 10**18, 10**18]  # guilty, guilty, innocent: 3 ETH to 1 ETH
    for verifier, stake in zip(market.verifiers, stakes, strict=True):
        verifier.register_verifier(stake)
    expert = market.register(stake=4 * 10**18)
    start = market.reader.block_number()

    dispute = market.challenger.open_dispute(_signed_receipt(market, expert), EVIDENCE)
    bond_fee = market.challenger.last_transaction().fee
    info = market.reader.get_dispute(dispute)
    assert (info.expert_id, info.challenger, info.bond, info.status) == (
        expert, market.challenger.address, params.dispute_bond, DisputeStatus.OPEN)  # fmt: skip
    assert info.reveal_ends - info.commit_ends == params.reveal_period
    (opened,) = market.reader.disputes_opened(start + 1)
    assert (opened.dispute_id, opened.evidence_endpoint, opened.request_id) == (
        dispute,
        EVIDENCE,
        b"\x0a" * 32,
    )
    assert market.reader.get_expert(expert).open_disputes == 1

    votes = [True, True, False]
    salts = [os.urandom(32) for _ in votes]
    for verifier, guilty, salt in zip(market.verifiers, votes, salts, strict=True):
        commitment = commitment_for(dispute, guilty, salt, verifier.address)
        verifier.commit_vote(dispute, commitment)
        assert verifier.commitment_of(dispute) == commitment
    with pytest.raises(ContractRevertError) as err:
        market.verifiers[0].reveal_vote(dispute, True, salts[0])
    assert err.value.name == "DisputeRevealNotOpen"
    with pytest.raises(ContractRevertError) as err:
        market.operator.commit_vote(dispute, b"\x01" * 32)
    assert err.value.name == "DisputeNotVerifier"

    market.reader.increase_time(params.commit_period + 1)
    with pytest.raises(ContractRevertError) as err:
        market.verifiers[0].commit_vote(dispute, b"\x01" * 32)
    assert err.value.name in ("DisputeCommitClosed", "DisputeAlreadyCommitted")
    for verifier, guilty, salt in zip(market.verifiers, votes, salts, strict=True):
        verifier.reveal_vote(dispute, guilty, salt)
    with pytest.raises(ContractRevertError) as err:
        market.challenger.resolve(dispute)
    assert err.value.name == "DisputeNotOver"

    market.reader.increase_time(params.reveal_period + 1)
    assert market.relayer.resolve(dispute) == DisputeStatus.GUILTY

    slashed = 4 * 10**18 * params.slash_bps // 10_000
    info = market.reader.get_dispute(dispute)
    assert (info.status, info.slashed, info.voters) == (DisputeStatus.GUILTY, slashed, 3)
    assert (info.guilty_stake, info.innocent_stake) == (3 * 10**18, 10**18)
    expert_info = market.reader.get_expert(expert)
    assert (expert_info.stake, expert_info.slashed_total, expert_info.disputes_lost, expert_info.open_disputes) == (
        4 * 10**18 - slashed, slashed, 1, 0)  # fmt: skip
    (resolved,) = market.reader.disputes_resolved(start + 1)
    assert (resolved.dispute_id, resolved.status, resolved.slashed) == (
        dispute,
        DisputeStatus.GUILTY,
        slashed,
    )
    assert [v.guilty for v in market.reader.votes_revealed(start + 1)] == votes

    pool = slashed * params.verifier_bps // 10_000
    expected = {
        market.challenger: params.dispute_bond + slashed * params.challenger_bps // 10_000,
        market.verifiers[0]: pool * 2 // 3,
        market.verifiers[1]: pool * 1 // 3,
    }
    assert market.verifiers[2].claimable() == 0
    for who, amount in expected.items():
        assert who.claimable() == amount
        before = who.native_balance()
        assert who.claim() == amount
        assert who.native_balance() == before + amount - who.last_transaction().fee
        assert who.claimable() == 0
    assert resolved.burned == slashed - expected[market.challenger] + params.dispute_bond - sum(
        expected[v] for v in market.verifiers[:2])  # fmt: skip
    assert bond_fee > 0
    with pytest.raises(ContractRevertError) as err:
        market.verifiers[2].claim()
    assert err.value.name == "DisputeNothingToClaim"


def test_commit_after_window_and_no_quorum(market) -> None:
    params = market.reader.params()
    market.verifiers[0].register_verifier(params.min_verifier_stake)
    expert = market.register()
    dispute = market.challenger.open_dispute(_signed_receipt(market, expert), EVIDENCE)
    market.reader.increase_time(params.commit_period + 1)
    with pytest.raises(ContractRevertError) as err:
        market.verifiers[0].commit_vote(dispute, b"\x01" * 32)
    assert err.value.name == "DisputeCommitClosed"
    assert err.value.args_by_name["disputeId"] == dispute
    market.reader.increase_time(params.reveal_period + 1)
    assert market.challenger.resolve(dispute) == DisputeStatus.NO_QUORUM
    assert market.challenger.claimable() == params.dispute_bond
    with pytest.raises(ContractRevertError) as err:
        market.challenger.resolve(dispute)
    assert err.value.name == "DisputeAlreadyResolved"


def test_bad_receipts_are_refused_by_name(market) -> None:
    expert = market.register()
    d = market.reader.deployment
    forged = market.challenger.account.receipt_signer(d.chain_id, d.disputes).sign(_receipt(market, expert))
    with pytest.raises(ContractRevertError) as err:
        market.challenger.open_dispute(forged, EVIDENCE)
    assert err.value.name == "DisputeInvalidReceiptSigner"
    signed = _signed_receipt(market, expert)
    market.challenger.open_dispute(signed, EVIDENCE)
    with pytest.raises(ContractRevertError) as err:
        market.relayer.open_dispute(signed, EVIDENCE)
    assert err.value.name == "DisputeAlreadyOpened"
    assert err.value.args_by_name["receiptDigest"] == receipt_digest(signed.receipt, d.chain_id, d.disputes)
    with pytest.raises(ContractRevertError) as err:
        market.reader.get_dispute(99)
    assert err.value.name == "DisputeUnknown"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    expert_id=st.integers(0, 2**256 - 1),
    price=st.integers(0, 2**256 - 1),
    hashes=st.tuples(*[st.binary(min_size=32, max_size=32)] * 4),
    dispute_id=st.integers(0, 2**256 - 1),
    guilty=st.booleans(),
)
def test_python_digests_and_commitments_equal_the_contracts(
    market, expert_id, price, hashes, dispute_id, guilty
) -> None:
    d = market.reader.deployment
    receipt = Receipt(expert_id, *hashes, price)
    assert market.reader.onchain_receipt_digest(receipt) == receipt_digest(receipt, d.chain_id, d.disputes)
    voter = market.verifiers[0].address
    assert market.reader.onchain_commitment_for(dispute_id, guilty, hashes[0], voter) == market.reader.commitment_for(
        dispute_id, guilty, hashes[0], voter)  # fmt: skip
