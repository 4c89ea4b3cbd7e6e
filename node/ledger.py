"""The expert node's durable ledger: vouchers it was paid with, what it redeemed on chain, receipts it signed.

A voucher is money: once `record_voucher` returns, the voucher is committed to SQLite in WAL mode with
``synchronous=FULL`` (the WAL is fsynced on every commit), so a SIGKILL right after the call loses nothing,
and neither does a power loss on a disk that honours fsync. The node therefore records the voucher *before*
the answer leaves (docs/protocol.md). Redemption records are just as durable; receipts (the node's copies of
what it signed, not money) are committed without the fsync: they survive a SIGKILL, not a power loss.

Tables:

- ``vouchers``: the highest voucher per (client, expert_id): cumulative amount and signature.
- ``served``: per pair, the prices of the calls this node accepted a voucher for and did not revert. A voucher
  pays for one more call when ``max(held, its amount) >= served + price``: the highest voucher held must cover
  every call served. So vouchers may arrive in any order (concurrent calls of one client travel on separate
  streams): amount N+p arriving after N+2p is accepted, since N+2p already covers both calls, and the client
  pays exactly its calls (the older rule, "each voucher above the last", refused it and cost the client a
  price). A pair without a row (a ledger from before this table) counts everything held as served.
- ``voucher_history``: the last ``VOUCHER_HISTORY`` vouchers per pair above the redeemed amount, each with
  the number of calls it was accepted for (a voucher repeated while the client had paid ahead serves more
  than one), so that a call that failed on the node (``INTERNAL``: "the voucher for this call is not kept")
  can be undone with `revert_voucher`, also when calls are pipelined. It mirrors the client's book
  (market.wallet): a failed call's voucher is dropped, and the pair falls back to the highest voucher still
  standing, never below what the calls still served need. A voucher whose amount the node already holds
  under another signature never replaces it.
- ``redemptions``: what the chain confirmed as redeemed per (client, expert_id), the transaction in flight
  (hash and amount), attempts and the last error. The chain's ``redeemed()`` is the truth: `sync_redeemed`
  adopts it after a restart or a partly paid redemption.
- ``receipts``: the receipts this node signed, kept for ``receipt_max_age_s`` and at most ``receipt_max_rows``.

Amounts are wei up to 2**256 - 1, stored as 32-byte big-endian blobs (SQLite integers stop at 2**63, and
equal-length big-endian blobs compare like the numbers they encode). Expert ids (uint256 on chain) are
stored as decimal text. Clients are matched case-insensitively (checksummed or not, the address is the same);
the spelling the client signed with is kept.

Threads: one SQLite connection guarded by a lock; every write is one ``BEGIN IMMEDIATE`` transaction, so the
check and the write of `record_voucher` cannot interleave with another call (two requests carrying the same
voucher: exactly one passes). Other processes may open the same file (``moe expert redeem`` next to a
running node): ``BEGIN IMMEDIATE`` plus the busy timeout serialize them too.

This module checks amounts and ordering only; voucher and receipt signatures are opaque bytes here and are
verified by the server before they reach the ledger. It never logs signatures or whole vouchers.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from market.durable import DurableSqlite
from market.errors import MarketConfigError, MarketError, MarketInputError, PaymentError
from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher

__all__ = [
    "LedgerError",
    "PendingRedemption",
    "StoredReceipt",
    "VoucherLedger",
    "VoucherTooLowError",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the served table (an older moe-market would ignore it, so it must refuse the file)
MAX_UINT256 = 2**256 - 1
DEFAULT_RECEIPT_MAX_AGE_S = 30 * 24 * 3600.0
DEFAULT_RECEIPT_MAX_ROWS = 1_000_000
# Vouchers kept per (client, expert) for revert_voucher: more than the calls one client pipelines to one expert.
VOUCHER_HISTORY = 64
# Pruning scans an index; doing it on every insert would cost more than the insert itself.
_PRUNE_EVERY = 1024
_MAX_ERROR_CHARS = 2000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vouchers (
    client_key      TEXT NOT NULL,   -- lower-case address
    expert_id       TEXT NOT NULL,   -- decimal uint256
    client          TEXT NOT NULL,   -- the address as the client signed it
    cumulative      BLOB NOT NULL,   -- 32-byte big-endian wei
    signature       BLOB NOT NULL,
    updated_at      REAL NOT NULL,
    PRIMARY KEY (client_key, expert_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS served (
    client_key  TEXT NOT NULL,
    expert_id   TEXT NOT NULL,
    amount      BLOB NOT NULL,   -- prices of the calls accepted and not reverted, 32-byte big-endian wei
    PRIMARY KEY (client_key, expert_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS voucher_history (
    client_key  TEXT NOT NULL,
    expert_id   TEXT NOT NULL,
    cumulative  BLOB NOT NULL,
    signature   BLOB NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 1,  -- calls accepted with it and not reverted (0: kept as cover only)
    PRIMARY KEY (client_key, expert_id, cumulative, signature)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redemptions (
    client_key     TEXT NOT NULL,
    expert_id      TEXT NOT NULL,
    client         TEXT NOT NULL,
    redeemed       BLOB NOT NULL,    -- confirmed on chain
    redeemed_tx    TEXT,
    pending_tx     TEXT,             -- a redemption sent and not yet confirmed or failed
    pending_amount BLOB,
    pending_since  REAL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    updated_at     REAL NOT NULL,
    PRIMARY KEY (client_key, expert_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS receipts (
    request_id  BLOB NOT NULL,
    expert_id   TEXT NOT NULL,
    client      TEXT NOT NULL,
    model_hash  BLOB NOT NULL,
    input_hash  BLOB NOT NULL,
    output_hash BLOB NOT NULL,
    price       BLOB NOT NULL,
    signature   BLOB NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (request_id, expert_id)
);
CREATE INDEX IF NOT EXISTS receipts_by_age ON receipts (created_at);
"""


