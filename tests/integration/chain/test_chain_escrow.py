"""Deposits, Python-signed vouchers redeemed on chain, and each bad voucher surfacing its Solidity error name."""

from __future__ import annotations

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.chain.eip712 import VoucherSigner, sign_digest, voucher_digest
from market.errors import ContractRevertError, MarketInputError
from market.types import SignedVoucher, Voucher

ETH = 10**18


def _voucher_signer(chain, chain_id=None, escrow=None) -> VoucherSigner:
    d = chain.deployment
    return chain.account.voucher_signer(chain_id or d.chain_id, escrow or d.escrow)


def test_redeem_by_a_relayer_pays_the_operator_exactly(market) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    assert market.client.balance_of() == ETH
    signed = _voucher_signer(market.client).sign(expert, 3 * 10**15)

    before = market.operator.native_balance()
    paid, gas_used = market.relayer.redeem(signed)

    assert paid == 3 * 10**15 and gas_used > 0
    assert market.operator.native_balance() - before == paid
    assert market.client.balance_of() == ETH - paid
    assert market.reader.redeemed(market.client.address, expert) == paid
    assert market.reader.expert_volume(expert) == paid
    assert market.reader.get_expert(expert).volume == paid


def test_redeem_by_the_operator_pays_exactly_minus_its_gas(market) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    signer = _voucher_signer(market.client)
    market.relayer.redeem(signer.sign(expert, 10**15))

    before = market.operator.native_balance()
    result = market.operator.redeem(signer.sign(expert, 4 * 10**15))

    assert result.paid == 3 * 10**15  # only the delta over what was redeemed before
    assert result.tx.fee == result.gas_used * result.tx.effective_gas_price
    assert market.operator.native_balance() == before + result.paid - result.tx.fee
    assert market.operator.last_transaction() == result.tx


def test_redeem_many_pays_every_delta_in_one_transaction(market, chain_for, funded_account) -> None:
    expert_a = market.register()
    expert_b = market.register()
    clients = [market.client, chain_for(funded_account()), chain_for(funded_account())]
    vouchers = []
    for i, client in enumerate(clients):
        client.deposit(ETH)
        vouchers.append(_voucher_signer(client).sign(expert_a, (i + 1) * 10**15))
        vouchers.append(_voucher_signer(client).sign(expert_b, (i + 1) * 2 * 10**15))

    before = market.operator.native_balance()
    paid, gas_used = market.relayer.redeem_many(vouchers)

    assert paid == sum(v.voucher.cumulative_amount for v in vouchers) == 18 * 10**15
    assert market.operator.native_balance() - before == paid
    assert market.reader.expert_volume(expert_a) == 6 * 10**15
    assert market.reader.expert_volume(expert_b) == 12 * 10**15
    assert gas_used > 0
    with pytest.raises(MarketInputError):
        market.relayer.redeem_many([])


def test_short_balance_pays_what_it_can_and_the_rest_later(market) -> None:
    expert = market.register()
    market.client.deposit(10**15)
    signed = _voucher_signer(market.client).sign(expert, 3 * 10**15)
    assert market.relayer.redeem(signed).paid == 10**15
    market.client.deposit(ETH)
    assert market.relayer.redeem(signed).paid == 2 * 10**15


def test_wrong_signer_is_escrow_invalid_signature(market) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    voucher = Voucher(market.client.address, expert, 10**15)  # the client's voucher, signed by someone else
    d = market.relayer.deployment
    relayer_key = coincurve.PrivateKey(market.relayer.account.unsafe_private_key())
    claimed = SignedVoucher(voucher, sign_digest(relayer_key, voucher_digest(voucher, d.chain_id, d.escrow)))
    with pytest.raises(ContractRevertError) as info:
        market.relayer.redeem(claimed)
    assert info.value.name == "EscrowInvalidSignature"
    assert info.value.args_by_name == {"client": market.client.address, "recovered": market.relayer.address}


@pytest.mark.parametrize("where", ["other escrow", "other chain"])
def test_voucher_for_another_domain_is_escrow_invalid_signature(market, where) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    if where == "other escrow":
        signer = _voucher_signer(market.client, escrow=market.client.deployment.disputes)
    else:
        signer = _voucher_signer(market.client, chain_id=1)
    with pytest.raises(ContractRevertError) as info:
        market.relayer.redeem(signer.sign(expert, 10**15))
    assert info.value.name == "EscrowInvalidSignature"


def test_replayed_or_lower_voucher_is_not_increasing(market) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    signer = _voucher_signer(market.client)
    market.relayer.redeem(signer.sign(expert, 5 * 10**15))
    for amount in (5 * 10**15, 4 * 10**15):
        with pytest.raises(ContractRevertError) as info:
            market.relayer.redeem(signer.sign(expert, amount))
        assert info.value.name == "EscrowVoucherNotIncreasing"
        assert info.value.args_by_name["redeemed"] == 5 * 10**15
    with pytest.raises(ContractRevertError) as info:
        market.relayer.redeem_many([signer.sign(expert, 6 * 10**15), signer.sign(expert, 6 * 10**15)])
    assert info.value.name == "EscrowVoucherNotIncreasing"
    assert (
        market.reader.redeemed(market.client.address, expert) == 5 * 10**15
    )  # the batch reverted as a whole


def test_empty_deposit_and_unknown_expert(market) -> None:
    with pytest.raises(ContractRevertError) as info:
        market.relayer.redeem(_voucher_signer(market.client).sign(999, 1))
    assert info.value.name in ("EscrowUnknownExpert", "EscrowInsufficientBalance")
    expert = market.register()
    with pytest.raises(ContractRevertError) as info:
        market.relayer.redeem(_voucher_signer(market.client).sign(expert, 1))
    assert info.value.name == "EscrowInsufficientBalance"


def test_withdraw_waits_for_its_delay(market) -> None:
    market.client.deposit(ETH)
    delay = market.reader.params().withdraw_delay
    withdrawable_at = market.client.request_withdraw(ETH // 2)
    assert market.client.escrow_account().withdraw_amount == ETH // 2
    with pytest.raises(ContractRevertError) as info:
        market.client.withdraw()
    assert info.value.name == "EscrowWithdrawTooEarly"
    assert info.value.args_by_name["withdrawableAt"] == withdrawable_at
    market.client.increase_time(delay + 1)
    before = market.client.native_balance()
    assert market.client.withdraw() == ETH // 2
    fee = market.client.last_transaction().fee
    assert market.client.native_balance() == before + ETH // 2 - fee
    assert market.client.balance_of() == ETH // 2


def test_deposit_for_another_client(market) -> None:
    market.relayer.deposit_for(market.client.address, 2 * 10**15)
    assert market.reader.balance_of(market.client.address) == 2 * 10**15


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expert_id=st.integers(0, 2**256 - 1), amount=st.integers(0, 2**256 - 1))
def test_python_voucher_digest_equals_the_contracts(market, expert_id, amount) -> None:
    d = market.reader.deployment
    voucher = Voucher(market.client.address, expert_id, amount)
    assert market.reader.onchain_voucher_digest(voucher) == voucher_digest(voucher, d.chain_id, d.escrow)
