"""Where the client serves its dispute evidence, kept stable across restarts.

A dispute names the challenger's evidence endpoint on chain (`/ip4/../tcp/PORT/p2p/PEER_ID`), and verifiers
fetch from it during the commit period. So both parts are kept in the state directory: the libp2p identity
(`identity.key`: the peer id) and the TCP port the last run listened on (`listen.json`), which the next run
with the same state directory listens on again when its configuration names no port. A restarted client,
`moe client serve` included, then serves the evidence of its open disputes at the address they name. If
that port is taken, the client listens on a fresh one and says so: disputes opened before then name an
address nobody serves any more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from market.durable import atomic_write
from market.errors import MarketConfigError, TransportError

if TYPE_CHECKING:
    from market.transport import MarketHost, TransportConfig

__all__ = ["IDENTITY_FILE", "LISTEN_FILE", "load_identity", "open_listening_host"]

logger = logging.getLogger(__name__)

IDENTITY_FILE = "identity.key"
LISTEN_FILE = "listen.json"


def load_identity(path: Path) -> Any:
    """The client's libp2p identity from `path`, created (0600) on first use."""
    from market.transport import NodeIdentity

    # The client's libp2p key holds no money: it only names the peer serving dispute evidence, so it is kept
    # as a 0600 seed file rather than behind a password (which a script could not type).
    try:
        seed = bytes.fromhex(path.read_text().strip())
        return NodeIdentity.unsafe_from_seed(seed)
    except FileNotFoundError:
        pass
    except (ValueError, MarketConfigError):
        logger.warning("client identity %s is unreadable; creating a new one", path)
    identity = NodeIdentity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(identity.unsafe_seed().hex() + "\n")
    os.replace(tmp, path)
    return identity


def _saved_port(path: Path) -> int | None:
    try:
        port = json.loads(path.read_text())["port"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return port if isinstance(port, int) and 0 < port <= 65535 else None


def _listening_port(host: MarketHost) -> int | None:
    for addr in host.listen_addrs:
        parts = addr.split("/")
        if "tcp" in parts:
            with contextlib.suppress(ValueError, IndexError):
                return int(parts[parts.index("tcp") + 1])
    return None


async def open_listening_host(
    stack: contextlib.AsyncExitStack, identity: Any, transport: TransportConfig | None, state: Path
) -> MarketHost:
    """Opens the client's libp2p host inside `stack`: on the configured port, else on the port the last run
    with this state directory used (else a fresh one), and remembers the port it got."""
    from market.transport import TransportConfig, open_host

    wanted = transport or TransportConfig()
    saved = _saved_port(state / LISTEN_FILE) if wanted.listen_port == 0 else None
    host = None
    if saved is not None:
        try:
            host = await stack.enter_async_context(open_host(identity, replace(wanted, listen_port=saved)))
        except TransportError as exc:
            logger.warning(
                "cannot listen on port %d again (%s): listening on a new one; disputes opened earlier name an "
                "evidence address this client no longer serves", saved, exc,
            )
    if host is None:
        host = await stack.enter_async_context(open_host(identity, wanted))
    port = _listening_port(host)
    if port is not None and port != saved:
        try:
            atomic_write(state / LISTEN_FILE, json.dumps({"port": port}).encode())
        except OSError as exc:
            logger.warning("could not remember the listening port in %s: %s", state / LISTEN_FILE, exc)
    return host
