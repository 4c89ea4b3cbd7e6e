"""Frozen records returned by the chain client: views of contract state and decoded events.

These mirror the Solidity structs and events of the three market contracts, with snake_case fields,
checksummed addresses, 32-byte `bytes` for hashes and `int` wei. Plain data: no web3, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from market.types import DisputeStatus


@dataclass(frozen=True, slots=True)
class VerifierInfo:
    """IExpertRegistry.Verifier of `address`."""

    address: str
    stake: int
    registered_at: int
    unbonds_at: int
    active: bool


@dataclass(frozen=True, slots=True)
class EscrowAccount:
    """IPaymentEscrow.Account of `client`."""

    client: str
    balance: int
    withdraw_amount: int
    withdrawable_at: int


@dataclass(frozen=True, slots=True)
class DisputeInfo:
    """IDisputeManager.Dispute with its id."""

    dispute_id: int
    expert_id: int
    challenger: str
    bond: int
    model_hash: bytes
    request_id: bytes
    input_hash: bytes
    output_hash: bytes
    commit_ends: int
    reveal_ends: int
    status: DisputeStatus
    guilty_stake: int
    innocent_stake: int
    slashed: int
    voters: int


@dataclass(frozen=True, slots=True)
class TxResult:
    """A mined transaction: what it cost and where it landed."""

    tx_hash: bytes
    block_number: int
    gas_used: int
    effective_gas_price: int

    @property
    def fee(self) -> int:
        """Wei the sender paid for gas: gasUsed * effectiveGasPrice."""
        return self.gas_used * self.effective_gas_price


@dataclass(frozen=True, slots=True)
class Redeemed:
    """What a redeem transaction paid the expert's operator.

    Unpacks as `(paid, gas_used)`; `tx` has the hash and the exact fee for balance accounting.
    """

    paid: int
    gas_used: int
    tx: TxResult

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.paid, self.gas_used))


@dataclass(frozen=True, slots=True)
class DisputeOpenedEvent:
    dispute_id: int
    expert_id: int
    challenger: str
    model_hash: bytes
    request_id: bytes
    input_hash: bytes
    output_hash: bytes
    commit_ends: int
    reveal_ends: int
    evidence_endpoint: str
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class DisputeResolvedEvent:
    dispute_id: int
    expert_id: int
    status: DisputeStatus
    slashed: int
    burned: int
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class ExpertRegisteredEvent:
    expert_id: int
    operator: str
    model_hash: bytes
    capability: bytes
    signer: str
    price: int
    stake: int
    node_key: bytes
    endpoint: tuple[str, ...]
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class ExpertUpdatedEvent:
    expert_id: int
    signer: str
    price: int
    node_key: bytes
    endpoint: tuple[str, ...]
    block_number: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class VoteRevealedEvent:
    dispute_id: int
    verifier: str
    guilty: bool
    stake: int
    block_number: int
    tx_hash: bytes
