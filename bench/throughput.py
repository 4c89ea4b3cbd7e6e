"""Benchmark 2: throughput of one expert node under 64 concurrent paying callers.

64 callers, each with its own client key (a node accepts one client's vouchers to one expert only in
increasing order, so one key per concurrent caller), each making sequential paid calls with 1 KB inputs
to the small MLP node over one connection (one pooled session of 64 long-lived streams). Baselines in the
same run, in alternating rounds:

- raw py-libp2p: 64 callers, one long-lived stream each, 1 KB echo to a raw host in another process;
- the market transport echo with the same concurrency (no payment, no model);
- a local batched forward of the same model (64 rows per forward, one torch thread like the node).

Target: paid requests/s >= 80 % of raw libp2p requests/s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import trio

from bench import TITLES
from bench.env import BenchContext, StartedNode, cpu_seconds, thread_cpu_seconds
from bench.report import Figure, Target, figure
from bench.wire import ThroughputStats, measure_throughput

NAME = "throughput"
TITLE = TITLES[NAME]
TARGET = Target(">=", 0.8, "ratio", ">= 80% of raw libp2p req/s")
CALLERS = 64


async def paid_load(
    node: StartedNode,
    keys: Sequence[Any],
    calls_per_caller: int,
    x: torch.Tensor,
    book: dict[tuple[str, int], int],
) -> tuple[ThroughputStats, int]:
    """`len(keys)` concurrent paying callers, `calls_per_caller` sequential calls each (after one untimed
    warm-up call each). Returns the throughput of answered calls and the number of refused ones."""
    from bench.paying import PaidCallError, PayingCaller
    from market.transport import TransportConfig, open_host

    errors = 0
    async with open_host(config=TransportConfig(session_streams=min(len(keys), 64))) as host:
        callers = [PayingCaller(host, key, node.target, book=book) for key in keys]

        async def one(i: int) -> None:
            nonlocal errors
            try:
                await callers[i].call({"x": x})
            except PaidCallError:
                errors += 1

        async with trio.open_nursery() as nursery:
            for i in range(len(callers)):
                nursery.start_soon(one, i)
        errors = 0
        stats = await measure_throughput(one, len(callers), calls_per_caller)
    answered = stats.calls - errors
    return ThroughputStats(stats.callers, answered, stats.seconds), errors


async def raw_load(echo: Any, callers: int, calls_per_caller: int, payload: bytes) -> ThroughputStats:
    from bench.echo_server import raw_client

    async with raw_client(echo.raw_peer_id, echo.raw_addr) as open_stream:
        streams = [await open_stream() for _ in range(callers)]
        for s in streams:
            await s.round_trip(payload)
        return await measure_throughput(lambda i: streams[i].round_trip(payload), callers, calls_per_caller)


async def transport_load(echo: Any, callers: int, calls_per_caller: int, payload: bytes) -> ThroughputStats:
    from market.protocol.ids import INFER
    from market.transport import TransportConfig, open_host

    header = {"type": "infer"}
    async with open_host(config=TransportConfig(session_streams=min(callers, 64))) as host:
        session = host.session(echo.market_peer_id, list(echo.market_addrs), INFER)
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(session.call, header, payload)
        return await measure_throughput(lambda _i: session.call(header, payload), callers, calls_per_caller)


def _merge(parts: Sequence[ThroughputStats]) -> ThroughputStats:
    return ThroughputStats(parts[0].callers, sum(p.calls for p in parts), sum(p.seconds for p in parts))


def local_batched(model: Any, rows: int, seconds: float) -> float:
    """Rows per second of the model's forward over batches of `rows`, one torch thread (like the node)."""
    from bench.latency import torch_threads

    x = torch.rand(rows, 256)
    with torch_threads(1):
        for _ in range(10):
            model.forward({"x": x})
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and done < 100_000:
            model.forward({"x": x})
            done += 1
        return done * rows / (time.perf_counter() - start)


