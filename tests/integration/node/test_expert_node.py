"""A real expert node process on a real chain, called over real libp2p by a hand-rolled client.

Covers the expert-node issue's done-means: a paid call returns the right output and a receipt the contract
accepts; the operator's balance grows by exactly the redeemed amount; every kind of bad input is answered
with a clear code while the node keeps serving; a SIGKILLed node keeps every voucher it answered.
"""

from __future__ import annotations

import socket

import pytest
import torch
import trio

from market.chain.devnet import throwaway_signer
from market.chain.eip712 import VoucherSigner, recover_receipt_signer
from market.models.package import load_package
from market.protocol import codec
from market.protocol.hashing import new_request_id, tensor_hash
from market.protocol.ids import INFER, QUOTE
from market.protocol.messages import ErrorMessage, InferRequest, InferResult, QuoteRequest, QuoteResponse
from market.transport import open_host
from market.types import SignedVoucher
from node.app import LEDGER_FILE, NodeConfig
from node.ledger import VoucherLedger

PRICE = 10**12
CLIENT_INDEX = 9  # a throwaway anvil account the node market does not use for operators


class RawClient:
    """Just enough client to exercise the node: quote, pay and call, with full control over what is sent."""

    def __init__(self, market, host, signer):
        self.market = market
        self.host = host
        self.signer = signer
        deployment = market.devnet.deployment
        self.vouchers = VoucherSigner(signer.unsafe_private_key(), deployment.chain_id, deployment.escrow)
        self.cumulative: dict[int, int] = {}

    def node(self):
        return self.market.nodes["node-a"]

    async def call(self, expert_id, model_hash, x, *, voucher=None, cumulative=None, request_id=None, deadline_ms=10_000):
        node = self.node()
        specs, payload = codec.encode_tensors({"x": x})
        if voucher is None:
            amount = cumulative if cumulative is not None else self.cumulative.get(expert_id, 0) + PRICE
            voucher = self.vouchers.sign(expert_id, amount)
        request = InferRequest(
            request_id=request_id or new_request_id(),
            expert_id=expert_id,
            model_hash=model_hash,
            tensors=tuple(specs),
            voucher=voucher,
            deadline_ms=deadline_ms,
            payload=payload,
        )
        session = self.host.session(node.peer_id, node.addrs, INFER)
        header, body = await session.call(request.to_header(), request.body_payload, timeout=30)
        if header["type"] == "error":
            return ErrorMessage.from_header(header, body)
        result = InferResult.from_header(header, body)
        self.cumulative[expert_id] = voucher.voucher.cumulative_amount
        return request, result


def _experts(market):
    node = market.nodes["node-a"]
    chain = market.chain()
    return [chain.get_expert(eid) for eid in node.expert_ids]


