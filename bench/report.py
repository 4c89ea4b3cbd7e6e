"""Figures, targets and the report files: bench/results/latest.json and bench/results/latest.md.

Every figure carries the baseline it was measured against in the same run and the ratio between them,
because this machine is shared and absolute times drift from run to run. A figure with a target says
whether it met it; a missed target carries one line saying what limits it. A figure that could not be
measured has no value and says why in the same place.

This module measures nothing and starts nothing: it only formats and writes.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"
JSON_FILE = "latest.json"
MARKDOWN_FILE = "latest.md"


@dataclass(frozen=True, slots=True)
class Target:
    """A product target on a figure's ratio to its baseline (`on="ratio"`) or on its value (`on="value"`)."""

    op: Literal["<=", ">="]
    bound: float
    on: Literal["ratio", "value"] = "ratio"
    text: str = ""

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"target op must be '<=' or '>=', got {self.op!r}")
        if self.on not in ("ratio", "value"):
            raise ValueError(f"target must be on 'ratio' or 'value', got {self.on!r}")

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        subject = ratio if self.on == "ratio" else value
        if subject is None or math.isnan(subject):
            return None
        return subject <= self.bound if self.op == "<=" else subject >= self.bound

    def describe(self) -> str:
        return self.text or f"{'ratio' if self.on == 'ratio' else 'value'} {self.op} {self.bound:g}"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number, its baseline of the same run, and its target if it has one."""

    benchmark: str
    name: str
    value: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    baseline_unit: str | None = None  # when the baseline is in another unit than the value
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    limit: str = ""  # one line: what limits a missed target, or why the figure was not measured
    note: str = ""

    @property
    def measured(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def figure(
    benchmark: str,
    name: str,
    value: float | None,
    unit: str,
    *,
    baseline: float | None = None,
    baseline_name: str = "",
    baseline_unit: str | None = None,
    ratio: float | None = None,
    target: Target | None = None,
    limit: str = "",
    note: str = "",
) -> Figure:
    """Build a Figure: the ratio is value / baseline unless given; `met` follows from the target.

    `limit` is kept only when the target is missed (or the figure was not measured): a met target needs
    no excuse.
    """
    if ratio is None and value is not None and baseline:
        ratio = value / baseline
    met = target.check(value, ratio) if target is not None else None
    keep_limit = limit if (met is False or value is None) else ""
    return Figure(
        benchmark=benchmark,
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        baseline_name=baseline_name,
        baseline_unit=baseline_unit,
        ratio=ratio,
        target=target.describe() if target is not None else "",
        met=met,
        limit=keep_limit,
        note=note,
    )


def not_measured(benchmark: str, name: str, why: str, *, target: Target | None = None) -> Figure:
    """A figure that could not be measured in this run, and why (the report lists it)."""
    return Figure(
        benchmark=benchmark,
        name=name,
        value=None,
        unit="",
        target=target.describe() if target is not None else "",
        met=None,
        limit=f"not measured: {why}",
    )


@dataclass(frozen=True, slots=True)
class BenchRun:
    """How one benchmark went: its wall time, and the error that stopped it if any."""

    name: str
    seconds: float
    error: str = ""


@dataclass(slots=True)
class Report:
    mode: str  # "quick" or "long"
    started: str  # ISO 8601, UTC
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    runs: list[BenchRun] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "moe-market-bench/1",
            "mode": self.mode,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "machine": self.machine,
            "runs": [asdict(r) for r in self.runs],
            "figures": [f.to_dict() for f in self.figures],
            "summary": summary(self.figures),
        }


def summary(figures: Sequence[Figure]) -> dict[str, int]:
    with_target = [f for f in figures if f.target]
    return {
        "figures": len(figures),
        "targets": len(with_target),
        "met": sum(1 for f in with_target if f.met is True),
        "missed": sum(1 for f in with_target if f.met is False),
        "not_measured": sum(1 for f in figures if not f.measured),
    }


# -- machine ----------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _anvil_version() -> str:
    try:
        from market.chain.devnet import find_anvil

        out = subprocess.run([find_anvil(), "--version"], capture_output=True, text=True, timeout=20, check=False)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    except Exception as exc:  # the report must not fail for want of a version string
        return f"unknown ({type(exc).__name__})"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(*, with_anvil: bool = True) -> dict[str, Any]:
    """What the figures were measured on: enough to tell two runs' machines apart."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_gib": _memory_total_gib(),
        "load_average_at_start": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "libp2p": _version("libp2p"),
        "web3": _version("web3"),
        "anvil": _anvil_version() if with_anvil else "not checked",
        "date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


# -- formatting -------------------------------------------------------------------------------------


