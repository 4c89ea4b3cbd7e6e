"""Sending a transaction through a flaky RPC (tests/reliability/rpc_fault_proxy.py in front of the devnet).

The faults are forced one at a time on the request that matters, so each test is deterministic. What must
hold: a transaction is mined at most once whatever happens to the answers, a call that returns normally
was mined, and an error after the transaction went out says so (with its hash) instead of looking like
"not sent" (a caller who retries a deposit on such an error would deposit twice).
"""

from __future__ import annotations

import dataclasses

import pytest
from reliability.rpc_fault_proxy import SEND, FaultPlan, RpcFaultProxy

from market.chain.contracts import MarketChain
from market.errors import ChainError

AMOUNT = 10**15


@pytest.fixture
def proxy(isolated_devnet):
    with RpcFaultProxy(isolated_devnet.rpc_url, FaultPlan(delay_s=(2.0, 2.0)), enabled=False) as p:
        yield p


def flaky(devnet, proxy, signer, **kwargs) -> MarketChain:
    deployment = dataclasses.replace(devnet.deployment, rpc_url=proxy.url)
    return MarketChain(deployment, signer, poll_interval=0.02, **kwargs)


@pytest.mark.parametrize(
    ("method", "fault"),
    [
        (SEND, "lost_answer"),  # sent, the answer reset: used to raise "cannot reach the RPC node"
        (SEND, "slow_answer"),  # sent, answered after the timeout: web3 resent it, "nonce too low", and
        # the retry with the next nonce used to deposit a second time
        (SEND, "reset"),  # never reached the chain: sent again
        (SEND, "http_502"),
        ("eth_getTransactionReceipt", "reset"),  # a receipt poll that failed used to end the wait
    ],
)
def test_a_deposit_through_a_lost_or_slow_answer_is_made_exactly_once(
    isolated_devnet, proxy, funded_account, method, fault
) -> None:
    signer = funded_account()
    direct = MarketChain(isolated_devnet.deployment)
    chain = flaky(isolated_devnet, proxy, signer, rpc_timeout=1.0)
    proxy.inject(method, fault)
    chain.deposit(AMOUNT)
    assert proxy.counts[f"{fault} {method}"] == 1
    assert direct.balance_of(signer.address) == AMOUNT
    assert direct._w3.eth.get_transaction_count(signer.address) == 1  # noqa: SLF001 - one transaction


def test_an_error_after_the_transaction_went_out_says_so(isolated_devnet, funded_account) -> None:
    """The answer is lost and then the RPC fails every request: an error, but one naming the sent
    transaction, and the deposit was made once (a caller must check before depositing again)."""
    signer = funded_account()
    direct = MarketChain(isolated_devnet.deployment)
    with RpcFaultProxy(isolated_devnet.rpc_url, FaultPlan(reset_p=1.0), enabled=False) as proxy:
        chain = flaky(isolated_devnet, proxy, signer, rpc_timeout=1.0, receipt_timeout=1.0)
        proxy.inject(SEND, "lost_answer")
        original = proxy.forward

        def forward_then_break(body: bytes):  # everything after the send fails
            proxy.enabled = proxy.enabled or SEND.encode() in body
            return original(body)

        proxy.forward = forward_then_break  # type: ignore[method-assign]
        with pytest.raises(ChainError) as info:
            chain.deposit(AMOUNT)
    assert "0x" in str(info.value) and "before sending it again" in str(info.value), str(info.value)
    assert direct.balance_of(signer.address) == AMOUNT


@pytest.mark.parametrize("method", ["eth_call", "eth_estimateGas", "eth_getTransactionCount"])
def test_a_request_whose_connection_was_reset_is_retried(isolated_devnet, proxy, funded_account, method) -> None:
    """web3 retries its read requests on HTTP errors and timeouts, but its list of retried errors names the
    built-in ConnectionError, which requests never raises: a reset connection failed the call at once."""
    signer = funded_account()
    chain = flaky(isolated_devnet, proxy, signer)
    proxy.inject(method, "reset")
    chain.deposit(AMOUNT)
    assert chain.balance_of() == AMOUNT
    assert proxy.counts[f"reset {method}"] == 1
