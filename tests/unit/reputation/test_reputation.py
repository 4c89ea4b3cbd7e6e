"""market.reputation: bounds, monotonicity, persistence."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.errors import MarketConfigError, MarketInputError
from market.reputation import (
    FailureKind,
    LocalStats,
    ReputationBook,
    ReputationParams,
    chain_score,
    local_score,
)
from market.types import ExpertInfo

NOW = 1_700_000_000
ETHER = 10**18
PARAMS = ReputationParams()
SETTINGS = settings(deadline=None, max_examples=100)

infos = st.builds(
    ExpertInfo,
    expert_id=st.integers(0, 10**6),
    operator=st.just("0x" + "a" * 40),
    signer=st.just("0x" + "b" * 40),
    model_hash=st.just(b"\x01" * 32),
    capability=st.just(b"\x02" * 32),
    price=st.integers(0, 10**15),
    stake=st.integers(0, 10**21),
    node_key=st.just(b"\x00" * 32),
    endpoint=st.just(()),
    registered_at=st.integers(NOW - 10**8, NOW + 1000),
    slashed_total=st.integers(0, 10**20),
    disputes_lost=st.integers(0, 20),
    volume=st.integers(0, 10**21),
)


@st.composite
def local_stats(draw: st.DrawFn) -> LocalStats:
    stats = LocalStats()
    for op in draw(st.lists(st.sampled_from(["ok", "error", "timeout", "agree", "disagree"]), max_size=40)):
        if op == "ok":
            stats.record_success(draw(st.floats(0, 5_000)), now=draw(st.integers(0, NOW)))
        elif op in ("error", "timeout"):
            stats.record_failure(op)
        else:
            stats.record_vote(op == "agree")
    return stats


def score_of(info: ExpertInfo, stats: LocalStats) -> float:
    book = ReputationBook()
    book._stats[info.expert_id] = stats
    return book.score(info, NOW)


@SETTINGS
@given(infos, local_stats())
def test_scores_are_in_unit_interval(info: ExpertInfo, stats: LocalStats) -> None:
    assert 0.0 <= chain_score(info, NOW, PARAMS) <= 1.0
    assert 0.0 <= local_score(stats, PARAMS) <= 1.0
    assert 0.0 <= score_of(info, stats) <= 1.0
    assert stats.calls == stats.successes + stats.failures + stats.timeouts


@SETTINGS
@given(infos, local_stats(), st.integers(1, 10))
def test_disagreement_never_raises_and_agreement_never_lowers(
    info: ExpertInfo, stats: LocalStats, k: int
) -> None:
    before = score_of(info, copy.copy(stats))
    worse, better = copy.copy(stats), copy.copy(stats)
    for _ in range(k):
        worse.record_vote(False)
        better.record_vote(True)
    assert score_of(info, worse) <= before <= score_of(info, better)
    if before > 0:
        assert score_of(info, worse) < before


@SETTINGS
@given(infos, local_stats(), st.sampled_from(list(FailureKind)), st.floats(0, 1e4))
def test_failures_and_latency_never_raise(
    info: ExpertInfo, stats: LocalStats, kind: FailureKind, more_ms: float
) -> None:
    before = score_of(info, copy.copy(stats))
    failed = copy.copy(stats)
    failed.record_failure(kind)
    assert score_of(info, failed) <= before
    slower = copy.copy(stats)
    slower.latency_ewma_ms += more_ms
    slower.latency_samples = max(slower.latency_samples, 1)
    faster_known = copy.copy(slower)
    faster_known.latency_ewma_ms = stats.latency_ewma_ms if stats.latency_samples else 0.0
    assert score_of(info, slower) <= score_of(info, faster_known)


@SETTINGS
@given(infos, local_stats(), st.integers(1, 5), st.integers(1, 10**20))
def test_slashing_and_lost_disputes_never_raise(
    info: ExpertInfo, stats: LocalStats, lost: int, slashed: int
) -> None:
    before = score_of(info, stats)
    assert score_of(replace(info, disputes_lost=info.disputes_lost + lost), stats) <= before
    assert score_of(replace(info, slashed_total=info.slashed_total + slashed), stats) <= before
    if before > 1e-200:
        assert score_of(replace(info, disputes_lost=info.disputes_lost + lost), stats) < before


@SETTINGS
@given(infos, local_stats(), st.integers(0, 10**21), st.integers(0, 10**8), st.integers(0, 10**21))
def test_stake_age_and_volume_never_lower(
    info: ExpertInfo, stats: LocalStats, stake: int, age: int, volume: int
) -> None:
    before = score_of(info, stats)
    assert score_of(replace(info, stake=info.stake + stake), stats) >= before
    assert score_of(replace(info, registered_at=info.registered_at - age), stats) >= before
    assert score_of(replace(info, volume=info.volume + volume), stats) >= before


def test_stake_has_diminishing_returns() -> None:
    base = ExpertInfo(1, "0x", "0x", b"", b"", 0, 0, b"", (), NOW)
    gains = [
        chain_score(replace(base, stake=(i + 1) * 10 * ETHER), NOW, PARAMS)
        - chain_score(replace(base, stake=i * 10 * ETHER), NOW, PARAMS)
        for i in range(5)
    ]
    assert all(a > b > 0 for a, b in zip(gains, gains[1:], strict=False))


def test_latency_ewma() -> None:
    stats = LocalStats()
    stats.record_success(100.0, now=5)
    assert stats.latency_ewma_ms == 100.0 and stats.last_seen == 5
    stats.record_success(200.0, now=3)
    assert stats.latency_ewma_ms == pytest.approx(120.0) and stats.last_seen == 5
    with pytest.raises(MarketInputError):
        stats.record_success(float("nan"))
    with pytest.raises(MarketInputError, match="unknown failure kind"):
        stats.record_failure("boom")
    with pytest.raises(MarketInputError):
        ReputationParams(base_weight=0.9)


# -- persistence ------------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(st.dictionaries(st.integers(0, 10**9), local_stats(), max_size=8))
def test_save_load_roundtrip(tmp_path_factory: pytest.TempPathFactory, stats: dict[int, LocalStats]) -> None:
    path = tmp_path_factory.mktemp("rep") / "reputation.json"
    book = ReputationBook()
    book._stats.update(stats)
    book.save(path)
    loaded = ReputationBook.load(path)
    assert dict(loaded.items()) == stats
    assert os.listdir(path.parent) == ["reputation.json"]  # no temp file left behind


def test_missing_file_gives_an_empty_book(tmp_path: Path) -> None:
    assert len(ReputationBook.load(tmp_path / "nope.json")) == 0


def test_save_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rep.json"
    book = ReputationBook()
    book.stats(1).record_vote(True)
    book.save(path)
    book.stats(2).record_failure("timeout")
    book.save(path)
    assert set(dict(ReputationBook.load(path).items())) == {1, 2}
    assert sorted(os.listdir(path.parent)) == ["rep.json"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        b'{"format": "other", "version": 1, "experts": {}}',
        b'{"format": "moe-market/reputation", "version": 99, "experts": {}}',
        b'{"format": "moe-market/reputation", "version": 1, "experts": {"x": {}}}',
        b'{"format": "moe-market/reputation", "version": 1, "experts": {"1": {"calls": 1}}}',
    ],
)
def test_corrupt_file_is_a_clear_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "rep.json"
    path.write_bytes(content)
    with pytest.raises(MarketConfigError, match="corrupt.*delete it"):
        ReputationBook.load(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("calls", 7),
        ("failures", -1),
        ("successes", 1.5),
        ("latency_ewma_ms", -3.0),
        ("last_seen", "now"),
        ("agreements", True),
    ],
)
def test_inconsistent_entries_are_rejected(tmp_path: Path, field: str, value: object) -> None:
    path = tmp_path / "rep.json"
    book = ReputationBook()
    book.stats(3).record_success(10.0)
    book.save(path)
    doc = json.loads(path.read_text())
    doc["experts"]["3"][field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(MarketConfigError, match="corrupt"):
        ReputationBook.load(path)
