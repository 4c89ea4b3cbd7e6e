"""decide_vote: the verifier's voting rules as a pure function (docs/security.md, node/verifier.py)."""

from __future__ import annotations

import pytest
import torch

from market.manifest import Tolerance
from node.verifier import Decision, DisputeFacts, Rule, decide_vote

TOL = Tolerance(atol=1e-4, rtol=1e-3)


def out(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"logits": torch.randn((4, 10), generator=torch.Generator().manual_seed(seed))}


def compared(claimed: dict[str, torch.Tensor], recomputed: dict[str, torch.Tensor]) -> Decision:
    return decide_vote(DisputeFacts(claimed=claimed, recomputed=recomputed, tolerance=TOL))


def test_missing_or_wrong_evidence_is_innocent_whatever_else_is_known() -> None:
    d = decide_vote(DisputeFacts(evidence_error="NOT_FOUND", model_error="gone", claimed=out(), recomputed=out(1)))
    assert d.guilty is False and d.rule is Rule.EVIDENCE_UNAVAILABLE


def test_an_unavailable_model_is_guilty() -> None:
    d = decide_vote(DisputeFacts(model_error="no node serves it"))
    assert d.guilty is True and d.rule is Rule.MODEL_UNAVAILABLE


def test_an_input_off_the_schema_is_innocent() -> None:
    d = decide_vote(DisputeFacts(input_error="x has shape [1, 3]"))
    assert d.guilty is False and d.rule is Rule.INPUT_OFF_SCHEMA


def test_a_local_compute_failure_abstains() -> None:
    assert decide_vote(DisputeFacts(compute_error="boom")).abstains
    assert decide_vote(DisputeFacts()).abstains


def test_equal_outputs_are_innocent() -> None:
    d = compared(out(), out())
    assert d.guilty is False and d.rule is Rule.OUTPUTS_MATCH


@pytest.mark.parametrize("scale", [1e-7, 1e-6, 5e-5])
def test_float_noise_within_the_tolerance_is_innocent(scale: float) -> None:
    claimed = out()
    noisy = {"logits": claimed["logits"] + scale * torch.randn(claimed["logits"].shape)}
    assert compared(noisy, claimed).guilty is False
    assert compared(claimed, noisy).guilty is False  # the comparison does not depend on the order


def test_outputs_beyond_the_tolerance_are_guilty() -> None:
    claimed = out()
    bumped = {"logits": claimed["logits"].clone()}
    bumped["logits"][0, 0] += 0.01
    d = compared(bumped, claimed)
    assert d.guilty is True and d.rule is Rule.OUTPUTS_DIFFER
    assert "max |claimed - recomputed|" in d.reason


def test_lazy_answers_are_guilty() -> None:
    real = out()
    assert compared({"logits": torch.zeros(4, 10)}, real).guilty is True  # zeros
    assert compared(out(7), real).guilty is True  # an answer cached from another input


def test_wrong_names_shapes_dtypes_or_nan_are_guilty() -> None:
    real = out()
    assert compared({"other": real["logits"]}, real).guilty is True
    assert compared({"logits": real["logits"][:3]}, real).guilty is True
    assert compared({"logits": real["logits"].double()}, real).guilty is True
    nan = {"logits": real["logits"].clone()}
    nan["logits"][1, 1] = float("nan")
    assert compared(nan, real).guilty is True


def test_unsafe_flip_inverts_votes_but_not_abstentions() -> None:
    guilty = decide_vote(DisputeFacts(model_error="gone"))
    assert guilty.unsafe_flipped().guilty is False
    assert "UNSAFE LIE" in guilty.unsafe_flipped().reason
    abstain = decide_vote(DisputeFacts(compute_error="x"))
    assert abstain.unsafe_flipped() is abstain
