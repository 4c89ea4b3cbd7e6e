"""The child process of test_ledger_durability: writes in a tight loop, printing each write after it returned.

Run as ``python durability_child.py ledger|wallet DB``. Kept free of pytest and of the test module so that it
starts fast; the parent imports the same helpers to know what each acknowledged line stands for.
"""

from __future__ import annotations

import hashlib
import sys


def acknowledge(*fields: object) -> None:
    """Prints one whole line in a single write: with PYTHONUNBUFFERED set, print() writes each field on its own,
    so a SIGKILL could cut a line in half."""
    sys.stdout.write(" ".join(map(str, fields)) + "\n")
    sys.stdout.flush()

PAIRS = 7  # (client, expert) pairs the ledger child writes to, round robin
PRICES = [10, 3, 2**70, 1, 7, 10**18, 5]
ESCROW, CLIENT = "0x" + "e5" * 20, "0x" + "c1" * 20


def pair(j: int) -> tuple[str, int]:
    return f"0x{j % 3 + 1:040x}", j % 4 + 1 + 10 * (j // 4)


def signature(j: int, k: int) -> bytes:
    return (hashlib.sha256(f"{j}:{k}".encode()).digest() * 3)[:65]


def request_id(i: int) -> bytes:
    return hashlib.sha256(f"request {i}".encode()).digest()


def ledger_child(db: str) -> None:
    from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher
    from node.ledger import VoucherLedger

    ledger = VoucherLedger(db)
    acknowledge("ready")
    for i in range(1_000_000):
        j, k = i % PAIRS, i // PAIRS
        client, expert = pair(j)
        voucher = SignedVoucher(Voucher(client, expert, (k + 1) * PRICES[j]), signature(j, k))
        ledger.record_voucher(voucher, PRICES[j])
        acknowledge("v", i)
        receipt = Receipt(expert, b"m" * 32, request_id(i), b"i" * 32, b"o" * 32, PRICES[j])
        ledger.record_receipt(SignedReceipt(receipt, signature(j, k)), client)
        acknowledge("r", i)


def wallet_child(db: str) -> None:
    from market.wallet import VoucherBook

    book = VoucherBook(db, escrow=ESCROW, chain_id=31337, client=CLIENT)
    acknowledge("ready")
    for i in range(1_000_000):
        expert, price = i % 3, (i % 5) + 1
        amount = book.reserve(expert, price)
        acknowledge("reserved", expert, amount)
        if i % 4 != 3:  # every fourth call stays in flight
            book.confirm(expert, amount)
            acknowledge("confirmed", expert, amount)


if __name__ == "__main__":
    {"ledger": ledger_child, "wallet": wallet_child}[sys.argv[1]](sys.argv[2])
