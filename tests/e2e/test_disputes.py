"""End to end: cheating experts are caught and slashed on chain by verifier PROCESSES; honest ones never are.

Everything is real: anvil with the market deployed (commit and reveal periods of an hour, moved forward with
evm_increaseTime, so nothing depends on how fast this machine is), one expert node process (`moe expert
serve`) serving five experts of the digits mixture with different behaviours, three verifier processes
(`moe verifier run`, re-executing with 2 torch threads while the node computes with 1), and a challenger in
this process: it pays for calls with signed vouchers, keeps the input and output of each call in an
EvidenceStore served over libp2p, and opens disputes with the expert's signed receipts.

    expert 1  perturb   outputs far off the model      -> disputed, GUILTY, slashed; the numbers add up to the wei
    expert 2  honest                                     -> a false dispute is INNOCENT; the challenger loses the bond
    (expert 2 again)     thread count / noise in tolerance -> INNOCENT
    expert 3  perturb   a fourth verifier lies (--unsafe-lie) while one honest one may not vote -> still GUILTY
    expert 4  zeros, expert 5 cached (lazy)              -> GUILTY

Verifiers A, B, C stake 1, 2 and 1.5 ETH (rewards are pro rata to stake); the liar L runs throughout but has
voting stake (1 ETH) only during its own test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from dispute_harness import ZERO, Market, digits_input, digits_package, open_market

from market.chain.params import MarketParams
from market.protocol.codec import encode_tensors
from market.protocol.hashing import new_request_id, tensor_hash
from market.types import DisputeStatus, Receipt

pytestmark = pytest.mark.timeout(600)

ETHER = 10**18
COMMIT = REVEAL = 3600
PARAMS = MarketParams(
    min_stake=ETHER, min_verifier_stake=ETHER, unbonding_period=3 * 86400, withdraw_delay=2 * 86400,
    dispute_bond=ETHER // 10, commit_period=COMMIT, reveal_period=REVEAL, quorum_stake=2 * ETHER,
    slash_bps=5_000, challenger_bps=4_000, verifier_bps=4_000, expert_bond_bps=5_000,
)  # fmt: skip
PRICE = 10**12
EXPERT_STAKE = 2 * ETHER
VERIFIER_STAKES = {"A": ETHER, "B": 2 * ETHER, "C": 3 * ETHER // 2, "L": ETHER}
BEHAVIOURS = ("perturb", "honest", "perturb", "zeros", "cached")


# ==================================================================================================
# harness (tests/dispute_harness.py)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Market]:
    workdir = tmp_path_factory.mktemp("disputes-e2e")
    # L stakes only for its own test (until then it may not vote) and runs with --unsafe-lie throughout.
    with open_market(
        workdir, digits_package(request.config, workdir), params=PARAMS, behaviours=BEHAVIOURS,
        verifier_stakes=VERIFIER_STAKES, price=PRICE, expert_stake=EXPERT_STAKE, staked=("A", "B", "C"),
        start=("L", "A", "B", "C"), verifier_args={"L": ("--unsafe-lie",)}, label="e2e dispute",
    ) as m:  # fmt: skip
        yield m


def stakes(*names: str) -> dict[str, int]:
    return {n: VERIFIER_STAKES[n] for n in names}


# ==================================================================================================
# scenarios


def test_a_cheating_expert_is_voted_guilty_and_slashed_and_the_numbers_add_up(market: Market) -> None:
    expert_id = market.expert("perturb")
    _, receipt, evidence = market.infer(expert_id, digits_input(3, 1))
    r = market.reader
    stake_before = r.get_expert(expert_id).stake
    burn = r.disputes.functions.BURN_ADDRESS().call()
    burn_before = r.native_balance(burn)
    dispute_id = market.dispute(receipt, evidence)
    from_block = r.block_number()

    market.decide([dispute_id], ["A", "B", "C"])

    d = r.get_dispute(dispute_id)
    assert d.status is DisputeStatus.GUILTY
    voters = stakes("A", "B", "C")
    guilty_stake = sum(voters.values())
    assert (d.guilty_stake, d.innocent_stake, d.voters) == (guilty_stake, 0, 3)
    slashed = stake_before * PARAMS.slash_bps // 10_000
    to_challenger = slashed * PARAMS.challenger_bps // 10_000
    pool = slashed * PARAMS.verifier_bps // 10_000
    shares = {market.verifiers[n].address: pool * s // guilty_stake for n, s in voters.items()}
    burned = slashed - to_challenger - sum(shares.values())
    assert d.slashed == slashed
    assert market.credits(dispute_id) == {market.client.address: PARAMS.dispute_bond + to_challenger, **shares}
    assert r.native_balance(burn) - burn_before == burned
    expert = r.get_expert(expert_id)
    assert expert.stake == stake_before - slashed and expert.disputes_lost == 1
    # Each verifier process claimed exactly its share.
    for address, share in shares.items():
        assert market.claimed_by(address, from_block) == share
    # The challenger claims its bond back plus its share.
    challenger = market.chain(market.client)
    balance = challenger.native_balance()
    assert challenger.claim() == PARAMS.dispute_bond + to_challenger
    fee = challenger.last_transaction().fee
    assert challenger.native_balance() == balance + PARAMS.dispute_bond + to_challenger - fee


def test_a_false_dispute_is_innocent_and_the_challenger_loses_the_bond(market: Market) -> None:
    expert_id = market.expert("honest")
    _, receipt, evidence = market.infer(expert_id, digits_input(5, 2))
    r = market.reader
    stake_before = r.get_expert(expert_id).stake
    dispute_id = market.dispute(receipt, evidence)

    market.decide([dispute_id], ["A", "B", "C"])

    d = r.get_dispute(dispute_id)
    assert d.status is DisputeStatus.INNOCENT and d.slashed == 0
    voters = stakes("A", "B", "C")
    innocent_stake = sum(voters.values())
    assert (d.guilty_stake, d.innocent_stake) == (0, innocent_stake)
    bond = PARAMS.dispute_bond
    pool = bond - bond * PARAMS.expert_bond_bps // 10_000
    shares = {market.verifiers[n].address: pool * s // innocent_stake for n, s in voters.items()}
    # The operator gets its share of the bond plus the rounding dust; the challenger gets nothing back.
    assert market.credits(dispute_id) == {market.operator.address: bond - sum(shares.values()), **shares}
    assert r.claimable(market.client.address) == 0
    assert r.get_expert(expert_id).stake == stake_before


def test_honest_float_differences_within_tolerance_are_never_guilty(market: Market) -> None:
    """The node computes with 1 torch thread, the verifiers with 2; and an expert on another machine whose
    floats differ slightly (simulated: its receipt signed for the output plus noise well within the
    tolerance) is innocent too."""
    expert_id = market.expert("honest")
    _, big_receipt, big_evidence = market.infer(expert_id, digits_input(128, 3))

    outputs, real, ((in_specs, in_payload), _) = market.infer(expert_id, digits_input(7, 4))
    logits = outputs["logits"]
    noisy = {"logits": logits + 2e-5 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))}
    out_specs, out_payload = encode_tensors(noisy)
    assert tensor_hash(out_specs, out_payload) != real.receipt.output_hash
    receipt = Receipt(
        expert_id=expert_id, model_hash=real.receipt.model_hash, request_id=new_request_id(),
        input_hash=real.receipt.input_hash, output_hash=tensor_hash(out_specs, out_payload), price=PRICE,
    )  # fmt: skip
    noisy_receipt = market.node_receipt_signer().sign(receipt)

    ids = [
        market.dispute(big_receipt, big_evidence),
        market.dispute(noisy_receipt, ((in_specs, in_payload), (out_specs, out_payload))),
    ]
    market.decide(ids, ["A", "B", "C"])
    for dispute_id in ids:
        d = market.reader.get_dispute(dispute_id)
        assert d.status is DisputeStatus.INNOCENT and d.guilty_stake == 0, dispute_id


def test_one_lying_verifier_among_three_does_not_change_the_verdict(market: Market) -> None:
    """The liar L (running with --unsafe-lie since the start, without stake so far) stakes for this dispute
    only, and verifier C opens the dispute itself so it may not vote: the voters are A, B and L."""
    r = market.reader
    liar = market.chain(market.verifiers["L"])
    liar.register_verifier(VERIFIER_STAKES["L"])
    try:
        expert_id = market.expert("perturb", 1)
        _, receipt, evidence = market.infer(expert_id, digits_input(2, 6))
        from_block = r.block_number()
        dispute_id = market.dispute(receipt, evidence, opener=market.verifiers["C"])
        market.decide([dispute_id], ["A", "B", "L"])
    finally:
        liar.request_verifier_unbond()  # no voting stake any more: it sits out the other scenarios

    d = r.get_dispute(dispute_id)
    assert d.status is DisputeStatus.GUILTY
    assert (d.guilty_stake, d.innocent_stake) == (VERIFIER_STAKES["A"] + VERIFIER_STAKES["B"], VERIFIER_STAKES["L"])
    votes = {v.verifier: v.guilty for v in r.votes_revealed(from_block) if v.dispute_id == dispute_id}
    v = market.verifiers
    assert votes == {v["A"].address: True, v["B"].address: True, v["L"].address: False}
    credits = market.credits(dispute_id)
    assert v["L"].address not in credits and v["C"].address in credits  # C is paid as the challenger
    assert r.commitment_of(dispute_id, v["C"].address) == ZERO


def test_lazy_experts_returning_zeros_or_a_cached_answer_are_caught(market: Market) -> None:
    _, zeros_receipt, zeros_evidence = market.infer(market.expert("zeros"), digits_input(4, 7))
    cached = market.expert("cached")
    first, _, _ = market.infer(cached, digits_input(4, 8))
    second, cached_receipt, cached_evidence = market.infer(cached, digits_input(4, 9))
    assert torch.equal(first["logits"], second["logits"])  # the lazy node replayed its first answer

    ids = [market.dispute(zeros_receipt, zeros_evidence), market.dispute(cached_receipt, cached_evidence)]
    market.decide(ids, ["A", "B", "C"])
    for dispute_id in ids:
        d = market.reader.get_dispute(dispute_id)
        assert d.status is DisputeStatus.GUILTY and d.innocent_stake == 0, dispute_id
        assert d.slashed == EXPERT_STAKE * PARAMS.slash_bps // 10_000