def test_paid_call_output_receipt_and_redemption(one_node_market, bundle):
    market = one_node_market
    client_signer = throwaway_signer(CLIENT_INDEX)
    client_chain = market.chain(client_signer)
    client_chain.deposit(10**17)
    expert0, expert1 = _experts(market)
    local0 = load_package(bundle.expert_dir(0))
    x = torch.rand(5, 64)
    deployment = market.devnet.deployment

    async def scenario():
        async with open_host() as host:
            client = RawClient(market, host, client_signer)
            quote_header, _ = await host.request(
                market.nodes["node-a"].peer_id, market.nodes["node-a"].addrs, QUOTE,
                QuoteRequest(client=client_signer.address).to_header(),
            )
            quote = QuoteResponse.from_header(quote_header)
            assert {q.expert_id for q in quote.experts} == {expert0.expert_id, expert1.expert_id}
            results = []
            for _ in range(3):
                results.append(await client.call(expert0.expert_id, expert0.model_hash, x))
            results.append(await client.call(expert1.expert_id, expert1.model_hash, x))
            return results

    results = trio.run(scenario)
    request, result = results[0]
    outputs = codec.decode_tensors(result.tensors, result.payload)
    expected = local0.forward({"x": x})["logits"]
    assert torch.allclose(outputs["logits"], expected, atol=1e-5, rtol=1e-4)
    receipt = result.receipt.receipt
    assert receipt.expert_id == expert0.expert_id
    assert receipt.input_hash == tensor_hash(request.tensors, request.payload)
    assert receipt.output_hash == tensor_hash(result.tensors, result.payload)
    assert receipt.price == PRICE
    signer = recover_receipt_signer(result.receipt, deployment.chain_id, deployment.disputes)
    assert signer == expert0.signer
    # The contract computes the same digest and knows the signer: it would accept this receipt in a dispute.
    chain = market.chain()
    assert chain.was_signer(expert0.expert_id, signer)
    from market.chain.eip712 import receipt_digest

    assert chain.onchain_receipt_digest(receipt) == receipt_digest(receipt, deployment.chain_id, deployment.disputes)

    # Redemption: stop the node gracefully (it redeems on the way out) and check the money.
    operator = market.nodes["node-a"].operator.address
    before = chain.native_balance(operator)
    market.stop_node("node-a")
    paid = 4 * PRICE
    assert chain.redeemed(client_signer.address, expert0.expert_id) == 3 * PRICE
    assert chain.redeemed(client_signer.address, expert1.expert_id) == PRICE
    # The hot signer paid the gas; the operator receives exactly the redeemed amount.
    assert chain.native_balance(operator) - before == paid
    assert client_chain.balance_of(client_signer.address) == 10**17 - paid
    market.start_node("node-a")


