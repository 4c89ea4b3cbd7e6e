"""`python -m bench`: run the benchmarks, print their figures, write bench/results/latest.{json,md}.

Exit status: 0 when every benchmark ran, whether or not its targets were met (a missed target is a finding,
reported with what limits it); 1 when a benchmark failed with an error (its figures are marked not
measured and the others still run); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench import BENCHMARKS, TITLES
from bench.env import BenchContext, MarketEnv
from bench.report import (
    RESULTS_DIR,
    BenchRun,
    Figure,
    Report,
    load_average,
    machine_info,
    markdown_table,
    not_measured,
    now_iso,
    print_figure,
    write,
)


def _parse_only(value: str | None) -> list[str]:
    if not value:
        return list(BENCHMARKS)
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def run_suite(names: Sequence[str], *, long: bool, workdir: Path, log=print) -> Report:  # noqa: ANN001
    """Run `names` in the suite's order with one shared environment; never raises for a benchmark's error."""
    started = time.perf_counter()
    report = Report(mode="long" if long else "quick", started=now_iso(), machine=machine_info())
    env = MarketEnv(workdir, log=log)
    ctx = BenchContext(long=long, workdir=workdir, env=env, log=log)
    try:
        for name in names:
            module = importlib.import_module(f"bench.{name}")
            log(f"\n== {module.TITLE}")
            t0 = time.perf_counter()
            error = ""
            figures: list[Figure]
            try:
                figures = list(module.run(ctx))
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
                figures = [not_measured(name, module.TITLE, f"the benchmark failed ({error[:300]})")]
            for f in figures:
                print_figure(f)
            report.figures.extend(figures)
            report.runs.append(BenchRun(name, time.perf_counter() - t0, error))
            log(f"   ({time.perf_counter() - t0:.1f} s)")
    finally:
        env.close()
    report.machine["load_average_at_end"] = load_average()
    report.seconds = time.perf_counter() - started
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--long", action="store_true", help="longer loops and more trials (steadier figures)")
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"results folder (default {RESULTS_DIR})")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the results files alone")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temporary folder (node logs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the market's own messages")
    args = parser.parse_args(argv)
    if args.list:
        for name in BENCHMARKS:
            print(f"{name:<12} {TITLES[name]}")
        return 0
    names = _parse_only(args.only)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    workdir = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    try:
        report = run_suite(names, long=args.long, workdir=workdir)
    finally:
        if args.keep_workdir:
            print(f"\nwork folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{markdown_table(report.figures)}\n")
    print(f"{report.mode} suite: {report.seconds:.0f} s")
    if not args.no_write:
        json_path, md_path = write(report, args.out)
        print(f"wrote {json_path} and {md_path}")
    return 1 if any(r.error for r in report.runs) else 0


if __name__ == "__main__":
    sys.exit(main())
