"""The network baselines in a process of their own, so they have the same shape as a call to a node process.

    python -m bench.echo_server         # prints one JSON line with the addresses, serves until stdin closes

Two hosts on 127.0.0.1 in one trio run:
- a raw py-libp2p host (noise, yamux, one connection per peer: bench.wire's baseline host) echoing
  4-byte length-prefixed messages on long-lived streams;
- a market host (market.transport.open_host, the node's transport with its limits) whose infer handler
  answers every request with its own payload: the transport without payment, ledger or model.

The benchmark process reads the JSON line, dials either host, and closes stdin to stop it (the server also
stops by itself after `--max-seconds`, so a crashed benchmark cannot leave it running for long).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import multiaddr
import trio

from bench.wire import ECHO, LOCAL, RawEchoStream, _echo_handler, _raw_host


async def _serve(max_seconds: float) -> None:
    from market.protocol.ids import INFER
    from market.transport import TransportConfig, open_host

    async def echo(header: dict[str, Any], payload: bytes, peer: str) -> tuple[dict[str, Any], bytes]:
        return {"type": "result"}, payload

    raw = _raw_host()
    # The benchmark opens up to 64 streams per caller host, the node's default per-peer cap.
    config = TransportConfig(max_streams_per_peer=128, max_inbound_streams=512)
    async with raw.run([LOCAL]), open_host(config=config) as market:
        raw.set_stream_handler(ECHO, _echo_handler)
        market.serve(INFER, echo)
        line = {
            "raw": {"peer_id": raw.get_id().to_base58(), "addr": str(raw.get_addrs()[0])},
            "market": {"peer_id": str(market.peer_id), "addrs": list(market.listen_addrs)},
        }
        print(json.dumps(line), flush=True)
        with trio.move_on_after(max_seconds):
            # stdin closing (EOF) is the parent's way of saying stop.
            await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await raw.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.echo_server", description=__doc__.splitlines()[0])
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long in any case")
    args = parser.parse_args(argv)
    trio.run(_serve, args.max_seconds)



@contextlib.asynccontextmanager
async def raw_client(peer_id: str, addr: str) -> AsyncIterator[Callable[[], Awaitable[RawEchoStream]]]:
    """A raw py-libp2p host connected to the echo server's raw host; yields `open_stream()`, which opens a
    long-lived echo stream (`bench.wire.RawEchoStream`: `await s.round_trip(payload)`)."""
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    host = _raw_host()
    peer = ID.from_base58(peer_id)
    async with host.run([LOCAL]):
        try:
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(f"{addr}/p2p/{peer_id}")))

            async def open_stream() -> RawEchoStream:
                return RawEchoStream(await host.new_stream(peer, [ECHO]))

            yield open_stream
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await host.close()


if __name__ == "__main__":
    main()
