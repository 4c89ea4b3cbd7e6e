"""Reliability scenario 7: verifier processes SIGKILLed mid-vote and restarted on their state directory.

The market (tests/dispute_harness.py): anvil with commit and reveal periods of an hour, moved forward with
evm_increaseTime, so nothing depends on how fast this machine is; one expert node process serving a
"perturb" expert (its outputs are far off the model: GUILTY) and an honest one (INNOCENT); three verifier
processes A, B, C staking 1, 2 and 1.5 ETH; a challenger in this process that pays for calls and opens
disputes with the node's signed receipts. QUORUM_STAKE is 4 ETH, more than any two verifiers stake: a vote
that is lost (a salt forgotten, a reveal missed) turns the verdict into NoQuorum, so the verdict itself
shows that every vote counted.

A verifier is killed (SIGKILL to its process group: nothing runs on the way out) at one of these points:

    fetching      it has seen the dispute and asks the challenger for the evidence (its requests are held
                  by an EvidenceGate until it is dead): before it decided, nothing on disk but "new"
    random-early  0-2.5 s after the dispute opened: unseen, deciding, decided or committed
    committed     its commitment is on chain, the commit period is still running
    revealed      its vote is revealed; killed before the reveal period ends, so it is dead while the
                  others resolve the dispute and claim, and restarts only afterwards
    random-late   0-0.5 s after the clock started to move past the reveal period: revealed, resolving,
                  claiming or done

and restarted on the same state directory: for the "committed" point after the commit period has ended
(it must adopt its commitment from the chain and reveal the vote it saved before committing), for the
others at once. Then, for every dispute: the verdict is right, the dispute counts all three voters' stake,
each verifier's revealed vote is the one it decided (and its saved salt reproduces its commitment on
chain), the slash, the challenger's share, the burn and each verifier's pro-rata share are exact to the
wei, and each verifier claimed exactly what it was credited. The node redeems the challenger's vouchers
(every 0.5 s), so each row also carries the calls' money: paid = redeemed, 0 lost, 0 double.

Scenario 7b (`chain-frozen`, no kill): anvil is SIGSTOPped right after the dispute opens (the verifiers fetch,
decide and commit against a chain that does not answer) and again in the reveal period; same checks.

Quick forms (`make test`): one dispute each, a kill between commit and reveal (verifier B, GUILTY), a
kill while fetching (verifier C, INNOCENT), and two 5 s freezes (GUILTY); the long form freezes 35 s, past
the verifiers' 30 s RPC timeout. Long form (`-m chaos`): MOE_VERIFIER_CHAOS_ROUNDS rounds
(default 10) of one or two disputes, each kill point equally often in a random order, one or two random
victims; seed from MOE_VERIFIER_CHAOS_SEED (printed in the row).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from dispute_harness import (
    ETHER,
    ZERO,
    EvidenceGate,
    Market,
    digits_input,
    digits_package,
    open_market,
    wait_for,
)
from reliability_rows import Row

from market.chain.contracts import MarketChain
from market.chain.params import MarketParams
from market.types import DisputeStatus
from node.redeemer import RedeemPolicy

pytestmark = pytest.mark.timeout(900)

COMMIT = REVEAL = 3600
PARAMS = MarketParams(
    min_stake=ETHER, min_verifier_stake=ETHER, unbonding_period=3 * 86400, withdraw_delay=2 * 86400,
    dispute_bond=ETHER // 10, commit_period=COMMIT, reveal_period=REVEAL, quorum_stake=4 * ETHER,
    slash_bps=5_000, challenger_bps=4_000, verifier_bps=4_000, expert_bond_bps=5_000,
)  # fmt: skip
VERIFIER_STAKES = {"A": ETHER, "B": 2 * ETHER, "C": 3 * ETHER // 2}
VOTERS = tuple(VERIFIER_STAKES)
TOTAL_STAKE = sum(VERIFIER_STAKES.values())
assert all(TOTAL_STAKE - s < PARAMS.quorum_stake for s in VERIFIER_STAKES.values())  # every vote is needed
PRICE = 10**12
EXPERT_STAKE = 4 * ETHER
BEHAVIOURS = ("perturb", "honest")
VERDICT = {"perturb": DisputeStatus.GUILTY, "honest": DisputeStatus.INNOCENT}
POINTS = ("fetching", "random-early", "committed", "revealed", "random-late")
FROZEN = "chain-frozen"  # no kill: the chain RPC stops answering mid-vote (anvil SIGSTOPped for a while)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Market]:
    workdir = tmp_path_factory.mktemp("verifier-faults")
    redeem = RedeemPolicy(threshold_wei=10**18, max_age_s=1.0, max_batch=500, interval_s=0.5, max_backoff_s=4.0)
    with open_market(
        workdir, digits_package(request.config, workdir), params=PARAMS, behaviours=BEHAVIOURS,
        verifier_stakes=VERIFIER_STAKES, price=PRICE, expert_stake=EXPERT_STAKE, evidence_gate=EvidenceGate(),
        redeem=redeem, label="verifier faults",
    ) as m:  # fmt: skip
        yield m


# ==================================================================================================
# one round: disputes opened, verifiers killed at a point and restarted, the vote driven to the claims


@dataclass
class Round:
    point: str
    victims: tuple[str, ...]
    disputes: dict[int, str] = field(default_factory=dict)  # dispute id -> behaviour of the accused expert
    from_block: int = 0
    stake_before: dict[int, int] = field(default_factory=dict)  # expert id -> stake before the round
    burn_before: int = 0
    redeemed_before: dict[int, int] = field(default_factory=dict)  # expert id -> redeemed for the client
    at_kill: dict[str, dict[int, str]] = field(default_factory=dict)  # victim -> dispute -> what it had done
    kills: int = 0
    freezes: int = 0
    freeze_s: float = 0.0
    commits_in_period: bool = True
    seconds: float = 0.0


def _voted(m: Market, dispute_ids: Sequence[int], names: Sequence[str], from_block: int) -> bool:
    revealed = {(v.dispute_id, v.verifier) for v in m.reader.votes_revealed(from_block)}
    return all((d, m.verifiers[n].address) in revealed for d in dispute_ids for n in names)


def _kill(m: Market, rnd: Round) -> None:
    """SIGKILL the round's victims, then note what each had done per dispute (its state file and the chain).

    A commitment on chain must always have its vote and salt on disk (saved before the commit was sent),
    and they must reproduce it: that is the promise a restarted verifier keeps."""
    for name in rnd.victims:
        m.kill_verifier(name)
    rnd.kills += len(rnd.victims)
    r = m.reader
    revealed = {(v.dispute_id, v.verifier) for v in r.votes_revealed(rnd.from_block)}
    for name in rnd.victims:
        address = m.verifiers[name].address
        for dispute_id in rnd.disputes:
            record = m.verifier_record(name, dispute_id)
            phase = "unseen" if record is None else record["phase"]
            on_chain = r.commitment_of(dispute_id, address)
            if on_chain != ZERO and phase not in ("revealed", "done"):
                assert record is not None and record["salt"] is not None, (name, dispute_id, record)
                salt = bytes.fromhex(record["salt"].removeprefix("0x"))
                mine = MarketChain.commitment_for(dispute_id, record["guilty"], salt, address)
                assert mine == on_chain, f"verifier {name}'s saved vote does not reproduce its commitment"
            chain_says = "revealed" if (dispute_id, address) in revealed else (
                "committed" if on_chain != ZERO else "no commit")  # fmt: skip
            if r.get_dispute(dispute_id).status is not DisputeStatus.OPEN:
                chain_says += ", resolved, " + ("unclaimed" if r.claimable(address) else "claimed")
            rnd.at_kill.setdefault(name, {})[dispute_id] = f"{phase} ({chain_says} on chain)"


def _freeze_chain(m: Market, rnd: Round) -> None:
    anvil = m.devnet._proc  # noqa: SLF001 - the test freezes the chain process itself
    assert anvil is not None
    os.kill(anvil.pid, signal.SIGSTOP)
    try:
        time.sleep(rnd.freeze_s)
    finally:
        os.kill(anvil.pid, signal.SIGCONT)
    rnd.freezes += 1


def _restart(m: Market, rnd: Round) -> None:
    for name in rnd.victims:
        m.restart_verifier(name, wait=False)
    for name in rnd.victims:
        m.wait_verifier(name)


def _commits_then_check_period(m: Market, rnd: Round) -> None:
    ids = list(rnd.disputes)
    m.wait_commits(ids, VOTERS)
    now = m.reader.block_timestamp()
    rnd.commits_in_period = all(now < m.reader.get_dispute(d).commit_ends for d in ids)


def run_round(m: Market, behaviours: Sequence[str], point: str, victims: Sequence[str], rng: random.Random,
              seed: int, freeze_s: float = 0.0) -> Round:  # fmt: skip
    """Open one dispute per behaviour, kill `victims` at `point`, restart them, drive the vote to the claims."""
    assert (point in POINTS and victims) or (point == FROZEN and not victims)
    assert len(set(behaviours)) == len(behaviours)
    started = time.monotonic()
    r = m.reader
    rnd = Round(point, tuple(victims), freeze_s=freeze_s)
    experts = [m.expert(b) for b in behaviours]
    rnd.stake_before = {e: r.get_expert(e).stake for e in experts}
    rnd.burn_before = r.native_balance(r.disputes.functions.BURN_ADDRESS().call())
    rnd.redeemed_before = {e: r.redeemed(m.client.address, e) for e in experts}
    gate = m.challenger.gate
    assert gate is not None
    peers = [m.verifier_peer(v) for v in victims]
    if point == "fetching":
        gate.hold(*peers)
    try:
        calls = [m.infer(e, digits_input(3, seed + i)) for i, e in enumerate(experts)]
        rnd.from_block = r.block_number() + 1  # event queries include their first block
        for behaviour, (_, receipt, evidence) in zip(behaviours, calls, strict=True):
            rnd.disputes[m.dispute(receipt, evidence)] = behaviour
        ids = list(rnd.disputes)
        if point == "fetching":
            # Every victim is inside an evidence fetch (held there): it has decided nothing on that dispute, and
            # its other disputes wait behind it (one poll advances all of them, one request at a time).
            wait_for(lambda: all(gate.pending(p) > 0 for p in peers), f"{victims} fetching evidence", m)
            _kill(m, rnd)
        elif point == "random-early":
            time.sleep(rng.uniform(0.0, 2.5))
            _kill(m, rnd)
    finally:
        gate.release(*peers)

    if point == FROZEN:
        # No kill: the chain stops answering (anvil SIGSTOPped) while the verifiers fetch, decide and commit,
        # and again while they reveal; every verifier waits out its blocked RPC calls and carries on.
        _freeze_chain(m, rnd)
        _commits_then_check_period(m, rnd)
        r.increase_time(COMMIT + 1)
        _freeze_chain(m, rnd)
        m.wait_reveals(ids, VOTERS)
        r.increase_time(REVEAL + 1)
        m.wait_resolved(ids)
        m.wait_claims(VOTERS)
    elif point in ("fetching", "random-early"):
        _restart(m, rnd)  # within the commit period: it must still commit
        _commits_then_check_period(m, rnd)
        r.increase_time(COMMIT + 1)
        m.wait_reveals(ids, VOTERS)
        r.increase_time(REVEAL + 1)
        m.wait_resolved(ids)
        m.wait_claims(VOTERS)
    elif point == "committed":
        addresses = [m.verifiers[v].address for v in victims]
        # Polled quickly: the kill lands as soon after the commit as this process can make it.
        deadline = time.monotonic() + 90
        while not all(r.commitment_of(d, a) != ZERO for d in ids for a in addresses):
            assert time.monotonic() < deadline, f"no commit of {victims}\n{m.logs()}"
            time.sleep(0.01)
        _kill(m, rnd)
        m.wait_commits(ids, [v for v in VOTERS if v not in victims])
        r.increase_time(COMMIT + 1)  # the victims come back only in the reveal period
        _restart(m, rnd)
        m.wait_reveals(ids, VOTERS)
        r.increase_time(REVEAL + 1)
        m.wait_resolved(ids)
        m.wait_claims(VOTERS)
    elif point == "revealed":
        _commits_then_check_period(m, rnd)
        r.increase_time(COMMIT + 1)
        wait_for(lambda: _voted(m, ids, victims, rnd.from_block), f"reveals of {victims}", m)
        _kill(m, rnd)
        m.wait_reveals(ids, VOTERS)
        r.increase_time(REVEAL + 1)
        m.wait_resolved(ids)  # by the verifiers still running
        m.wait_claims([v for v in VOTERS if v not in victims])
        _restart(m, rnd)
        m.wait_claims(victims)
    else:  # random-late
        _commits_then_check_period(m, rnd)
        r.increase_time(COMMIT + 1)
        m.wait_reveals(ids, VOTERS)
        # The clock moves past the reveal period in another thread while the kill lands 0-0.5 s after it
        # started: before, during or after the victims' resolve and claim.
        mover = threading.Thread(target=m.chain().increase_time, args=(REVEAL + 1,))
        mover.start()
        time.sleep(rng.uniform(0.0, 0.5))
        _kill(m, rnd)
        mover.join(60)
        _restart(m, rnd)
        m.wait_resolved(ids)
        m.wait_claims(VOTERS)
    # A verifier may claim in the same poll as its reveal (it looks at its claimable on its first poll after
    # a start) and record the resolution only on its next poll: wait for that too.
    wait_for(lambda: all((m.verifier_record(n, d) or {}).get("phase") == "done" for n in VOTERS for d in ids),
             "every verifier to record the resolution", m)  # fmt: skip
    rnd.seconds = time.monotonic() - started
    return rnd


# ==================================================================================================
# the checks


def check_round(m: Market, rnd: Round) -> dict[str, Any]:
    """Every check of the module docstring for one round; returns notes for its row."""
    r = m.reader
    burned_total = 0
    credited: dict[str, int] = {}
    verdicts: dict[str, str] = {}
    slashed_notes: dict[str, int] = {}
    revealed = r.votes_revealed(rnd.from_block)
    for dispute_id, behaviour in rnd.disputes.items():
        d = r.get_dispute(dispute_id)
        expected = VERDICT[behaviour]
        verdicts[str(dispute_id)] = d.status.name
        assert d.status is expected, (dispute_id, behaviour, d, m.logs())
        guilty = expected is DisputeStatus.GUILTY
        # All three votes were revealed and count, each the vote its verifier decided.
        assert d.voters == len(VOTERS), (dispute_id, d)
        assert (d.guilty_stake, d.innocent_stake) == ((TOTAL_STAKE, 0) if guilty else (0, TOTAL_STAKE)), d
        votes = {v.verifier: (v.guilty, v.stake) for v in revealed if v.dispute_id == dispute_id}
        assert votes == {m.verifiers[n].address: (guilty, s) for n, s in VERIFIER_STAKES.items()}, votes
        for name in VOTERS:
            record = m.verifier_record(name, dispute_id)
            assert record is not None and record["phase"] == "done", f"{name}: {record}"
            assert record["guilty"] is guilty and record["outcome"] == expected.name, f"{name}: {record}"
            assert record["salt"] is None, (name, "a salt stayed on disk after the resolution")
        # The money of the verdict, to the wei.
        expert_id = d.expert_id
        bond = PARAMS.dispute_bond
        if guilty:
            slashed = rnd.stake_before[expert_id] * PARAMS.slash_bps // 10_000
            to_challenger = slashed * PARAMS.challenger_bps // 10_000
            pool = slashed * PARAMS.verifier_bps // 10_000
            shares = {m.verifiers[n].address: pool * s // TOTAL_STAKE for n, s in VERIFIER_STAKES.items()}
            burned_total += slashed - to_challenger - sum(shares.values())
            expected_credits = {m.client.address: bond + to_challenger, **shares}
            assert d.slashed == slashed
            assert r.get_expert(expert_id).stake == rnd.stake_before[expert_id] - slashed
            slashed_notes[str(dispute_id)] = slashed
        else:
            pool = bond - bond * PARAMS.expert_bond_bps // 10_000
            shares = {m.verifiers[n].address: pool * s // TOTAL_STAKE for n, s in VERIFIER_STAKES.items()}
            expected_credits = {m.operator.address: bond - sum(shares.values()), **shares}
            assert d.slashed == 0 and r.get_expert(expert_id).stake == rnd.stake_before[expert_id]
        assert m.credits(dispute_id) == expected_credits, dispute_id
        for address, share in shares.items():
            credited[address] = credited.get(address, 0) + share
    burn = r.disputes.functions.BURN_ADDRESS().call()
    assert r.native_balance(burn) - rnd.burn_before == burned_total
    # Each verifier (the victims after their restart) claimed exactly what it was credited, nothing is left.
    claimed: dict[str, int] = {}
    for name in VOTERS:
        address = m.verifiers[name].address
        claimed[name] = m.claimed_by(address, rnd.from_block)
        assert claimed[name] == credited[address], (name, claimed[name], credited[address])
        assert r.claimable(address) == 0
    assert rnd.commits_in_period
    return {"point": rnd.point, "victims": list(rnd.victims), "at_kill": rnd.at_kill, "verdicts": verdicts,
            "slashed": slashed_notes, "claimed": claimed}  # fmt: skip


def money(m: Market, rounds: Sequence[Round], row: Row) -> None:
    """The challenger's calls of these rounds: paid (signed) and redeemed by the node (waited for)."""
    r = m.reader
    before: dict[int, int] = {}
    for rnd in rounds:
        for e, v in rnd.redeemed_before.items():
            before.setdefault(e, v)
    wait_for(lambda: all(r.redeemed(m.client.address, e) == m.cumulative[e] for e in before),
             "the node to redeem the challenger's vouchers", m)  # fmt: skip
    redeemed = {e: r.redeemed(m.client.address, e) for e in before}
    row.paid_wei = sum(m.cumulative[e] - before[e] for e in before)
    row.redeemed_wei = sum(redeemed[e] - before[e] for e in before)
    row.lost_vouchers = max(0, row.paid_wei - row.redeemed_wei) // PRICE
    row.double_payments = sum(1 for e in before if redeemed[e] > m.cumulative[e])


