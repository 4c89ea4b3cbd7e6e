"""The client's evidence endpoint stays the same across restarts on one state directory (market.client.endpoint),
over real libp2p hosts on 127.0.0.1; a taken port falls back to a fresh one."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import trio

from market.client.endpoint import IDENTITY_FILE, LISTEN_FILE, load_identity, open_listening_host
from market.transport import TransportConfig


async def _endpoint(state: Path, transport: TransportConfig | None = None) -> str:
    async with contextlib.AsyncExitStack() as stack:
        host = await open_listening_host(stack, load_identity(state / IDENTITY_FILE), transport, state)
        return host.listen_addrs[0]


def test_a_restart_serves_at_the_same_address(tmp_path: Path) -> None:
    first = trio.run(_endpoint, tmp_path)
    assert "/tcp/" in first and "/p2p/" in first
    assert trio.run(_endpoint, tmp_path) == first  # same port, same peer id
    assert json.loads((tmp_path / LISTEN_FILE).read_text())["port"] == int(first.split("/tcp/")[1].split("/")[0])


def test_a_taken_port_falls_back_to_a_new_one_and_remembers_it(tmp_path: Path) -> None:
    first = trio.run(_endpoint, tmp_path)
    port = int(first.split("/tcp/")[1].split("/")[0])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        second = trio.run(_endpoint, tmp_path)
    assert second != first and f"/tcp/{port}/" not in second
    assert trio.run(_endpoint, tmp_path) == second


def test_a_configured_port_wins_and_a_broken_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / LISTEN_FILE).write_text("{not json")
    assert "/tcp/" in trio.run(_endpoint, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert f"/tcp/{free}/" in trio.run(_endpoint, tmp_path, TransportConfig(listen_port=free))
