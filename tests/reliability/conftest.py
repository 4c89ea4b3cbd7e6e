"""Reliability scenarios: the `record_row` fixture and the end-of-session table of rows (reliability_rows.py).

Every scenario reports one row (calls attempted / succeeded / failed, wei paid by the client, wei redeemed
on chain, vouchers lost, double payments). `record_row` prints it (visible with `pytest -s`), appends it
as one JSON line to `<pytest basetemp>/reliability-rows.jsonl` and keeps it for the table that
`pytest_terminal_summary` prints at the end of the session (`make chaos` ends with it).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from reliability_rows import ROWS, Row


@pytest.fixture
def record_row(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    def record(row: Row) -> None:
        data = asdict(row)
        ROWS.append(data)
        line = json.dumps(data, default=str)
        print(f"\nRELIABILITY ROW {line}")
        path = Path(tmp_path_factory.getbasetemp()) / "reliability-rows.jsonl"
        with path.open("a") as f:
            f.write(line + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not ROWS:
        return
    cols = ["scenario", "attempted", "succeeded", "failed", "paid_wei", "redeemed_wei", "lost_vouchers",
            "double_payments", "seconds"]
    table = [[str(r[c]) if c != "seconds" else f"{r[c]:.1f}" for c in cols] for r in ROWS]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    tr = terminalreporter
    tr.write_sep("=", "reliability scenarios")
    tr.write_line("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for t in table:
        tr.write_line("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    for r in ROWS:
        if r["notes"]:
            tr.write_line(f"{r['scenario']}: {json.dumps(r['notes'], default=str)}")
