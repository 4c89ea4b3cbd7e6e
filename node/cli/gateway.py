"""`moe gateway`: run a client of the market and serve it over HTTP: the JSON API, its OpenAPI description,
Prometheus metrics and the live dashboard (docs/gateway.md).

The gateway spends its client's escrow deposit on every `POST /v1/infer`, so it listens on 127.0.0.1 unless
told otherwise, answers only to loopback host names there, and a non-loopback address needs `--allow-remote`.
`--token-env NAME` makes spending need `Authorization: Bearer <token>` (node.gateway.guard has every check).
This module only reads options and prints.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import click

from market.errors import MarketConfigError
from node.cli.common import AMOUNT, deployment_option, deployment_path, format_eth, key_options, load_signer
from node.gateway.guard import MIN_TOKEN_CHARS, is_loopback


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port (0: a free one, printed at start).")
@click.option("--allow-remote", is_flag=True,
              help="Allow a --host other than loopback. Without --token-env, anyone who reaches the port can "
                   "spend the deposit.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A Host name the gateway answers to besides loopback ones (repeatable); others get 403.")
@click.option("--token-env", metavar="NAME", default=None,
              help=f"Environment variable holding an API token ({MIN_TOKEN_CHARS}+ characters): POST /v1/infer "
                   "then needs Authorization: Bearer <token>.")
@deployment_option
@key_options("client")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The client's state (voucher book, reputation, evidence); default $MOE_CLIENT_STATE or "
                   "~/.moe/client, as for `moe client`.")
@click.option("--redundancy", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Experts of distinct operators per call unless a request says otherwise.")
@click.option("--max-price", type=AMOUNT, default=None, help="Highest price per call and expert, e.g. 10gwei.")
@click.option("--deadline", "deadline_s", type=click.FloatRange(0.1, 120.0), default=30.0, show_default=True,
              help="Seconds a call may take, failover included, unless a request says otherwise.")
@click.option("--auto-dispute", is_flag=True,
              help="Open a dispute (paying the bond) against every expert caught in the minority.")
@click.option("--max-body", type=click.IntRange(1024, 2**30), default=8 * 2**20, show_default=True,
              help="Largest request body in bytes (larger: 413).")
@click.option("--max-concurrent", type=click.IntRange(1, 1024), default=16, show_default=True,
              help="Infer calls running at once (more: 429).")
def gateway(host: str, port: int, allow_remote: bool, allowed_hosts: tuple[str, ...], token_env: str | None,
            deployment: str | None, key_env: str | None,
            keystore: str | None, state_dir: Path | None, redundancy: int, max_price: int | None,
            deadline_s: float, auto_dispute: bool, max_body: int, max_concurrent: int) -> None:
    """Serve the HTTP API, Prometheus metrics and the live dashboard until Ctrl-C.

    Starts a client of the market with the given key (it pays for every call from its escrow deposit:
    `moe client deposit` first), then the gateway in front of it.

    \b
    Examples:
      moe devnet up                                   # a local chain with the market
      export CLIENT_KEY=0x...                         # or --keystore FILE with MOE_PASSWORD
      moe gateway --key-env CLIENT_KEY                # http://127.0.0.1:8080/ is the dashboard
      moe gateway --keystore client.json --port 9000 --redundancy 3 --max-price 10gwei
      curl -s localhost:8080/v1/experts
      curl -s localhost:8080/v1/infer -H 'Content-Type: application/json' \\
          -d '{"model": "0x<modelHash>", "inputs": {"x": [[0.0, 0.5, ...]]}}'
    """
    from market.client import Client, ClientConfig
    from node.gateway import ClientBackend, Gateway, GatewayConfig

    if not is_loopback(host) and not allow_remote:
        raise MarketConfigError(
            f"--host {host} is not a loopback address: anyone who reaches it could spend this client's deposit. "
            "Pass --allow-remote with --token-env NAME (behind TLS) or an authenticating proxy, or keep --host 127.0.0.1"
        )
    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise MarketConfigError(f"--token-env {token_env}: the environment variable {token_env} is not set or empty")
    gateway_config = GatewayConfig(host=host, port=port, allowed_hosts=allowed_hosts, api_token=token,
                                   max_body_bytes=max_body, max_concurrent_infer=max_concurrent)
    signer = load_signer(key_env, keystore, what="client")
    options: dict[str, Any] = {}
    state = state_dir or os.environ.get("MOE_CLIENT_STATE")
    if state:
        options["state_dir"] = Path(state).expanduser()
    config = ClientConfig(
        deployment=deployment_path(deployment), account=signer, redundancy=redundancy, max_price=max_price,
        deadline_s=deadline_s, auto_dispute=auto_dispute, **options,
    )

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Client(config) as client:
            server = Gateway(ClientBackend(client), gateway_config).start()
            try:
                balance = client.balance()
                click.echo(f"client {client.address}: escrow {format_eth(balance.escrow)}, "
                           f"available {format_eth(balance.available)}")
                click.echo(f"gateway on {server.url}/  (API {server.url}/openapi.yaml, metrics {server.url}/metrics)")
                click.echo("Ctrl-C stops it")
                while not stop.wait(0.5):
                    pass
            finally:
                click.echo("stopping the gateway and the client...")
                server.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
