"""The HTTP gateway: a JSON API over the client SDK, its OpenAPI description, Prometheus metrics and the
dashboard, served by aiohttp on an asyncio loop that runs in a thread of its own (`Gateway`).

    POST /v1/infer        one checked, paid call                 GET /v1/health     liveness and the chain
    GET  /v1/experts      registered experts (?model=0x..)       GET /metrics       Prometheus text
    GET  /v1/disputes     the market's latest disputes           GET /openapi.yaml  this API, OpenAPI 3.1
    GET  /v1/balances     the client's escrow and payments       GET /              the dashboard

Market work goes through a `MarketBackend` (node.gateway.bridge: blocking methods, called from thread pools;
the bridge's docstring says how that reaches the client's trio core). Every error is a JSON body
``{"error": {"code", "message"}}`` with a 4xx/5xx status (table in `ERROR_STATUS`); a 500 is only ever an
unexpected exception, and it is logged. Limits: the body size (413), the infer calls running at once (429,
counting calls whose HTTP request was abandoned until their worker finishes), and a per-request timeout (504).
Before any handler, node.gateway.guard decides who may call: Host allow-list, same origin for writes, JSON-only
spending, and the optional bearer token (403/415/401).

It must not: touch trio or the client directly (only the backend), or block its event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from market.errors import (
    InsufficientDepositError,
    MalformedMessageError,
    MarketConfigError,
    MarketError,
    MarketInputError,
    NoExpertError,
    PeerTimeoutError,
    SelectionError,
    VerificationError,
)
from node.gateway.bridge import MarketBackend, UnknownModelError, decode_inputs, parse_model_hash
from node.gateway.errors import ApiError, error_response
from node.gateway.guard import AccessPolicy
from node.gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics

__all__ = ["ERROR_STATUS", "ApiError", "Gateway", "GatewayConfig", "create_app", "error_for"]

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
OPENAPI_FILE = HERE / "openapi.yaml"
MAX_WEI = 2**256 - 1
MAX_JSON_DEPTH = 32  # a tensor has at most 16 dimensions; the request object adds three levels
INFER_FIELDS = frozenset({"model", "inputs", "redundancy", "max_price", "deadline_ms"})
SPENDING_ROUTES = frozenset({"/v1/infer"})  # POSTs here spend the deposit: JSON only, and the token if set

# exception class -> (HTTP status, API error code); the first match in this order wins.
ERROR_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (MarketInputError, 400, "bad_input"),
    (MalformedMessageError, 400, "malformed"),
    (UnknownModelError, 404, "unknown_model"),
    (NoExpertError, 422, "no_expert"),
    (SelectionError, 422, "no_expert"),
    (InsufficientDepositError, 402, "insufficient_deposit"),
    (VerificationError, 502, "verification_failed"),
    (PeerTimeoutError, 504, "peer_timeout"),
    (MarketConfigError, 503, "unavailable"),
    (MarketError, 503, "unavailable"),
)

_STATUS_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Where the gateway listens and its limits. Times in seconds unless the name says ms."""

    host: str = "127.0.0.1"
    port: int = 8080
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback ones (node.gateway.guard)
    api_token: str | None = field(default=None, repr=False)  # None: spending needs no Authorization header
    max_body_bytes: int = 8 * 2**20
    max_concurrent_infer: int = 16
    read_workers: int = 8
    default_deadline_ms: int | None = None  # None: the client's own deadline_s
    max_deadline_ms: int = 120_000
    max_redundancy: int = 16
    request_timeout_s: float = 150.0
    timeout_grace_s: float = 15.0
    read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise MarketConfigError(f"port must be 0..65535, got {self.port!r}")
        for name in ("max_body_bytes", "max_concurrent_infer", "read_workers", "max_deadline_ms", "max_redundancy"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise MarketConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.default_deadline_ms is not None and not 1 <= self.default_deadline_ms <= self.max_deadline_ms:
            raise MarketConfigError("default_deadline_ms must be between 1 and max_deadline_ms")
        for name in ("request_timeout_s", "timeout_grace_s", "read_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise MarketConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        self.access_policy()  # refuses a short token or an empty host name now, not at the first request

    def access_policy(self) -> AccessPolicy:
        return AccessPolicy.for_listener(self.host, self.allowed_hosts, self.api_token)


def error_for(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, API code) for an exception raised by the backend; (500, "internal") if unexpected."""
    for cls, status, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal"


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (strings skipped), at C speed.

    Checked before parsing: the parser's own guard is the interpreter's recursion limit, which libraries
    may raise, and deep recursion on a worker thread's smaller stack must not be left to chance.
    """
    import numpy as np

    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


def _json_loads(body: bytes) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    depth = _nesting_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"arrays and objects nest {depth} levels deep, more than the {MAX_JSON_DEPTH} accepted")
    return json.loads(body, parse_constant=reject)


class _State:
    """Per-application state, touched only on the gateway's event loop thread."""

    def __init__(self, backend: MarketBackend, config: GatewayConfig, metrics: GatewayMetrics) -> None:
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.access = config.access_policy()
        self.in_flight = 0
        self.started = time.monotonic()
        self.infer_pool = concurrent.futures.ThreadPoolExecutor(
            config.max_concurrent_infer, thread_name_prefix="gateway-infer"
        )
        self.read_pool = concurrent.futures.ThreadPoolExecutor(config.read_workers, thread_name_prefix="gateway-read")

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a backend read in the read pool, with the read timeout; backend errors become ApiErrors."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.read_pool, fn, *args)
        done, _ = await asyncio.wait({future}, timeout=self.config.read_timeout_s)
        if not done:
            future.add_done_callback(_consume)
            raise ApiError(504, "timeout", f"the market did not answer within {self.config.read_timeout_s:g}s")
        try:
            return future.result()
        except MarketError as exc:
            status, code = error_for(exc)
            raise ApiError(status, code, str(exc)) from None


STATE = web.AppKey("state", _State)


def create_app(
    backend: MarketBackend, config: GatewayConfig | None = None, metrics: GatewayMetrics | None = None
) -> web.Application:
    """The aiohttp application (runs on whatever loop serves it; `Gateway` gives it a thread of its own)."""
    config = config or GatewayConfig()
    state = _State(backend, config, metrics or GatewayMetrics())
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=[_middleware])
    app[STATE] = state
    app.router.add_post("/v1/infer", _infer)
    app.router.add_get("/v1/experts", _experts)
    app.router.add_get("/v1/disputes", _disputes)
    app.router.add_get("/v1/balances", _balances)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.yaml", _openapi)
    app.router.add_get("/", _index)
    app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)

    async def shutdown(_: web.Application) -> None:
        # Workers of abandoned calls end at the client's deadline; do not wait for them here.
        state.infer_pool.shutdown(wait=False, cancel_futures=True)
        state.read_pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(shutdown)
    return app


