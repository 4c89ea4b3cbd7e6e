"""`MarketChain`: the blocking client of the three market contracts (registry, escrow, dispute manager).

Built from a `Deployment` and, for anything that sends a transaction, a `Signer`. Every call blocks (web3's
HTTPProvider with finite timeouts), so async callers run it in worker threads; one instance may be shared
by threads. Sending goes: estimate gas (a revert surfaces here, decoded into a named
`ContractRevertError`), then under a lock take the pending nonce from the node, sign locally and send,
then wait for the receipt with a finite timeout. Taking the nonce from the node each time keeps it right
when another process uses the same account or a devnet reverts to a snapshot.

A flaky RPC: requests are retried on a reset connection, and a send whose answer was lost is looked up by
its hash rather than sent again (market.chain.sending); only a nonce refused for a transaction the chain
does not know is replaced by the next one. An error after a transaction may have gone out names its hash.

Reverts and RPC failures leave this module only as market errors (market.chain.errors). Methods whose name
starts with `devnet_` or `increase_time` use anvil-only RPC methods and must not be used on a real chain.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from eth_hash.auto import keccak
from eth_utils import is_address, to_checksum_address
from web3.contract.contract import Contract, ContractFunction
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.logs import DISCARD
from web3.types import TxReceipt

from market.chain.artifacts import load_abi
from market.chain.deployment import load_deployment
from market.chain.errors import default_decoder, translate_errors
from market.chain.params import MarketParams
from market.chain.records import (
    DisputeInfo,
    DisputeOpenedEvent,
    DisputeResolvedEvent,
    EscrowAccount,
    ExpertRegisteredEvent,
    ExpertUpdatedEvent,
    Redeemed,
    TxResult,
    VerifierInfo,
    VoteRevealedEvent,
)
from market.chain.sending import send_raw, wait_receipt, web3_for
from market.chain.signer import Signer
from market.errors import ChainError, ContractRevertError, MarketConfigError, MarketInputError
from market.types import (
    Deployment,
    DisputeStatus,
    ExpertInfo,
    ExpertStatus,
    Receipt,
    SignedReceipt,
    SignedVoucher,
    Voucher,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_RPC_TIMEOUT = 30.0
DEFAULT_RECEIPT_TIMEOUT = 120.0
GAS_MARGIN_NUM, GAS_MARGIN_DEN = 5, 4  # 25% over the estimate: state may move between estimate and mining
NONCE_ATTEMPTS = 3
_LOG_CHUNK = 10_000  # blocks per eth_getLogs request (public RPCs cap ranges)


def capability_id(name: str) -> bytes:
    """The on-chain capability key: keccak256 of the capability name (e.g. "digits-expert")."""
    return keccak(name.encode())


def commitment_for(dispute_id: int, guilty: bool, salt: bytes, voter: str) -> bytes:
    """keccak256(abi.encode(disputeId, guilty, salt, voter)): what a verifier commits before revealing."""
    if len(salt) != 32:
        raise MarketInputError("a vote salt must be 32 bytes")
    if not is_address(voter):
        raise MarketInputError(f"voter must be an address, got {voter!r}")
    return keccak(
        dispute_id.to_bytes(32, "big")
        + (1 if guilty else 0).to_bytes(32, "big")
        + bytes(salt)
        + bytes(12)
        + bytes.fromhex(voter[2:])
    )


def _endpoint_string(endpoint: Sequence[str]) -> str:
    if isinstance(endpoint, str):
        endpoint = endpoint.split()
    parts = [str(p) for p in endpoint]
    for part in parts:
        if not part or any(c.isspace() for c in part):
            raise MarketInputError(
                f"endpoint addresses must be non-empty and contain no spaces, got {part!r}"
            )
    return " ".join(parts)


def _bytes32(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise MarketInputError(f"{what} must be 32 bytes")
    return bytes(value)


def _voucher_tuple(voucher: Voucher) -> tuple[str, int, int]:
    return (to_checksum_address(voucher.client), voucher.expert_id, voucher.cumulative_amount)


def _receipt_tuple(receipt: Receipt) -> tuple[int, bytes, bytes, bytes, bytes, int]:
    return (
        receipt.expert_id,
        _bytes32(receipt.model_hash, "model hash"),
        _bytes32(receipt.request_id, "request id"),
        _bytes32(receipt.input_hash, "input hash"),
        _bytes32(receipt.output_hash, "output hash"),
        receipt.price,
    )


class MarketChain:
    """Blocking access to the market contracts of one deployment."""

    def __init__(
        self,
        deployment: Deployment,
        account: Signer | None = None,
        *,
        rpc_timeout: float = DEFAULT_RPC_TIMEOUT,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
        poll_interval: float = 0.1,
    ) -> None:
        self.deployment = deployment
        self.account = account
        self._rpc_timeout = rpc_timeout
        self._receipt_timeout = receipt_timeout
        self._poll_interval = poll_interval
        self._w3 = web3_for(deployment.rpc_url, rpc_timeout)
        self.registry = self._w3.eth.contract(
            address=to_checksum_address(deployment.registry), abi=load_abi("ExpertRegistry")
        )
        self.escrow = self._w3.eth.contract(
            address=to_checksum_address(deployment.escrow), abi=load_abi("PaymentEscrow")
        )
        self.disputes = self._w3.eth.contract(
            address=to_checksum_address(deployment.disputes), abi=load_abi("DisputeManager")
        )
        self._send_lock = threading.Lock()
        self._local = threading.local()
        self._params: MarketParams | None = None
        self._max_page: int | None = None
        self._decoder = default_decoder()

    @classmethod
    def from_deployment_file(
        cls, path: str | Path, account: Signer | None = None, **kwargs: Any
    ) -> MarketChain:
        """A client of the deployment saved at `path` (see market.chain.deployment)."""
        return cls(load_deployment(path), account, **kwargs)

    def __repr__(self) -> str:
        who = self.account.address if self.account else "read-only"
        return (
            f"MarketChain(chain_id={self.deployment.chain_id}, rpc={self.deployment.rpc_url}, account={who})"
        )

    @property
    def address(self) -> str | None:
        """The account's address, or None for a read-only client."""
        return self.account.address if self.account else None

    def with_account(self, account: Signer) -> MarketChain:
        """Another client of the same deployment that sends as `account`."""
        return MarketChain(
            self.deployment,
            account,
            rpc_timeout=self._rpc_timeout,
            receipt_timeout=self._receipt_timeout,
            poll_interval=self._poll_interval,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Plumbing
    # ------------------------------------------------------------------------------------------------------------

    def _view(self, fn: Callable[[], T]) -> T:
        with translate_errors(self._decoder):
            return fn()

    def _require_account(self) -> Signer:
        if self.account is None:
            raise MarketConfigError("this operation sends a transaction: configure an account (a keystore)")
        return self.account

    def _fees(self) -> dict[str, int]:
        block = self._w3.eth.get_block("latest")
        base = block.get("baseFeePerGas")
        if base is None:
            return {"gasPrice": self._w3.eth.gas_price}
        priority = self._w3.eth.max_priority_fee
        return {"maxFeePerGas": 2 * base + priority, "maxPriorityFeePerGas": priority}

    def _transact(self, contract: Contract, function: str, *args: Any, value: int = 0) -> TxReceipt:
        """Sends `contract.function(*args)` with `value` wei; returns the successful receipt or raises the
        decoded revert (arguments the ABI refuses raise MarketInputError)."""
        account = self._require_account()
        params: dict[str, Any] = {"from": account.address, "value": value}
        with translate_errors(self._decoder):
            fn = getattr(contract.functions, function)(*args)
            # Also the pre-flight: a revert is raised here with its data. Estimated against the pending block,
            # whose timestamp is "now": on a quiet chain (anvil's automine) the latest block can be minutes
            # old, and a call that depends on time (resolving a dispute) would wrongly revert against it.
            gas = fn.estimate_gas(params, block_identifier="pending")
            fees = self._fees()
            with self._send_lock:
                for attempt in range(NONCE_ATTEMPTS):
                    nonce = self._w3.eth.get_transaction_count(account.address, "pending")
                    tx = fn.build_transaction(
                        {
                            **params,
                            "nonce": nonce,
                            "gas": gas * GAS_MARGIN_NUM // GAS_MARGIN_DEN,
                            "chainId": self.deployment.chain_id,
                            **fees,
                        }
                    )
                    try:
                        tx_hash = send_raw(self._w3, account.sign_transaction(tx))
                        break
                    except Web3RPCError as exc:
                        # Another process sending from the same account took this nonce: take the next one.
                        if "nonce" not in str(exc).lower() or attempt == NONCE_ATTEMPTS - 1:
                            raise
                        log.debug("nonce %d taken (%s); retrying", nonce, exc)
            receipt = wait_receipt(self._w3, tx_hash, self._receipt_timeout, self._poll_interval)
        self._local.last = TxResult(
            tx_hash=bytes(receipt["transactionHash"]),
            block_number=receipt["blockNumber"],
            gas_used=receipt["gasUsed"],
            effective_gas_price=receipt.get("effectiveGasPrice", tx.get("gasPrice", 0)),
        )
        if receipt["status"] != 1:
            raise self._failure(fn, params, receipt)
        log.debug(
            "tx %s mined in block %d (%s)",
            receipt["transactionHash"].hex(),
            receipt["blockNumber"],
            fn.fn_name,
        )
        return receipt

    def _failure(self, fn: ContractFunction, params: dict[str, Any], receipt: TxReceipt) -> ChainError:
        """Why a mined transaction reverted: replays it as a call on the state it ran against."""
        try:
            with translate_errors(self._decoder):
                fn.call(params, block_identifier=receipt["blockNumber"] - 1)
        except ContractRevertError as exc:
            return exc
        except ChainError:
            pass
        return ChainError(
            f"transaction {receipt['transactionHash'].hex()} reverted (out of gas or state changed)"
        )

    def last_transaction(self) -> TxResult | None:
        """The last transaction this thread sent through this client (hash, gas used, fee)."""
        return getattr(self._local, "last", None)

    def _events(self, receipt: TxReceipt, contract: Any, event: str) -> list[Any]:
        return list(getattr(contract.events, event)().process_receipt(receipt, errors=DISCARD))

    def _logs(self, contract: Any, event: str, from_block: int, to_block: int | str | None) -> list[Any]:
        end = self.block_number() if to_block in (None, "latest") else int(to_block)
        out: list[Any] = []
        start = max(0, int(from_block))
        with translate_errors(self._decoder):
            while start <= end:
                stop = min(end, start + _LOG_CHUNK - 1)
                out.extend(getattr(contract.events, event)().get_logs(from_block=start, to_block=stop))
                start = stop + 1
        return out

    # ------------------------------------------------------------------------------------------------------------
    # Chain
    # ------------------------------------------------------------------------------------------------------------

    def chain_id(self) -> int:
        return self._view(lambda: self._w3.eth.chain_id)

    def block_number(self) -> int:
        return self._view(lambda: self._w3.eth.block_number)

    def block_timestamp(self, block: int | str = "latest") -> int:
        """Timestamp of `block` (default: the latest), the clock every contract deadline is measured on."""
        return self._view(lambda: self._w3.eth.get_block(block)["timestamp"])

    def native_balance(self, address: str | None = None) -> int:
        """Wei held by `address` (default: this client's account)."""
        who = address or self._require_account().address
        return self._view(lambda: self._w3.eth.get_balance(to_checksum_address(who)))

    def send_value(self, to: str, amount: int) -> TxResult:
        """Sends `amount` wei from this client's account to `to` (funding a node's hot signer for gas)."""
        account = self._require_account()
        with translate_errors(self._decoder), self._send_lock:
            tx: dict[str, Any] = {
                "from": account.address,
                "to": to_checksum_address(to),
                "value": amount,
                "gas": 21_000,
                "chainId": self.deployment.chain_id,
                "nonce": self._w3.eth.get_transaction_count(account.address, "pending"),
                **self._fees(),
            }
            tx_hash = send_raw(self._w3, account.sign_transaction(tx))
            receipt = wait_receipt(self._w3, tx_hash, self._receipt_timeout, self._poll_interval)
        if receipt["status"] != 1:
            raise ChainError(f"sending {amount} wei to {to} failed")
        return TxResult(
            tx_hash=bytes(receipt["transactionHash"]),
            block_number=receipt["blockNumber"],
            gas_used=receipt["gasUsed"],
            effective_gas_price=receipt.get("effectiveGasPrice", 0),
        )

    def check_deployment(self) -> None:
        """MarketConfigError unless the RPC serves the deployment's chain and the three contracts have code."""
        chain_id = self.chain_id()
        if chain_id != self.deployment.chain_id:
            raise MarketConfigError(
                f"the RPC at {self.deployment.rpc_url} serves chain {chain_id}, "
                f"but the deployment is for chain {self.deployment.chain_id}"
            )
        for name, contract in (
            ("registry", self.registry),
            ("escrow", self.escrow),
            ("disputes", self.disputes),
        ):
            code = self._view(lambda c=contract: self._w3.eth.get_code(c.address))
            if len(code) == 0:
                raise MarketConfigError(
                    f"no contract at the {name} address {contract.address} on chain {chain_id}: "
                    "the deployment file is stale (a restarted devnet?); run `moe devnet up` or `moe deploy` again"
                )

    def params(self) -> MarketParams:
        """The deployed contracts' constructor parameters, read from the chain (cached: they are immutable)."""
        if self._params is None:
            r, e, d = self.registry.functions, self.escrow.functions, self.disputes.functions
            self._params = self._view(
                lambda: MarketParams(
                    min_stake=r.MIN_STAKE().call(),
                    min_verifier_stake=r.MIN_VERIFIER_STAKE().call(),
                    unbonding_period=r.UNBONDING_PERIOD().call(),
                    withdraw_delay=e.WITHDRAW_DELAY().call(),
                    dispute_bond=d.DISPUTE_BOND().call(),
                    commit_period=d.COMMIT_PERIOD().call(),
                    reveal_period=d.REVEAL_PERIOD().call(),
                    quorum_stake=d.QUORUM_STAKE().call(),
                    slash_bps=d.SLASH_BPS().call(),
                    challenger_bps=d.CHALLENGER_BPS().call(),
                    verifier_bps=d.VERIFIER_BPS().call(),
                    expert_bond_bps=d.EXPERT_BOND_BPS().call(),
                )
            )
        return self._params

    def dispute_params(self) -> MarketParams:
        """Same as params(): the dispute bond, periods, quorum and shares are fields of it."""
        return self.params()

    # ------------------------------------------------------------------------------------------------------------
    # Registry: experts
    # ------------------------------------------------------------------------------------------------------------

    def register_expert(
        self,
        signer: str,
        model_hash: bytes,
        capability: bytes,
        price: int,
        node_key: bytes,
        endpoint: Sequence[str],
        stake: int,
    ) -> int:
        """Stakes `stake` wei and registers an expert operated by this account; returns its id."""
        expert = (
            to_checksum_address(signer),
            _bytes32(model_hash, "model hash"),
            _bytes32(capability, "capability"),
            price,
            _bytes32(node_key, "node key"),
            _endpoint_string(endpoint),
        )
        receipt = self._transact(self.registry, "registerExpert", expert, value=stake)
        (event,) = self._events(receipt, self.registry, "ExpertRegistered")
        return int(event["args"]["expertId"])

    def update_expert(
        self, expert_id: int, signer: str, price: int, node_key: bytes, endpoint: Sequence[str]
    ) -> None:
        """Changes signer, price, node key and endpoint of an active expert (operator only)."""
        self._transact(
            self.registry,
            "updateExpert",
            expert_id,
            to_checksum_address(signer),
            price,
            _bytes32(node_key, "node key"),
            _endpoint_string(endpoint),
        )

    def add_stake(self, expert_id: int, amount: int) -> None:
        self._transact(self.registry, "addStake", expert_id, value=amount)

    def request_unbond(self, expert_id: int) -> int:
        """Starts unbonding; returns when the stake can be withdrawn (a block timestamp)."""
        receipt = self._transact(self.registry, "requestUnbond", expert_id)
        (event,) = self._events(receipt, self.registry, "UnbondingRequested")
        return int(event["args"]["unbondsAt"])

    def withdraw_stake(self, expert_id: int) -> int:
        """Pays the stake to the operator once unbonding is over; returns the amount."""
        receipt = self._transact(self.registry, "withdrawStake", expert_id)
        (event,) = self._events(receipt, self.registry, "StakeWithdrawn")
        return int(event["args"]["amount"])

    def expert_count(self) -> int:
        return self._view(lambda: self.registry.functions.expertCount().call())

    def _expert_info(self, expert_id: int, raw: Sequence[Any], volume: int) -> ExpertInfo:
        (
            operator, price, signer, stake, model_hash, capability, node_key, registered_at,
            unbonds_at, slashed_total, disputes_lost, open_disputes, status, endpoint,
        ) = raw  # fmt: skip
        if status == ExpertStatus.NONE:
            raise ContractRevertError(
                "RegistryUnknownExpert",
                {"expertId": expert_id},
                f"RegistryUnknownExpert(expertId={expert_id})",
            )
        return ExpertInfo(
            expert_id=expert_id,
            operator=operator,
            signer=signer,
            model_hash=bytes(model_hash),
            capability=bytes(capability),
            price=price,
            stake=stake,
            node_key=bytes(node_key),
            endpoint=tuple(endpoint.split()),
            registered_at=registered_at,
            unbonds_at=unbonds_at,
            slashed_total=slashed_total,
            disputes_lost=disputes_lost,
            open_disputes=open_disputes,
            status=ExpertStatus(status),
            volume=volume,
        )

    def get_expert(self, expert_id: int) -> ExpertInfo:
        """The registry's record of `expert_id` plus the volume the escrow paid it."""
        raw, volume = self._view(
            lambda: (
                self.registry.functions.getExpert(expert_id).call(),
                self.escrow.functions.expertVolume(expert_id).call(),
            )
        )
        return self._expert_info(expert_id, raw, volume)

    def get_experts(self, expert_ids: Iterable[int]) -> list[ExpertInfo]:
        """Several experts in one JSON-RPC batch (falls back to one call each where batches are refused)."""
        ids = list(expert_ids)
        if not ids:
            return []
        try:
            with translate_errors(self._decoder), self._w3.batch_requests() as batch:
                for i in ids:
                    batch.add(self.registry.functions.getExpert(i))
                    batch.add(self.escrow.functions.expertVolume(i))
                results = batch.execute()
        except ContractRevertError:
            raise
        except ChainError as exc:
            log.debug("batch request refused (%s); reading experts one by one", exc)
            return [self.get_expert(i) for i in ids]
        return [self._expert_info(i, results[2 * k], results[2 * k + 1]) for k, i in enumerate(ids)]

    def _max_page_size(self) -> int:
        if self._max_page is None:
            self._max_page = self._view(lambda: self.registry.functions.MAX_PAGE().call())
        return self._max_page

    def _all_ids(
        self, count_fn: ContractFunction, page_fn: Callable[[int, int], ContractFunction]
    ) -> list[int]:
        count = self._view(count_fn.call)
        page = self._max_page_size()
        ids: list[int] = []
        for offset in range(0, count, page):
            ids.extend(self._view(lambda o=offset: page_fn(o, page).call()))
        return ids

    def expert_ids_by_model(self, model_hash: bytes) -> list[int]:
        key = _bytes32(model_hash, "model hash")
        return self._all_ids(
            self.registry.functions.countByModel(key),
            lambda o, n: self.registry.functions.expertsByModel(key, o, n),
        )

    def expert_ids_by_capability(self, capability: bytes) -> list[int]:
        key = _bytes32(capability, "capability")
        return self._all_ids(
            self.registry.functions.countByCapability(key),
            lambda o, n: self.registry.functions.expertsByCapability(key, o, n),
        )

    def experts_by_model(self, model_hash: bytes) -> list[ExpertInfo]:
        """Every expert (any status) registered for `model_hash`, all pages."""
        return self.get_experts(self.expert_ids_by_model(model_hash))

    def experts_by_capability(self, capability: bytes) -> list[ExpertInfo]:
        """Every expert (any status) registered for `capability` (see capability_id), all pages."""
        return self.get_experts(self.expert_ids_by_capability(capability))

    def was_signer(self, expert_id: int, signer: str) -> bool:
        return self._view(
            lambda: self.registry.functions.wasSigner(expert_id, to_checksum_address(signer)).call()
        )

    # ------------------------------------------------------------------------------------------------------------
    # Registry: verifiers
    # ------------------------------------------------------------------------------------------------------------

    def register_verifier(self, stake: int) -> None:
        self._transact(self.registry, "registerVerifier", value=stake)

    def add_verifier_stake(self, amount: int) -> None:
        self._transact(self.registry, "addVerifierStake", value=amount)

    def request_verifier_unbond(self) -> int:
        """Starts the verifier's unbonding; returns when its stake can be withdrawn."""
        receipt = self._transact(self.registry, "requestVerifierUnbond")
        (event,) = self._events(receipt, self.registry, "VerifierUnbondingRequested")
        return int(event["args"]["unbondsAt"])

    def withdraw_verifier_stake(self) -> int:
        receipt = self._transact(self.registry, "withdrawVerifierStake")
        (event,) = self._events(receipt, self.registry, "VerifierWithdrawn")
        return int(event["args"]["amount"])

    def get_verifier(self, address: str | None = None) -> VerifierInfo:
        who = to_checksum_address(address or self._require_account().address)
        stake, registered_at, unbonds_at, active = self._view(
            lambda: self.registry.functions.getVerifier(who).call()
        )
        return VerifierInfo(who, stake, registered_at, unbonds_at, active)

    def voting_stake(self, address: str | None = None) -> int:
        who = to_checksum_address(address or self._require_account().address)
        return self._view(lambda: self.registry.functions.votingStake(who).call())

    # ------------------------------------------------------------------------------------------------------------
    # Escrow
    # ------------------------------------------------------------------------------------------------------------

    def deposit(self, amount: int) -> None:
        self._transact(self.escrow, "deposit", value=amount)

    def deposit_for(self, client: str, amount: int) -> None:
        self._transact(self.escrow, "depositFor", to_checksum_address(client), value=amount)

    def balance_of(self, client: str | None = None) -> int:
        who = to_checksum_address(client or self._require_account().address)
        return self._view(lambda: self.escrow.functions.balanceOf(who).call())

    def escrow_account(self, client: str | None = None) -> EscrowAccount:
        """The client's escrow account: balance and any pending withdrawal."""
        who = to_checksum_address(client or self._require_account().address)
        balance, withdraw_amount, withdrawable_at = self._view(
            lambda: self.escrow.functions.account(who).call()
        )
        return EscrowAccount(who, balance, withdraw_amount, withdrawable_at)

    def request_withdraw(self, amount: int) -> int:
        """Asks to withdraw `amount`; returns when withdraw() may pay it (a block timestamp)."""
        receipt = self._transact(self.escrow, "requestWithdraw", amount)
        (event,) = self._events(receipt, self.escrow, "WithdrawRequested")
        return int(event["args"]["withdrawableAt"])

    def withdraw(self) -> int:
        """Pays the requested withdrawal to this account; returns the amount."""
        receipt = self._transact(self.escrow, "withdraw")
        (event,) = self._events(receipt, self.escrow, "Withdrawn")
        return int(event["args"]["amount"])

    def _redeemed(self, receipt: TxReceipt) -> Redeemed:
        paid = sum(int(ev["args"]["paid"]) for ev in self._events(receipt, self.escrow, "VoucherRedeemed"))
        tx = self.last_transaction()
        assert tx is not None  # set by _transact in this thread just before
        return Redeemed(paid=paid, gas_used=receipt["gasUsed"], tx=tx)

    def redeem(self, signed: SignedVoucher) -> Redeemed:
        """Redeems one voucher; the escrow pays the expert's operator the delta. Unpacks as (paid, gas_used)."""
        voucher = _voucher_tuple(signed.voucher)
        return self._redeemed(self._transact(self.escrow, "redeem", voucher, bytes(signed.signature)))

    def redeem_many(self, signed: Sequence[SignedVoucher]) -> Redeemed:
        """Redeems many vouchers in one transaction (all or nothing). Unpacks as (paid, gas_used)."""
        if not signed:
            raise MarketInputError("redeem_many needs at least one voucher")
        vouchers = [_voucher_tuple(s.voucher) for s in signed]
        signatures = [bytes(s.signature) for s in signed]
        return self._redeemed(self._transact(self.escrow, "redeemMany", vouchers, signatures))

    def transaction_succeeded(self, tx_hash: bytes | str) -> bool:
        """Whether the chain has a successful receipt for `tx_hash` now (False: unknown, pending or reverted;
        after a reorg that dropped it, unknown)."""
        def lookup() -> TxReceipt | None:
            try:
                return self._w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                return None

        receipt = self._view(lookup)
        return receipt is not None and receipt["status"] == 1

    def redeemed(self, client: str, expert_id: int) -> int:
        """Wei already paid on `client`'s vouchers to `expert_id`."""
        return self._view(
            lambda: self.escrow.functions.redeemed(to_checksum_address(client), expert_id).call()
        )

    def expert_volume(self, expert_id: int) -> int:
        return self._view(lambda: self.escrow.functions.expertVolume(expert_id).call())

    def onchain_voucher_digest(self, voucher: Voucher) -> bytes:
        """The escrow's own voucherDigest (for cross-checks; eip712.voucher_digest computes it locally)."""
        return bytes(self._view(lambda: self.escrow.functions.voucherDigest(_voucher_tuple(voucher)).call()))

    # ------------------------------------------------------------------------------------------------------------
    # Disputes
    # ------------------------------------------------------------------------------------------------------------

    def open_dispute(self, signed: SignedReceipt, evidence_endpoint: str) -> int:
        """Opens a dispute against a signed receipt, sending the dispute bond; returns the dispute id."""
        receipt = self._transact(
            self.disputes,
            "openDispute",
            _receipt_tuple(signed.receipt),
            bytes(signed.signature),
            evidence_endpoint,
            value=self.params().dispute_bond,
        )
        (event,) = self._events(receipt, self.disputes, "DisputeOpened")
        return int(event["args"]["disputeId"])

    def commit_vote(self, dispute_id: int, commitment: bytes) -> None:
        self._transact(self.disputes, "commitVote", dispute_id, _bytes32(commitment, "commitment"))

    def reveal_vote(self, dispute_id: int, guilty: bool, salt: bytes) -> None:
        self._transact(self.disputes, "revealVote", dispute_id, bool(guilty), _bytes32(salt, "salt"))

    def resolve(self, dispute_id: int) -> DisputeStatus:
        """Decides a dispute after its reveal period; returns the outcome."""
        receipt = self._transact(self.disputes, "resolve", dispute_id)
        (event,) = self._events(receipt, self.disputes, "DisputeResolved")
        return DisputeStatus(event["args"]["status"])

    def claim(self) -> int:
        """Pays this account every reward credited to it; returns the amount."""
        receipt = self._transact(self.disputes, "claim")
        return sum(int(ev["args"]["amount"]) for ev in self._events(receipt, self.disputes, "RewardClaimed"))

    def claimable(self, address: str | None = None) -> int:
        who = to_checksum_address(address or self._require_account().address)
        return self._view(lambda: self.disputes.functions.claimable(who).call())

    def dispute_count(self) -> int:
        return self._view(lambda: self.disputes.functions.disputeCount().call())

    def get_dispute(self, dispute_id: int) -> DisputeInfo:
        raw = self._view(lambda: self.disputes.functions.getDispute(dispute_id).call())
        (
            expert_id, challenger, bond, model_hash, request_id, input_hash, output_hash,
            commit_ends, reveal_ends, status, guilty_stake, innocent_stake, slashed, voters,
        ) = raw  # fmt: skip
        if status == DisputeStatus.NONE:
            raise ContractRevertError(
                "DisputeUnknown", {"disputeId": dispute_id}, f"DisputeUnknown(disputeId={dispute_id})"
            )
        return DisputeInfo(
            dispute_id=dispute_id,
            expert_id=expert_id,
            challenger=challenger,
            bond=bond,
            model_hash=bytes(model_hash),
            request_id=bytes(request_id),
            input_hash=bytes(input_hash),
            output_hash=bytes(output_hash),
            commit_ends=commit_ends,
            reveal_ends=reveal_ends,
            status=DisputeStatus(status),
            guilty_stake=guilty_stake,
            innocent_stake=innocent_stake,
            slashed=slashed,
            voters=voters,
        )

    def commitment_of(self, dispute_id: int, verifier: str | None = None) -> bytes:
        who = to_checksum_address(verifier or self._require_account().address)
        return bytes(self._view(lambda: self.disputes.functions.commitmentOf(dispute_id, who).call()))

    @staticmethod
    def commitment_for(dispute_id: int, guilty: bool, salt: bytes, voter: str) -> bytes:
        """The vote commitment, computed locally (equals the contract's commitmentFor)."""
        return commitment_for(dispute_id, guilty, salt, voter)

    def onchain_commitment_for(self, dispute_id: int, guilty: bool, salt: bytes, voter: str) -> bytes:
        salt = _bytes32(salt, "salt")
        return bytes(
            self._view(
                lambda: self.disputes.functions.commitmentFor(
                    dispute_id, guilty, salt, to_checksum_address(voter)
                ).call()
            )
        )

    def onchain_receipt_digest(self, receipt: Receipt) -> bytes:
        """The dispute manager's own receiptDigest (for cross-checks; eip712.receipt_digest computes it locally)."""
        return bytes(
            self._view(lambda: self.disputes.functions.receiptDigest(_receipt_tuple(receipt)).call())
        )

    # ------------------------------------------------------------------------------------------------------------
    # Events
    # ------------------------------------------------------------------------------------------------------------

    def disputes_opened(
        self, from_block: int = 0, to_block: int | str | None = None
    ) -> list[DisputeOpenedEvent]:
        """DisputeOpened events in [from_block, to_block] (default: to the latest block), oldest first."""
        return [
            DisputeOpenedEvent(
                dispute_id=a["disputeId"],
                expert_id=a["expertId"],
                challenger=a["challenger"],
                model_hash=bytes(a["modelHash"]),
                request_id=bytes(a["requestId"]),
                input_hash=bytes(a["inputHash"]),
                output_hash=bytes(a["outputHash"]),
                commit_ends=a["commitEnds"],
                reveal_ends=a["revealEnds"],
                evidence_endpoint=a["evidenceEndpoint"],
                block_number=ev["blockNumber"],
                tx_hash=bytes(ev["transactionHash"]),
            )
            for ev in self._logs(self.disputes, "DisputeOpened", from_block, to_block)
            for a in (ev["args"],)
        ]

    def payment_gas(self, from_block: int = 0, to_block: int | str | None = None) -> tuple[int, int]:
        """(transactions, gas used) of every escrow deposit and redemption in [from_block, to_block]: what
        paying for calls cost on chain (the demo's and the benchmarks' gas-per-request figure)."""
        txs = {
            bytes(ev["transactionHash"])
            for event in ("Deposited", "VoucherRedeemed")
            for ev in self._logs(self.escrow, event, from_block, to_block)
        }
        with translate_errors(self._decoder):
            gas = sum(int(self._w3.eth.get_transaction_receipt(tx)["gasUsed"]) for tx in txs)
        return len(txs), gas

    def disputes_resolved(
        self, from_block: int = 0, to_block: int | str | None = None
    ) -> list[DisputeResolvedEvent]:
        return [
            DisputeResolvedEvent(
                dispute_id=a["disputeId"],
                expert_id=a["expertId"],
                status=DisputeStatus(a["status"]),
                slashed=a["slashed"],
                burned=a["burned"],
                block_number=ev["blockNumber"],
                tx_hash=bytes(ev["transactionHash"]),
            )
            for ev in self._logs(self.disputes, "DisputeResolved", from_block, to_block)
            for a in (ev["args"],)
        ]

    def votes_revealed(
        self, from_block: int = 0, to_block: int | str | None = None
    ) -> list[VoteRevealedEvent]:
        return [
            VoteRevealedEvent(
                dispute_id=a["disputeId"],
                verifier=a["verifier"],
                guilty=a["guilty"],
                stake=a["stake"],
                block_number=ev["blockNumber"],
                tx_hash=bytes(ev["transactionHash"]),
            )
            for ev in self._logs(self.disputes, "VoteRevealed", from_block, to_block)
            for a in (ev["args"],)
        ]

    def experts_registered(
        self, from_block: int = 0, to_block: int | str | None = None
    ) -> list[ExpertRegisteredEvent]:
        """ExpertRegistered events since `from_block` (for refreshing a cache of the registry)."""
        return [
            ExpertRegisteredEvent(
                expert_id=a["expertId"],
                operator=a["operator"],
                model_hash=bytes(a["modelHash"]),
                capability=bytes(a["capability"]),
                signer=a["signer"],
                price=a["pricePerCall"],
                stake=a["stake"],
                node_key=bytes(a["nodeKey"]),
                endpoint=tuple(a["endpoint"].split()),
                block_number=ev["blockNumber"],
                tx_hash=bytes(ev["transactionHash"]),
            )
            for ev in self._logs(self.registry, "ExpertRegistered", from_block, to_block)
            for a in (ev["args"],)
        ]

    def experts_updated(
        self, from_block: int = 0, to_block: int | str | None = None
    ) -> list[ExpertUpdatedEvent]:
        return [
            ExpertUpdatedEvent(
                expert_id=a["expertId"],
                signer=a["signer"],
                price=a["pricePerCall"],
                node_key=bytes(a["nodeKey"]),
                endpoint=tuple(a["endpoint"].split()),
                block_number=ev["blockNumber"],
                tx_hash=bytes(ev["transactionHash"]),
            )
            for ev in self._logs(self.registry, "ExpertUpdated", from_block, to_block)
            for a in (ev["args"],)
        ]

    # ------------------------------------------------------------------------------------------------------------
    # Devnet only (anvil RPC methods; never on a real chain)
    # ------------------------------------------------------------------------------------------------------------

    def _devnet_rpc(self, method: str, params: list[Any]) -> Any:
        with translate_errors(self._decoder):
            response = self._w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise ChainError(f"{method} failed: {response['error']}; is this an anvil devnet?")
        return response.get("result")

    def increase_time(self, seconds: int) -> int:
        """DEVNET ONLY: moves the chain clock forward by `seconds` and mines a block; returns its timestamp."""
        self._devnet_rpc("evm_increaseTime", [int(seconds)])
        self._devnet_rpc("evm_mine", [])
        return self.block_timestamp()

    def devnet_snapshot(self) -> str:
        """DEVNET ONLY: snapshots the chain state; pass the id to devnet_revert."""
        return str(self._devnet_rpc("evm_snapshot", []))

    def devnet_revert(self, snapshot_id: str) -> None:
        """DEVNET ONLY: restores a snapshot (which is then used up)."""
        if not self._devnet_rpc("evm_revert", [snapshot_id]):
            raise ChainError(f"evm_revert({snapshot_id}) failed: unknown or used snapshot")
