"""The verifier node: watches disputes on chain, re-executes the disputed call, votes by commit-reveal, claims.

For each `DisputeOpened` event it may vote on (it has voting stake, and it is neither the challenger nor the
operator of the accused expert), the verifier

1. fetches the input and the claimed output by their hashes from the challenger's `evidenceEndpoint`
   (market.evidence re-hashes them: a peer can withhold evidence, never substitute it);
2. gets the model by its modelHash: from its own store, else from the accused expert's registered node
   (peer id from its on-chain nodeKey, so noise proves it is that node), else from any other expert
   registered for the same modelHash; the modelHash and the weights hash are checked before loading;
3. re-executes the model deterministically (eval mode, inference mode, a fixed number of torch threads);
4. decides with `decide_vote` and commits `keccak256(abi.encode(disputeId, guilty, salt, verifier))` during
   the commit period, reveals during the reveal period, resolves the dispute once the reveal period is over
   if nobody did yet (anyone may), and claims its rewards.

The voting rules (`decide_vote`, also in docs/security.md); the two "unavailable" rules vote only once the
party had its chance: until `unavailable_grace` of the commit period left at first sight has passed, the
verifier asks again every `unavailable_retry_s` (a challenger or an expert node restarting, or briefly
unreachable, is not judged on that), and decides on the merits as soon as the evidence and model arrive:

- evidence unavailable, or not matching its hash                     -> innocent: the challenger must substantiate
- the model is unavailable from every node registered to serve it    -> guilty: an expert must serve the model
                                                                        it registered and was paid for
- the input does not fit the manifest's input schema                 -> innocent: no honest node answers it
- this verifier failed to run the model on a valid input             -> abstain: it cannot tell
- otherwise                                                          -> guilty exactly when the claimed output
                                                                        and the recomputed one differ beyond
                                                                        the manifest's tolerance (never bit
                                                                        equality: floats differ across machines)

Time is the chain's: every period is checked against the timestamp the next block will carry (anvil's
`evm_increaseTime` moves it in tests), never against the local clock.

Durability: the state directory holds `verifier-state.json` (the next block to scan, and for each dispute
its phase, vote and salt) written atomically and fsynced. The random salt and the vote are written BEFORE
the commit transaction is sent, so a verifier that crashes and restarts reveals exactly what it committed
(a lost salt would forfeit the vote). A lock file keeps two processes off one state directory, and the
state is bound to one chain, dispute manager and verifier address.

A vote on chain is not final either: a reorg can drop the commit or the reveal transaction. So every
`recheck_s` while a period is open, a committed vote is looked up (`commitmentOf`) and committed again (same
vote, same salt) if it is gone, and a revealed one is revealed again, which the contract refuses
(`DisputeAlreadyRevealed`, at the cost of a gas estimate, no transaction) unless the reveal was dropped.

One bad dispute never stops the loop: its failure is logged and counted, and after `max_failures` it is
given up (still resolved when due). A slow one never holds the others up: under `run()` each dispute moves
in its own task (at most `max_concurrent` at once), so a fetch waiting for its timeouts delays neither the
scan for new disputes nor the reveals and resolutions of the others. Rewards are claimed after a start and
after each resolution; a claim that fails is retried on the next poll.

`VerifierConfig.unsafe_lie` flips every vote: it exists only so tests and demos can show that one lying
verifier does not change a verdict.

This module must not block the trio loop (chain calls, files and torch run in worker threads) and must never
log the salt before the vote is revealed.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from market.errors import (
    ChainError,
    ContractRevertError,
    MarketConfigError,
    MarketError,
    MarketInputError,
)
from market.evidence import DEFAULT_FETCH_TIMEOUT, fetch_evidence
from market.models.fetch import DEFAULT_MODEL_TIMEOUT, ModelSource, ModelUnavailableError, get_model
from market.transport import peer_id_from_node_key
from market.types import DisputeStatus

if TYPE_CHECKING:
    import torch

    from market.chain.contracts import MarketChain
    from market.chain.records import DisputeOpenedEvent
    from market.manifest import Tolerance
    from market.models.package import LoadedModel, ModelStore
    from market.transport import MarketHost

__all__ = [
    "STATE_FILE",
    "Decision",
    "DisputeFacts",
    "DisputeRecord",
    "Phase",
    "Rule",
    "Verifier",
    "VerifierConfig",
    "VerifierState",
    "decide_vote",
]

logger = logging.getLogger(__name__)

STATE_FILE: Final = "verifier-state.json"
LOCK_FILE: Final = "verifier.lock"
MODELS_DIR: Final = "models"
STATE_FORMAT: Final = "moe-verifier-state/1"
SALT_SIZE: Final = 32


# ==================================================================================================
# the vote decision (pure)


class Rule(enum.StrEnum):
    """Which voting rule decided a vote (see the module docstring)."""

    EVIDENCE_UNAVAILABLE = "evidence-unavailable"
    MODEL_UNAVAILABLE = "model-unavailable"
    INPUT_OFF_SCHEMA = "input-off-schema"
    COMPUTE_FAILED = "compute-failed"
    OUTPUTS_DIFFER = "outputs-differ"
    OUTPUTS_MATCH = "outputs-match"


@dataclass(frozen=True, slots=True)
class DisputeFacts:
    """What a verifier found out about a dispute; `decide_vote` turns it into a vote.

    Each `*_error` is a human-readable reason when that step failed, None when it succeeded.
    """

    evidence_error: str | None = None
    model_error: str | None = None
    input_error: str | None = None
    compute_error: str | None = None
    claimed: Mapping[str, torch.Tensor] | None = None
    recomputed: Mapping[str, torch.Tensor] | None = None
    tolerance: Tolerance | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A vote: `guilty` True/False, or None to abstain; `rule` and `reason` say why."""

    guilty: bool | None
    rule: Rule
    reason: str

    @property
    def abstains(self) -> bool:
        return self.guilty is None

    def unsafe_flipped(self) -> Decision:
        """The opposite vote (abstentions stay abstentions): the `--unsafe-lie` of tests and demos."""
        if self.guilty is None:
            return self
        return replace(self, guilty=not self.guilty, reason=f"UNSAFE LIE, the truth is: {self.reason}")


