"""The client's voucher book against the node's ledger, through failures: nobody pays twice, nobody is short.

A loop of calls from one client to a few experts on one node, with the outcomes the wire can produce: a
result; an ``INTERNAL`` error (the node reverts the voucher and says so); a request lost before the node saw
it, or an answer lost after the node stored the voucher (the client cannot tell these apart: unknown); the
client crashing mid-call and restarting; pairs of pipelined calls; and groups of concurrent calls whose vouchers
reach the node in any order (separate streams). The client follows the protocol:
resync from the node's quote when the book asks for it, and on ``VOUCHER_TOO_LOW`` release and resync.

Checks, per expert: the node is paid for every call it computed (answered, or answer lost); the client pays
(by the node's vouchers) or has signed (by its book) at most one price more than the calls it was served,
per request lost before the node saw it and per failed pipelined call whose price a later voucher already
carried (both sides count it the same way); the book never counts less than the node holds (no surprise on
chain); the node never answers ``VOUCHER_TOO_LOW``, out of order vouchers included (each refusal would cost
the client a price).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from market.types import SignedVoucher, Voucher
from market.wallet import VoucherBook
from node.ledger import VoucherLedger, VoucherTooLowError

ESCROW, CLIENT = "0x" + "e5" * 20, "0x" + "c1" * 20
PRICES = {1: 10, 2: 3, 3: 2**80}


def signed(expert: int, amount: int) -> SignedVoucher:
    return SignedVoucher(
        Voucher(CLIENT, expert, amount), hashlib.sha256(f"{expert}:{amount}".encode()).digest() * 2
    )


@dataclass
class Tally:
    served: int = 0  # prices of calls the node computed (answered or answer lost)
    lost_requests: int = 0  # vouchers the client had to count as kept that never reached the node
    covered: int = 0  # failed pipelined calls whose price rides on a later voucher that was served
    too_low: int = 0


class World:
    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp, self.rng = tmp, rng
        self.node = VoucherLedger(tmp / "node.db")
        self.book = self._open_book()
        self.tally = {e: Tally() for e in PRICES}

    def _open_book(self) -> VoucherBook:
        return VoucherBook(self.tmp / "client.db", escrow=ESCROW, chain_id=31337, client=CLIENT)

    def close(self) -> None:
        self.book.close()
        self.node.close()

    def before_call(self, expert: int) -> None:
        if self.book.needs_resync(expert):
            self.book.resync(expert, self.node.cumulative_for(CLIENT).get(expert, 0))

    def send(self, expert: int) -> tuple[int, SignedVoucher]:
        """Reserves and delivers one voucher to the node; on VOUCHER_TOO_LOW, does what the client does."""
        price = PRICES[expert]
        for _ in range(2):
            amount = self.book.reserve(expert, price)
            voucher = signed(expert, amount)
            try:
                self.node.record_voucher(voucher, price)
                return amount, voucher
            except VoucherTooLowError as err:
                self.tally[expert].too_low += 1
                self.book.release(expert, amount, kept=False)
                self.book.resync(expert, err.held)
        raise AssertionError("still VOUCHER_TOO_LOW after a resync")

    def single_call(self, expert: int) -> None:
        price, tally = PRICES[expert], self.tally[expert]
        self.before_call(expert)
        outcome = self.rng.choice(["ok", "ok", "ok", "internal", "lost_request", "lost_answer", "crash"])
        if outcome == "lost_request":
            amount = self.book.reserve(expert, price)  # signed and sent, never arrives
            self.book.release(expert, amount, kept=True)
            tally.lost_requests += 1
            return
        amount, voucher = self.send(expert)
        if outcome == "ok":
            tally.served += price
            self.book.confirm(expert, amount)
        elif outcome == "internal":
            assert self.node.revert_voucher(voucher, price)
            self.book.release(expert, amount, kept=False)
        elif outcome == "lost_answer":
            tally.served += price
            self.book.release(expert, amount, kept=True)
        else:  # the client dies with the call in flight; the node served it
            tally.served += price
            self.book.close()
            self.book = self._open_book()

    def pipelined_pair(self, expert: int) -> None:
        """Two calls on one stream: both vouchers reach the node in order, then each ends ok or INTERNAL."""
        price, tally = PRICES[expert], self.tally[expert]
        self.before_call(expert)
        (a1, v1), (a2, v2) = self.send(expert), self.send(expert)
        ok1, ok2 = self.rng.random() < 0.6, self.rng.random() < 0.6
        for amount, voucher, ok in ((a1, v1, ok1), (a2, v2, ok2)):
            if ok:
                tally.served += price
                self.book.confirm(expert, amount)
            else:
                self.node.revert_voucher(voucher, price)  # a later voucher may carry its price: at most one
                self.book.release(expert, amount, kept=False)
        if not ok1 and ok2:
            tally.covered += 1

    def concurrent_calls(self, expert: int, n: int) -> None:
        """n calls in flight at once on separate streams: the vouchers reach the node in a random order, and
        each must pay for its own call. The answers come back and some calls fail on the node (INTERNAL)."""
        price, tally = PRICES[expert], self.tally[expert]
        self.before_call(expert)
        calls = [(amount, signed(expert, amount)) for amount in (self.book.reserve(expert, price) for _ in range(n))]
        arrival = calls[:]
        self.rng.shuffle(arrival)
        for _, voucher in arrival:
            try:
                self.node.record_voucher(voucher, price)
            except VoucherTooLowError:
                self.tally[expert].too_low += 1
                raise
        for i, (amount, voucher) in enumerate(calls):
            if self.rng.random() < 0.8:
                tally.served += price
                self.book.confirm(expert, amount)
            else:
                assert self.node.revert_voucher(voucher, price)
                self.book.release(expert, amount, kept=False)
                if i < n - 1:
                    tally.covered += 1  # a later voucher in flight carries its price, as for a pipelined pair
        amounts = [a for a, _ in calls]
        assert amounts == sorted(amounts)

    def check(self) -> None:
        for expert, price in PRICES.items():
            tally = self.tally[expert]
            held = self.node.last_cumulative(CLIENT, expert)
            assert held >= tally.served, f"expert {expert}: node short of pay for work it did"
            signed = self.book.cumulative(expert)
            # The book counts at least what the node can redeem: the client is never surprised on chain.
            assert signed >= held
            assert signed - tally.served <= price * (tally.lost_requests + tally.covered), (
                f"expert {expert} overpaid"
            )
            assert tally.too_low == 0


@pytest.fixture
def fast_dir(tmp_path: Path):
    """tmpfs where there is one: fsync is free there, and durability is test_ledger_durability's job."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="wallet-meets-ledger-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_wallet_and_ledger_agree_through_failures(fast_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    world = World(fast_dir, rng)
    try:
        for step in range(150):
            expert = rng.choice(list(PRICES))
            draw = rng.random()
            if draw < 0.2:
                world.pipelined_pair(expert)
            elif draw < 0.35:
                world.concurrent_calls(expert, rng.randint(2, 5))
            else:
                world.single_call(expert)
            if step % 10 == 0:
                world.check()
        for expert in PRICES:
            world.before_call(expert)
        world.check()
        assert world.book.in_flight() == []
        # Redeeming everything pays exactly what the node holds, once.
        for voucher, redeemed in world.node.unredeemed():
            assert redeemed == 0
            world.node.mark_redeemed([voucher], b"\x01" * 32)
        assert world.node.outstanding_amount(CLIENT) == 0
        assert world.node.stats()["total_redeemed"] == sum(
            world.node.last_cumulative(CLIENT, e) for e in PRICES
        )
    finally:
        world.close()
