"""Fakes for the client's seams: a chain (registry, escrow, disputes) and expert nodes behind an ExpertLink.

The fake node does what node/server.py does with a voucher and a receipt (recovers the voucher under the
escrow's domain, keeps the highest voucher, refuses one that does not cover what it served plus the price,
signs a receipt under the dispute manager's domain), so the client code around it is exercised for real;
only the network and the chain are replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import torch

from market.chain.eip712 import ReceiptSigner, recover_voucher_signer
from market.chain.signer import LocalSigner
from market.errors import ContractRevertError, MarketInputError, PeerTimeoutError, TransportError
from market.manifest import ModelManifest, TensorSchema, Tolerance, WeightsRef
from market.protocol.codec import decode_tensors, encode_tensors
from market.protocol.hashing import tensor_hash
from market.protocol.messages import ErrorCode, ErrorMessage, InferRequest, InferResult, QuoteResponse
from market.types import Deployment, DisputeStatus, ExpertInfo, ExpertStatus, Receipt, SignedReceipt

CHAIN_ID = 31337
DEPLOYMENT = Deployment(
    chain_id=CHAIN_ID,
    rpc_url="http://127.0.0.1:1",
    registry="0x" + "11" * 20,
    escrow="0x" + "22" * 20,
    disputes="0x" + "33" * 20,
    block=1,
)
EVIDENCE_ENDPOINT = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGzh6N1mNqGgHq6ZvqJ8cw5Hq1v8TdT3hQ3ZK3z5m6y1A"
NOW = 1_700_000_000
ETHER = 10**18
PRICE = 1_000

WEIGHTS = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10


def toy_manifest(name: str = "toy", capability: str = "toy") -> ModelManifest:
    return ModelManifest(
        name=name,
        architecture="mlp",
        config={"sizes": [4, 3], "activation": "relu"},
        weights=WeightsRef(keccak256=b"\x07" * 32, size=0),
        inputs=(TensorSchema("x", "float32", (-1, 4)),),
        outputs=(TensorSchema("y", "float32", (-1, 3)),),
        tolerance=Tolerance(atol=1e-4, rtol=1e-3),
        capability=capability,
    )


def toy_fn(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"y": inputs["x"] @ WEIGHTS}


@dataclass
class FakeNode:
    """One expert as its node would serve it. `behaviour`: honest, perturb, down, timeout, lost, error:<CODE>,
    badsig, wrongshape, too_low_once, too_low_4 (four times), too_low_always,
    insufficient."""

    info: ExpertInfo
    key: LocalSigner
    fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    behaviour: str = "honest"
    held: dict[str, int] = field(default_factory=dict)  # client -> highest voucher amount
    served: int = 0  # calls answered with a result
    connects: int = 0  # dials
    received: int = 0  # infer requests that arrived
    requests: list[InferRequest] = field(default_factory=list)

    def receipt_signer(self) -> ReceiptSigner:
        return ReceiptSigner(self.key.unsafe_private_key(), CHAIN_ID, DEPLOYMENT.disputes)


class FakeLink:
    """ExpertLink over FakeNodes (by expert id)."""

    def __init__(self) -> None:
        self.nodes: dict[int, FakeNode] = {}
        self.manifests: dict[bytes, ModelManifest] = {}
        self.manifest_requests = 0

    async def connect(self, expert: ExpertInfo, timeout: float) -> None:
        node = self.nodes[expert.expert_id]
        node.connects += 1
        if node.behaviour == "down":
            raise TransportError(f"connection refused by expert {expert.expert_id}")

    async def infer(self, expert: ExpertInfo, request: InferRequest, timeout: float) -> InferResult | ErrorMessage:
        node = self.nodes[expert.expert_id]
        node.received += 1
        node.requests.append(request)
        if node.behaviour == "lost":  # the request never arrives
            raise PeerTimeoutError("no answer")
        if node.behaviour.startswith("error:"):
            return ErrorMessage(ErrorCode(node.behaviour.split(":", 1)[1]), "refused", request.request_id)
        if node.behaviour == "insufficient":
            return ErrorMessage(ErrorCode.INSUFFICIENT_DEPOSIT, "balance too low", request.request_id)
        voucher = request.voucher
        assert recover_voucher_signer(voucher, CHAIN_ID, DEPLOYMENT.escrow) == voucher.voucher.client
        assert voucher.voucher.expert_id == expert.expert_id
        client = voucher.voucher.client
        held = node.held.get(client, 0)
        price = node.info.price
        if node.behaviour in ("too_low_once", "too_low_4", "too_low_always"):
            # e.g. a voucher the client forgot after a restore, or concurrent calls that won the race
            if node.behaviour == "too_low_once" or (node.behaviour == "too_low_4" and node.received >= 4):
                node.behaviour = "honest"
            node.held[client] = held + 5 * price
            return ErrorMessage(
                ErrorCode.VOUCHER_TOO_LOW, "too low", request.request_id, cumulative=node.held[client]
            )
        # The node's rule: the highest voucher it holds (this one included) covers all it served plus this call.
        highest = max(held, voucher.voucher.cumulative_amount)
        if highest < (node.served + 1) * price:
            return ErrorMessage(ErrorCode.VOUCHER_TOO_LOW, "too low", request.request_id, cumulative=held)
        node.held[client] = highest
        if node.behaviour == "timeout":  # the node served the call and kept the voucher; the answer is lost
            node.served += 1
            raise PeerTimeoutError("answer lost")
        inputs = decode_tensors(request.tensors, request.payload)
        outputs = node.fn(inputs)
        if node.behaviour == "perturb":
            outputs = {k: v + 1.0 for k, v in outputs.items()}
        if node.behaviour == "wrongshape":
            outputs = {k: v[:, :2].contiguous() for k, v in outputs.items()}
        specs, payload = encode_tensors(outputs)
        receipt = Receipt(
            expert_id=expert.expert_id,
            model_hash=request.model_hash,
            request_id=request.request_id,
            input_hash=tensor_hash(request.tensors, request.payload),
            output_hash=tensor_hash(specs, payload),
            price=price,
        )
        signed = node.receipt_signer().sign(receipt)
        if node.behaviour == "badsig":
            signed = LocalSigner.generate().receipt_signer(CHAIN_ID, DEPLOYMENT.disputes).sign(receipt)
        node.served += 1
        return InferResult(request.request_id, tuple(specs), signed, 1.0, payload)

    async def quote(self, expert: ExpertInfo, client: str, timeout: float) -> QuoteResponse:
        node = self.nodes[expert.expert_id]
        if node.behaviour == "down":
            raise TransportError("down")
        return QuoteResponse(experts=(), cumulative={expert.expert_id: node.held.get(client, 0)})

    async def manifest(self, expert: ExpertInfo, model_hash: bytes, timeout: float) -> ModelManifest:
        self.manifest_requests += 1
        if self.nodes[expert.expert_id].behaviour == "down":
            raise TransportError("down")
        return self.manifests[model_hash]


class FakeChain:
    """The chain reads and writes the client uses, in memory."""

    def __init__(self) -> None:
        self.experts: dict[int, ExpertInfo] = {}
        self.balance = 0
        self.withdraw_amount = 0
        self.redeemed_amounts: dict[tuple[str, int], int] = {}
        self.disputes: dict[int, SimpleNamespace] = {}
        self.block = 10
        self.past_signers: dict[int, set[str]] = {}
        self.reads = 0
        self.deposits: list[int] = []

    # registry
    def block_number(self) -> int:
        return self.block

    def expert_count(self) -> int:
        return max(self.experts, default=0)

    def experts_by_model(self, model_hash: bytes) -> list[ExpertInfo]:
        self.reads += 1
        return [e for e in self.experts.values() if e.model_hash == model_hash]

    def experts_by_capability(self, capability: bytes) -> list[ExpertInfo]:
        self.reads += 1
        return [e for e in self.experts.values() if e.capability == capability]

    def get_experts(self, ids: Any) -> list[ExpertInfo]:
        return [self.experts[i] for i in ids]

    def experts_registered(self, from_block: int = 0, to_block: Any = None) -> list[Any]:
        return []

    def experts_updated(self, from_block: int = 0, to_block: Any = None) -> list[Any]:
        return []

    def disputes_resolved(self, from_block: int = 0, to_block: Any = None) -> list[Any]:
        return []

    def was_signer(self, expert_id: int, signer: str) -> bool:
        return signer.lower() in {s.lower() for s in self.past_signers.get(expert_id, set())}

    # escrow
    def escrow_account(self, client: str | None = None) -> SimpleNamespace:
        return SimpleNamespace(balance=self.balance, withdraw_amount=self.withdraw_amount, withdrawable_at=0)

    def redeemed(self, client: str, expert_id: int) -> int:
        return self.redeemed_amounts.get((client, expert_id), 0)

    def deposit(self, amount: int) -> None:
        self.deposits.append(amount)
        self.balance += amount

    def request_withdraw(self, amount: int) -> int:
        self.withdraw_amount = amount
        return NOW + 600

    def withdraw(self) -> int:
        amount, self.withdraw_amount = self.withdraw_amount, 0
        self.balance -= amount
        return amount

    # disputes
    def open_dispute(self, signed: SignedReceipt, endpoint: str) -> int:
        if "/p2p/" not in endpoint:
            raise MarketInputError("bad endpoint")
        for d in self.disputes.values():
            if d.receipt == signed:
                raise ContractRevertError("DisputeAlreadyOpened")
        dispute_id = len(self.disputes) + 1
        r = signed.receipt
        self.disputes[dispute_id] = SimpleNamespace(
            dispute_id=dispute_id, expert_id=r.expert_id, challenger="0x" + "00" * 20, bond=ETHER // 10,
            model_hash=r.model_hash, request_id=r.request_id, input_hash=r.input_hash, output_hash=r.output_hash,
            commit_ends=0, reveal_ends=0, status=DisputeStatus.OPEN, guilty_stake=0, innocent_stake=0, slashed=0,
            voters=0, receipt=signed, endpoint=endpoint,
        )
        return dispute_id

    def get_dispute(self, dispute_id: int) -> SimpleNamespace:
        return self.disputes[dispute_id]

    def resolve(self, dispute_id: int) -> DisputeStatus:
        d = self.disputes[dispute_id]
        d.status = DisputeStatus.GUILTY
        return d.status


OPERATORS = [f"0x{c * 40}" for c in "abcdef"]


class Market:
    """A fake market: chain + link + helpers to register experts."""

    def __init__(self) -> None:
        self.chain = FakeChain()
        self.link = FakeLink()
        self.manifest = toy_manifest()
        self.link.manifests[self.manifest.model_hash] = self.manifest

    @property
    def model_hash(self) -> bytes:
        return self.manifest.model_hash

    def add_expert(
        self,
        *,
        operator: int | None = None,
        price: int = PRICE,
        behaviour: str = "honest",
        manifest: ModelManifest | None = None,
        fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] = toy_fn,
        **info: Any,
    ) -> FakeNode:
        manifest = manifest or self.manifest
        self.link.manifests[manifest.model_hash] = manifest
        eid = len(self.chain.experts) + 1
        key = LocalSigner.generate()
        from market.chain.contracts import capability_id

        expert = ExpertInfo(
            expert_id=eid,
            operator=OPERATORS[(eid - 1 if operator is None else operator) % len(OPERATORS)],
            signer=key.address,
            model_hash=manifest.model_hash,
            capability=capability_id(manifest.capability),
            price=price,
            stake=10 * ETHER,
            node_key=eid.to_bytes(32, "big"),  # one node per expert unless the test says otherwise
            endpoint=("/ip4/127.0.0.1/tcp/1",),
            registered_at=NOW,
            status=ExpertStatus.ACTIVE,
        )
        expert = replace(expert, **info)
        self.chain.experts[eid] = expert
        node = FakeNode(expert, key, fn, behaviour)
        self.link.nodes[eid] = node
        return node
