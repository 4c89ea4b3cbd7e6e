"""The HTTP gateway over a fake market: every endpoint, every bad request answered 4xx with a JSON message,
the limits (body size, concurrent calls, timeout), the error mapping, /metrics and the OpenAPI document."""

from __future__ import annotations

import base64
import re
import struct
import threading

import pytest
import torch
from gateway_fakes import MODEL, OTHER_MODEL, PRICE, UNKNOWN_MODEL, WAIT_S, FakeBackend, Http
from prometheus_client.parser import text_string_to_metric_families

from market.errors import (
    ChainError,
    InsufficientDepositError,
    MalformedMessageError,
    MarketConfigError,
    MarketInputError,
    NoExpertError,
    PeerTimeoutError,
    VerificationError,
)
from node.gateway.app import OPENAPI_FILE, Gateway, GatewayConfig
from node.gateway.bridge import TensorInput, cast_to_schema, decode_inputs

X = [[0.0, 0.5, 1.0, 2.0]]


def _error(body: object) -> tuple[str, str]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"} and error["message"], body
    return error["code"], error["message"]


# -- POST /v1/infer: the happy paths ----------------------------------------------------------------------


def test_infer_with_nested_lists(http: Http, fake: FakeBackend) -> None:
    status, headers, body = http.post(
        "/v1/infer", {"model": MODEL, "inputs": {"x": X}, "redundancy": 3, "max_price": "1000000000", "deadline_ms": 5000}
    )
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["outputs"] == {"y": [[0.0, 1.0, 2.0, 4.0]]}
    assert body["output_specs"] == [{"name": "y", "dtype": "float32", "shape": [1, 4]}]
    assert body["agreeing"] == [1, 2, 3]
    assert len(body["receipts"]) == 3 and all(r["signature"].startswith("0x") for r in body["receipts"])
    assert body["paid"] == str(3 * PRICE)
    assert fake.calls == [{"model": MODEL, "redundancy": 3, "max_price": 10**9, "deadline_s": 5.0}]


def test_infer_integer_lists_are_cast_to_the_models_dtype(http: Http) -> None:
    status, _, body = http.post("/v1/infer", {"model": MODEL, "inputs": {"x": [[0, 1, 2, 3]]}})
    assert status == 200, body
    assert body["outputs"]["y"] == [[0.0, 2.0, 4.0, 6.0]]


def test_infer_with_base64_tensor(http: Http, fake: FakeBackend) -> None:
    data = base64.b64encode(struct.pack("<8f", *range(8))).decode()
    status, _, body = http.post(
        "/v1/infer", {"model": MODEL, "inputs": {"x": {"dtype": "float32", "shape": [2, 4], "data_b64": data}}}
    )
    assert status == 200, body
    assert body["outputs"]["y"] == [[0.0, 2.0, 4.0, 6.0], [8.0, 10.0, 12.0, 14.0]]
    assert fake.calls[-1]["redundancy"] is None and fake.calls[-1]["max_price"] is None


