"""Experts and verifiers through MarketChain: registration, paging, updates, stake, unbonding, named errors."""

from __future__ import annotations

import pytest

from market.chain.contracts import capability_id
from market.errors import ContractRevertError, MarketConfigError, MarketInputError
from market.types import ExpertStatus

ETH = 10**18
MODEL = bytes.fromhex("11" * 32)  # what tests/integration/chain/conftest.py registers
NODE_KEY = bytes.fromhex("22" * 32)
CAPABILITY = capability_id("digits-expert")
PRICE = 10**15
ENDPOINT = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]


def test_fixture_registers_these_values(market) -> None:
    assert (market.MODEL, market.NODE_KEY, market.CAPABILITY, market.PRICE) == (
        MODEL,
        NODE_KEY,
        CAPABILITY,
        PRICE,
    )
    assert tuple(ENDPOINT) == market.ENDPOINT


def test_register_and_read_back(market) -> None:
    start = market.reader.block_number()
    stake = 2 * ETH
    expert = market.register(stake=stake)
    info = market.reader.get_expert(expert)

    assert info.expert_id == expert == market.reader.expert_count()
    assert (info.operator, info.signer) == (market.operator.address, market.hot.address)
    assert (info.model_hash, info.capability, info.node_key) == (MODEL, CAPABILITY, NODE_KEY)
    assert (info.price, info.stake, info.status, info.volume) == (PRICE, stake, ExpertStatus.ACTIVE, 0)
    assert info.endpoint == tuple(ENDPOINT)
    assert info.registered_at == market.reader.block_timestamp()
    assert market.reader.was_signer(expert, market.hot.address)

    (event,) = market.reader.experts_registered(start + 1)
    assert (event.expert_id, event.operator, event.endpoint, event.stake) == (expert, market.operator.address,
                                                                              tuple(ENDPOINT), stake)  # fmt: skip


def test_stake_below_minimum_is_registry_stake_too_low(market) -> None:
    minimum = market.reader.params().min_stake
    with pytest.raises(ContractRevertError) as info:
        market.register(stake=minimum - 1)
    assert info.value.name == "RegistryStakeTooLow"
    assert info.value.args_by_name == {"sent": minimum - 1, "minimum": minimum}
    assert market.reader.expert_count() == 0


def test_listing_reads_every_page(market) -> None:
    other_model = bytes.fromhex("33" * 32)
    ids = [market.register() for _ in range(5)]
    other = market.register(model=other_model)
    market.reader._max_page = 2  # force several pages with few experts

    assert [e.expert_id for e in market.reader.experts_by_model(MODEL)] == ids
    assert [e.expert_id for e in market.reader.experts_by_model(other_model)] == [other]
    assert [e.expert_id for e in market.reader.experts_by_capability(CAPABILITY)] == [*ids, other]
    assert market.reader.experts_by_capability(capability_id("nothing")) == []
    assert market.reader.get_experts([]) == []


def test_update_expert_and_add_stake(market) -> None:
    expert = market.register()
    start = market.reader.block_number()
    new_endpoint = ["/ip4/10.0.0.1/tcp/5000"]
    market.operator.update_expert(expert, market.operator.address, 2 * PRICE, b"\x44" * 32, new_endpoint)
    market.relayer.add_stake(expert, ETH)  # anyone may top up

    info = market.reader.get_expert(expert)
    assert (info.signer, info.price, info.endpoint) == (
        market.operator.address,
        2 * PRICE,
        tuple(new_endpoint),
    )
    assert info.node_key == b"\x44" * 32
    assert info.stake == market.reader.params().min_stake + ETH
    assert market.reader.was_signer(expert, market.hot.address)  # old receipts stay disputable
    (event,) = market.reader.experts_updated(start + 1)
    assert (event.expert_id, event.price, event.endpoint) == (expert, 2 * PRICE, tuple(new_endpoint))

    with pytest.raises(ContractRevertError) as info_:
        market.relayer.update_expert(expert, market.relayer.address, 1, b"\x44" * 32, new_endpoint)
    assert info_.value.name == "RegistryNotOperator"


def test_unbond_then_withdraw_after_the_period(market) -> None:
    stake = market.reader.params().min_stake
    expert = market.register(stake=stake)
    unbonds_at = market.operator.request_unbond(expert)
    assert market.reader.get_expert(expert).status == ExpertStatus.UNBONDING
    with pytest.raises(ContractRevertError) as info:
        market.operator.withdraw_stake(expert)
    assert info.value.name == "RegistryUnbondingNotOver"
    assert info.value.args_by_name["unbondsAt"] == unbonds_at

    market.operator.increase_time(market.reader.params().unbonding_period + 1)
    before = market.operator.native_balance()
    assert market.operator.withdraw_stake(expert) == stake
    assert market.operator.native_balance() == before + stake - market.operator.last_transaction().fee
    assert market.reader.get_expert(expert).status == ExpertStatus.WITHDRAWN


def test_verifier_lifecycle(market) -> None:
    v = market.verifiers[0]
    minimum = market.reader.params().min_verifier_stake
    with pytest.raises(ContractRevertError) as info:
        v.register_verifier(minimum - 1)
    assert info.value.name == "RegistryStakeTooLow"
    v.register_verifier(minimum)
    v.add_verifier_stake(ETH)
    assert v.voting_stake() == minimum + ETH
    record = v.get_verifier()
    assert (record.stake, record.active, record.unbonds_at) == (minimum + ETH, True, 0)

    unbonds_at = v.request_verifier_unbond()
    assert v.voting_stake() == 0
    with pytest.raises(ContractRevertError) as info:
        v.withdraw_verifier_stake()
    assert info.value.name == "RegistryVerifierUnbondingNotOver"
    v.increase_time(unbonds_at - v.block_timestamp() + 1)
    assert v.withdraw_verifier_stake() == minimum + ETH


def test_unknown_expert_and_bad_input(market) -> None:
    with pytest.raises(ContractRevertError) as info:
        market.reader.get_expert(12345)
    assert info.value.name == "RegistryUnknownExpert"
    with pytest.raises(MarketInputError):
        market.operator.register_expert(
            market.hot.address, MODEL, CAPABILITY, PRICE, NODE_KEY, ["/ip4/1.2.3.4 /tcp/1"], ETH
        )
    with pytest.raises(MarketInputError):
        market.operator.register_expert(
            market.hot.address, b"short", CAPABILITY, PRICE, NODE_KEY, ENDPOINT, ETH
        )
    with pytest.raises(MarketConfigError, match="account"):
        market.reader.deposit(1)


def test_arguments_the_abi_refuses_are_input_errors(market) -> None:
    with pytest.raises(MarketInputError):
        market.register(price=-1)
