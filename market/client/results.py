"""What the client hands back: checked results, dispute evidence, balances and disputes. Frozen values, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from market.protocol.messages import receipt_to_json
from market.types import DisputeStatus, SignedReceipt

if TYPE_CHECKING:
    import torch

__all__ = ["Balance", "CallFailure", "DisputeRecord", "EvidenceItem", "InferResult"]


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    """A signed answer this client believes is wrong: everything a dispute needs.

    `receipt` is the expert's signed receipt; the input tensors (hash `input_hash`) and the claimed output
    (hash `output_hash`, also in `outputs`) are kept in the client's evidence store and served on the
    evidence protocol to the verifiers. `reason` is ``"minority"`` (outvoted) or ``"bad output"`` (the
    output does not fit the model's schema).
    """

    expert_id: int
    operator: str
    receipt: SignedReceipt
    outputs: Mapping[str, torch.Tensor] = field(repr=False)
    reason: str = "minority"

    @property
    def request_id(self) -> bytes:
        return self.receipt.receipt.request_id

    @property
    def model_hash(self) -> bytes:
        return self.receipt.receipt.model_hash

    @property
    def input_hash(self) -> bytes:
        return self.receipt.receipt.input_hash

    @property
    def output_hash(self) -> bytes:
        return self.receipt.receipt.output_hash

    def to_json(self) -> dict[str, Any]:
        return {
            "expert_id": self.expert_id,
            "operator": self.operator,
            "reason": self.reason,
            "receipt": receipt_to_json(self.receipt),
        }


@dataclass(frozen=True, slots=True)
class CallFailure:
    """One attempt at one expert that did not give a usable answer."""

    expert_id: int
    kind: str  # "error" (an error answer), "timeout", "transport", "bad answer", "deposit"
    message: str


@dataclass(frozen=True, slots=True)
class InferResult:
    """A checked answer.

    `outputs` is the winning answer; `agreeing` the experts whose answers formed the majority (one expert
    without redundancy); `receipts` the signed receipt of every expert that answered; `evidence` one item per
    answer this client holds to be wrong; `paid` the wei signed away for this call (answered calls, plus
    calls whose outcome is unknown); `failures` the attempts that failed over to another expert.
    """

    outputs: Mapping[str, torch.Tensor] = field(repr=False)
    agreeing: tuple[int, ...]
    receipts: Mapping[int, SignedReceipt] = field(repr=False)
    evidence: tuple[EvidenceItem, ...]
    latency_ms: float
    paid: int
    model_hash: bytes
    request_id: bytes
    failures: tuple[CallFailure, ...] = ()
    audited: bool = False
    escalated: bool = False
    disputes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", MappingProxyType(dict(self.outputs)))
        object.__setattr__(self, "receipts", MappingProxyType(dict(self.receipts)))

    def output(self, name: str | None = None) -> torch.Tensor:
        """The output tensor `name` (the only one when the model has one output)."""
        if name is None:
            if len(self.outputs) != 1:
                raise KeyError(f"the model has several outputs ({', '.join(self.outputs)}); name one")
            return next(iter(self.outputs.values()))
        return self.outputs[name]


@dataclass(frozen=True, slots=True)
class Balance:
    """The client's money: `escrow` on chain, what it signed per expert, and what is still free to spend.

    `unredeemed` = signed - redeemed: vouchers the nodes hold but have not cashed yet. `available` =
    escrow - unredeemed - pending withdrawal: what new calls may still sign for.
    """

    client: str
    escrow: int
    withdraw_pending: int
    withdrawable_at: int
    spent: int
    spent_per_expert: Mapping[int, int]
    redeemed: int
    in_flight: int

    @property
    def unredeemed(self) -> int:
        return max(self.spent - self.redeemed, 0)

    @property
    def available(self) -> int:
        return max(self.escrow - self.unredeemed - self.withdraw_pending, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "escrow": str(self.escrow),
            "withdraw_pending": str(self.withdraw_pending),
            "withdrawable_at": self.withdrawable_at,
            "spent": str(self.spent),
            "redeemed": str(self.redeemed),
            "unredeemed": str(self.unredeemed),
            "in_flight": str(self.in_flight),
            "available": str(self.available),
            "spent_per_expert": {str(k): str(v) for k, v in self.spent_per_expert.items()},
        }


@dataclass(frozen=True, slots=True)
class DisputeRecord:
    """A dispute this client opened, with its status as the chain last said."""

    dispute_id: int
    expert_id: int
    request_id: bytes
    model_hash: bytes
    status: DisputeStatus
    bond: int = 0
    commit_ends: int = 0
    reveal_ends: int = 0
    slashed: int = 0
    evidence_endpoint: str = ""

    @property
    def open(self) -> bool:
        return self.status == DisputeStatus.OPEN

    def to_json(self) -> dict[str, Any]:
        return {
            "dispute_id": self.dispute_id,
            "expert_id": self.expert_id,
            "request_id": _hex(self.request_id),
            "model_hash": _hex(self.model_hash),
            "status": self.status.name,
            "bond": str(self.bond),
            "commit_ends": self.commit_ends,
            "reveal_ends": self.reveal_ends,
            "slashed": str(self.slashed),
            "evidence_endpoint": self.evidence_endpoint,
        }