class LedgerError(MarketError):
    """The ledger's database failed (disk full, locked for too long, corrupt, closed).

    The node must not answer a paid call when this is raised: the voucher may not be stored.
    """


class VoucherTooLowError(PaymentError):
    """Neither the voucher nor what the node holds pays for one more call (wire code ``VOUCHER_TOO_LOW``).

    `held` is the highest voucher the node holds for (client, expert), `served` what its calls so far cost,
    and `expected` the least amount it accepts (served + price, and above what the chain already paid); the
    client resyncs to `held` (the quote's ``cumulative``) and resends, which always covers it.
    """

    def __init__(self, client: str, expert_id: int, offered: int, held: int, price: int, served: int | None = None,
                 expected: int | None = None) -> None:
        self.client = client
        self.expert_id = expert_id
        self.offered = offered
        self.held = held
        self.price = price
        self.served = held if served is None else served
        self.expected = self.served + price if expected is None else expected
        super().__init__(
            f"voucher from {client} for expert {expert_id} is for {offered} wei cumulative, but the node holds "
            f"{held} and the price is {price}: sign at least {self.expected} (resync from the quote's cumulative)"
        )


@dataclass(frozen=True, slots=True)
class PendingRedemption:
    """A redemption transaction that was sent and is neither confirmed nor failed yet."""

    client: str
    expert_id: int
    amount: int
    tx_hash: str
    since: float
    attempts: int


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """A receipt this node signed, with the client it answered and when."""

    signed: SignedReceipt
    client: str
    created_at: float


def _enc(amount: int) -> bytes:
    return amount.to_bytes(32, "big")


def _dec(blob: bytes | None) -> int:
    return 0 if blob is None else int.from_bytes(blob, "big")


def _check_amount(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT256:
        raise MarketInputError(f"{name} must be an int between 0 and 2**256 - 1, got {value!r}")
    return value


def _check_expert(expert_id: object) -> str:
    return str(_check_amount("expert_id", expert_id))


def _check_client(client: object) -> str:
    if not isinstance(client, str) or not client:
        raise MarketInputError(f"client must be an address string, got {client!r}")
    return client.lower()


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, bytes) or not value:
        raise MarketInputError(f"{name} must be non-empty bytes, got {type(value).__name__}")
    return value


def _tx_hex(tx_hash: bytes | str) -> str:
    if isinstance(tx_hash, bytes):
        return "0x" + tx_hash.hex()
    if isinstance(tx_hash, str) and tx_hash:
        return tx_hash if tx_hash.startswith("0x") else "0x" + tx_hash
    raise MarketInputError(f"tx_hash must be bytes or a hex string, got {tx_hash!r}")


def _voucher_of(item: SignedVoucher | Voucher) -> Voucher:
    if isinstance(item, SignedVoucher):
        return item.voucher
    if isinstance(item, Voucher):
        return item
    raise MarketInputError(f"expected a Voucher or SignedVoucher, got {type(item).__name__}")