# -- POST /v1/infer: bad requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "words"),
    [
        (b"{not json", "bad_json", "not valid JSON"),
        (b"", "bad_json", "not valid JSON"),
        (b'{"model": NaN}', "bad_json", "NaN"),
        (b"[" * 30_000 + b"]" * 30_000, "bad_json", "JSON"),
        (b"[1, 2]", "bad_request", "JSON object"),
        (b'{"inputs": {"x": [[1]]}}', "bad_request", "required"),
        (b'{"model": "0x11", "inputs": {"x": [[1]]}}', "bad_input", "64 hex digits"),
        (b'{"model": "' + MODEL.encode() + b'", "inputs": {"x": [[1, 2, 3, 4]]}, "redundency": 2}', "bad_request", "redundency"),
    ],
    ids=["broken", "empty", "nan", "deep", "array", "missing model", "short model", "unknown field"],
)
def test_infer_malformed_body(http: Http, raw: bytes, code: str, words: str) -> None:
    status, _, body = http.post("/v1/infer", raw=raw)
    assert status == 400
    got_code, message = _error(body)
    assert got_code == code and words in message, message


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"redundancy": "3"}, "bad_request", "redundancy"),
        ({"redundancy": True}, "bad_request", "redundancy"),
        ({"redundancy": 0}, "bad_request", "redundancy"),
        ({"redundancy": 17}, "bad_request", "redundancy"),
        ({"max_price": -1}, "bad_request", "max_price"),
        ({"max_price": "1e9"}, "bad_request", "max_price"),
        ({"max_price": "0010"}, "bad_request", "max_price"),
        ({"max_price": 1.5}, "bad_request", "max_price"),
        ({"max_price": str(2**256)}, "bad_request", "max_price"),
        ({"deadline_ms": 0}, "bad_request", "deadline_ms"),
        ({"deadline_ms": 10**9}, "bad_request", "deadline_ms"),
        ({"deadline_ms": 1.5}, "bad_request", "deadline_ms"),
        ({"model": 17}, "bad_input", "model"),
        ({"model": "0x" + "zz" * 32}, "bad_input", "model"),
        ({"inputs": [[1, 2, 3, 4]]}, "bad_input", "inputs"),
        ({"inputs": {}}, "bad_input", "inputs"),
        ({"inputs": {"x": "1,2,3,4"}}, "bad_input", "inputs.x"),
        ({"inputs": {"x": [[1, 2], [3]]}}, "bad_input", "ragged"),
        ({"inputs": {"x": [[1, "2", 3, 4]]}}, "bad_input", "not a number"),
        ({"inputs": {"x": [[1, None, 3, 4]]}}, "bad_input", "not a number"),
        ({"inputs": {"x": [[2**70, 1, 1, 1]]}}, "bad_input", "64 bits"),
        ({"inputs": {"bad name!": [[1, 2, 3, 4]]}}, "bad_input", "name"),
        ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4]}}}, "bad_input", "data_b64"),
        ({"inputs": {"x": {"dtype": "float99", "shape": [1], "data_b64": "AAAAAA=="}}}, "bad_input", "dtype"),
        ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "data_b64": "AAAAAA=="}}}, "bad_input", "payload"),
        ({"inputs": {"x": {"dtype": "float32", "shape": [1], "data_b64": "not base64!"}}}, "bad_input", "base64"),
        ({"inputs": {"x": {"dtype": "float32", "shape": "1", "data_b64": ""}}}, "bad_input", "shape"),
        ({"inputs": {"x": {"dtype": "float32", "shape": [-1], "data_b64": ""}}}, "bad_input", "x"),
    ],
)
def test_infer_wrong_field_types(http: Http, fake: FakeBackend, fields: dict, code: str, words: str) -> None:
    request = {"model": MODEL, "inputs": {"x": X}} | fields
    status, _, body = http.post("/v1/infer", request)
    assert status == 400, body
    got_code, message = _error(body)
    assert got_code == code and words in message, message
    assert fake.calls == []


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"x": [[1.0, 2.0, 3.0]]}, "(1, 3)"),
        ({"x": [1.0, 2.0, 3.0, 4.0]}, "(4,)"),
        ({"x": X, "z": X}, "one input x"),
        ({"x": [[0.5, 1, 2, 3]], "y": X}, "one input x"),
    ],
)
def test_infer_wrong_shape_is_a_bad_input(http: Http, inputs: dict, words: str) -> None:
    status, _, body = http.post("/v1/infer", {"model": MODEL, "inputs": inputs})
    assert status == 400
    code, message = _error(body)
    assert code == "bad_input" and words in message, message


def test_infer_fractions_are_not_truncated_into_integer_inputs() -> None:
    inputs = decode_inputs({"ids": [[1.5, 2.0]]})

    class Entry:
        name, dtype = "ids", "int64"

    with pytest.raises(MarketInputError, match="fractional"):
        cast_to_schema(inputs, [Entry()])
    assert cast_to_schema(decode_inputs({"ids": [[1, 2]]}), [Entry()])["ids"].dtype == torch.int64
    exact = TensorInput(torch.ones(1, 2, dtype=torch.float64), dtype_given=True)
    assert cast_to_schema({"ids": exact}, [Entry()])["ids"].dtype == torch.float64  # given dtypes stay


def test_infer_unknown_model_is_404(http: Http) -> None:
    status, _, body = http.post("/v1/infer", {"model": UNKNOWN_MODEL, "inputs": {"x": X}})
    assert status == 404
    code, message = _error(body)
    assert code == "unknown_model" and UNKNOWN_MODEL in message


def test_infer_no_fitting_expert_is_422_with_the_reason(http: Http) -> None:
    status, _, body = http.post("/v1/infer", {"model": OTHER_MODEL, "inputs": {"x": X}, "max_price": "1"})
    assert status == 422
    code, message = _error(body)
    assert code == "no_expert" and "max_price" in message


def test_oversize_body_is_413(http: Http, fake: FakeBackend) -> None:
    big = {"model": MODEL, "inputs": {"x": [[0.123456789] * 4] * 5000}}  # ~ 270 KB > the 64 KiB test limit
    status, _, body = http.post("/v1/infer", big)
    assert status == 413
    code, message = _error(body)
    assert code == "payload_too_large" and str(64 * 1024) in message
    assert fake.calls == []


