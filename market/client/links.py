"""The client's seam to expert nodes: `ExpertLink` (a Protocol) and `HostLink`, its libp2p implementation.

An expert is dialled at the endpoint it registered on chain and must be the peer whose id follows from its
registered `nodeKey` (noise proves the key), so a client never pays a node that merely claims an expert id.
Infer calls use the host's pooled long-lived streams; quotes and model fetches use one-shot streams.

Tests replace `HostLink` with a fake that behaves like a node. It must not: touch the chain or the wallet.
"""

from __future__ import annotations

from typing import Protocol

import trio

from market.errors import MalformedMessageError, PeerTimeoutError
from market.manifest import ModelManifest
from market.protocol.ids import INFER, QUOTE
from market.protocol.messages import (
    ErrorMessage,
    InferRequest,
    InferResult,
    QuoteRequest,
    QuoteResponse,
    decode_response,
)
from market.transport import MarketHost, PeerId, peer_id_from_node_key
from market.types import ExpertInfo

__all__ = ["ExpertLink", "HostLink", "expert_peer"]


class ExpertLink(Protocol):
    """How the client reaches expert nodes. Every method has a finite timeout."""

    async def connect(self, expert: ExpertInfo, timeout: float) -> None:
        """Make sure the expert's node is reachable (TransportError / PeerTimeoutError if not)."""
        ...

    async def infer(self, expert: ExpertInfo, request: InferRequest, timeout: float) -> InferResult | ErrorMessage:
        """Send one paid request; the node's answer, an error answer included."""
        ...

    async def quote(self, expert: ExpertInfo, client: str, timeout: float) -> QuoteResponse:
        """The node's quote for `client` (prices, and the cumulative voucher amounts it holds)."""
        ...

    async def manifest(self, expert: ExpertInfo, model_hash: bytes, timeout: float) -> ModelManifest:
        """The manifest of `model_hash` from the expert's node, checked against the hash."""
        ...


def expert_peer(expert: ExpertInfo) -> tuple[PeerId, list[str]]:
    """The peer id an expert's node must have (from its on-chain nodeKey) and its registered addresses."""
    return peer_id_from_node_key(expert.node_key), list(expert.endpoint)


class HostLink:
    """`ExpertLink` over a running MarketHost."""

    def __init__(self, host: MarketHost) -> None:
        self.host = host

    async def connect(self, expert: ExpertInfo, timeout: float) -> None:
        peer, addrs = expert_peer(expert)
        try:
            with trio.fail_after(timeout):
                await self.host.connect(peer, addrs)
        except trio.TooSlowError:
            raise PeerTimeoutError(f"dialing expert {expert.expert_id} ({peer}) timed out") from None

    async def infer(self, expert: ExpertInfo, request: InferRequest, timeout: float) -> InferResult | ErrorMessage:
        peer, addrs = expert_peer(expert)
        session = self.host.session(peer, addrs, INFER)
        header, payload = await session.call(request.to_header(), request.payload, timeout=timeout)
        answer = decode_response(header, payload)
        if not isinstance(answer, InferResult | ErrorMessage):
            raise MalformedMessageError(f"expected a result or an error, got a {header.get('type')!r:.40} answer")
        return answer

    async def quote(self, expert: ExpertInfo, client: str, timeout: float) -> QuoteResponse:
        peer, addrs = expert_peer(expert)
        request = QuoteRequest(client=client, model_hash=None)
        header, payload = await self.host.request(peer, addrs, QUOTE, request.to_header(), timeout=timeout)
        answer = decode_response(header, payload)
        if isinstance(answer, ErrorMessage):
            raise answer.to_exception()
        if not isinstance(answer, QuoteResponse):
            raise MalformedMessageError(f"expected a quote, got a {header.get('type')!r:.40} answer")
        return answer

    async def manifest(self, expert: ExpertInfo, model_hash: bytes, timeout: float) -> ModelManifest:
        from market.models.fetch import fetch_manifest

        peer, addrs = expert_peer(expert)
        return await fetch_manifest(self.host, peer, addrs, model_hash, timeout)