def test_bad_input_is_answered_and_the_node_keeps_serving(one_node_market):
    market = one_node_market
    client_signer = throwaway_signer(CLIENT_INDEX - 1)
    market.chain(client_signer).deposit(10**16)
    poor = throwaway_signer(CLIENT_INDEX - 2)  # never deposits
    expert0, expert1 = _experts(market)
    deployment = market.devnet.deployment
    node = market.nodes["node-a"]

    async def scenario():
        codes = {}
        async with open_host() as host:
            client = RawClient(market, host, client_signer)
            good = torch.rand(2, 64)

            async def ok():
                outcome = await client.call(expert0.expert_id, expert0.model_hash, good)
                assert not isinstance(outcome, ErrorMessage), outcome
                return outcome

            await ok()
            codes["wrong shape"] = await client.call(expert0.expert_id, expert0.model_hash, torch.rand(2, 63))
            codes["wrong dtype"] = await client.call(expert0.expert_id, expert0.model_hash, good.double())
            codes["unknown model"] = await client.call(expert0.expert_id, b"\x11" * 32, good)
            codes["unknown expert"] = await client.call(10_000, expert0.model_hash, good)
            forged = client.vouchers.sign(expert0.expert_id, 10 * PRICE)
            bad_sig = SignedVoucher(forged.voucher, forged.signature[:-1] + bytes([forged.signature[-1] ^ 1]))
            codes["bad signature"] = await client.call(expert0.expert_id, expert0.model_hash, good, voucher=bad_sig)
            other_expert = client.vouchers.sign(expert1.expert_id, 10 * PRICE)
            codes["other expert"] = await client.call(expert0.expert_id, expert0.model_hash, good, voucher=other_expert)
            other_escrow = VoucherSigner(client_signer.unsafe_private_key(), deployment.chain_id, deployment.registry)
            codes["other escrow"] = await client.call(
                expert0.expert_id, expert0.model_hash, good, voucher=other_escrow.sign(expert0.expert_id, 10 * PRICE)
            )
            other_chain = VoucherSigner(client_signer.unsafe_private_key(), 1, deployment.escrow)
            codes["other chain"] = await client.call(
                expert0.expert_id, expert0.model_hash, good, voucher=other_chain.sign(expert0.expert_id, 10 * PRICE)
            )
            codes["replayed"] = await client.call(
                expert0.expert_id, expert0.model_hash, good, cumulative=client.cumulative[expert0.expert_id]
            )
            codes["too low"] = await client.call(
                expert0.expert_id, expert0.model_hash, good, cumulative=client.cumulative[expert0.expert_id] + PRICE // 2
            )
            poor_client = RawClient(market, host, poor)
            codes["no deposit"] = await poor_client.call(expert0.expert_id, expert0.model_hash, good)
            codes["expired deadline"] = await client.call(expert0.expert_id, expert0.model_hash, good, deadline_ms=0)
            oversized = torch.rand(100_000, 64)  # 25.6 MB: over the 16 MiB infer frame cap
            try:
                codes["frame over cap"] = await client.call(expert0.expert_id, expert0.model_hash, oversized)
            except Exception as exc:  # the client side refuses to send it
                codes["frame over cap"] = exc
            await ok()

            # Garbage bytes on the TCP port, and a peer that disconnects mid-request.
            port = int(node.addrs[0].split("/tcp/")[1].split("/")[0])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"\x00\xffGARBAGE" * 1000)
            stream = await host.open_stream(node.peer_id, node.addrs, INFER)
            await stream.write(b"\x00\x00\x10\x00partial")
            await stream.reset()
            await ok()
        return codes

    codes = trio.run(scenario)
    expected = {
        "wrong shape": "BAD_INPUT",
        "wrong dtype": "BAD_INPUT",
        "unknown model": "UNKNOWN_EXPERT",
        "unknown expert": "UNKNOWN_EXPERT",
        "bad signature": "BAD_VOUCHER",
        "other expert": "BAD_VOUCHER",
        "other escrow": "BAD_VOUCHER",
        "other chain": "BAD_VOUCHER",
        "replayed": "VOUCHER_TOO_LOW",
        "too low": "VOUCHER_TOO_LOW",
        "no deposit": "INSUFFICIENT_DEPOSIT",
        "expired deadline": "DEADLINE",
    }
    for case, code in expected.items():
        answer = codes[case]
        assert isinstance(answer, ErrorMessage), f"{case}: {answer!r}"
        assert answer.code == code, f"{case}: {answer.code} {answer.message}"
        assert answer.message, case
    over = codes["frame over cap"]
    assert (isinstance(over, ErrorMessage) and over.code == "FRAME_TOO_LARGE") or "cap" in str(over)
    assert market.nodes["node-a"].process.alive()


def test_sigkill_loses_no_voucher(one_node_market):
    market = one_node_market
    client_signer = throwaway_signer(CLIENT_INDEX - 3)
    market.chain(client_signer).deposit(10**16)
    expert0, _ = _experts(market)
    calls = 6

    async def scenario():
        async with open_host() as host:
            client = RawClient(market, host, client_signer)
            for _ in range(calls):
                outcome = await client.call(expert0.expert_id, expert0.model_hash, torch.rand(1, 64))
                assert not isinstance(outcome, ErrorMessage), outcome
            return client.cumulative[expert0.expert_id]

    answered = trio.run(scenario)
    market.kill_node("node-a")
    node = market.nodes["node-a"]
    deployment = market.devnet.deployment
    with VoucherLedger(node.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
        assert ledger.last_cumulative(client_signer.address, expert0.expert_id) == answered == calls * PRICE
    # After a restart the node redeems what it held (on its way out at the latest).
    market.start_node("node-a")
    market.stop_node("node-a")
    chain = market.chain()
    assert chain.redeemed(client_signer.address, expert0.expert_id) == answered
    config = NodeConfig.load(node.home)
    assert expert0.expert_id in [e.expert_id for e in config.experts]
    market.start_node("node-a")


@pytest.fixture(autouse=True)
def _node_running(one_node_market):
    node = one_node_market.nodes["node-a"]
    if node.process is None or not node.process.alive():
        one_node_market.start_node("node-a")
    yield
