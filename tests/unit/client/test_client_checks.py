"""market.client.checks: an answer is used only if its signed receipt binds exactly the call that was made."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from client_fakes import CHAIN_ID, DEPLOYMENT, PRICE, toy_manifest

from market.chain.eip712 import recover_receipt_signer
from market.chain.signer import LocalSigner
from market.client.checks import BadAnswer, check_answer
from market.protocol.codec import encode_tensors
from market.protocol.hashing import new_request_id, tensor_hash
from market.protocol.messages import InferResult
from market.types import ExpertInfo, Receipt, SignedReceipt

MANIFEST = toy_manifest()
KEY = LocalSigner.generate()
EXPERT = ExpertInfo(
    expert_id=7, operator="0x" + "aa" * 20, signer=KEY.address, model_hash=MANIFEST.model_hash,
    capability=b"\x00" * 32, price=PRICE, stake=1, node_key=b"\x01" * 32, endpoint=(), registered_at=0,
)
X = torch.ones(3, 4)
IN_SPECS, IN_PAYLOAD = encode_tensors({"x": X})
INPUT_HASH = tensor_hash(IN_SPECS, IN_PAYLOAD)
REQUEST_ID = new_request_id()


def recover(signed: SignedReceipt) -> str:
    return recover_receipt_signer(signed, CHAIN_ID, DEPLOYMENT.disputes)


def answer(
    outputs: dict[str, torch.Tensor] | None = None, signer: LocalSigner = KEY, **receipt_changes: Any
) -> InferResult:
    outputs = outputs if outputs is not None else {"y": torch.zeros(3, 3)}
    specs, payload = encode_tensors(outputs)
    receipt = Receipt(
        expert_id=EXPERT.expert_id, model_hash=MANIFEST.model_hash, request_id=REQUEST_ID,
        input_hash=INPUT_HASH, output_hash=tensor_hash(specs, payload), price=PRICE,
    )
    receipt = replace(receipt, **receipt_changes)
    signed = signer.receipt_signer(CHAIN_ID, DEPLOYMENT.disputes).sign(receipt)
    return InferResult(REQUEST_ID, tuple(specs), signed, 1.0, payload)


def check(result: InferResult, **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        expert=EXPERT, request_id=REQUEST_ID, model_hash=MANIFEST.model_hash, input_hash=INPUT_HASH,
        manifest=MANIFEST, rows=3, recover_signer=recover,
    )
    args.update(kw)
    return check_answer(result, **args)


def test_a_good_answer_passes() -> None:
    checked = check(answer())
    assert torch.equal(checked.outputs["y"], torch.zeros(3, 3))
    assert checked.receipt.receipt.input_hash == INPUT_HASH


@pytest.mark.parametrize(
    "change",
    [
        {"expert_id": 8},
        {"model_hash": b"\x01" * 32},
        {"request_id": b"\x02" * 32},
        {"input_hash": b"\x03" * 32},
        {"price": PRICE + 1},
        {"output_hash": b"\x04" * 32},
    ],
)
def test_a_receipt_that_does_not_bind_this_call_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(BadAnswer) as info:
        check(answer(**change))
    assert not info.value.provable


def test_an_answer_to_another_request_is_refused() -> None:
    result = answer()
    with pytest.raises(BadAnswer, match="answer is for request"):
        check(replace(result, request_id=b"\x05" * 32))


def test_a_receipt_signed_by_someone_else_is_refused() -> None:
    with pytest.raises(BadAnswer, match="signed by") as info:
        check(answer(signer=LocalSigner.generate()))
    assert not info.value.provable


def test_a_receipt_signed_by_a_previous_signer_passes_through_was_signer() -> None:
    old = LocalSigner.generate()
    asked: list[tuple[int, str]] = []

    def was_signer(expert_id: int, address: str) -> bool:
        asked.append((expert_id, address))
        return address == old.address

    check(answer(signer=old), was_signer=was_signer)
    assert asked == [(EXPERT.expert_id, old.address)]


def test_a_receipt_signed_for_another_chain_is_refused() -> None:
    result = answer()
    signed = KEY.receipt_signer(CHAIN_ID + 1, DEPLOYMENT.disputes).sign(result.receipt.receipt)
    with pytest.raises(BadAnswer, match="signed by"):
        check(replace(result, receipt=signed))


def test_a_signed_output_that_breaks_the_schema_is_provable_evidence() -> None:
    with pytest.raises(BadAnswer, match="does not fit the model") as info:
        check(answer({"y": torch.zeros(3, 2)}))
    bad = info.value
    assert bad.provable and bad.receipt is not None
    assert tensor_hash(bad.specs, bad.payload) == bad.receipt.receipt.output_hash
    assert bad.outputs is not None and bad.outputs["y"].shape == (3, 2)


def test_a_signed_output_with_the_wrong_row_count_is_provable_evidence() -> None:
    with pytest.raises(BadAnswer, match="batch size") as info:
        check(answer({"y": torch.zeros(2, 3)}))
    assert info.value.provable
