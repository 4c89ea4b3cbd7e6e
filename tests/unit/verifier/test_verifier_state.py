"""The verifier's state machine against a fake dispute manager that enforces the contract's rules.

What is proven here: the salt and vote reach the disk before the commitment is sent; a restarted verifier
reveals exactly what it committed (also when it died between sending the commit and recording it); periods
follow the chain's clock; ineligible verifiers do not vote but still resolve; one failing dispute does not
stop the others and one hanging dispute does not hold them up; a failed claim is retried; the state directory
is locked and bound to one verifier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from market.chain.contracts import commitment_for
from market.chain.records import DisputeInfo, DisputeOpenedEvent
from market.errors import ChainError, ContractRevertError, MarketConfigError
from market.types import Deployment, DisputeStatus, ExpertInfo
from node.verifier import (
    MODELS_DIR,
    STATE_FILE,
    Decision,
    DisputeRecord,
    Phase,
    Rule,
    Verifier,
    VerifierConfig,
    VerifierState,
)

ME = "0x" + "aa" * 20
OPERATOR = "0x" + "bb" * 20
CHALLENGER = "0x" + "cc" * 20
COMMIT, REVEAL = 100, 100
DEPLOYMENT = Deployment(chain_id=31337, rpc_url="http://127.0.0.1:1", registry="0x" + "01" * 20,
                        escrow="0x" + "02" * 20, disputes="0x" + "03" * 20, block=1)  # fmt: skip


class _Account:
    address = ME


@dataclass
class _Vote:
    commitment: bytes
    revealed: bool = False
    guilty: bool = False


@dataclass
class FakeChain:
    """The parts of MarketChain the verifier uses, with DisputeManager's rules and a settable clock."""

    now: int = 1_000
    block: int = 10
    stake: int = 10**18
    events: list[DisputeOpenedEvent] = field(default_factory=list)
    votes: dict[tuple[int, str], _Vote] = field(default_factory=dict)
    status: dict[int, DisputeStatus] = field(default_factory=dict)
    claimable_wei: int = 0
    claimed: int = 0
    commit_calls: int = 0
    crash_after_commit: bool = False
    on_commit: object = None

    deployment: Deployment = DEPLOYMENT
    account: object = field(default_factory=_Account)

    @property
    def address(self) -> str:
        return ME

    commitment_for = staticmethod(commitment_for)

    def open(self, dispute_id: int, *, challenger: str = CHALLENGER, expert_id: int = 1) -> None:
        self.block += 1
        self.events.append(DisputeOpenedEvent(
            dispute_id=dispute_id, expert_id=expert_id, challenger=challenger, model_hash=b"\x11" * 32,
            request_id=b"\x12" * 32, input_hash=b"\x13" * 32, output_hash=b"\x14" * 32,
            commit_ends=self.now + COMMIT, reveal_ends=self.now + COMMIT + REVEAL,
            evidence_endpoint="/ip4/127.0.0.1/tcp/1/p2p/x", block_number=self.block, tx_hash=b"\x00" * 32,
        ))  # fmt: skip
        self.status[dispute_id] = DisputeStatus.OPEN

    def _event(self, dispute_id: int) -> DisputeOpenedEvent:
        return next(e for e in self.events if e.dispute_id == dispute_id)

    # views
    def block_number(self) -> int:
        return self.block

    def block_timestamp(self, block: int | str = "latest") -> int:
        return self.now

    def disputes_opened(self, from_block: int = 0, to_block: int | None = None) -> list[DisputeOpenedEvent]:
        return [e for e in self.events if from_block <= e.block_number <= (to_block or self.block)]

    def voting_stake(self, address: str | None = None) -> int:
        return self.stake

    def get_expert(self, expert_id: int) -> ExpertInfo:
        return ExpertInfo(expert_id=expert_id, operator=OPERATOR if expert_id == 1 else ME, signer=OPERATOR,
                          model_hash=b"\x11" * 32, capability=b"\x00" * 32, price=1, stake=10**18,
                          node_key=b"\x00" * 32, endpoint=(), registered_at=0)  # fmt: skip

    def commitment_of(self, dispute_id: int, verifier: str | None = None) -> bytes:
        vote = self.votes.get((dispute_id, ME))
        return vote.commitment if vote else bytes(32)

    def get_dispute(self, dispute_id: int) -> DisputeInfo:
        e = self._event(dispute_id)
        return DisputeInfo(dispute_id, e.expert_id, e.challenger, 0, e.model_hash, e.request_id, e.input_hash,
                           e.output_hash, e.commit_ends, e.reveal_ends, self.status[dispute_id], 0, 0, 0, 0)  # fmt: skip

    def claimable(self, address: str | None = None) -> int:
        return self.claimable_wei

    # transactions
    def commit_vote(self, dispute_id: int, commitment: bytes) -> None:
        self.commit_calls += 1
        if callable(self.on_commit):
            self.on_commit(dispute_id)
        e = self._event(dispute_id)
        if self.now >= e.commit_ends:
            raise ContractRevertError("DisputeCommitClosed", {"disputeId": dispute_id})
        if (dispute_id, ME) in self.votes:
            raise ContractRevertError("DisputeAlreadyCommitted", {"disputeId": dispute_id})
        self.votes[(dispute_id, ME)] = _Vote(commitment)
        self.block += 1
        if self.crash_after_commit:
            raise ChainError("connection lost after sending")

    def reveal_vote(self, dispute_id: int, guilty: bool, salt: bytes) -> None:
        e = self._event(dispute_id)
        if self.now < e.commit_ends:
            raise ContractRevertError("DisputeRevealNotOpen", {"disputeId": dispute_id})
        if self.now >= e.reveal_ends:
            raise ContractRevertError("DisputeRevealClosed", {"disputeId": dispute_id})
        vote = self.votes[(dispute_id, ME)]
        if vote.revealed:
            raise ContractRevertError("DisputeAlreadyRevealed", {"disputeId": dispute_id})
        if commitment_for(dispute_id, guilty, salt, ME) != vote.commitment:
            raise ContractRevertError("DisputeCommitMismatch", {"disputeId": dispute_id})
        vote.revealed, vote.guilty = True, guilty
        self.block += 1

    def resolve(self, dispute_id: int) -> DisputeStatus:
        e = self._event(dispute_id)
        if self.now < e.reveal_ends:
            raise ContractRevertError("DisputeNotOver", {"disputeId": dispute_id})
        if self.status[dispute_id] is not DisputeStatus.OPEN:
            raise ContractRevertError("DisputeAlreadyResolved", {"disputeId": dispute_id})
        vote = self.votes.get((dispute_id, ME))
        status = DisputeStatus.GUILTY if vote and vote.revealed and vote.guilty else DisputeStatus.INNOCENT
        self.status[dispute_id] = status
        self.claimable_wei += 123
        self.block += 1
        return status

    def claim(self) -> int:
        amount, self.claimable_wei = self.claimable_wei, 0
        self.claimed += amount
        return amount


