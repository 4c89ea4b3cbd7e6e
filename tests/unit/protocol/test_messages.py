"""Messages: body encoding, a round trip for every message, every malformed case, random input."""

from __future__ import annotations

import contextlib
import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.errors import ExpertBusyError, MalformedMessageError, MarketError, RemoteError
from market.protocol.ids import ALL_PROTOCOLS, DEFAULT_FRAME_CAPS, REQUEST_TYPES
from market.protocol.messages import (
    MESSAGE_TYPES,
    ErrorCode,
    ErrorMessage,
    EvidenceRequest,
    EvidenceResponse,
    ExpertQuote,
    InferRequest,
    InferResult,
    ModelRequest,
    ModelResponse,
    QuoteRequest,
    QuoteResponse,
    decode_body,
    decode_request,
    decode_response,
    encode_body,
    error_header,
)
from market.protocol.specs import TensorSchema, TensorSpec
from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher

H32 = bytes(range(32))
ADDR = "0x" + "aB" * 20
SIG = bytes(range(65))
SPECS = (TensorSpec("x", "float32", (2, 3)), TensorSpec("mask", "bool", (2,)))
PAYLOAD = bytes(24) + b"\x01\x00"


def voucher(amount: int = 10**24) -> SignedVoucher:
    return SignedVoucher(Voucher(ADDR, 7, amount), SIG)


def infer_request(**kw: Any) -> InferRequest:
    fields: dict[str, Any] = dict(
        request_id=H32,
        expert_id=7,
        model_hash=H32[::-1],
        tensors=SPECS,
        voucher=voucher(),
        deadline_ms=1500,
        payload=PAYLOAD,
    )
    fields.update(kw)
    return InferRequest(**fields)


EXAMPLES = [
    QuoteRequest(),
    QuoteRequest(client=ADDR, model_hash=H32),
    QuoteResponse(
        experts=(
            ExpertQuote(
                expert_id=3,
                model_hash=H32,
                price=2**200,
                inputs=(TensorSchema("x", "float32", (-1, 64)),),
                outputs=(TensorSchema("y", "float32", (-1, 10)),),
                tolerance=MappingProxyType({"atol": 1e-5, "rtol": 1e-4}),
                max_batch=32,
            ),
        ),
        queue=4,
        cumulative=MappingProxyType({3: 10**30, 0: 0}),
    ),
    infer_request(),
    InferResult(
        request_id=H32,
        tensors=SPECS,
        receipt=SignedReceipt(Receipt(7, H32, H32, H32[::-1], H32, 12345), SIG),
        compute_ms=1.25,
        payload=PAYLOAD,
    ),
    ErrorMessage(ErrorCode.VOUCHER_TOO_LOW, "send at least 15", request_id=H32, cumulative=15),
    ErrorMessage(ErrorCode.NOT_FOUND),
    ModelRequest(model_hash=H32),
    ModelResponse(manifest=MappingProxyType({"name": "digits", "layers": [1, 2]}), payload=b"\x00weights"),
    EvidenceRequest(hash=H32),
    EvidenceResponse(hash=H32, tensors=SPECS, payload=PAYLOAD),
]

REQUESTS = (QuoteRequest, InferRequest, ModelRequest, EvidenceRequest)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any) -> None:
    body = message.to_body()
    header, payload = decode_body(body)
    assert type(message).from_header(header, payload) == message
    assert type(message).from_body(body) == message
    decode = decode_request if isinstance(message, REQUESTS) else decode_response
    assert decode(header, payload) == message
    # amounts travel as decimal strings, hex with 0x
    text = json.dumps(header)
    assert "0x" in text or header["type"] in ("error", "model") or not message.to_header().get("model_hash")


def test_amounts_are_decimal_strings_and_hashes_hex() -> None:
    header = infer_request().to_header()
    assert header["voucher"]["cumulative_amount"] == str(10**24)
    assert header["request_id"] == "0x" + H32.hex()
    assert header["tensors"] == [
        {"name": "x", "dtype": "float32", "shape": [2, 3]},
        {"name": "mask", "dtype": "bool", "shape": [2]},
    ]