def run(ctx: BenchContext) -> list[Figure]:
    from bench.latency import ledger_commit_samples
    from bench.timing import stats

    calls = ctx.pick(6, 40)  # per caller per round
    raw_calls = ctx.pick(10, 100)
    rounds = ctx.pick(2, 3)
    node = ctx.env.mlp_node()
    keys = ctx.env.clients(CALLERS)
    echo = ctx.env.echo_server()
    model = ctx.env.local_mlp()
    x = torch.rand(1, 256)
    payload = x.numpy().tobytes()

    paid_parts: list[ThroughputStats] = []
    raw_parts: list[ThroughputStats] = []
    transport_parts: list[ThroughputStats] = []
    refused = 0
    cpu = {"node": 0.0, "echo_raw": 0.0}
    threads = {"event loop": 0.0, "worker threads": 0.0, "other threads": 0.0}

    async def measure() -> None:
        nonlocal refused
        for _ in range(rounds):
            before = cpu_seconds(echo.pid)
            raw_parts.append(await raw_load(echo, CALLERS, raw_calls, payload))
            cpu["echo_raw"] += cpu_seconds(echo.pid) - before
            transport_parts.append(await transport_load(echo, CALLERS, raw_calls, payload))
            before, before_threads = cpu_seconds(node.pid), thread_cpu_seconds(node.pid)
            stats_, errors = await paid_load(node, keys, calls, x, ctx.env.vouchers)
            cpu["node"] += cpu_seconds(node.pid) - before
            for group, seconds in thread_cpu_seconds(node.pid).items():
                threads[group] += seconds - before_threads.get(group, 0.0)
            paid_parts.append(stats_)
            refused += errors

    trio.run(measure)
    paid, raw, transport = _merge(paid_parts), _merge(raw_parts), _merge(transport_parts)
    # CPU per call includes each part's untimed warm-up call per caller.
    node_cpu_ms = 1000 * cpu["node"] / max(1, paid.calls + rounds * CALLERS)
    per_thread = {g: 1000 * t / max(1, paid.calls + rounds * CALLERS) for g, t in threads.items()}
    echo_cpu_ms = 1000 * cpu["echo_raw"] / max(1, raw.calls + rounds * CALLERS)
    local = local_batched(model, CALLERS, ctx.pick(1.0, 3.0))
    ledger = stats(ledger_commit_samples(ctx, ctx.pick(30, 200)))
    ledger_bound = 1000.0 / ledger.p50_ms

    node_busy = node_cpu_ms * paid.calls_per_s / 1000  # cores the node kept busy
    limit = (
        f"the node is CPU-bound under one GIL: {node_cpu_ms:.1f} ms of CPU per paid call ({node_busy:.2f} cores "
        f"busy at {paid.calls_per_s:.0f} calls/s) against {echo_cpu_ms:.1f} ms per raw echo on the server side; "
        f"{per_thread['event loop']:.1f} ms in the event loop (libp2p, parsing, voucher recovery, receipt "
        f"signing), {per_thread['worker threads']:.1f} ms in worker threads (SQLite ledger, escrow balance "
        f"reads), {per_thread['other threads']:.1f} ms in the model thread; and its two durable SQLite commits "
        f"per call, taken one at a time on one connection, cap it at about {ledger_bound:,.0f} calls/s on this "
        f"disk ({ledger.p50_ms:.1f} ms per commit pair in this run)"
    )
    b = NAME
    return [
        figure(b, "paid calls/s, 64 callers (one key each)", paid.calls_per_s, "calls/s",
               baseline=raw.calls_per_s, baseline_name="raw libp2p, 64 streams", target=TARGET, limit=limit,
               note=f"{paid.calls} answered calls in {rounds} rounds alternating with the baselines, "
                    f"{refused} refused; raw libp2p: 64 long-lived streams on one connection to another process"),
        figure(b, "paid calls/s vs local batched forward", paid.calls_per_s, "calls/s", baseline=local,
               baseline_name="local forward, 64 rows/batch, 1 thread"),
        figure(b, "market transport echo calls/s, 64 callers", transport.calls_per_s, "calls/s",
               baseline=raw.calls_per_s, baseline_name="raw libp2p, 64 streams"),
        figure(b, "diag: node CPU per paid call", node_cpu_ms, "ms", baseline=echo_cpu_ms,
               baseline_name="echo server CPU per raw echo",
               note="user + system CPU of the node process (all threads) over the paid rounds, per call: "
                    + ", ".join(f"{g} {ms:.1f} ms" for g, ms in per_thread.items())),
        figure(b, "diag: ledger commit bound (1 / commit pair p50)", ledger_bound, "calls/s",
               baseline=paid.calls_per_s, baseline_name="paid calls/s"),
    ]  # fmt: skip
