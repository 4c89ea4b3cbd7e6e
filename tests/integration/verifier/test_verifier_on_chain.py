"""The Verifier class in-process against a real chain (anvil) and real libp2p hosts, one poll at a time.

Proves on chain: a model that no registered node serves is voted guilty; evidence the challenger does not
serve is voted innocent; a model the accused node does not serve is fetched from another expert registered
for the same modelHash (and then judged on its merits); a verifier restarted after committing reveals what
it committed; two verifiers of 1 ETH reach the 2 ETH quorum and resolve; rewards are claimed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from market.chain.contracts import MarketChain, capability_id
from market.chain.devnet import Devnet, throwaway_signer
from market.chain.eip712 import ReceiptSigner
from market.chain.params import MarketParams
from market.chain.signer import LocalSigner
from market.errors import RemoteError
from market.evidence import EvidenceStore, serve_evidence
from market.manifest import Tolerance
from market.models.architectures import MLP
from market.models.package import ModelStore, pack
from market.protocol.codec import encode_tensors
from market.protocol.hashing import new_request_id
from market.protocol.ids import MODEL
from market.protocol.messages import ErrorCode, ModelRequest, ModelResponse
from market.transport import PeerId, open_host
from market.types import DisputeStatus, Receipt
from node.verifier import Phase, Rule, Verifier, VerifierConfig

pytestmark = pytest.mark.timeout(300)

ETHER = 10**18
COMMIT = REVEAL = 3600
PARAMS = MarketParams(
    min_stake=ETHER, min_verifier_stake=ETHER, unbonding_period=3 * 86400, withdraw_delay=2 * 86400,
    dispute_bond=ETHER // 10, commit_period=COMMIT, reveal_period=REVEAL, quorum_stake=2 * ETHER,
    slash_bps=5_000, challenger_bps=4_000, verifier_bps=4_000, expert_bond_bps=5_000,
)  # fmt: skip
SIZES = [8, 16, 3]


@pytest.fixture(scope="module")
def devnet() -> Iterator[Devnet]:
    with Devnet(params=PARAMS) as net:
        yield net


def packed(tmp_path: Path, seed: int) -> tuple[ModelStore, bytes]:
    torch.manual_seed(seed)
    manifest = pack(
        MLP(SIZES, "relu"), "mlp", {"sizes": SIZES, "activation": "relu"},
        [{"name": "x", "dtype": "float32", "shape": [-1, 8]}],
        [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
        Tolerance(1e-4, 1e-3), f"tiny-{seed}", "tiny-mlp", tmp_path / f"pkg{seed}",
    )  # fmt: skip
    store = ModelStore(tmp_path / f"served{seed}")
    store.add(tmp_path / f"pkg{seed}")
    return store, manifest.model_hash


def model_handler(store: ModelStore) -> Any:
    async def on_model(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        request = ModelRequest.from_header(header, payload)
        if not store.has(request.model_hash):
            raise RemoteError(str(ErrorCode.NOT_FOUND), "not here")
        answer = ModelResponse(
            manifest=json.loads(store.manifest_bytes(request.model_hash)),
            payload=store.weights_bytes(request.model_hash),
        )
        return answer.to_header(), answer.payload

    return on_model


@dataclass
class Roles:
    """The market's actors for one test, on THROWAWAY TEST KEYS (anvil accounts `first` to `first` + 3):
    an operator, a challenger, two registered verifiers of 1 ETH, a reader and the node's receipt signer."""

    operator: MarketChain
    challenger: MarketChain
    voters: list[MarketChain]
    reader: MarketChain
    receipts: ReceiptSigner

    @classmethod
    def on(cls, devnet: Devnet, first: int) -> Roles:
        deployment = devnet.deployment
        assert deployment is not None

        def chain(signer: LocalSigner | None) -> MarketChain:
            return MarketChain(deployment, signer, receipt_timeout=30.0, poll_interval=0.02)

        voters = [chain(throwaway_signer(first + 2)), chain(throwaway_signer(first + 3))]
        for v in voters:
            v.register_verifier(ETHER)
        hot = LocalSigner.generate()
        return cls(chain(throwaway_signer(first)), chain(throwaway_signer(first + 1)), voters, chain(None),
                   hot.receipt_signer(deployment.chain_id, deployment.disputes))  # fmt: skip


