"""Checking one expert's answer before it is believed or paid for again: pure code, no network, no clock.

An answer is usable only if all of these hold (docs/client.md, "What is checked"):

1. it answers our request id;
2. its receipt binds exactly this call: expert id, model hash, request id, the tensor hash of the input we
   sent, the tensor hash of the output we received, and the expert's registered price;
3. the receipt's EIP-712 signature (domain: the dispute manager of this chain) recovers to the expert's
   registered signer (or, through `was_signer`, to a signer it had before an update);
4. the output tensors decode and fit the manifest's output schema for the number of rows we sent.

A failure of 1-3 makes the answer unusable and unprovable (the receipt does not bind our call). A failure
of 4 with 1-3 holding is a signed wrong answer: evidence for a dispute (`BadAnswer.provable`).
Outputs that fit the schema but differ from other experts' are judged later, by the vote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from market.errors import MalformedMessageError, MarketError, ModelError
from market.protocol.hashing import tensor_hash
from market.protocol.specs import TensorSpec
from market.types import ExpertInfo, SignedReceipt

if TYPE_CHECKING:
    import torch

    from market.manifest import ModelManifest
    from market.protocol.messages import InferResult as ResultMessage

__all__ = ["BadAnswer", "CheckedAnswer", "check_answer"]


@dataclass(frozen=True, slots=True)
class CheckedAnswer:
    """A usable answer: decoded outputs and the receipt that binds them."""

    outputs: dict[str, torch.Tensor]
    specs: tuple[TensorSpec, ...]
    payload: bytes
    receipt: SignedReceipt


class BadAnswer(MarketError):
    """An answer that cannot be used. `provable`: the receipt is valid and binds our input to this output,
    so the output (`outputs`, when it decoded) can go to a dispute."""

    def __init__(
        self,
        reason: str,
        *,
        provable: bool = False,
        receipt: SignedReceipt | None = None,
        specs: Sequence[TensorSpec] = (),
        payload: bytes = b"",
        outputs: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.provable = provable
        self.receipt = receipt
        self.specs = tuple(specs)
        self.payload = payload
        self.outputs = outputs


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def check_answer(
    answer: ResultMessage,
    *,
    expert: ExpertInfo,
    request_id: bytes,
    model_hash: bytes,
    input_hash: bytes,
    manifest: ModelManifest,
    rows: int,
    recover_signer: Callable[[SignedReceipt], str],
    was_signer: Callable[[int, str], bool] | None = None,
    max_elements: int | None = None,
) -> CheckedAnswer:
    """Check `answer` (see the module docstring); raises BadAnswer.

    `recover_signer(receipt)` returns the address that signed the receipt under the dispute manager's
    domain (market.chain.eip712.recover_receipt_signer bound to this chain); `was_signer(expert_id,
    address)` asks the registry whether the expert ever used that signer (for receipts signed just before a
    key rotation); it is consulted only when the address is not the current signer.
    """
    from market.protocol.codec import DEFAULT_MAX_ELEMENTS, decode_tensors

    signed = answer.receipt
    r = signed.receipt
    if answer.request_id != request_id:
        raise BadAnswer(f"answer is for request {_hex(answer.request_id)}, not {_hex(request_id)}")
    mismatches = [
        name
        for name, got, want in (
            ("expert_id", r.expert_id, expert.expert_id),
            ("model_hash", r.model_hash, model_hash),
            ("request_id", r.request_id, request_id),
            ("input_hash", r.input_hash, input_hash),
            ("price", r.price, expert.price),
        )
        if got != want
    ]
    if mismatches:
        raise BadAnswer(f"receipt does not bind this call: {', '.join(mismatches)} differ")
    try:
        output_hash = tensor_hash(answer.tensors, answer.payload)
    except MalformedMessageError as exc:
        raise BadAnswer(f"output tensors do not match their specs: {exc}") from None
    if r.output_hash != output_hash:
        raise BadAnswer("receipt's output_hash is not the hash of the output received")
    try:
        recovered = recover_signer(signed)
    except MarketError as exc:
        raise BadAnswer(f"receipt signature is malformed: {exc}") from None
    if recovered.lower() != expert.signer.lower() and (
        was_signer is None or not was_signer(expert.expert_id, recovered)
    ):
        raise BadAnswer(
            f"receipt is signed by {recovered}, not by expert {expert.expert_id}'s signer {expert.signer}"
        )
    specs, payload = tuple(answer.tensors), bytes(answer.payload)
    try:
        outputs = decode_tensors(specs, payload, max_elements or DEFAULT_MAX_ELEMENTS)
    except MalformedMessageError as exc:
        raise BadAnswer(
            f"signed output does not decode: {exc}", provable=True, receipt=signed, specs=specs, payload=payload
        ) from None
    try:
        manifest.check_outputs(outputs, batch=rows)
    except ModelError as exc:
        raise BadAnswer(
            f"signed output does not fit the model: {exc}",
            provable=True, receipt=signed, specs=specs, payload=payload, outputs=outputs,
        ) from None
    return CheckedAnswer(outputs=outputs, specs=specs, payload=payload, receipt=signed)
