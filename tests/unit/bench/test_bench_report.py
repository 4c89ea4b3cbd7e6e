"""The benchmark report: figures, ratios, targets, and the two files it writes. Nothing here is timed."""

from __future__ import annotations

import json

import pytest

from bench.report import (
    Figure,
    Report,
    Target,
    figure,
    fmt_number,
    fmt_ratio,
    limits_section,
    machine_info,
    markdown_table,
    not_measured,
    summary,
    write,
)


def test_figure_computes_the_ratio_and_checks_the_target() -> None:
    met = figure("latency", "p50", 3.0, "ms", baseline=2.0, baseline_name="raw",
                 target=Target("<=", 1.5), limit="never shown: the target is met")  # fmt: skip
    assert met.ratio == pytest.approx(1.5)
    assert met.met is True
    assert met.limit == ""
    missed = figure("latency", "p50", 4.0, "ms", baseline=2.0, target=Target("<=", 1.5), limit="the disk")
    assert missed.met is False
    assert missed.limit == "the disk"
    by_value = figure("gas", "gas/call", 64.0, "gas", baseline=60_000, target=Target("<=", 100, "value"))
    assert by_value.met is True
    assert by_value.ratio == pytest.approx(64 / 60_000)
    no_target = figure("gate", "ms", 1.0, "ms")
    assert no_target.met is None and no_target.ratio is None


def test_a_figure_not_measured_says_why() -> None:
    f = not_measured("digits", "remote MoE", "SDK missing", target=Target(">=", 1.0))
    assert not f.measured
    assert f.met is None
    assert f.limit == "not measured: SDK missing"


def test_target_rejects_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="op"):
        Target("<", 1.0)  # type: ignore[arg-type]


def test_formatting() -> None:
    assert fmt_number(0.999955, "probability") == "1 - 4.5e-05"
    assert fmt_number(0.9933, "probability") == "99.33 %"
    assert fmt_number(20875.29, "gas") == "20,875 gas"
    assert fmt_number(None, "ms") == "-"
    assert fmt_ratio(1.2345) == "x1.23"
    assert fmt_ratio(None) == "-"


def _report() -> Report:
    report = Report(mode="quick", started="2026-01-01T00:00:00+00:00", machine=machine_info(with_anvil=False))
    report.figures = [
        figure("latency", "paid p50", 3.0, "ms", baseline=1.0, baseline_name="raw libp2p p50",
               target=Target("<=", 1.5, text="p50 <= 1.5x raw"), limit="two fsyncs per call"),
        figure("gas", "gas/call | 1,000 calls", 64.0, "gas", baseline=62_000, target=Target("<=", 100, "value")),
        not_measured("digits", "remote MoE", "SDK missing"),
    ]  # fmt: skip
    return report


def test_write_produces_json_and_markdown(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    report = _report()
    json_path, md_path = write(report, tmp_path)
    data = json.loads(json_path.read_text())
    assert data["mode"] == "quick"
    assert {"cpu_model", "cores", "python", "torch", "date"} <= set(data["machine"])
    assert data["summary"] == {"figures": 3, "targets": 2, "met": 1, "missed": 1, "not_measured": 1}
    assert [f["name"] for f in data["figures"]] == ["paid p50", "gas/call | 1,000 calls", "remote MoE"]
    text = md_path.read_text()
    assert "| # | figure | value | baseline (same run) | ratio | target | met? |" in text
    assert "gas/call \\| 1,000 calls" in text  # a pipe in a name does not break the table
    assert "latency / paid p50: two fsyncs per call" in text
    assert "digits / remote MoE: not measured: SDK missing" in text


def test_table_and_limits_sections() -> None:
    figures: list[Figure] = _report().figures
    table = markdown_table(figures)
    assert table.count("\n") == len(figures) + 1
    assert "**no**" in table and "yes" in table and "not measured" in table
    assert limits_section(figures).count("\n- ") == 1  # two lines: the miss and the figure not measured
    assert summary(figures)["missed"] == 1
