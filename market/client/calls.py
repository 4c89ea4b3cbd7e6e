"""One checked, paid call to the market: experts in parallel, failover, voting, evidence.

For each expert of the redundancy set, concurrently (one "slot" each):

    dial the node (nothing is signed for a node that cannot be reached)
    resync the voucher book from the node's quote if an earlier call ended in an unknown state
    reserve the next cumulative amount (durably, and only if the deposit covers it) -> sign the voucher
    send the request with the time left -> the answer:
      result       the node kept the voucher: confirm it; then check the answer (market.client.checks); a bad
                   answer is a failure (and evidence when it is signed)
      error        the node did not keep the voucher: release it (not kept); VOUCHER_TOO_LOW: resync from
                   the node's amount and send again (at most MAX_VOUCHER_SENDS sends; the book was stale);
                   INSUFFICIENT_DEPOSIT: stop, the deposit is short
      no answer    (timeout, connection lost, cancelled) the node may hold it: release it as kept, which
                   marks the expert for a resync before the next call
    on failure the slot takes the next fallback of an operator not yet in the set (market.gate.substitute)
    while the deadline allows; a node that cannot be reached is skipped by later calls for `down_for_s`.

Then the answers are grouped by the model's tolerance and the strict majority with a quorum wins
(market.voting); the minority's signed answers become evidence, their tensors kept in the evidence store.
With an audit policy, one expert answers (two when the call is audited); two that disagree escalate to
`escalate_to` experts and a vote.

Reputation records every success (latency), failure, timeout and vote. The reputation book, the gate and
this engine run on the trio thread; the wallet and the chain are reached through worker threads.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from market.audit import AuditPolicy, Redundancy
from market.client.checks import BadAnswer, CheckedAnswer, check_answer
from market.client.funds import Funds
from market.client.links import ExpertLink
from market.client.results import CallFailure, EvidenceItem, InferResult
from market.errors import (
    InsufficientDepositError,
    MarketError,
    MarketInputError,
    NoExpertError,
    PeerTimeoutError,
    ProtocolError,
    TransportError,
    VerificationError,
)
from market.gate import Selection, substitute
from market.manifest import ModelManifest, outputs_match
from market.protocol.messages import ErrorCode, ErrorMessage, InferRequest
from market.protocol.specs import TensorSpec
from market.reputation import FailureKind, ReputationBook
from market.types import ExpertInfo, SignedReceipt
from market.voting import Answer, vote
from market.wallet import VoucherBook

if TYPE_CHECKING:
    from market.chain.eip712 import VoucherSigner
    from market.evidence import EvidenceStore

__all__ = ["CallEngine", "CallPlan", "EngineSettings", "gather"]

logger = logging.getLogger(__name__)

MAX_VOUCHER_SENDS = 8  # per expert and call: the first send plus resends after VOUCHER_TOO_LOW


@dataclass(frozen=True, slots=True)
class CallPlan:
    """One call: the model, the encoded input and how to check the answers."""

    manifest: ModelManifest
    request_id: bytes
    specs: tuple[TensorSpec, ...]
    payload: bytes
    input_hash: bytes
    rows: int
    deadline: float  # trio clock
    checking: Redundancy | AuditPolicy
    quorum: int | None = None
    skip_down: bool = True  # skip experts on nodes found unreachable lately (False: they are all there is)

    @property
    def model_hash(self) -> bytes:
        return self.manifest.model_hash


@dataclass(frozen=True, slots=True)
class EngineSettings:
    call_timeout_s: float = 10.0
    down_for_s: float = 30.0
    quote_timeout_s: float = 10.0


@dataclass(slots=True)
class _Answer:
    expert: ExpertInfo
    checked: CheckedAnswer
    latency_ms: float


class _Failed(Exception):
    """One attempt failed; `fatal` stops the whole call (the deposit is short)."""

    def __init__(self, kind: str, message: str, *, fatal: MarketError | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fatal = fatal


@dataclass(slots=True)
class _Run:
    selection: Selection
    paid: int = 0
    failures: list[CallFailure] = field(default_factory=list)
    evidence: list[EvidenceItem] = field(default_factory=list)
    fatal: MarketError | None = None
    exhausted: list[str] = field(default_factory=list)


class CallEngine:
    """Runs CallPlans against a selection of experts (see the module docstring)."""

    def __init__(
        self,
        *,
        link: ExpertLink,
        wallet: VoucherBook,
        funds: Funds,
        voucher_signer: VoucherSigner,
        book: ReputationBook,
        recover_receipt_signer: Callable[[SignedReceipt], str],
        was_signer: Callable[[int, str], bool] | None,
        evidence: EvidenceStore | None,
        settings: EngineSettings | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.wallet = wallet
        self.funds = funds
        self.signer = voucher_signer
        self.book = book
        self._recover = recover_receipt_signer
        self._was_signer = was_signer
        self.evidence = evidence
        self.settings = settings or EngineSettings()
        self.rng = rng or random.Random()
        self._clock = clock
        self._down: dict[bytes, float] = {}  # node key -> until (trio clock)
        self.calls = 0  # attempts that reached a node with a voucher
        self.paid = 0  # wei signed away by this engine (answered or unknown outcome)

    # -- experts the client skips for a while --------------------------------------------------------

    def down(self, candidates: Sequence[ExpertInfo]) -> frozenset[int]:
        """The candidates whose node could not be reached lately (the gate skips them for `down_for_s`).

        Kept per node (its key), not per expert: when a node dies, all of its experts are gone at once."""
        now = trio.current_time()
        for key in [key for key, until in self._down.items() if until <= now]:
            del self._down[key]
        return frozenset(e.expert_id for e in candidates if e.node_key in self._down)

    def is_down(self, expert: ExpertInfo) -> bool:
        until = self._down.get(expert.node_key)
        return until is not None and until > trio.current_time()

    def _mark_down(self, expert: ExpertInfo) -> None:
        self._down[expert.node_key] = trio.current_time() + self.settings.down_for_s

    def _now(self) -> int:
        return int(self._clock())

    # -- the call -----------------------------------------------------------------------------------

    async def run(self, plan: CallPlan, selection: Selection) -> InferResult:
        started = trio.current_time()
        run = _Run(selection)
        checking = plan.checking
        audited = escalated = False
        manifest = plan.manifest

        def same(a: Any, b: Any) -> bool:
            return outputs_match(a, b, manifest.tolerance)

        if isinstance(checking, AuditPolicy):
            initial = min(checking.initial_experts(self.rng), len(selection.primary))
            audited = initial >= 2
            answers = await self._slots(plan, run, range(initial))
            quorum = len(answers)
            if audited and len(answers) == 2 and not same(answers[0].checked.outputs, answers[1].checked.outputs):
                escalated = True
                logger.info(
                    "audit mismatch between experts %d and %d; escalating to %d experts",
                    answers[0].expert.expert_id, answers[1].expert.expert_id, checking.escalate_to,
                )
                answers += await self._slots(plan, run, range(initial, len(run.selection.primary)))
                quorum = plan.quorum or checking.escalate_to // 2 + 1
            needed = 1
        else:
            answers = await self._slots(plan, run, range(checking.r))
            quorum = plan.quorum or checking.r // 2 + 1
            needed = quorum

        if run.fatal is not None and len(answers) < needed:
            raise run.fatal
        if not answers:
            raise self._nothing_answered(plan, run)
        if len(answers) < needed:
            raise VerificationError(
                f"only {len(answers)} of {checking.r if isinstance(checking, Redundancy) else needed} experts "
                f"answered model 0x{plan.model_hash.hex()} ({_summary(run.failures)}); a result needs "
                f"{quorum} agreeing answers: retry, lower the redundancy or raise max_price"
            )

        if len(answers) == 1:
            winner = answers[0]
            agreeing: tuple[int, ...] = (winner.expert.expert_id,)
            outputs = winner.checked.outputs
        else:
            verdict = vote(
                [Answer(a.expert.expert_id, a.expert.operator, a.checked.outputs, a) for a in answers],
                same,
                quorum,
            )
            if verdict.reached_quorum:
                now = self._now()
                for a in answers:
                    self.book.stats(a.expert.expert_id).record_vote(
                        a.expert.expert_id in verdict.agreeing, now=now
                    )
            group = verdict.require()
            agreeing = verdict.agreeing
            outputs = group.output
            for dissent in verdict.dissenting:
                answer: _Answer = dissent.receipt  # type: ignore[assignment]
                logger.warning(
                    "expert %d answered request 0x%s outside the tolerance of the majority %s",
                    answer.expert.expert_id, plan.request_id.hex()[:12], agreeing,
                )
                run.evidence.append(await self._keep_evidence(plan, answer.expert, answer.checked, "minority"))

        return InferResult(
            outputs=outputs,
            agreeing=tuple(agreeing),
            receipts={a.expert.expert_id: a.checked.receipt for a in answers},
            evidence=tuple(run.evidence),
            latency_ms=(trio.current_time() - started) * 1000.0,
            paid=run.paid,
            model_hash=plan.model_hash,
            request_id=plan.request_id,
            failures=tuple(run.failures),
            audited=audited,
            escalated=escalated,
        )

    def _nothing_answered(self, plan: CallPlan, run: _Run) -> MarketError:
        what = f"model 0x{plan.model_hash.hex()}"
        if trio.current_time() >= plan.deadline:
            return PeerTimeoutError(
                f"no expert answered {what} before the deadline ({_summary(run.failures)}); raise the deadline"
            )
        reasons = "; ".join(run.exhausted[-1:]) or "no fallback left"
        return NoExpertError(f"no expert answered {what}: {_summary(run.failures)}; {reasons}")

    async def _slots(self, plan: CallPlan, run: _Run, indices: Sequence[int] | range) -> list[_Answer]:
        found: list[_Answer | None] = [None] * len(indices)

        async def one(position: int, index: int) -> None:
            found[position] = await self._slot(plan, run, index)

        await gather([lambda p=position, i=index: one(p, i) for position, index in enumerate(indices)])
        return [a for a in found if a is not None]

    async def _slot(self, plan: CallPlan, run: _Run, index: int) -> _Answer | None:
        while True:
            if run.fatal is not None:
                return None
            expert = run.selection.primary[index]
            try:
                return await self._attempt(plan, run, expert)
            except _Failed as failed:
                run.failures.append(CallFailure(expert.expert_id, failed.kind, failed.message))
                logger.info("expert %d failed (%s): %s", expert.expert_id, failed.kind, failed.message)
                if failed.fatal is not None:
                    run.fatal = failed.fatal
                    return None
            if trio.current_time() >= plan.deadline:
                return None
            try:
                run.selection = substitute(run.selection, expert.expert_id)
            except NoExpertError as exc:
                run.exhausted.append(str(exc))
                return None
            except MarketInputError:  # already replaced by a concurrent slot: nothing left to do here
                return None

    # -- one attempt at one expert ----------------------------------------------------------------------

    async def _attempt(self, plan: CallPlan, run: _Run, expert: ExpertInfo) -> _Answer:
        eid = expert.expert_id
        stats = self.book.stats(eid)
        remaining = plan.deadline - trio.current_time()
        if remaining <= 0:
            raise _Failed("timeout", "the deadline passed before the call")
        if plan.skip_down and self.is_down(expert):
            # Another call just found this node unreachable: do not sign anything for it now.
            raise _Failed("transport", "its node was found unreachable moments ago")
        try:
            await self.link.connect(expert, min(self.settings.call_timeout_s, remaining))
        except (TransportError, MarketInputError) as exc:
            # Nothing was signed: no payment at risk. Skip this node for a while.
            self._mark_down(expert)
            stats.record_failure(FailureKind.ERROR, now=self._now())
            raise _Failed("transport", f"cannot reach the node: {exc}") from None
        if await trio.to_thread.run_sync(self.wallet.needs_resync, eid):
            await self._resync(expert)
        # VOUCHER_TOO_LOW: resync to the node's amount and send again (the book was stale: a lost state
        # directory, another process on the same key). Nodes take vouchers of concurrent calls in any order,
        # so a resend does not race them; it converges, and the number of sends is bounded all the same.
        for send in range(1, MAX_VOUCHER_SENDS + 1):
            if send > 1 and trio.current_time() >= plan.deadline:
                raise _Failed("timeout", "the deadline passed while resyncing the voucher amount")
            answer = await self._send(plan, run, expert, last=send == MAX_VOUCHER_SENDS)
            if answer is not None:
                return answer
        raise AssertionError("unreachable")  # the last _send raises on VOUCHER_TOO_LOW

    async def _resync(self, expert: ExpertInfo, node_amount: int | None = None) -> None:
        eid = expert.expert_id
        if node_amount is None:
            try:
                quote = await self.link.quote(expert, self.signer.address, self.settings.quote_timeout_s)
            except MarketError as exc:
                raise _Failed("error", f"cannot resync the voucher amount from the node's quote: {exc}") from None
            node_amount = int(quote.cumulative.get(eid, 0))
        amount = await trio.to_thread.run_sync(self.wallet.resync, eid, node_amount)
        logger.debug("resynced expert %d: next voucher builds on %d wei", eid, amount)

    async def _send(self, plan: CallPlan, run: _Run, expert: ExpertInfo, *, last: bool) -> _Answer | None:
        """One voucher, one request. None means: VOUCHER_TOO_LOW, resynced, send again (unless `last`)."""
        eid, price = expert.expert_id, expert.price
        stats = self.book.stats(eid)
        try:
            cumulative = await trio.to_thread.run_sync(self.funds.reserve, eid, price)
        except InsufficientDepositError as exc:
            raise _Failed("deposit", str(exc), fatal=exc) from None
        # From here the reservation must end in confirm or release, whatever happens (cancellation too).
        settled = False
        try:
            remaining = plan.deadline - trio.current_time()
            timeout = max(min(self.settings.call_timeout_s, remaining), 0.001)
            request = InferRequest(
                request_id=plan.request_id,
                expert_id=eid,
                model_hash=plan.model_hash,
                tensors=plan.specs,
                voucher=self.signer.sign(eid, cumulative),
                deadline_ms=max(int(timeout * 1000), 1),
                payload=plan.payload,
            )
            started = trio.current_time()
            self.calls += 1
            try:
                answer = await self.link.infer(expert, request, timeout)
            except PeerTimeoutError as exc:
                await self._release(eid, cumulative, kept=True, run=run, price=price)
                settled = True
                self._mark_down(expert)
                stats.record_failure(FailureKind.TIMEOUT, now=self._now())
                raise _Failed("timeout", str(exc)) from None
            except (TransportError, ProtocolError) as exc:
                await self._release(eid, cumulative, kept=True, run=run, price=price)
                settled = True
                if isinstance(exc, TransportError):
                    self._mark_down(expert)
                stats.record_failure(FailureKind.ERROR, now=self._now())
                raise _Failed("transport", f"the call was lost: {exc}") from None
            latency_ms = (trio.current_time() - started) * 1000.0

            if isinstance(answer, ErrorMessage):
                await self._release(eid, cumulative, kept=False, run=run, price=price)
                settled = True
                return await self._on_error(expert, answer, last)

            # A result: the node holds this voucher.
            await trio.to_thread.run_sync(self.wallet.confirm, eid, cumulative)
            settled = True
            run.paid += price
            self.paid += price
        finally:
            if not settled:
                with trio.CancelScope(shield=True):
                    await self._release(eid, cumulative, kept=True, run=run, price=price)

        try:
            checked = await trio.to_thread.run_sync(self._check, plan, expert, answer)
        except BadAnswer as bad:
            stats.record_failure(FailureKind.ERROR, now=self._now())
            if bad.provable and bad.receipt is not None:
                item = await self._keep_evidence_raw(plan, expert, bad)
                run.evidence.append(item)
            raise _Failed("bad answer", bad.reason) from None
        stats.record_success(latency_ms, now=self._now())
        return _Answer(expert, checked, latency_ms)

    def _check(self, plan: CallPlan, expert: ExpertInfo, answer: Any) -> CheckedAnswer:
        return check_answer(
            answer,
            expert=expert,
            request_id=plan.request_id,
            model_hash=plan.model_hash,
            input_hash=plan.input_hash,
            manifest=plan.manifest,
            rows=plan.rows,
            recover_signer=self._recover,
            was_signer=self._was_signer,
        )

    async def _release(self, eid: int, cumulative: int, *, kept: bool, run: _Run, price: int) -> None:
        await trio.to_thread.run_sync(self.wallet.release, eid, cumulative, kept)
        if kept:
            run.paid += price
            self.paid += price

    async def _on_error(self, expert: ExpertInfo, error: ErrorMessage, last: bool) -> None:
        eid = expert.expert_id
        stats = self.book.stats(eid)
        code = error.code
        text = f"{code}: {error.message}"
        if code == ErrorCode.VOUCHER_TOO_LOW:
            await self._resync(expert, error.cumulative)  # also after the last send: the next call starts right
            if not last:
                return None
        if code == ErrorCode.INSUFFICIENT_DEPOSIT:
            await trio.to_thread.run_sync(self.funds.invalidate)
            raise _Failed(
                "deposit",
                text,
                fatal=InsufficientDepositError(
                    f"expert {eid}'s node says the escrow deposit does not cover the call ({error.message}); "
                    "deposit more with `moe client deposit` or Client.deposit()"
                ),
            )
        stats.record_failure(FailureKind.ERROR, now=self._now())
        if code == ErrorCode.BUSY:
            self._mark_down(expert)
        raise _Failed("error", text)

    # -- evidence ----------------------------------------------------------------------------------------

    async def _keep_evidence(
        self, plan: CallPlan, expert: ExpertInfo, checked: CheckedAnswer, reason: str
    ) -> EvidenceItem:
        await self._store(plan, checked.specs, checked.payload)
        return EvidenceItem(expert.expert_id, expert.operator, checked.receipt, checked.outputs, reason)

    async def _keep_evidence_raw(self, plan: CallPlan, expert: ExpertInfo, bad: BadAnswer) -> EvidenceItem:
        assert bad.receipt is not None
        await self._store(plan, bad.specs, bad.payload)
        return EvidenceItem(expert.expert_id, expert.operator, bad.receipt, dict(bad.outputs or {}), "bad output")

    async def _store(self, plan: CallPlan, specs: Sequence[TensorSpec], payload: bytes) -> None:
        store = self.evidence
        if store is None:
            return

        def put() -> None:
            store.put_encoded(plan.specs, plan.payload)
            store.put_encoded(specs, payload)

        try:
            await trio.to_thread.run_sync(put)
        except MarketError as exc:
            logger.warning("could not keep the evidence of request 0x%s: %s", plan.request_id.hex()[:12], exc)


async def gather(tasks: Sequence[Callable[[], Any]]) -> None:
    """Run the task functions concurrently; the first error cancels the others and is raised as itself.

    trio wraps errors of a nursery in an ExceptionGroup; callers of the SDK get the one error that failed
    the call instead (the others are the resulting cancellations)."""
    try:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        real = [e for e in leaves if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        if not real and leaves:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Any:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _summary(failures: Sequence[CallFailure], limit: int = 4) -> str:
    if not failures:
        return "no attempt was made"
    shown = [f"expert {f.expert_id}: {f.kind}: {f.message}" for f in failures[-limit:]]
    more = len(failures) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")
