"""A TCP relay that adds a fixed one-way delay, for the multi-host scenario (test_multihost.py).

The kernel of the test machines has no netem qdisc (`tc qdisc ... netem`: "Specified qdisc kind is
unknown"), so latency between the network namespaces is added in user space: this relay runs in its own
namespace ("wan"), listens on LISTEN_IP:PORT and forwards every connection to TARGET_IP:PORT. Every chunk
read from one side is written to the other side `--delay-ms` later (per direction, so a round trip costs
twice that), in order: a FIFO per direction, bytes never reordered, half-closes passed on.

    python delay_relay.py --delay-ms 25 --ready READY_FILE [--stats STATS_FILE] \\
        LISTEN_IP:PORT=TARGET_IP:PORT [...]

READY_FILE is written once every listener is bound. On SIGTERM the relay stops; with --stats it writes a
JSON object (connections accepted, upstream connects that failed, upstreams cut by TCP_USER_TIMEOUT, bytes
per direction) first.

The upstream socket has TCP_USER_TIMEOUT (`--user-timeout-ms`, default 6 s): when the target stops
acknowledging (its host was partitioned), the relay drops both sides after that long, as a middlebox would;
a new connection then fails at the relay's connect timeout (`--connect-timeout`, default 3 s) until the
partition heals. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
from collections import Counter
from pathlib import Path

STATS: Counter[str] = Counter()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, direction: str
) -> None:
    """Copy reader -> writer, each chunk `delay` s after it was read, in order. Returns after passing on a
    clean EOF; raises when either socket fails (the caller then resets both sides)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read_side() -> None:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                return

    async def write_side() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            STATS[f"bytes {direction}"] += len(data)
            await writer.drain()

    tasks = [asyncio.ensure_future(read_side()), asyncio.ensure_future(write_side())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


async def _handle(
    down_r: asyncio.StreamReader,
    down_w: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
    connect_timeout: float,
    user_timeout_ms: int,
) -> None:
    STATS["connections"] += 1
    _nodelay(down_w)
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*target), connect_timeout)
    except (OSError, TimeoutError) as exc:
        STATS[f"upstream connect failed: {type(exc).__name__}"] += 1
        down_w.transport.abort()
        return
    _nodelay(up_w)
    sock = up_w.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, user_timeout_ms)
    tasks = [
        asyncio.ensure_future(_pump(down_r, up_w, delay, "up")),
        asyncio.ensure_future(_pump(up_r, down_w, delay, "down")),
    ]
    failed = True
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [t.exception() for t in tasks if t.done() and t.exception() is not None]
        if errors:
            STATS[f"cut: {type(errors[0]).__name__}"] += 1
        else:
            await asyncio.gather(*tasks)  # both directions ended with a clean EOF
            failed = False
    except (OSError, ConnectionError) as exc:
        STATS[f"cut: {type(exc).__name__}"] += 1
    finally:
        for t in tasks:
            t.cancel()
        for w in (up_w, down_w):
            with contextlib.suppress(Exception):
                if failed:
                    w.transport.abort()  # an RST, as a middlebox that lost the flow would answer
                else:
                    w.close()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _main(args: argparse.Namespace) -> None:
    delay = args.delay_ms / 1000.0
    servers = []
    for route in args.routes:
        listen, _, target = route.partition("=")
        host, port = _addr(listen)
        server = await asyncio.start_server(
            lambda r, w, t=_addr(target): _handle(r, w, t, delay, args.connect_timeout, args.user_timeout_ms),
            host,
            port,
            reuse_address=True,
        )
        servers.append(server)
    tmp = Path(args.ready + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "routes": args.routes, "delay_ms": args.delay_ms}))
    os.replace(tmp, args.ready)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()
    if args.stats:
        Path(args.stats).write_text(json.dumps(dict(STATS), sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added per direction")
    parser.add_argument("--ready", required=True, help="file written once every listener is bound")
    parser.add_argument("--stats", default=None, help="file the counters are written to on SIGTERM")
    parser.add_argument("--connect-timeout", type=float, default=3.0)
    parser.add_argument("--user-timeout-ms", type=int, default=6000)
    parser.add_argument("routes", nargs="+", help="LISTEN_IP:PORT=TARGET_IP:PORT")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
