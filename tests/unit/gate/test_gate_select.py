"""Property tests of market.gate.select, over plain lists and over a CandidateIndex."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from market.errors import MarketInputError, NoExpertError, SelectionError
from market.gate import CandidateIndex, GatePolicy, GateRequest, Selection, next_fallback, select, substitute
from market.reputation import ReputationBook
from market.types import ExpertInfo, ExpertStatus

NOW = 1_700_000_000
ETHER = 10**18
MODEL_A = b"\xaa" * 32
MODEL_B = b"\xbb" * 32
CAP_X = b"\x01" * 32
CAP_Y = b"\x02" * 32
OPERATORS = [f"0x{c * 40}" for c in "abcdef"]

SETTINGS = settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])


def expert(eid: int, **kw: object) -> ExpertInfo:
    base: dict[str, object] = dict(
        expert_id=eid,
        operator=OPERATORS[eid % len(OPERATORS)],
        signer=f"0x{eid:040x}",
        model_hash=MODEL_A,
        capability=CAP_X,
        price=100,
        stake=10 * ETHER,
        node_key=b"\x00" * 32,
        endpoint=(),
        registered_at=NOW - 86_400,
    )
    base.update(kw)
    return ExpertInfo(**base)  # type: ignore[arg-type]


@st.composite
def markets(draw: st.DrawFn, max_size: int = 24) -> list[ExpertInfo]:
    n = draw(st.integers(0, max_size))
    out = []
    for eid in range(n):
        slashed = draw(st.sampled_from([False] * 6 + [True]))
        out.append(
            expert(
                eid,
                operator=draw(st.sampled_from(OPERATORS)),
                model_hash=draw(st.sampled_from([MODEL_A, MODEL_A, MODEL_A, MODEL_B])),
                capability=draw(st.sampled_from([CAP_X, CAP_X, CAP_Y])),
                price=draw(st.integers(0, 1_000)),
                stake=draw(st.integers(0, 40)) * ETHER // 2,
                registered_at=NOW - draw(st.integers(0, 10**7)),
                status=draw(st.sampled_from([ExpertStatus.ACTIVE] * 6 + list(ExpertStatus))),
                disputes_lost=draw(st.integers(1, 3)) if slashed and draw(st.booleans()) else 0,
                slashed_total=draw(st.integers(1, 5)) * ETHER if slashed else 0,
                volume=draw(st.integers(0, 10)) * ETHER // 10,
            )
        )
    return out


@st.composite
def books(draw: st.DrawFn, ids: list[int]) -> ReputationBook:
    book = ReputationBook()
    for eid in draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []:
        stats = book.stats(eid)
        for _ in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from(["ok", "ok", "ok", "error", "timeout"]))
            if kind == "ok":
                stats.record_success(draw(st.floats(1, 2_000)))
            else:
                stats.record_failure(kind)
        for _ in range(draw(st.integers(0, 4))):
            stats.record_vote(draw(st.booleans()))
    return book


@st.composite
def requests(draw: st.DrawFn, ids: list[int]) -> GateRequest:
    by = draw(st.sampled_from(["model", "model", "capability", "both"]))
    return GateRequest(
        model_hash=draw(st.sampled_from([MODEL_A, MODEL_B])) if by != "capability" else None,
        capability=draw(st.sampled_from([CAP_X, CAP_Y])) if by != "model" else None,
        redundancy=draw(st.integers(1, 4)),
        max_price=draw(st.none() | st.integers(0, 1_000) | st.just(1_000)),
        min_stake=draw(st.sampled_from([0, 0, 0, ETHER, 5 * ETHER, 15 * ETHER])),
        deadline_ms=draw(st.sampled_from([100, 500, 10_000])),
        exclude=frozenset(draw(st.lists(st.sampled_from(ids), max_size=3))) if ids else frozenset(),
        allow_partial=draw(st.booleans()),
    )


policies = st.builds(
    GatePolicy,
    epsilon=st.sampled_from([0.0, 0.3, 1.0]),
    temperature=st.sampled_from([0.0, 0.2, 2.0]),
    exploration_bonus=st.sampled_from([0.0, 0.5]),
    max_fallbacks=st.integers(0, 6),
    fallbacks_per_operator=st.integers(1, 3),
    pool_size=st.integers(1, 8),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[ExpertInfo], GateRequest, ReputationBook, GatePolicy, bool]:
    market = draw(markets())
    ids = [e.expert_id for e in market]
    return market, draw(requests(ids)), draw(books(ids)), draw(policies), draw(st.booleans())


# -- an independent statement of the rules --------------------------------------------------------------


def eligible(info: ExpertInfo, request: GateRequest, book: ReputationBook, policy: GatePolicy) -> bool:
    stats = book.get(info.expert_id)
    too_slow = (
        stats is not None
        and stats.latency_samples >= policy.slow_after_samples
        and stats.latency_ewma_ms > request.deadline_ms
    )
    return (
        (request.model_hash is None or info.model_hash == request.model_hash)
        and (request.capability is None or info.capability == request.capability)
        and info.status == ExpertStatus.ACTIVE
        and info.disputes_lost == 0
        and info.slashed_total == 0
        and info.stake >= request.min_stake
        and (request.max_price is None or info.price <= request.max_price)
        and info.expert_id not in request.exclude
        and not too_slow
    )


def expected_reason(market: list[ExpertInfo], request: GateRequest) -> str:
    stage = [e for e in market if request.matches(e)]
    if not stage:
        return "no expert is registered"
    stage = [e for e in stage if e.status == ExpertStatus.ACTIVE]
    if not stage:
        return "is active"
    stage = [e for e in stage if e.disputes_lost == 0 and e.slashed_total == 0]
    if not stage:
        return "slashed"
    stage = [e for e in stage if e.stake >= request.min_stake]
    if not stage:
        return "min_stake"
    stage = [e for e in stage if e.expert_id not in request.exclude]
    if not stage:
        return "excluded"
    cheapest = min(e.price for e in stage)
    stage = [e for e in stage if request.max_price is None or e.price <= request.max_price]
    if not stage:
        return f"the cheapest asks {cheapest} wei"
    return "slower than the deadline"


def run_select(
    market: list[ExpertInfo], request: GateRequest, book: ReputationBook, policy: GatePolicy, use_index: bool
) -> Selection:
    rng = random.Random(7)
    if use_index:
        index = CandidateIndex(market, now=NOW, params=book.params, policy=policy)
        return select(index, request, book, policy, rng, NOW)
    return select(market, request, book, policy, rng, NOW)


def assert_distinct(experts: tuple[ExpertInfo, ...]) -> None:
    operators = [e.operator for e in experts]
    assert len(operators) == len(set(operators)), operators


# -- properties ---------------------------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_selection_obeys_every_rule(scenario: tuple) -> None:
    market, request, book, policy, use_index = scenario
    fits = [e for e in market if eligible(e, request, book, policy)]
    operators = {e.operator for e in fits}
    try:
        selection = run_select(market, request, book, policy, use_index)
    except NoExpertError as exc:
        event("no expert fits")
        assert not fits
        assert expected_reason(market, request) in str(exc)
        return
    except SelectionError as exc:
        event("too few operators")
        assert not request.allow_partial
        assert 0 < len(operators) < request.redundancy
        assert "allow_partial" in str(exc)
        return
    event("complete" if selection.complete else "partial")
    chosen = selection.primary + selection.fallbacks
    for info in chosen:  # price, stake, status, slashing, exclusion, deadline
        assert eligible(info, request, book, policy), info
    assert_distinct(selection.primary)
    assert len(selection.primary) == min(request.redundancy, len(operators))
    assert (selection.shortfall is None) == selection.complete
    assert len({e.expert_id for e in chosen}) == len(chosen)
    assert len(selection.fallbacks) <= policy.max_fallbacks
    per_op: dict[str, int] = {}
    for info in selection.fallbacks:
        per_op[info.operator] = per_op.get(info.operator, 0) + 1
    assert all(n <= policy.fallbacks_per_operator for n in per_op.values())


@SETTINGS
@given(scenarios(), st.randoms(use_true_random=False))
def test_fallback_substitution_keeps_operators_distinct(scenario: tuple, rnd: random.Random) -> None:
    market, request, book, policy, use_index = scenario
    try:
        selection = run_select(market, request, book, policy, use_index)
    except SelectionError:
        return
    seen = {e.expert_id for e in selection.primary}
    for _ in range(len(selection.fallbacks) + 1):
        failed = rnd.choice(selection.primary)
        candidate = next_fallback(selection, failed.expert_id)
        if candidate is None:
            with pytest.raises(NoExpertError, match="fallbacks"):
                substitute(selection, failed.expert_id)
            return
        selection = substitute(selection, failed.expert_id)
        assert candidate in selection.primary and failed not in selection.primary
        assert candidate.expert_id not in seen
        seen.add(candidate.expert_id)
        assert_distinct(selection.primary)
        assert all(eligible(e, request, book, policy) for e in selection.primary)


@SETTINGS
@given(scenarios())
def test_index_and_list_agree_without_exploration(scenario: tuple) -> None:
    market, request, book, policy, _ = scenario
    greedy = replace(policy, epsilon=0.0, temperature=0.0, exploration_bonus=0.0)
    outcomes = []
    for use_index in (False, True):
        try:
            outcomes.append(run_select(market, request, book, greedy, use_index))
        except SelectionError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


@SETTINGS
@given(
    markets(max_size=12),
    st.integers(0, 999),
    st.integers(1, 1_000),
    st.integers(1, 4),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_cheaper_expert_with_equal_reputation_is_preferred(
    others: list[ExpertInfo],
    price: int,
    extra: int,
    redundancy: int,
    observed: bool,
    use_index: bool,
    data: st.DataObject,
) -> None:
    template = expert(
        0,
        stake=data.draw(st.integers(1, 40)) * ETHER,
        registered_at=NOW - data.draw(st.integers(0, 10**7)),
        volume=data.draw(st.integers(0, 10**18)),
    )
    cheap = replace(template, expert_id=1000, operator="0x" + "1" * 40, price=price)
    dear = replace(template, expert_id=1001, operator="0x" + "2" * 40, price=price + extra)
    book = ReputationBook()
    if observed:
        for eid in (cheap.expert_id, dear.expert_id):
            stats = book.stats(eid)
            stats.record_success(80.0)
            stats.record_vote(True)
    market = [*others, dear, cheap]
    request = GateRequest(model_hash=MODEL_A, redundancy=redundancy, allow_partial=True)
    selection = run_select(market, request, book, GatePolicy.greedy(), use_index)
    if dear in selection.primary:
        assert cheap in selection.primary
    if dear in selection.fallbacks:
        assert cheap in selection.primary or selection.fallbacks.index(cheap) < selection.fallbacks.index(
            dear
        )
    assert (
        cheap in selection.primary + selection.fallbacks
        or dear not in selection.primary + selection.fallbacks
    )


def test_cheapest_of_equals_wins_a_single_slot() -> None:
    market = [expert(i, operator=OPERATORS[i], price=p) for i, p in enumerate([300, 100, 200])]
    selection = select(
        market, GateRequest(model_hash=MODEL_A), ReputationBook(), GatePolicy.greedy(), now=NOW
    )
    assert [e.expert_id for e in selection.primary + selection.fallbacks] == [1, 2, 0]


# -- messages ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("market", "request_", "needle"),
    [
        (
            [expert(1, model_hash=MODEL_B)],
            GateRequest(model_hash=MODEL_A),
            "no expert is registered for model 0xaaaa",
        ),
        ([expert(1, status=ExpertStatus.UNBONDING)], GateRequest(model_hash=MODEL_A), "is active"),
        (
            [expert(1, slashed_total=1), expert(2, disputes_lost=1)],
            GateRequest(model_hash=MODEL_A),
            "all 2 active",
        ),
        ([expert(1, stake=ETHER)], GateRequest(model_hash=MODEL_A, min_stake=2 * ETHER), "largest stake is"),
        ([expert(1)], GateRequest(model_hash=MODEL_A, exclude=frozenset({1})), "excluded"),
        (
            [expert(1, price=500), expert(2, price=700)],
            GateRequest(model_hash=MODEL_A, max_price=400),
            "over max_price 400 wei; the cheapest asks 500 wei",
        ),
    ],
)
def test_no_expert_messages_say_why(market: list[ExpertInfo], request_: GateRequest, needle: str) -> None:
    for candidates in (market, CandidateIndex(market, now=NOW)):
        with pytest.raises(NoExpertError, match=needle):
            select(candidates, request_, ReputationBook(), now=NOW)


def test_too_slow_for_the_deadline() -> None:
    book = ReputationBook()
    for _ in range(3):
        book.stats(1).record_success(900.0)
    with pytest.raises(NoExpertError, match="slower than the deadline"):
        select([expert(1)], GateRequest(model_hash=MODEL_A, deadline_ms=500), book, now=NOW)
    assert select(
        [expert(1)], GateRequest(model_hash=MODEL_A, deadline_ms=2_000), book, now=NOW
    ).expert_ids == (1,)


def test_too_few_operators_needs_allow_partial() -> None:
    market = [
        expert(1, operator=OPERATORS[0]),
        expert(2, operator=OPERATORS[0]),
        expert(3, operator=OPERATORS[1]),
    ]
    with pytest.raises(SelectionError, match="only 2 distinct operator"):
        select(market, GateRequest(model_hash=MODEL_A, redundancy=3), ReputationBook(), now=NOW)
    selection = select(
        market, GateRequest(model_hash=MODEL_A, redundancy=3, allow_partial=True), ReputationBook(), now=NOW
    )
    assert (
        len(selection.primary) == 2
        and not selection.complete
        and "redundancy 3" in (selection.shortfall or "")
    )


def test_request_and_policy_validation() -> None:
    with pytest.raises(MarketInputError):
        GateRequest()
    with pytest.raises(MarketInputError):
        GateRequest(model_hash=MODEL_A, redundancy=0)
    with pytest.raises(MarketInputError):
        GateRequest(model_hash=MODEL_A, max_price=-1)
    with pytest.raises(MarketInputError):
        GatePolicy(epsilon=1.5)
    with pytest.raises(MarketInputError, match="twice"):
        select([expert(1), expert(1)], GateRequest(model_hash=MODEL_A), ReputationBook(), now=NOW)
    with pytest.raises(MarketInputError, match="not in the selection"):
        next_fallback(Selection((expert(1),), (), 1), 2)


def test_exploration_reaches_new_experts() -> None:
    market = [expert(i, operator=OPERATORS[i], price=100 if i else 10) for i in range(4)]
    rng = random.Random(1)
    picks = {
        select(
            market, GateRequest(model_hash=MODEL_A), ReputationBook(), GatePolicy(epsilon=0.5), rng, NOW
        ).expert_ids[0]
        for _ in range(200)
    }
    assert picks == {0, 1, 2, 3}
    greedy = {
        select(
            market, GateRequest(model_hash=MODEL_A), ReputationBook(), GatePolicy.greedy(), rng, NOW
        ).expert_ids[0]
        for _ in range(20)
    }
    assert greedy == {0}


def test_local_evidence_moves_the_choice() -> None:
    market = [expert(1, operator=OPERATORS[0]), expert(2, operator=OPERATORS[1])]
    book = ReputationBook()
    for _ in range(5):
        book.stats(1).record_vote(False)
    for candidates in (market, CandidateIndex(market, now=NOW)):
        assert select(
            candidates, GateRequest(model_hash=MODEL_A), book, GatePolicy.greedy(), now=NOW
        ).expert_ids == (2,)
    assert book.get(2) is None  # scoring never creates stats
