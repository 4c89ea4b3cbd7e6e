"""Real inter-process libp2p: a node in a child process, a client in this one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from market.protocol.ids import INFER
from market.transport import open_host

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
SERVER = Path(__file__).with_name("_echo_server.py")


async def read_line(stream: trio.abc.ReceiveStream) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise AssertionError(f"server exited before printing its address: {data!r}")
        data += chunk
    return data.decode().strip()


def test_client_calls_a_node_in_another_process() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

    async def main() -> None:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            with trio.fail_after(30):
                address = await read_line(proc.stdout)
            peer_id = address.rsplit("/p2p/", 1)[1]
            async with open_host() as client:
                session = client.session(peer_id, [address], INFER)
                for n in range(20):
                    header, payload = await session.call({"type": "infer", "n": n}, b"abc" * n)
                    assert header["n"] == n and payload == (b"abc" * n)[::-1]
                    assert header["peer"] == client.peer_id and header["pid"] == proc.pid != os.getpid()
                assert session.streams_opened == 1
            await proc.stdin.aclose()
            with trio.fail_after(15):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(5):
                    await proc.wait()

    trio.run(main)
