"""The row every reliability scenario reports, and how its money columns are computed.

A helper module, not a conftest, so that test files import it by a name no other directory uses
(`from reliability_rows import Row, money_row`); tests/reliability/conftest.py prints the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROWS: list[dict[str, Any]] = []  # every row recorded in this pytest session, for the closing table


@dataclass
class Row:
    scenario: str
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    paid_wei: int = 0
    redeemed_wei: int = 0
    lost_vouchers: int = 0
    double_payments: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)


def money_row(row: Row, *, price: int, paid: dict[int, int], answered: dict[int, int],
              redeemed: dict[int, int], held: dict[int, int]) -> Row:
    """Fill the money columns. Per expert id: `paid` = the client's signed total, `answered` = calls the
    client got an answer for (each holds at least one price in the node's book), `redeemed` = on chain,
    `held` = the node ledger's last cumulative for this client after a graceful stop.

    vouchers lost = answered calls not covered by the redemption, plus ledger amounts never redeemed;
    double payment = redeemed on chain over what the client signed for that expert."""
    row.paid_wei = sum(paid.values())
    row.redeemed_wei = sum(redeemed.values())
    lost = 0
    double = 0
    for eid in set(paid) | set(answered) | set(redeemed) | set(held):
        r = redeemed.get(eid, 0)
        lost += max(0, answered.get(eid, 0) * price - r) // price
        lost += max(0, held.get(eid, 0) - r) // price
        if r > paid.get(eid, 0):
            double += 1
    row.lost_vouchers = lost
    row.double_payments = double
    return row
