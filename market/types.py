"""Plain value types shared by the client, the node and the chain bindings (no I/O, no web3, no torch).

Addresses are checksummed hex strings; hashes and keys are 32-byte `bytes`; amounts are wei as `int`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

ExpertId = NewType("ExpertId", int)
Address = NewType("Address", str)


class ExpertStatus(enum.IntEnum):
    """Mirrors IExpertRegistry.ExpertStatus."""

    NONE = 0
    ACTIVE = 1
    UNBONDING = 2
    WITHDRAWN = 3


class DisputeStatus(enum.IntEnum):
    """Mirrors IDisputeManager.DisputeStatus."""

    NONE = 0
    OPEN = 1
    GUILTY = 2
    INNOCENT = 3
    NO_QUORUM = 4


@dataclass(frozen=True, slots=True)
class ExpertInfo:
    """What the chain says about one expert (IExpertRegistry.Expert plus the escrow's volume)."""

    expert_id: int
    operator: str
    signer: str
    model_hash: bytes
    capability: bytes
    price: int
    stake: int
    node_key: bytes
    endpoint: tuple[str, ...]
    registered_at: int
    unbonds_at: int = 0
    slashed_total: int = 0
    disputes_lost: int = 0
    open_disputes: int = 0
    status: ExpertStatus = ExpertStatus.ACTIVE
    volume: int = 0

    @property
    def active(self) -> bool:
        return self.status == ExpertStatus.ACTIVE


@dataclass(frozen=True, slots=True)
class Voucher:
    """IPaymentEscrow.Voucher: the running total `client` owes `expert_id`."""

    client: str
    expert_id: int
    cumulative_amount: int


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    voucher: Voucher
    signature: bytes  # 65 bytes r || s || v


@dataclass(frozen=True, slots=True)
class Receipt:
    """IDisputeManager.Receipt: what an expert signs for each answered call."""

    expert_id: int
    model_hash: bytes
    request_id: bytes
    input_hash: bytes
    output_hash: bytes
    price: int


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    receipt: Receipt
    signature: bytes  # 65 bytes, by the expert's signer


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the market lives: written by `moe devnet up` / `moe deploy`, read by every other command."""

    chain_id: int
    rpc_url: str
    registry: str
    escrow: str
    disputes: str
    block: int
