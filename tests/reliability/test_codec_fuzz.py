"""Hostile input, offline: hypothesis fuzz of the body codec, every message decoder and the tensor codec.

The rule checked: whatever the bytes, a decoder returns a value or raises a MarketError (the node turns
those into MALFORMED / BAD_INPUT answers); never another exception, never a hang, never a huge allocation.
Quick form: a few hundred cases per target (`make test`). Long form (`-m chaos`): MOE_FUZZ_EXAMPLES cases per
target, 10,000 by default.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.errors import MarketError
from market.protocol import codec, messages
from market.protocol.messages import decode_body, decode_request, decode_response, encode_body

QUICK = {"body": 200, "framed_header": 100, "message": 100, "tensors": 100}
LONG = int(os.environ.get("MOE_FUZZ_EXAMPLES", "10000"))

MESSAGE_CLASSES = [
    messages.QuoteRequest, messages.QuoteResponse, messages.InferRequest, messages.InferResult,
    messages.ErrorMessage, messages.ModelRequest, messages.ModelResponse, messages.EvidenceRequest,
    messages.EvidenceResponse,
]
TYPE_OF = {"QuoteRequest": "quote", "QuoteResponse": "quote", "InferRequest": "infer", "InferResult": "result",
           "ErrorMessage": "error", "ModelRequest": "model", "ModelResponse": "model",
           "EvidenceRequest": "evidence", "EvidenceResponse": "evidence"}
FIELDS = ["client", "model_hash", "experts", "queue", "cumulative", "request_id", "expert_id", "tensors", "voucher",
          "deadline_ms", "receipt", "compute_ms", "code", "message", "manifest", "hash", "price", "amount",
          "signature", "name", "dtype", "shape", "max_batch", "input_hash", "output_hash", "escrow", "chain_id"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**300), max_value=2**300)
           | st.floats() | st.text(max_size=30)
           | st.binary(max_size=40).map(lambda b: "0x" + b.hex())
           | st.sampled_from(["0x", "0x" + "11" * 20, "0x" + "22" * 32, "0x" + "33" * 65, "float32", "int64",
                              "bool", "x", "-1", "1e400", "NaN"]))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), children, max_size=3),
    max_leaves=6,
)
headers = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
specs = st.lists(
    st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["x", "y", "", "a" * 300]) | st.text(max_size=5) | st.integers(),
        "dtype": st.sampled_from(sorted(codec.TORCH_DTYPES)) | st.text(max_size=8) | st.none(),
        "shape": st.lists(st.integers(min_value=-3, max_value=2**40) | st.integers(0, 8) | st.text(max_size=2),
                          max_size=6) | st.integers() | st.none(),
    }),
    max_size=4,
)


def only_market_errors(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(MarketError):
        fn()


def check_random_body(data: bytes) -> None:
    try:
        header, payload = decode_body(data)
    except MarketError:
        return
    for decode in (decode_request, decode_response):
        only_market_errors(lambda d=decode: d(header, payload))


def check_framed_header(raw: bytes, payload: bytes) -> None:
    body = struct.pack(">I", len(raw)) + raw + payload
    check_random_body(body)


def check_message(cls: Any, fields: dict[str, Any], payload: bytes, keep_type: bool) -> None:
    header = dict(fields)
    if keep_type:
        header["type"] = TYPE_OF[cls.__name__]
    only_market_errors(lambda: cls.from_header(header, payload))
    # And the same header through the wire encoding (JSON round trip), when it encodes.
    try:
        body = encode_body(header, payload)
    except (MarketError, ValueError, TypeError):
        return
    check_random_body(body)


def check_tensors(spec_list: list[dict[str, Any]], payload: bytes) -> None:
    only_market_errors(lambda: codec.decode_tensors(spec_list, payload))


raw_headers = st.one_of(
    st.binary(max_size=200),
    headers.map(lambda h: json.dumps({**h, "type": "infer"}).encode()),
    st.builds(lambda d, t: json.dumps({**d, "type": t}).encode(), headers,
              st.sampled_from(sorted(messages.MESSAGE_TYPES))),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"type":"quote","a":' * n + b"1" + b"}" * n),
)

SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def _target(name: str, examples: int) -> Callable[[], None]:
    s = settings(max_examples=examples, deadline=None, suppress_health_check=SUPPRESS, derandomize=False)
    if name == "body":
        return s(given(st.binary(max_size=600))(check_random_body))
    if name == "framed_header":
        return s(given(raw_headers, st.binary(max_size=64))(check_framed_header))
    if name == "message":
        return s(given(st.sampled_from(MESSAGE_CLASSES), headers, st.binary(max_size=64), st.booleans())(check_message))
    return s(given(specs, st.binary(max_size=256))(check_tensors))


@pytest.mark.parametrize("target", ["body", "framed_header", "message", "tensors"])
def test_fuzz_decoders_quick(target: str) -> None:
    _target(target, QUICK[target])()


@pytest.mark.chaos
@pytest.mark.parametrize("target", ["body", "framed_header", "message", "tensors"])
def test_fuzz_decoders_long(target: str) -> None:
    _target(target, LONG)()


def seed_bodies() -> dict[str, bytes]:
    """Valid frame bodies of each kind the node reads: where the coverage-guided fuzzer starts mutating."""
    import torch

    from market.chain.devnet import throwaway_signer
    from market.protocol.hashing import new_request_id

    specs_, payload = codec.encode_tensors({"x": torch.rand(2, 4), "mask": torch.ones(2, dtype=torch.bool)})
    # THROWAWAY TEST KEY (anvil's account 5).
    voucher = throwaway_signer(5).voucher_signer(31337, "0x" + "e5" * 20).sign(1, 10**12)
    infer = messages.InferRequest(
        request_id=new_request_id(), expert_id=1, model_hash=b"\x01" * 32, tensors=tuple(specs_),
        voucher=voucher, deadline_ms=1000, payload=payload,
    )  # fmt: skip
    quote = messages.QuoteRequest(client=voucher.voucher.client, model_hash=b"\x02" * 32)
    error = messages.ErrorMessage(code=messages.ErrorCode.VOUCHER_TOO_LOW, message="sign more", cumulative=10)
    return {
        "infer": encode_body(infer.to_header(), payload),
        "quote": encode_body(quote.to_header(), b""),
        "model": encode_body(messages.ModelRequest(b"\x03" * 32).to_header(), b""),
        "evidence": encode_body(messages.EvidenceRequest(b"\x04" * 32).to_header(), b""),
        "error": encode_body(error.to_header(), b""),
    }


@pytest.mark.chaos
@pytest.mark.timeout(3600)
def test_atheris_decoders_long(tmp_path, record_row) -> None:
    """libFuzzer-driven (atheris) fuzzing of the decoders from valid seeds: MOE_ATHERIS_RUNS inputs (1,000,000)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    from reliability_rows import Row

    pytest.importorskip("atheris", reason="atheris is installed with the dev extras on Linux x86_64 only")
    runs = int(os.environ.get("MOE_ATHERIS_RUNS", "1000000"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, body in seed_bodies().items():
        (corpus / name).write_bytes(body)
    harness = Path(__file__).with_name("atheris_decoders.py")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(harness), f"-runs={runs}", "-max_len=4096", "-print_final_stats=1", str(corpus)],
        capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert f"Done {runs} runs" in log, log[-2000:]
    coverage = [line for line in log.splitlines() if "DONE" in line and "cov:" in line]
    record_row(Row("decoder fuzz (atheris)", attempted=runs, succeeded=runs, seconds=time.monotonic() - started,
                   notes={"final": coverage[-1].strip() if coverage else ""}))  # fmt: skip
