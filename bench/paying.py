"""A hand-rolled paying client for the benchmarks (the shape of tests/integration/node's RawClient).

One `PayingCaller` per client key: each call signs the next cumulative voucher, sends the infer request on
the host's pooled session to the node, and checks what a careful client checks before it trusts an answer:
the receipt recovers to the expert's registered signer and binds this request id, the input hash, the
output hash and the price. That is the whole client-side cost of one paid, receipted call; a client SDK
adds its own bookkeeping (a durable voucher book, the gate) on top.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.env import ExpertTarget
from market.chain.eip712 import VoucherSigner, recover_receipt_signer
from market.protocol import codec
from market.protocol.hashing import new_request_id, tensor_hash
from market.protocol.ids import INFER
from market.protocol.messages import ErrorMessage, InferRequest, InferResult

DEADLINE_MS = 30_000


class PaidCallError(Exception):
    """The node answered with an error code, or the answer failed the client's checks."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PayingCaller:
    """Calls one expert, paying each call with a cumulative voucher signed by `key` (a LocalSigner)."""

    def __init__(
        self,
        host: Any,
        key: Any,
        target: ExpertTarget,
        *,
        book: dict[tuple[str, int], int] | None = None,
        check_receipt: bool = True,
    ) -> None:
        self.target = target
        self.session = host.session(target.peer_id, list(target.addrs), INFER)
        self.vouchers = VoucherSigner(key.unsafe_private_key(), target.chain_id, target.escrow)
        # The client's voucher book: what this key has signed to this expert so far, shared by every caller
        # that uses the key in this run (the node refuses a cumulative amount below what it holds).
        self._book = book if book is not None else {}
        self._pair = (self.vouchers.address, target.expert_id)
        self.check_receipt = check_receipt
        self.calls = 0
        self.last_compute_ms = float("nan")  # the node's own time for the last call (from its answer)

    @property
    def cumulative(self) -> int:
        return self._book.get(self._pair, 0)

    @cumulative.setter
    def cumulative(self, value: int) -> None:
        self._book[self._pair] = value

    async def call(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = self.target
        specs, payload = codec.encode_tensors(inputs)
        amount = self.cumulative + t.price
        request = InferRequest(
            request_id=new_request_id(),
            expert_id=t.expert_id,
            model_hash=t.model_hash,
            tensors=tuple(specs),
            voucher=self.vouchers.sign(t.expert_id, amount),
            deadline_ms=DEADLINE_MS,
            payload=payload,
        )
        header, body = await self.session.call(request.to_header(), request.body_payload)
        if header.get("type") == "error":
            error = ErrorMessage.from_header(header, body)
            if error.code == "VOUCHER_TOO_LOW" and error.cumulative is not None:
                self.cumulative = int(error.cumulative)  # resync, as a client that restarted would
            raise PaidCallError(str(error.code), error.message)
        result = InferResult.from_header(header, body)
        self.cumulative = amount
        self.calls += 1
        self.last_compute_ms = result.compute_ms
        if self.check_receipt:
            self._check(request, result)
        return codec.decode_tensors(result.tensors, result.payload)

    def _check(self, request: InferRequest, result: InferResult) -> None:
        t = self.target
        receipt = result.receipt.receipt
        if recover_receipt_signer(result.receipt, t.chain_id, t.disputes).lower() != t.signer.lower():
            raise PaidCallError("BAD_RECEIPT", "the receipt is not signed by the expert's registered signer")
        if (
            receipt.request_id != request.request_id
            or receipt.expert_id != t.expert_id
            or receipt.price != t.price
            or receipt.input_hash != tensor_hash(request.tensors, request.payload)
            or receipt.output_hash != tensor_hash(result.tensors, result.payload)
        ):
            raise PaidCallError("BAD_RECEIPT", "the receipt does not bind this request and answer")
