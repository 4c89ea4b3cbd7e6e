"""One durable SQLite file behind a lock: the plumbing shared by the node's voucher ledger and the client's
voucher book, both of which hold money and must lose nothing.

WAL mode with ``synchronous=FULL``: every committed write transaction is fsynced before `write()` returns, so
a SIGKILL (or, on a disk that honours fsync, a power loss) right after it loses nothing. One connection is
shared by the threads of a process behind a lock; every write is one ``BEGIN IMMEDIATE`` transaction, so a
check and the write that depends on it cannot interleave with another writer, in this process or another.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from market.errors import MarketConfigError, MarketError


def fsync_dir(directory: Path) -> None:
    """Makes a new file's directory entry durable (best effort: some filesystems refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class DurableSqlite:
    """A SQLite file in WAL mode with fsynced commits, shared by threads behind a lock.

    `what` names the file in messages ("the ledger"); `error` is the MarketError subclass raised when the
    database fails after it was opened (opening failures raise MarketConfigError).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        what: str,
        error: type[MarketError],
        busy_timeout_s: float = 10.0,
    ) -> None:
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise MarketConfigError(f"{what} needs a file path: in memory it would lose what it holds")
        if busy_timeout_s <= 0:
            raise MarketConfigError("busy_timeout_s must be positive: a write must not wait forever")
        self.path = Path(path)
        self.what = what
        self._error = error
        self.lock = threading.Lock()
        self.created = not self.path.exists()
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise MarketConfigError(f"cannot open {what} {self.path}: {exc}") from exc
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise MarketConfigError(f"{what} {self.path} cannot use WAL mode (got {mode!r})")
            self._conn.execute("PRAGMA synchronous=FULL")
        except BaseException as exc:
            self._conn.close()
            self._conn = None
            if isinstance(exc, sqlite3.Error):
                raise MarketConfigError(f"cannot open {what} {self.path}: {exc}") from exc
            raise

    def sync_new_file(self) -> None:
        """Once the schema is written: make a newly created file's directory entry durable too."""
        if self.created:
            fsync_dir(self.path.parent)

    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise self._error(f"{self.what} {self.path} is closed")
        return self._conn

    @contextmanager
    def write(self, *, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the lock, committed (and fsynced) when the block ends.

        ``fsync=False`` commits without waiting for the disk (``synchronous=NORMAL`` in WAL mode): the write
        survives a crash of the process, not a power loss. Only for records that are not money.
        """
        with self.lock:
            conn = self.conn()
            if not fsync:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as exc:
                    raise self._error(f"{self.what} {self.path} is unavailable: {exc}") from exc
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.Error):
                        raise self._error(f"a write to {self.what} {self.path} failed: {exc}") from exc
                    raise
            finally:
                if not fsync:
                    conn.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self.lock:
            conn = self.conn()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._error(f"a read from {self.what} {self.path} failed: {exc}") from exc

    def close(self) -> bool:
        """Closes the connection; True if it was open (idempotent)."""
        with self.lock:
            if self._conn is None:
                return False
            self._conn.close()
            self._conn = None
            return True


def atomic_write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Writes `data` to `path` so that a crash leaves either the old file or the new one, never a torn one:
    a temporary file beside it, fsynced, then renamed over it. `private` creates it with mode 0600."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if private:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