def decide_vote(facts: DisputeFacts) -> Decision:
    """The vote on a dispute from what was found out, by the rules of the module docstring. Pure."""
    from market.manifest import max_abs_diff, outputs_match

    if facts.evidence_error is not None:
        return Decision(False, Rule.EVIDENCE_UNAVAILABLE, f"the challenger's evidence is unavailable: {facts.evidence_error}")
    if facts.model_error is not None:
        return Decision(True, Rule.MODEL_UNAVAILABLE, f"no node serves the registered model: {facts.model_error}")
    if facts.input_error is not None:
        return Decision(False, Rule.INPUT_OFF_SCHEMA, f"the input does not fit the model's schema: {facts.input_error}")
    if facts.compute_error is not None:
        return Decision(None, Rule.COMPUTE_FAILED, f"re-execution failed here: {facts.compute_error}")
    if facts.claimed is None or facts.recomputed is None or facts.tolerance is None:
        return Decision(None, Rule.COMPUTE_FAILED, "nothing to compare: claimed or recomputed output missing")
    diff = max_abs_diff(facts.claimed, facts.recomputed)
    tol = facts.tolerance
    where = f"max |claimed - recomputed| = {diff:.3g}, tolerance atol={tol.atol:g} rtol={tol.rtol:g}"
    if outputs_match(facts.claimed, facts.recomputed, tol):
        return Decision(False, Rule.OUTPUTS_MATCH, f"the claimed output matches the model within tolerance ({where})")
    return Decision(True, Rule.OUTPUTS_DIFFER, f"the claimed output differs from the model's ({where})")


# ==================================================================================================
# durable state


class Phase(enum.StrEnum):
    """Where this verifier stands on one dispute."""

    NEW = "new"  # seen, not decided yet
    DECIDED = "decided"  # vote and salt saved; commit not confirmed yet
    COMMITTED = "committed"  # commitment on chain
    REVEALED = "revealed"  # vote revealed; waiting for the end of the reveal period
    WAITING = "waiting"  # not voting (not eligible, abstained, missed); only resolves when due
    DONE = "done"  # resolved on chain
    FAILED = "failed"  # gave up after repeated failures; still resolved when due


_OPEN_PHASES: Final = frozenset({Phase.NEW, Phase.DECIDED, Phase.COMMITTED, Phase.REVEALED, Phase.WAITING, Phase.FAILED})


