"""Prometheus metrics of one gateway, in a registry of its own (two gateways in one process never collide).

    moe_gateway_http_requests_total{route, status}     every HTTP request, by route template and status code
    moe_gateway_infer_calls_total{outcome}              POST /v1/infer: ok or error
    moe_gateway_infer_failures_total{code}              failed infer calls by the API error code (bad_input, ...)
    moe_gateway_infer_latency_seconds                   histogram of answered infer calls, gateway side
    moe_gateway_paid_wei_total                          wei signed to experts for calls made through this gateway
    moe_gateway_infer_in_flight                         infer calls running now (abandoned ones included)
    moe_gateway_experts{status}                         experts on the registry, as last listed
    moe_gateway_disputes{status}                        disputes of the market (latest 100), as last listed

The expert and dispute gauges follow what the gateway last read for /v1/experts and /v1/disputes (the
dashboard polls them), so a scrape never costs a chain read. It must not: do I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EXPERT_STATUSES = ("active", "unbonding", "withdrawn")
DISPUTE_STATUSES = ("open", "guilty", "innocent", "no_quorum")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "moe_gateway_http_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.infer_calls = Counter("moe_gateway_infer_calls", "Infer calls by outcome", ["outcome"], registry=r)
        self.infer_failures = Counter(
            "moe_gateway_infer_failures", "Failed infer calls by API error code", ["code"], registry=r
        )
        self.infer_latency = Histogram(
            "moe_gateway_infer_latency_seconds", "Latency of answered infer calls", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.paid_wei = Counter("moe_gateway_paid_wei", "Wei signed to experts for calls through this gateway", registry=r)
        self.in_flight = Gauge("moe_gateway_infer_in_flight", "Infer calls running now", registry=r)
        self.experts = Gauge("moe_gateway_experts", "Registered experts by status, as last listed", ["status"], registry=r)
        self.disputes = Gauge("moe_gateway_disputes", "Disputes by status (latest 100), as last listed", ["status"], registry=r)
        for outcome in ("ok", "error"):
            self.infer_calls.labels(outcome)
        for status in EXPERT_STATUSES:
            self.experts.labels(status)
        for status in DISPUTE_STATUSES:
            self.disputes.labels(status)

    def infer_ok(self, seconds: float, paid_wei: int) -> None:
        self.infer_calls.labels("ok").inc()
        self.infer_latency.observe(seconds)
        if paid_wei > 0:
            self.paid_wei.inc(paid_wei)

    def infer_failed(self, code: str) -> None:
        self.infer_calls.labels("error").inc()
        self.infer_failures.labels(code).inc()

    def saw_experts(self, experts: Sequence[Mapping[str, Any]]) -> None:
        counts = dict.fromkeys(EXPERT_STATUSES, 0)
        for e in experts:
            counts[str(e.get("status"))] = counts.get(str(e.get("status")), 0) + 1
        for status, n in counts.items():
            self.experts.labels(status).set(n)

    def saw_disputes(self, disputes: Sequence[Mapping[str, Any]]) -> None:
        counts = dict.fromkeys(DISPUTE_STATUSES, 0)
        for d in disputes:
            counts[str(d.get("status"))] = counts.get(str(d.get("status")), 0) + 1
        for status, n in counts.items():
            self.disputes.labels(status).set(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
