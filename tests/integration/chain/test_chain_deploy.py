"""Deploying the market from the shipped artifacts, the deployment file, and the client's view of a deployment."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from market.chain.contracts import MarketChain
from market.chain.deploy import deploy_market
from market.chain.deployment import load_deployment, save_deployment
from market.chain.devnet import ANVIL_TEST_KEYS, DEVNET_CHAIN_ID, free_port, rpc_request, throwaway_signer
from market.chain.params import MarketParams
from market.chain.signer import LocalSigner
from market.errors import ChainError, MarketConfigError


def test_session_devnet_has_the_devnet_market(isolated_devnet, chain_for) -> None:
    chain = chain_for(None)
    chain.check_deployment()
    assert chain.chain_id() == DEVNET_CHAIN_ID
    assert chain.params() == MarketParams.devnet()
    assert chain.registry.functions.disputeManager().call() == chain.deployment.disputes
    assert chain.escrow.functions.registry().call() == chain.deployment.registry
    assert chain.disputes.functions.registry().call() == chain.deployment.registry
    assert (chain.expert_count(), chain.dispute_count()) == (0, 0)


def test_deploy_from_a_fresh_account_with_other_params(isolated_devnet, funded_account, tmp_path) -> None:
    params = MarketParams.mainnet_like()
    deployer = funded_account()
    deployment = deploy_market(isolated_devnet.rpc_url, deployer, params)
    assert deployment.registry != isolated_devnet.deployment.registry
    path = save_deployment(tmp_path / "deployment.json", deployment, params.as_dict())
    chain = MarketChain(load_deployment(path))
    chain.check_deployment()
    assert chain.params() == params
    assert chain.block_number() == deployment.block + 3  # escrow, disputes, setDisputeManager


def test_deploying_needs_funds_and_an_http_url(isolated_devnet) -> None:
    with pytest.raises(MarketConfigError, match="no funds"):
        deploy_market(isolated_devnet.rpc_url, LocalSigner.generate(), MarketParams.devnet())
    with pytest.raises(MarketConfigError, match="http"):
        deploy_market("ws://127.0.0.1:1", throwaway_signer(0), MarketParams.devnet())


def test_check_deployment_catches_a_wrong_chain_or_a_stale_file(isolated_devnet) -> None:
    good = isolated_devnet.deployment
    with pytest.raises(MarketConfigError, match="serves chain"):
        MarketChain(dataclasses.replace(good, chain_id=1)).check_deployment()
    with pytest.raises(MarketConfigError, match="stale"):
        MarketChain(dataclasses.replace(good, escrow=throwaway_signer(5).address)).check_deployment()


def test_unreachable_rpc_is_a_chain_error(isolated_devnet) -> None:
    dead = dataclasses.replace(isolated_devnet.deployment, rpc_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ChainError, match="cannot reach"):
        MarketChain(dead, rpc_timeout=2).block_number()


def test_anvil_accounts_are_the_hard_coded_throwaway_keys(isolated_devnet) -> None:
    accounts = rpc_request(isolated_devnet.rpc_url, "eth_accounts")
    expected = [throwaway_signer(i).address for i in range(len(ANVIL_TEST_KEYS))]
    assert [a.lower() for a in accounts] == [a.lower() for a in expected]


def test_one_client_sends_from_many_threads(chain_for, funded_account) -> None:
    client = chain_for(funded_account())
    errors: list[BaseException] = []

    def deposit_three() -> None:
        try:
            for _ in range(3):
                client.deposit(1000)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=deposit_three) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert client.balance_of() == 12 * 1000


def test_snapshot_helpers_and_time(chain_for, funded_account) -> None:
    client = chain_for(funded_account())
    snapshot = client.devnet_snapshot()
    before = client.block_timestamp()
    assert client.increase_time(1000) >= before + 1000
    client.deposit(5)
    client.devnet_revert(snapshot)
    assert client.balance_of() == 0
    client.deposit(7)  # the nonce is taken from the node: right again after the revert
    assert client.balance_of() == 7