@dataclass(slots=True)
class DisputeRecord:
    """One dispute as this verifier tracks it (the event's fields plus the verifier's progress)."""

    dispute_id: int
    expert_id: int
    challenger: str
    model_hash: bytes
    input_hash: bytes
    output_hash: bytes
    commit_ends: int
    reveal_ends: int
    evidence_endpoint: str
    phase: Phase = Phase.NEW
    guilty: bool | None = None
    salt: bytes | None = None
    rule: str = ""
    reason: str = ""
    failures: int = 0
    last_error: str = ""
    outcome: str = ""
    resolved_by_me: bool = False
    first_seen: int = 0  # chain time of the first evaluation (0: not yet)

    @classmethod
    def from_event(cls, event: DisputeOpenedEvent) -> DisputeRecord:
        return cls(
            dispute_id=event.dispute_id,
            expert_id=event.expert_id,
            challenger=event.challenger,
            model_hash=event.model_hash,
            input_hash=event.input_hash,
            output_hash=event.output_hash,
            commit_ends=event.commit_ends,
            reveal_ends=event.reveal_ends,
            evidence_endpoint=event.evidence_endpoint,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("model_hash", "input_hash", "output_hash", "salt"):
            value = data[key]
            data[key] = None if value is None else "0x" + value.hex()
        data["phase"] = str(self.phase)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DisputeRecord:
        values = dict(data)
        for key in ("model_hash", "input_hash", "output_hash", "salt"):
            value = values.get(key)
            values[key] = None if value is None else bytes.fromhex(str(value).removeprefix("0x"))
        values["phase"] = Phase(values["phase"])
        known = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def is_open(self) -> bool:
        return self.phase in _OPEN_PHASES

    def summary(self) -> dict[str, Any]:
        """What `moe verifier status` shows (never the salt of an unrevealed vote)."""
        return {
            "dispute_id": self.dispute_id,
            "expert_id": self.expert_id,
            "phase": str(self.phase),
            "vote": None if self.guilty is None else ("guilty" if self.guilty else "innocent"),
            "rule": self.rule,
            "reason": self.reason,
            "outcome": self.outcome,
            "last_error": self.last_error,
        }


class VerifierState:
    """The verifier's durable state in `state_dir` (see the module docstring). One process at a time."""

    def __init__(self, state_dir: str | os.PathLike[str], *, chain_id: int, disputes: str, verifier: str,
                 start_block: int) -> None:  # fmt: skip
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / STATE_FILE
        self.chain_id = chain_id
        self.disputes_address = disputes
        self.verifier = verifier
        self.next_block = start_block
        self.disputes: dict[int, DisputeRecord] = {}
        self._lock_fd: int | None = None
        self._load()

    # -- locking ------------------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the state directory for this process (MarketConfigError if another verifier holds it)."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise MarketConfigError(
                f"another verifier process uses {self.dir}; stop it or give this one its own --state-dir"
            ) from None
        self._lock_fd = fd
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """What a killed predecessor left half-written (this process holds the directory now): a state file
        write cut short, a fetched model not yet moved into place. The state file itself is always whole."""
        leftovers = [*self.dir.glob(f".{STATE_FILE}.*.tmp"), *(self.dir / MODELS_DIR).glob(".incoming-*")]
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if leftovers:
            logger.info("removed %d half-written file(s) a stopped verifier left in %s", len(leftovers), self.dir)

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- file ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        try:
            data = json.loads(raw)
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            bound = (int(data["chain_id"]), str(data["disputes_contract"]).lower(), str(data["verifier"]).lower())
            records = {int(k): DisputeRecord.from_json(v) for k, v in data["disputes"].items()}
            next_block = int(data["next_block"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MarketConfigError(f"verifier state {self.path} is damaged ({exc}); move it away to start afresh") from None
        if bound != (self.chain_id, self.disputes_address.lower(), self.verifier.lower()):
            raise MarketConfigError(
                f"{self.path} belongs to verifier {data['verifier']} on chain {data['chain_id']} "
                f"(dispute manager {data['disputes_contract']}); use another --state-dir for this one"
            )
        self.disputes = records
        self.next_block = max(self.next_block, next_block)

    def snapshot(self) -> bytes:
        data = {
            "format": STATE_FORMAT,
            "chain_id": self.chain_id,
            "disputes_contract": self.disputes_address,
            "verifier": self.verifier,
            "next_block": self.next_block,
            "disputes": {str(k): v.to_json() for k, v in sorted(self.disputes.items())},
        }
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")

    def write(self, data: bytes) -> None:
        """Replace the state file with `data` atomically and durably (file and directory fsynced)."""
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def save(self) -> None:
        self.write(self.snapshot())

    @staticmethod
    def read_summary(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The state file of `state_dir` as JSON without binding or locking it (for `status`), or None."""
        path = Path(state_dir) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            records = [DisputeRecord.from_json(v) for v in data.get("disputes", {}).values()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return {
            "verifier": data.get("verifier"),
            "next_block": data.get("next_block"),
            "disputes": [r.summary() for r in sorted(records, key=lambda r: r.dispute_id)],
        }


# ==================================================================================================
# the verifier


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """How the verifier works. Times in seconds."""

    poll_interval: float = 2.0
    evidence_timeout: float = DEFAULT_FETCH_TIMEOUT
    model_timeout: float = DEFAULT_MODEL_TIMEOUT
    fetch_attempts: int = 2  # evidence and model are retried this many times before a rule applies
    retry_pause: float = 1.0
    threads: int = 1  # torch threads for re-execution
    auto_resolve: bool = True
    auto_claim: bool = True
    max_failures: int = 5
    max_concurrent: int = 4  # disputes worked on at once
    recheck_s: float = 30.0  # how often a committed or revealed vote is checked to still be on chain (reorgs)
    unavailable_grace: float = 0.5  # share of the commit period an unavailable challenger or model gets
    unavailable_retry_s: float = 60.0  # at most this long between two tries meanwhile (chain time)
    start_block: int | None = None  # first block to scan on a fresh state (default: the deployment's block)
    unsafe_lie: bool = False  # flips every vote; tests and demos only

    def __post_init__(self) -> None:
        if isinstance(self.recheck_s, bool) or not isinstance(self.recheck_s, (int, float)) or not 0 <= self.recheck_s < math.inf:
            raise MarketConfigError(f"recheck_s must be a finite number of seconds >= 0, got {self.recheck_s!r}")
        if isinstance(self.unavailable_grace, bool) or not isinstance(self.unavailable_grace, (int, float)) \
                or not 0 <= self.unavailable_grace < 1:
            raise MarketConfigError(f"unavailable_grace must be a share from 0 to below 1, got {self.unavailable_grace!r}")
        for name in ("poll_interval", "evidence_timeout", "model_timeout", "retry_pause", "unavailable_retry_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise MarketConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")
        for name in ("fetch_attempts", "threads", "max_failures", "max_concurrent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MarketConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.start_block is not None and (not isinstance(self.start_block, int) or self.start_block < 0):
            raise MarketConfigError(f"start_block must be a block number, got {self.start_block!r}")


Evaluator = Callable[[DisputeRecord], Awaitable[Decision]]

# torch's thread count is process-wide and a LoadedModel is not thread-safe: one re-execution at a time.
_COMPUTE_LOCK = threading.Lock()


def _revert_name(exc: BaseException) -> str | None:
    return exc.name if isinstance(exc, ContractRevertError) else None


@dataclass(slots=True)
class _Stats:
    polls: int = 0
    committed: int = 0
    revealed: int = 0
    resolved: int = 0
    claimed_wei: int = 0
    errors: int = 0
    last_claim_check: int = field(default=-1)


class Verifier:
    """Watches disputes and votes on them (see the module docstring). `run()` loops; `poll_once()` is one step.

    `chain` must send as the verifier's account; `host` is a running MarketHost used to fetch models and
    evidence; `store` keeps fetched models. `evaluator` replaces `evaluate` (tests).
    """

    def __init__(
        self,
        chain: MarketChain,
        host: MarketHost | None,
        store: ModelStore | None,
        state_dir: str | os.PathLike[str],
        config: VerifierConfig | None = None,
        *,
        evaluator: Evaluator | None = None,
    ) -> None:
        if chain.address is None:
            raise MarketConfigError("a verifier needs an account: configure its key")
        self.chain = chain
        self.host = host
        self.store = store
        self.config = config or VerifierConfig()
        self.address: str = chain.address
        deployment = chain.deployment
        start = self.config.start_block if self.config.start_block is not None else deployment.block
        self.state = VerifierState(
            state_dir, chain_id=deployment.chain_id, disputes=deployment.disputes, verifier=self.address,
            start_block=start,
        )  # fmt: skip
        self._evaluator = evaluator or self.evaluate
        self._save_lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(self.config.max_concurrent)
        self.stats = _Stats()
        self._claim_due = True  # look at the claimable rewards on the first poll (a restart may have left some)
        self._busy: set[int] = set()  # disputes being moved forward now
        self._rechecked: dict[int, float] = {}  # dispute id -> when its vote was last checked on chain
        self._ask_again_at: dict[int, int] = {}  # dispute id -> chain time of the next try (unavailable party)
        self._workers: trio.Nursery | None = None  # run()'s nursery: there, each dispute moves in its own task
        if self.config.unsafe_lie:
            logger.warning("UNSAFE: this verifier lies on every vote (--unsafe-lie); tests and demos only")

    # -- plumbing -----------------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args)

    async def _save(self) -> None:
        async with self._save_lock:
            data = self.state.snapshot()
            await trio.to_thread.run_sync(self.state.write, data)

    async def chain_time(self) -> int:
        """The timestamp the next block will carry (at least the latest block's): the contracts' clock."""
        latest = await self._call(self.chain.block_timestamp, "latest")
        try:
            pending = await self._call(self.chain.block_timestamp, "pending")
        except ChainError:  # an RPC without a pending block: the latest one is a lower bound
            pending = latest
        return max(int(latest), int(pending))

    # -- loop ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Poll for ever (until cancelled). Chain outages are logged and retried with a growing pause."""
        self.state.lock()
        try:
            await self._save()
            logger.info(
                "verifier %s watching disputes from block %d (%d known)",
                self.address, self.state.next_block, len(self.state.disputes),
            )  # fmt: skip
            async with trio.open_nursery() as workers:
                self._workers = workers
                task_status.started()
                pause = self.config.poll_interval
                while True:
                    try:
                        await self.poll_once()
                        pause = self.config.poll_interval
                    except MarketError as exc:
                        self.stats.errors += 1
                        logger.warning("poll failed (%s); retrying in %.1f s", exc, pause)
                        pause = min(pause * 2, 60.0)
                    await trio.sleep(pause)
        finally:
            self._workers = None
            self.state.unlock()

    async def poll_once(self) -> None:
        """Scan new DisputeOpened events, then move every open dispute forward as far as the chain time allows.

        Called on its own, it returns when every dispute has moved. Under `run()` each dispute moves in its own
        task and the poll does not wait for them: one dispute whose evidence or model fetch hangs until its
        timeouts (minutes) must not hold up the scan, or the reveals and resolutions of the others."""
        self.stats.polls += 1
        latest = int(await self._call(self.chain.block_number))
        if latest >= self.state.next_block:
            events = await self._call(self.chain.disputes_opened, self.state.next_block, latest)
            for event in events:
                if event.dispute_id not in self.state.disputes:
                    self.state.disputes[event.dispute_id] = DisputeRecord.from_event(event)
                    logger.info(
                        "dispute %d opened against expert %d (commit until %d, reveal until %d)",
                        event.dispute_id, event.expert_id, event.commit_ends, event.reveal_ends,
                    )  # fmt: skip
            self.state.next_block = latest + 1
            await self._save()
        now = await self.chain_time()
        records = [r for r in self.state.disputes.values() if r.is_open and r.dispute_id not in self._busy]
        for record in records:
            self._busy.add(record.dispute_id)
        if self._workers is not None:
            for record in records:
                self._workers.start_soon(self._advance_guarded, record, now)
        elif records:
            async with trio.open_nursery() as nursery:
                for record in records:
                    nursery.start_soon(self._advance_guarded, record, now)
        if self.config.auto_claim and self._claim_due:
            await self._claim_if_due()

    async def _advance_guarded(self, record: DisputeRecord, now: int) -> None:
        try:
            async with self._limiter:
                try:
                    await self.advance(record, now)
                    if record.failures and record.phase is not Phase.FAILED:
                        record.last_error = ""
                except Exception as exc:  # one bad dispute must never stop the verifier
                    record.failures += 1
                    record.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    self.stats.errors += 1
                    if isinstance(exc, MarketError):
                        logger.warning("dispute %d: %s (failure %d)", record.dispute_id, exc, record.failures)
                    else:
                        logger.exception("dispute %d: unexpected failure %d", record.dispute_id, record.failures)
                    if record.failures >= self.config.max_failures and record.phase in (Phase.NEW, Phase.DECIDED):
                        logger.error("dispute %d: giving up voting after %d failures", record.dispute_id,
                                     record.failures)  # fmt: skip
                        record.phase = Phase.FAILED
                if record.phase is Phase.DONE:
                    self._claim_due = True  # resolved: its rewards are claimed by this poll or the next
                await self._save()
        finally:
            self._busy.discard(record.dispute_id)

    # -- one dispute --------------------------------------------------------------------------------

    async def advance(self, record: DisputeRecord, now: int) -> None:
        """Move `record` forward as far as the chain time `now` allows."""
        if record.phase is Phase.NEW:
            await self._decide(record, now)
        if record.phase is Phase.DECIDED:
            await self._commit(record, now)
        if record.phase is Phase.COMMITTED:
            await self._reveal(record, now)
        elif record.phase is Phase.REVEALED and now < record.reveal_ends and self._recheck_due(record):
            await self._reveal_again(record)
        if record.phase in (Phase.REVEALED, Phase.WAITING, Phase.FAILED) and now >= record.reveal_ends:
            await self._resolve(record)

    async def eligibility(self, record: DisputeRecord) -> str | None:
        """Why this verifier may not vote on the dispute, or None when it may (the contract's own rules)."""
        me = self.address.lower()
        if record.challenger.lower() == me:
            return "this verifier opened the dispute"
        stake = await self._call(self.chain.voting_stake, self.address)
        if stake <= 0:
            return "this verifier has no voting stake (not registered, unbonding or withdrawn)"
        expert = await self._call(self.chain.get_expert, record.expert_id)
        if expert.operator.lower() == me:
            return "this verifier operates the accused expert"
        return None

    async def _decide(self, record: DisputeRecord, now: int) -> None:
        if now >= record.commit_ends:
            record.phase, record.reason = Phase.WAITING, "the commit period was over when the dispute was seen"
            return
        if now < self._ask_again_at.get(record.dispute_id, 0):
            return
        if not record.first_seen:
            record.first_seen = now
        why_not = await self.eligibility(record)
        if why_not is not None:
            record.phase, record.reason = Phase.WAITING, f"not voting: {why_not}"
            logger.info("dispute %d: %s", record.dispute_id, record.reason)
            return
        decision = await self._evaluator(record)
        last_chance = record.first_seen + int(self.config.unavailable_grace * (record.commit_ends - record.first_seen))
        if decision.rule in (Rule.EVIDENCE_UNAVAILABLE, Rule.MODEL_UNAVAILABLE) and now < last_chance:
            wait = max(1, min(int(self.config.unavailable_retry_s), (last_chance - now) // 3))
            self._ask_again_at[record.dispute_id] = now + wait
            record.rule, record.reason = str(decision.rule), f"{decision.reason}; asking again until chain time {last_chance}"
            logger.info("dispute %d: %s", record.dispute_id, record.reason)
            return
        if self.config.unsafe_lie:
            decision = decision.unsafe_flipped()
        record.rule, record.reason = str(decision.rule), decision.reason
        if decision.guilty is None:
            record.phase = Phase.WAITING
            logger.warning("dispute %d: abstaining: %s", record.dispute_id, decision.reason)
            return
        record.guilty = decision.guilty
        record.salt = secrets.token_bytes(SALT_SIZE)
        record.phase = Phase.DECIDED
        # The salt is on disk before the commitment can be on chain: a crash never loses a committed vote.
        await self._save()
        logger.info(
            "dispute %d: voting %s (%s)", record.dispute_id, "GUILTY" if decision.guilty else "INNOCENT",
            decision.reason,
        )  # fmt: skip

    def _commitment(self, record: DisputeRecord) -> bytes:
        assert record.guilty is not None and record.salt is not None
        return self.chain.commitment_for(record.dispute_id, record.guilty, record.salt, self.address)

    async def _commit(self, record: DisputeRecord, now: int) -> None:
        commitment = self._commitment(record)
        if now >= record.commit_ends:
            await self._adopt_commit(record, commitment, "the commit period ended before the commitment was sent")
            return
        try:
            await self._call(self.chain.commit_vote, record.dispute_id, commitment)
        except ContractRevertError as exc:
            name = _revert_name(exc)
            if name == "DisputeAlreadyCommitted":
                # A previous run committed just before it stopped, or a commit thought dropped was only late
                # on a lagging RPC: this vote (its salt was on disk first) is the only one ever committed.
                record.phase = Phase.COMMITTED
                self._rechecked[record.dispute_id] = time.monotonic()
                return
            if name == "DisputeCommitClosed":
                await self._adopt_commit(record, commitment, f"commit refused ({name})")
                return
            if name in ("DisputeNotVerifier", "DisputeExpertCannotVote", "DisputeVotersFull"):
                record.phase, record.reason = Phase.WAITING, f"not voting: the contract refused the commit ({name})"
                return
            raise
        record.phase = Phase.COMMITTED
        self.stats.committed += 1
        self._rechecked[record.dispute_id] = time.monotonic()
        logger.info("dispute %d: vote committed", record.dispute_id)

    async def _adopt_commit(self, record: DisputeRecord, commitment: bytes, why: str) -> None:
        on_chain = await self._call(self.chain.commitment_of, record.dispute_id, self.address)
        if on_chain == commitment:
            record.phase = Phase.COMMITTED
            self.stats.committed += 1
            return
        record.phase, record.reason = Phase.WAITING, f"{why}; no vote of this verifier is on chain"
        logger.warning("dispute %d: %s", record.dispute_id, record.reason)

    def _recheck_due(self, record: DisputeRecord) -> bool:
        now = time.monotonic()
        if now - self._rechecked.get(record.dispute_id, -math.inf) < self.config.recheck_s:
            return False
        self._rechecked[record.dispute_id] = now
        return True

    async def _commit_still_there(self, record: DisputeRecord) -> None:
        """A reorg may have dropped the commit: commit the same vote again while the period is open."""
        on_chain = await self._call(self.chain.commitment_of, record.dispute_id, self.address)
        if on_chain != self._commitment(record):
            logger.warning("dispute %d: the vote's commitment is no longer on chain (a reorg?); committing it again",
                           record.dispute_id)  # fmt: skip
            record.phase = Phase.DECIDED  # the next step commits it again, same vote and salt

    async def _reveal_again(self, record: DisputeRecord) -> None:
        """A reorg may have dropped the reveal: the contract refuses a second one unless it did."""
        assert record.guilty is not None and record.salt is not None
        try:
            await self._call(self.chain.reveal_vote, record.dispute_id, record.guilty, record.salt)
        except ContractRevertError as exc:
            name = _revert_name(exc)
            if name in ("DisputeAlreadyRevealed", "DisputeRevealClosed"):
                return
            if name == "DisputeNoCommit":  # the commit was dropped too, and its period is over
                record.phase, record.reason = Phase.WAITING, "the vote was dropped from the chain after the commit period"
                logger.warning("dispute %d: %s", record.dispute_id, record.reason)
                return
            raise
        logger.warning("dispute %d: the reveal was no longer on chain (a reorg?); revealed it again", record.dispute_id)

    async def _reveal(self, record: DisputeRecord, now: int) -> None:
        if now < record.commit_ends:
            if self._recheck_due(record):
                await self._commit_still_there(record)
            return
        if now >= record.reveal_ends:
            record.phase, record.reason = Phase.WAITING, "the reveal period ended before the vote was revealed"
            logger.warning("dispute %d: %s", record.dispute_id, record.reason)
            return
        assert record.guilty is not None and record.salt is not None
        try:
            await self._call(self.chain.reveal_vote, record.dispute_id, record.guilty, record.salt)
        except ContractRevertError as exc:
            name = _revert_name(exc)
            if name == "DisputeRevealNotOpen":
                return  # the next block is not past commitEnds yet: next poll
            if name == "DisputeAlreadyRevealed":
                record.phase = Phase.REVEALED
                return
            if name in ("DisputeRevealClosed", "DisputeNoCommit", "DisputeCommitMismatch"):
                record.phase, record.reason = Phase.WAITING, f"reveal refused ({name})"
                logger.warning("dispute %d: %s", record.dispute_id, record.reason)
                return
            raise
        record.phase = Phase.REVEALED
        self.stats.revealed += 1
        self._rechecked[record.dispute_id] = time.monotonic()
        logger.info("dispute %d: vote revealed (%s)", record.dispute_id, "guilty" if record.guilty else "innocent")

    async def _resolve(self, record: DisputeRecord) -> None:
        dispute = await self._call(self.chain.get_dispute, record.dispute_id)
        status = dispute.status
        if status is DisputeStatus.OPEN:
            if not self.config.auto_resolve:
                return
            try:
                status = await self._call(self.chain.resolve, record.dispute_id)
                record.resolved_by_me = True
                self.stats.resolved += 1
            except ContractRevertError as exc:
                name = _revert_name(exc)
                if name == "DisputeNotOver":
                    return
                if name != "DisputeAlreadyResolved":
                    raise
                status = (await self._call(self.chain.get_dispute, record.dispute_id)).status
        record.outcome = DisputeStatus(status).name
        record.phase = Phase.DONE
        record.salt = None  # revealed or useless now; nothing secret stays on disk
        logger.info("dispute %d resolved: %s", record.dispute_id, record.outcome)

    async def _claim_if_due(self) -> None:
        """Claim what is credited to this verifier. Due after a start and after each resolution; it stays due
        until a look at the chain succeeds, so a claim that fails (an RPC error) is retried on the next poll."""
        self._claim_due = False  # cleared first: a dispute resolved meanwhile makes it due again
        try:
            amount = await self._call(self.chain.claimable, self.address)
            self.stats.last_claim_check = self.stats.polls
            if amount <= 0:
                return
            try:
                claimed = await self._call(self.chain.claim)
            except ContractRevertError as exc:
                if _revert_name(exc) == "DisputeNothingToClaim":
                    return
                raise
        except BaseException:
            self._claim_due = True
            raise
        self.stats.claimed_wei += claimed
        logger.info("claimed %d wei of dispute rewards", claimed)

    # -- evaluation ---------------------------------------------------------------------------------

    async def evaluate(self, record: DisputeRecord) -> Decision:
        """Fetch, re-execute and decide (the default evaluator)."""
        return decide_vote(await self.gather_facts(record))

    async def gather_facts(self, record: DisputeRecord) -> DisputeFacts:
        try:
            inputs = await self._fetch_evidence(record.evidence_endpoint, record.input_hash)
            claimed = await self._fetch_evidence(record.evidence_endpoint, record.output_hash)
        except MarketError as exc:
            return DisputeFacts(evidence_error=str(exc))
        try:
            model = await self._get_model(record)
        except ModelUnavailableError as exc:
            return DisputeFacts(model_error=str(exc))
        try:
            model.manifest.check_inputs(inputs)
        except MarketInputError as exc:
            return DisputeFacts(input_error=str(exc))
        try:
            recomputed = await trio.to_thread.run_sync(self._recompute, model, inputs)
        except Exception as exc:  # the model refusing this input is this verifier's problem, not a verdict
            logger.warning("dispute %d: re-execution failed: %s", record.dispute_id, exc)
            return DisputeFacts(compute_error=f"{type(exc).__name__}: {exc}")
        return DisputeFacts(claimed=claimed, recomputed=recomputed, tolerance=model.manifest.tolerance)

    async def _fetch_evidence(self, endpoint: str, digest: bytes) -> dict[str, torch.Tensor]:
        if self.host is None:
            raise MarketConfigError("this verifier has no libp2p host to fetch evidence with")
        for attempt in range(self.config.fetch_attempts):
            try:
                return await fetch_evidence(self.host, endpoint, digest, self.config.evidence_timeout)
            except MarketError as exc:
                if attempt == self.config.fetch_attempts - 1:
                    raise
                logger.info("evidence 0x%s: %s; retrying", digest.hex()[:12], exc)
                await trio.sleep(self.config.retry_pause)
        raise AssertionError("unreachable")

    async def model_sources(self, record: DisputeRecord) -> list[ModelSource]:
        """The accused expert's node first, then every other expert registered for the same modelHash."""
        accused = await self._call(self.chain.get_expert, record.expert_id)
        others = await self._call(self.chain.experts_by_model, record.model_hash)
        sources: list[ModelSource] = []
        seen: set[str] = set()
        for expert in [accused, *[e for e in others if e.expert_id != record.expert_id]]:
            if expert.model_hash != record.model_hash or not expert.endpoint:
                continue
            try:
                peer = peer_id_from_node_key(expert.node_key)
            except MarketInputError:
                continue
            if peer in seen:
                continue
            seen.add(peer)
            sources.append((peer, list(expert.endpoint)))
        return sources

    async def _get_model(self, record: DisputeRecord) -> LoadedModel:
        sources = await self.model_sources(record)
        for attempt in range(self.config.fetch_attempts):
            try:
                return await get_model(self.host, record.model_hash, self.store, sources, self.config.model_timeout)
            except ModelUnavailableError as exc:
                if attempt == self.config.fetch_attempts - 1:
                    raise
                logger.info("model 0x%s: %s; retrying", record.model_hash.hex()[:12], exc)
                await trio.sleep(self.config.retry_pause)
        raise AssertionError("unreachable")

    def _recompute(self, model: LoadedModel, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        with _COMPUTE_LOCK:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.config.threads)
            try:
                return model.forward(inputs)
            finally:
                torch.set_num_threads(previous)
