"""Hostile input, in process: hypothesis fuzz of every protocol handler behind the transport.

The handlers are the node's quote, infer and model handlers (node.server.ExpertServer, with the real ledger,
runtime and digits model; only the chain's balance read is a stand-in, returning a large deposit) and the
client's evidence handler (market.evidence). Each case is a header the transport could hand over (any JSON
object with a "type", since the transport decodes the frame first) and a payload: a valid request mutated
field by field, or random fields. The rule, as in market.transport's `_answer`: a handler returns an answer
that encodes, or raises RemoteError / MalformedMessageError / MarketInputError (answered with their code);
anything else would be answered INTERNAL and logged as a bug, so it fails here. The money rule for infer: the
ledger keeps a voucher exactly when the answer is a result (an error answer never charges the client), and
never more than one price per answered call.

Quick form (`make test`): 150 cases per handler. Long form (`-m chaos`): MOE_FUZZ_EXAMPLES (10,000 default).
The live counterpart (real streams to a node process) is `test_live_garbage_*` in test_market_faults.py.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from market_harness import digits_bundle
from reliability_rows import Row

from market.chain.devnet import throwaway_signer
from market.chain.eip712 import ReceiptSigner
from market.errors import MalformedMessageError, MarketInputError, RemoteError
from market.evidence import EvidenceStore, evidence_handler
from market.models.digits import load_digits_gate
from market.models.package import ModelStore
from market.protocol import codec
from market.protocol.hashing import new_request_id
from market.protocol.messages import (
    EvidenceRequest,
    InferRequest,
    InferResult,
    ModelRequest,
    QuoteRequest,
    encode_body,
)
from market.types import SignedVoucher
from node.ledger import VoucherLedger
from node.runtime import ModelRuntime
from node.server import ExpertServer, ServedExpert

QUICK = 150
LONG = int(os.environ.get("MOE_FUZZ_EXAMPLES", "10000"))
CHAIN_ID = 31337
ESCROW = "0x" + "e5" * 20
DISPUTES = "0x" + "d1" * 20
EXPERT_ID = 7
PRICE = 10**12
EXPECTED = (RemoteError, MalformedMessageError, MarketInputError)
PEER: Any = None  # the handlers only log the peer

# THROWAWAY TEST KEYS (anvil's accounts 5 and 6): a paying client and the node's receipt signer.
CLIENT = throwaway_signer(5)
NODE_SIGNER = throwaway_signer(6)


@dataclass
class Harness:
    server: ExpertServer
    ledger: VoucherLedger
    evidence: Any
    model_hash: bytes
    evidence_hash: bytes
    cumulative: int = 0
    results: int = 0
    errors: int = 0

    def next_voucher(self, extra: int) -> SignedVoucher:
        signer = CLIENT.voucher_signer(CHAIN_ID, ESCROW)
        return signer.sign(EXPERT_ID, self.cumulative + extra)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    workdir = tmp_path_factory.mktemp("handler-fuzz")
    bundle = digits_bundle()
    _, hashes = load_digits_gate(bundle.root)
    store = ModelStore(workdir / "models")
    store.add(bundle.expert_dir(0))
    model = store.get(hashes[0])
    runtime = ModelRuntime(model, max_batch=64, max_wait_ms=1, threads=1, name="fuzz")
    ledger = VoucherLedger(workdir / "ledger.db", escrow=ESCROW, chain_id=CHAIN_ID)
    server = ExpertServer(
        experts=[ServedExpert(EXPERT_ID, model, runtime, PRICE)],
        ledger=ledger,
        receipt_signer=ReceiptSigner(NODE_SIGNER.unsafe_private_key(), CHAIN_ID, DISPUTES),
        chain_id=CHAIN_ID,
        escrow=ESCROW,
        balance_of=lambda client: 10**24,  # stand-in for the chain read: a deposit that covers everything
        store=store,
    )
    evidence_store = EvidenceStore(workdir / "evidence")
    specs, payload = codec.encode_tensors({"x": torch.rand(2, 64)})
    evidence_hash = evidence_store.put_encoded(specs, payload)
    try:
        yield Harness(server, ledger, evidence_handler(evidence_store), hashes[0], evidence_hash)
    finally:
        runtime.close()
        ledger.close()


# ---- strategies ------------------------------------------------------------------------------------------

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**300), st.floats(allow_nan=False),
    st.text(max_size=40), st.just("0x" + "ab" * 32), st.just("0x"), st.just(-1), st.just(2**256),
)  # fmt: skip
json_value = st.recursive(
    json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """A valid header with some fields dropped, replaced by random JSON, or added."""
    header = dict(valid)
    keys = sorted(header)
    for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        if draw(st.booleans()):
            header.pop(key)
        else:
            header[key] = draw(json_value)
    for key in draw(st.lists(st.text(max_size=10), max_size=2)):
        header[key] = draw(json_value)
    return header


@st.composite
def tensor_inputs(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bytes]:
    """The digits input (x: float32 [rows, 64]) right or wrong: rows, width, dtype, name, payload length."""
    rows = draw(st.integers(0, 70))
    width = draw(st.sampled_from([64, 64, 64, 63, 1]))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64]))
    name = draw(st.sampled_from(["x", "x", "y"]))
    specs, payload = codec.encode_tensors({name: torch.zeros(rows, width, dtype=dtype)})
    wire = [spec.to_json() for spec in specs]
    cut = draw(st.sampled_from([None, None, None, 0, 1, -1]))
    if cut is not None:
        payload = payload[:cut] if cut >= 0 else payload + b"\x00"
    return wire, payload


def _header_of(request: Any) -> dict[str, Any]:
    return json.loads(json.dumps(request.to_header()))


@st.composite
def infer_cases(draw: st.DrawFn, h: Harness) -> tuple[dict[str, Any], bytes, int]:
    extra = draw(st.sampled_from([PRICE, PRICE, PRICE, 0, PRICE - 1, 5 * PRICE, -h.cumulative]))
    rows = draw(st.integers(1, 3))
    specs, payload = codec.encode_tensors({"x": torch.rand(rows, 64)})
    request = InferRequest(
        request_id=new_request_id(), expert_id=EXPERT_ID, model_hash=h.model_hash, tensors=tuple(specs),
        voucher=h.next_voucher(extra), deadline_ms=draw(st.sampled_from([30_000, 30_000, 0, 1])), payload=payload,
    )  # fmt: skip
    header = _header_of(request)
    kind = draw(st.sampled_from(["valid", "valid", "fields", "tensors", "random"]))
    if kind == "fields":
        header = draw(mutated(header))
    elif kind == "tensors":
        specs_json, payload = draw(tensor_inputs())
        header["tensors"] = specs_json
    elif kind == "random":
        header = {"type": "infer", **draw(st.dictionaries(st.text(max_size=10), json_value, max_size=6))}
    return header, payload, extra


# ---- the rule ----------------------------------------------------------------------------------------------


def answer_or_expected_error(handler: Any, header: dict[str, Any], payload: bytes) -> tuple[dict, bytes] | None:
    """Run one handler call on a fresh trio loop; None when it raised an expected (answered) error."""

    async def call() -> tuple[dict, bytes] | None:
        with trio.fail_after(60):  # a hang guard, not a timing check
            try:
                out_header, out_payload = await handler(header, payload, PEER)
            except EXPECTED:
                return None
        encode_body(out_header, out_payload)  # the answer must encode (the transport sends it)
        return out_header, out_payload

    return trio.run(call)


def fuzz(examples: int, strategy: st.SearchStrategy, check: Any) -> None:
    s = settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture],
    )  # fmt: skip
    s(given(strategy)(check))()


def check_infer(h: Harness, case: tuple[dict[str, Any], bytes, int]) -> None:
    header, payload, extra = case

    def holdings() -> tuple[int, int]:  # (what the node holds, what the calls it served cost)
        return (h.ledger.last_cumulative(CLIENT.address, EXPERT_ID), h.ledger.served_amount(CLIENT.address, EXPERT_ID))

    before = holdings()
    answer = answer_or_expected_error(h.server.on_infer, header, payload)
    after = holdings()
    if answer is None:
        h.errors += 1
        assert after == before, f"an error answer changed what the node holds or served: {before} -> {after}"
        return
    result = InferResult.from_header(answer[0], answer[1])
    assert result.receipt.receipt.price == PRICE
    # A result: one more call served, and the vouchers held pay for every call served (this one included).
    assert after[1] == before[1] + PRICE and after[0] >= before[0] and after[0] >= after[1], (before, after)
    h.results += 1
    h.cumulative = after[0]


def check_quote(h: Harness, header: dict[str, Any]) -> None:
    answer_or_expected_error(h.server.on_quote, header, b"")


def check_model(h: Harness, case: tuple[dict[str, Any], bytes]) -> None:
    answer_or_expected_error(h.server.on_model, *case)


def check_evidence(h: Harness, case: tuple[dict[str, Any], bytes]) -> None:
    answer_or_expected_error(h.evidence, *case)


def quote_cases() -> st.SearchStrategy:
    valid = json.loads(json.dumps(QuoteRequest(client=CLIENT.address, model_hash=None).to_header()))
    return st.one_of(mutated(valid), st.builds(lambda d: {"type": "quote", **d},
                                               st.dictionaries(st.text(max_size=10), json_value, max_size=5)))


def hash_cases(cls: type, valid_hash: bytes, kind: str) -> st.SearchStrategy:
    valid = json.loads(json.dumps(cls(valid_hash).to_header()))
    payloads = st.sampled_from([b"", b"", b"x" * 10])
    return st.tuples(
        st.one_of(st.just(valid), mutated(valid),
                  st.builds(lambda d: {"type": kind, **d}, st.dictionaries(st.text(max_size=10), json_value, max_size=4))),
        payloads,
    )  # fmt: skip


# ---- the tests ---------------------------------------------------------------------------------------------


def run_all(h: Harness, examples: int) -> None:
    fuzz(examples, infer_cases(h), lambda case: check_infer(h, case))
    assert h.results > 0 and h.errors > 0, (h.results, h.errors)  # both sides were reached
    fuzz(examples, quote_cases(), lambda header: check_quote(h, header))
    fuzz(examples, hash_cases(ModelRequest, h.model_hash, "model"), lambda case: check_model(h, case))
    fuzz(examples, hash_cases(EvidenceRequest, h.evidence_hash, "evidence"), lambda case: check_evidence(h, case))
    # Still serving: one valid paid call is answered and charged exactly one price.
    before = h.ledger.last_cumulative(CLIENT.address, EXPERT_ID)
    h.cumulative = before
    specs, payload = codec.encode_tensors({"x": torch.rand(1, 64)})
    request = InferRequest(
        request_id=new_request_id(), expert_id=EXPERT_ID, model_hash=h.model_hash, tensors=tuple(specs),
        voucher=h.next_voucher(PRICE), deadline_ms=30_000, payload=payload,
    )  # fmt: skip
    answer = answer_or_expected_error(h.server.on_infer, _header_of(request), payload)
    assert answer is not None
    assert h.ledger.last_cumulative(CLIENT.address, EXPERT_ID) == before + PRICE


def test_fuzz_handlers_quick(harness: Harness) -> None:
    run_all(harness, QUICK)


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_fuzz_handlers_long(harness: Harness, record_row) -> None:
    started = time.monotonic()
    results, errors = harness.results, harness.errors
    run_all(harness, LONG)
    notes = {"cases per handler": LONG, "infer answered with a result": harness.results - results,
             "infer answered with an error": harness.errors - errors}  # fmt: skip
    # Every case was answered or refused with its code (run_all fails otherwise); no money moves here.
    record_row(Row("handler fuzz (in process)", attempted=4 * LONG, succeeded=4 * LONG,
                   seconds=time.monotonic() - started, notes=notes))  # fmt: skip