def test_protocol_ids_and_caps() -> None:
    assert [p.split("/")[2] for p in ALL_PROTOCOLS] == ["quote", "infer", "model", "evidence"]
    assert all(p.endswith("/1.0.0") for p in ALL_PROTOCOLS)
    assert DEFAULT_FRAME_CAPS[ALL_PROTOCOLS[0]] == 64 * 1024
    assert set(REQUEST_TYPES.values()) <= MESSAGE_TYPES


# ---- body ----------------------------------------------------------------------------------------


def raw_body(header_bytes: bytes, payload: bytes = b"") -> bytes:
    return len(header_bytes).to_bytes(4, "big") + header_bytes + payload


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "shorter"),
        (b"\x00\x00", "shorter"),
        (b"\x00\x00\x00\x09{}", "more than"),
        (raw_body(b"\xff\xfe"), "UTF-8 JSON"),
        (raw_body(b"{not json"), "UTF-8 JSON"),
        (raw_body(b"[1, 2]"), "object"),
        (raw_body(b'"quote"'), "object"),
        (raw_body(b"{}"), "type"),
        (raw_body(b'{"type": 5}'), "type"),
        (raw_body(b'{"type": "launch_missiles"}'), "unknown message type"),
        (raw_body(b'{"type": "quote", "type": "error"}'), "repeats"),
        (raw_body(b'{"type": "quote", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "arrays and objects"),
        (raw_body(b'{"type": "quote", "x": ' + b"[" * 40 + b"]" * 40 + b"}"), "nests deeper"),
        (raw_body(b'{"type": "quote", "x": "' + b"[" * 100 + b'"}'), None),
        (raw_body(b'{"type": "quote", "x": ' + b"9" * 10_000 + b"}"), "UTF-8 JSON"),
        (raw_body(b'{"type": "quote", "x": NaN}'), None),
    ],
)
def test_malformed_bodies(body: bytes, match: str | None) -> None:
    if match is None:
        # NaN is accepted by Python's json but is not in any message we parse: must not crash either way.
        header, _ = decode_body(body)
        assert header["type"] == "quote"
        return
    with pytest.raises(MalformedMessageError, match=match):
        decode_body(body)


def test_payload_follows_the_header() -> None:
    header, payload = decode_body(encode_body({"type": "model", "manifest": {}}, b"\x00\x01"))
    assert header == {"type": "model", "manifest": {}} and payload == b"\x00\x01"


@pytest.mark.parametrize(
    "header",
    [
        {"type": "nope"},
        {"no": "type"},
        {"type": "quote", "x": float("nan")},
        {"type": "quote", "x": object()},
        ["type"],
    ],
)
def test_encode_refuses_bad_headers(header: Any) -> None:
    with pytest.raises(MalformedMessageError):
        encode_body(header)


# ---- fields --------------------------------------------------------------------------------------


def header_of(message: Any) -> dict[str, Any]:
    return json.loads(json.dumps(message.to_header()))


