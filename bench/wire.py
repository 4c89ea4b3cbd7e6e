"""Raw py-libp2p request/response baseline, and the same workload over the market transport.

The baseline is what py-libp2p itself costs on this machine: two hosts in one trio run on 127.0.0.1,
noise + yamux, one connection, a 4-byte length-prefixed echo on a long-lived stream and nothing else.
Later benchmarks import `raw_echo_pair`, `RawEchoStream`, `measure_latency` and `measure_throughput` and report their own
figures as ratios to a baseline measured in the same run (the machine is shared, absolute numbers drift).

    python -m bench.wire                       # baseline and market transport, 1 KB payloads
    python -m bench.wire --calls 2000 --callers 64 --pools 1,8,32 --no-market
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

ECHO = TProtocol("/moe-market-bench/echo/1.0.0")
LOCAL = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


@dataclass(frozen=True, slots=True)
class LatencyStats:
    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:.3f} ms  p99 {self.p99_ms:.3f} ms  mean {self.mean_ms:.3f} ms  (n={self.n})"


@dataclass(frozen=True, slots=True)
class ThroughputStats:
    callers: int
    calls: int
    seconds: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        return f"{self.calls_per_s:,.0f} calls/s  ({self.calls} calls, {self.callers} callers, {self.seconds:.2f} s)"


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def measure_latency(call: Callable[[], Awaitable[Any]], n: int, warmup: int = 20) -> LatencyStats:
    """Time `n` sequential awaits of `call` after `warmup` untimed ones."""
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return LatencyStats(
        n, _percentile(samples, 0.5) * 1e3, _percentile(samples, 0.99) * 1e3, statistics.fmean(samples) * 1e3
    )


async def measure_throughput(
    call_for: Callable[[int], Awaitable[Any]], callers: int, calls_per_caller: int
) -> ThroughputStats:
    """`callers` tasks each awaiting `call_for(caller_index)` `calls_per_caller` times; wall time of the lot."""

    async def caller(index: int) -> None:
        for _ in range(calls_per_caller):
            await call_for(index)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index in range(callers):
            nursery.start_soon(caller, index)
    return ThroughputStats(callers, callers * calls_per_caller, time.perf_counter() - start)


class RawEchoStream:
    """A raw libp2p stream with a read buffer: one read usually brings a whole small answer.

    (py-libp2p's yamux sends a window update per read, so reading the length and then the body costs a
    third more than one buffered read; the baseline uses the faster way.)
    """

    __slots__ = ("_buf", "stream")

    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def read_message(self) -> bytes:
        while len(self._buf) < 4 or len(self._buf) < 4 + int.from_bytes(self._buf[:4], "big"):
            chunk = await self.stream.read(65536)
            if not chunk:
                raise EOFError("stream closed")
            self._buf += chunk
        size = int.from_bytes(self._buf[:4], "big")
        message = bytes(self._buf[4 : 4 + size])
        del self._buf[: 4 + size]
        return message

    async def round_trip(self, payload: bytes) -> bytes:
        """One length-prefixed echo."""
        await self.stream.write(len(payload).to_bytes(4, "big") + payload)
        return await self.read_message()


async def _echo_handler(stream: INetStream) -> None:
    buffered = RawEchoStream(stream)
    with contextlib.suppress(Exception):
        while True:
            message = await buffered.read_message()
            await stream.write(len(message).to_bytes(4, "big") + message)


def _raw_host() -> IHost:
    key_pair = generate_new_ed25519_identity()
    return new_host(
        key_pair=key_pair,
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
        },
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        listen_addrs=[LOCAL],
    )


@dataclass(slots=True)
class RawEchoPair:
    server: IHost
    client: IHost

    async def open_stream(self) -> RawEchoStream:
        return RawEchoStream(await self.client.new_stream(self.server.get_id(), [ECHO]))


@contextlib.asynccontextmanager
async def raw_echo_pair() -> AsyncIterator[RawEchoPair]:
    """Two raw py-libp2p hosts (noise, yamux, one connection), the client connected to the echo server."""
    server, client = _raw_host(), _raw_host()
    async with server.run([LOCAL]), client.run([LOCAL]):
        server.set_stream_handler(ECHO, _echo_handler)
        await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
        try:
            yield RawEchoPair(server, client)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await client.close()
                await server.close()


async def raw_figures(calls: int, callers: int, payload_size: int = 1024) -> dict[str, Any]:
    payload = b"x" * payload_size
    async with raw_echo_pair() as pair:
        stream = await pair.open_stream()
        latency = await measure_latency(lambda: stream.round_trip(payload), calls)

        async def new_stream_call() -> None:
            fresh = await pair.open_stream()
            await fresh.round_trip(payload)
            await fresh.stream.close()

        new_stream = await measure_latency(new_stream_call, max(20, calls // 10))
        streams = [await pair.open_stream() for _ in range(callers)]
        throughput = await measure_throughput(
            lambda i: streams[i].round_trip(payload), callers, max(1, calls // callers)
        )
        return {"long_lived": latency, "new_stream": new_stream, "throughput": throughput}


async def market_figures(
    calls: int, callers: int, pools: Sequence[int], payload_size: int = 1024
) -> dict[str, Any]:
    from market.protocol.ids import INFER
    from market.transport import TransportConfig, open_host

    payload = b"x" * payload_size
    header = {"type": "infer"}

    async def echo(h: dict[str, Any], p: bytes, peer: str) -> tuple[dict[str, Any], bytes]:
        return {"type": "result"}, p

    out: dict[str, Any] = {}
    async with open_host() as server:
        server.serve(INFER, echo)
        async with open_host() as client:
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            out["long_lived"] = await measure_latency(lambda: session.call(header, payload), calls)
            out["new_stream"] = await measure_latency(
                lambda: client.request(server.peer_id, server.listen_addrs, INFER, header, payload),
                max(20, calls // 10),
            )
        for pool in pools:
            async with open_host(config=TransportConfig(session_streams=pool)) as client:
                pooled = client.session(server.peer_id, server.listen_addrs, INFER)
                await pooled.call(header, payload)
                out[f"throughput_pool_{pool}"] = await measure_throughput(
                    lambda _i, s=pooled: s.call(header, payload), callers, max(1, calls // callers)
                )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="sequential round trips (default 1000)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (default 64)")
    parser.add_argument("--size", type=int, default=1024, help="payload bytes (default 1024)")
    parser.add_argument("--pools", default="1,8,32", help="market session pool sizes to compare")
    parser.add_argument("--no-market", action="store_true", help="only the raw py-libp2p baseline")
    args = parser.parse_args(argv)

    async def run() -> None:
        raw = await raw_figures(args.calls, args.callers, args.size)
        print(f"raw py-libp2p, {args.size} B echo (noise, yamux, one connection)")
        print(f"  long-lived stream   {raw['long_lived']}")
        print(f"  new stream per call {raw['new_stream']}")
        print(f"  {args.callers} callers, one stream each: {raw['throughput']}")
        if args.no_market:
            return
        pools = [int(p) for p in args.pools.split(",") if p]
        market = await market_figures(args.calls, args.callers, pools, args.size)
        base = raw["long_lived"].p50_ms
        print("market transport (framing + JSON header + limits)")
        print(
            f"  session call        {market['long_lived']}   p50 x{market['long_lived'].p50_ms / base:.2f} raw"
        )
        print(f"  one-shot request    {market['new_stream']}")
        for pool in pools:
            stats = market[f"throughput_pool_{pool}"]
            ratio = stats.calls_per_s / raw["throughput"].calls_per_s
            print(f"  {args.callers} callers, pool of {pool:>2} streams: {stats}   x{ratio:.2f} raw")

    trio.run(run)


if __name__ == "__main__":
    main()