@web.middleware
async def _middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    state = request.app[STATE]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        state.access.check(request, spends=request.method == "POST" and route in SPENDING_ROUTES)
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = error_response(exc.status, code, message, {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        response = error_response(500, "internal", "the gateway failed unexpectedly; its log has the details")
    state.metrics.http_requests.labels(route, str(response.status)).inc()
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Content-Security-Policy", _CSP)
    if request.path.startswith("/v1/") or request.path == "/metrics":
        headers.setdefault("Cache-Control", "no-store")
    return response


# -- POST /v1/infer --------------------------------------------------------------------------------------


def _parse_infer(body: bytes, config: GatewayConfig) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """(model hash, decoded inputs, call options) from the request body, or an ApiError(400)."""
    try:
        doc = _json_loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", 'the body must be a JSON object: {"model": "0x..", "inputs": {...}}')
    unknown = sorted(set(doc) - INFER_FIELDS)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(INFER_FIELDS))}")
    if "model" not in doc or "inputs" not in doc:
        raise ApiError(400, "bad_request", 'fields "model" (the modelHash, 0x + 64 hex digits) and "inputs" are required')
    try:
        model_hash = parse_model_hash(doc["model"], "model")
        inputs = decode_inputs(doc["inputs"])
    except MarketInputError as exc:
        raise ApiError(400, "bad_input", str(exc)) from None
    options: dict[str, Any] = {"redundancy": None, "max_price": None, "deadline_s": None}
    redundancy = doc.get("redundancy")
    if redundancy is not None:
        if type(redundancy) is not int or not 1 <= redundancy <= config.max_redundancy:
            raise ApiError(400, "bad_request", f"redundancy must be an integer from 1 to {config.max_redundancy}, got {redundancy!r:.40}")
        options["redundancy"] = redundancy
    max_price = doc.get("max_price")
    if max_price is not None:
        options["max_price"] = _parse_wei(max_price, "max_price")
    deadline_ms = doc.get("deadline_ms", config.default_deadline_ms)
    if deadline_ms is not None:
        if type(deadline_ms) is not int or not 1 <= deadline_ms <= config.max_deadline_ms:
            raise ApiError(400, "bad_request", f"deadline_ms must be an integer from 1 to {config.max_deadline_ms}, got {deadline_ms!r:.40}")
        options["deadline_s"] = deadline_ms / 1000.0
    return model_hash, inputs, options


def _parse_wei(value: Any, name: str) -> int:
    if type(value) is int and 0 <= value <= MAX_WEI:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 78:
        wei = int(value)
        if wei <= MAX_WEI and (value == "0" or not value.startswith("0")):
            return wei
    raise ApiError(400, "bad_request", f'{name} must be wei as a decimal string (e.g. "1000000000"), got {value!r:.40}')


