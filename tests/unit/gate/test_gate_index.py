"""CandidateIndex: correctness at 100,000 candidates, incremental updates, re-keying. No timing assertions."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from market.gate import CandidateIndex, GatePolicy, GateRequest, _random_market, bench_gate, select
from market.reputation import ReputationBook, ReputationParams
from market.types import ExpertInfo, ExpertStatus

NOW = 1_700_000_000
ETHER = 10**18
MODEL = b"\x42" * 32


@pytest.fixture(scope="module")
def big_market() -> list[ExpertInfo]:
    return _random_market(100_000, random.Random(3), MODEL, NOW)


def observed_book(market: list[ExpertInfo], rng: random.Random, count: int = 200) -> ReputationBook:
    book = ReputationBook()
    for info in rng.sample(market, count):
        stats = book.stats(info.expert_id)
        for _ in range(rng.randrange(1, 20)):
            stats.record_success(rng.uniform(10, 300))
            stats.record_vote(rng.random() < 0.9)
    return book


def test_select_on_100k_index_is_correct(big_market: list[ExpertInfo]) -> None:
    rng = random.Random(5)
    book = observed_book(big_market, rng)
    greedy = GatePolicy.greedy()
    index = CandidateIndex(big_market, now=NOW, params=book.params, policy=greedy)
    assert len(index) == 100_000
    prices = sorted(e.price for e in big_market)
    request = GateRequest(
        model_hash=MODEL,
        redundancy=3,
        max_price=prices[5_000],
        min_stake=5 * ETHER,
        exclude=frozenset(range(50)),
    )
    fast = index.select(request, book, greedy, now=NOW)
    slow = select(big_market, request, book, greedy, now=NOW)
    assert fast == slow  # exact, without exploration
    chosen = fast.primary + fast.fallbacks
    assert len(fast.primary) == 3 and len(fast.fallbacks) == greedy.max_fallbacks
    assert len({e.operator for e in fast.primary}) == 3
    for info in chosen:
        assert info.price <= request.max_price and info.stake >= request.min_stake
        assert info.status == ExpertStatus.ACTIVE and info.slashed_total == 0 and info.disputes_lost == 0
        assert info.expert_id >= 50

    explore = GatePolicy(seed=1)  # same static weights: the index is reused as it is
    for _ in range(20):
        selection = index.select(request, book, explore, rng, NOW)
        assert len({e.operator for e in selection.primary}) == 3
        assert all(e.price <= request.max_price and e.stake >= request.min_stake for e in selection.primary)


def test_incremental_updates_match_a_fresh_list() -> None:
    rng = random.Random(11)
    market = {e.expert_id: e for e in _random_market(400, rng, MODEL, NOW)}
    book = observed_book(list(market.values()), rng, 30)
    greedy = GatePolicy.greedy(max_fallbacks=4)
    index = CandidateIndex(market.values(), now=NOW, params=book.params, policy=greedy)
    request = GateRequest(model_hash=MODEL, redundancy=3, max_price=3 * 10**13, allow_partial=True)
    for step in range(200):
        eid = rng.randrange(450)
        action = rng.random()
        if eid in market and action < 0.15:
            del market[eid]
            index.remove(eid)
        else:
            base = market.get(eid) or replace(next(iter(market.values())), expert_id=eid)
            changed = replace(
                base,
                price=int(10 ** rng.uniform(12, 14)),
                stake=rng.randint(1, 40) * ETHER,
                status=rng.choice([ExpertStatus.ACTIVE] * 4 + [ExpertStatus.UNBONDING]),
                slashed_total=ETHER if action > 0.95 else 0,
                operator=f"0x{rng.randrange(60):040x}",
            )
            market[eid] = changed
            index.upsert(changed)
        if step % 20 == 0:
            expected = select(list(market.values()), request, book, greedy, now=NOW)
            assert index.select(request, book, greedy, now=NOW) == expected
    assert len(index) == len(market)


def test_slashing_removes_an_expert_from_every_client_choice() -> None:
    market = [replace(e, price=10**12) for e in _random_market(50, random.Random(2), MODEL, NOW)]
    index = CandidateIndex(market, now=NOW)
    request = GateRequest(model_hash=MODEL, redundancy=2, allow_partial=True)
    best = index.select(request, ReputationBook(), GatePolicy.greedy(), now=NOW).primary[0]
    index.upsert(replace(best, slashed_total=1, disputes_lost=1))
    for seed in range(30):
        selection = index.select(request, ReputationBook(), GatePolicy(epsilon=1.0), random.Random(seed), NOW)
        assert best.expert_id not in {e.expert_id for e in selection.primary + selection.fallbacks}


def test_rekeys_for_new_weights_and_time() -> None:
    rng = random.Random(4)
    market = _random_market(300, rng, MODEL, NOW)
    book = ReputationBook(ReputationParams(reference_stake=ETHER))
    index = CandidateIndex(market, now=NOW, refresh_after_s=60)  # default params: re-keyed on first use
    request = GateRequest(model_hash=MODEL, redundancy=2)
    for policy, now in [
        (GatePolicy.greedy(), NOW),
        (GatePolicy.greedy(price_weight=3.0), NOW),
        (GatePolicy.greedy(reputation_weight=0.5), NOW + 10_000),
    ]:
        assert index.select(request, book, policy, now=now) == select(market, request, book, policy, now=now)


def test_bench_gate_runs() -> None:
    assert bench_gate(10, selections=5) > 0


def test_changing_observations_are_seen_by_the_index() -> None:
    rng = random.Random(8)
    market = _random_market(300, rng, MODEL, NOW)
    book = observed_book(market, rng, 40)
    greedy = GatePolicy.greedy(exploration_bonus=0.5)
    index = CandidateIndex(market, now=NOW, params=book.params, policy=greedy)
    request = GateRequest(model_hash=MODEL, redundancy=3, deadline_ms=400)
    for _ in range(30):
        top = index.select(request, book, greedy, now=NOW)
        assert top == select(market, request, book, greedy, now=NOW)
        victim = book.stats(top.primary[0].expert_id)  # the favourite disagrees, slows down or fails
        action = rng.randrange(3)
        if action == 0:
            victim.record_vote(False)
        elif action == 1:
            victim.record_success(900.0)
        else:
            victim.record_failure()