def fmt_number(value: float | None, unit: str = "") -> str:
    """A number for a table cell, with its unit; probabilities close to 1 keep their informative digits."""
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if unit == "probability":
        if value >= 1.0:
            return "1"
        if value > 0.999:
            return f"1 - {1 - value:.1e}"
        return f"{100 * value:.2f} %"
    if unit in ("gas", "calls", "calls/s", "vouchers", "bytes", "count"):
        text = f"{value:,.0f}"
    elif unit == "x":
        text = f"{value:.3f}"
    else:
        magnitude = abs(value)
        if magnitude == 0:
            text = "0"
        elif magnitude >= 1000:
            text = f"{value:,.0f}"
        elif magnitude >= 100:
            text = f"{value:.0f}"
        elif magnitude >= 10:
            text = f"{value:.1f}"
        elif magnitude >= 1:
            text = f"{value:.2f}"
        elif magnitude >= 0.01:
            text = f"{value:.3f}"
        else:
            text = f"{value:.2e}"
    return f"{text} {unit}" if unit and unit not in ("x",) else (f"{text}x" if unit == "x" else text)


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "-"
    if ratio == 0:
        return "x0"
    if abs(ratio) >= 100:
        return f"x{ratio:,.0f}"
    if abs(ratio) >= 0.01:
        return f"x{ratio:.2f}"
    return f"x{ratio:.1e}"


def fmt_met(f: Figure) -> str:
    if not f.measured:
        return "not measured"
    if not f.target:
        return ""
    return {True: "yes", False: "**no**", None: "?"}[f.met]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _baseline_cell(f: Figure) -> str:
    if f.baseline is None:
        return _cell(f.baseline_name) if f.baseline_name else "-"
    value = fmt_number(f.baseline, f.baseline_unit if f.baseline_unit is not None else f.unit)
    return _cell(f"{value} ({f.baseline_name})" if f.baseline_name else value)


def markdown_table(figures: Iterable[Figure]) -> str:
    """The table pasted into docs/performance.md: figure, value, baseline, ratio, target, met?"""
    lines = [
        "| # | figure | value | baseline (same run) | ratio | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        value = fmt_number(f.value, f.unit) if f.measured else "not measured"
        lines.append(
            f"| {_cell(f.benchmark)} | {_cell(f.name)} | {_cell(value)} | {_baseline_cell(f)} | "
            f"{fmt_ratio(f.ratio)} | {_cell(f.target) or '-'} | {fmt_met(f)} |"
        )
    return "\n".join(lines)


def limits_section(figures: Iterable[Figure]) -> str:
    """One line per missed target (what limits it) and per figure not measured (why)."""
    lines = []
    for f in figures:
        if f.met is False or not f.measured:
            lines.append(f"- {f.benchmark} / {f.name}: {f.limit or 'no reason recorded'}")
    return "\n".join(lines) if lines else "- none"


def machine_line(machine: dict[str, Any]) -> str:
    load = machine.get("load_average_at_start")
    load_text = f", load average {load[0]:.2f} at start" if load else ""
    return (
        f"{machine.get('cpu_model', '?')}, {machine.get('cores_usable', '?')} usable of {machine.get('cores', '?')} "
        f"cores, {machine.get('memory_gib', '?')} GiB{load_text}; Python {machine.get('python', '?')}, "
        f"torch {machine.get('torch', '?')}, libp2p {machine.get('libp2p', '?')}, web3 {machine.get('web3', '?')}, "
        f"{machine.get('anvil', 'anvil ?')}; {machine.get('platform', '?')}"
    )


def to_markdown(report: Report) -> str:
    s = summary(report.figures)
    runs = ", ".join(
        f"{r.name} {r.seconds:.1f} s" + (f" (error: {r.error})" if r.error else "") for r in report.runs
    )
    notes = [f"- {f.benchmark} / {f.name}: {f.note}" for f in report.figures if f.note]
    parts = [
        f"# Benchmarks: latest run ({report.mode})",
        "",
        f"Run {report.started}, {report.seconds:.0f} s in all ({runs}).",
        "",
        f"Machine: {machine_line(report.machine)}.",
        "",
        f"{s['met']} of {s['targets']} targets met, {s['missed']} missed, {s['not_measured']} figures not measured. "
        "Ratios are value / baseline, both measured in this run.",
        "",
        markdown_table(report.figures),
        "",
        "## Missed targets and figures not measured: what limits them",
        "",
        limits_section(report.figures),
        "",
        "## Notes on the figures",
        "",
        *(notes or ["- none"]),
        "",
    ]
    return "\n".join(parts)


def write(report: Report, out_dir: str | os.PathLike[str] = RESULTS_DIR) -> tuple[Path, Path]:
    """Write latest.json and latest.md into `out_dir` (atomically: a reader never sees half a file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / JSON_FILE, out / MARKDOWN_FILE
    for path, text in (
        (json_path, json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"),
        (md_path, to_markdown(report)),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return json_path, md_path


def print_figure(f: Figure, stream: Any = None) -> None:
    """One line per figure as it is measured, so a long run shows progress."""
    stream = stream or sys.stdout
    if not f.measured:
        print(f"  {f.name:<52} {f.limit}", file=stream, flush=True)
        return
    base = f"  vs {_baseline_cell(f)} {fmt_ratio(f.ratio)}" if f.baseline is not None or f.ratio is not None else ""
    target = f"  [target {f.target}: {'met' if f.met else 'MISSED' if f.met is False else '?'}]" if f.target else ""
    print(f"  {f.name:<52} {fmt_number(f.value, f.unit)}{base}{target}", file=stream, flush=True)
    if f.met is False and f.limit:
        print(f"      limited by: {f.limit}", file=stream, flush=True)
