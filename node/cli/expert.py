"""`moe expert ...`: what an expert operator does: register (stake), serve, check, redeem, unbond, withdraw.

The operator's key (cold: holds the stake) is used only by register, unbond and withdraw. The node's hot
signer key, created in the node's home, signs receipts and pays the gas of redemptions; payments always go
to the operator's address.
"""

from __future__ import annotations

from pathlib import Path

import click

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

HOME_HELP = "The node's home directory (config, keys, models, ledger)."


@click.group()
def expert() -> None:
    """Stake, register, serve and get paid as an expert operator.

    \b
    Examples:
      moe model pack-digits --out models/
      export OPERATOR_KEY=0x...   MOE_PASSWORD=...
      moe expert register --home node1 --key-env OPERATOR_KEY \\
          --model-dir models/expert-0 --price 1gwei --stake 1eth
      moe expert serve --home node1
      moe expert status --home node1
      moe expert redeem --home node1
    """


@expert.command()
@click.option("--home", required=True, type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@deployment_option
@key_options("operator")
@click.option("--model-dir", "model_dirs", multiple=True, required=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A model package (manifest.json + weights). Repeat to register several experts.")
@click.option("--price", type=AMOUNT, required=True, help="Price per call, e.g. 1gwei.")
@click.option("--stake", type=AMOUNT, required=True, help="Stake per expert, at least the market's minimum.")
@click.option("--listen-host", default="127.0.0.1", show_default=True, help="Address the node listens on.")
@click.option("--listen-port", type=int, default=0, help="TCP port (default: a free one, kept in node.toml).")
@click.option("--announce-host", default=None, help="Address registered on chain (default: --listen-host).")
@click.option("--gas-fund", type=AMOUNT, default="0.05eth", show_default=True,
              help="Sent from the operator to the node's hot signer so it can pay for redemptions.")
@click.option("--unsafe-behaviour", type=click.Choice(["honest", "perturb", "zeros", "cached"]), default="honest",
              hidden=True, help="DEMOS AND TESTS ONLY: make this node cheat.")
@click.option("--json", "as_json", is_flag=True)
def register(home: Path, deployment: str | None, key_env: str | None, keystore: str | None,
             model_dirs: tuple[Path, ...], price: int, stake: int, listen_host: str, listen_port: int,
             announce_host: str | None, gas_fund: int, unsafe_behaviour: str, as_json: bool) -> None:
    """Stake and register one expert per model package, and write the node's configuration.

    Creates the node's identity and hot signer in HOME if missing (passwords from MOE_PASSWORD).

    \b
    Example:
      moe expert register --home node1 --key-env OPERATOR_KEY --model-dir models/expert-0 \\
          --price 1gwei --stake 1eth
    """
    from node.app import register_node

    operator = load_signer(key_env, keystore, what="operator")
    result = register_node(
        home, deployment_path(deployment), operator, model_dirs, price=price, stake=stake,
        listen_host=listen_host, listen_port=listen_port, announce_host=announce_host, gas_fund=gas_fund,
        behaviour=unsafe_behaviour,
    )
    config, identity, hot = result.config, result.identity, result.signer
    rows = [(e.expert_id, e.name, "0x" + e.model_hash.hex(), format_eth(price), format_eth(stake))
            for e in result.registered]
    if as_json:
        print_json({
            "home": str(home), "peer_id": str(identity.peer_id), "signer": hot.address,
            "endpoint": config.endpoint,
            "experts": [{"expert_id": r[0], "name": r[1], "model_hash": r[2]} for r in rows],
        })
        return
    print_table("registered experts", ["id", "model", "modelHash", "price", "stake"], rows)
    click.echo(f"node {identity.peer_id} at {' '.join(config.endpoint)}; hot signer {hot.address}")
    click.echo(f"serve it with: moe expert serve --home {home}")


@expert.command()
@click.option("--home", required=True, type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
def serve(home: Path) -> None:
    """Serve the registered experts over libp2p until Ctrl-C (vouchers are redeemed on the way out).

    \b
    Example:
      MOE_PASSWORD=... moe expert serve --home node1
    """
    from node.app import run

    run(str(home))


@expert.command()
@click.option("--home", required=True, type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@click.option("--json", "as_json", is_flag=True)
def status(home: Path, as_json: bool) -> None:
    """Show each expert's on-chain state and the node's ledger (vouchers held, redeemed, owed)."""
    from market.chain.contracts import MarketChain
    from market.chain.deployment import load_deployment
    from node.app import LEDGER_FILE, NodeConfig
    from node.ledger import VoucherLedger

    config = NodeConfig.load(home)
    deployment = load_deployment(config.deployment)
    chain = MarketChain(deployment)
    experts = [chain.get_expert(e.expert_id) for e in config.experts]
    with VoucherLedger(config.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        stats = ledger.stats()
    if as_json:
        print_json({
            "experts": [{"expert_id": e.expert_id, "status": e.status.name, "stake": e.stake, "price": e.price,
                         "volume": e.volume, "disputes_lost": e.disputes_lost, "slashed": e.slashed_total}
                        for e in experts],
            "ledger": stats,
        })
        return
    print_table("experts", ["id", "status", "stake", "price", "volume", "disputes lost", "slashed"], [
        (e.expert_id, e.status.name.lower(), format_eth(e.stake), format_eth(e.price), format_eth(e.volume),
         e.disputes_lost, format_eth(e.slashed_total)) for e in experts
    ])
    print_table("ledger", list(stats), [list(stats.values())])


@expert.command()
@click.option("--home", required=True, type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
def redeem(home: Path) -> None:
    """Redeem every unredeemed voucher now, in one transaction per batch."""
    from market.chain.contracts import MarketChain
    from market.chain.deployment import load_deployment
    from node.app import LEDGER_FILE, NodeConfig, load_or_create_signer, password
    from node.ledger import VoucherLedger
    from node.redeemer import Redeemer

    config = NodeConfig.load(home)
    deployment = load_deployment(config.deployment)
    chain = MarketChain(deployment, load_or_create_signer(config.home, password()))
    with VoucherLedger(config.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        redeemer = Redeemer(ledger, chain, [e.expert_id for e in config.experts], config.redeem)
        redeemer.sync_from_chain()
        report = redeemer.redeem_once(force=True)
    click.echo(f"redeemed {report.vouchers} vouchers: {format_eth(report.paid_wei)} paid to the operator "
               f"in {report.transactions} transaction(s), {report.gas_used} gas")
    for error in report.errors:
        click.echo(f"error: {error}", err=True)


def _operator_chain(home: Path, key_env: str | None, keystore: str | None):  # noqa: ANN202
    from market.chain.contracts import MarketChain
    from market.chain.deployment import load_deployment
    from node.app import NodeConfig

    config = NodeConfig.load(home)
    chain = MarketChain(load_deployment(config.deployment), load_signer(key_env, keystore, what="operator"))
    return config, chain


@expert.command()
@click.option("--home", required=True, type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@key_options("operator")
@click.option("--expert-id", type=int, default=None, help="Only this expert (default: every expert of the node).")
def unbond(home: Path, key_env: str | None, keystore: str | None, expert_id: int | None) -> None:
    """Stop being selectable and start the unbonding period (the stake stays slashable until withdrawn)."""
    config, chain = _operator_chain(home, key_env, keystore)
    for e in config.experts:
        if expert_id is None or e.expert_id == expert_id:
            unbonds_at = chain.request_unbond(e.expert_id)
            click.echo(f"expert {e.expert_id}: unbonding; withdraw after timestamp {unbonds_at}")


@expert.command()
@click.option("--home", required=True, type=click.Path(file_okay=False, path_type=Path), help=HOME_HELP)
@key_options("operator")
@click.option("--expert-id", type=int, default=None, help="Only this expert (default: every expert of the node).")
def withdraw(home: Path, key_env: str | None, keystore: str | None, expert_id: int | None) -> None:
    """Withdraw the stake of experts whose unbonding period is over and that have no open dispute."""
    config, chain = _operator_chain(home, key_env, keystore)
    for e in config.experts:
        if expert_id is None or e.expert_id == expert_id:
            amount = chain.withdraw_stake(e.expert_id)
            click.echo(f"expert {e.expert_id}: withdrew {format_eth(amount)}")
