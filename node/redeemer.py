"""Turns the vouchers in the node's ledger into money: redeems the latest voucher per client in batches.

A batch goes out when what the node is owed reaches `threshold_wei`, or when the oldest unredeemed amount
has waited `max_age_s`, or on demand (`moe expert redeem`). One `redeemMany` transaction pays the operator
for up to `max_batch` (client, expert) pairs, so gas per call tends to zero as calls per redemption grow.

Failures are retried on the next round with a back-off; nothing is dropped. After every transaction (and at
start-up) the chain's `redeemed()` is adopted for each pair involved, because the escrow may pay less than a
voucher when a client's balance ran short, and because the chain is the truth after a crash between sending a
transaction and recording it.

A mined redemption is not final until the chain says so: a reorg can drop it, and then the client could
withdraw money the node believes it holds. So every `recheck_s` (and at start-up) the redemptions of the last
`reorg_window_s` are checked again: one receipt lookup per transaction, and the pairs of a transaction the
chain no longer has are read with `redeemed()`; one the chain now shows less for goes back to unredeemed (its
latest voucher is still in the ledger, and still good) and is redeemed again at once. `recheck_s` must stay
well below the escrow's withdrawal delay (600 s on the devnet, days on a public chain), the time a client
waits before it can take its deposit back: that is the time the node has to redeem again.

It does blocking chain and SQLite I/O: run `redeem_once` in a worker thread (`run` does). A blocked chain
call cannot be interrupted, so `run` never waits for one when it is cancelled: the round's thread is
abandoned (rounds take a lock, so an abandoned round and the next never overlap), and the last round on the
way out waits at most `shutdown_s`. Whatever it did not redeem stays in the ledger for the next start, and a
transaction that went out unrecorded is adopted from the chain's `redeemed()` then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from market.chain.contracts import MarketChain
from market.errors import ContractRevertError, MarketError
from market.types import SignedVoucher
from node.ledger import VoucherLedger

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RedeemPolicy:
    threshold_wei: int = 10**16
    max_age_s: float = 30.0
    max_batch: int = 500
    interval_s: float = 2.0
    max_backoff_s: float = 60.0
    shutdown_s: float = 15.0  # the most the last round on the way out waits for the chain
    reorg_window_s: float = 3600.0  # redemptions this recent are checked against the chain again...
    recheck_s: float = 60.0  # ...this often (and at start-up), once at least this old


@dataclass(frozen=True, slots=True)
class RedeemReport:
    """What one round did."""

    vouchers: int
    paid_wei: int
    gas_used: int
    transactions: int
    errors: tuple[str, ...] = ()


class Redeemer:
    """Redeems this node's vouchers for the expert ids it serves."""

    def __init__(
        self,
        ledger: VoucherLedger,
        chain: MarketChain,
        expert_ids: Iterable[int],
        policy: RedeemPolicy | None = None,
    ) -> None:
        self.ledger = ledger
        self.chain = chain
        self.expert_ids = frozenset(expert_ids)
        self.policy = policy or RedeemPolicy()
        self._owed_since: float | None = None
        self._failures = 0
        self._next_try = 0.0
        self.total_paid = 0
        self.total_gas = 0
        self.total_vouchers = 0
        self._round = threading.Lock()  # one round at a time, abandoned ones included
        self._next_recheck = 0.0
        self._taken_back = False  # a re-check found a redemption gone: the next round redeems at once
        self.total_reorged = 0  # wei a reorg took back and the redeemer redeemed again

    def _pending_items(self) -> list[tuple[SignedVoucher, int]]:
        return [item for item in self.ledger.unredeemed() if item[0].voucher.expert_id in self.expert_ids]

    def sync_from_chain(self) -> None:
        """Adopts the chain's redeemed amounts for every pair with unredeemed vouchers and every pair redeemed
        within `reorg_window_s` (start-up, after errors)."""
        with self._round:
            for signed, _ in self._pending_items():
                self._sync(signed)
            self._recheck(settled_s=0.0)

    def recheck_redeemed(self) -> int:
        """Reads the chain's `redeemed()` again for the pairs redeemed within `reorg_window_s` (and at least
        `recheck_s` ago); a pair the chain shows less for goes back to unredeemed. Returns the wei taken back."""
        with self._round:
            return self._recheck(settled_s=self.policy.recheck_s)

    def _recheck(self, settled_s: float) -> int:
        """One receipt lookup per recent redemption transaction; the pairs of a transaction the chain no longer
        has (and pairs adopted without one) are read one by one."""
        taken_back = 0
        standing: dict[str, bool] = {}
        for client, expert_id, redeemed, tx in self.ledger.recently_redeemed(self.policy.reorg_window_s, settled_s):
            if expert_id not in self.expert_ids:
                continue
            if tx is not None:
                if tx not in standing:
                    standing[tx] = self.chain.transaction_succeeded(tx)
                if standing[tx]:
                    continue
            on_chain = self.chain.redeemed(client, expert_id)
            if on_chain < redeemed:
                logger.warning(
                    "the chain took back a redemption (a reorg?): expert %d was paid %d by %s, now %d; "
                    "redeeming it again", expert_id, redeemed, client, on_chain,
                )
                self.ledger.sync_redeemed(client, expert_id, on_chain)
                taken_back += redeemed - on_chain
        self.total_reorged += taken_back
        self._taken_back = self._taken_back or taken_back > 0
        return taken_back

    def owed(self) -> int:
        return sum(signed.voucher.cumulative_amount - redeemed for signed, redeemed in self._pending_items())

    def due(self, now: float | None = None) -> bool:
        """Whether a round should redeem now (threshold reached or the oldest amount waited long enough)."""
        now = time.monotonic() if now is None else now
        owed = self.owed()
        if owed <= 0:
            self._owed_since = None
            return False
        if self._owed_since is None:
            self._owed_since = now
        return owed >= self.policy.threshold_wei or now - self._owed_since >= self.policy.max_age_s

    def redeem_once(self, *, force: bool = False) -> RedeemReport:
        """One round: redeem every unredeemed voucher in batches if due (or `force`)."""
        with self._round:
            return self._round_locked(force)

    def _round_locked(self, force: bool) -> RedeemReport:
        now = time.monotonic()
        if now >= self._next_recheck:
            self._next_recheck = now + self.policy.recheck_s
            try:
                self._recheck(settled_s=self.policy.recheck_s)
            except MarketError as exc:
                logger.warning("could not check recent redemptions against the chain: %s", exc)
        force, self._taken_back = force or self._taken_back, False
        if not force and (now < self._next_try or not self.due(now)):
            return RedeemReport(0, 0, 0, 0)
        items = self._pending_items()
        vouchers = paid = gas = txs = 0
        errors: list[str] = []
        for start in range(0, len(items), self.policy.max_batch):
            chunk = items[start : start + self.policy.max_batch]
            try:
                result = self._redeem_batch(chunk)
            except MarketError as exc:
                errors.append(str(exc))
                continue
            vouchers += len(chunk)
            paid += result[0]
            gas += result[1]
            txs += 1
        if errors:
            self._failures += 1
            self._next_try = now + min(self.policy.interval_s * 2**self._failures, self.policy.max_backoff_s)
            logger.warning("redemption failed (%d in a row): %s", self._failures, errors[0])
        else:
            self._failures = 0
            self._next_try = 0.0
            self._owed_since = None
        self.total_paid += paid
        self.total_gas += gas
        self.total_vouchers += vouchers
        if vouchers:
            logger.info("redeemed %d vouchers for %d wei in %d tx (%d gas)", vouchers, paid, txs, gas)
        return RedeemReport(vouchers, paid, gas, txs, tuple(errors))

    def _redeem_batch(self, chunk: Sequence[tuple[SignedVoucher, int]]) -> tuple[int, int]:
        batch = [signed for signed, _ in chunk]
        try:
            result = self.chain.redeem_many(batch)
        except ContractRevertError as exc:
            if exc.name in ("EscrowVoucherNotIncreasing", "EscrowInsufficientBalance"):
                # Some pair was already redeemed (a crash after sending) or its client ran dry: adopt the
                # chain's view, then redeem what is still redeemable one by one.
                return self._redeem_individually(batch)
            self.ledger.mark_failed(batch, str(exc))
            raise
        except MarketError as exc:
            self.ledger.mark_failed(batch, str(exc))
            raise
        self.ledger.mark_redeemed(batch, result.tx.tx_hash)
        expected = sum(signed.voucher.cumulative_amount - redeemed for signed, redeemed in chunk)
        if result.paid != expected:
            # A client's balance ran short: the escrow paid less; the chain's figures are the truth.
            for signed in batch:
                self._sync(signed)
        return result.paid, result.gas_used

    def _sync(self, signed: SignedVoucher) -> None:
        v = signed.voucher
        self.ledger.sync_redeemed(v.client, v.expert_id, self.chain.redeemed(v.client, v.expert_id))

    def _redeem_individually(self, batch: Sequence[SignedVoucher]) -> tuple[int, int]:
        paid = gas = 0
        for signed in batch:
            self._sync(signed)
            v = signed.voucher
            if self.chain.redeemed(v.client, v.expert_id) >= v.cumulative_amount:
                continue
            try:
                result = self.chain.redeem(signed)
            except ContractRevertError as exc:
                self.ledger.mark_failed([signed], str(exc))
                continue
            self.ledger.mark_redeemed([signed], result.tx.tx_hash)  # the transaction a reorg re-check looks up
            self._sync(signed)
            paid += result.paid
            gas += result.gas_used
        return paid, gas

    async def run(self) -> None:
        """Redeem in the background until cancelled; a last forced round (at most `shutdown_s`) on the way out."""
        try:
            await trio.to_thread.run_sync(self.sync_from_chain, abandon_on_cancel=True)
            while True:
                await trio.sleep(self.policy.interval_s)
                try:
                    await trio.to_thread.run_sync(self.redeem_once, abandon_on_cancel=True)
                except Exception:  # a redemption round must never take the node down
                    logger.exception("redemption round failed")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(self.policy.shutdown_s) as last:
                try:
                    await trio.to_thread.run_sync(lambda: self.redeem_once(force=True), abandon_on_cancel=True)
                except Exception:
                    logger.exception("final redemption failed; the vouchers stay in the ledger")
            if last.cancelled_caught:
                logger.warning(
                    "the chain did not answer within %.0f s on the way out; what is owed stays in the ledger "
                    "and is redeemed at the next start", self.policy.shutdown_s,
                )
