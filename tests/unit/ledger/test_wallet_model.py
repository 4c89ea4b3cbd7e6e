"""A model of the voucher book's rules, checked against market.wallet.VoucherBook by a hypothesis state machine.

The model is the rules of the module docstring written plainly: per expert, `settled`, the reservations in
flight and the resync mark; ``cumulative = max(settled, in flight)``. Reopening the book (a restart) is one of
the steps. Besides equality with the model after every step, the invariants are:

- every amount `reserve` returns is above everything in flight and above `settled` (amounts that may reach
  the node strictly increase), and above the node's figure plus the price after a resync;
- with nothing in flight, nothing is at risk (``cumulative == settled``);
- what is at risk (``cumulative - settled``) is at most the prices of the calls in flight plus those of failed
  calls whose price rides on a voucher still in flight (rule 3 of market.wallet).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from market.errors import MarketInputError
from market.wallet import VoucherBook

EXPERTS = (1, 2**200)
PRICES = st.sampled_from([1, 3, 10, 2**70])


@dataclass
class ExpertModel:
    settled: int = 0
    in_flight: dict[int, int] = field(default_factory=dict)  # amount -> price
    covered: list[tuple[int, int]] = field(
        default_factory=list
    )  # (amount, price) of failed calls still paid for
    needs_resync: bool = False

    @property
    def cumulative(self) -> int:
        return max([self.settled, *self.in_flight])

    def prune_covered(self) -> None:
        top = self.cumulative
        self.covered = [(a, p) for a, p in self.covered if self.settled < a < top]


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Durability is not what this test checks (test_ledger_durability does): tmpfs makes fsync free.
        shm = Path("/dev/shm")
        self.dir = Path(tempfile.mkdtemp(prefix="wallet-model-", dir=shm if shm.is_dir() else None))
        self.book = self._open()
        self.model = {e: ExpertModel() for e in EXPERTS}

    def _open(self) -> VoucherBook:
        return VoucherBook(self.dir / "w.db", escrow="0x" + "ab" * 20, chain_id=1, client="0x" + "cd" * 20)

    def teardown(self) -> None:
        self.book.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _calls(self) -> list[tuple[int, int]]:
        return [(e, a) for e, m in self.model.items() for a in sorted(m.in_flight)]

    @rule(expert=st.sampled_from(EXPERTS), price=PRICES)
    def reserve(self, expert: int, price: int) -> None:
        m = self.model[expert]
        amount = self.book.reserve(expert, price)
        assert amount == m.cumulative + price
        assert amount > m.settled and all(amount > a for a in m.in_flight)
        m.in_flight[amount] = price

    @precondition(lambda self: self._calls())
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        expert, amount = data.draw(st.sampled_from(self._calls()))
        m = self.model[expert]
        self.book.confirm(expert, amount)
        del m.in_flight[amount]
        m.settled = max(m.settled, amount)
        m.prune_covered()

    @precondition(lambda self: self._calls())
    @rule(data=st.data(), kept=st.booleans())
    def release(self, data: st.DataObject, kept: bool) -> None:
        expert, amount = data.draw(st.sampled_from(self._calls()))
        m = self.model[expert]
        before = m.cumulative
        rolled_back = self.book.release(expert, amount, kept=kept)
        price = m.in_flight.pop(amount)
        if kept:
            m.settled = max(m.settled, amount)
            m.needs_resync = True
        elif amount < m.cumulative:
            m.covered.append((amount, price))
        assert rolled_back == (m.cumulative < before)
        assert not (rolled_back and kept)
        m.prune_covered()

    @rule(expert=st.sampled_from(EXPERTS), delta=st.integers(-30, 30), price=PRICES)
    def resync_then_reserve(self, expert: int, delta: int, price: int) -> None:
        m = self.model[expert]
        node = max(0, m.cumulative + delta)
        assert self.book.resync(expert, node) == max(m.cumulative, node)
        m.settled = max(m.settled, node)
        m.needs_resync = False
        m.prune_covered()
        amount = self.book.reserve(expert, price)
        assert amount >= node + price
        assert amount == m.cumulative + price
        m.in_flight[amount] = price

    @rule(expert=st.sampled_from(EXPERTS), extra=st.integers(1, 5))
    def confirm_of_an_amount_never_reserved_is_refused(self, expert: int, extra: int) -> None:
        m = self.model[expert]
        try:
            self.book.confirm(expert, m.cumulative + extra)
        except MarketInputError:
            pass
        else:
            raise AssertionError("confirm above everything reserved was accepted")

    @rule()
    def restart(self) -> None:
        self.book.close()
        self.book = self._open()
        for m in self.model.values():
            if m.in_flight:
                m.settled = max(m.settled, *m.in_flight)
                m.needs_resync = True
                m.in_flight.clear()
            m.prune_covered()

    @invariant()
    def matches_the_model(self) -> None:
        for expert, m in self.model.items():
            assert self.book.cumulative(expert) == m.cumulative
            assert self.book.settled(expert) == m.settled
            assert self.book.needs_resync(expert) == m.needs_resync
            assert [(i.cumulative, i.price) for i in self.book.in_flight(expert)] == sorted(
                m.in_flight.items()
            )

    @invariant()
    def risk_is_bounded(self) -> None:
        for expert, m in self.model.items():
            at_risk = self.book.cumulative(expert) - self.book.settled(expert)
            if not m.in_flight:
                assert at_risk == 0
            assert at_risk <= sum(m.in_flight.values()) + sum(p for _, p in m.covered)

    @invariant()
    def in_flight_amounts_are_distinct(self) -> None:
        amounts = [i.cumulative for i in self.book.in_flight(EXPERTS[0])]
        assert len(amounts) == len(set(amounts))


BookMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBookModel = BookMachine.TestCase
