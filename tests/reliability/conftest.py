"""Reliability scenarios: shared helpers, the scenario row, and the end-of-session table.

Every scenario reports one row (calls attempted / succeeded / failed, wei paid by the client, wei redeemed
on chain, vouchers lost, double payments). `record_row` prints it (visible with `pytest -s`), appends it
as one JSON line to `<pytest basetemp>/reliability-rows.jsonl` and keeps it for the table that
`pytest_terminal_summary` prints at the end of the session (`make chaos` ends with it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

_ROWS: list[dict[str, Any]] = []


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


@pytest.fixture
def record_row(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    def record(row: Row) -> None:
        data = asdict(row)
        _ROWS.append(data)
        line = json.dumps(data, default=str)
        print(f"\nRELIABILITY ROW {line}")
        path = Path(tmp_path_factory.getbasetemp()) / "reliability-rows.jsonl"
        with path.open("a") as f:
            f.write(line + "\n")

    return record


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


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _ROWS:
        return
    cols = ["scenario", "attempted", "succeeded", "failed", "paid_wei", "redeemed_wei", "lost_vouchers",
            "double_payments", "seconds"]
    table = [[str(r[c]) if c != "seconds" else f"{r[c]:.1f}" for c in cols] for r in _ROWS]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    tr = terminalreporter
    tr.write_sep("=", "reliability scenarios")
    tr.write_line("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in table:
        tr.write_line("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    for r in _ROWS:
        if r["notes"]:
            tr.write_line(f"{r['scenario']}: {json.dumps(r['notes'], default=str)}")
