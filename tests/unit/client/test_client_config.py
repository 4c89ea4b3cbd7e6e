"""ClientConfig validation, key handling, the deposit check (Funds) and the registry cache (ExpertDirectory)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from client_fakes import DEPLOYMENT, PRICE, Market

from market.audit import AuditPolicy
from market.chain.deployment import save_deployment
from market.chain.signer import LocalSigner
from market.client import ClientConfig
from market.client.config import load_account, resolve_deployment
from market.client.core import capability_bytes
from market.client.discovery import ExpertDirectory
from market.client.funds import Funds
from market.errors import InsufficientDepositError, MarketConfigError, MarketInputError
from market.gate import GatePolicy
from market.reputation import ReputationParams
from market.wallet import VoucherBook

KEY = "0x" + "ab" * 32


def test_the_key_never_shows_in_repr() -> None:
    config = ClientConfig(deployment=DEPLOYMENT, unsafe_private_key=KEY, keystore_password=None)
    assert "ab" * 8 not in repr(config)
    assert load_account(config).address.startswith("0x")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unsafe_private_key": KEY, "account": LocalSigner.generate()}, "one way only"),
        ({"keystore": "k.json"}, "keystore_password"),
        ({"redundancy": 0}, "redundancy"),
        ({"quorum": 0}, "quorum"),
        ({"max_price": -1}, "max_price"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"call_timeout_s": float("inf")}, "call_timeout_s"),
        ({"max_rows_per_call": 0}, "max_rows_per_call"),
        ({"evidence_endpoint": "/ip4/127.0.0.1/tcp/1"}, "/p2p/"),
        ({"audit": 0.1}, "AuditPolicy"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(MarketConfigError, match=message):
        ClientConfig(deployment=DEPLOYMENT, **kwargs)


def test_keystore_and_deployment_file(tmp_path: Path) -> None:
    signer = LocalSigner.generate()
    keystore = signer.to_keystore(tmp_path / "key.json", "pw", kdf="pbkdf2", iterations=2)
    path = save_deployment(tmp_path / "deployment.json", DEPLOYMENT)
    config = ClientConfig(deployment=path, keystore=keystore, keystore_password="pw")
    assert load_account(config).address == signer.address
    assert resolve_deployment(config.deployment) == DEPLOYMENT
    bad = ClientConfig(deployment=path, keystore=keystore, keystore_password="wrong")
    with pytest.raises(MarketConfigError, match="wrong password"):
        load_account(bad)
    with pytest.raises(MarketConfigError, match="no deployment file"):
        resolve_deployment(tmp_path / "missing.json")
    assert json.loads(path.read_text())["chain_id"] == DEPLOYMENT.chain_id


def test_audit_policy_is_the_default_check_when_set() -> None:
    config = ClientConfig(deployment=DEPLOYMENT, audit=AuditPolicy(0.05))
    assert "audit 5%" in config.checking_description()


def test_capability_keys() -> None:
    from market.chain.contracts import capability_id

    assert capability_bytes("digits-expert-0") == capability_id("digits-expert-0")
    assert capability_bytes(b"\x01" * 32) == b"\x01" * 32
    assert capability_bytes("0x" + "02" * 32) == b"\x02" * 32
    with pytest.raises(MarketInputError):
        capability_bytes(b"short")


# -- Funds --------------------------------------------------------------------------------------------


class Escrow:
    def __init__(self, balance: int) -> None:
        self.balance = balance
        self.withdraw_amount = 0
        self.redeemed_amounts: dict[int, int] = {}
        self.reads = 0

    def escrow_account(self, client: str | None = None) -> SimpleNamespace:
        self.reads += 1
        return SimpleNamespace(balance=self.balance, withdraw_amount=self.withdraw_amount)

    def redeemed(self, client: str, expert_id: int) -> int:
        return self.redeemed_amounts.get(expert_id, 0)


@pytest.fixture
def wallet(tmp_path: Path) -> Any:
    with VoucherBook(tmp_path / "w.db", escrow=DEPLOYMENT.escrow, chain_id=1, client="0x" + "cc" * 20) as book:
        yield book


def test_funds_refuse_what_the_deposit_does_not_cover(wallet: VoucherBook) -> None:
    escrow = Escrow(3 * PRICE)
    funds = Funds(escrow, wallet, "0x" + "cc" * 20)
    funds.check(3 * PRICE)
    for _ in range(3):
        wallet.confirm(1, funds.reserve(1, PRICE))
    with pytest.raises(InsufficientDepositError, match=r"only 0 wei .* 3000 wei signed to experts and not yet redeemed"):
        funds.reserve(1, PRICE)
    assert wallet.spent() == 3 * PRICE


def test_funds_survive_redemptions_and_see_deposits_after_a_refresh(wallet: VoucherBook) -> None:
    escrow = Escrow(2 * PRICE)
    funds = Funds(escrow, wallet, "0x" + "cc" * 20)
    wallet.confirm(1, funds.reserve(1, PRICE))
    # The node redeems: the snapshot's sum balance + redeemed does not move, the free amount neither.
    escrow.balance, escrow.redeemed_amounts[1] = PRICE, PRICE
    assert funds.free() == PRICE
    funds.refresh()
    assert funds.free() == PRICE
    wallet.confirm(1, funds.reserve(1, PRICE))
    escrow.balance += 5 * PRICE  # a deposit made elsewhere: seen when the check would refuse
    wallet.confirm(1, funds.reserve(1, PRICE))
    assert wallet.spent() == 3 * PRICE


def test_funds_count_a_pending_withdrawal(wallet: VoucherBook) -> None:
    escrow = Escrow(3 * PRICE)
    escrow.withdraw_amount = 2 * PRICE
    funds = Funds(escrow, wallet, "0x" + "cc" * 20)
    with pytest.raises(InsufficientDepositError, match="pending withdrawal"):
        funds.check(2 * PRICE)


# -- ExpertDirectory ------------------------------------------------------------------------------------


def test_directory_caches_and_refreshes(market: Market) -> None:
    market.add_expert()
    now = [0.0]
    directory = ExpertDirectory(
        market.chain, params=ReputationParams(), policy=GatePolicy(), ttl_s=10, full_refresh_s=100,
        clock=lambda: now[0],
    )

    async def main() -> None:
        assert [e.expert_id for e in await directory.ensure(market.model_hash)] == [1]
        reads = market.chain.reads
        market.add_expert()
        assert [e.expert_id for e in await directory.ensure(market.model_hash)] == [1]  # cached
        assert market.chain.reads == reads
        now[0] = 150.0  # past the full refresh
        assert [e.expert_id for e in await directory.ensure(market.model_hash)] == [1, 2]
        market.add_expert()
        assert len(await directory.ensure(market.model_hash, refresh=True)) == 3
        assert directory.get(3) is not None

    trio.run(main)


def test_directory_follows_registry_events(market: Market) -> None:
    first = market.add_expert()
    now = [0.0]
    directory = ExpertDirectory(
        market.chain, params=ReputationParams(), policy=GatePolicy(), ttl_s=10, full_refresh_s=1000,
        clock=lambda: now[0],
    )
    from dataclasses import replace

    async def main() -> None:
        await directory.ensure(market.model_hash)
        new = market.add_expert()
        market.chain.experts[1] = replace(first.info, price=5 * PRICE)
        market.chain.block = 12
        market.chain.experts_registered = lambda *a: [  # type: ignore[method-assign]
            SimpleNamespace(expert_id=new.info.expert_id, model_hash=new.info.model_hash, capability=new.info.capability)
        ]
        market.chain.experts_updated = lambda *a: [SimpleNamespace(expert_id=1)]  # type: ignore[method-assign]
        now[0] = 11.0
        infos = await directory.ensure(market.model_hash)
        assert [(e.expert_id, e.price) for e in infos] == [(1, 5 * PRICE), (2, PRICE)]

    trio.run(main)
