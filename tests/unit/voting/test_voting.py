"""market.voting: tolerance grouping and strict-majority decisions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.errors import MarketInputError, VerificationError
from market.voting import Answer, decide, group_answers, vote

TOL = 1e-3
SETTINGS = settings(deadline=None, max_examples=100)
values = st.floats(-1e3, 1e3, allow_nan=False)


def close(a: float, b: float) -> bool:
    return abs(a - b) <= TOL


def answers(outputs: list[float], ids: list[int] | None = None) -> list[Answer[float]]:
    ids = ids or list(range(1, len(outputs) + 1))
    return [Answer(i, f"op{i}", out, receipt=f"receipt{i}") for i, out in zip(ids, outputs, strict=True)]


@SETTINGS
@given(
    values,
    values,
    st.floats(0, TOL / 2),
    st.permutations([0, 1, 2]),
    st.lists(st.integers(0, 10**6), min_size=3, max_size=3, unique=True),
)
def test_one_wrong_answer_among_three_is_outvoted(
    right: float, wrong: float, noise: float, order: list[int], ids: list[int]
) -> None:
    if abs(right - wrong) <= 2 * TOL:
        wrong = right + 1.0
    outputs = [right, right + noise, wrong]
    given_answers = answers([outputs[i] for i in order], ids)
    wrong_answer = given_answers[order.index(2)]
    verdict = vote(given_answers, close, quorum=2)
    assert verdict.reached_quorum
    assert set(verdict.agreeing) == {a.expert_id for a in given_answers} - {wrong_answer.expert_id}
    assert verdict.dissenting == (wrong_answer,)
    assert verdict.dissenting[0].receipt == wrong_answer.receipt
    assert close(verdict.output, right)


@SETTINGS
@given(values, st.permutations([0, 1, 2]))
def test_three_different_answers_reach_no_quorum(right: float, order: list[int]) -> None:
    outputs = [right, right + 1.0, right - 1.0]
    verdict = vote(answers([outputs[i] for i in order]), close, quorum=2)
    assert not verdict.reached_quorum and verdict.winner is None
    assert verdict.agreeing == () and verdict.dissenting == ()
    assert [g.size for g in verdict.groups] == [1, 1, 1]
    with pytest.raises(VerificationError, match="no quorum"):
        _ = verdict.output


@SETTINGS
@given(
    values, st.lists(st.floats(-TOL / 2, TOL / 2), min_size=1, max_size=9), st.randoms(use_true_random=False)
)
def test_answers_within_tolerance_form_one_group(
    center: float, offsets: list[float], rnd: random.Random
) -> None:
    outs = [center + o / 2 for o in offsets]  # pairwise within TOL
    given_answers = answers(outs)
    rnd.shuffle(given_answers)
    groups = group_answers(given_answers, close)
    assert len(groups) == 1 and groups[0].size == len(outs)
    assert vote(given_answers, close, quorum=1).reached_quorum


@SETTINGS
@given(
    st.lists(st.sampled_from([0.0, 0.0006, 0.0012, 5.0]), min_size=1, max_size=7),
    st.randoms(use_true_random=False),
)
def test_grouping_is_deterministic_and_partitions(outs: list[float], rnd: random.Random) -> None:
    given_answers = answers(outs)
    groups = group_answers(given_answers, close)
    shuffled = list(given_answers)
    rnd.shuffle(shuffled)
    assert group_answers(shuffled, close) == groups  # arrival order does not matter
    members = [a for g in groups for a in g.answers]
    assert sorted(a.expert_id for a in members) == sorted(a.expert_id for a in given_answers)
    for g in groups:  # everyone agrees with the representative
        assert all(close(g.output, a.output) for a in g.answers)
    sizes = [g.size for g in groups]
    assert sizes == sorted(sizes, reverse=True)


def test_non_transitive_chain_is_grouped_against_the_first_member() -> None:
    # 0 ~ 0.0006 and 0.0006 ~ 0.0012, but 0 !~ 0.0012: the third starts its own group
    groups = group_answers(answers([0.0, 0.0006, 0.0012]), close)
    assert [g.expert_ids for g in groups] == [(1, 2), (3,)]
    verdict = decide(groups, quorum=2)
    assert verdict.reached_quorum and verdict.agreeing == (1, 2)


@pytest.mark.parametrize(
    ("outs", "quorum", "reached"),
    [
        ([1.0, 1.0, 2.0, 2.0], 2, False),  # tie
        ([1.0, 1.0, 2.0, 3.0], 2, False),  # plurality is not a strict majority
        ([1.0, 1.0, 1.0, 2.0], 3, True),
        ([1.0, 1.0, 2.0], 3, False),  # majority but under quorum
        ([1.0], 1, True),
        ([], 1, False),
    ],
)
def test_strict_majority_and_quorum(outs: list[float], quorum: int, reached: bool) -> None:
    assert vote(answers(outs), close, quorum).reached_quorum is reached


def test_bad_inputs() -> None:
    with pytest.raises(MarketInputError, match="answered twice"):
        group_answers([Answer(1, "a", 0.0), Answer(1, "b", 0.0)], close)
    with pytest.raises(MarketInputError, match="operator"):
        group_answers([Answer(1, "a", 0.0), Answer(2, "a", 0.0)], close)
    with pytest.raises(MarketInputError, match="quorum"):
        decide([], 0)
