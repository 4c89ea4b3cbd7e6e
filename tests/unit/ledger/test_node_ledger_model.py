"""The node ledger's voucher and redemption rules against a plain model, driven by a hypothesis state machine.

The model: the vouchers recorded and not reverted (the history), the latest one, what the calls served cost,
what the chain confirmed and the redemption in flight. Checked after every step: what the node holds
(`last_cumulative`), what it served (`served_amount`, never above what it holds: every call served is paid
by a voucher the node keeps), what it would redeem (`unredeemed`), what it is owed (`outstanding_amount`)
and the pending redemption. Among the steps: vouchers above, at and below what is held (out of order: taken
when the held vouchers pay for the call, refused otherwise, changing nothing), reverts of any voucher ever
seen (pipelined failures, replays, reverts of redeemed vouchers), partial payments and reorgs through
`sync_redeemed`, and restarts.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from market.types import SignedVoucher, Voucher
from node.ledger import VoucherLedger, VoucherTooLowError

CLIENT, EXPERT = "0x" + "c1" * 20, 7


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        shm = Path("/dev/shm")  # durability is test_ledger_durability's job; tmpfs makes fsync free
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-model-", dir=shm if shm.is_dir() else None))
        self.ledger = VoucherLedger(self.dir / "l.db")
        # amount -> signature -> calls it pays for (0: kept only as cover); above what the chain paid
        self.history: dict[int, dict[bytes, int]] = {}
        self.latest: tuple[int, bytes] | None = None
        self.redeemed = 0
        self.pending: int | None = None
        self.served_row: int | None = None  # None: no row yet (then everything held counts as served)
        self.max_redeemed = 0  # a reorg may take back a payment the node had no voucher left for
        self.seen: list[tuple[SignedVoucher, int]] = []
        self.counter = 0

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def held(self) -> int:
        return max(self.latest[0] if self.latest else 0, self.redeemed)

    @property
    def served(self) -> int:
        return self.held if self.served_row is None else min(self.served_row, self.held)

    def _latest_voucher(self) -> SignedVoucher:
        assert self.latest is not None
        return SignedVoucher(Voucher(CLIENT, EXPERT, self.latest[0]), self.latest[1])

    def _prune(self) -> None:
        self.history = {a: sigs for a, sigs in self.history.items() if a > self.redeemed}
        if self.pending is not None and self.pending <= self.redeemed:
            self.pending = None
        # Paid on chain beyond every voucher held (an old backup): those calls were served.
        if (self.latest is None or self.redeemed > self.latest[0]) and self.served_row is not None:
            self.served_row = max(self.served_row, self.redeemed)

    @rule(offset=st.integers(-15, 30), price=st.sampled_from([0, 5, 10]))
    def record(self, offset: int, price: int) -> None:
        amount = max(0, self.held + offset)
        self.counter += 1
        voucher = SignedVoucher(
            Voucher(CLIENT, EXPERT, amount), hashlib.sha256(b"%d" % self.counter).digest()
        )
        self.seen.append((voucher, price))
        self._offer(voucher, price)

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        """A voucher sent again (a resent request, or a client reusing what it paid ahead)."""
        self._offer(*data.draw(st.sampled_from(self.seen)))

    def _offer(self, voucher: SignedVoucher, price: int) -> None:
        amount, sig = voucher.voucher.cumulative_amount, voucher.signature
        if max(self.held, amount) >= self.served + price and (amount > self.redeemed or price == 0):
            self.ledger.record_voucher(voucher, price)
            self.served_row = self.served + price
            if amount > self.redeemed:
                if self.latest is None or amount > self.latest[0]:
                    self.latest = (amount, sig)
                sigs = self.history.setdefault(amount, {})
                sigs[sig] = sigs.get(sig, 0) + 1
        else:
            try:
                self.ledger.record_voucher(voucher, price)
            except VoucherTooLowError as err:
                assert (err.held, err.expected) == (self.held, max(self.served + price, self.redeemed + 1))
            else:
                raise AssertionError("a voucher that does not pay for the call was accepted")

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        voucher, price = data.draw(st.sampled_from(self.seen))
        amount, sig = voucher.voucher.cumulative_amount, voucher.signature
        expected = False
        uses = self.history.get(amount, {}).get(sig, 0)
        if uses >= 1 and max(self.redeemed, self.pending or 0) < amount:
            expected = True
            self.served_row = max(0, self.served - price)
            others = sorted(s for s in self.history[amount] if s != sig)
            rest = max((a for a in self.history if a != amount), default=0)
            if uses > 1 or (not others and max(rest, self.redeemed) < self.served_row):
                self.history[amount][sig] = uses - 1  # still pays another call, or still needed as cover
            else:
                del self.history[amount][sig]
                if not self.history[amount]:
                    del self.history[amount]
                if self.latest == (amount, sig):
                    if others:
                        self.latest = (amount, others[0])
                    else:
                        top = max(self.history, default=None)
                        self.latest = None if top is None else (top, min(self.history[top]))
        assert self.ledger.revert_voucher(voucher, price) == expected

    @precondition(lambda self: self.latest)
    @rule()
    def send_redemption(self) -> None:
        self.ledger.mark_pending([self._latest_voucher()], b"\x01" * 32)
        self.pending = self.latest[0]  # type: ignore[index]

    @precondition(lambda self: self.latest)
    @rule(ok=st.booleans())
    def redemption_ends(self, ok: bool) -> None:
        voucher = self._latest_voucher()
        if ok:
            self.ledger.mark_redeemed([voucher], b"\x01" * 32)
            self.redeemed = max(self.redeemed, voucher.voucher.cumulative_amount)
            self.max_redeemed = max(self.max_redeemed, self.redeemed)
        else:
            self.ledger.mark_failed([voucher], "reverted")
            if self.pending is not None and self.pending <= voucher.voucher.cumulative_amount:
                self.pending = None
        self._prune()

    @rule(delta=st.integers(-10, 10))
    def chain_says(self, delta: int) -> None:
        self.redeemed = max(0, self.redeemed + delta)
        self.max_redeemed = max(self.max_redeemed, self.redeemed)
        self.ledger.sync_redeemed(CLIENT, EXPERT, self.redeemed)
        self._prune()

    @rule()
    def restart(self) -> None:
        self.ledger.close()
        self.ledger = VoucherLedger(self.dir / "l.db")

    @invariant()
    def matches_the_model(self) -> None:
        assert self.ledger.last_cumulative(CLIENT, EXPERT) == self.held
        assert self.ledger.served_amount(CLIENT, EXPERT) == self.served
        # The money rule itself, on what is stored: no call served without a voucher held that pays for it.
        row = self.ledger._db.conn().execute("SELECT amount FROM served").fetchone()
        assert (None if row is None else int.from_bytes(row[0], "big")) == self.served_row
        assert self.served_row is None or self.served_row <= max(self.held, self.max_redeemed)
        if self.latest is not None and self.latest[0] > self.redeemed:
            assert self.ledger.unredeemed() == [(self._latest_voucher(), self.redeemed)]
        else:
            assert self.ledger.unredeemed() == []
        owed = max(0, self.latest[0] - self.redeemed) if self.latest else 0
        assert self.ledger.outstanding_amount(CLIENT) == owed
        assert [p.amount for p in self.ledger.pending()] == ([] if self.pending is None else [self.pending])


LedgerMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerModel = LedgerMachine.TestCase
