"""Benchmark 1: latency of one paid, receipted call against the raw py-libp2p round trip and a local forward.

The call: float32 [1, 256] (1 KB) into the small MLP (256 -> 256 -> 256) served by a real expert node
process on a real chain, paid with a fresh cumulative voucher and answered with a signed receipt that the
client checks (bench.paying). Baselines, all in this run and interleaved in rounds so that load on the
shared machine hits them alike:

- raw py-libp2p: a 1 KB echo on a long-lived stream to a raw host in another process (bench.echo_server,
  the host of bench.wire): what the wire itself costs, with the same process shape as a node call;
- the market transport: the node's transport (framing, JSON header, limits) echoing 1 KB, no payment;
- a local forward of the same model in this process.

Diagnostics (no target) split the node's share of a paid call: the ledger's durable writes on the disk
the node uses, the batching runtime's wait for a lone request, and the signatures.

Target: paid call p50 <= 1.5x raw libp2p p50.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch
import trio

from bench import TITLES
from bench.env import BenchContext, cpu_seconds, thread_cpu_seconds
from bench.report import Figure, Target, figure
from bench.timing import interleaved, stats, sync_samples

NAME = "latency"
TITLE = TITLES[NAME]
TARGET = Target("<=", 1.5, "ratio", "p50 <= 1.5x raw libp2p")


@contextlib.contextmanager
def torch_threads(n: int):  # noqa: ANN201 - a context manager
    """The node runs its model with one torch thread; local baselines do the same."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def ledger_commit_samples(ctx: BenchContext, n: int) -> list[float]:
    """Seconds per (record_voucher + record_receipt) on a fresh ledger on the disk the node uses."""
    from market.chain.eip712 import ReceiptSigner, VoucherSigner
    from market.chain.signer import LocalSigner
    from market.protocol.hashing import new_request_id
    from market.types import Receipt
    from node.ledger import VoucherLedger

    d = ctx.env.deployment
    client = LocalSigner.generate()
    vouchers = VoucherSigner(client.unsafe_private_key(), d.chain_id, d.escrow)
    receipts = ReceiptSigner(LocalSigner.generate().unsafe_private_key(), d.chain_id, d.disputes)
    price = 10**12
    signed = [vouchers.sign(1, (i + 1) * price) for i in range(n)]
    signed_receipts = [
        receipts.sign(Receipt(1, b"\x01" * 32, new_request_id(), b"\x02" * 32, b"\x03" * 32, price)) for _ in range(n)
    ]
    path = ctx.workdir / "diagnostics" / "ledger.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with VoucherLedger(path, escrow=d.escrow, chain_id=d.chain_id) as ledger:
        for voucher, receipt in zip(signed, signed_receipts, strict=True):
            start = time.perf_counter()
            ledger.record_voucher(voucher, price)
            ledger.record_receipt(receipt, client.address)
            out.append(time.perf_counter() - start)
    return out


def signature_samples(ctx: BenchContext, n: int) -> list[float]:
    """Seconds per voucher sign + recover and receipt sign + recover (client and node together)."""
    from market.chain.eip712 import (
        ReceiptSigner,
        VoucherSigner,
        recover_receipt_signer,
        recover_voucher_signer,
    )
    from market.chain.signer import LocalSigner
    from market.protocol.hashing import new_request_id
    from market.types import Receipt

    d = ctx.env.deployment
    vouchers = VoucherSigner(LocalSigner.generate().unsafe_private_key(), d.chain_id, d.escrow)
    receipts = ReceiptSigner(LocalSigner.generate().unsafe_private_key(), d.chain_id, d.disputes)
    counter = iter(range(1, n + 10**6))

    def once() -> None:
        v = vouchers.sign(1, next(counter))
        recover_voucher_signer(v, d.chain_id, d.escrow)
        r = receipts.sign(Receipt(1, b"\x01" * 32, new_request_id(), b"\x02" * 32, b"\x03" * 32, 1))
        recover_receipt_signer(r, d.chain_id, d.disputes)

    return sync_samples(once, n)


def runtime_samples(model: Any, x: torch.Tensor, n: int) -> tuple[list[float], list[float]]:
    """(direct forward, one lone request through ModelRuntime with the node's defaults), seconds each."""
    from node.runtime import ModelRuntime

    with torch_threads(1):
        direct = sync_samples(lambda: model.forward({"x": x}), n)
    with ModelRuntime(model, max_batch=32, max_wait_ms=2.0, threads=1, name="bench-runtime") as runtime:
        for _ in range(5):
            runtime.submit({"x": x}).result(timeout=30)
        queued = sync_samples(lambda: runtime.submit({"x": x}).result(timeout=30), n)
    return direct, queued