class VoucherLedger:
    """The node's voucher, redemption and receipt ledger in one SQLite file (see the module docstring).

    ``escrow`` and ``chain_id``, when given, bind the file to one EIP-712 domain: vouchers signed for one
    escrow are worthless on another, so opening the file for a different one raises `MarketConfigError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        escrow: str | None = None,
        chain_id: int | None = None,
        receipt_max_age_s: float = DEFAULT_RECEIPT_MAX_AGE_S,
        receipt_max_rows: int = DEFAULT_RECEIPT_MAX_ROWS,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if receipt_max_age_s <= 0 or receipt_max_rows <= 0:
            raise MarketConfigError("receipt_max_age_s and receipt_max_rows must be positive")
        self._receipt_max_age_s = float(receipt_max_age_s)
        self._receipt_max_rows = int(receipt_max_rows)
        self._clock = clock
        self._receipts_since_prune = 0
        self._db = DurableSqlite(path, what="the ledger", error=LedgerError, busy_timeout_s=busy_timeout_s)
        self._path = self._db.path
        try:
            self._setup(escrow, chain_id)
        except BaseException:
            self._db.close()
            raise
        self._db.sync_new_file()

    # ------------------------------------------------------------------ setup

    def _setup(self, escrow: str | None, chain_id: int | None) -> None:
        try:
            with self._write() as c:
                version = c.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise MarketConfigError(
                        f"the ledger {self._path} has schema {version}, newer than this moe-market ({SCHEMA_VERSION}): "
                        "upgrade moe-market"
                    )
                if version == 1:  # schema 1: one signature per amount, no use count
                    c.execute("ALTER TABLE voucher_history RENAME TO voucher_history_v1")
                # executescript would COMMIT the open transaction; run the statements one by one instead.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                if version == 1:
                    c.execute(
                        """INSERT INTO voucher_history (client_key, expert_id, cumulative, signature, uses)
                           SELECT client_key, expert_id, cumulative, signature, 1 FROM voucher_history_v1"""
                    )
                    c.execute("DROP TABLE voucher_history_v1")
                c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._bind_domain(c, escrow, chain_id)
        except LedgerError as exc:
            raise MarketConfigError(f"cannot open the ledger {self._path}: {exc}") from exc

    def _bind_domain(self, c: sqlite3.Connection, escrow: str | None, chain_id: int | None) -> None:
        wanted = {
            "escrow": escrow.lower() if escrow else None,
            "chain_id": None if chain_id is None else str(chain_id),
        }
        for key, value in wanted.items():
            if value is None:
                continue
            row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            elif row[0] != value:
                raise MarketConfigError(
                    f"the ledger {self._path} holds vouchers for {key} {row[0]}, not {value}: "
                    "use a separate ledger file per escrow and chain"
                )

    # ------------------------------------------------------------------ transactions

    def _write(self, *, fsync: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """One fsynced write transaction (receipts pass ``fsync=False``: they survive a SIGKILL, not a power
        loss; they are the node's copies of what it signed, not money, and their fsync doubled a call's latency)."""
        return self._db.write(fsync=fsync)

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    # ------------------------------------------------------------------ vouchers

    def last_cumulative(self, client: str, expert_id: int) -> int:
        """What the node holds from `client` for `expert_id`: the latest voucher, or what the chain already paid
        if that is more (a ledger restored from an old backup). 0 if nothing."""
        key, eid = _check_client(client), _check_expert(expert_id)
        with self._read() as c:
            return self._held(c, key, eid)

    def cumulative_for(self, client: str) -> dict[int, int]:
        """`last_cumulative` for every expert `client` paid on this node (the quote's ``cumulative`` field)."""
        key = _check_client(client)
        with self._read() as c:
            rows = c.execute(
                """SELECT v.expert_id, v.cumulative, r.redeemed FROM vouchers v
                   LEFT JOIN redemptions r USING (client_key, expert_id) WHERE v.client_key = ?
                   UNION ALL
                   SELECT r.expert_id, NULL, r.redeemed FROM redemptions r
                   WHERE r.client_key = ? AND NOT EXISTS
                     (SELECT 1 FROM vouchers v WHERE v.client_key = r.client_key AND v.expert_id = r.expert_id)""",
                (key, key),
            ).fetchall()
        return {int(eid): max(_dec(cum), _dec(red)) for eid, cum, red in rows}

    def served_amount(self, client: str, expert_id: int) -> int:
        """What the calls this node accepted from `client` for `expert_id` cost (reverted ones not counted);
        never more than `last_cumulative`."""
        key, eid = _check_client(client), _check_expert(expert_id)
        with self._read() as c:
            return self._served(c, key, eid, self._held(c, key, eid))

    def record_voucher(self, signed_voucher: SignedVoucher, price: int) -> None:
        """Accepts `signed_voucher` for one more call at `price`, durably, if the highest voucher held (this
        one included) covers every call served plus this one: ``max(held, amount) >= served + price``, and the
        voucher is still worth something on chain (above what was redeemed; any amount when the call is free).
        A voucher above what is held becomes the latest; a lower one (it arrived after a later voucher of the
        same client) is kept in the history, so that `revert_voucher` can still find it.

        Raises `VoucherTooLowError` otherwise (the ledger is unchanged). The check and the write are one
        transaction, so two concurrent calls with the same voucher cannot both pass unless the vouchers held
        pay for both. When this returns, the voucher survives a SIGKILL or a power loss.
        """
        if not isinstance(signed_voucher, SignedVoucher):
            raise MarketInputError(f"expected a SignedVoucher, got {type(signed_voucher).__name__}")
        v = signed_voucher.voucher
        key, eid = _check_client(v.client), _check_expert(v.expert_id)
        amount = _check_amount("cumulative_amount", v.cumulative_amount)
        price = _check_amount("price", price)
        signature = _check_bytes("signature", signed_voucher.signature)
        now = self._clock()
        with self._write() as c:
            latest, redeemed = self._pair(c, key, eid)
            held = max(latest or 0, redeemed)
            served = self._served(c, key, eid, held)
            if max(held, amount) < served + price or (amount <= redeemed and price > 0):
                expected = max(served + price, redeemed + 1)
                raise VoucherTooLowError(v.client, v.expert_id, amount, held, price, served, expected)
            self._set_served(c, key, eid, served + price)
            if amount <= redeemed:
                return  # a free call on a voucher already paid on chain: nothing to keep, nothing to revert
            if latest is None or amount > latest:
                c.execute(
                    """INSERT INTO vouchers (client_key, expert_id, client, cumulative, signature, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_key, expert_id) DO UPDATE SET
                       client = excluded.client, cumulative = excluded.cumulative, signature = excluded.signature,
                       updated_at = excluded.updated_at""",
                    (key, eid, v.client, _enc(amount), signature, now),
                )
            c.execute(
                """INSERT INTO voucher_history (client_key, expert_id, cumulative, signature, uses)
                   VALUES (?, ?, ?, ?, 1) ON CONFLICT DO UPDATE SET uses = uses + 1""",
                (key, eid, _enc(amount), signature),
            )
            c.execute(
                """DELETE FROM voucher_history WHERE client_key = ? AND expert_id = ? AND cumulative <
                   (SELECT cumulative FROM voucher_history WHERE client_key = ? AND expert_id = ?
                    ORDER BY cumulative DESC LIMIT 1 OFFSET ?)""",
                (key, eid, key, eid, VOUCHER_HISTORY - 1),
            )

    def revert_voucher(self, signed_voucher: SignedVoucher, price: int) -> bool:
        """Undoes `record_voucher` for a call that failed on this node (wire code ``INTERNAL``: the voucher is
        not kept). Call it once per failed call, with that call's voucher and price.

        The call's price leaves what was served, and the voucher leaves the history unless the vouchers left
        would no longer cover the calls still served. If it was the highest voucher, the pair falls back to the
        highest one left (or to nothing). If a later voucher already replaced it (pipelined calls), that later
        voucher stays (the client's book counts the failed call's price as carried by it: at most one price);
        should the later call fail too, its revert falls back below both. Returns True when the call was taken
        back; False, changing nothing, when the voucher is unknown, was reverted before, or a redemption
        carries it.
        """
        if not isinstance(signed_voucher, SignedVoucher):
            raise MarketInputError(f"expected a SignedVoucher, got {type(signed_voucher).__name__}")
        v = signed_voucher.voucher
        key, eid = _check_client(v.client), _check_expert(v.expert_id)
        amount = _check_amount("cumulative_amount", v.cumulative_amount)
        price = _check_amount("price", price)
        now = self._clock()
        sig = signed_voucher.signature
        with self._write() as c:
            this = (key, eid, _enc(amount), sig)
            known = c.execute(
                """SELECT uses FROM voucher_history WHERE client_key = ? AND expert_id = ? AND cumulative = ?
                   AND signature = ?""",
                this,
            ).fetchone()
            if known is None or known[0] < 1:
                return False
            red = c.execute(
                "SELECT redeemed, pending_amount FROM redemptions WHERE client_key = ? AND expert_id = ?",
                (key, eid),
            ).fetchone()
            if (max(_dec(red[0]), _dec(red[1])) if red else 0) >= amount:
                return False
            served = max(0, self._served(c, key, eid, self._held(c, key, eid)) - price)
            self._set_served(c, key, eid, served)
            same_amount = c.execute(
                """SELECT signature FROM voucher_history WHERE client_key = ? AND expert_id = ? AND cumulative = ?
                   AND signature != ? ORDER BY signature LIMIT 1""",
                this,
            ).fetchone()
            below = c.execute(
                """SELECT cumulative, signature FROM voucher_history WHERE client_key = ? AND expert_id = ?
                   AND cumulative != ? ORDER BY cumulative DESC, signature LIMIT 1""",
                (key, eid, _enc(amount)),
            ).fetchone()
            needed = same_amount is None and max(_dec(below[0]) if below else 0, _dec(red[0]) if red else 0) < served
            if known[0] > 1 or needed:
                # It still pays for another call, or the calls still served need it: it stays.
                c.execute(
                    """UPDATE voucher_history SET uses = uses - 1 WHERE client_key = ? AND expert_id = ?
                       AND cumulative = ? AND signature = ?""",
                    this,
                )
                return True
            c.execute(
                """DELETE FROM voucher_history WHERE client_key = ? AND expert_id = ? AND cumulative = ?
                   AND signature = ?""",
                this,
            )
            latest = c.execute(
                "SELECT cumulative, signature FROM vouchers WHERE client_key = ? AND expert_id = ?", (key, eid)
            ).fetchone()
            if latest is None or (_dec(latest[0]), bytes(latest[1])) != (amount, sig):
                return True
            fallback = (_enc(amount), same_amount[0]) if same_amount is not None else below
            if fallback is None:
                c.execute("DELETE FROM vouchers WHERE client_key = ? AND expert_id = ?", (key, eid))
            else:
                c.execute(
                    """UPDATE vouchers SET cumulative = ?, signature = ?, updated_at = ?
                       WHERE client_key = ? AND expert_id = ?""",
                    (fallback[0], fallback[1], now, key, eid),
                )
            return True

    def unredeemed(
        self, expert_id: int | None = None, *, include_pending: bool = True
    ) -> list[tuple[SignedVoucher, int]]:
        """The latest voucher of every (client, expert) whose amount is above what the chain confirmed, with
        that confirmed amount; for one expert if `expert_id` is given.

        With ``include_pending=False``, vouchers whose exact amount is already in a sent redemption are left out.
        """
        sql = """SELECT v.client, v.expert_id, v.cumulative, v.signature, r.redeemed, r.pending_amount
                 FROM vouchers v LEFT JOIN redemptions r USING (client_key, expert_id)
                 WHERE v.cumulative > COALESCE(r.redeemed, zeroblob(32))"""
        params: tuple[Any, ...] = ()
        if expert_id is not None:
            sql += " AND v.expert_id = ?"
            params = (_check_expert(expert_id),)
        if not include_pending:
            sql += " AND (r.pending_amount IS NULL OR v.cumulative > r.pending_amount)"
        sql += " ORDER BY v.expert_id, v.client_key"
        with self._read() as c:
            rows = c.execute(sql, params).fetchall()
        return [
            (SignedVoucher(Voucher(client, int(eid), _dec(cum)), bytes(sig)), _dec(red))
            for client, eid, cum, sig, red, _pending in rows
        ]

    def outstanding_amount(self, client: str) -> int:
        """What `client` owes this node and the chain has not paid yet: the sum over experts of the latest
        voucher minus the confirmed redeemed amount (a pending redemption is still owed). Compare with the
        client's escrow balance to decide whether one more call is covered."""
        key = _check_client(client)
        with self._read() as c:
            rows = c.execute(
                """SELECT v.cumulative, r.redeemed FROM vouchers v
                   LEFT JOIN redemptions r USING (client_key, expert_id) WHERE v.client_key = ?""",
                (key,),
            ).fetchall()
        return sum(max(0, _dec(cum) - _dec(red)) for cum, red in rows)

    # ------------------------------------------------------------------ redemptions

    def mark_pending(self, vouchers: Iterable[SignedVoucher | Voucher], tx_hash: bytes | str) -> None:
        """Records that a redemption transaction carrying `vouchers` was sent (before waiting for it)."""
        tx = _tx_hex(tx_hash)
        items = [_voucher_of(v) for v in vouchers]
        now = self._clock()
        with self._write() as c:
            for v in items:
                key, eid = self._ensure_redemption(c, v.client, v.expert_id, now)
                c.execute(
                    """UPDATE redemptions SET pending_tx = ?, pending_amount = ?, pending_since = ?,
                       attempts = attempts + 1, last_error = NULL, updated_at = ?
                       WHERE client_key = ? AND expert_id = ?""",
                    (tx, _enc(_check_amount("cumulative_amount", v.cumulative_amount)), now, now, key, eid),
                )

    def mark_redeemed(self, vouchers: Iterable[SignedVoucher | Voucher], tx_hash: bytes | str) -> None:
        """Records that the chain confirmed `vouchers` in transaction `tx_hash`: redeemed becomes each voucher's
        cumulative amount (never lower than before).

        The escrow pays less than the voucher when the client's balance ran short (``VoucherRedeemed.paid``);
        then call `sync_redeemed` with the chain's ``redeemed()`` afterwards, which is the truth.
        """
        tx = _tx_hex(tx_hash)
        items = [_voucher_of(v) for v in vouchers]
        now = self._clock()
        with self._write() as c:
            for v in items:
                amount = _check_amount("cumulative_amount", v.cumulative_amount)
                key, eid = self._ensure_redemption(c, v.client, v.expert_id, now)
                redeemed, pending = c.execute(
                    "SELECT redeemed, pending_amount FROM redemptions WHERE client_key = ? AND expert_id = ?",
                    (key, eid),
                ).fetchone()
                new = max(_dec(redeemed), amount)
                clear = pending is not None and _dec(pending) <= new
                c.execute(
                    f"""UPDATE redemptions SET redeemed = ?, redeemed_tx = ?, attempts = 0, last_error = NULL,
                        updated_at = ?{_CLEAR_PENDING if clear else ""} WHERE client_key = ? AND expert_id = ?""",
                    (_enc(new), tx, now, key, eid),
                )
                self._forget_history(c, key, eid, new)
                self._adopt_unknown_payment(c, key, eid, new)

    def mark_failed(self, vouchers: Iterable[SignedVoucher | Voucher], error: str) -> None:
        """Records that a redemption carrying `vouchers` failed (reverted, dropped, never sent); they stay
        unredeemed and are offered again by `unredeemed`."""
        message = str(error)[:_MAX_ERROR_CHARS]
        items = [_voucher_of(v) for v in vouchers]
        now = self._clock()
        with self._write() as c:
            for v in items:
                key, eid = self._ensure_redemption(c, v.client, v.expert_id, now)
                pending = c.execute(
                    "SELECT pending_amount FROM redemptions WHERE client_key = ? AND expert_id = ?",
                    (key, eid),
                ).fetchone()[0]
                # A newer redemption of a larger voucher may be in flight; only this voucher's one is cleared.
                clear = pending is not None and _dec(pending) <= v.cumulative_amount
                c.execute(
                    f"""UPDATE redemptions SET last_error = ?, updated_at = ?{_CLEAR_PENDING if clear else ""}
                        WHERE client_key = ? AND expert_id = ?""",
                    (message, now, key, eid),
                )

    def sync_redeemed(self, client: str, expert_id: int, on_chain_amount: int) -> None:
        """Adopts the chain's ``redeemed(client, expertId)`` as the confirmed amount (after a restart, a partly
        paid redemption or a reorg: the chain is the truth, even when it says less than the ledger thought)."""
        amount = _check_amount("on_chain_amount", on_chain_amount)
        now = self._clock()
        with self._write() as c:
            key, eid = self._ensure_redemption(c, client, expert_id, now)
            redeemed, pending = c.execute(
                "SELECT redeemed, pending_amount FROM redemptions WHERE client_key = ? AND expert_id = ?",
                (key, eid),
            ).fetchone()
            if _dec(redeemed) > amount:
                logger.warning(
                    "chain says expert %s was paid %d by %s, less than the %d recorded: adopting the chain's figure",
                    expert_id,
                    amount,
                    client,
                    _dec(redeemed),
                )
            clear = pending is not None and _dec(pending) <= amount
            c.execute(
                f"""UPDATE redemptions SET redeemed = ?, updated_at = ?{_CLEAR_PENDING if clear else ""}
                    WHERE client_key = ? AND expert_id = ?""",
                (_enc(amount), now, key, eid),
            )
            self._forget_history(c, key, eid, amount)
            self._adopt_unknown_payment(c, key, eid, amount)

    def recently_redeemed(self, within_s: float, settled_s: float = 0.0) -> list[tuple[str, int, int, str | None]]:
        """(client, expert_id, redeemed, the redemption's transaction hash or None) of every pair whose redeemed
        amount was recorded between `within_s` and `settled_s` seconds ago: the redemptions a reorg could still
        take back (node.redeemer checks them against the chain again)."""
        now = self._clock()
        with self._read() as c:
            rows = c.execute(
                """SELECT client, expert_id, redeemed, redeemed_tx FROM redemptions
                   WHERE updated_at >= ? AND updated_at <= ? AND redeemed > zeroblob(32)
                   ORDER BY updated_at""",
                (now - within_s, now - settled_s),
            ).fetchall()
        return [(client, int(eid), _dec(red), tx) for client, eid, red, tx in rows]

    def pending(self) -> list[PendingRedemption]:
        """Redemptions sent and not yet confirmed or failed: after a restart, look each transaction up."""
        with self._read() as c:
            rows = c.execute(
                """SELECT client, expert_id, pending_amount, pending_tx, pending_since, attempts FROM redemptions
                   WHERE pending_tx IS NOT NULL ORDER BY pending_since"""
            ).fetchall()
        return [
            PendingRedemption(cl, int(eid), _dec(amt), tx, since, att)
            for cl, eid, amt, tx, since, att in rows
        ]

    # ------------------------------------------------------------------ receipts

    def record_receipt(self, signed_receipt: SignedReceipt, client: str) -> bool:
        """Stores a receipt this node signed for `client`. Returns False if one for the same (request id,
        expert) is already stored (the first one is kept). Old receipts are pruned now and then."""
        if not isinstance(signed_receipt, SignedReceipt):
            raise MarketInputError(f"expected a SignedReceipt, got {type(signed_receipt).__name__}")
        r = signed_receipt.receipt
        _check_client(client)
        values = (
            _check_bytes("request_id", r.request_id),
            _check_expert(r.expert_id),
            client,
            _check_bytes("model_hash", r.model_hash),
            _check_bytes("input_hash", r.input_hash),
            _check_bytes("output_hash", r.output_hash),
            _enc(_check_amount("price", r.price)),
            _check_bytes("signature", signed_receipt.signature),
            self._clock(),
        )
        with self._write(fsync=False) as c:
            cur = c.execute(
                """INSERT OR IGNORE INTO receipts (request_id, expert_id, client, model_hash, input_hash,
                   output_hash, price, signature, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                values,
            )
            stored = cur.rowcount == 1
            self._receipts_since_prune += 1
            if self._receipts_since_prune >= _PRUNE_EVERY:
                self._receipts_since_prune = 0
                self._prune(c)
        return stored

    def receipt(self, request_id: bytes, expert_id: int | None = None) -> StoredReceipt | None:
        """The receipt signed for `request_id` (for `expert_id`, if this node serves several), or None."""
        sql = """SELECT expert_id, client, model_hash, input_hash, output_hash, price, signature, created_at
                 FROM receipts WHERE request_id = ?"""
        params: tuple[Any, ...] = (_check_bytes("request_id", request_id),)
        if expert_id is not None:
            sql += " AND expert_id = ?"
            params += (_check_expert(expert_id),)
        with self._read() as c:
            row = c.execute(sql + " ORDER BY created_at LIMIT 1", params).fetchone()
        if row is None:
            return None
        eid, client, model_hash, input_hash, output_hash, price, signature, created_at = row
        receipt = Receipt(
            int(eid), bytes(model_hash), request_id, bytes(input_hash), bytes(output_hash), _dec(price)
        )
        return StoredReceipt(SignedReceipt(receipt, bytes(signature)), client, created_at)

    def prune_receipts(self) -> int:
        """Deletes receipts older than ``receipt_max_age_s`` and the oldest beyond ``receipt_max_rows``."""
        with self._write() as c:
            self._receipts_since_prune = 0
            return self._prune(c)

    def _prune(self, c: sqlite3.Connection) -> int:
        cutoff = self._clock() - self._receipt_max_age_s
        removed = c.execute("DELETE FROM receipts WHERE created_at < ?", (cutoff,)).rowcount
        removed += c.execute(
            """DELETE FROM receipts WHERE rowid IN
               (SELECT rowid FROM receipts ORDER BY created_at DESC LIMIT -1 OFFSET ?)""",
            (self._receipt_max_rows,),
        ).rowcount
        return removed

    # ------------------------------------------------------------------ overview

    def stats(self) -> dict[str, int]:
        """Counts and totals for metrics: vouchers held, total cumulative, total redeemed (confirmed), what is
        owed, redemptions pending and their amount, pairs whose last redemption failed, receipts kept."""
        with self._read() as c:
            vouchers = c.execute(
                """SELECT v.cumulative, r.redeemed FROM vouchers v
                   LEFT JOIN redemptions r USING (client_key, expert_id)"""
            ).fetchall()
            redeemed = c.execute("SELECT redeemed FROM redemptions").fetchall()
            pending = c.execute(
                "SELECT pending_amount FROM redemptions WHERE pending_tx IS NOT NULL"
            ).fetchall()
            failed = c.execute(
                "SELECT COUNT(*) FROM redemptions WHERE last_error IS NOT NULL AND pending_tx IS NULL"
            ).fetchone()[0]
            receipts = c.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
        return {
            "vouchers": len(vouchers),
            "total_cumulative": sum(_dec(cum) for cum, _ in vouchers),
            "total_redeemed": sum(_dec(red) for (red,) in redeemed),
            "outstanding": sum(max(0, _dec(cum) - _dec(red)) for cum, red in vouchers),
            "pending": len(pending),
            "pending_amount": sum(_dec(amt) for (amt,) in pending),
            "failed": failed,
            "receipts": receipts,
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Closes the connection (idempotent). Everything recorded is already on disk."""
        self._db.close()

    def __enter__(self) -> VoucherLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _pair(c: sqlite3.Connection, key: str, eid: str) -> tuple[int | None, int]:
        """(the latest voucher's amount, or None; what the chain confirmed as redeemed), in one query."""
        latest, redeemed = c.execute(
            """SELECT (SELECT cumulative FROM vouchers WHERE client_key = ?1 AND expert_id = ?2),
                      (SELECT redeemed FROM redemptions WHERE client_key = ?1 AND expert_id = ?2)""",
            (key, eid),
        ).fetchone()
        return (None if latest is None else _dec(latest)), _dec(redeemed)

    @classmethod
    def _held(cls, c: sqlite3.Connection, key: str, eid: str) -> int:
        """max(latest voucher, confirmed redeemed): a voucher at or below what the chain paid is worth nothing."""
        latest, redeemed = cls._pair(c, key, eid)
        return max(latest or 0, redeemed)

    @staticmethod
    def _served(c: sqlite3.Connection, key: str, eid: str, held: int) -> int:
        """The prices of the calls served, never above `held` (a pair without a row: all of `held`)."""
        row = c.execute("SELECT amount FROM served WHERE client_key = ? AND expert_id = ?", (key, eid)).fetchone()
        return held if row is None else min(_dec(row[0]), held)

    @staticmethod
    def _set_served(c: sqlite3.Connection, key: str, eid: str, amount: int) -> None:
        c.execute(
            "INSERT INTO served (client_key, expert_id, amount) VALUES (?, ?, ?) "
            "ON CONFLICT (client_key, expert_id) DO UPDATE SET amount = excluded.amount",
            (key, eid, _enc(min(amount, MAX_UINT256))),
        )

    @classmethod
    def _adopt_unknown_payment(cls, c: sqlite3.Connection, key: str, eid: str, redeemed: int) -> None:
        """The chain paid more than any voucher this ledger holds (it was restored from an old backup): the
        calls behind that payment were served, though the ledger no longer knows them, so they give no credit."""
        latest = c.execute(
            "SELECT cumulative FROM vouchers WHERE client_key = ? AND expert_id = ?", (key, eid)
        ).fetchone()
        if latest is None or redeemed > _dec(latest[0]):
            row = c.execute("SELECT amount FROM served WHERE client_key = ? AND expert_id = ?", (key, eid)).fetchone()
            if row is not None and _dec(row[0]) < redeemed:
                cls._set_served(c, key, eid, redeemed)

    @staticmethod
    def _forget_history(c: sqlite3.Connection, key: str, eid: str, redeemed: int) -> None:
        # Paid on chain: those vouchers can no longer be reverted, nor are they worth falling back to.
        c.execute(
            "DELETE FROM voucher_history WHERE client_key = ? AND expert_id = ? AND cumulative <= ?",
            (key, eid, _enc(redeemed)),
        )

    @staticmethod
    def _ensure_redemption(c: sqlite3.Connection, client: str, expert_id: int, now: float) -> tuple[str, str]:
        key, eid = _check_client(client), _check_expert(expert_id)
        c.execute(
            """INSERT OR IGNORE INTO redemptions (client_key, expert_id, client, redeemed, updated_at)
               VALUES (?, ?, ?, ?, ?)""",
            (key, eid, client, _enc(0), now),
        )
        return key, eid


_CLEAR_PENDING = ", pending_tx = NULL, pending_amount = NULL, pending_since = NULL"