def guilty_evaluator(calls: list[int] | None = None):  # noqa: ANN201
    async def evaluate(record: DisputeRecord) -> Decision:
        if calls is not None:
            calls.append(record.dispute_id)
        return Decision(True, Rule.OUTPUTS_DIFFER, "test")

    return evaluate


def make(chain: FakeChain, state_dir: Path, evaluator=None, **config) -> Verifier:  # noqa: ANN001
    return Verifier(chain, None, None, state_dir, VerifierConfig(**config),  # type: ignore[arg-type]
                    evaluator=evaluator or guilty_evaluator())  # fmt: skip


def poll(verifier: Verifier) -> None:
    trio.run(verifier.poll_once)


def saved(state_dir: Path) -> dict:
    return json.loads((state_dir / STATE_FILE).read_text())


def test_the_salt_is_on_disk_before_the_commit_is_sent(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    seen: list[dict] = []
    chain.on_commit = lambda dispute_id: seen.append(saved(tmp_path)["disputes"][str(dispute_id)])
    verifier = make(chain, tmp_path)
    poll(verifier)
    assert chain.commit_calls == 1
    (on_disk,) = seen
    assert on_disk["phase"] == "decided" and on_disk["guilty"] is True and len(on_disk["salt"]) == 66
    assert saved(tmp_path)["disputes"]["1"]["phase"] == "committed"


def test_a_restarted_verifier_reveals_what_it_committed_then_resolves_and_claims(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    calls: list[int] = []
    poll(make(chain, tmp_path, guilty_evaluator(calls)))
    assert chain.votes[(1, ME)].commitment != bytes(32)

    chain.now += COMMIT  # the reveal period opens; a new process takes over the state directory
    again = make(chain, tmp_path, guilty_evaluator(calls))
    poll(again)
    assert calls == [1]  # decided once, never re-evaluated
    assert chain.votes[(1, ME)].revealed and chain.votes[(1, ME)].guilty
    assert again.state.disputes[1].phase is Phase.REVEALED

    chain.now += REVEAL
    poll(again)
    record = again.state.disputes[1]
    assert record.phase is Phase.DONE and record.outcome == "GUILTY" and record.resolved_by_me
    assert record.salt is None and saved(tmp_path)["disputes"]["1"]["salt"] is None
    assert chain.claimed == 123


def test_a_crash_between_sending_and_recording_the_commit_is_recovered(tmp_path: Path) -> None:
    chain = FakeChain(crash_after_commit=True)
    chain.open(1)
    first = make(chain, tmp_path)
    poll(first)  # the commitment reached the chain, the verifier saw an error
    assert first.state.disputes[1].phase is Phase.DECIDED and first.state.disputes[1].failures == 1

    chain.crash_after_commit = False
    again = make(chain, tmp_path)
    poll(again)  # DisputeAlreadyCommitted, and the commitment on chain is ours: adopted
    assert again.state.disputes[1].phase is Phase.COMMITTED
    chain.now += COMMIT
    poll(again)
    assert chain.votes[(1, ME)].revealed


def test_the_commit_period_is_measured_on_the_chain_clock(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    chain.now += COMMIT  # seen only after its commit period
    verifier = make(chain, tmp_path)
    poll(verifier)
    assert chain.commit_calls == 0
    assert verifier.state.disputes[1].phase is Phase.WAITING
    chain.now += REVEAL
    poll(verifier)  # still resolves it: anyone may
    assert verifier.state.disputes[1].outcome == "INNOCENT"


@pytest.mark.parametrize("case", ["challenger", "operator", "no-stake"])
def test_ineligible_verifiers_do_not_vote_but_resolve(tmp_path: Path, case: str) -> None:
    chain = FakeChain()
    chain.open(1, challenger=ME if case == "challenger" else CHALLENGER, expert_id=2 if case == "operator" else 1)
    if case == "no-stake":
        chain.stake = 0
    calls: list[int] = []
    verifier = make(chain, tmp_path, guilty_evaluator(calls))
    poll(verifier)
    assert calls == [] and chain.commit_calls == 0
    assert verifier.state.disputes[1].phase is Phase.WAITING
    chain.now += COMMIT + REVEAL
    poll(verifier)
    assert verifier.state.disputes[1].phase is Phase.DONE


def test_one_failing_dispute_does_not_stop_the_others(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    chain.open(2)

    async def evaluate(record: DisputeRecord) -> Decision:
        if record.dispute_id == 1:
            raise RuntimeError("a bug in one dispute")
        return Decision(False, Rule.OUTPUTS_MATCH, "fine")

    verifier = make(chain, tmp_path, evaluate, max_failures=2)
    poll(verifier)
    poll(verifier)
    assert verifier.state.disputes[2].phase is Phase.COMMITTED
    assert verifier.state.disputes[1].phase is Phase.FAILED
    assert "a bug in one dispute" in verifier.state.disputes[1].last_error
    chain.now += COMMIT
    poll(verifier)
    assert chain.votes[(2, ME)].revealed and not chain.votes[(2, ME)].guilty


def test_unsafe_lie_flips_the_vote(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    verifier = make(chain, tmp_path, unsafe_lie=True)
    poll(verifier)
    chain.now += COMMIT
    poll(verifier)
    assert chain.votes[(1, ME)].revealed and chain.votes[(1, ME)].guilty is False


def test_new_events_are_scanned_once_from_the_saved_block(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    verifier = make(chain, tmp_path)
    scanned_to = chain.block
    poll(verifier)
    assert saved(tmp_path)["next_block"] == scanned_to + 1
    chain.open(2)
    again = make(chain, tmp_path)
    poll(again)
    assert sorted(again.state.disputes) == [1, 2]
    assert chain.commit_calls == 2


def test_the_state_directory_is_locked_and_bound_to_one_verifier(tmp_path: Path) -> None:
    first = VerifierState(tmp_path, chain_id=1, disputes=DEPLOYMENT.disputes, verifier=ME, start_block=0)
    first.lock()
    second = VerifierState(tmp_path, chain_id=1, disputes=DEPLOYMENT.disputes, verifier=ME, start_block=0)
    with pytest.raises(MarketConfigError, match="another verifier"):
        second.lock()
    first.save()
    first.unlock()
    second.lock()
    second.unlock()
    with pytest.raises(MarketConfigError, match="belongs to verifier"):
        VerifierState(tmp_path, chain_id=1, disputes=DEPLOYMENT.disputes, verifier=OPERATOR, start_block=0)
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(MarketConfigError, match="damaged"):
        VerifierState(tmp_path, chain_id=1, disputes=DEPLOYMENT.disputes, verifier=ME, start_block=0)


def test_taking_the_directory_removes_what_a_killed_verifier_left_half_written(tmp_path: Path) -> None:
    first = VerifierState(tmp_path, chain_id=1, disputes=DEPLOYMENT.disputes, verifier=ME, start_block=0)
    first.save()
    # A SIGKILL mid-write leaves these (seen in tests/reliability/test_verifier_faults.py).
    (tmp_path / f".{STATE_FILE}.k3x9.tmp").write_text('{"half": ')
    incoming = tmp_path / MODELS_DIR / ".incoming-7q2"
    incoming.mkdir(parents=True)
    (incoming / "weights.safetensors").write_bytes(b"\0" * 10)
    kept = tmp_path / MODELS_DIR / ("ab" * 32)
    kept.mkdir()

    second = VerifierState(tmp_path, chain_id=1, disputes=DEPLOYMENT.disputes, verifier=ME, start_block=0)
    second.lock()
    try:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([STATE_FILE, "verifier.lock", MODELS_DIR])
        assert [p.name for p in (tmp_path / MODELS_DIR).iterdir()] == [kept.name]
    finally:
        second.unlock()


def test_status_summary_never_shows_a_salt(tmp_path: Path) -> None:
    chain = FakeChain()
    chain.open(1)
    poll(make(chain, tmp_path))
    summary = VerifierState.read_summary(tmp_path)
    assert summary is not None
    (vote,) = summary["disputes"]
    assert vote["vote"] == "guilty" and vote["phase"] == "committed" and "salt" not in vote


def test_config_is_validated() -> None:
    with pytest.raises(MarketConfigError):
        VerifierConfig(poll_interval=0)
    with pytest.raises(MarketConfigError):
        VerifierConfig(threads=0)


def test_a_claim_that_fails_is_retried_on_the_next_poll(tmp_path: Path) -> None:
    """The reward is claimed once the dispute resolves; when that claim fails (the RPC drops the transaction)
    the next poll claims again, not only the next resolution or a restart."""
    chain = FakeChain()
    chain.open(1)
    verifier = make(chain, tmp_path)
    poll(verifier)
    chain.now += COMMIT
    poll(verifier)
    chain.now += REVEAL
    real_claim, failures = chain.claim, []

    def failing_claim() -> int:
        failures.append(1)
        raise ChainError("connection lost")

    chain.claim = failing_claim  # type: ignore[method-assign]
    with pytest.raises(ChainError):
        poll(verifier)  # resolved, but the claim fails: the poll fails (the run loop logs and retries it)
    assert verifier.state.disputes[1].phase is Phase.DONE and chain.claimable_wei == 123 and failures
    chain.claim = real_claim  # type: ignore[method-assign]
    poll(verifier)
    assert chain.claimed == 123 and chain.claimable_wei == 0


def test_a_dispute_stuck_in_its_evaluation_does_not_hold_up_the_others(tmp_path: Path) -> None:
    """Under `run()`, a dispute whose evidence or model fetch hangs (until its timeouts, minutes) must not
    stop the loop: another dispute's reveal period opens meanwhile and its vote is revealed at once (with the
    devnet's 20 s periods a stalled loop would forfeit that vote)."""
    chain = FakeChain()
    chain.open(1)

    async def main() -> None:
        stuck = trio.Event()

        async def evaluate(record: DisputeRecord) -> Decision:
            if record.dispute_id == 2:
                stuck.set()
                await trio.sleep_forever()  # an evidence endpoint that never answers
            return Decision(True, Rule.OUTPUTS_DIFFER, "test")

        verifier = make(chain, tmp_path, evaluate, poll_interval=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(verifier.run)
            with trio.fail_after(20):
                while (1, ME) not in chain.votes:
                    await trio.sleep(0.02)
                chain.open(2)
                await stuck.wait()
                chain.now += COMMIT  # dispute 1's reveal period opens while dispute 2 is still being evaluated
                while not chain.votes[(1, ME)].revealed:
                    await trio.sleep(0.02)
            assert verifier.state.disputes[2].phase is Phase.NEW
            nursery.cancel_scope.cancel()

    trio.run(main)
