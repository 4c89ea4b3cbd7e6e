"""The known architectures: a name and a JSON config become an `nn.Module` whose weights come from safetensors.

Only architectures listed here can be loaded from a manifest: a manifest can never name arbitrary code, and
nothing is ever unpickled. Each builder validates its config strictly (unknown keys, wrong types and sizes
beyond the caps are refused with ModelError) before allocating anything, so a hostile manifest cannot ask
for a terabyte of parameters.

    mlp     Linear layers with one activation between them; input x [N, sizes[0]] -> [N, sizes[-1]]
    minilm  a BERT encoder with mean pooling and L2 normalization (all-MiniLM-L6-v2 shaped); input token ids
            and attention mask [N, T] -> sentence embeddings [N, hidden]; see market.models.minilm

No dropout anywhere: a served model must be a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from market.errors import ModelError

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "MLP_MAX_PARAMS",
    "architecture_names",
    "build_module",
    "get_builder",
    "mlp_config",
]

Builder = Callable[[Mapping[str, Any]], nn.Module]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
MLP_MAX_WIDTH = 1 << 16
MLP_MAX_LAYERS = 64
MLP_MAX_PARAMS = 1 << 28


def config_int(config: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelError(f"config.{key} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_keys(
    config: Mapping[str, Any], arch: str, required: set[str], optional: set[str] = frozenset()
) -> None:
    if not isinstance(config, Mapping):
        raise ModelError(f"{arch} config must be a JSON object, got {type(config).__name__}")
    missing = sorted(required - set(config))
    if missing:
        raise ModelError(f"{arch} config is missing {', '.join(missing)}")
    unknown = sorted(set(config) - required - optional)
    if unknown:
        raise ModelError(f"{arch} config has unknown key(s) {', '.join(unknown)}")


class MLP(nn.Module):
    """Linear -> act -> Linear -> ... -> Linear (no activation after the last layer, no dropout)."""

    def __init__(self, sizes: list[int], activation: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i:
                layers.append(ACTIVATIONS[activation]())
            layers.append(nn.Linear(n_in, n_out))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):  # noqa: ANN001, ANN201 - torch convention
        return self.layers(x)


def mlp_config(config: Mapping[str, Any]) -> tuple[list[int], str]:
    """Validate an "mlp" config: ``{"sizes": [in, hidden..., out], "activation": "relu" | "gelu" | "tanh"}``."""
    check_keys(config, "mlp", {"sizes", "activation"})
    sizes = config["sizes"]
    if not isinstance(sizes, list) or not 2 <= len(sizes) <= MLP_MAX_LAYERS + 1:
        raise ModelError(
            f"mlp config.sizes must be a list of 2..{MLP_MAX_LAYERS + 1} layer widths, got {sizes!r}"
        )
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MLP_MAX_WIDTH:
            raise ModelError(f"mlp config.sizes entries must be integers in 1..{MLP_MAX_WIDTH}, got {size!r}")
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    if params > MLP_MAX_PARAMS:
        raise ModelError(f"mlp config asks for {params} parameters, over the cap of {MLP_MAX_PARAMS}")
    activation = config["activation"]
    if activation not in ACTIVATIONS:
        raise ModelError(f"mlp config.activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return list(sizes), activation


def _build_mlp(config: Mapping[str, Any]) -> nn.Module:
    sizes, activation = mlp_config(config)
    return MLP(sizes, activation)


def _build_minilm(config: Mapping[str, Any]) -> nn.Module:
    from market.models.minilm import build_minilm

    return build_minilm(config)


_BUILDERS: dict[str, Builder] = {"mlp": _build_mlp, "minilm": _build_minilm}


def architecture_names() -> list[str]:
    return sorted(_BUILDERS)


def get_builder(architecture: str) -> Builder:
    try:
        return _BUILDERS[architecture]
    except (KeyError, TypeError):
        raise ModelError(
            f"unknown architecture {architecture!r}; this node knows {', '.join(architecture_names())}"
        ) from None


def build_module(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """A fresh, randomly initialized module of a known architecture (load weights into it afterwards)."""
    return get_builder(architecture)(config)
