"""Sending a signed transaction through an RPC that may fail, and waiting for its receipt, without ever
sending it twice by mistake. Shared by `MarketChain` (market.chain.contracts) and the deployer.

- `web3_for(rpc_url, timeout)`: a Web3 on an HTTPProvider that retries (web3's own retries, of the requests
  on its list: reads, and a send of the same signed bytes, whose one nonce lets it be mined at most once)
  on a reset connection, a timeout or an HTTP error. web3's default list names the built-in
  ConnectionError, which requests never raises, so without this a reset failed the request at once.
- `send_raw(w3, raw)`: a send whose answers were lost says nothing about whether the transaction went out,
  and the resend of one that did is refused ("nonce too low", "already known"); so after a failed send the
  chain is asked for the transaction by its hash, and a known one counts as sent. The RPC's refusal is
  raised only for a transaction the chain does not know; when it cannot tell, a ChainError names the hash
  and says to look it up before sending again.
- `wait_receipt(w3, tx_hash, timeout, poll)`: polls that fail are retried until the timeout.
"""

from __future__ import annotations

import time

import requests
from eth_hash.auto import keccak
from web3 import HTTPProvider, Web3
from web3.exceptions import TransactionIndexingInProgress, TransactionNotFound, Web3RPCError
from web3.providers.rpc.utils import ExceptionRetryConfiguration
from web3.types import TxReceipt

from market.errors import ChainError

__all__ = ["NO_ANSWER", "send_raw", "wait_receipt", "web3_for"]

# Failures that say nothing about what the RPC node did with the request (its answer never arrived).
NO_ANSWER = (requests.exceptions.RequestException, ConnectionError, TimeoutError)
_RETRY = ExceptionRetryConfiguration(
    errors=(ConnectionError, requests.exceptions.ConnectionError, requests.HTTPError, requests.Timeout)
)


def web3_for(rpc_url: str, timeout: float) -> Web3:
    """A Web3 on `rpc_url` with a finite request timeout and retries on a reset connection."""
    return Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=_RETRY))


def send_raw(w3: Web3, raw: bytes) -> bytes:
    """Sends a signed transaction and returns its hash once the chain has it. Raises the RPC's refusal
    (Web3RPCError) only when the chain does not know the transaction, and a ChainError naming the hash when
    it cannot tell whether it went out."""
    tx_hash = keccak(raw)
    try:
        w3.eth.send_raw_transaction(raw)
        return tx_hash
    except (Web3RPCError, *NO_ANSWER) as exc:
        failure: BaseException = exc
    try:
        w3.eth.get_transaction(tx_hash)
        return tx_hash  # it went out: its answer was lost, or a resend of it was refused ("nonce too low")
    except TransactionNotFound:
        if isinstance(failure, Web3RPCError):
            raise failure from None
    except (Web3RPCError, *NO_ANSWER):
        pass
    raise ChainError(
        f"transaction 0x{tx_hash.hex()} may or may not have reached the chain ({failure}); look it up (or "
        "check the balance it changes) before sending it again"
    ) from failure


def wait_receipt(w3: Web3, tx_hash: bytes, timeout: float, poll: float) -> TxReceipt:
    """The receipt of a sent transaction; polls that fail are retried until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    failure: BaseException | None = None
    while True:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except (TransactionNotFound, TransactionIndexingInProgress):
            pass
        except (*NO_ANSWER, Web3RPCError) as exc:
            failure = exc
        if time.monotonic() >= deadline:
            why = f"the last poll failed: {failure}" if failure else "not mined yet"
            raise ChainError(
                f"transaction 0x{tx_hash.hex()} was sent but has no receipt after {timeout:.0f} s ({why}); "
                "it may still be mined: look it up before sending it again"
            )
        time.sleep(poll)
