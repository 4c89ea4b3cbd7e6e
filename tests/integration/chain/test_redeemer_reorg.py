"""A redemption the chain takes back (a reorg) is noticed and redeemed again: node.redeemer against anvil.

The reorg is anvil's `evm_revert` to a snapshot taken before the redemption: the block holding it is gone,
as after a reorg that drops the transaction. The node's ledger still believes the vouchers were paid; the
redeemer's re-check of recent redemptions must see the chain's lower `redeemed()`, put the pair back to
unredeemed and redeem its latest voucher again, so the operator is paid exactly once in the end.
"""

from __future__ import annotations

from pathlib import Path

from market.chain.devnet import rpc_request
from node.ledger import VoucherLedger
from node.redeemer import Redeemer, RedeemPolicy

ETH = 10**18


def test_a_redemption_dropped_by_a_reorg_is_redeemed_again(market, isolated_devnet, tmp_path: Path) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    deployment = market.reader.deployment
    signer = market.client.account.voucher_signer(deployment.chain_id, deployment.escrow)
    price = market.PRICE
    with VoucherLedger(tmp_path / "ledger.db", escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        for k in range(1, 4):
            ledger.record_voucher(signer.sign(expert, k * price), price)
        redeemer = Redeemer(ledger, market.relayer, [expert], RedeemPolicy(recheck_s=0.0, reorg_window_s=600.0))
        before_reorg = rpc_request(isolated_devnet.rpc_url, "evm_snapshot")
        assert redeemer.redeem_once(force=True).paid_wei == 3 * price
        assert market.reader.redeemed(market.client.address, expert) == 3 * price
        assert redeemer.redeem_once().paid_wei == 0  # the re-check agrees with the chain: nothing to do

        assert rpc_request(isolated_devnet.rpc_url, "evm_revert", [before_reorg])
        assert market.reader.redeemed(market.client.address, expert) == 0
        assert ledger.unredeemed() == []  # the ledger still believes it was paid

        operator_before = market.operator.native_balance()
        report = redeemer.redeem_once()  # not forced: the taken-back amount makes the round due at once
        assert report.paid_wei == 3 * price and report.errors == ()
        assert redeemer.total_reorged == 3 * price
        assert market.reader.redeemed(market.client.address, expert) == 3 * price
        assert market.operator.native_balance() - operator_before == 3 * price
        assert market.client.balance_of() == ETH - 3 * price
        assert redeemer.redeem_once().paid_wei == 0 and redeemer.total_reorged == 3 * price


def test_the_recheck_at_start_up_finds_a_reorg_that_happened_while_the_node_was_down(
    market, isolated_devnet, tmp_path: Path
) -> None:
    expert = market.register()
    market.client.deposit(ETH)
    deployment = market.reader.deployment
    signer = market.client.account.voucher_signer(deployment.chain_id, deployment.escrow)
    path = tmp_path / "ledger.db"
    with VoucherLedger(path, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        ledger.record_voucher(signer.sign(expert, market.PRICE), market.PRICE)
        before_reorg = rpc_request(isolated_devnet.rpc_url, "evm_snapshot")
        Redeemer(ledger, market.relayer, [expert]).redeem_once(force=True)
    assert rpc_request(isolated_devnet.rpc_url, "evm_revert", [before_reorg])
    # A new process on the same ledger: its start-up sync re-reads the recent redemptions (default policy).
    with VoucherLedger(path, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        redeemer = Redeemer(ledger, market.relayer, [expert])
        redeemer.sync_from_chain()
        assert [(v.voucher.cumulative_amount, red) for v, red in ledger.unredeemed()] == [(market.PRICE, 0)]
        assert redeemer.redeem_once(force=True).paid_wei == market.PRICE
    assert market.reader.redeemed(market.client.address, expert) == market.PRICE
