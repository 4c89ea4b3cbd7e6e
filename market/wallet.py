"""The client's durable voucher book: how much it has signed to each expert, and which calls are in flight.

A voucher carries the running total a client owes one expert (client, expert, cumulative amount, under the
escrow's EIP-712 domain). The book keeps, per (escrow, chain id, client, expert id):

- ``settled``: the highest amount the expert's node may hold for a call that is over: confirmed by a result,
  left in an unknown state (timeout, connection lost, crash) or reported by the node itself (`resync`);
- the reservations in flight: amounts handed out by `reserve` whose call has not ended yet.

The next voucher for an expert is ``cumulative(expert) + price`` where
``cumulative = max(settled, amounts in flight)``. The rules:

1. `reserve` writes the reservation durably (SQLite WAL, ``synchronous=FULL``) before it returns, so before
   the voucher can leave: a crash can never make the book forget an amount the node may have received.
   Concurrent reservations for one expert get distinct, increasing amounts (one lock, one transaction).
2. `confirm` (a result arrived: the node kept the voucher) raises ``settled`` to the amount.
3. `release` ends a failed call. ``kept=False``, only when the node answered that it did not keep the voucher
   (an error answer such as ``INTERNAL`` or ``VOUCHER_TOO_LOW``): the reservation is dropped without raising
   ``settled``, so if it was the highest amount, the cumulative rolls back and the next call does not pay for
   the failed one. If a later reservation is still in flight, nothing rolls back (that later voucher already
   covers the failed call's price: at most one price lost, and recovered if the later call fails the same way).
   ``kept=True`` when the outcome is unknown (timeout, connection lost): ``settled`` rises to the amount (the
   node may hold it; at most one price lost) and the expert is marked for resync.
4. `resync` adopts ``max(ours, node's)`` from the node's quote, so a restarted client or one whose book is
   stale never underpays (the node would answer ``VOUCHER_TOO_LOW``) and never pays a call twice.
5. Opening the book after a crash turns every reservation still in flight into an unknown outcome (rule 3,
   ``kept=True``): the client resyncs those experts before their next call.

So with nothing in flight nothing is at risk (``cumulative == settled``), and each call in flight puts at most
its own price at risk, plus the price of an earlier failed call its voucher covers (rule 3). The node's ledger
(node.ledger.VoucherLedger.revert_voucher) counts a failed call the same way, so both sides agree.

Vouchers for one expert may reach its node in any order (concurrent calls travel on separate streams): the
node takes a voucher when the highest one it holds, this one included, pays for every call it served plus
this one, so amount N+p arriving after N+2p is served, and each call costs exactly its price.

One process owns a book file at a time (an exclusive lock on ``<path>.lock``; a second open raises
`MarketConfigError`), because rule 5 would otherwise settle another live process's calls. Threads share one
book: one connection behind a lock. Amounts are wei up to 2**256 - 1, stored as 32-byte big-endian blobs.

No signing and no network here: the client signs the amount `reserve` returns. Never logs vouchers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from market.durable import DurableSqlite
from market.errors import MarketConfigError, MarketError, MarketInputError

__all__ = ["InFlight", "VoucherBook", "WalletError"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_UINT256 = 2**256 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experts (
    escrow       TEXT NOT NULL,     -- lower-case address
    chain_id     INTEGER NOT NULL,
    client       TEXT NOT NULL,     -- lower-case address
    expert_id    TEXT NOT NULL,     -- decimal uint256
    settled      BLOB NOT NULL,     -- 32-byte big-endian wei
    needs_resync INTEGER NOT NULL DEFAULT 0,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (escrow, chain_id, client, expert_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS in_flight (
    escrow      TEXT NOT NULL,
    chain_id    INTEGER NOT NULL,
    client      TEXT NOT NULL,
    expert_id   TEXT NOT NULL,
    cumulative  BLOB NOT NULL,
    price       BLOB NOT NULL,
    reserved_at REAL NOT NULL,
    PRIMARY KEY (escrow, chain_id, client, expert_id, cumulative)
) WITHOUT ROWID;
"""