async def _infer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    config = state.config
    if state.in_flight >= config.max_concurrent_infer:
        state.metrics.infer_failed("too_many_requests")
        raise ApiError(
            429, "too_many_requests",
            f"{state.in_flight} infer calls are running, the gateway's limit is {config.max_concurrent_infer}; retry shortly",
            {"Retry-After": "1"},
        )
    # The slot is taken before the body is read (the check and the take are one step on the loop) and given
    # back when the worker ends, or right away if the call never reaches a worker.
    state.in_flight += 1
    state.metrics.in_flight.inc()

    def release(_: object = None) -> None:
        state.in_flight -= 1
        state.metrics.in_flight.dec()

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] | None = None
    try:
        model_hash, inputs, options = await _read_infer_request(request, state)
        started = time.perf_counter()
        future = loop.run_in_executor(state.infer_pool, lambda: state.backend.infer(model_hash, inputs, **options))
        future.add_done_callback(release)
    except ApiError as exc:
        state.metrics.infer_failed(exc.code)
        raise
    finally:
        if future is None:
            release()

    deadline_s = options["deadline_s"]
    timeout = min(config.request_timeout_s, (deadline_s or config.request_timeout_s) + config.timeout_grace_s)
    # asyncio.wait leaves the future running on timeout (the worker cannot be stopped anyway), and keeps the
    # gateway's timeout apart from the market's own TimeoutErrors (PeerTimeoutError is one).
    done, _ = await asyncio.wait({future}, timeout=timeout)
    if not done:
        future.add_done_callback(_consume)
        state.metrics.infer_failed("timeout")
        raise ApiError(504, "timeout", f"the call did not finish within {timeout:g}s")
    try:
        result = future.result()
    except Exception as exc:
        status, code = error_for(exc)
        state.metrics.infer_failed(code)
        if status == 500:
            raise
        raise ApiError(status, code, str(exc) or type(exc).__name__) from None
    try:
        paid = int(result.get("paid", 0))
    except (TypeError, ValueError):
        paid = 0
    state.metrics.infer_ok(time.perf_counter() - started, paid)
    return web.json_response(result)


async def _read_infer_request(request: web.Request, state: _State) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    config = state.config
    too_large = ApiError(413, "payload_too_large", f"the body is over the gateway's limit of {config.max_body_bytes} bytes")
    if request.content_length is not None and request.content_length > config.max_body_bytes:
        raise too_large
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    # Parsing and building tensors from up to max_body_bytes of JSON takes a while: not on the loop. The infer
    # pool has one worker per slot and this request holds a slot, so a worker is free for it.
    return await asyncio.get_running_loop().run_in_executor(state.infer_pool, _parse_infer, body, config)


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a call nobody waits for any more, so asyncio does not warn about it."""
    if not future.cancelled() and future.exception() is not None:
        logger.info("an abandoned call ended with %s", type(future.exception()).__name__)


# -- reads -----------------------------------------------------------------------------------------------


async def _experts(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = request.query.get("model")
    model_hash = None
    if model is not None:
        try:
            model_hash = parse_model_hash(model, "model")
        except MarketInputError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
    experts = await state.read(state.backend.experts, model_hash)
    if model_hash is None:
        state.metrics.saw_experts(experts)
    return web.json_response({"model": model, "count": len(experts), "experts": experts})


async def _disputes(request: web.Request) -> web.Response:
    state = request.app[STATE]
    raw = request.query.get("limit", "100")
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 100):
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to 100, got {raw!r:.20}")
    limit = int(raw)
    disputes = await state.read(state.backend.disputes, limit)
    if limit == 100:
        state.metrics.saw_disputes(disputes)
    return web.json_response({"count": len(disputes), "disputes": disputes})


async def _balances(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(await state.read(state.backend.balances))


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {
        "status": "ok",
        "uptime_s": round(time.monotonic() - state.started, 3),
        "in_flight": state.in_flight,
    }
    try:
        body.update(await state.read(state.backend.stats))
    except ApiError as exc:
        body.update(status="degraded", error={"code": exc.code, "message": exc.message})
        return web.json_response(body, status=503)
    return web.json_response(body)


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(OPENAPI_FILE, headers={"Content-Type": "application/yaml; charset=utf-8"})


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8"})


# -- the thread that runs it -----------------------------------------------------------------------------


class Gateway:
    """Serves `create_app(backend, config)` on an asyncio loop in a thread of its own.

        with Gateway(backend, GatewayConfig(port=0)) as gateway:   # port 0: a free port
            print(gateway.url)

    `start()` returns once the socket listens (or raises what kept it from listening); `stop()` closes the
    listener, lets requests in progress finish for a moment, and joins the thread.
    """

    def __init__(self, backend: MarketBackend, config: GatewayConfig | None = None, metrics: GatewayMetrics | None = None) -> None:
        self.backend = backend
        self.config = config or GatewayConfig()
        self.metrics = metrics or GatewayMetrics()
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise MarketConfigError("the gateway is not listening; call start() first")
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Gateway:
        if self._thread is not None:
            raise MarketConfigError("the gateway was started already")
        self._thread = threading.Thread(target=self._main, name="moe-gateway", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise MarketConfigError(f"the gateway did not start listening within {timeout:g}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
            else:
                logger.error("the gateway's thread stopped with an error", exc_info=True)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = create_app(self.backend, self.config, self.metrics)
        runner = web.AppRunner(app, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            try:
                await site.start()
            except OSError as exc:
                raise MarketConfigError(
                    f"the gateway cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}; "
                    "pick another --port"
                ) from None
            self.port = int(runner.addresses[0][1])
            logger.info("gateway listening on %s", self.url)
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self, timeout: float = 15.0) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("the gateway's thread did not stop within %gs", timeout)

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
