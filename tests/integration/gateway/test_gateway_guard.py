"""Who may use the gateway (node.gateway.guard), over real HTTP: the Host allow-list against DNS rebinding, same
origin for writes, JSON-only spending (no cross-site form post spends the deposit) and the optional bearer
token. Every refused request must leave the backend untouched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_fakes import MODEL, FakeBackend, Http

from market.errors import MarketConfigError
from node.gateway.app import Gateway, GatewayConfig
from node.gateway.guard import AccessPolicy, host_name, is_loopback

X = [[0.0, 0.5, 1.0, 2.0]]
BODY = {"model": MODEL, "inputs": {"x": X}}
TOKEN = "throwaway-test-token-0123456789"  # a THROWAWAY token for these tests only


def _error(body: object) -> tuple[str, str]:
    assert isinstance(body, dict) and "error" in body, body
    return body["error"]["code"], body["error"]["message"]


def _refused(answer: tuple, status: int, code: str, words: str) -> None:
    got_status, _, body = answer
    got_code, message = _error(body)
    assert (got_status, got_code) == (status, code), (got_status, body)
    assert words in message, message


# -- the Host allow-list --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.example", "10.0.0.5"])
def test_a_foreign_host_header_is_refused_on_reads_and_writes(http: Http, fake: FakeBackend, host: str) -> None:
    # What a DNS-rebinding page's requests look like: they reach 127.0.0.1 under the attacker's host name.
    _refused(http.request("GET", "/v1/balances", headers={"Host": host}), 403, "host_not_allowed", "DNS rebinding")
    _refused(http.post("/v1/infer", BODY, headers={"Host": host}), 403, "host_not_allowed", "--allowed-host")
    assert fake.calls == []


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:8080", "localhost."])
def test_loopback_host_names_are_answered(http: Http, fake: FakeBackend, host: str) -> None:
    assert http.request("GET", "/v1/balances", headers={"Host": host})[0] == 200
    assert http.post("/v1/infer", BODY, headers={"Host": host})[0] == 200
    assert len(fake.calls) == 1


@pytest.mark.parametrize("gateway_config", [GatewayConfig(port=0, allowed_hosts=("moe.example.org",))])
def test_an_allowed_host_is_answered_besides_loopback(http: Http) -> None:
    assert http.request("GET", "/v1/health", headers={"Host": "moe.example.org:443"})[0] == 200
    assert http.request("GET", "/v1/health", headers={"Host": "localhost"})[0] == 200
    _refused(http.request("GET", "/v1/health", headers={"Host": "other.example.org"}), 403, "host_not_allowed",
             "moe.example.org")


# -- same origin for writes, JSON only -------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "file://"])
def test_a_cross_origin_post_is_refused(http: Http, fake: FakeBackend, origin: str) -> None:
    _refused(http.post("/v1/infer", BODY, headers={"Origin": origin}), 403, "cross_origin", "may not write")
    assert fake.calls == []


def test_a_same_origin_post_is_answered(http: Http, gateway: Gateway, fake: FakeBackend) -> None:
    status, _, body = http.post("/v1/infer", BODY, headers={"Origin": gateway.url})
    assert status == 200, body
    assert len(fake.calls) == 1


def test_a_cross_origin_read_is_answered_but_not_shared(http: Http) -> None:
    # A GET cannot spend; the browser keeps its answer from the other page since no CORS header allows it.
    status, headers, _ = http.request("GET", "/v1/health", headers={"Origin": "http://evil.example"})
    assert status == 200
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_spending_needs_a_json_content_type(http: Http, fake: FakeBackend, content_type: str | None) -> None:
    # The "simple" content types a page may post cross-site without a preflight, and none at all.
    import json
    import urllib.request

    req = urllib.request.Request(http.base + "/v1/infer", data=json.dumps(BODY).encode(), method="POST")
    if content_type is not None:
        req.add_header("Content-Type", content_type)
    else:
        req.add_header("Content-Type", "")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = (resp.status, resp.headers, json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            answer = (exc.code, exc.headers, json.loads(exc.read()))
    _refused(answer, 415, "unsupported_media_type", "application/json")
    assert fake.calls == []


def test_json_with_a_charset_is_accepted(http: Http, fake: FakeBackend) -> None:
    assert http.post("/v1/infer", BODY, headers={"Content-Type": "application/json; charset=utf-8"})[0] == 200
    assert len(fake.calls) == 1


# -- the bearer token ------------------------------------------------------------------------------------


@pytest.fixture
def token_gateway(fake: FakeBackend) -> Iterator[Gateway]:
    gw = Gateway(fake, GatewayConfig(port=0, api_token=TOKEN)).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer wrong-token-0123456789", f"Basic {TOKEN}",
                                           f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"])
def test_spending_needs_the_token(token_gateway: Gateway, fake: FakeBackend, authorization: str | None) -> None:
    http = Http(token_gateway.url)
    status, headers, body = http.post("/v1/infer", BODY, headers={} if authorization is None else {"Authorization": authorization})
    _refused((status, headers, body), 401, "unauthorized", "Authorization: Bearer")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in str(body)
    assert fake.calls == []


def test_the_token_lets_a_call_through_and_reads_stay_open(token_gateway: Gateway, fake: FakeBackend) -> None:
    http = Http(token_gateway.url)
    assert http.post("/v1/infer", BODY, headers={"Authorization": f"bearer  {TOKEN}"})[0] == 200
    assert len(fake.calls) == 1
    for path in ("/v1/health", "/v1/experts", "/v1/balances", "/metrics", "/"):
        assert http.get(path)[0] == 200, path


def test_refusals_are_counted_in_the_metrics(token_gateway: Gateway) -> None:
    http = Http(token_gateway.url)
    http.post("/v1/infer", BODY)
    http.request("GET", "/v1/health", headers={"Host": "evil.example"})
    _, _, text = http.get("/metrics")
    assert 'moe_gateway_http_requests_total{route="/v1/infer",status="401"} 1.0' in text
    assert 'moe_gateway_http_requests_total{route="/v1/health",status="403"} 1.0' in text


# -- configuration ---------------------------------------------------------------------------------------


def test_the_token_never_shows_in_the_config_repr() -> None:
    assert TOKEN not in repr(GatewayConfig(api_token=TOKEN))


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"api_token": "short"}, "at least 16"),
    ({"api_token": "é" * 20}, "ASCII"),
    ({"allowed_hosts": ("",)}, "empty"),
])
def test_bad_access_settings_are_refused_at_start(kwargs: dict, words: str) -> None:
    with pytest.raises(MarketConfigError, match=words):
        GatewayConfig(**kwargs)


def test_the_policy_follows_the_listening_address() -> None:
    assert AccessPolicy.for_listener("127.0.0.1").allowed_hosts == {"localhost", "127.0.0.1", "::1"}
    assert AccessPolicy.for_listener("::1", ["Moe.Example."]).allowed_hosts == {"localhost", "127.0.0.1", "::1", "moe.example"}
    assert AccessPolicy.for_listener("0.0.0.0").allowed_hosts is None  # any Host: a proxy in front decides
    assert AccessPolicy.for_listener("0.0.0.0", ["moe.example:8080"]).allowed_hosts == {"moe.example"}


@pytest.mark.parametrize(("header", "name"), [
    ("LocalHost:8080", "localhost"), ("[::1]:80", "::1"), ("[::1]", "::1"), ("example.org.", "example.org"),
    ("127.0.0.1", "127.0.0.1"), ("", ""), ("a:b:c", "a:b:c"),
])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("10.0.0.1", False), ("example.org", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