def votes_row(row: Row, m: Market, rounds: Sequence[Round]) -> None:
    """attempted / succeeded / failed count votes: three per dispute, succeeded = revealed and counted."""
    for rnd in rounds:
        for dispute_id in rnd.disputes:
            row.attempted += len(VOTERS)
            row.succeeded += m.reader.get_dispute(dispute_id).voters
    row.failed = row.attempted - row.succeeded


def record(m: Market, record_row: Any, name: str, rounds: Sequence[Round], notes: dict[str, Any],
           started: float) -> Row:  # fmt: skip
    row = Row(name)
    votes_row(row, m, rounds)
    money(m, rounds, row)
    row.seconds = time.monotonic() - started
    row.notes.update(notes)
    row.notes["attempted"] = "votes: 3 per dispute (A, B, C); succeeded = revealed and counted on chain"
    record_row(row)
    assert row.failed == 0 and row.lost_vouchers == 0 and row.double_payments == 0, row
    return row


# ==================================================================================================
# scenarios


def test_verifier_sigkill_between_commit_and_reveal_quick(market: Market, record_row: Any) -> None:
    """B (the largest stake) is killed as soon as its commitment is on chain; it comes back after the commit
    period and must reveal exactly the vote it committed: GUILTY with all 4.5 ETH of stake, exact money."""
    started = time.monotonic()
    rnd = run_round(market, ["perturb"], "committed", ["B"], random.Random(1), seed=100)
    (dispute_id,) = rnd.disputes
    at_kill = rnd.at_kill["B"][dispute_id]
    assert at_kill in ("decided (committed on chain)", "committed (committed on chain)"), at_kill
    notes = check_round(market, rnd)
    record(market, record_row, "7 verifier SIGKILL commit->reveal (quick)", [rnd], notes, started)


