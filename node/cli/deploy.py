"""`moe deploy`: deploy the market contracts to any EVM chain given an RPC URL and a keystore.

The parameters come from a profile (deploy/profiles/*.toml, or the built-in devnet / mainnet-like
profiles); the contracts' bytecode is shipped in the package. The deployment file it writes is what every
other command reads. The password is read from an environment variable or prompted for, never from argv.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


def _ether(wei: int) -> str:
    return f"{wei / 10**18:g} ETH"


def _days(seconds: int) -> str:
    return f"{seconds} s" if seconds < 3600 else f"{seconds / 86400:g} days"


@click.command()
@click.option("--rpc", "rpc_url", required=True, help="JSON-RPC URL of the chain (http:// or https://).")
@click.option(
    "--keystore",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="eth_account keystore (JSON) of the deployer; it pays the gas.",
)
@click.option(
    "--password-env",
    metavar="VAR",
    help="Environment variable holding the keystore password (else prompted).",
)
@click.option(
    "--profile",
    default="mainnet-like",
    show_default=True,
    help="Market parameters: devnet, mainnet-like, or the path of a profile file (.toml/.json).",
)
@click.option(
    "--out",
    default="deployment.json",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the deployment file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing deployment file.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def deploy(
    rpc_url: str,
    keystore: Path,
    password_env: str | None,
    profile: str,
    out: Path,
    force: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Deploy the market contracts to any EVM chain by RPC URL.

    Sends four transactions from the keystore's account (registry, escrow, dispute manager, then wiring
    the dispute manager into the registry) and writes the deployment file.

    \b
    Examples:
      MOE_DEPLOYER_PASSWORD=... moe deploy --rpc https://rpc.example.org \\
          --keystore ~/.moe/deployer.json --password-env MOE_DEPLOYER_PASSWORD
      moe deploy --rpc http://127.0.0.1:8545 --keystore k.json --profile devnet --out .moe/deployment.json
      moe deploy --rpc URL --keystore k.json --profile ./deploy/profiles/my-network.toml
    """
    from market.chain.deploy import deploy_market
    from market.chain.deployment import deployment_to_dict, save_deployment
    from market.chain.params import resolve_profile
    from market.chain.signer import password_from_env, signer_from_keystore
    from market.errors import MarketConfigError

    if out.exists() and not force:
        raise MarketConfigError(
            f"{out} already exists; pass --force to overwrite it or --out to choose another file"
        )
    params = resolve_profile(profile)
    password = (
        password_from_env(password_env)
        if password_env
        else click.prompt("keystore password", hide_input=True)
    )
    account = signer_from_keystore(keystore, password)
    if not yes:
        click.echo(f"deployer   {account.address}", err=True)
        click.echo(f"rpc        {rpc_url}", err=True)
        click.echo(
            f"params     min stake {_ether(params.min_stake)}, verifier stake {_ether(params.min_verifier_stake)}, "
            f"bond {_ether(params.dispute_bond)}, vote {_days(params.commit_period)} + {_days(params.reveal_period)}, "
            f"unbonding {_days(params.unbonding_period)}, withdraw delay {_days(params.withdraw_delay)}",
            err=True,
        )
        click.confirm("deploy the market with these parameters?", abort=True, err=True)
    deployment = deploy_market(rpc_url, account, params)
    save_deployment(out, deployment, params.as_dict())
    if as_json:
        click.echo(
            json.dumps(
                {**deployment_to_dict(deployment, params.as_dict()), "deployment_file": str(out)}, indent=2
            )
        )
        return
    click.echo(f"market deployed on chain {deployment.chain_id} (block {deployment.block})")
    click.echo(f"  registry   {deployment.registry}")
    click.echo(f"  escrow     {deployment.escrow}")
    click.echo(f"  disputes   {deployment.disputes}")
    click.echo(f"deployment file: {out}")
