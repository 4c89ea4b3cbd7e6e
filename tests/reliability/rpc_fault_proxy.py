"""A flaky JSON-RPC provider for tests: an HTTP reverse proxy on 127.0.0.1 in front of anvil that fails on purpose.

Real RPC providers fail in ways a frozen anvil (scenario 2) does not show. Per request, the proxy draws one
fault (or none) from a `FaultPlan`:

| fault | what the caller sees | reached the chain |
|---|---|---|
| `http_502`, `http_503`, `http_429` | that HTTP status, without a JSON-RPC body | no |
| `reset` | the connection reset before any answer | no |
| `lost_answer` | the connection reset after the request was forwarded and answered | yes (a sent transaction is sent) |
| `slow_answer` | the answer, `delay_s` later (past the caller's timeout when that is longer) | yes |

`send_lost_p` / `send_slow_p` apply to `eth_sendRawTransaction` instead of `lost_p` / `slow_p`: the nasty case
of a transaction that went out while its sender heard nothing. Draws come from `random.Random(seed)`, so a
run's sequence of faults is fixed (which request gets which draw depends on thread timing). `enabled` turns
the faults off and on at run time; `inject(method, fault)` forces the fault of the next request for `method`
(deterministic regression tests); `counts` counts requests, faults and faults per method.

    with RpcFaultProxy(anvil_url, FaultPlan(error_p=0.1, lost_p=0.05), seed=1) as proxy:
        ...  # point the deployment's rpc_url at proxy.url
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SEND = "eth_sendRawTransaction"
STATUS = {"http_502": 502, "http_503": 503, "http_429": 429}


@dataclass(frozen=True)
class FaultPlan:
    """Per-request probabilities; what is left over is forwarded untouched."""

    error_p: float = 0.0  # answer 502, 503 or 429 (a third each) without forwarding
    reset_p: float = 0.0  # reset the connection without forwarding
    lost_p: float = 0.0  # forward, then reset instead of answering
    slow_p: float = 0.0  # forward, answer after `delay_s`
    send_lost_p: float | None = None  # lost_p for eth_sendRawTransaction (None: lost_p)
    send_slow_p: float | None = None  # slow_p for eth_sendRawTransaction (None: slow_p)
    delay_s: tuple[float, float] = (0.1, 0.5)  # a slow answer's delay, uniform in this range


class RpcFaultProxy:
    """Start with `start()` (or `with`), stop with `stop()`; `url` is the proxy's http://127.0.0.1:port."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None, *, seed: int = 0, enabled: bool = True) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.plan = plan or FaultPlan()
        self.enabled = enabled
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._forced: dict[str, list[str]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="rpc-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> RpcFaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> RpcFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, method: str, fault: str) -> None:
        """The next request for `method` gets `fault` (even while `enabled` is off)."""
        with self._lock:
            self._forced.setdefault(method, []).append(fault)

    def faults(self) -> dict[str, int]:
        """Faults injected so far by kind (`counts` also has `requests` and `<fault> <method>`)."""
        return {k: v for k, v in self.counts.items() if " " not in k and k != "requests"}

    def choose(self, method: str) -> tuple[str | None, float]:
        """The fault for one request and, for a slow answer, its delay."""
        with self._lock:
            self.counts["requests"] += 1
            forced = self._forced.get(method)
            if forced:
                fault = forced.pop(0)
            elif not self.enabled:
                return None, 0.0
            else:
                p = self.plan
                lost = p.send_lost_p if method == SEND and p.send_lost_p is not None else p.lost_p
                slow = p.send_slow_p if method == SEND and p.send_slow_p is not None else p.slow_p
                u = self._rng.random()
                fault = None
                for name, prob in (("error", p.error_p), ("reset", p.reset_p), ("lost_answer", lost),
                                   ("slow_answer", slow)):
                    if u < prob:
                        fault = name
                        break
                    u -= prob
                if fault == "error":
                    fault = self._rng.choice(sorted(STATUS))
            delay = self._rng.uniform(*self.plan.delay_s) if fault == "slow_answer" else 0.0
            if fault is not None:
                self.counts[fault] += 1
                self.counts[f"{fault} {method}"] += 1
            return fault, delay

    def forward(self, body: bytes) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.request("POST", "/", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def _rpc_method(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "?"
    if isinstance(data, list):
        data = data[0] if data else {}
    return str(data.get("method", "?")) if isinstance(data, dict) else "?"


def _handler(proxy: RpcFaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a real provider

        def log_message(self, *args: object) -> None:
            pass

        def reset(self) -> None:
            """RST, not FIN: linger 0, then close."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            fault, delay = proxy.choose(_rpc_method(body))
            if fault in STATUS:
                return self.answer(STATUS[fault], b'{"error": "injected by the test proxy"}')
            if fault == "reset":
                return self.reset()
            try:
                status, answer = proxy.forward(body)
            except OSError:
                return self.answer(502, b'{"error": "upstream unreachable"}')
            if fault == "lost_answer":
                return self.reset()
            if delay:
                time.sleep(delay)
            try:
                self.answer(status, answer)
            except OSError:  # the caller gave up (timed out) while the answer was slow
                self.close_connection = True

        def finish(self) -> None:
            with contextlib.suppress(OSError):
                super().finish()

    return Handler
