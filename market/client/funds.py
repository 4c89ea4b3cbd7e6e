"""How much the client may still sign for: the escrow deposit minus what it signed and nobody redeemed yet.

    free = (escrow balance + sum of redeemed amounts - pending withdrawal) - signed

The first term is a snapshot of the chain: a redemption moves wei from the balance to the redeemed amounts,
so the sum does not change when nodes redeem, and the snapshot stays right until the client itself deposits
or withdraws (it is refreshed then, and whenever it would refuse a call). `signed` is the voucher book's
total, calls in flight included. A reservation is checked and written under one lock, so concurrent calls
can never sign for more than the deposit covers: the check is made before any voucher leaves, and a call
the deposit cannot cover raises InsufficientDepositError having paid nothing.

Blocking (SQLite and chain reads): call from worker threads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from market.errors import InsufficientDepositError
from market.wallet import VoucherBook

__all__ = ["EscrowReader", "Funds", "FundsSnapshot"]

logger = logging.getLogger(__name__)


class EscrowReader(Protocol):
    def escrow_account(self, client: str | None = None) -> Any: ...

    def redeemed(self, client: str, expert_id: int) -> int: ...


@dataclass(frozen=True, slots=True)
class FundsSnapshot:
    balance: int
    redeemed: int
    withdraw_pending: int

    @property
    def funds(self) -> int:
        return self.balance + self.redeemed - self.withdraw_pending


class Funds:
    """The deposit check in front of `VoucherBook.reserve` (see the module docstring)."""

    def __init__(self, chain: EscrowReader, wallet: VoucherBook, client: str) -> None:
        self._chain = chain
        self._wallet = wallet
        self._client = client
        self._lock = threading.Lock()
        self._snapshot: FundsSnapshot | None = None

    def refresh(self) -> FundsSnapshot:
        """Read the escrow account and the redeemed amounts of every expert this client has paid."""
        account = self._chain.escrow_account(self._client)
        redeemed = sum(self._chain.redeemed(self._client, eid) for eid in self._wallet.spent_per_expert())
        snapshot = FundsSnapshot(int(account.balance), int(redeemed), int(account.withdraw_amount))
        with self._lock:
            self._snapshot = snapshot
        return snapshot

    def invalidate(self) -> None:
        with self._lock:
            self._snapshot = None

    def _current(self) -> FundsSnapshot:
        snapshot = self._snapshot
        return snapshot if snapshot is not None else self.refresh()

    def free(self) -> int:
        return self._current().funds - self._wallet.spent()

    def check(self, amount: int, what: str = "the call") -> None:
        """InsufficientDepositError unless `amount` more wei can be signed now (refreshes once before refusing)."""
        if self._current().funds - self._wallet.spent() >= amount:
            return
        snapshot = self.refresh()
        spent = self._wallet.spent()
        if snapshot.funds - spent < amount:
            raise self._error(snapshot, spent, amount, what)

    def reserve(self, expert_id: int, price: int) -> int:
        """`VoucherBook.reserve(expert_id, price)` if the deposit covers it, else InsufficientDepositError."""
        with self._lock:
            snapshot = self._snapshot
        if snapshot is None:
            snapshot = self.refresh()
        with self._lock:
            spent = self._wallet.spent()
            if snapshot.funds - spent >= price:
                return self._wallet.reserve(expert_id, price)
        snapshot = self.refresh()
        with self._lock:
            spent = self._wallet.spent()
            if snapshot.funds - spent >= price:
                return self._wallet.reserve(expert_id, price)
        raise self._error(snapshot, spent, price, f"a call to expert {expert_id}")

    @staticmethod
    def _error(snapshot: FundsSnapshot, spent: int, amount: int, what: str) -> InsufficientDepositError:
        unredeemed = max(spent - snapshot.redeemed, 0)
        free = max(snapshot.funds - spent, 0)
        pending = (
            f", {snapshot.withdraw_pending} wei asked back (pending withdrawal)" if snapshot.withdraw_pending else ""
        )
        return InsufficientDepositError(
            f"{what} needs {amount} wei but only {free} wei of the escrow deposit is free (balance "
            f"{snapshot.balance} wei, {unredeemed} wei signed to experts and not yet redeemed{pending}); "
            f"deposit at least {amount - free} wei more with `moe client deposit` or Client.deposit()"
        )