def mutate(header: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    keys = path.split(".")
    target = header
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return header


BAD_INFER = [
    ("request_id", KeyError, "missing field 'request_id'"),
    ("request_id", "0x" + "ab" * 31, "64 hex digits"),
    ("request_id", "ab" * 32 + "00", "64 hex digits"),
    ("request_id", "0x" + "zz" * 32, "64 hex digits"),
    ("request_id", "0x" + "ab " * 21 + "a", "64 hex digits"),
    ("request_id", 12, "64 hex digits"),
    ("expert_id", True, "integer"),
    ("expert_id", -1, "within"),
    ("expert_id", 1.0, "integer"),
    ("expert_id", "7", "integer"),
    ("expert_id", 2**64, "within"),
    ("deadline_ms", None, "integer"),
    ("tensors", "x", "list"),
    ("tensors", [{"name": "x", "dtype": "float32"}], "missing shape"),
    ("tensors", [{"name": "x", "dtype": "complex64", "shape": [1]}], "dtype"),
    ("tensors", [{"name": "x", "dtype": "float32", "shape": [-2]}], "negative"),
    ("tensors", [{"name": "x", "dtype": "float32", "shape": [True]}], "not an integer"),
    ("tensors", [{"name": "x", "dtype": "float32", "shape": [1] * 17}], "dimensions"),
    ("tensors", [{"name": "bad name!", "dtype": "float32", "shape": [1]}], "tensor name"),
    ("tensors", [{"name": "x", "dtype": "uint8", "shape": [1]}] * 2, "twice"),
    ("tensors", [{"name": "x", "dtype": "uint8", "shape": [3]}], "payload"),
    ("voucher", "sig", "object"),
    ("voucher.client", "0x1234", "address"),
    ("voucher.cumulative_amount", 10, "decimal string"),
    ("voucher.cumulative_amount", "-1", "decimal string"),
    ("voucher.cumulative_amount", "01", "decimal string"),
    ("voucher.cumulative_amount", "1e18", "decimal string"),
    ("voucher.cumulative_amount", "1.5", "decimal string"),
    ("voucher.cumulative_amount", str(2**256), "2\\*\\*256"),
    ("voucher.signature", "0x" + "00" * 64, "130 hex digits"),
    ("voucher.expert_id", KeyError, "voucher: missing field 'expert_id'"),
]


@pytest.mark.parametrize(("path", "value", "match"), BAD_INFER)
def test_malformed_infer_fields(path: str, value: Any, match: str) -> None:
    header = mutate(header_of(infer_request()), path, value)
    with pytest.raises(MalformedMessageError, match=match):
        InferRequest.from_header(header, PAYLOAD)


def test_payload_length_must_match_the_tensors() -> None:
    header = header_of(infer_request())
    for payload in (PAYLOAD[:-1], PAYLOAD + b"\x00", b""):
        with pytest.raises(MalformedMessageError, match="payload"):
            InferRequest.from_header(header, payload)


@pytest.mark.parametrize(
    "message", [QuoteRequest(), ModelRequest(H32), EvidenceRequest(H32), ErrorMessage(ErrorCode.BUSY)]
)
def test_messages_without_payload_refuse_one(message: Any) -> None:
    with pytest.raises(MalformedMessageError, match="no payload"):
        type(message).from_header(header_of(message), b"smuggled")


@pytest.mark.parametrize(
    ("message", "path", "value", "match"),
    [
        (QuoteRequest(), "client", "alice", "address"),
        (QuoteRequest(), "model_hash", "0x12", "hex"),
        (EXAMPLES[2], "experts", {}, "list"),
        (EXAMPLES[2], "cumulative", [], "object"),
        (EXAMPLES[2], "cumulative", {"03": "1"}, "expert id"),
        (EXAMPLES[2], "cumulative", {"x": "1"}, "expert id"),
        (EXAMPLES[2], "cumulative", {"3": 1}, "decimal"),
        (EXAMPLES[2], "queue", -1, "within"),
        (EXAMPLES[4], "compute_ms", float("inf"), "finite"),
        (EXAMPLES[4], "compute_ms", -1, "non-negative"),
        (EXAMPLES[4], "receipt.price", "abc", "decimal"),
        (EXAMPLES[4], "receipt.output_hash", KeyError, "receipt: missing field"),
        (EXAMPLES[5], "code", "TEAPOT", "unknown code"),
        (EXAMPLES[5], "message", "x" * 5000, "at most"),
        (EXAMPLES[5], "cumulative", 15, "decimal"),
        (EXAMPLES[8], "manifest", [], "object"),
        (EXAMPLES[9], "hash", None, "hex"),
    ],
)
def test_other_malformed_fields(message: Any, path: str, value: Any, match: str) -> None:
    header = mutate(header_of(message), path, value)
    with pytest.raises(MalformedMessageError, match=match):
        type(message).from_header(header, message.body_payload)


def test_quote_expert_fields_are_checked() -> None:
    header = header_of(EXAMPLES[2])
    header["experts"][0]["inputs"][0]["shape"] = [-1, -5]
    with pytest.raises(MalformedMessageError, match="negative"):
        QuoteResponse.from_header(header)
    header = header_of(EXAMPLES[2])
    header["experts"][0]["max_batch"] = 0
    with pytest.raises(MalformedMessageError, match="max_batch"):
        QuoteResponse.from_header(header)
    header = header_of(EXAMPLES[2])
    del header["experts"][0]["price"]
    with pytest.raises(MalformedMessageError, match="quote expert: missing field 'price'"):
        QuoteResponse.from_header(header)


def test_wrong_type_for_the_class_and_direction() -> None:
    with pytest.raises(MalformedMessageError, match="expected"):
        QuoteRequest.from_header({"type": "infer"})
    with pytest.raises(MalformedMessageError, match="not a request"):
        decode_request({"type": "result"})
    with pytest.raises(MalformedMessageError, match="not an answer"):
        decode_response({"type": "infer"})


def test_unknown_extra_fields_are_ignored() -> None:
    header = header_of(QuoteRequest(client=ADDR))
    header["future_field"] = {"anything": 1}
    assert QuoteRequest.from_header(header) == QuoteRequest(client=ADDR)


def test_error_codes_and_exceptions() -> None:
    assert [c.value for c in ErrorCode] == [
        "MALFORMED",
        "FRAME_TOO_LARGE",
        "UNKNOWN_EXPERT",
        "BAD_INPUT",
        "BAD_VOUCHER",
        "VOUCHER_TOO_LOW",
        "INSUFFICIENT_DEPOSIT",
        "BUSY",
        "DEADLINE",
        "NOT_FOUND",
        "INTERNAL",
    ]
    busy = ErrorMessage(ErrorCode.BUSY, "full").to_exception()
    assert isinstance(busy, ExpertBusyError) and busy.code == "BUSY"
    low = ErrorMessage(ErrorCode.VOUCHER_TOO_LOW, "resync", cumulative=99).to_exception()
    assert type(low) is RemoteError and low.error.cumulative == 99  # type: ignore[attr-defined]


def test_error_header_echoes_only_valid_request_ids() -> None:
    assert error_header(ErrorCode.MALFORMED, "x", "0x" + "11" * 32)["request_id"] == "0x" + "11" * 32
    assert "request_id" not in error_header(ErrorCode.MALFORMED, "x", "garbage")
    assert "request_id" not in error_header(ErrorCode.MALFORMED, "x", 5)


# ---- random input --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_market_errors(data: bytes) -> None:
    try:
        header, payload = decode_body(data)
    except MarketError:
        return
    for decode in (decode_request, decode_response):
        with contextlib.suppress(MarketError):
            decode(header, payload)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(
        st.sampled_from(
            [
                "client",
                "model_hash",
                "experts",
                "queue",
                "cumulative",
                "request_id",
                "expert_id",
                "tensors",
                "voucher",
                "deadline_ms",
                "receipt",
                "compute_ms",
                "code",
                "message",
                "manifest",
                "hash",
            ]
        ),
        json_values,
        max_size=8,
    ),
    st.binary(max_size=40),
)
def test_random_headers_only_raise_market_errors(kind: str, fields: dict[str, Any], payload: bytes) -> None:
    header = {**fields, "type": kind}
    body = encode_body(header, payload)
    decoded, rest = decode_body(body)
    for decode in (decode_request, decode_response):
        with contextlib.suppress(MarketError):
            decode(decoded, rest)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(EXAMPLES), st.data())
def test_mutated_valid_messages_only_raise_market_errors(message: Any, data: st.DataObject) -> None:
    header = header_of(message)
    key = data.draw(st.sampled_from(sorted(header)))
    header[key] = data.draw(json_values)
    with contextlib.suppress(MarketError):
        type(message).from_header(header, message.body_payload)