def run(ctx: BenchContext) -> list[Figure]:
    from bench.echo_server import raw_client
    from bench.paying import PayingCaller
    from market.protocol.ids import INFER
    from market.transport import open_host

    n = ctx.pick(300, 3000)
    rounds = ctx.pick(5, 10)
    node = ctx.env.mlp_node()
    key = ctx.env.clients(1)[0]
    echo = ctx.env.echo_server()
    model = ctx.env.local_mlp()
    x = torch.rand(1, 256)
    payload = x.numpy().tobytes()
    node_ms: list[float] = []

    async def measure() -> dict[str, list[float]]:
        async with raw_client(echo.raw_peer_id, echo.raw_addr) as open_stream, open_host() as client:
            stream = await open_stream()
            transport = client.session(echo.market_peer_id, list(echo.market_addrs), INFER)
            caller = PayingCaller(client, key, node.target, book=ctx.env.vouchers)
            header = {"type": "infer"}

            async def paid() -> None:
                await caller.call({"x": x})
                node_ms.append(caller.last_compute_ms)

            return await interleaved(
                {
                    "raw": lambda: stream.round_trip(payload),
                    "transport": lambda: transport.call(header, payload),
                    "paid": paid,
                },
                n,
                rounds,
            )

    before, before_threads = cpu_seconds(node.pid), thread_cpu_seconds(node.pid)
    samples = trio.run(measure)
    paid_calls = len(samples["paid"]) + 10  # with the warm-up calls
    node_cpu_ms = 1000 * (cpu_seconds(node.pid) - before) / paid_calls
    per_thread = {g: 1000 * (t - before_threads.get(g, 0.0)) / paid_calls for g, t in thread_cpu_seconds(node.pid).items()}
    with torch_threads(1):
        for _ in range(20):
            model.forward({"x": x})
        local = stats(sync_samples(lambda: model.forward({"x": x}), n))
    raw, transport, paid = (stats(samples[k]) for k in ("raw", "transport", "paid"))
    node_side = statistics.median(node_ms[-n:]) if node_ms else float("nan")

    diag_n = ctx.pick(60, 400)
    ledger = stats(ledger_commit_samples(ctx, diag_n))
    direct, queued = runtime_samples(model, x, diag_n)
    direct_s, queued_s = stats(direct), stats(queued)
    sigs = stats(signature_samples(ctx, diag_n))

    waits = ledger.p50_ms + max(0.0, queued_s.p50_ms - direct_s.p50_ms)
    limit = (
        f"the node's handler takes {node_side:.1f} ms of the {paid.p50_ms:.1f} ms p50: two durable SQLite commits "
        f"per call (voucher before compute, receipt after; synchronous=FULL) cost {ledger.p50_ms:.1f} ms on this "
        f"disk, ModelRuntime holds a lone request {queued_s.p50_ms - direct_s.p50_ms:.1f} ms for batch-mates "
        f"(max_wait_ms=2, no fast path when nothing else is queued), and most of the other "
        f"{max(0.0, node_side - waits):.1f} ms is CPU ({node_cpu_ms:.1f} ms per call in the node, "
        f"{per_thread['event loop']:.1f} of it in the event loop); the transport alone is "
        f"x{transport.p50_ms / raw.p50_ms:.2f} raw"
    )
    b = NAME
    return [
        figure(b, "paid call p50 (1 KB in/out, MLP 256-256-256)", paid.p50_ms, "ms",
               baseline=raw.p50_ms, baseline_name="raw libp2p p50", target=TARGET, limit=limit,
               note=f"{paid.n} calls in {rounds} rounds interleaved with the baselines; each call signs a voucher "
                    f"and checks the receipt; raw libp2p = 1 KB echo on a long-lived stream to another process"),
        figure(b, "paid call p99", paid.p99_ms, "ms", baseline=raw.p99_ms, baseline_name="raw libp2p p99"),
        figure(b, "paid call p50 vs local forward", paid.p50_ms, "ms", baseline=local.p50_ms,
               baseline_name="local forward p50"),
        figure(b, "market transport echo p50 (no payment)", transport.p50_ms, "ms", baseline=raw.p50_ms,
               baseline_name="raw libp2p p50"),
        figure(b, "node handler time p50 (compute_ms in answers)", node_side, "ms", baseline=paid.p50_ms,
               baseline_name="paid call p50", note="share of the paid call spent inside the node's handler"),
        figure(b, "diag: node CPU per paid call (sequential)", node_cpu_ms, "ms", baseline=paid.p50_ms,
               baseline_name="paid call p50",
               note="user + system CPU of the node process over the run, per paid call: "
                    + ", ".join(f"{g} {ms:.1f} ms" for g, ms in per_thread.items())),
        figure(b, "diag: ledger voucher + receipt commits", ledger.p50_ms, "ms", baseline=paid.p50_ms,
               baseline_name="paid call p50",
               note="record_voucher + record_receipt on a fresh VoucherLedger on the node's disk, p50"),
        figure(b, "diag: lone request through ModelRuntime", queued_s.p50_ms, "ms", baseline=direct_s.p50_ms,
               baseline_name="direct forward p50", note="node defaults: max_batch 32, max_wait_ms 2, 1 thread"),
        figure(b, "diag: voucher + receipt sign and recover", sigs.p50_ms, "ms", baseline=paid.p50_ms,
               baseline_name="paid call p50"),
    ]  # fmt: skip

