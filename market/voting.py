"""Voting over redundant answers: group outputs by the model's tolerance, then find a strict majority.

Pure logic: outputs are opaque; whether two outputs agree is decided by the `same` callable the caller
passes (built from the model's registered tolerance, never bit equality). No torch here.

Grouping. "Within tolerance" is not transitive (a ~ b and b ~ c do not imply a ~ c), so groups are built
greedily and deterministically: answers are taken in ascending expert id (not arrival order, so every
client that sees the same answers forms the same groups) and each joins the first existing group whose
*first member* (its representative) it matches, `same(representative.output, answer.output)`, or starts a
new group. An answer that is close to a member but not to the representative therefore starts its own
group: a chain of near-misses can never drag a majority away from the first answer of its group. Groups
are listed largest first, ties by the smallest expert id in the group.

Deciding. With n answers, a group wins only if it holds a strict majority (`2 * size > n`) and at least
`quorum` answers. A strict majority is unique, so ties never win. The answers outside the winner are the
dissent: their signed receipts are the evidence for a dispute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from market.errors import MarketInputError, VerificationError

__all__ = ["Answer", "Group", "Verdict", "decide", "group_answers", "vote"]

A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class Answer(Generic[A]):
    """One expert's answer to a redundant call. `receipt` is the expert's signed receipt (opaque here)."""

    expert_id: int
    operator: str
    output: A
    receipt: object = None


@dataclass(frozen=True, slots=True)
class Group(Generic[A]):
    """Answers that agree with the group's first member (its representative) within tolerance."""

    answers: tuple[Answer[A], ...]

    @property
    def representative(self) -> Answer[A]:
        return self.answers[0]

    @property
    def output(self) -> A:
        return self.answers[0].output

    @property
    def size(self) -> int:
        return len(self.answers)

    @property
    def expert_ids(self) -> tuple[int, ...]:
        return tuple(a.expert_id for a in self.answers)


@dataclass(frozen=True, slots=True)
class Verdict(Generic[A]):
    """The outcome of a vote. `winner` is None (and `agreeing` / `dissenting` empty) without a quorum."""

    reached_quorum: bool
    winner: Group[A] | None
    agreeing: tuple[int, ...]
    dissenting: tuple[Answer[A], ...]
    groups: tuple[Group[A], ...]
    total: int
    quorum: int

    @property
    def output(self) -> A:
        """The winning output; VerificationError if no group reached the quorum."""
        return self.require().output

    def require(self) -> Group[A]:
        if self.winner is None:
            sizes = ", ".join(str(g.size) for g in self.groups) or "none"
            raise VerificationError(
                f"no quorum: {self.total} answer(s) split into groups of {sizes}; a winner needs a strict "
                f"majority and at least {self.quorum}; ask more experts (higher redundancy) or dispute"
            )
        return self.winner


def group_answers(answers: Sequence[Answer[A]], same: Callable[[A, A], bool]) -> list[Group[A]]:
    """Group `answers` by tolerance (see the module docstring for the non-transitive case)."""
    ids: set[int] = set()
    operators: set[str] = set()
    for answer in answers:
        if answer.expert_id in ids:
            raise MarketInputError(f"expert {answer.expert_id} answered twice; each expert votes once")
        if answer.operator in operators:
            raise MarketInputError(
                f"two answers come from operator {answer.operator}: one operator's experts are not independent "
                "votes, so redundancy sets must be operator-distinct (see market.gate)"
            )
        ids.add(answer.expert_id)
        operators.add(answer.operator)
    members: list[list[Answer[A]]] = []
    for answer in sorted(answers, key=lambda a: a.expert_id):
        for group in members:
            if same(group[0].output, answer.output):
                group.append(answer)
                break
        else:
            members.append([answer])
    groups = [Group(tuple(m)) for m in members]
    groups.sort(key=lambda g: (-g.size, g.answers[0].expert_id))
    return groups


def decide(groups: Sequence[Group[A]], quorum: int) -> Verdict[A]:
    """The strict-majority group if it also holds at least `quorum` answers, else no quorum."""
    if type(quorum) is not int or quorum < 1:
        raise MarketInputError(f"quorum must be an integer >= 1, got {quorum!r}")
    ordered = tuple(sorted(groups, key=lambda g: (-g.size, g.answers[0].expert_id)))
    total = sum(g.size for g in ordered)
    best = ordered[0] if ordered else None
    if best is None or 2 * best.size <= total or best.size < quorum:
        return Verdict(False, None, (), (), ordered, total, quorum)
    dissent = tuple(a for g in ordered if g is not best for a in g.answers)
    return Verdict(True, best, best.expert_ids, dissent, ordered, total, quorum)


def vote(answers: Sequence[Answer[A]], same: Callable[[A, A], bool], quorum: int) -> Verdict[A]:
    """`decide(group_answers(answers, same), quorum)`."""
    return decide(group_answers(answers, same), quorum)
