"""`moe devnet up / down / status`: a local chain (anvil, on 127.0.0.1 unless --host) with the market deployed.

The chain runs detached; its pid, log and deployment.json live in the state directory (default
.moe/devnet), where the other commands find the deployment. Only these commands (and the tests) know
about anvil's well-known throwaway accounts.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import click

DEFAULT_STATE_DIR = Path(".moe/devnet")


def _ether(wei: int) -> str:
    return f"{wei / 10**18:g} ETH"


@click.group()
def devnet() -> None:
    """Start or stop a local chain (anvil) with the market deployed.

    \b
    Examples:
      moe devnet up                     # anvil on 127.0.0.1:8545, contracts deployed
      moe devnet up --port 9545 --json  # machine-readable output
      moe devnet up --host 10.0.0.5     # reachable from other hosts on that network (not loopback only)
      moe devnet status
      moe devnet down
    """


@devnet.command()
@click.option(
    "--port",
    default=8545,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="RPC port on the host below.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address anvil listens on (an IP address; anything but loopback exposes the devnet's RPC).",
)
@click.option(
    "--state-dir",
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the pid, log and deployment.json are kept.",
)
@click.option(
    "--profile",
    default="devnet",
    show_default=True,
    help="Market parameters: devnet, mainnet-like, or a profile file (.toml/.json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def up(port: int, host: str, state_dir: Path, profile: str, as_json: bool) -> None:
    """Start anvil in the background and deploy the market to it.

    \b
    Examples:
      moe devnet up
      moe devnet up --port 9545 --state-dir /tmp/moe-devnet
    """
    from market.chain.deployment import deployment_to_dict
    from market.chain.devnet import ANVIL_TEST_KEYS, DEPLOYMENT_FILE, devnet_up, throwaway_signer
    from market.chain.params import resolve_profile

    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise click.BadParameter(f"{host!r} is not an IP address", param_hint="--host") from None
    params = resolve_profile(profile)
    deployment = devnet_up(state_dir, port, params, host=host)
    path = state_dir / DEPLOYMENT_FILE
    accounts = [throwaway_signer(i).address for i in range(len(ANVIL_TEST_KEYS))]
    if as_json:
        data = deployment_to_dict(deployment, params.as_dict())
        data.update(deployment_file=str(path), state_dir=str(state_dir), throwaway_accounts=accounts)
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"devnet up: chain id {deployment.chain_id} at {deployment.rpc_url}")
    click.echo(f"  registry   {deployment.registry}")
    click.echo(f"  escrow     {deployment.escrow}")
    click.echo(f"  disputes   {deployment.disputes}")
    click.echo(f"  block      {deployment.block}")
    click.echo(f"  min stake  {_ether(params.min_stake)}, dispute bond {_ether(params.dispute_bond)}, "
               f"vote {params.commit_period} s + {params.reveal_period} s")  # fmt: skip
    click.echo(f"deployment file: {path}")
    click.echo(
        f"funded THROWAWAY TEST accounts (anvil's public keys, devnet only): {accounts[0]} ... {accounts[-1]}"
    )
    click.echo(f"stop it with: moe devnet down --state-dir {state_dir}")


@devnet.command()
@click.option(
    "--state-dir",
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def down(state_dir: Path) -> None:
    """Stop the devnet started from the state directory.

    \b
    Example:
      moe devnet down
    """
    from market.chain.devnet import devnet_down

    if devnet_down(state_dir):
        click.echo(f"devnet stopped ({state_dir})")
    else:
        click.echo(f"no devnet was running from {state_dir}")


@devnet.command()
@click.option(
    "--state-dir",
    default=str(DEFAULT_STATE_DIR),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(state_dir: Path, as_json: bool) -> None:
    """Say whether the devnet runs and answers (exit status 1 when it does not).

    \b
    Example:
      moe devnet status --json
    """
    from market.chain.deployment import deployment_to_dict
    from market.chain.devnet import devnet_status

    st = devnet_status(state_dir)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "state_dir": str(st.state_dir),
                    "running": st.running,
                    "answering": st.answering,
                    "pid": st.pid,
                    "rpc_url": st.rpc_url,
                    "block": st.block,
                    "deployment": deployment_to_dict(st.deployment) if st.deployment else None,
                },
                indent=2,
            )
        )
    elif st.running:
        health = f"answering, block {st.block}" if st.answering else "NOT answering"
        click.echo(f"devnet running (pid {st.pid}) at {st.rpc_url}: {health}")
        if st.deployment:
            d = st.deployment
            click.echo(
                f"  chain id {d.chain_id}; registry {d.registry}, escrow {d.escrow}, disputes {d.disputes}"
            )
    else:
        click.echo(f"no devnet running from {state_dir}; start one with `moe devnet up`")
    if not (st.running and st.answering):
        # SystemExit rather than ctx.exit: the root `main` runs click with standalone_mode=False, which
        # turns ctx.exit(1) into a return value it does not pass on.
        sys.exit(1)
