"""Unit tests for node.redeemer.Redeemer against a chain stand-in: rounds, and a chain that stops answering.

The stand-in only replaces the RPC (the real chain path is covered by tests/integration/node and the e2e and
reliability suites); the ledger is the real SQLite ledger.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from market.types import SignedVoucher, Voucher
from node.ledger import VoucherLedger
from node.redeemer import Redeemer, RedeemPolicy

CLIENT = "0x1111111111111111111111111111111111111111"
PRICE = 10


class ChainStandIn:
    """redeemed() / redeem_many() of MarketChain; `freeze()` makes every call block until `thaw()`."""

    def __init__(self) -> None:
        self.on_chain: dict[tuple[str, int], int] = {}
        self.calls = 0
        self.mined: set[str] = set()  # transactions the chain has (a reorg removes one)
        self.reads = {"receipts": 0, "redeemed": 0}
        self._open = threading.Event()
        self._open.set()

    def freeze(self) -> None:
        self._open.clear()

    def thaw(self) -> None:
        self._open.set()

    def redeemed(self, client: str, expert_id: int) -> int:
        self._open.wait()
        self.reads["redeemed"] += 1
        return self.on_chain.get((client.lower(), expert_id), 0)

    def transaction_succeeded(self, tx_hash: str) -> bool:
        self.reads["receipts"] += 1
        return tx_hash in self.mined

    def redeem_many(self, batch: list[SignedVoucher]) -> SimpleNamespace:
        self.calls += 1
        self._open.wait()
        paid = 0
        for signed in batch:
            v = signed.voucher
            key = (v.client.lower(), v.expert_id)
            paid += v.cumulative_amount - self.on_chain.get(key, 0)
            self.on_chain[key] = v.cumulative_amount
        tx = bytes([self.calls]) * 32
        self.mined.add("0x" + tx.hex())
        return SimpleNamespace(paid=paid, gas_used=21_000, tx=SimpleNamespace(tx_hash=tx))


def voucher(amount: int, expert_id: int = 1) -> SignedVoucher:
    return SignedVoucher(Voucher(CLIENT, expert_id, amount), b"\x07" * 65)


@pytest.fixture
def ledger(tmp_path: Path):
    with VoucherLedger(tmp_path / "ledger.db") as book:
        yield book


def test_a_forced_round_redeems_each_pair_once(ledger: VoucherLedger) -> None:
    chain = ChainStandIn()
    for amount in (PRICE, 2 * PRICE, 3 * PRICE):
        ledger.record_voucher(voucher(amount), PRICE)
    ledger.record_voucher(voucher(PRICE, expert_id=2), PRICE)
    redeemer = Redeemer(ledger, chain, [1, 2], RedeemPolicy(threshold_wei=10**18, max_age_s=3600))

    assert redeemer.redeem_once() == redeemer.redeem_once()  # not due: nothing sent
    assert chain.calls == 0
    report = redeemer.redeem_once(force=True)

    assert (report.vouchers, report.paid_wei, report.transactions) == (2, 4 * PRICE, 1)
    assert chain.on_chain == {(CLIENT.lower(), 1): 3 * PRICE, (CLIENT.lower(), 2): PRICE}
    assert ledger.unredeemed() == []
    assert redeemer.redeem_once(force=True).vouchers == 0


def test_shutdown_with_a_frozen_chain_is_bounded_and_keeps_the_vouchers(ledger: VoucherLedger) -> None:
    """A round blocked on a chain that stopped answering cannot be interrupted: `run` abandons it when
    cancelled, its last round gives up after `shutdown_s`, and the voucher is still in the ledger."""
    chain = ChainStandIn()
    ledger.record_voucher(voucher(PRICE), PRICE)
    policy = RedeemPolicy(threshold_wei=1, max_age_s=0.0, interval_s=0.01, shutdown_s=0.3)
    redeemer = Redeemer(ledger, chain, [1], policy)
    chain.freeze()

    async def main() -> None:
        with trio.fail_after(60):  # a guard against a hang, not a timing check
            async with trio.open_nursery() as nursery:
                nursery.start_soon(redeemer.run)
                while not redeemer._round.locked():  # its start-up sync is now blocked on the chain
                    await trio.sleep(0.01)
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert chain.on_chain == {}
    assert [s.voucher.cumulative_amount for s, _ in ledger.unredeemed()] == [PRICE]
    # The chain answers again: the abandoned round finishes, and the next round finds nothing left to send.
    chain.thaw()
    with redeemer._round:  # waits for the abandoned round
        pass
    redeemer.redeem_once(force=True)
    assert chain.on_chain == {(CLIENT.lower(), 1): PRICE}
    assert ledger.unredeemed() == []


def test_the_reorg_recheck_costs_one_receipt_lookup_per_transaction(ledger: VoucherLedger) -> None:
    chain = ChainStandIn()
    for expert_id in (1, 2, 3):
        ledger.record_voucher(voucher(PRICE, expert_id), PRICE)
    redeemer = Redeemer(ledger, chain, [1, 2, 3], RedeemPolicy(threshold_wei=10**18, recheck_s=0.0))
    assert redeemer.redeem_once(force=True).transactions == 1
    chain.reads.update(receipts=0, redeemed=0)
    assert redeemer.recheck_redeemed() == 0
    assert chain.reads == {"receipts": 1, "redeemed": 0}  # three pairs, one transaction: one lookup

    # A reorg drops the transaction, and with it expert 2's payment (the others were paid again elsewhere).
    chain.mined.clear()
    chain.on_chain[(CLIENT.lower(), 2)] = 0
    assert redeemer.recheck_redeemed() == PRICE
    assert [(v.voucher.expert_id, red) for v, red in ledger.unredeemed()] == [(2, 0)]
    report = redeemer.redeem_once()  # the taken-back amount makes the round due at once
    assert (report.vouchers, report.paid_wei) == (1, PRICE)
    assert chain.on_chain[(CLIENT.lower(), 2)] == PRICE
