"""Helpers shared by the `moe` commands: amounts, keys, the deployment file, tables and JSON output.

Keys never come from a command-line argument (it would land in shell history and `ps`): a command takes
`--key-env VAR` (the name of an environment variable holding a hex key) or `--keystore FILE` (password from
`MOE_PASSWORD`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import click

from market.errors import MarketConfigError, MarketInputError

DEFAULT_DEPLOYMENT = Path(".moe/devnet/deployment.json")
_UNITS = {"wei": 0, "gwei": 9, "eth": 18, "ether": 18}
_AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_amount(text: str | int) -> int:
    """'0.1eth', '100gwei', '5000' (wei) -> wei."""
    if isinstance(text, int):
        return text
    match = _AMOUNT.match(str(text))
    if not match:
        raise MarketInputError(f"{text!r} is not an amount: write e.g. 0.1eth, 100gwei or 5000 (wei)")
    number, unit = match.groups()
    unit = unit.lower() or "wei"
    if unit not in _UNITS:
        raise MarketInputError(f"unknown unit {unit!r} in {text!r}: use wei, gwei or eth")
    try:
        value = Decimal(number) * (Decimal(10) ** _UNITS[unit])
    except InvalidOperation:
        raise MarketInputError(f"{text!r} is not an amount") from None
    if value != value.to_integral_value():
        raise MarketInputError(f"{text!r} is not a whole number of wei")
    return int(value)


def format_eth(wei: int) -> str:
    if wei == 0:
        return "0"
    if abs(wei) < 10**9:
        return f"{wei} wei"
    if abs(wei) < 10**15:
        return f"{wei / 10**9:g} gwei"
    return f"{wei / 10**18:.6g} ETH"


class AmountType(click.ParamType):
    name = "amount"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_amount(value)
        except MarketInputError as exc:
            self.fail(str(exc), param, ctx)


AMOUNT = AmountType()


def deployment_path(value: str | Path | None) -> Path:
    path = Path(value or os.environ.get("MOE_DEPLOYMENT") or DEFAULT_DEPLOYMENT)
    if not path.exists():
        raise MarketConfigError(
            f"no deployment file at {path}: start a local chain with `moe devnet up`, "
            "or pass --deployment / set MOE_DEPLOYMENT"
        )
    return path.resolve()


def load_signer(key_env: str | None, keystore: str | None, *, what: str = "account"):  # noqa: ANN201
    """The signer named by --key-env or --keystore (exactly one)."""
    from market.chain.signer import signer_from_keystore, unsafe_signer_from_hex

    if bool(key_env) == bool(keystore):
        raise MarketConfigError(f"give the {what} key with exactly one of --key-env VAR or --keystore FILE")
    if key_env:
        value = os.environ.get(key_env)
        if not value:
            raise MarketConfigError(f"environment variable {key_env} is empty or unset")
        return unsafe_signer_from_hex(value)
    secret = os.environ.get("MOE_PASSWORD")
    if not secret:
        raise MarketConfigError("set MOE_PASSWORD to unlock the keystore")
    return signer_from_keystore(keystore, secret)


def key_options(what: str = "account") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option(
            "--keystore", type=click.Path(dir_okay=False), help=f"Keystore file of the {what} (password from MOE_PASSWORD)."
        )(fn)
        fn = click.option(
            "--key-env", metavar="VAR", help=f"Environment variable holding the {what}'s hex private key."
        )(fn)
        return fn

    return decorate


def deployment_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--deployment",
        type=click.Path(dir_okay=False),
        help=f"Deployment file (default: $MOE_DEPLOYMENT or {DEFAULT_DEPLOYMENT}).",
    )(fn)


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    Console().print(table)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
