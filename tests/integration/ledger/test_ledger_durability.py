"""Durability: a SIGKILL at any moment loses nothing that was acknowledged, in the node ledger and the wallet.

A child process records vouchers (or reserves amounts) in a tight loop and prints each one to stdout only
after the call returned; the parent kills it with SIGKILL at a random moment, reads everything the child had
printed, reopens the file and checks that every acknowledged write is there, exactly. The random seed is in
the test id, so a failure can be replayed. (SIGKILL proves each call committed before it returned; that the
commit is also fsynced, for power loss, rests on ``synchronous=FULL``, which the unit tests check.)
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from market.types import SignedVoucher, Voucher
from market.wallet import VoucherBook
from node.ledger import VoucherLedger, VoucherTooLowError

REPO = Path(__file__).resolve().parents[3]
CHILD = Path(__file__).with_name("durability_child.py")


def _load_child_helpers():  # noqa: ANN202 - a module
    # By path: the child is also run as a plain script, whatever the tests' package layout becomes.
    spec = importlib.util.spec_from_file_location("ledger_durability_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_child = _load_child_helpers()
CLIENT, ESCROW, PAIRS, PRICES = _child.CLIENT, _child.ESCROW, _child.PAIRS, _child.PRICES
pair, request_id, signature = _child.pair, _child.request_id, _child.signature


def run_and_kill(kind: str, db: Path, rng: random.Random) -> list[list[str]]:
    """Runs the `kind` child on `db`, SIGKILLs it after a random number of acknowledgements, returns every line it
    printed (all of them acknowledged writes)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), kind, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    lines: list[list[str]] = []
    try:
        first = child.stdout.readline()
        assert first.strip() == "ready", first + (child.stderr.read() if child.stderr else "")
        kill_after = rng.randint(1, 200)
        while len(lines) < kill_after:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else "child exited"
            lines.append(line.split())
        if rng.random() < 0.75:
            # Mostly at a random moment of the child's loop rather than right after a print (which tends to
            # land in the fsync of the next commit).
            time.sleep(rng.random() * 0.05)
        child.send_signal(signal.SIGKILL)
        # Read through the same buffered file as readline (communicate() would skip what it buffered).
        rest = child.stdout.read()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL
    # A line is an acknowledgement once whole: one cut by the kill (no newline yet) does not count.
    lines.extend(line.split() for line in rest[: rest.rfind("\n") + 1].splitlines())
    return lines


def integrity_ok(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sigkill_loses_no_acknowledged_voucher(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    db = tmp_path / "ledger.db"
    lines = run_and_kill("ledger", db, rng)
    vouchers = [int(i) for kind, i in lines if kind == "v"]
    receipts = [int(i) for kind, i in lines if kind == "r"]
    assert vouchers == list(range(len(vouchers))) and vouchers
    integrity_ok(db)
    with VoucherLedger(db) as ledger:
        held = {(v.voucher.client, v.voucher.expert_id): v for v, _ in ledger.unredeemed()}
        for j in range(PAIRS):
            acked = [i for i in vouchers if i % PAIRS == j]
            stored = held.get(pair(j))
            if not acked:
                # Nothing acknowledged for this pair; at most the one write in flight at the kill.
                assert stored is None or stored.voucher.cumulative_amount == PRICES[j]
                continue
            k = acked[-1] // PAIRS
            # The last acknowledged voucher, or the next one if its write committed before the kill.
            expected = {
                (k + 1) * PRICES[j]: signature(j, k),
                (k + 2) * PRICES[j]: signature(j, k + 1),
            }
            assert stored is not None, f"pair {j}: acknowledged voucher {k} lost"
            amount = stored.voucher.cumulative_amount
            assert amount in expected and stored.signature == expected[amount], f"pair {j}: wrong voucher"
        for i in receipts:
            stored_receipt = ledger.receipt(request_id(i))
            assert stored_receipt is not None, f"acknowledged receipt {i} lost"
            j, k = i % PAIRS, i // PAIRS
            assert stored_receipt.signed.signature == signature(j, k)
            assert stored_receipt.signed.receipt.price == PRICES[j]
        # The reopened ledger keeps enforcing the rule from where the child stopped.
        client, expert = pair(0)
        last = ledger.last_cumulative(client, expert)
        with pytest.raises(VoucherTooLowError):
            ledger.record_voucher(SignedVoucher(Voucher(client, expert, last), b"\x01" * 65), PRICES[0])


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_sigkill_never_forgets_a_reserved_amount(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    db = tmp_path / "wallet.db"
    lines = run_and_kill("wallet", db, rng)
    reserved: dict[int, list[int]] = {}
    confirmed: set[tuple[int, int]] = set()
    for kind, expert, amount in lines:
        if kind == "reserved":
            reserved.setdefault(int(expert), []).append(int(amount))
        else:
            confirmed.add((int(expert), int(amount)))
    integrity_ok(db)
    # The dead child's file lock went with it: the book opens, and settles what was in flight.
    with VoucherBook(db, escrow=ESCROW, chain_id=31337, client=CLIENT) as book:
        assert book.in_flight() == []
        for expert, amounts in reserved.items():
            assert amounts == sorted(amounts) and len(set(amounts)) == len(amounts)
            # Every amount that may have left is covered: the next voucher is above all of them.
            assert book.cumulative(expert) >= max(amounts)
            assert book.reserve(expert, 1) > max(amounts)
            if any((expert, a) not in confirmed for a in amounts):
                assert book.needs_resync(expert)


def _race(
    ledger: VoucherLedger, voucher: SignedVoucher, barrier: threading.Barrier, outcomes: list[bool]
) -> None:
    barrier.wait()
    try:
        ledger.record_voucher(voucher, 10)
        outcomes.append(True)
    except VoucherTooLowError:
        outcomes.append(False)


def test_two_connections_race_for_one_voucher(tmp_path: Path) -> None:
    """Two ledger objects on one file (as two processes would be): BEGIN IMMEDIATE lets one voucher pass once."""
    db = tmp_path / "ledger.db"
    ledgers = [VoucherLedger(db), VoucherLedger(db)]
    try:
        for round_ in range(20):
            voucher = SignedVoucher(Voucher(CLIENT, 1, (round_ + 1) * 10), b"\x02" * 65)
            barrier = threading.Barrier(4)
            outcomes: list[bool] = []
            threads = [
                threading.Thread(target=_race, args=(ledgers[n % 2], voucher, barrier, outcomes))
                for n in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == [False, False, False, True]
        assert ledgers[1].last_cumulative(CLIENT, 1) == 200
    finally:
        for ledger in ledgers:
            ledger.close()
