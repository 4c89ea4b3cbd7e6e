"""`AsyncClient`: the trio core of the client SDK.

    async with AsyncClient.open(config) as client:
        await client.deposit(10**17)
        result = await client.infer(model_hash, {"x": x}, redundancy=3)

Opening it starts the libp2p host (which serves this client's dispute evidence at a stable address:
market.client.endpoint), opens the voucher book and
the reputation book in the state directory, and reads nothing else until needed; leaving it saves the
reputation book, closes the books and stops the host. `infer` is market.client.calls around these steps:

    1. the registry's experts for the model (market.client.discovery)
    2. the manifest, fetched by hash from an expert (checked against the hash) and cached on disk; the
       inputs are checked against it (MarketInputError) before anything is paid
    3. the gate picks operator-distinct experts by reputation and price (NoExpertError says why none fits)
    4. the deposit check: the call's total price must be free in the escrow (InsufficientDepositError)
    5. the calls, failover, checks and vote; evidence of dissent kept and, with `auto_dispute`, disputed

Blocking work (SQLite, chain calls, fsync) runs in worker threads. Every network step has a finite timeout.
It must not: log keys or vouchers, or run work without an owner (no fire-and-forget tasks).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from market.audit import AuditPolicy, Redundancy
from market.client.calls import CallEngine, CallPlan, EngineSettings, gather
from market.client.config import ClientConfig, load_account, resolve_deployment
from market.client.discovery import ExpertDirectory
from market.client.disputes import DisputeBook, EvidenceLog, receipt_from_json, receipt_to_json
from market.client.endpoint import IDENTITY_FILE, load_identity, open_listening_host
from market.client.funds import Funds
from market.client.links import ExpertLink, HostLink
from market.client.results import Balance, DisputeRecord, EvidenceItem, InferResult
from market.errors import (
    ChainError,
    ContractRevertError,
    MarketConfigError,
    MarketError,
    MarketInputError,
    ModelError,
    PeerTimeoutError,
    SelectionError,
)
from market.gate import GateRequest, Selection
from market.manifest import ModelManifest, parse_model_hash
from market.reputation import ReputationBook
from market.types import Deployment, DisputeStatus, ExpertInfo, ExpertStatus, SignedReceipt
from market.wallet import VoucherBook

if TYPE_CHECKING:
    import torch

    from market.chain.signer import LocalSigner
    from market.evidence import EvidenceStore
    from market.transport import MarketHost

__all__ = ["AsyncClient", "capability_bytes"]

logger = logging.getLogger(__name__)

MANIFESTS_DIR = "manifests"
SAVE_REPUTATION_EVERY = 200


def capability_bytes(capability: str | bytes) -> bytes:
    """The on-chain capability key: 32 raw bytes as given, or keccak256 of a capability name."""
    if isinstance(capability, bytes | bytearray):
        if len(capability) != 32:
            raise MarketInputError("a capability key is 32 bytes (or pass the capability's name)")
        return bytes(capability)
    if isinstance(capability, str) and capability.startswith("0x") and len(capability) == 66:
        return bytes.fromhex(capability[2:])
    if isinstance(capability, str) and capability:
        from market.chain.contracts import capability_id

        return capability_id(capability)
    raise MarketInputError(f"capability must be a name or 32 bytes, got {capability!r}")


class AsyncClient:
    """The client SDK's trio core. Create it with `AsyncClient.open(config)`; see the module docstring."""

    def __init__(
        self,
        *,
        config: ClientConfig,
        deployment: Deployment,
        account: LocalSigner,
        chain: Any,
        link: ExpertLink,
        host: MarketHost | None,
        wallet: VoucherBook,
        book: ReputationBook,
        evidence: EvidenceStore | None,
        home: Path,
    ) -> None:
        from market.chain.eip712 import recover_receipt_signer

        self.config = config
        self.deployment = deployment
        self.account = account
        self.chain = chain
        self.link = link
        self.host = host
        self.wallet = wallet
        self.reputation = book
        self.evidence_store = evidence
        self.home = home
        self._manifest_dir = config.state_path / MANIFESTS_DIR
        self._manifests: dict[bytes, ModelManifest] = {}
        self._manifest_locks: dict[bytes, trio.Lock] = {}
        self.rng = random.Random(config.seed)
        self.directory = ExpertDirectory(
            chain,
            params=book.params,
            policy=config.gate,
            ttl_s=config.registry_ttl_s,
            full_refresh_s=config.registry_full_refresh_s,
        )
        self.funds = Funds(chain, wallet, account.address)
        chain_id, disputes = deployment.chain_id, deployment.disputes

        def recover(signed: SignedReceipt) -> str:
            return recover_receipt_signer(signed, chain_id, disputes)

        self.engine = CallEngine(
            link=link,
            wallet=wallet,
            funds=self.funds,
            voucher_signer=account.voucher_signer(deployment.chain_id, deployment.escrow),
            book=book,
            recover_receipt_signer=recover,
            was_signer=getattr(chain, "was_signer", None),
            evidence=evidence,
            settings=EngineSettings(call_timeout_s=config.call_timeout_s, down_for_s=config.down_for_s),
            rng=self.rng,
        )
        self.disputes_book = DisputeBook(home / "disputes.json")
        self.evidence_log = EvidenceLog(home / "evidence.jsonl")
        self._disputing: set[int] = set()
        self.calls = 0
        self._since_save = 0

    # -- lifecycle --------------------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: ClientConfig,
        *,
        chain: Any = None,
        link: ExpertLink | None = None,
        serve: bool = True,
    ) -> AsyncIterator[AsyncClient]:
        """Start a client (see the module docstring). `chain` and `link` replace the real chain client and
        the libp2p link (tests); `serve=False` starts no libp2p host (then `link` is required)."""
        from market.evidence import EvidenceStore, serve_evidence

        deployment = resolve_deployment(config.deployment)
        account = load_account(config)
        if chain is None:
            from market.chain.contracts import MarketChain

            chain = MarketChain(
                deployment, account, rpc_timeout=config.rpc_timeout_s, receipt_timeout=config.tx_timeout_s
            )
        if not serve and link is None:
            raise MarketConfigError("a client without a libp2p host needs a link to the experts")
        state = config.state_path
        home = state / f"{deployment.chain_id}-{deployment.registry[2:12].lower()}"
        home.mkdir(parents=True, exist_ok=True)
        book_path = home / "reputation.json"
        book = ReputationBook.load(book_path, config.reputation)
        evidence = EvidenceStore(home / "evidence")
        wallet = await trio.to_thread.run_sync(
            lambda: VoucherBook(
                home / "wallet.db", escrow=deployment.escrow, chain_id=deployment.chain_id, client=account.address
            )
        )
        # Errors of the caller's block are raised after the host has stopped, as themselves: raised inside
        # it they would come out wrapped in the ExceptionGroups of py-libp2p's nurseries.
        error: BaseException | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                host = None
                if serve:
                    identity = load_identity(state / IDENTITY_FILE)
                    host = await open_listening_host(stack, identity, config.transport, state)
                    serve_evidence(host, evidence)
                client = cls(
                    config=config,
                    deployment=deployment,
                    account=account,
                    chain=chain,
                    link=link or HostLink(host),  # type: ignore[arg-type]
                    host=host,
                    wallet=wallet,
                    book=book,
                    evidence=evidence,
                    home=home,
                )
                logger.info("client %s ready (%s)", account.address, config.checking_description())
                try:
                    yield client
                except BaseException as exc:
                    error = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(client._save_reputation)
        finally:
            wallet.close()
        if error is not None:
            raise error

    def _save_reputation(self) -> None:
        try:
            self.reputation.save(self.home / "reputation.json")
        except OSError as exc:
            logger.warning("could not save the reputation book: %s", exc)

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def evidence_endpoint(self) -> str:
        """Where verifiers fetch this client's evidence: a full multiaddr ending in /p2p/<peer id>."""
        if self.config.evidence_endpoint:
            return self.config.evidence_endpoint
        if self.host is None:
            raise MarketConfigError("this client serves no evidence (no libp2p host); set evidence_endpoint")
        addrs = [a for a in self.host.listen_addrs if "/0.0.0.0/" not in a and "/::/" not in a]
        if not addrs:
            raise MarketConfigError(
                "the client listens on a wildcard address only; set ClientConfig.evidence_endpoint to the "
                "multiaddr verifiers can dial"
            )
        return addrs[0]

    @property
    def paid(self) -> int:
        """Wei this client signed away since it opened (answered calls and calls with an unknown outcome)."""
        return self.engine.paid

    # -- money ------------------------------------------------------------------------------------------

    async def deposit(self, wei: int) -> None:
        """Deposit `wei` into the escrow (a transaction from the client's account)."""
        _check_wei(wei, "deposit")
        await trio.to_thread.run_sync(self.chain.deposit, wei)
        self.funds.invalidate()

    async def request_withdraw(self, wei: int) -> int:
        """Ask to withdraw `wei` from the escrow; returns when `withdraw()` may pay it (a block timestamp).

        Until then nodes can still redeem vouchers they hold, so calls already paid are never at risk."""
        _check_wei(wei, "withdrawal", allow_zero=True)
        at = await trio.to_thread.run_sync(self.chain.request_withdraw, wei)
        self.funds.invalidate()
        return int(at)

    async def withdraw(self) -> int:
        """Pay the requested withdrawal to the client's account; returns the amount."""
        amount = await trio.to_thread.run_sync(self.chain.withdraw)
        self.funds.invalidate()
        return int(amount)

    async def balance(self) -> Balance:
        """Escrow balance, what was signed per expert, what was redeemed, and what is in flight."""

        def read() -> Balance:
            account = self.chain.escrow_account(self.address)
            per_expert = self.wallet.spent_per_expert()
            redeemed = sum(self.chain.redeemed(self.address, eid) for eid in per_expert)
            in_flight = sum(item.price for item in self.wallet.in_flight())
            return Balance(
                client=self.address,
                escrow=int(account.balance),
                withdraw_pending=int(account.withdraw_amount),
                withdrawable_at=int(account.withdrawable_at),
                spent=sum(per_expert.values()),
                spent_per_expert=per_expert,
                redeemed=int(redeemed),
                in_flight=in_flight,
            )

        return await trio.to_thread.run_sync(read)

    # -- discovery ---------------------------------------------------------------------------------------

    async def experts(
        self,
        model_hash: bytes | str | None = None,
        capability: str | bytes | None = None,
        refresh: bool = False,
    ) -> list[ExpertInfo]:
        """Registered experts (any status) for a model hash or a capability, or all of them with neither."""
        if model_hash is None and capability is None:
            return await self.directory.all_experts()
        mh = None if model_hash is None else parse_model_hash(model_hash)
        cap = None if capability is None else capability_bytes(capability)
        if mh is not None:
            infos = await self.directory.ensure(mh, refresh=refresh)
            return [e for e in infos if cap is None or e.capability == cap]
        return await self.directory.ensure(None, cap, refresh=refresh)

    def add_manifest(self, manifest: ModelManifest | str | os.PathLike[str]) -> ModelManifest:
        """Make a manifest known without fetching it (a ModelManifest, or a package folder / manifest file)."""
        if not isinstance(manifest, ModelManifest):
            path = Path(manifest)
            if path.is_dir():
                path = path / "manifest.json"
            manifest = ModelManifest.from_json(path.read_bytes())
        self._manifests[manifest.model_hash] = manifest
        return manifest

    async def manifest(self, model: bytes | str, experts: list[ExpertInfo] | None = None) -> ModelManifest:
        """The manifest of `model`: from memory, the state directory, or fetched from its experts by hash."""
        model_hash = parse_model_hash(model)
        found = self._manifests.get(model_hash)
        if found is not None:
            return found
        lock = self._manifest_locks.setdefault(model_hash, trio.Lock())
        async with lock:
            found = self._manifests.get(model_hash)
            if found is not None:
                return found
            found = await trio.to_thread.run_sync(self._read_cached_manifest, model_hash)
            if found is None:
                found = await self._fetch_manifest(model_hash, experts)
            self._manifests[model_hash] = found
            return found

    def _manifest_path(self, model_hash: bytes) -> Path:
        return self._manifest_dir / f"0x{model_hash.hex()}.json"

    def _read_cached_manifest(self, model_hash: bytes) -> ModelManifest | None:
        path = self._manifest_path(model_hash)
        try:
            manifest = ModelManifest.from_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ModelError) as exc:
            logger.warning("cached manifest %s is unreadable (%s); fetching it again", path, exc)
            return None
        if manifest.model_hash != model_hash:
            logger.warning("cached manifest %s does not hash to its name; fetching it again", path)
            return None
        return manifest

    async def _fetch_manifest(self, model_hash: bytes, experts: list[ExpertInfo] | None) -> ModelManifest:
        from market.models.fetch import ModelUnavailableError

        if experts is None:
            experts = [e for e in await self.directory.ensure(model_hash) if e.status == ExpertStatus.ACTIVE]
        failures: list[tuple[str, str]] = []
        for expert in experts[:4]:
            try:
                manifest = await self.link.manifest(expert, model_hash, self.config.manifest_timeout_s)
            except MarketError as exc:
                failures.append((f"expert {expert.expert_id}", f"{type(exc).__name__}: {exc}"))
                continue
            if manifest.model_hash != model_hash:  # the link checks it; a fake link might not
                failures.append((f"expert {expert.expert_id}", "manifest does not hash to the model hash"))
                continue
            path = self._manifest_path(model_hash)

            def save(m: ModelManifest = manifest, p: Path = path) -> None:
                p.parent.mkdir(parents=True, exist_ok=True)
                tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}")
                tmp.write_text(m.to_json(indent=2) + "\n")
                os.replace(tmp, p)

            await trio.to_thread.run_sync(save)
            return manifest
        detail = "; ".join(f"{who}: {why}" for who, why in failures) or "no active expert to ask"
        raise ModelUnavailableError(f"the manifest of model 0x{model_hash.hex()} is not available: {detail}", failures)

    # -- inference ---------------------------------------------------------------------------------------

    def _checking(
        self, redundancy: int | None, audit: AuditPolicy | None
    ) -> Redundancy | AuditPolicy:
        if audit is not None and redundancy is not None:
            raise MarketInputError("pass redundancy or audit, not both")
        if audit is not None:
            return audit
        if redundancy is not None:
            return Redundancy(redundancy)
        if self.config.audit is not None:
            return self.config.audit
        return Redundancy(self.config.redundancy)

    def _select(
        self,
        model_hash: bytes | None,
        capability: bytes | None,
        redundancy: int,
        max_price: int | None,
        deadline_s: float,
        allow_partial: bool,
    ) -> tuple[Selection, bool]:
        """The gate's choice, and whether it left out experts on nodes found unreachable lately."""
        def attempt(exclude: frozenset[int]) -> Selection:
            request = GateRequest(
                model_hash=model_hash,
                capability=capability,
                redundancy=redundancy,
                max_price=max_price,
                min_stake=self.config.min_stake,
                deadline_ms=max(int(deadline_s * 1000), 1),
                exclude=exclude,
                allow_partial=allow_partial,
            )
            return self.directory.index.select(request, self.reputation, self.config.gate, self.rng, int(time.time()))

        members = self.directory.members(model_hash, capability if model_hash is None else None)
        down = self.engine.down(members)
        try:
            return attempt(down), True
        except SelectionError:
            if not down:
                raise
            # Only experts on nodes found unreachable lately would fit: try them after all.
            return attempt(frozenset()), False

    async def infer(
        self,
        model: bytes | str | None,
        inputs: Mapping[str, Any] | Any,
        *,
        capability: str | bytes | None = None,
        redundancy: int | None = None,
        audit: AuditPolicy | None = None,
        quorum: int | None = None,
        max_price: int | None = None,
        deadline: float | None = None,
    ) -> InferResult:
        """One checked, paid call (see the module docstring). `model` is a modelHash (32 bytes or 0x hex);
        with `model=None`, `capability` (a name such as "digits-expert-0" or its 32-byte key) picks the best
        expert's model. `inputs` maps the manifest's input names to tensors (a bare tensor for a one-input
        model). `deadline` (seconds) bounds the whole call, failover included.

        Raises MarketInputError (inputs do not fit the model), NoExpertError / SelectionError (no expert
        fits: none registered, all over max_price, all slashed...), InsufficientDepositError (the escrow
        does not cover the call; nothing was paid), VerificationError (no majority), PeerTimeoutError.
        """
        started = trio.current_time()
        checking = self._checking(redundancy, audit)
        deadline_s = float(self.config.deadline_s if deadline is None else deadline)
        if not deadline_s > 0:
            raise MarketInputError(f"deadline must be a positive number of seconds, got {deadline!r}")
        max_price = self.config.max_price if max_price is None else max_price
        if max_price is not None and (type(max_price) is not int or max_price < 0):
            raise MarketInputError(f"max_price must be wei >= 0, got {max_price!r}")
        if quorum is not None and (type(quorum) is not int or quorum < 1):
            raise MarketInputError(f"quorum must be an integer >= 1, got {quorum!r}")
        cap = None if capability is None else capability_bytes(capability)
        if model is None and cap is None:
            raise MarketInputError("name the model (its modelHash) or a capability")
        with trio.fail_after(deadline_s + self.config.rpc_timeout_s + self.config.manifest_timeout_s):
            try:
                return await self._infer(model, inputs, cap, checking, quorum, max_price, deadline_s, started)
            except trio.TooSlowError:
                raise PeerTimeoutError(f"the call did not finish within its deadline of {deadline_s:g}s") from None

    async def _infer(
        self,
        model: bytes | str | None,
        inputs: Any,
        cap: bytes | None,
        checking: Redundancy | AuditPolicy,
        quorum: int | None,
        max_price: int | None,
        deadline_s: float,
        started: float,
    ) -> InferResult:
        from market.protocol.codec import encode_tensors
        from market.protocol.hashing import new_request_id, tensor_hash

        if model is None:
            assert cap is not None
            await self.directory.ensure(None, cap)
            best, _ = self._select(None, cap, 1, max_price, deadline_s, False)
            model_hash = best.primary[0].model_hash
        else:
            model_hash = parse_model_hash(model)
        await self.directory.ensure(model_hash)
        manifest = self._manifests.get(model_hash)
        if manifest is None:
            manifest = await trio.to_thread.run_sync(self._read_cached_manifest, model_hash)
            if manifest is not None:
                self._manifests[model_hash] = manifest
        if manifest is not None:
            tensors, rows = self._prepare_inputs(manifest, inputs)

        if isinstance(checking, AuditPolicy):
            wanted, partial = checking.escalate_to, True
        else:
            wanted, partial = checking.r, False
        selection, skip_down = self._select(model_hash, cap, wanted, max_price, deadline_s, partial)

        if manifest is None:
            manifest = await self.manifest(model_hash, [*selection.primary, *selection.fallbacks])
            tensors, rows = self._prepare_inputs(manifest, inputs)

        specs, payload = encode_tensors(tensors)
        first = selection.primary[: 1 if isinstance(checking, AuditPolicy) else checking.r]
        total = sum(e.price for e in first)
        await trio.to_thread.run_sync(self.funds.check, total, f"this call ({len(first)} x expert price)")

        plan = CallPlan(
            manifest=manifest,
            request_id=new_request_id(),
            specs=tuple(specs),
            payload=payload,
            input_hash=tensor_hash(specs, payload),
            rows=rows,
            deadline=started + deadline_s,
            checking=checking,
            quorum=quorum,
            skip_down=skip_down,
        )
        result = await self.engine.run(plan, selection)
        self.calls += 1
        if result.evidence:
            await self._log_evidence(result.evidence)
            if self.config.auto_dispute:
                opened = await self._auto_dispute(result.evidence)
                if opened:
                    result = replace(result, disputes=tuple(opened))
        self._since_save += 1
        if self._since_save >= SAVE_REPUTATION_EVERY:
            self._since_save = 0
            self._save_reputation()
        return replace(result, latency_ms=(trio.current_time() - started) * 1000.0)

    def _prepare_inputs(self, manifest: ModelManifest, inputs: Any) -> tuple[dict[str, torch.Tensor], int]:
        import numpy as np
        import torch

        if isinstance(inputs, torch.Tensor | np.ndarray):
            if len(manifest.inputs) != 1:
                names = ", ".join(repr(s.name) for s in manifest.inputs)
                raise MarketInputError(f"model {manifest.name} takes several inputs ({names}); pass a mapping")
            inputs = {manifest.inputs[0].name: inputs}
        if not isinstance(inputs, Mapping):
            raise MarketInputError(f"inputs must map input names to tensors, got {type(inputs).__name__}")
        tensors: dict[str, torch.Tensor] = {}
        for name, value in inputs.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(np.ascontiguousarray(value))
            if not isinstance(value, torch.Tensor):
                raise MarketInputError(f"input {name!r} is a {type(value).__name__}, not a tensor")
            tensors[str(name)] = value.detach()
        try:
            rows = manifest.check_inputs(tensors)
        except MarketInputError as exc:
            raise MarketInputError(
                f"inputs do not fit model {manifest.name} (0x{manifest.model_hash.hex()[:12]}..): {exc}; "
                f"it takes {', '.join(s.describe() for s in manifest.inputs)}"
            ) from None
        if rows > self.config.max_rows_per_call:
            raise MarketInputError(
                f"{rows} rows in one call; experts take at most {self.config.max_rows_per_call} per call: "
                "split the batch (market.RemoteExpert does it for you)"
            )
        ordered = {s.name: tensors[s.name] for s in manifest.inputs}
        return ordered, rows

    # -- evidence and disputes ---------------------------------------------------------------------------

    async def _log_evidence(self, items: tuple[EvidenceItem, ...]) -> None:
        def write() -> None:
            for item in items:
                self.evidence_log.append(
                    {
                        "expert_id": item.expert_id,
                        "operator": item.operator,
                        "reason": item.reason,
                        "receipt": receipt_to_json(item.receipt),
                        "at": int(time.time()),
                    }
                )

        await trio.to_thread.run_sync(write)

    async def evidence(self, request_id: bytes | str | None = None) -> list[EvidenceItem]:
        """Evidence items this client recorded (all, or those of one request), claimed outputs included
        when the evidence store still holds them."""
        from market.protocol.codec import decode_tensors

        rid = None if request_id is None else _bytes32(request_id, "request id")

        def read() -> list[EvidenceItem]:
            out = []
            for entry in self.evidence_log.entries():
                signed = receipt_from_json(entry["receipt"])
                if rid is not None and signed.receipt.request_id != rid:
                    continue
                outputs: dict[str, Any] = {}
                held = self.evidence_store.get(signed.receipt.output_hash) if self.evidence_store else None
                if held is not None:
                    with contextlib.suppress(MarketError):
                        outputs = decode_tensors(*held)
                out.append(
                    EvidenceItem(int(entry["expert_id"]), str(entry["operator"]), signed, outputs, str(entry["reason"]))
                )
            return out

        return await trio.to_thread.run_sync(read)

    async def dispute(self, item: EvidenceItem | SignedReceipt) -> int:
        """Open a dispute against a signed answer, paying the bond; returns the dispute id.

        The evidence (input and claimed output) must be in this client's evidence store: it is served on the
        evidence protocol at `evidence_endpoint` for as long as this client runs.
        """
        signed = item.receipt if isinstance(item, EvidenceItem) else item
        if not isinstance(signed, SignedReceipt):
            raise MarketInputError("dispute() takes an EvidenceItem or a SignedReceipt")
        r = signed.receipt
        store = self.evidence_store
        if store is not None:
            missing = [
                name for name, h in (("input", r.input_hash), ("output", r.output_hash)) if h not in store
            ]
            if missing:
                raise MarketInputError(
                    f"this client does not hold the {' and '.join(missing)} tensors of request 0x{r.request_id.hex()}, "
                    "so verifiers could not fetch the evidence; only answers this client received can be disputed"
                )
        endpoint = self.evidence_endpoint
        dispute_id = int(await trio.to_thread.run_sync(self.chain.open_dispute, signed, endpoint))
        await trio.to_thread.run_sync(self.disputes_book.add, dispute_id, signed, endpoint)
        logger.info("opened dispute %d against expert %d (request 0x%s)", dispute_id, r.expert_id, r.request_id.hex()[:12])
        return dispute_id

    async def _auto_dispute(self, items: tuple[EvidenceItem, ...]) -> list[int]:
        opened: list[int] = []
        busy = self.disputes_book.open_against() | self._disputing
        for item in items:
            if item.expert_id in busy:
                continue
            busy.add(item.expert_id)
            self._disputing.add(item.expert_id)
            try:
                opened.append(await self.dispute(item))
            except (ChainError, MarketInputError, MarketConfigError) as exc:
                logger.warning("could not open a dispute against expert %d: %s", item.expert_id, exc)
            finally:
                self._disputing.discard(item.expert_id)
        return opened

    def _record(self, stored: dict[str, Any], info: Any | None) -> DisputeRecord:
        signed = receipt_from_json(stored["receipt"])
        if info is None:
            return DisputeRecord(
                dispute_id=int(stored["dispute_id"]),
                expert_id=signed.receipt.expert_id,
                request_id=signed.receipt.request_id,
                model_hash=signed.receipt.model_hash,
                status=DisputeStatus[stored["status"]],
                evidence_endpoint=str(stored.get("evidence_endpoint", "")),
            )
        return DisputeRecord(
            dispute_id=int(info.dispute_id),
            expert_id=int(info.expert_id),
            request_id=bytes(info.request_id),
            model_hash=bytes(info.model_hash),
            status=DisputeStatus(info.status),
            bond=int(info.bond),
            commit_ends=int(info.commit_ends),
            reveal_ends=int(info.reveal_ends),
            slashed=int(info.slashed),
            evidence_endpoint=str(stored.get("evidence_endpoint", "")),
        )

    async def disputes(self, refresh: bool = True) -> list[DisputeRecord]:
        """The disputes this client opened, with their status read from the chain (`refresh`)."""
        out = []
        for stored in self.disputes_book.items():
            info = None
            if refresh:
                info = await trio.to_thread.run_sync(self.chain.get_dispute, int(stored["dispute_id"]))
                await trio.to_thread.run_sync(self.disputes_book.set_status, info.dispute_id, DisputeStatus(info.status))
            out.append(self._record(stored, info))
        return out

    async def wait_dispute(
        self, dispute_id: int, *, timeout: float = 600.0, poll_s: float = 1.0, resolve: bool = True
    ) -> DisputeRecord:
        """Wait until dispute `dispute_id` is decided, serving its evidence meanwhile; with `resolve`, call the
        contract's `resolve` once the reveal period is over (anyone may). PeerTimeoutError after `timeout`."""
        stored = self.disputes_book.get(dispute_id)
        if stored is None:
            info = await trio.to_thread.run_sync(self.chain.get_dispute, dispute_id)
            stored = {"dispute_id": dispute_id, "receipt": None, "status": DisputeStatus(info.status).name}
        try:
            with trio.fail_after(timeout):
                while True:
                    info = await trio.to_thread.run_sync(self.chain.get_dispute, dispute_id)
                    status = DisputeStatus(info.status)
                    if status != DisputeStatus.OPEN:
                        break
                    if resolve and time.time() >= info.reveal_ends:
                        with contextlib.suppress(ContractRevertError):
                            await trio.to_thread.run_sync(self.chain.resolve, dispute_id)
                            continue
                    await trio.sleep(poll_s)
        except trio.TooSlowError:
            raise PeerTimeoutError(f"dispute {dispute_id} was not decided within {timeout:g}s") from None
        await trio.to_thread.run_sync(self.disputes_book.set_status, dispute_id, status)
        await self.directory.forget_cache([int(info.expert_id)])
        if stored.get("receipt") is None:
            return DisputeRecord(
                dispute_id=dispute_id, expert_id=int(info.expert_id), request_id=bytes(info.request_id),
                model_hash=bytes(info.model_hash), status=status, bond=int(info.bond),
                commit_ends=int(info.commit_ends), reveal_ends=int(info.reveal_ends), slashed=int(info.slashed),
            )
        return self._record(stored, info)

    # -- maintenance -------------------------------------------------------------------------------------

    async def resync(self, expert_ids: list[int] | None = None) -> dict[int, int]:
        """Adopt each expert node's view of the cumulative voucher amount (after a crash or a restore);
        returns the amount each next voucher builds on. Default: the experts the book marked."""
        ids = expert_ids if expert_ids is not None else await trio.to_thread.run_sync(self.wallet.experts_to_resync)
        out: dict[int, int] = {}
        for eid in ids:
            info = self.directory.get(eid)
            if info is None:
                (info,) = await trio.to_thread.run_sync(self.chain.get_experts, [eid])
            quote = await self.link.quote(info, self.address, self.config.call_timeout_s)
            out[eid] = await trio.to_thread.run_sync(self.wallet.resync, eid, int(quote.cumulative.get(eid, 0)))
        return out

    async def call_many(self, calls: list[tuple[Any, ...]]) -> list[InferResult]:
        """Run several `infer(model, inputs)` calls concurrently; results in order (any error cancels the rest)."""
        results: list[InferResult | None] = [None] * len(calls)

        async def one(i: int, args: tuple[Any, ...]) -> None:
            results[i] = await self.infer(*args)

        await gather([lambda i=i, args=args: one(i, args) for i, args in enumerate(calls)])
        return [r for r in results if r is not None]


def _bytes32(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 66:
        return bytes.fromhex(value[2:])
    if isinstance(value, bytes | bytearray) and len(value) == 32:
        return bytes(value)
    raise MarketInputError(f"a {what} is 32 bytes or 0x + 64 hex digits, got {value!r:.80}")


def _check_wei(value: object, what: str, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise MarketInputError(f"the {what} amount must be a positive integer of wei, got {value!r}")

