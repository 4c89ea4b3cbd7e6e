"""A tiny market node for the inter-process test: serves an echo on the infer protocol.

Prints its first listen multiaddr on stdout, then serves until its stdin is closed.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from market.protocol.ids import INFER
from market.transport import PeerId, open_host


async def echo(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
    return {"type": "result", "n": header.get("n"), "peer": peer, "pid": __import__("os").getpid()}, payload[
        ::-1
    ]


async def main() -> None:
    async with open_host() as host:
        host.serve(INFER, echo)
        print(host.listen_addrs[0], flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


if __name__ == "__main__":
    trio.run(main)
