"""`moe verifier ...`: stake as a verifier, watch disputes and vote on them, collect the rewards.

The verifier's key signs its stake, votes and claims. It comes from `--key-env VAR` (an environment variable
holding the hex key; throwaway and devnet keys) or `--keystore FILE` with the password in `MOE_PASSWORD`.
The voting logic lives in node/verifier.py; this module only reads options and prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from market.errors import MarketError
from node.cli.common import (
    AMOUNT,
    deployment_option,
    deployment_path,
    format_eth,
    key_options,
    load_signer,
    print_json,
    print_table,
)

DEFAULT_STATE_DIR = Path(".moe/verifier")
READY_FILE = "ready.json"
STATE_DIR_HELP = "Where votes, salts and fetched models are kept (one verifier per directory)."


def _chain(deployment: str | None, key_env: str | None, keystore: str | None):  # noqa: ANN202
    from market.chain.contracts import MarketChain

    signer = load_signer(key_env, keystore, what="verifier")
    return MarketChain.from_deployment_file(deployment_path(deployment), signer)


@click.group()
def verifier() -> None:
    """Stake as a verifier and vote on disputes; earn a share of slashed stake and lost bonds.

    \b
    Examples:
      export VERIFIER_KEY=0x...          # or --keystore FILE with MOE_PASSWORD
      moe verifier register --key-env VERIFIER_KEY --stake 1eth
      moe verifier run --key-env VERIFIER_KEY --state-dir .moe/verifier
      moe verifier status --key-env VERIFIER_KEY
      moe verifier claim --key-env VERIFIER_KEY
      moe verifier unbond --key-env VERIFIER_KEY     # then, after the unbonding period:
      moe verifier withdraw --key-env VERIFIER_KEY
    """


@verifier.command()
@deployment_option
@key_options("verifier")
@click.option("--stake", type=AMOUNT, required=True, help="Stake to lock, e.g. 1eth (at least the market's minimum).")
@click.option("--json", "as_json", is_flag=True)
def register(deployment: str | None, key_env: str | None, keystore: str | None, stake: int, as_json: bool) -> None:
    """Stake and register this account as a verifier (adds to the stake when already registered).

    \b
    Example:
      moe verifier register --key-env VERIFIER_KEY --stake 1eth
    """
    chain = _chain(deployment, key_env, keystore)
    info = chain.get_verifier()
    if info.active:
        chain.add_verifier_stake(stake)
        action = "added"
    else:
        chain.register_verifier(stake)
        action = "registered"
    info = chain.get_verifier()
    if as_json:
        print_json({"verifier": chain.address, "action": action, "stake": str(info.stake)})
        return
    click.echo(f"verifier {chain.address} {action}: stake {format_eth(info.stake)}")
    click.echo("start voting with: moe verifier run --key-env VAR (or --keystore FILE)")


@verifier.command()
@deployment_option
@key_options("verifier")
@click.option("--state-dir", default=str(DEFAULT_STATE_DIR), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help=STATE_DIR_HELP)
@click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address the libp2p host listens on.")
@click.option("--listen-port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port of the libp2p host (0: any free port).")
@click.option("--poll-interval", type=click.FloatRange(0.05, 3600), default=2.0, show_default=True,
              help="Seconds between two looks at the chain.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True,
              help="torch threads used to re-execute a model.")
@click.option("--from-block", type=click.IntRange(0), default=None,
              help="First block to scan on a fresh state directory (default: the deployment's block).")
@click.option("--no-resolve", is_flag=True, help="Do not resolve disputes whose reveal period is over.")
@click.option("--no-claim", is_flag=True, help="Do not claim rewards automatically (use `moe verifier claim`).")
@click.option("--unsafe-lie", is_flag=True, hidden=True,
              help="TESTS AND DEMOS ONLY: vote the opposite of what re-execution shows.")
def run(deployment: str | None, key_env: str | None, keystore: str | None, state_dir: Path, listen_host: str,
        listen_port: int, poll_interval: float, threads: int, from_block: int | None, no_resolve: bool,
        no_claim: bool, unsafe_lie: bool) -> None:
    """Watch disputes and vote on them until Ctrl-C (or SIGTERM).

    For each dispute it may vote on, the verifier fetches the model by its modelHash and the disputed input
    and claimed output by their hashes, re-executes the model, commits its vote, reveals it, resolves the
    dispute when due and claims its rewards. Progress survives restarts (see node/verifier.py).

    \b
    Examples:
      moe verifier run --key-env VERIFIER_KEY
      MOE_DEPLOYMENT=net.json moe -v verifier run --keystore verifier.json --state-dir /var/lib/moe-verifier
    """
    import trio

    from market.chain.contracts import MarketChain
    from node.verifier import VerifierConfig

    signer = load_signer(key_env, keystore, what="verifier")
    chain = MarketChain.from_deployment_file(deployment_path(deployment), signer)
    chain.check_deployment()
    config = VerifierConfig(
        poll_interval=poll_interval, threads=threads, start_block=from_block,
        auto_resolve=not no_resolve, auto_claim=not no_claim, unsafe_lie=unsafe_lie,
    )  # fmt: skip
    if unsafe_lie:
        click.echo("WARNING: --unsafe-lie: this verifier votes against the evidence (tests and demos only)", err=True)
    try:
        trio.run(_serve, chain, state_dir, listen_host, listen_port, config)
    except BaseExceptionGroup as group:
        # trio wraps errors of nursery tasks: show a lone market error as the one clear line it is.
        leaves = list(_leaves(group))
        if len(leaves) == 1 and isinstance(leaves[0], MarketError):
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> Any:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _serve(chain: Any, state_dir: Path, listen_host: str, listen_port: int, config: Any) -> None:
    import signal

    import trio

    from market.models.package import ModelStore
    from market.transport import NodeIdentity, TransportConfig, open_host
    from node.verifier import MODELS_DIR, Verifier

    state_dir.mkdir(parents=True, exist_ok=True)
    store = ModelStore(state_dir / MODELS_DIR)
    # The verifier only dials out (models, evidence): a fresh identity per run is enough.
    async with open_host(NodeIdentity.generate(), TransportConfig(listen_host=listen_host, listen_port=listen_port)) as host:
        node = Verifier(chain, host, store, state_dir, config)
        node.state.lock()  # before anything runs: a second process on this directory stops here
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            ready = {"verifier": node.address, "peer_id": str(host.peer_id), "addrs": host.listen_addrs,
                     "pid": os.getpid()}  # fmt: skip
            tmp = state_dir / f".{READY_FILE}.tmp"
            tmp.write_text(json.dumps(ready) + "\n")
            tmp.replace(state_dir / READY_FILE)
            click.echo(f"verifier {node.address} running; state in {state_dir}")
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    click.echo("stopping verifier")
                    nursery.cancel_scope.cancel()
                    break
    (state_dir / READY_FILE).unlink(missing_ok=True)


@verifier.command()
@deployment_option
@key_options("verifier")
@click.option("--address", default=None, help="Show this address instead of the key's (no key needed).")
@click.option("--state-dir", default=str(DEFAULT_STATE_DIR), show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help=STATE_DIR_HELP)
@click.option("--json", "as_json", is_flag=True)
def status(deployment: str | None, key_env: str | None, keystore: str | None, address: str | None,
           state_dir: Path, as_json: bool) -> None:
    """Show the verifier's stake, its votes (from the state directory) and its claimable rewards.

    \b
    Examples:
      moe verifier status --key-env VERIFIER_KEY
      moe verifier status --address 0xabc... --json
    """
    from market.chain.contracts import MarketChain
    from node.verifier import VerifierState

    if address is None:
        chain = _chain(deployment, key_env, keystore)
        address = chain.address
    else:
        chain = MarketChain.from_deployment_file(deployment_path(deployment))
    info = chain.get_verifier(address)
    voting = chain.voting_stake(address)
    claimable = chain.claimable(address)
    local = VerifierState.read_summary(state_dir)
    votes = []
    if local is not None and str(local.get("verifier", "")).lower() == str(address).lower():
        votes = local["disputes"]
    if as_json:
        print_json({
            "verifier": address, "stake": str(info.stake), "voting_stake": str(voting), "active": info.active,
            "unbonds_at": info.unbonds_at, "claimable": str(claimable), "votes": votes,
        })  # fmt: skip
        return
    state = "active" if info.active else ("unbonding" if info.unbonds_at else "not registered")
    click.echo(f"verifier {address}: {state}, stake {format_eth(info.stake)}, voting stake {format_eth(voting)}")
    if info.unbonds_at:
        click.echo(f"  stake withdrawable at timestamp {info.unbonds_at}")
    click.echo(f"claimable rewards: {format_eth(claimable)}")
    if votes:
        print_table("votes", ["dispute", "expert", "phase", "vote", "outcome", "why"],
                    [(v["dispute_id"], v["expert_id"], v["phase"], v["vote"] or "-", v["outcome"] or "-",
                      (v["last_error"] or v["reason"])[:80]) for v in votes])  # fmt: skip
    else:
        click.echo(f"no votes recorded in {state_dir}")


@verifier.command()
@deployment_option
@key_options("verifier")
def claim(deployment: str | None, key_env: str | None, keystore: str | None) -> None:
    """Withdraw every dispute reward credited to this verifier.

    \b
    Example:
      moe verifier claim --key-env VERIFIER_KEY
    """
    chain = _chain(deployment, key_env, keystore)
    if chain.claimable() == 0:
        click.echo("nothing to claim")
        return
    click.echo(f"claimed {format_eth(chain.claim())}")


@verifier.command()
@deployment_option
@key_options("verifier")
def unbond(deployment: str | None, key_env: str | None, keystore: str | None) -> None:
    """Stop voting and start the unbonding period of the verifier's stake.

    \b
    Example:
      moe verifier unbond --key-env VERIFIER_KEY
    """
    chain = _chain(deployment, key_env, keystore)
    unbonds_at = chain.request_verifier_unbond()
    click.echo(f"unbonding: the stake can be withdrawn from chain timestamp {unbonds_at} (`moe verifier withdraw`)")


@verifier.command()
@deployment_option
@key_options("verifier")
def withdraw(deployment: str | None, key_env: str | None, keystore: str | None) -> None:
    """Withdraw the verifier's stake once its unbonding period is over.

    \b
    Example:
      moe verifier withdraw --key-env VERIFIER_KEY
    """
    chain = _chain(deployment, key_env, keystore)
    click.echo(f"withdrew {format_eth(chain.withdraw_verifier_stake())}")