def test_verifier_sigkill_while_fetching_quick(market: Market, record_row: Any) -> None:
    """C is killed while it fetches the evidence (held by the gate: before it decided); restarted at once, it
    decides again and commits within the commit period: INNOCENT with all 4.5 ETH of stake, exact money."""
    started = time.monotonic()
    rnd = run_round(market, ["honest"], "fetching", ["C"], random.Random(2), seed=200)
    (dispute_id,) = rnd.disputes
    assert rnd.at_kill["C"][dispute_id] == "new (no commit on chain)", rnd.at_kill
    notes = check_round(market, rnd)
    record(market, record_row, "7 verifier SIGKILL fetching (quick)", [rnd], notes, started)


def run_frozen(market: Market, record_row: Any, seconds: float, name: str) -> None:
    started = time.monotonic()
    rnd = run_round(market, ["perturb"], FROZEN, [], random.Random(3), seed=300 + int(seconds), freeze_s=seconds)
    assert rnd.freezes == 2
    notes = check_round(market, rnd)
    notes["freeze_s"] = seconds
    record(market, record_row, name, [rnd], notes, started)


def test_chain_frozen_during_a_vote_quick(market: Market, record_row: Any) -> None:
    """anvil is SIGSTOPped for 5 s right after the dispute opens (the verifiers fetch, decide and try to
    commit against a chain that does not answer) and again in the reveal period: every vote still counts,
    GUILTY with all 4.5 ETH of stake, exact money."""
    run_frozen(market, record_row, 5.0, "7b chain frozen 5s twice mid-vote (quick)")