def test_verifiers_judge_disputes_on_chain_and_survive_a_restart(devnet: Devnet, tmp_path: Path) -> None:
    roles = Roles.on(devnet, 1)
    operator, challenger, voters, reader, receipts = (
        roles.operator, roles.challenger, roles.voters, roles.reader, roles.receipts
    )
    hot_address = receipts.address

    served, shared_model = packed(tmp_path, 0)  # served by a second expert only
    _, orphan_model = packed(tmp_path, 1)  # served by nobody
    evidence = EvidenceStore(tmp_path / "evidence")
    late = EvidenceStore(tmp_path / "late-evidence")  # not served until the challenger "comes back"
    x = {"x": torch.rand(2, 8)}
    honest_y = served.get(shared_model)(x)
    config = VerifierConfig(poll_interval=0.1, evidence_timeout=5, model_timeout=20, fetch_attempts=1, threads=2)

    async def main() -> None:
        async with (
            open_host() as challenger_host, open_host() as lazy_node, open_host() as other_node,
            open_host() as host0, open_host() as host1,
        ):  # fmt: skip
            serve_evidence(challenger_host, evidence)
            lazy_node.serve(MODEL, model_handler(ModelStore(tmp_path / "empty")))
            other_node.serve(MODEL, model_handler(served))

            def register(node: Any, model_hash: bytes) -> int:
                endpoint = [a.split("/p2p/")[0] for a in node.listen_addrs]
                return operator.register_expert(
                    hot_address, model_hash, capability_id("tiny-mlp"), 10**12,
                    node.identity.public_key_bytes, endpoint, ETHER,
                )  # fmt: skip

            def open_dispute(expert_id: int, model_hash: bytes, inputs: dict, outputs: dict, keep: bool,
                             store: EvidenceStore = evidence) -> int:
                in_specs, in_payload = encode_tensors(inputs)
                out_specs, out_payload = encode_tensors(outputs)
                in_hash = store.put_encoded(in_specs, in_payload) if keep else bytes(32)
                out_hash = store.put_encoded(out_specs, out_payload) if keep else b"\x01" * 32
                receipt = Receipt(expert_id, model_hash, new_request_id(), in_hash, out_hash, 10**12)
                return challenger.open_dispute(receipts.sign(receipt), challenger_host.listen_addrs[0])

            def setup() -> dict[str, int]:
                lazy_shared = register(lazy_node, shared_model)
                register(other_node, shared_model)
                lazy_orphan = register(lazy_node, orphan_model)
                return {
                    # the accused node does not serve the model, another registered node does: judged on merits
                    "fallback": open_dispute(lazy_shared, shared_model, x, honest_y, keep=True),
                    # nobody serves the model the expert registered: guilty
                    "no-model": open_dispute(lazy_orphan, orphan_model, x, {"y": torch.zeros(2, 3)}, keep=True),
                    # the challenger does not serve its evidence: innocent, once it had its chance
                    "no-evidence": open_dispute(lazy_shared, shared_model, x, honest_y, keep=False),
                    # the challenger serves its evidence only after the first try: judged on the merits
                    "late-evidence": open_dispute(lazy_shared, shared_model, x, {"y": honest_y["y"] + 1}, keep=True,
                                                  store=late),
                }

            ids = await trio.to_thread.run_sync(setup)

            def verifier(i: int) -> Verifier:
                return Verifier(voters[i], [host0, host1][i], ModelStore(tmp_path / f"models{i}"),
                                tmp_path / f"state{i}", config)  # fmt: skip

            first = [verifier(0), verifier(1)]
            for v in first:
                await v.poll_once()

            def committed() -> dict[str, list[bool]]:
                return {name: [reader.commitment_of(d, v.address) != bytes(32) for v in voters] for name, d in ids.items()}

            # Only the dispute with everything at hand is voted at once; an unavailable party gets until half
            # of the commit period before the "unavailable" rules vote.
            assert committed() == {"fallback": [True, True], "no-model": [False, False], "no-evidence": [False, False],
                                   "late-evidence": [False, False]}  # fmt: skip
            assert all(first[0].state.disputes[ids[n]].phase is Phase.NEW for n in ("no-model", "no-evidence"))
            assert "asking again" in first[0].state.disputes[ids["no-evidence"]].reason
            for d in late.hashes():
                evidence.put_encoded(*late.get(d))  # the challenger is back with its evidence
            await trio.to_thread.run_sync(reader.increase_time, COMMIT // 2 + 1)
            for v in first:
                await v.poll_once()
            assert all(all(votes) for votes in committed().values())
            rules = {name: first[0].state.disputes[d].rule for name, d in ids.items()}
            assert rules == {
                "fallback": Rule.OUTPUTS_MATCH, "no-model": Rule.MODEL_UNAVAILABLE,
                "no-evidence": Rule.EVIDENCE_UNAVAILABLE, "late-evidence": Rule.OUTPUTS_DIFFER,
            }  # fmt: skip
            assert (tmp_path / "models0" / shared_model.hex()).is_dir()  # fetched from the other node

            # Both verifiers "restart": new instances read the committed votes and salts back from disk.
            again = [verifier(0), verifier(1)]
            assert all(r.phase is Phase.COMMITTED for v in again for r in v.state.disputes.values())
            await trio.to_thread.run_sync(reader.increase_time, COMMIT + 1)
            for v in again:
                await v.poll_once()
            await trio.to_thread.run_sync(reader.increase_time, REVEAL + 1)
            for v in again:
                await v.poll_once()

            outcome = {name: reader.get_dispute(d).status for name, d in ids.items()}
            assert outcome == {
                "fallback": DisputeStatus.INNOCENT, "no-model": DisputeStatus.GUILTY,
                "no-evidence": DisputeStatus.INNOCENT, "late-evidence": DisputeStatus.GUILTY,
            }  # fmt: skip
            assert all(r.phase is Phase.DONE for v in again for r in v.state.disputes.values())
            assert sum(r.resolved_by_me for v in again for r in v.state.disputes.values()) == len(ids)
            for v in voters:
                assert reader.claimable(v.address) == 0  # claimed by the verifiers
            assert sum(v.stats.claimed_wei for v in again) > 0

    trio.run(main)


def test_votes_a_reorg_drops_are_committed_and_revealed_again(devnet: Devnet, tmp_path: Path) -> None:
    """The reorgs are anvil's evm_revert to a snapshot taken before the commit, then before the reveal: the
    blocks holding them are gone. Both verifiers' votes are needed for the quorum (2 ETH)."""
    from market.chain.devnet import rpc_request

    roles = Roles.on(devnet, 5)
    operator, challenger, voters, reader, receipts = (
        roles.operator, roles.challenger, roles.voters, roles.reader, roles.receipts
    )
    hot_address = receipts.address
    _, orphan_model = packed(tmp_path, 2)  # served by nobody: guilty
    evidence = EvidenceStore(tmp_path / "evidence")
    config = VerifierConfig(poll_interval=0.1, evidence_timeout=5, model_timeout=5, fetch_attempts=1, recheck_s=0,
                            unavailable_grace=0)  # the orphan model is voted on at once

    def snapshot() -> str:
        return rpc_request(devnet.rpc_url, "evm_snapshot")

    def reorg(to: str) -> None:
        assert rpc_request(devnet.rpc_url, "evm_revert", [to])

    async def main() -> None:
        async with open_host() as challenger_host, open_host() as node, open_host() as h0, open_host() as h1:
            serve_evidence(challenger_host, evidence)

            def setup() -> int:
                endpoint = [a.split("/p2p/")[0] for a in node.listen_addrs]
                expert = operator.register_expert(
                    hot_address, orphan_model, capability_id("tiny-mlp"), 10**12, node.identity.public_key_bytes,
                    endpoint, ETHER,
                )  # fmt: skip
                in_specs, in_payload = encode_tensors({"x": torch.rand(2, 8)})
                out_specs, out_payload = encode_tensors({"y": torch.zeros(2, 3)})
                receipt = Receipt(expert, orphan_model, new_request_id(), evidence.put_encoded(in_specs, in_payload),
                                  evidence.put_encoded(out_specs, out_payload), 10**12)  # fmt: skip
                return challenger.open_dispute(receipts.sign(receipt), challenger_host.listen_addrs[0])

            dispute_id = await trio.to_thread.run_sync(setup)
            verifiers = [
                Verifier(voters[i], [h0, h1][i], ModelStore(tmp_path / f"m{i}"), tmp_path / f"s{i}", config)
                for i in range(2)
            ]

            def committed() -> list[bool]:
                return [reader.commitment_of(dispute_id, v.address) != bytes(32) for v in voters]

            before_commit = await trio.to_thread.run_sync(snapshot)
            for v in verifiers:
                await v.poll_once()
            assert committed() == [True, True]
            await trio.to_thread.run_sync(reorg, before_commit)
            assert committed() == [False, False]
            for v in verifiers:  # the re-check finds the commit gone; the next step commits it again
                await v.poll_once()
                await v.poll_once()
            assert committed() == [True, True]

            await trio.to_thread.run_sync(reader.increase_time, COMMIT + 1)
            before_reveal = await trio.to_thread.run_sync(snapshot)
            for v in verifiers:
                await v.poll_once()
            assert reader.get_dispute(dispute_id).guilty_stake == 2 * ETHER
            await trio.to_thread.run_sync(reorg, before_reveal)
            assert reader.get_dispute(dispute_id).guilty_stake == 0
            for v in verifiers:  # revealed again
                await v.poll_once()
            assert reader.get_dispute(dispute_id).guilty_stake == 2 * ETHER

            await trio.to_thread.run_sync(reader.increase_time, REVEAL + 1)
            for v in verifiers:
                await v.poll_once()
            assert reader.get_dispute(dispute_id).status == DisputeStatus.GUILTY

    trio.run(main)
