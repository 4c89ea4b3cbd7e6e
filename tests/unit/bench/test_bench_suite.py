"""The benchmark runner end to end on its one benchmark that needs no market: `python -m bench --only
checking` runs, prints, writes both result files and exits 0. No figure is compared with a time."""

from __future__ import annotations

import json

from bench import BENCHMARKS
from bench.__main__ import main


def test_the_suite_lists_every_benchmark(capsys) -> None:  # noqa: ANN001 - pytest fixture
    assert main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert listed == list(BENCHMARKS)


def test_a_tiny_benchmark_runs_and_is_reported(tmp_path, capsys) -> None:  # noqa: ANN001 - pytest fixtures
    assert main(["--only", "checking", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4. checking" in out
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["runs"][0]["name"] == "checking" and data["runs"][0]["error"] == ""
    figures = data["figures"]
    assert figures and all(f["value"] is not None for f in figures)
    targeted = [f for f in figures if f["target"]]
    assert targeted and all(f["met"] in (True, False) for f in targeted)
    assert (tmp_path / "latest.md").read_text().startswith("# Benchmarks: latest run (quick)")
