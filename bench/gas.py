"""Benchmark 3: gas per paid call, amortized over the calls one redemption covers.

What the node really does: it keeps the latest cumulative voucher per (client, expert) and redeems them in
`redeemMany` transactions of at most `RedeemPolicy.max_batch` vouchers (node.redeemer). So one redemption
of C calls made by K clients carries K vouchers, and the gas per call is the redemption's gas / C. This
benchmark runs exactly that, on a fresh anvil with the market deployed: K funded clients sign vouchers
covering C calls to one expert, the vouchers go into a real VoucherLedger, and the node's real `Redeemer`
redeems them (`redeem_once(force=True)`); gas is read from the transaction receipts.

Each scenario uses an expert of its own and is redeemed twice: the first redemption of a (client, expert)
pair writes a fresh storage slot (20,000 gas more per voucher), the next ones only update it. The steady
state (second redemption) is the headline; the first is in the notes. An expert's very first payment also
caches its operator in the escrow; a warm-up redemption pays that before the measurements.

Baseline: redeeming every call on its own (`redeem`, one voucher per transaction), same chain, same run.
Target: <= 100 gas per call at 1,000 calls per redemption.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import TITLES
from bench.env import BenchContext, RpcConnection, deposit_for_many
from bench.report import Figure, Target, figure

NAME = "gas"
TITLE = TITLES[NAME]
TARGET = Target("<=", 100, "value", "<= 100 gas/call at 1,000 calls")
PRICE = 10**12
DEPOSIT = 10**16


@dataclass(frozen=True, slots=True)
class Redemption:
    calls: int
    clients: int
    gas_first: int
    gas_steady: int
    transactions: int  # in the steady redemption


def _tmp_root() -> Path | None:
    """A memory-backed folder for the scenario ledgers when there is one: their fsyncs are not measured."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else None


