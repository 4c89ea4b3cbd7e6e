"""`moe market ...`: what anyone can see of the market, read from the chain without a key.

    moe market ls [--model 0x..] [--capability NAME] [--json]   experts: stake, price, reputation, status, disputes
    moe market disputes [--json]                                every dispute and its outcome

Reputation is what the chain proves (stake, age, volume, disputes lost, slashing: market.reputation's
chain score), combined with this machine's own observations when a client state directory holds a
reputation book for the deployment (`--state-dir`, default $MOE_CLIENT_STATE or ~/.moe/client).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import click

from node.cli.common import deployment_option, deployment_path, format_eth, print_json, print_table


def _chain(deployment: str | None):  # noqa: ANN202
    from market.chain.contracts import MarketChain
    from market.chain.deployment import load_deployment

    return MarketChain(load_deployment(deployment_path(deployment)))


def _book(state_dir: str | None, chain) -> object:  # noqa: ANN001
    from market.reputation import ReputationBook

    root = Path(state_dir or os.environ.get("MOE_CLIENT_STATE") or "~/.moe/client").expanduser()
    d = chain.deployment
    path = root / f"{d.chain_id}-{d.registry[2:12].lower()}" / "reputation.json"
    return ReputationBook.load(path)


@click.group()
def market() -> None:
    """See the market: experts, stake, price, reputation, disputes (no key needed).

    \b
    Examples:
      moe market ls
      moe market ls --model 0x<modelHash> --json
      moe market disputes
    """


@market.command("ls")
@click.option("--model", "model_hash", default=None, metavar="0xHASH", help="Only experts of this modelHash.")
@click.option("--capability", default=None, help="Only experts of this capability (e.g. digits-expert-0).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="A client state directory whose own observations enter the reputation.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@deployment_option
def ls(model_hash: str | None, capability: str | None, state_dir: str | None, as_json: bool,
       deployment: str | None) -> None:
    """List registered experts with stake, price, reputation, status and disputes lost.

    \b
    Examples:
      moe market ls
      moe market ls --model 0x<modelHash> --json
    """
    from market.client.core import capability_bytes
    from market.manifest import parse_model_hash

    chain = _chain(deployment)
    if model_hash is not None:
        experts = chain.experts_by_model(parse_model_hash(model_hash))
        if capability is not None:
            experts = [e for e in experts if e.capability == capability_bytes(capability)]
    elif capability is not None:
        experts = chain.experts_by_capability(capability_bytes(capability))
    else:
        count = chain.expert_count()
        experts = chain.get_experts(range(1, count + 1)) if count else []
    book = _book(state_dir, chain)
    now = int(time.time())
    rows = []
    for e in sorted(experts, key=lambda e: e.expert_id):
        rows.append({
            "expert_id": e.expert_id,
            "model_hash": "0x" + e.model_hash.hex(),
            "operator": e.operator,
            "price": str(e.price),
            "stake": str(e.stake),
            "reputation": round(book.score(e, now), 4),  # type: ignore[attr-defined]
            "status": e.status.name.lower(),
            "disputes_lost": e.disputes_lost,
            "open_disputes": e.open_disputes,
            "slashed": str(e.slashed_total),
            "volume": str(e.volume),
            "endpoint": list(e.endpoint),
        })
    if as_json:
        print_json(rows)
        return
    print_table(f"{len(rows)} expert(s)", ["id", "model", "operator", "price", "stake", "reputation", "status",
                                           "disputes lost", "slashed"], [
        (r["expert_id"], r["model_hash"][:12] + "..", r["operator"][:10] + "..", format_eth(int(r["price"])),
         format_eth(int(r["stake"])), f"{r['reputation']:.3f}", r["status"], r["disputes_lost"],
         format_eth(int(r["slashed"]))) for r in rows
    ])


@market.command("disputes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@deployment_option
def disputes(as_json: bool, deployment: str | None) -> None:
    """Every dispute on chain: expert, challenger, status, slashed stake.

    \b
    Example:
      moe market disputes --json
    """
    chain = _chain(deployment)
    count = chain.dispute_count()
    items = [chain.get_dispute(i) for i in range(1, count + 1)]
    rows = [{
        "dispute_id": d.dispute_id,
        "expert_id": d.expert_id,
        "challenger": d.challenger,
        "status": d.status.name.lower(),
        "bond": str(d.bond),
        "slashed": str(d.slashed),
        "guilty_stake": str(d.guilty_stake),
        "innocent_stake": str(d.innocent_stake),
        "voters": d.voters,
        "reveal_ends": d.reveal_ends,
        "request_id": "0x" + d.request_id.hex(),
    } for d in items]
    if as_json:
        print_json(rows)
        return

    def when(ts: int) -> str:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "-"

    print_table(f"{len(rows)} dispute(s)", ["id", "expert", "challenger", "status", "slashed", "voters", "reveal ends"], [
        (r["dispute_id"], r["expert_id"], r["challenger"][:10] + "..", r["status"], format_eth(int(r["slashed"])),
         r["voters"], when(r["reveal_ends"])) for r in rows
    ])