@pytest.mark.chaos
def test_chain_frozen_during_a_vote_long(market: Market, record_row: Any) -> None:
    """The same with 35 s freezes: longer than the verifiers' RPC timeout (30 s), so their calls fail and
    are retried."""
    run_frozen(market, record_row, 35.0, "7b chain frozen 35s twice mid-vote (long)")


@pytest.mark.chaos
def test_verifier_sigkill_at_random_points_long(market: Market, record_row: Any) -> None:
    rounds_n = int(os.environ.get("MOE_VERIFIER_CHAOS_ROUNDS", "10"))
    seed = int(os.environ.get("MOE_VERIFIER_CHAOS_SEED", str(random.randrange(1 << 30))))
    rng = random.Random(seed)
    started = time.monotonic()
    points = [POINTS[i % len(POINTS)] for i in range(rounds_n)]
    rng.shuffle(points)
    rounds: list[Round] = []
    per_round: list[dict[str, Any]] = []
    for i, point in enumerate(points):
        behaviours = rng.choice([["perturb"], ["honest"], ["perturb", "honest"]])
        victims = rng.sample(VOTERS, rng.choice([1, 1, 2]))
        rnd = run_round(market, behaviours, point, victims, rng, seed=1000 + 10 * i)
        rounds.append(rnd)
        notes = check_round(market, rnd)
        per_round.append({**notes, "s": round(rnd.seconds, 1)})
    kills_per_point = {p: sum(r.kills for r in rounds if r.point == p) for p in POINTS}
    notes = {"seed": seed, "rounds": rounds_n, "disputes": sum(len(r.disputes) for r in rounds),
             "kills": sum(r.kills for r in rounds), "kills_per_point": kills_per_point, "per_round": per_round}  # fmt: skip
    record(market, record_row, "7 verifier SIGKILL random points (long)", rounds, notes, started)