def run(ctx: BenchContext) -> list[Figure]:
    from market.chain.contracts import MarketChain, capability_id
    from market.chain.devnet import Devnet, throwaway_signer
    from market.chain.eip712 import VoucherSigner
    from market.chain.signer import LocalSigner
    from market.transport import NodeIdentity
    from node.ledger import VoucherLedger
    from node.redeemer import Redeemer, RedeemPolicy

    scenarios = [(1, 1), (100, 1), (100, 10), (100, 100), (1000, 1), (1000, 10), (1000, 100), (1000, 1000)]
    max_clients = max(k for _, k in scenarios)
    policy = RedeemPolicy()

    with Devnet() as net, tempfile.TemporaryDirectory(prefix="moe-bench-gas-", dir=_tmp_root()) as tmp:
        d = net.deployment
        funder = throwaway_signer(0)
        operator = MarketChain(d, throwaway_signer(1), poll_interval=0.005)
        hot = MarketChain(d, throwaway_signer(2), poll_interval=0.005)  # the node's hot signer sends
        node_key = NodeIdentity.generate().public_key_bytes
        stake = operator.params().min_stake

        def new_expert() -> int:
            return operator.register_expert(
                signer=throwaway_signer(2).address, model_hash=b"\x42" * 32, capability=capability_id("bench"),
                price=PRICE, node_key=node_key, endpoint=["/ip4/127.0.0.1/tcp/1"], stake=stake,
            )  # fmt: skip

        t0 = time.perf_counter()
        clients = [LocalSigner.generate() for _ in range(max_clients + 1)]
        deposit_for_many(d.rpc_url, d.escrow, funder.address, [c.address for c in clients], DEPOSIT)
        signers = [VoucherSigner(c.unsafe_private_key(), d.chain_id, d.escrow) for c in clients]
        warm_signer = signers.pop()  # pays each expert's one-time operator caching
        ctx.log(f"  ({max_clients + 1} clients funded in {time.perf_counter() - t0:.1f} s)")

        def warm(expert_id: int) -> None:
            hot.redeem(warm_signer.sign(expert_id, PRICE))

        # Baseline: one voucher per transaction, as if every call were redeemed on its own.
        single_expert = new_expert()
        warm(single_expert)
        first_single = hot.redeem(signers[0].sign(single_expert, PRICE)).gas_used
        steady_single = [hot.redeem(signers[0].sign(single_expert, (i + 2) * PRICE)).gas_used for i in range(3)]
        single = sorted(steady_single)[1]

        results: list[Redemption] = []
        for calls, k in scenarios:
            expert_id = new_expert()
            warm(expert_id)
            per_client = [calls // k + (1 if i < calls % k else 0) for i in range(k)]
            path = Path(tmp) / f"ledger-{calls}-{k}.db"
            gas = []
            txs = 0
            with VoucherLedger(path, escrow=d.escrow, chain_id=d.chain_id) as ledger:
                redeemer = Redeemer(ledger, hot, [expert_id], policy)
                for round_ in (1, 2):
                    for signer, n in zip(signers[:k], per_client, strict=True):
                        ledger.record_voucher(signer.sign(expert_id, round_ * n * PRICE), PRICE)
                    report = redeemer.redeem_once(force=True)
                    if report.errors or report.vouchers != k:
                        raise RuntimeError(f"redemption of {k} vouchers failed: {report.errors[:1]}")
                    gas.append(report.gas_used)
                    txs = report.transactions
            results.append(Redemption(calls, k, gas[0], gas[1], txs))
            ctx.log(f"  ({calls:>5} calls by {k:>4} clients: {gas[1]:,} gas steady, {gas[0]:,} first, {txs} tx)")
        rpc = RpcConnection(d.rpc_url)
        try:
            block_gas_limit = int(rpc.call("eth_getBlockByNumber", ["latest", False])["gasLimit"], 16)
        finally:
            rpc.close()

    return _figures(results, single, first_single, policy.max_batch, block_gas_limit)


def _figures(
    results: list[Redemption], single: int, first_single: int, max_batch: int, block_gas_limit: int
) -> list[Figure]:
    by = {(r.calls, r.clients): r for r in results}
    one = by[(1000, 1)].gas_steady
    hundred = by[(1000, 100)].gas_steady
    per_voucher = (hundred - one) / 99
    fixed = one - per_voucher
    clients_for_target = max(0.0, (TARGET.bound * 1000 - fixed) / per_voucher)
    limit = (
        f"one voucher per client per redemption: a redemption costs about {fixed:,.0f} gas plus {per_voucher:,.0f} "
        f"per voucher (signature recovery, the client's balance and redeemed slots, an event), so 1,000 calls stay "
        f"under 100 gas each only when they come from at most {clients_for_target:.0f} client(s)"
    )
    b = NAME
    figures = [
        figure(b, "redeem one voucher per call (baseline)", single, "gas",
               note=f"steady state (median of 3); the first redemption of a pair costs {first_single:,} gas"),
    ]  # fmt: skip
    for r in results:
        figures.append(
            figure(
                b, f"gas/call: {r.calls:,} calls/redemption, {r.clients:,} client(s)", r.gas_steady / r.calls, "gas",
                baseline=single, baseline_name="redeem per call",
                target=TARGET if r.calls == 1000 else None, limit=limit,
                note=f"{r.clients} voucher(s), {r.gas_steady:,} gas in {r.transactions} tx steady; first redemption "
                     f"{r.gas_first:,} gas = {r.gas_first / r.calls:,.0f} gas/call",
            )
        )  # fmt: skip
    for k in (1, 100, 1000):
        r = by[(1000, k)]
        figures.append(
            figure(
                b, f"redeemMany gas per voucher, {k:,} voucher(s)", r.gas_steady / k, "gas",
                baseline=single, baseline_name="redeem, 1 voucher",
                note=f"steady; first redemption {r.gas_first / k:,.0f} gas/voucher; "
                     + (f"the node sends at most {max_batch} vouchers per transaction: {r.transactions} tx (one "
                        f"transaction of {k:,} first-time vouchers would need about {r.gas_first:,} gas, "
                        f"{'over' if r.gas_first > block_gas_limit else 'within'} the block gas limit of "
                        f"{block_gas_limit:,})"
                        if k > max_batch else "one transaction"),
            )
        )  # fmt: skip
    return figures

