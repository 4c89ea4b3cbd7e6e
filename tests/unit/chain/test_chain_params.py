"""MarketParams: the two profiles, their files in deploy/profiles, unit parsing and validation."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from market.chain.params import (
    ETHER,
    PROFILES_DIR,
    MarketParams,
    parse_amount,
    parse_period,
    resolve_profile,
)
from market.errors import MarketConfigError


def test_devnet_profile_is_a_quick_demo() -> None:
    p = MarketParams.devnet()
    assert (p.commit_period, p.reveal_period, p.unbonding_period, p.withdraw_delay) == (20, 20, 300, 600)
    assert (p.min_stake, p.min_verifier_stake, p.dispute_bond) == (ETHER, ETHER, ETHER // 10)
    assert (p.slash_bps, p.challenger_bps, p.verifier_bps, p.expert_bond_bps) == (5000, 4000, 4000, 5000)


def test_mainnet_like_profile_counts_in_days() -> None:
    p = MarketParams.mainnet_like()
    assert p.commit_period >= 86_400 and p.unbonding_period >= 7 * 86_400
    assert p.withdraw_delay > p.commit_period + p.reveal_period


@pytest.mark.parametrize(
    ("name", "builtin"), [("devnet", MarketParams.devnet()), ("mainnet-like", MarketParams.mainnet_like())]
)
def test_profile_files_equal_the_builtins(name: str, builtin: MarketParams) -> None:
    assert MarketParams.from_file(PROFILES_DIR / f"{name}.toml") == builtin
    assert resolve_profile(name) == builtin
    assert MarketParams.profile(name) == builtin


def test_resolve_profile_falls_back_to_builtins_and_reads_paths(tmp_path) -> None:
    assert resolve_profile("devnet", profiles_dir=tmp_path) == MarketParams.devnet()
    custom = tmp_path / "net.json"
    custom.write_text(
        '{"params": ' + json.dumps({**MarketParams.devnet().as_dict(), "commit_period": 30}) + "}"
    )
    assert resolve_profile(str(custom)).commit_period == 30
    with pytest.raises(MarketConfigError, match="unknown profile"):
        resolve_profile("nope", profiles_dir=tmp_path)
    with pytest.raises(MarketConfigError, match="no profile file"):
        resolve_profile(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"withdraw_delay": 40}, "withdraw_delay"),
        ({"unbonding_period": 30}, "unbonding_period"),
        ({"slash_bps": 10_001}, "slash_bps"),
        ({"slash_bps": 0}, "slash_bps"),
        ({"challenger_bps": 7000}, "challenger_bps + verifier_bps"),
        ({"min_stake": 0}, "min_stake"),
        ({"dispute_bond": 2**96}, "dispute_bond"),
        ({"commit_period": 0}, "commit_period"),
        ({"quorum_stake": 1}, "quorum_stake"),
        ({"verifier_bps": "1"}, "integer"),
    ],
)
def test_validation_names_the_problem(change: dict, message: str) -> None:
    with pytest.raises(MarketConfigError, match=re.escape(message)):
        dataclasses.replace(MarketParams.devnet(), **change)


def test_units() -> None:
    assert parse_amount("0.1 ether") == ETHER // 10
    assert parse_amount("20 gwei") == 20 * 10**9
    assert parse_amount(5) == 5
    assert parse_amount("1_000") == 1000
    assert parse_period("14 days") == 14 * 86_400
    assert parse_period("5 min") == 300
    assert parse_period("20") == 20
    for bad in ("1 parsec", "abc ether", "0.5 wei", None, "1 2 3"):
        with pytest.raises(MarketConfigError):
            parse_amount(bad)


def test_mapping_rejects_unknown_and_missing_fields() -> None:
    data = MarketParams.devnet().as_dict()
    with pytest.raises(MarketConfigError, match="unknown typo"):
        MarketParams.from_mapping({**data, "typo": 1})
    data.pop("slash_bps")
    with pytest.raises(MarketConfigError, match="missing slash_bps"):
        MarketParams.from_mapping(data)


def test_bad_toml_is_reported(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("min_stake = = 1")
    with pytest.raises(MarketConfigError, match="does not parse"):
        MarketParams.from_file(path)