class WalletError(MarketError):
    """The voucher book's database failed (disk full, locked for too long, corrupt, closed).

    Do not send a voucher when `reserve` raised this: the amount may not be recorded.
    """


@dataclass(frozen=True, slots=True)
class InFlight:
    """A reservation whose call has not ended."""

    expert_id: int
    cumulative: int
    price: int
    reserved_at: float


def _enc(amount: int) -> bytes:
    return amount.to_bytes(32, "big")


def _dec(blob: bytes | None) -> int:
    return 0 if blob is None else int.from_bytes(blob, "big")


def _check_amount(name: str, value: object, *, positive: bool = False) -> int:
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_UINT256:
        raise MarketInputError(f"{name} must be an int between {low} and 2**256 - 1, got {value!r}")
    return value


def _check_chain_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise MarketInputError(f"chain_id must be a positive int below 2**63, got {value!r}")
    return value


def _check_address(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 42:
        raise MarketInputError(f"{name} must be a 0x-prefixed 20-byte hex address, got {value!r}")
    return value.lower()


class VoucherBook:
    """The client's voucher book for one escrow, chain and client key (rules in the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        escrow: str,
        chain_id: int,
        client: str,
        busy_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if busy_timeout_s <= 0:
            raise MarketConfigError("busy_timeout_s must be positive")
        self._domain = (
            _check_address("escrow", escrow),
            _check_chain_id(chain_id),
            _check_address("client", client),
        )
        self._clock = clock
        path = Path(path)
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise MarketConfigError("the voucher book needs a file path: in memory it would forget what was signed")
        self._lock_file = _take_file_lock(path)
        try:
            self._db = DurableSqlite(path, what="the voucher book", error=WalletError, busy_timeout_s=busy_timeout_s)
        except BaseException:
            self._lock_file.close()
            raise
        self._path = self._db.path
        try:
            self._setup()
        except BaseException as exc:
            self._db.close()
            self._lock_file.close()
            if isinstance(exc, WalletError):
                raise MarketConfigError(f"cannot open the voucher book {self._path}: {exc}") from exc
            raise
        self._db.sync_new_file()

    def _setup(self) -> None:
        with self._write() as c:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise MarketConfigError(
                    f"the voucher book {self._path} has schema {version}, newer than this moe-market "
                    f"({SCHEMA_VERSION}): upgrade moe-market"
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._recover(c)

    def _recover(self, c: sqlite3.Connection) -> None:
        """Rule 5: calls left in flight by a previous process ended in an unknown state."""
        rows = c.execute("SELECT escrow, chain_id, client, expert_id, cumulative FROM in_flight").fetchall()
        now = self._clock()
        for escrow, chain_id, client, eid, cumulative in rows:
            self._raise_settled(c, (escrow, chain_id, client), eid, _dec(cumulative), now, resync=True)
        if rows:
            c.execute("DELETE FROM in_flight")
            logger.warning(
                "voucher book %s: %d call(s) were in flight when the last process stopped; "
                "their experts will be resynced",
                self._path,
                len(rows),
            )

    # ------------------------------------------------------------------ transactions

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.read()

    # ------------------------------------------------------------------ the rules

    def reserve(self, expert_id: int, price: int) -> int:
        """Rule 1: returns the cumulative amount to sign for one more call (cumulative + price), recorded as in
        flight and on disk before this returns. Send the voucher only after this returned."""
        eid = str(_check_amount("expert_id", expert_id))
        price = _check_amount("price", price, positive=True)
        now = self._clock()
        with self._write() as c:
            amount = self._cumulative(c, eid) + price
            if amount > MAX_UINT256:
                raise MarketInputError(f"the cumulative amount for expert {expert_id} would pass 2**256 - 1")
            self._ensure_expert(c, eid, now)
            c.execute(
                """INSERT INTO in_flight (escrow, chain_id, client, expert_id, cumulative, price, reserved_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (*self._domain, eid, _enc(amount), _enc(price), now),
            )
        return amount

    def confirm(self, expert_id: int, cumulative: int) -> None:
        """Rule 2: the call that reserved `cumulative` got its result; the node holds that voucher."""
        eid = str(_check_amount("expert_id", expert_id))
        amount = _check_amount("cumulative", cumulative)
        now = self._clock()
        with self._write() as c:
            if not self._take_in_flight(c, eid, amount) and amount > self._cumulative(c, eid):
                raise MarketInputError(
                    f"cumulative {amount} for expert {expert_id} was never reserved (the book is at "
                    f"{self._cumulative(c, eid)})"
                )
            self._raise_settled(c, self._domain, eid, amount, now, resync=False)

    def release(self, expert_id: int, cumulative: int, kept: bool) -> bool:
        """Rule 3: the call that reserved `cumulative` failed.

        ``kept=False`` only when the node answered that it did not keep the voucher; ``kept=True`` when it may
        have (timeout, connection lost, no answer). Returns True if the cumulative amount rolled back.
        """
        eid = str(_check_amount("expert_id", expert_id))
        amount = _check_amount("cumulative", cumulative)
        now = self._clock()
        with self._write() as c:
            before = self._cumulative(c, eid)
            was_in_flight = self._take_in_flight(c, eid, amount)
            if kept:
                if not was_in_flight and amount > before:
                    # Settling it would raise the book above anything reserved: a caller bug, not a payment.
                    raise MarketInputError(
                        f"cumulative {amount} for expert {expert_id} is not reserved (the book is at {before})"
                    )
                self._raise_settled(c, self._domain, eid, amount, now, resync=True)
                return False
            # Not in flight any more (released twice, or settled as unknown by a restart): nothing to undo.
            return was_in_flight and self._cumulative(c, eid) < before

    def resync(self, expert_id: int, node_cumulative: int) -> int:
        """Rule 4: adopts the node's view (the quote's ``cumulative`` or a ``VOUCHER_TOO_LOW`` answer) if it is
        higher, and clears the resync mark. Returns the cumulative amount the next `reserve` builds on."""
        eid = str(_check_amount("expert_id", expert_id))
        node = _check_amount("node_cumulative", node_cumulative)
        now = self._clock()
        with self._write() as c:
            self._raise_settled(c, self._domain, eid, node, now, resync=False)
            c.execute(
                """UPDATE experts SET needs_resync = 0 WHERE escrow = ? AND chain_id = ? AND client = ?
                   AND expert_id = ?""",
                (*self._domain, eid),
            )
            return self._cumulative(c, eid)

    # ------------------------------------------------------------------ views

    def cumulative(self, expert_id: int) -> int:
        """The highest amount the expert's node may hold or receive: max(settled, amounts in flight)."""
        eid = str(_check_amount("expert_id", expert_id))
        with self._read() as c:
            return self._cumulative(c, eid)

    def settled(self, expert_id: int) -> int:
        """The highest amount the node may hold for calls that are over."""
        eid = str(_check_amount("expert_id", expert_id))
        with self._read() as c:
            return self._settled(c, eid)

    def in_flight(self, expert_id: int | None = None) -> list[InFlight]:
        """Reservations whose call has not ended, oldest amount first."""
        sql = """SELECT expert_id, cumulative, price, reserved_at FROM in_flight
                 WHERE escrow = ? AND chain_id = ? AND client = ?"""
        params: tuple[object, ...] = self._domain
        if expert_id is not None:
            sql += " AND expert_id = ?"
            params += (str(_check_amount("expert_id", expert_id)),)
        with self._read() as c:
            rows = c.execute(sql, params).fetchall()
        items = [InFlight(int(eid), _dec(cum), _dec(price), at) for eid, cum, price, at in rows]
        return sorted(items, key=lambda i: (i.expert_id, i.cumulative))

    def needs_resync(self, expert_id: int) -> bool:
        """True when a call to this expert ended in an unknown state: resync from its quote before the next."""
        eid = str(_check_amount("expert_id", expert_id))
        with self._read() as c:
            row = c.execute(
                """SELECT needs_resync FROM experts WHERE escrow = ? AND chain_id = ? AND client = ?
                   AND expert_id = ?""",
                (*self._domain, eid),
            ).fetchone()
        return bool(row and row[0])

    def experts_to_resync(self) -> list[int]:
        with self._read() as c:
            rows = c.execute(
                "SELECT expert_id FROM experts WHERE escrow = ? AND chain_id = ? AND client = ? AND needs_resync = 1",
                self._domain,
            ).fetchall()
        return sorted(int(eid) for (eid,) in rows)

    def spent_per_expert(self) -> dict[int, int]:
        """`cumulative` per expert: what each expert's node may claim from this client in total."""
        with self._read() as c:
            eids = c.execute(
                "SELECT expert_id FROM experts WHERE escrow = ? AND chain_id = ? AND client = ?", self._domain
            ).fetchall()
            totals = {int(eid): self._cumulative(c, eid) for (eid,) in eids}
        return {eid: amount for eid, amount in sorted(totals.items()) if amount > 0}

    def spent(self) -> int:
        """Total signed (or about to be) over all experts: the most the nodes can redeem from this client."""
        return sum(self.spent_per_expert().values())

    # ------------------------------------------------------------------ lifecycle

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Closes the book (idempotent) and frees the file for another process. Calls still in flight are
        settled as unknown the next time the book is opened."""
        if self._db.close():
            self._lock_file.close()

    def __enter__(self) -> VoucherBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _settled(self, c: sqlite3.Connection, eid: str) -> int:
        row = c.execute(
            "SELECT settled FROM experts WHERE escrow = ? AND chain_id = ? AND client = ? AND expert_id = ?",
            (*self._domain, eid),
        ).fetchone()
        return _dec(row[0]) if row else 0

    def _cumulative(self, c: sqlite3.Connection, eid: str) -> int:
        # Equal-length big-endian blobs order like the numbers: MAX over the blobs is the highest amount.
        row = c.execute(
            """SELECT MAX(cumulative) FROM in_flight WHERE escrow = ? AND chain_id = ? AND client = ?
               AND expert_id = ?""",
            (*self._domain, eid),
        ).fetchone()
        return max(self._settled(c, eid), _dec(row[0]))

    def _take_in_flight(self, c: sqlite3.Connection, eid: str, amount: int) -> bool:
        cur = c.execute(
            """DELETE FROM in_flight WHERE escrow = ? AND chain_id = ? AND client = ? AND expert_id = ?
               AND cumulative = ?""",
            (*self._domain, eid, _enc(amount)),
        )
        return cur.rowcount == 1

    def _ensure_expert(self, c: sqlite3.Connection, eid: str, now: float) -> None:
        self._ensure_row(c, self._domain, eid, now)

    @staticmethod
    def _ensure_row(c: sqlite3.Connection, domain: tuple[str, int, str], eid: str, now: float) -> None:
        c.execute(
            """INSERT OR IGNORE INTO experts (escrow, chain_id, client, expert_id, settled, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)""",
            (*domain, eid, _enc(0), now),
        )

    @classmethod
    def _raise_settled(
        cls,
        c: sqlite3.Connection,
        domain: tuple[str, int, str],
        eid: str,
        amount: int,
        now: float,
        *,
        resync: bool,
    ) -> None:
        cls._ensure_row(c, domain, eid, now)
        row = c.execute(
            "SELECT settled FROM experts WHERE escrow = ? AND chain_id = ? AND client = ? AND expert_id = ?",
            (*domain, eid),
        ).fetchone()
        c.execute(
            f"""UPDATE experts SET settled = ?, updated_at = ?{", needs_resync = 1" if resync else ""}
                WHERE escrow = ? AND chain_id = ? AND client = ? AND expert_id = ?""",
            (_enc(max(_dec(row[0]), amount)), now, *domain, eid),
        )


def _take_file_lock(path: Path) -> IO[str]:
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the book's lifetime
    except OSError as exc:
        raise MarketConfigError(f"cannot open the voucher book lock {lock_path}: {exc}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise MarketConfigError(
            f"the voucher book {path} is open in another process (pid {owner}) or another VoucherBook: "
            "use one book per process, or a separate file"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