def test_oversize_body_without_content_length_is_413(http: Http) -> None:
    def chunks():
        yield b'{"model": "' + MODEL.encode() + b'", "inputs": {"x": ['
        for _ in range(2000):
            yield b"[0.1234567, 0.1234567, 0.1234567, 0.1234567],"
        yield b"[0]]}}"

    status, _, body = http.post("/v1/infer", raw=chunks(), headers={"Content-Type": "application/json"})
    assert status == 413
    assert _error(body)[0] == "payload_too_large"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (MarketInputError("x must be float32"), 400, "bad_input"),
        (MalformedMessageError("bad frame"), 400, "malformed"),
        (NoExpertError("all experts are slashed"), 422, "no_expert"),
        (InsufficientDepositError("deposit at least 5 wei more"), 402, "insufficient_deposit"),
        (VerificationError("no majority among 3 answers"), 502, "verification_failed"),
        (PeerTimeoutError("expert 3 did not answer"), 504, "peer_timeout"),
        (ChainError("the RPC is down"), 503, "unavailable"),
        (RuntimeError("a bug"), 500, "internal"),
    ],
)
def test_market_errors_map_to_status_codes(http: Http, fake: FakeBackend, exc: Exception, status: int, code: str) -> None:
    fake.fail_with = exc
    got, _, body = http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}})
    assert got == status
    got_code, message = _error(body)
    assert got_code == code
    if status != 500:
        assert str(exc) in message
    else:
        assert "a bug" not in message  # internals stay in the log


def test_too_many_concurrent_calls_is_429(http: Http, fake: FakeBackend) -> None:
    fake.block = threading.Event()
    answers: list[int] = []

    def call() -> None:
        answers.append(http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}})[0])

    threads = [threading.Thread(target=call) for _ in range(2)]  # the test gateway's limit
    for t in threads:
        t.start()
    for _ in threads:
        assert fake.entered.acquire(timeout=WAIT_S)
    status, headers, body = http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}})
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert _error(body)[0] == "too_many_requests"
    assert http.get("/v1/health")[2]["in_flight"] == 2
    fake.block.set()
    for t in threads:
        t.join(WAIT_S)
    assert answers == [200, 200]
    assert http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}})[0] == 200


@pytest.mark.parametrize("gateway_config", [GatewayConfig(port=0, request_timeout_s=0.2, max_concurrent_infer=1)])
def test_call_past_the_gateway_timeout_is_504_and_holds_its_slot(http: Http, fake: FakeBackend) -> None:
    fake.block = threading.Event()
    status, _, body = http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}})
    assert status == 504
    assert _error(body)[0] == "timeout"
    # The abandoned call still runs in its worker, so it still counts against the limit of one.
    assert http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}})[0] == 429
    fake.block.set()


# -- reads ------------------------------------------------------------------------------------------------


def test_experts(http: Http) -> None:
    status, _, body = http.get("/v1/experts")
    assert status == 200
    assert body["count"] == 4 and [e["expert_id"] for e in body["experts"]] == [1, 2, 3, 4]
    first = body["experts"][0]
    for key in ("operator", "model_hash", "price", "stake", "status", "disputes_lost", "slashed", "volume",
                "reputation", "seen"):
        assert key in first
    status, _, body = http.get(f"/v1/experts?model={OTHER_MODEL}")
    assert status == 200 and [e["expert_id"] for e in body["experts"]] == [4]
    status, _, body = http.get(f"/v1/experts?model={UNKNOWN_MODEL}")
    assert status == 200 and body["experts"] == []


def test_experts_bad_model_is_400(http: Http) -> None:
    status, _, body = http.get("/v1/experts?model=digits")
    assert status == 400
    assert _error(body)[0] == "bad_request"


def test_disputes(http: Http) -> None:
    status, _, body = http.get("/v1/disputes")
    assert status == 200 and [d["dispute_id"] for d in body["disputes"]] == [2, 1]
    status, _, body = http.get("/v1/disputes?limit=1")
    assert status == 200 and body["count"] == 1
    for bad in ("0", "101", "x", "-1"):
        status, _, body = http.get(f"/v1/disputes?limit={bad}")
        assert status == 400 and _error(body)[0] == "bad_request"


def test_balances(http: Http) -> None:
    status, _, body = http.get("/v1/balances")
    assert status == 200
    assert body["escrow"] == str(10**17) and body["client"].startswith("0x")


def test_health(http: Http, fake: FakeBackend) -> None:
    status, _, body = http.get("/v1/health")
    assert status == 200
    assert body["status"] == "ok" and body["chain_id"] == 31337 and body["in_flight"] == 0
    fake.stats_fail_with = ChainError("the RPC is down")
    status, _, body = http.get("/v1/health")
    assert status == 503
    assert body["status"] == "degraded" and body["error"]["code"] == "unavailable"


