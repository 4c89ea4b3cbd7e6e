"""`ClientConfig`: everything a client needs, frozen and validated once, and the account it signs with.

The account is given exactly one way: `account` (a `LocalSigner` object, e.g. from a keystore loaded by the
caller), `keystore` + `keystore_password`, or `unsafe_private_key` (a hex key written in clear: throwaway and
devnet keys only, the name says so). Keys and passwords never appear in `repr` or in error messages.

State directory layout (default ``~/.moe/client``)::

    identity.key                      the client's libp2p ed25519 seed (0600; it holds no money: it only names
                                      the peer that serves dispute evidence, so a restart keeps the endpoint)
    manifests/<modelHash>.json        manifests fetched by hash (re-hashed on every read)
    <chain id>-<registry>/wallet.db   the voucher book (market.wallet)
    <chain id>-<registry>/reputation.json
    <chain id>-<registry>/disputes.json
    <chain id>-<registry>/evidence/   tensors of dissenting answers, served for disputes

It must not: log or print keys, touch the network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from market.audit import AuditPolicy
from market.errors import MarketConfigError
from market.gate import GatePolicy
from market.reputation import ReputationParams
from market.transport import TransportConfig
from market.types import Deployment

if TYPE_CHECKING:
    from market.chain.signer import LocalSigner

__all__ = ["DEFAULT_STATE_DIR", "ClientConfig", "load_account", "resolve_deployment"]

DEFAULT_STATE_DIR = Path("~/.moe/client")


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 < value < math.inf):
        raise MarketConfigError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How a client talks to the market. Times are seconds, amounts wei.

    Checking: every call goes to `redundancy` operator-distinct experts and the majority (at least `quorum`,
    default a strict majority of `redundancy`) wins; or, when `audit` is set, to one expert, a share
    `audit.rate` of calls also to a second one, escalating to `audit.escalate_to` experts on a mismatch.
    `max_price` (per call and expert) and `min_stake` filter experts; `deadline_s` bounds a whole call,
    failover included, and `call_timeout_s` one attempt at one expert (then the next expert is tried).
    `auto_dispute` opens a dispute (paying the bond) against each expert caught in the minority, at most one
    open dispute per expert.
    """

    deployment: Deployment | str | os.PathLike[str]
    account: LocalSigner | None = field(default=None, repr=False)
    unsafe_private_key: str | None = field(default=None, repr=False)
    keystore: str | os.PathLike[str] | None = None
    keystore_password: str | None = field(default=None, repr=False)
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR
    transport: TransportConfig | None = None
    redundancy: int = 1
    audit: AuditPolicy | None = None
    quorum: int | None = None
    max_price: int | None = None
    min_stake: int = 0
    deadline_s: float = 30.0
    call_timeout_s: float = 10.0
    gate: GatePolicy = field(default_factory=GatePolicy)
    reputation: ReputationParams | None = None
    registry_ttl_s: float = 15.0
    registry_full_refresh_s: float = 300.0
    down_for_s: float = 30.0
    auto_dispute: bool = False
    max_rows_per_call: int = 256
    rpc_timeout_s: float = 15.0
    tx_timeout_s: float = 120.0
    manifest_timeout_s: float = 60.0
    evidence_endpoint: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        given = [self.account is not None, self.unsafe_private_key is not None, self.keystore is not None]
        if sum(given) > 1:
            raise MarketConfigError("give the client's key one way only: account, keystore or unsafe_private_key")
        if self.keystore is not None and self.keystore_password is None:
            raise MarketConfigError("a keystore needs keystore_password (read it from the environment, not code)")
        if type(self.redundancy) is not int or self.redundancy < 1:
            raise MarketConfigError(f"redundancy must be an integer >= 1, got {self.redundancy!r}")
        if self.audit is not None and not isinstance(self.audit, AuditPolicy):
            raise MarketConfigError("audit must be a market.audit.AuditPolicy")
        if self.quorum is not None and (type(self.quorum) is not int or self.quorum < 1):
            raise MarketConfigError(f"quorum must be an integer >= 1, got {self.quorum!r}")
        if self.max_price is not None and (type(self.max_price) is not int or self.max_price < 0):
            raise MarketConfigError(f"max_price must be wei >= 0 or None, got {self.max_price!r}")
        if type(self.min_stake) is not int or self.min_stake < 0:
            raise MarketConfigError(f"min_stake must be wei >= 0, got {self.min_stake!r}")
        for name in (
            "deadline_s", "call_timeout_s", "registry_ttl_s", "registry_full_refresh_s", "down_for_s",
            "rpc_timeout_s", "tx_timeout_s", "manifest_timeout_s",
        ):
            _positive(name, getattr(self, name))
        if type(self.max_rows_per_call) is not int or self.max_rows_per_call < 1:
            raise MarketConfigError(f"max_rows_per_call must be an integer >= 1, got {self.max_rows_per_call!r}")
        if not isinstance(self.gate, GatePolicy):
            raise MarketConfigError("gate must be a market.gate.GatePolicy")
        if self.evidence_endpoint is not None and "/p2p/" not in self.evidence_endpoint:
            raise MarketConfigError("evidence_endpoint must be a full multiaddr ending in /p2p/<peer id>")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    def checking_description(self) -> str:
        if self.audit is not None:
            return f"audit {self.audit.rate:.0%} (escalate to {self.audit.escalate_to})"
        return f"redundancy {self.redundancy}"


def resolve_deployment(value: Deployment | str | os.PathLike[str]) -> Deployment:
    """A Deployment, from itself or from the deployment JSON file at a path."""
    if isinstance(value, Deployment):
        return value
    if isinstance(value, Mapping):
        from market.chain.deployment import deployment_from_dict

        return deployment_from_dict(value)
    if isinstance(value, str | os.PathLike):
        from market.chain.deployment import load_deployment

        return load_deployment(value)
    raise MarketConfigError(f"deployment must be a Deployment or a path, got {type(value).__name__}")


def load_account(config: ClientConfig) -> LocalSigner:
    """The client's signer, from whichever of account / keystore / unsafe_private_key the config holds."""
    from market.chain.signer import LocalSigner, signer_from_keystore, unsafe_signer_from_hex

    if config.account is not None:
        if not isinstance(config.account, LocalSigner):
            raise MarketConfigError(
                "account must be a market.chain.signer.LocalSigner (vouchers are signed in this process)"
            )
        return config.account
    if config.keystore is not None:
        assert config.keystore_password is not None  # checked in __post_init__
        return signer_from_keystore(config.keystore, config.keystore_password)
    if config.unsafe_private_key is not None:
        return unsafe_signer_from_hex(config.unsafe_private_key)
    raise MarketConfigError(
        "no client account: pass account=, keystore= (+ keystore_password=) or unsafe_private_key= "
        "(a throwaway devnet key) in ClientConfig"
    )


def describe(config: ClientConfig) -> dict[str, Any]:
    """The non-secret settings, for logs and `moe client` output."""
    return {
        "state_dir": str(config.state_path),
        "checking": config.checking_description(),
        "max_price": config.max_price,
        "deadline_s": config.deadline_s,
        "auto_dispute": config.auto_dispute,
    }
