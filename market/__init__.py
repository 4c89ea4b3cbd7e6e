"""moe-market client side: what a client needs to find, pay and check experts.

The node package imports this one, never the reverse. The SDK's names are loaded on first use, so
`import market` stays cheap (no torch, web3 or libp2p until needed):

    from market import Client, ClientConfig, RemoteMixtureOfExperts
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from market.errors import MarketError

if TYPE_CHECKING:
    from market.audit import AuditPolicy
    from market.client import (
        AsyncClient,
        Balance,
        Client,
        ClientConfig,
        DisputeRecord,
        EvidenceItem,
        InferResult,
    )
    from market.gate import GatePolicy
    from market.moe import RemoteExpert, RemoteMixtureOfExperts

_LAZY = {
    "AsyncClient": "market.client",
    "Balance": "market.client",
    "Client": "market.client",
    "ClientConfig": "market.client",
    "DisputeRecord": "market.client",
    "EvidenceItem": "market.client",
    "InferResult": "market.client",
    "AuditPolicy": "market.audit",
    "GatePolicy": "market.gate",
    "RemoteExpert": "market.moe",
    "RemoteMixtureOfExperts": "market.moe",
}

__all__ = [
    "AsyncClient",
    "AuditPolicy",
    "Balance",
    "Client",
    "ClientConfig",
    "DisputeRecord",
    "EvidenceItem",
    "GatePolicy",
    "InferResult",
    "MarketError",
    "RemoteExpert",
    "RemoteMixtureOfExperts",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'market' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
