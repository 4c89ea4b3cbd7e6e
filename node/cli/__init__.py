"""The `moe` command line: one group per user job, loaded lazily so `moe --help` stays fast.

Errors from the market are printed as one clear line (exit 1); `--debug` shows the traceback.
Only the CLI configures logging.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from market.errors import MarketError

# name -> (module, attribute, one-line help). Each module defines a click command or group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "devnet": ("node.cli.devnet", "devnet", "Start or stop a local chain (anvil) with the market deployed."),
    "deploy": ("node.cli.deploy", "deploy", "Deploy the market contracts to any EVM chain by RPC URL."),
    "model": ("node.cli.model", "model", "Pack models into manifest + weights and print their modelHash."),
    "expert": ("node.cli.expert", "expert", "Stake, register, serve and get paid as an expert operator."),
    "verifier": ("node.cli.verifier", "verifier", "Stake as a verifier and vote on disputes."),
    "client": ("node.cli.client", "client", "Deposit, call experts, check balances, open disputes."),
    "market": ("node.cli.market", "market", "See the market: experts, stake, price, reputation, disputes."),
    "gateway": ("node.cli.gateway", "gateway", "Serve the HTTP API, metrics and the dashboard."),
    "demo": ("node.cli.demo", "demo", "Run a whole market on this machine: chain, experts, verifiers, client."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show info logs.")
@click.version_option(package_name="moe-market", prog_name="moe")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """moe-market: a decentralized mixture-of-experts marketplace.

    \b
    Examples:
      moe devnet up                      # local chain with the contracts deployed
      moe expert register --model-dir M  # stake and register an expert
      moe expert serve                   # serve it over libp2p, get paid by vouchers
      moe client infer --model 0x.. x.npy
      moe demo                           # everything at once
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `moe` console script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except MarketError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
