"""Unit tests for node.ledger.VoucherLedger: the amount rules, redemptions, receipts, and thread safety."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import pytest

import node.ledger as ledger_mod
from market.errors import MarketConfigError, MarketInputError, PaymentError
from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher
from node.ledger import LedgerError, PendingRedemption, VoucherLedger, VoucherTooLowError

ALICE = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
BOB = "0x1111111111111111111111111111111111111111"
CAROL = "0x2222222222222222222222222222222222222222"
PRICE = 10
TX1 = b"\x01" * 32
TX2 = "0x" + "02" * 32


def sv(client: str, expert_id: int, amount: int, tag: str = "") -> SignedVoucher:
    sig = hashlib.sha256(f"{client.lower()}:{expert_id}:{amount}:{tag}".encode()).digest()
    return SignedVoucher(Voucher(client, expert_id, amount), (sig * 3)[:65])


def signed_receipt(request: int, expert_id: int = 1, price: int = PRICE) -> SignedReceipt:
    h = hashlib.sha256(str(request).encode()).digest()
    return SignedReceipt(Receipt(expert_id, b"\xaa" * 32, h, b"\xbb" * 32, b"\xcc" * 32, price), b"\x07" * 65)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock):
    with VoucherLedger(tmp_path / "ledger.db", clock=clock) as led:
        yield led


# ---------------------------------------------------------------- vouchers


def test_empty_ledger(ledger: VoucherLedger) -> None:
    assert ledger.last_cumulative(ALICE, 1) == 0
    assert ledger.unredeemed() == []
    assert ledger.outstanding_amount(ALICE) == 0
    assert ledger.pending() == []
    assert ledger.stats() == {
        "vouchers": 0,
        "total_cumulative": 0,
        "total_redeemed": 0,
        "outstanding": 0,
        "pending": 0,
        "pending_amount": 0,
        "failed": 0,
        "receipts": 0,
    }


def test_sqlite_settings_are_wal_and_full_sync(ledger: VoucherLedger) -> None:
    conn = ledger._db.conn()
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is fsynced on every commit


def test_record_voucher_accepts_exactly_one_more_price(ledger: VoucherLedger) -> None:
    ledger.record_voucher(sv(ALICE, 1, PRICE), PRICE)
    assert ledger.last_cumulative(ALICE, 1) == PRICE
    ledger.record_voucher(sv(ALICE, 1, 2 * PRICE), PRICE)
    with pytest.raises(VoucherTooLowError) as info:
        ledger.record_voucher(sv(ALICE, 1, 3 * PRICE - 1), PRICE)
    err = info.value
    assert isinstance(err, PaymentError)
    assert (err.held, err.expected, err.offered, err.price) == (2 * PRICE, 3 * PRICE, 3 * PRICE - 1, PRICE)
    assert "resync" in str(err)
    assert ledger.last_cumulative(ALICE, 1) == 2 * PRICE  # a rejected voucher changes nothing
    assert ledger.served_amount(ALICE, 1) == 2 * PRICE


def test_paying_ahead_covers_the_next_calls_whatever_their_vouchers_say(ledger: VoucherLedger) -> None:
    ledger.record_voucher(sv(ALICE, 1, PRICE), PRICE)
    ledger.record_voucher(sv(ALICE, 1, 4 * PRICE), PRICE)  # paying ahead is allowed
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (4 * PRICE, 2 * PRICE)
    # Two more calls are paid for already: any voucher of this client serves them (signatures are checked
    # by the server before the ledger), and the node keeps the highest.
    ledger.record_voucher(sv(ALICE, 1, 3 * PRICE), PRICE)
    ledger.record_voucher(sv(ALICE, 1, PRICE, tag="old"), PRICE)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (4 * PRICE, 4 * PRICE)
    with pytest.raises(VoucherTooLowError) as info:
        ledger.record_voucher(sv(ALICE, 1, 5 * PRICE - 1), PRICE)
    assert (info.value.held, info.value.expected) == (4 * PRICE, 5 * PRICE)
    [(held, _)] = ledger.unredeemed()
    assert held.voucher.cumulative_amount == 4 * PRICE


def test_vouchers_arriving_out_of_order_pay_exactly_their_calls(ledger: VoucherLedger) -> None:
    # Three concurrent calls of one client: vouchers 1p, 2p, 3p sent on three streams, arriving 3p, 1p, 2p.
    third, first, second = sv(ALICE, 1, 3 * PRICE), sv(ALICE, 1, PRICE), sv(ALICE, 1, 2 * PRICE)
    for v in (third, first, second):
        ledger.record_voucher(v, PRICE)  # the older rule refused the last two: the client paid 2 prices more
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (3 * PRICE, 3 * PRICE)
    assert ledger.unredeemed() == [(third, 0)]
    with pytest.raises(VoucherTooLowError):  # a fourth call needs a fourth price
        ledger.record_voucher(sv(ALICE, 1, 3 * PRICE, tag="replay"), PRICE)
    # The call of 3p fails on the node: back to exactly two calls and the voucher that pays for them.
    assert ledger.revert_voucher(third, PRICE)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (2 * PRICE, 2 * PRICE)
    assert ledger.unredeemed() == [(second, 0)]


def test_a_revert_never_drops_a_voucher_the_served_calls_need(ledger: VoucherLedger) -> None:
    # One voucher paid ahead for two calls; a replay of it served the second. The first call fails: the
    # voucher must stay, since the second call is still served by it.
    v = sv(ALICE, 1, 2 * PRICE)
    ledger.record_voucher(v, PRICE)
    ledger.record_voucher(v, PRICE)
    assert ledger.revert_voucher(v, PRICE)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (2 * PRICE, PRICE)
    assert ledger.unredeemed() == [(v, 0)]


def test_a_ledger_without_served_counts_everything_held_as_served(ledger: VoucherLedger) -> None:
    ledger.record_voucher(sv(ALICE, 1, 5 * PRICE), PRICE)
    ledger._db.conn().execute("DELETE FROM served")  # as a ledger written before the table existed
    assert ledger.served_amount(ALICE, 1) == 5 * PRICE
    with pytest.raises(VoucherTooLowError):
        ledger.record_voucher(sv(ALICE, 1, 5 * PRICE, tag="again"), PRICE)
    ledger.record_voucher(sv(ALICE, 1, 6 * PRICE), PRICE)


def test_a_voucher_at_or_below_the_redeemed_amount_pays_for_nothing(ledger: VoucherLedger) -> None:
    # Worthless on chain, and a failed call on it could not be taken back: refused, even with credit. An
    # honest client never sends one (its book is above what the node holds), except a free call's.
    v1, v3 = sv(ALICE, 1, PRICE), sv(ALICE, 1, 3 * PRICE)
    ledger.record_voucher(v3, PRICE)
    ledger.mark_redeemed([v3], TX1)
    with pytest.raises(VoucherTooLowError) as info:
        ledger.record_voucher(v1, PRICE)
    assert (info.value.held, info.value.expected) == (3 * PRICE, 3 * PRICE + 1)
    with pytest.raises(VoucherTooLowError):
        ledger.record_voucher(sv(ALICE, 1, 0), PRICE)
    ledger.record_voucher(sv(ALICE, 1, 0), 0)  # a free call
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (3 * PRICE, PRICE)
    ledger.record_voucher(sv(ALICE, 1, 3 * PRICE + 1), PRICE)  # above what was redeemed: the credit pays
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (3 * PRICE + 1, 2 * PRICE)


def test_replayed_voucher_is_rejected(ledger: VoucherLedger) -> None:
    v = sv(ALICE, 1, PRICE)
    ledger.record_voucher(v, PRICE)
    with pytest.raises(VoucherTooLowError):
        ledger.record_voucher(v, PRICE)


def test_pairs_are_independent_and_clients_match_case_insensitively(ledger: VoucherLedger) -> None:
    ledger.record_voucher(sv(ALICE, 1, 30), PRICE)
    ledger.record_voucher(sv(ALICE, 2, 10), PRICE)
    ledger.record_voucher(sv(BOB, 1, 10), PRICE)
    assert ledger.last_cumulative(ALICE.lower(), 1) == 30
    assert ledger.last_cumulative(ALICE.upper().replace("0X", "0x"), 2) == 10
    with pytest.raises(VoucherTooLowError):  # the same pair: 30 held pays for calls at 10, not one at 30
        ledger.record_voucher(sv(ALICE.lower(), 1, 30, tag="replay"), 30)
    assert ledger.cumulative_for(ALICE) == {1: 30, 2: 10}
    # The spelling the client signed with is what goes back on chain.
    assert {v.voucher.client for v, _ in ledger.unredeemed()} == {ALICE, BOB}


def test_amounts_beyond_64_bits_round_trip(ledger: VoucherLedger) -> None:
    big = 2**200 + 12345
    ledger.record_voucher(sv(ALICE, 2**255, big), 2**70)
    assert ledger.last_cumulative(ALICE, 2**255) == big
    top = 2**256 - 1
    ledger.record_voucher(sv(ALICE, 2**255, top), 1)
    [(v, redeemed)] = ledger.unredeemed()
    assert (v.voucher.expert_id, v.voucher.cumulative_amount, redeemed) == (2**255, top, 0)
    assert ledger.stats()["total_cumulative"] == top


@pytest.mark.parametrize(
    ("voucher", "price"),
    [
        (sv(ALICE, 1, 2**256), 1),
        (sv(ALICE, 1, -1), 0),
        (sv(ALICE, -1, 10), 1),
        (sv(ALICE, 1, 10), -1),
        (sv(ALICE, 1, 10), True),
        (SignedVoucher(Voucher(ALICE, 1, 10), b""), 1),
        (SignedVoucher(Voucher("", 1, 10), b"x"), 1),
        (Voucher(ALICE, 1, 10), 1),
    ],
)
def test_bad_input_is_refused(ledger: VoucherLedger, voucher: object, price: object) -> None:
    with pytest.raises(MarketInputError):
        ledger.record_voucher(voucher, price)  # type: ignore[arg-type]
    assert ledger.stats()["vouchers"] == 0


def test_zero_price_accepts_the_same_amount(ledger: VoucherLedger) -> None:
    ledger.record_voucher(sv(ALICE, 1, 10), 10)
    ledger.record_voucher(sv(ALICE, 1, 10, tag="again"), 0)
    assert ledger.last_cumulative(ALICE, 1) == 10


# ---------------------------------------------------------------- revert


def test_revert_restores_the_previous_voucher(ledger: VoucherLedger) -> None:
    first, second = sv(ALICE, 1, 10), sv(ALICE, 1, 20)
    ledger.record_voucher(first, PRICE)
    ledger.record_voucher(second, PRICE)
    assert ledger.revert_voucher(second, PRICE)
    assert ledger.last_cumulative(ALICE, 1) == 10
    [(back, _)] = ledger.unredeemed()
    assert back == first  # the exact voucher and signature that were replaced
    assert not ledger.revert_voucher(second, PRICE)  # once per failed call
    # The client rolls back too and resends the same amount for its next call; the node accepts it.
    ledger.record_voucher(sv(ALICE, 1, 20, tag="resent"), PRICE)
    assert not ledger.revert_voucher(second, PRICE)  # the old signature is not the one held


def test_revert_of_the_first_voucher_forgets_the_pair(ledger: VoucherLedger) -> None:
    v = sv(ALICE, 1, 10)
    ledger.record_voucher(v, PRICE)
    assert ledger.revert_voucher(v, PRICE)
    assert ledger.last_cumulative(ALICE, 1) == 0
    assert ledger.unredeemed() == []
    assert not ledger.revert_voucher(sv(BOB, 3, 10), PRICE)  # never recorded


def test_revert_of_a_covered_voucher_keeps_the_later_one(ledger: VoucherLedger) -> None:
    base, c1, c2 = sv(ALICE, 1, 10), sv(ALICE, 1, 20), sv(ALICE, 1, 30)
    for v in (base, c1, c2):
        ledger.record_voucher(v, PRICE)
    # Pipelined: c1's call fails while c2 is held; c2 covers c1's price, as the client's book counts it.
    assert ledger.revert_voucher(c1, PRICE)
    assert not ledger.revert_voucher(sv(ALICE, 1, 30, tag="other signature"), PRICE)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (30, 20)
    # c2's call fails too: back below both, where the client's book rolls back to.
    assert ledger.revert_voucher(c2, PRICE)
    assert ledger.unredeemed() == [(base, 0)]
    assert ledger.served_amount(ALICE, 1) == 10


def test_pipelined_failures_in_either_order_end_at_the_same_voucher(ledger: VoucherLedger) -> None:
    base, c1, c2 = sv(ALICE, 1, 10), sv(ALICE, 1, 20), sv(ALICE, 1, 30)
    for v in (base, c1, c2):
        ledger.record_voucher(v, PRICE)
    assert ledger.revert_voucher(c2, PRICE)
    assert ledger.last_cumulative(ALICE, 1) == 20
    assert ledger.revert_voucher(c1, PRICE)
    assert ledger.unredeemed() == [(base, 0)]


def test_revert_history_is_bounded(ledger: VoucherLedger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_mod, "VOUCHER_HISTORY", 3)
    vouchers = [sv(ALICE, 1, 10 * k) for k in range(1, 7)]
    for v in vouchers:
        ledger.record_voucher(v, PRICE)
    assert not ledger.revert_voucher(vouchers[2], PRICE)  # pushed out of the history
    for v in reversed(vouchers[3:]):
        assert ledger.revert_voucher(v, PRICE)
    # The calls of 10, 20 and 30 are still served and their vouchers are gone from the history: 40 stays,
    # the one voucher left that pays for them (falling back to nothing would leave them unpaid).
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (40, 30)


def test_revert_refuses_once_a_redemption_carries_it(ledger: VoucherLedger) -> None:
    v = sv(ALICE, 1, 10)
    ledger.record_voucher(v, PRICE)
    ledger.mark_pending([v], TX1)
    assert not ledger.revert_voucher(v, PRICE)
    ledger.mark_redeemed([v], TX1)
    assert not ledger.revert_voucher(v, PRICE)
    assert ledger.last_cumulative(ALICE, 1) == 10
    # A voucher above the redeemed one reverts, falling back to what the chain paid.
    v2 = sv(ALICE, 1, 20)
    ledger.record_voucher(v2, PRICE)
    assert ledger.revert_voucher(v2, PRICE)
    assert ledger.last_cumulative(ALICE, 1) == 10
    assert ledger.unredeemed() == []
    assert ledger.cumulative_for(ALICE) == {1: 10}


# ---------------------------------------------------------------- redemptions


def test_redemption_lifecycle(ledger: VoucherLedger, clock: Clock) -> None:
    a1, b1 = sv(ALICE, 1, 30), sv(BOB, 1, 10)
    ledger.record_voucher(a1, 10)
    ledger.record_voucher(b1, 10)
    ledger.record_voucher(sv(ALICE, 2, 10), 10)
    assert ledger.outstanding_amount(ALICE) == 40
    assert [v for v, _ in ledger.unredeemed(expert_id=1)] == [b1, a1]  # by expert, then client

    ledger.mark_pending([a1, b1], TX1)
    pending = {p.client: p for p in ledger.pending()}
    p_alice, p_bob = pending[ALICE], pending[BOB]
    assert p_alice == PendingRedemption(ALICE, 1, 30, "0x" + TX1.hex(), clock.now, 1)
    assert p_bob.amount == 10
    assert len(ledger.unredeemed(expert_id=1)) == 2  # pending is still unredeemed
    assert ledger.unredeemed(expert_id=1, include_pending=False) == []
    assert ledger.stats()["pending"] == 2 and ledger.stats()["pending_amount"] == 40
    assert ledger.outstanding_amount(ALICE) == 40  # not paid until confirmed

    # A newer voucher arrives while the redemption is in flight: it is offered again.
    a2 = sv(ALICE, 1, 40)
    ledger.record_voucher(a2, 10)
    assert [v for v, _ in ledger.unredeemed(expert_id=1, include_pending=False)] == [a2]

    ledger.mark_redeemed([a1], TX1)
    ledger.mark_failed([b1], "reverted: EscrowInsufficientBalance")
    assert ledger.pending() == []
    assert ledger.unredeemed(expert_id=1) == [(b1, 0), (a2, 30)]
    assert ledger.outstanding_amount(ALICE) == 20
    stats = ledger.stats()
    assert (stats["total_redeemed"], stats["failed"], stats["pending"]) == (30, 1, 0)

    ledger.mark_pending([a2, b1], TX2)
    ledger.mark_redeemed([a2, b1], TX2)
    assert ledger.unredeemed(expert_id=1) == []
    assert ledger.stats()["failed"] == 0
    # Redeemed never goes backwards through mark_redeemed.
    ledger.mark_redeemed([a1], TX1)
    assert ledger.outstanding_amount(ALICE) == 10


def test_mark_failed_keeps_a_newer_pending_redemption(ledger: VoucherLedger) -> None:
    old, new = sv(ALICE, 1, 10), sv(ALICE, 1, 20)
    ledger.record_voucher(old, 10)
    ledger.record_voucher(new, 10)
    ledger.mark_pending([new], TX2)
    ledger.mark_failed([old], "dropped")
    [pending] = ledger.pending()
    assert (pending.amount, pending.tx_hash) == (20, TX2)


def test_attempts_count_until_a_redemption_lands(ledger: VoucherLedger) -> None:
    v = sv(ALICE, 1, 10)
    ledger.record_voucher(v, 10)
    for _ in range(3):
        ledger.mark_pending([v], TX1)
        ledger.mark_failed([v], "nonce too low")
    ledger.mark_pending([v], TX1)
    assert ledger.pending()[0].attempts == 4
    ledger.mark_redeemed([v], TX1)
    ledger.record_voucher(sv(ALICE, 1, 20), 10)
    ledger.mark_pending([sv(ALICE, 1, 20)], TX2)
    assert ledger.pending()[0].attempts == 1


def test_sync_redeemed_trusts_the_chain(ledger: VoucherLedger) -> None:
    v = sv(ALICE, 1, 50)
    ledger.record_voucher(v, 10)
    ledger.mark_pending([v], TX1)
    # The escrow paid only part of the voucher (balance ran short): the chain's figure wins.
    ledger.mark_redeemed([v], TX1)
    ledger.sync_redeemed(ALICE, 1, 35)
    assert ledger.unredeemed() == [(v, 35)]
    assert ledger.outstanding_amount(ALICE) == 15
    # A pending redemption the chain already covers is cleared.
    ledger.mark_pending([v], TX2)
    ledger.sync_redeemed(ALICE, 1, 50)
    assert ledger.pending() == [] and ledger.unredeemed() == []


def test_chain_redeemed_above_the_ledger_raises_the_bar(ledger: VoucherLedger) -> None:
    # A ledger restored from an old backup: the chain paid more than the ledger's latest voucher.
    ledger.record_voucher(sv(ALICE, 1, 10), 10)
    ledger.sync_redeemed(ALICE, 1, 100)
    ledger.sync_redeemed(ALICE, 2, 70)  # no voucher at all for expert 2
    assert ledger.last_cumulative(ALICE, 1) == 100
    assert ledger.cumulative_for(ALICE) == {1: 100, 2: 70}
    with pytest.raises(VoucherTooLowError) as info:
        ledger.record_voucher(sv(ALICE, 1, 105), 10)
    assert info.value.held == 100
    ledger.record_voucher(sv(ALICE, 1, 110), 10)
    ledger.record_voucher(sv(ALICE, 2, 80), 10)
    assert ledger.outstanding_amount(ALICE) == 20


def test_redemption_inputs_are_checked(ledger: VoucherLedger) -> None:
    with pytest.raises(MarketInputError):
        ledger.mark_pending([sv(ALICE, 1, 10)], "")
    with pytest.raises(MarketInputError):
        ledger.mark_redeemed(["not a voucher"], TX1)  # type: ignore[list-item]
    with pytest.raises(MarketInputError):
        ledger.sync_redeemed(ALICE, 1, -5)


# ---------------------------------------------------------------- receipts


def test_receipts_round_trip_and_first_one_wins(ledger: VoucherLedger, clock: Clock) -> None:
    r = signed_receipt(1)
    assert ledger.record_receipt(r, ALICE)
    stored = ledger.receipt(r.receipt.request_id)
    assert stored is not None
    assert (stored.signed, stored.client, stored.created_at) == (r, ALICE, clock.now)
    other = SignedReceipt(r.receipt, b"\x09" * 65)
    assert not ledger.record_receipt(other, BOB)
    assert ledger.receipt(r.receipt.request_id).signed == r  # type: ignore[union-attr]
    assert ledger.receipt(r.receipt.request_id, expert_id=2) is None
    assert ledger.receipt(b"\x00" * 32) is None
    # The same request id answered by a second expert on this node is kept apart.
    r2 = SignedReceipt(
        Receipt(2, b"\xaa" * 32, r.receipt.request_id, b"\x01" * 32, b"\x02" * 32, 2**100), b"\x08" * 65
    )
    assert ledger.record_receipt(r2, ALICE)
    assert ledger.receipt(r.receipt.request_id, expert_id=2).signed == r2  # type: ignore[union-attr]
    assert ledger.stats()["receipts"] == 2


def test_receipts_are_pruned_by_age_and_count(tmp_path: Path, clock: Clock) -> None:
    with VoucherLedger(tmp_path / "l.db", clock=clock, receipt_max_age_s=100, receipt_max_rows=5) as led:
        for i in range(4):
            led.record_receipt(signed_receipt(i), ALICE)
            clock.now += 10
        clock.now += 75  # receipts 0 and 1 are now older than 100 s
        assert led.prune_receipts() == 2
        assert led.receipt(signed_receipt(0).receipt.request_id) is None
        assert led.receipt(signed_receipt(2).receipt.request_id) is not None
        for i in range(10, 20):
            led.record_receipt(signed_receipt(i), ALICE)
            clock.now += 1
        assert led.prune_receipts() == 7  # 12 kept, the 7 oldest go
        assert led.stats()["receipts"] == 5
        assert led.receipt(signed_receipt(19).receipt.request_id) is not None
        assert led.receipt(signed_receipt(14).receipt.request_id) is None


def test_receipts_are_pruned_automatically(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ledger_mod, "_PRUNE_EVERY", 4)
    with VoucherLedger(tmp_path / "l.db", clock=clock, receipt_max_rows=3) as led:
        for i in range(8):
            clock.now += 1
            led.record_receipt(signed_receipt(i), ALICE)
        assert led.stats()["receipts"] == 3


# ---------------------------------------------------------------- lifecycle


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with VoucherLedger(path) as led:
        led.record_voucher(sv(ALICE, 1, 10), 10)
        led.record_voucher(sv(ALICE, 1, 20), 10)
        led.mark_pending([sv(ALICE, 1, 20)], TX1)
        led.record_receipt(signed_receipt(1), ALICE)
        before = led.stats()
    with VoucherLedger(path) as led:
        assert led.stats() == before
        assert led.unredeemed() == [(sv(ALICE, 1, 20), 0)]
        assert led.revert_voucher(sv(ALICE, 1, 20), PRICE) is False  # pending survives the restart too
        assert led.receipt(signed_receipt(1).receipt.request_id) is not None


def test_domain_binding(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    VoucherLedger(path, escrow="0xE5C0", chain_id=31337).close()
    VoucherLedger(path).close()  # no domain given: no check
    VoucherLedger(path, escrow="0xe5c0", chain_id=31337).close()  # same escrow, other spelling
    with pytest.raises(MarketConfigError, match="chain_id"):
        VoucherLedger(path, chain_id=1)
    with pytest.raises(MarketConfigError, match="escrow"):
        VoucherLedger(path, escrow="0xother")


def test_refuses_memory_newer_schema_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MarketConfigError):
        VoucherLedger(":memory:")
    with pytest.raises(MarketConfigError):
        VoucherLedger(tmp_path / "missing-dir" / "ledger.db")
    with pytest.raises(MarketConfigError):
        VoucherLedger(tmp_path / "l.db", busy_timeout_s=0)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(MarketConfigError, match="upgrade"):
        VoucherLedger(newer)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(MarketConfigError):
        VoucherLedger(garbage)


def test_closed_ledger_raises(tmp_path: Path) -> None:
    led = VoucherLedger(tmp_path / "l.db")
    led.close()
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.last_cumulative(ALICE, 1)
    with pytest.raises(LedgerError):
        led.record_voucher(sv(ALICE, 1, 10), 10)


# ---------------------------------------------------------------- threads


def test_same_voucher_from_many_threads_passes_once(ledger: VoucherLedger) -> None:
    voucher = sv(ALICE, 1, PRICE)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def worker() -> None:
        barrier.wait()
        try:
            ledger.record_voucher(voucher, PRICE)
            outcomes.append("ok")
        except VoucherTooLowError:
            outcomes.append("low")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["low"] * 7 + ["ok"]


def test_threads_with_increasing_vouchers_lose_nothing(ledger: VoucherLedger) -> None:
    def worker(n: int) -> None:
        client = f"0x{n:040x}"
        for k in range(1, 26):
            ledger.record_voucher(sv(client, k % 3, 10 * k), 10)
            if k % 5 == 0:
                ledger.record_receipt(signed_receipt(n * 1000 + k), client)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = ledger.stats()
    assert stats["vouchers"] == 6 * 3
    assert stats["receipts"] == 6 * 5
    for n in range(6):
        assert ledger.cumulative_for(f"0x{n:040x}") == {0: 240, 1: 250, 2: 230}


def test_a_zero_voucher_is_never_offered_for_redemption(ledger: VoucherLedger) -> None:
    ledger.record_voucher(sv(ALICE, 1, 0), 0)
    assert ledger.unredeemed() == []
    assert ledger.last_cumulative(ALICE, 1) == 0


def test_recently_redeemed_lists_what_a_reorg_could_still_take_back(ledger: VoucherLedger, clock: Clock) -> None:
    a, b = sv(ALICE, 1, 30), sv(BOB, 2, 20)
    ledger.record_voucher(a, 30)
    ledger.record_voucher(b, 20)
    ledger.mark_redeemed([a], TX1)
    clock.now += 100
    ledger.mark_redeemed([b], TX1)
    clock.now += 10
    tx = "0x" + TX1.hex()
    assert ledger.recently_redeemed(within_s=200) == [(ALICE, 1, 30, tx), (BOB, 2, 20, tx)]
    assert ledger.recently_redeemed(within_s=50) == [(BOB, 2, 20, tx)]
    assert ledger.recently_redeemed(within_s=200, settled_s=50) == [(ALICE, 1, 30, tx)]  # b is too fresh yet
    ledger.sync_redeemed(CAROL, 4, 7)  # adopted from the chain: no transaction of this ledger's
    assert ledger.recently_redeemed(within_s=5)[-1] == (CAROL, 4, 7, None)
    ledger.record_voucher(sv(ALICE, 3, 10), 10)  # never redeemed: not listed
    assert [r[:2] for r in ledger.recently_redeemed(within_s=5)] == [(CAROL, 4)]


def test_a_failed_call_carrying_an_amount_already_held_never_lowers_what_is_held(ledger: VoucherLedger) -> None:
    # Found by tests/reliability/test_handler_fuzz.py: the client paid ahead, then a call carried the held
    # amount again under a new signature and failed on the node (deadline). Its revert must not take the
    # earlier voucher of that amount with it.
    ledger.record_voucher(sv(ALICE, 1, 29), 10)
    ledger.record_voucher(sv(ALICE, 1, 30), 10)  # 30 held, 20 served: 10 paid ahead
    again = sv(ALICE, 1, 30, tag="same amount, new signature")
    ledger.record_voucher(again, 10)
    assert ledger.revert_voucher(again, 10)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (30, 20)
    [(held, _)] = ledger.unredeemed()
    assert held == sv(ALICE, 1, 30)  # the voucher that first paid 30 is the one kept
    assert not ledger.revert_voucher(again, 10)  # once per failed call


def test_the_same_voucher_twice_pays_two_calls_and_two_reverts_undo_both(ledger: VoucherLedger) -> None:
    v = sv(ALICE, 1, 30)
    ledger.record_voucher(sv(ALICE, 1, 10), 10)
    ledger.record_voucher(v, 10)  # paid ahead: 30 held, 20 served
    ledger.record_voucher(v, 10)  # repeated: 30 served
    assert ledger.revert_voucher(v, 10)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (30, 20)
    assert ledger.revert_voucher(v, 10)
    assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (10, 10)
    assert not ledger.revert_voucher(v, 10)


def test_a_schema_1_ledger_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE voucher_history (client_key TEXT NOT NULL, expert_id TEXT NOT NULL, cumulative BLOB NOT NULL,
               signature BLOB NOT NULL, PRIMARY KEY (client_key, expert_id, cumulative)) WITHOUT ROWID;
           CREATE TABLE vouchers (client_key TEXT NOT NULL, expert_id TEXT NOT NULL, client TEXT NOT NULL,
               cumulative BLOB NOT NULL, signature BLOB NOT NULL, updated_at REAL NOT NULL,
               PRIMARY KEY (client_key, expert_id)) WITHOUT ROWID;
           PRAGMA user_version=1;"""
    )
    old = sv(ALICE, 1, 20)
    for table, extra in (("voucher_history", ()), ("vouchers", (ALICE, 0.0))):
        cols = "client_key, expert_id, cumulative, signature" + (", client, updated_at" if extra else "")
        conn.execute(f"INSERT INTO {table} ({cols}) VALUES (?, ?, ?, ?{', ?, ?' if extra else ''})",
                     (ALICE.lower(), "1", (20).to_bytes(32, "big"), old.signature, *extra))
    conn.commit()
    conn.close()
    with VoucherLedger(path) as ledger:
        # Everything held counts as served (no served row yet): the next call needs one more price.
        assert (ledger.last_cumulative(ALICE, 1), ledger.served_amount(ALICE, 1)) == (20, 20)
        with pytest.raises(VoucherTooLowError):
            ledger.record_voucher(sv(ALICE, 1, 25), 10)
        nxt = sv(ALICE, 1, 30)
        ledger.record_voucher(nxt, 10)
        assert ledger.revert_voucher(nxt, 10)
        assert ledger.unredeemed() == [(old, 0)]  # the upgraded history still falls back
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == ledger_mod.SCHEMA_VERSION
