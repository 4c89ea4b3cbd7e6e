"""The client SDK: find experts, pay them per call, check what they answer, dispute what is wrong.

    AsyncClient     the trio core            async with AsyncClient.open(config) as client: ...
    Client          the blocking facade      with Client(config) as client: client.infer(...)
    ClientConfig    frozen configuration     deployment, key, state directory, checking policy, limits
    InferResult     a checked answer         outputs, agreeing experts, receipts, evidence, latency, paid
    EvidenceItem    a signed wrong answer    what `dispute()` takes
    Balance, DisputeRecord

Modules: config (ClientConfig), core (AsyncClient), facade (Client), calls (the paid call: failover, voting),
checks (receipt and output checks), discovery (registry cache), funds (the deposit check), links (the seam to
expert nodes), disputes (evidence and dispute records), results (the values above). See docs/client.md.
"""

from market.client.config import ClientConfig
from market.client.core import AsyncClient, capability_bytes
from market.client.facade import Client, ClientClosedError
from market.client.results import Balance, CallFailure, DisputeRecord, EvidenceItem, InferResult

__all__ = [
    "AsyncClient",
    "Balance",
    "CallFailure",
    "Client",
    "ClientClosedError",
    "ClientConfig",
    "DisputeRecord",
    "EvidenceItem",
    "InferResult",
    "capability_bytes",
]
