"""Who may use the gateway: the checks every HTTP request passes before a handler runs.

The gateway spends its client's escrow deposit, so a request that spends must come from someone the operator
meant. Four checks, each answering with a JSON error that says what was wrong:

- **Host allow-list** (403 ``host_not_allowed``): a gateway on a loopback address answers only to loopback
  host names (``localhost``, ``127.0.0.1``, ``::1``, any port). Without it, a web page the operator visits
  could rebind its own DNS name to 127.0.0.1 and read or spend through the gateway (DNS rebinding). A
  gateway on another address accepts any Host unless given `allowed_hosts`.
- **Same origin for writes** (403 ``cross_origin``): a POST that carries an ``Origin`` header (every browser
  sends one on a cross-site POST) must come from the gateway's own origin. ``Origin: null`` is refused too.
- **JSON only** (415 ``unsupported_media_type``): ``POST /v1/infer`` needs ``Content-Type: application/json``,
  which a browser never sends cross-site without a CORS preflight the gateway does not grant (so a hostile
  page's "simple" text/plain form post cannot spend).
- **Bearer token** (401 ``unauthorized``), when configured: requests that spend need
  ``Authorization: Bearer <token>``, compared in constant time. Reads stay open: they show registered experts,
  disputes and this client's totals, not keys.

It must not: read request bodies, or log the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from market.errors import MarketConfigError
from node.gateway.errors import ApiError

__all__ = ["LOOPBACK_NAMES", "MIN_TOKEN_CHARS", "AccessPolicy", "host_name", "is_loopback"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MIN_TOKEN_CHARS = 16
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_JSON_TYPES = frozenset({"application/json"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (the listening address, not a Host header)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a Host header or an origin's netloc, lower-case, without port, brackets or final dot."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6 address]:port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """What the guard enforces. `allowed_hosts` None: any Host; `token` None: no Authorization needed."""

    allowed_hosts: frozenset[str] | None = LOOPBACK_NAMES
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < MIN_TOKEN_CHARS):
            raise MarketConfigError(f"the API token must be a string of at least {MIN_TOKEN_CHARS} characters")
        if self.token is not None and not self.token.isascii():
            raise MarketConfigError("the API token must be ASCII (it travels in an HTTP header)")

    @classmethod
    def for_listener(cls, listen_host: str, allowed_hosts: Iterable[str] | None = None,
                     token: str | None = None) -> AccessPolicy:
        """The policy for a gateway listening on `listen_host`: loopback names only on a loopback address,
        unless `allowed_hosts` names the hosts (added to the loopback names there)."""
        extra = frozenset(host_name(h) for h in allowed_hosts or ())
        if "" in extra:
            raise MarketConfigError("an allowed host must be a host name or address, got an empty one")
        if is_loopback(listen_host):
            return cls(LOOPBACK_NAMES | extra, token)
        return cls(extra or None, token)

    def check(self, request: web.Request, spends: bool) -> None:
        """Raises `ApiError` if `request` may not proceed; `spends`: the route spends the client's deposit."""
        host_header = request.headers.get("Host", "")
        if self.allowed_hosts is not None and host_name(host_header) not in self.allowed_hosts:
            raise ApiError(
                403, "host_not_allowed",
                f"this gateway does not answer to the host {host_header[:100]!r} (a guard against DNS rebinding); "
                f"it answers to {', '.join(sorted(self.allowed_hosts))}: start it with --allowed-host NAME to add one",
            )
        if request.method not in _SAFE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and not _same_origin(origin, host_header):
                raise ApiError(403, "cross_origin",
                             f"a request from the web page at {origin[:100]!r} may not write to this gateway "
                             "(only pages it serves itself may)")
        if not spends:
            return
        if request.content_type not in _JSON_TYPES:
            raise ApiError(415, "unsupported_media_type",
                         f"the body must be sent as Content-Type: application/json, not {request.content_type!r}")
        if self.token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                raise ApiError(401, "unauthorized",
                             "this gateway needs the header Authorization: Bearer <its API token>",
                             {"WWW-Authenticate": 'Bearer realm="moe-gateway"'})


def _same_origin(origin: str, host_header: str) -> bool:
    if origin == "null" or not host_header:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()
