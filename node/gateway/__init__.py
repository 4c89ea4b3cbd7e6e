"""The HTTP gateway: JSON API, OpenAPI description, Prometheus metrics and the live dashboard (docs/gateway.md).

`Gateway` (node.gateway.app) serves it on an asyncio loop in a thread of its own; `ClientBackend`
(node.gateway.bridge) connects it to a running `market.client.Client`.
"""

from node.gateway.app import Gateway, GatewayConfig, create_app
from node.gateway.bridge import ClientBackend, MarketBackend

__all__ = ["ClientBackend", "Gateway", "GatewayConfig", "MarketBackend", "create_app"]
