"""Deploys the market (ExpertRegistry, PaymentEscrow, DisputeManager) to any EVM chain from the shipped artifacts.

`deploy_market(rpc_url, account, params)` sends four transactions from `account`: the registry, the escrow
(pointing at the registry), the dispute manager (pointing at the registry), then
`registry.setDisputeManager(disputes)`, which the registry accepts once, from its deployer. It returns the
`Deployment` (chain id, RPC URL, addresses, the registry's block, from which event readers start). No
compiler is needed: the bytecode comes from market/chain/artifacts. Parameters: market.chain.params.
"""

from __future__ import annotations

import logging
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3
from web3.types import TxReceipt

from market.chain.artifacts import load_artifact
from market.chain.errors import RevertDecoder, translate_errors
from market.chain.params import ETHER, MarketParams
from market.chain.sending import send_raw, wait_receipt, web3_for
from market.chain.signer import Signer
from market.errors import ChainError, MarketConfigError
from market.types import Deployment

__all__ = ["ETHER", "MarketParams", "deploy_market", "constructor_args"]

log = logging.getLogger(__name__)


def constructor_args(params: MarketParams, registry: str) -> dict[str, tuple[Any, ...]]:
    """The constructor arguments of each contract, in the order its constructor takes them."""
    return {
        "ExpertRegistry": (params.min_stake, params.min_verifier_stake, params.unbonding_period),
        "PaymentEscrow": (registry, params.withdraw_delay),
        "DisputeManager": (
            registry,
            params.dispute_bond,
            params.commit_period,
            params.reveal_period,
            params.quorum_stake,
            params.slash_bps,
            params.challenger_bps,
            params.verifier_bps,
            params.expert_bond_bps,
        ),
    }


class _Deployer:
    def __init__(self, w3: Web3, account: Signer, chain_id: int, receipt_timeout: float) -> None:
        self.w3 = w3
        self.account = account
        self.chain_id = chain_id
        self.receipt_timeout = receipt_timeout
        self.nonce = w3.eth.get_transaction_count(account.address, "pending")
        self.decoder = RevertDecoder(
            load_artifact(n).abi for n in ("ExpertRegistry", "PaymentEscrow", "DisputeManager")
        )

    def _fees(self) -> dict[str, int]:
        base = self.w3.eth.get_block("latest").get("baseFeePerGas")
        if base is None:
            return {"gasPrice": self.w3.eth.gas_price}
        priority = self.w3.eth.max_priority_fee
        return {"maxFeePerGas": 2 * base + priority, "maxPriorityFeePerGas": priority}

    def send(self, fn: Any, what: str) -> TxReceipt:
        params = {"from": self.account.address, "value": 0}
        with translate_errors(self.decoder):
            gas = fn.estimate_gas(params)
            tx = fn.build_transaction(
                {**params, "nonce": self.nonce, "gas": gas * 5 // 4, "chainId": self.chain_id, **self._fees()}
            )
            tx_hash = send_raw(self.w3, self.account.sign_transaction(tx))
            self.nonce += 1
            receipt = wait_receipt(self.w3, tx_hash, self.receipt_timeout, 0.1)
        if receipt["status"] != 1:
            raise ChainError(f"deploying the market failed at {what}: transaction {tx_hash.hex()} reverted")
        log.info(
            "%s: tx %s, block %d, gas %d", what, tx_hash.hex(), receipt["blockNumber"], receipt["gasUsed"]
        )
        return receipt

    def create(self, name: str, args: tuple[Any, ...]) -> tuple[str, int]:
        artifact = load_artifact(name)
        if not artifact.deployable:
            raise MarketConfigError(f"the shipped artifact of {name} has no bytecode; run `make artifacts`")
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.send(factory.constructor(*args), f"deploy {name}")
        return to_checksum_address(receipt["contractAddress"]), receipt["blockNumber"]


def deploy_market(
    rpc_url: str,
    account: Signer,
    params: MarketParams,
    *,
    rpc_timeout: float = 30.0,
    receipt_timeout: float = 300.0,
) -> Deployment:
    """Deploys the three contracts from `account` with `params` and wires them; returns the Deployment."""
    if not rpc_url.startswith(("http://", "https://")):
        raise MarketConfigError(f"the RPC URL must be http(s)://..., got {rpc_url!r}")
    w3 = web3_for(rpc_url, rpc_timeout)
    with translate_errors():
        chain_id = w3.eth.chain_id
        balance = w3.eth.get_balance(account.address)
    if balance == 0:
        raise MarketConfigError(
            f"the deployer {account.address} has no funds on chain {chain_id} to pay for gas"
        )
    deployer = _Deployer(w3, account, chain_id, receipt_timeout)
    registry, block = deployer.create("ExpertRegistry", constructor_args(params, "")["ExpertRegistry"])
    args = constructor_args(params, registry)
    escrow, _ = deployer.create("PaymentEscrow", args["PaymentEscrow"])
    disputes, _ = deployer.create("DisputeManager", args["DisputeManager"])
    registry_contract = w3.eth.contract(address=registry, abi=load_artifact("ExpertRegistry").abi)
    deployer.send(registry_contract.functions.setDisputeManager(disputes), "registry.setDisputeManager")
    deployment = Deployment(
        chain_id=chain_id, rpc_url=rpc_url, registry=registry, escrow=escrow, disputes=disputes, block=block
    )
    log.info("market deployed on chain %d: %s", chain_id, deployment)
    return deployment