def test_unknown_path_and_method_are_json_errors(http: Http) -> None:
    status, _, body = http.get("/v1/nothing")
    assert status == 404 and _error(body)[0] == "not_found"
    status, headers, body = http.get("/v1/infer")
    assert status == 405 and _error(body)[0] == "method_not_allowed"
    assert "POST" in headers["Allow"]
    status, _, body = http.post("/v1/experts", {})
    assert status == 405


def test_dashboard_and_its_assets(http: Http) -> None:
    status, headers, page = http.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "Content-Security-Policy" in headers and "default-src 'none'" in headers["Content-Security-Policy"]
    assert '<script src="/static/app.js"></script>' in page
    assert 'id="experts"' in page
    # Nothing is loaded from another origin: the page works without any network.
    assert not re.search(r"""(src|href)=["']https?://""", page)
    for asset in ("/static/app.js", "/static/style.css"):
        status, _, text = http.get(asset)
        assert status == 200 and "http://" not in text and "https://" not in text
    assert http.get("/static/../app.py")[0] in (403, 404)


# -- /metrics ---------------------------------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_parse_and_count(http: Http, fake: FakeBackend) -> None:
    assert http.post("/v1/infer", {"model": MODEL, "inputs": {"x": X}, "redundancy": 2})[0] == 200
    assert http.post("/v1/infer", {"model": UNKNOWN_MODEL, "inputs": {"x": X}})[0] == 404
    assert http.post("/v1/infer", raw=b"{")[0] == 400
    http.get("/v1/experts")
    http.get("/v1/disputes")
    status, headers, text = http.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = _samples(text)
    assert samples[("moe_gateway_infer_calls_total", (("outcome", "ok"),))] == 1
    assert samples[("moe_gateway_infer_calls_total", (("outcome", "error"),))] == 2
    assert samples[("moe_gateway_infer_failures_total", (("code", "unknown_model"),))] == 1
    assert samples[("moe_gateway_infer_failures_total", (("code", "bad_json"),))] == 1
    assert samples[("moe_gateway_infer_latency_seconds_count", ())] == 1
    assert samples[("moe_gateway_paid_wei_total", ())] == 2 * PRICE
    assert samples[("moe_gateway_experts", (("status", "active"),))] == 3
    assert samples[("moe_gateway_experts", (("status", "unbonding"),))] == 1
    assert samples[("moe_gateway_disputes", (("status", "open"),))] == 1
    assert samples[("moe_gateway_http_requests_total", (("route", "/v1/infer"), ("status", "200")))] == 1
    assert samples[("moe_gateway_infer_in_flight", ())] == 0


# -- the OpenAPI document ---------------------------------------------------------------------------------


def _documented_paths(text: str) -> dict[str, set[str]]:
    """path -> methods, read from the YAML text itself (works without a YAML parser)."""
    paths: dict[str, set[str]] = {}
    section = False
    current = None
    for line in text.splitlines():
        if line.startswith("paths:"):
            section = True
            continue
        if section and line and not line.startswith(" "):
            break
        if not section:
            continue
        if m := re.fullmatch(r"  (/\S*):", line):
            current = m.group(1)
            paths[current] = set()
        elif (m := re.fullmatch(r"    (get|post|put|delete|patch):", line)) and current:
            paths[current].add(m.group(1).upper())
    return paths


def test_every_route_is_documented(gateway: Gateway, http: Http) -> None:
    status, headers, text = http.get("/openapi.yaml")
    assert status == 200 and headers["Content-Type"].startswith("application/yaml")
    assert text == OPENAPI_FILE.read_text()
    assert text.startswith("openapi: 3.1.0")
    documented = _documented_paths(text)
    from node.gateway.app import create_app

    app = create_app(FakeBackend())
    served: dict[str, set[str]] = {}
    for route in app.router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/static") or route.method == "HEAD":
            continue
        served.setdefault(path, set()).add(route.method)
    assert served == documented


def test_openapi_document_is_valid() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (it comes with openapi-spec-validator)")
    validator = pytest.importorskip(
        "openapi_spec_validator", reason="openapi-spec-validator is not installed: pip install openapi-spec-validator"
    )
    document = yaml.safe_load(OPENAPI_FILE.read_text())
    validator.validate(document)
    assert document["openapi"] == "3.1.0"


def test_a_busy_port_is_a_clear_error(gateway: Gateway, fake: FakeBackend) -> None:
    with pytest.raises(MarketConfigError, match="cannot listen"):
        Gateway(fake, GatewayConfig(port=gateway.port)).start()
