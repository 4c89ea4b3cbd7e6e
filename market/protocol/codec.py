"""Tensors <-> (specs, payload) as docs/protocol.md "Tensors" defines them, and manifest schema checks.

Encoding writes each tensor C-contiguous and little-endian, in the mapping's order. Decoding validates
everything against the payload before allocating (dtype names, shapes, the element cap, the exact byte
length), then copies each tensor's bytes into memory torch owns: nothing is executed or unpickled and no
tensor aliases the caller's buffer, so mutating a decoded tensor can never reach a network buffer.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import torch

from market.errors import MalformedMessageError, MarketInputError
from market.protocol.specs import DTYPE_ITEMSIZE, TensorSchema, TensorSpec, payload_size

# 2**28 elements is 1 GiB of float32, far above the 16 MiB infer cap; callers pass tighter caps.
DEFAULT_MAX_ELEMENTS: Final = 2**28

TORCH_DTYPES: Final[Mapping[str, torch.dtype]] = MappingProxyType(
    {
        "float32": torch.float32,
        "float64": torch.float64,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int64": torch.int64,
        "int32": torch.int32,
        "int16": torch.int16,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "bool": torch.bool,
    }
)
_NAMES: Final[Mapping[torch.dtype, str]] = MappingProxyType({v: k for k, v in TORCH_DTYPES.items()})
assert set(TORCH_DTYPES) == set(DTYPE_ITEMSIZE)


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        # The wire is little-endian and raw copies assume the host is too.
        raise MarketInputError("the tensor codec supports little-endian hosts only")


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of a torch dtype (MarketInputError for one the protocol does not carry)."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise MarketInputError(
            f"dtype {dtype} cannot be sent; use one of {', '.join(TORCH_DTYPES)}"
        ) from None


def encode_tensors(tensors: Mapping[str, torch.Tensor]) -> tuple[list[TensorSpec], bytes]:
    """Specs (in the mapping's order) and the payload holding every tensor's bytes back to back."""
    _require_little_endian()
    specs: list[TensorSpec] = []
    parts: list[Any] = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise MarketInputError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tensor.layout != torch.strided:
            raise MarketInputError(f"tensor {name!r} has layout {tensor.layout}; send a dense tensor")
        wire_dtype = dtype_name(tensor.dtype)
        try:
            spec = TensorSpec(name, wire_dtype, tuple(tensor.shape))
        except MalformedMessageError as exc:
            raise MarketInputError(str(exc)) from None
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            # A uint8 view gives the raw bytes for every dtype, bfloat16 included (numpy has no bfloat16).
            parts.append(flat.view(torch.uint8).numpy())
        specs.append(spec)
    return specs, b"".join(parts)


def _as_specs(specs: Sequence[TensorSpec | Mapping[str, Any]]) -> list[TensorSpec]:
    out = [s if isinstance(s, TensorSpec) else TensorSpec.from_json(dict(s)) for s in specs]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise MalformedMessageError("tensor names must be unique")
    return out


def decode_tensors(
    specs: Sequence[TensorSpec | Mapping[str, Any]],
    payload: bytes | bytearray | memoryview,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> dict[str, torch.Tensor]:
    """Tensors from specs and payload; MalformedMessageError when they do not match exactly."""
    _require_little_endian()
    parsed = _as_specs(specs)
    total = sum(s.numel for s in parsed)
    if total > max_elements:
        raise MalformedMessageError(f"tensors hold {total} elements, more than the cap of {max_elements}")
    view = memoryview(payload).cast("B")
    expected = payload_size(parsed)
    if expected != len(view):
        raise MalformedMessageError(f"tensors need {expected} payload bytes, the payload has {len(view)}")
    raw = np.frombuffer(view, dtype=np.uint8)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for spec in parsed:
        size = spec.nbytes
        chunk = raw[offset : offset + size]
        offset += size
        if spec.dtype == "bool" and size and int(chunk.max()) > 1:
            # Any byte other than 0 or 1 is not a bool torch can hold safely.
            raise MalformedMessageError(f"tensor {spec.name!r}: bool bytes must be 0 or 1")
        tensor = torch.empty(spec.shape, dtype=TORCH_DTYPES[spec.dtype])
        if size:
            tensor.reshape(-1).view(torch.uint8).numpy()[:] = chunk
        out[spec.name] = tensor
    return out


def _describe(
    tensors: Mapping[str, torch.Tensor] | Sequence[TensorSpec],
) -> dict[str, tuple[str, tuple[int, ...]]]:
    if isinstance(tensors, Mapping):
        return {name: (dtype_name(t.dtype), tuple(t.shape)) for name, t in tensors.items()}
    return {s.name: (s.dtype, tuple(s.shape)) for s in tensors}


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join("batch" if d == -1 else str(d) for d in shape) + ")"


def check_against_schema(
    tensors: Mapping[str, torch.Tensor] | Sequence[TensorSpec],
    schema: Sequence[TensorSchema | Mapping[str, Any]],
) -> int | None:
    """Check tensors (or their specs, before decoding) against a manifest schema; return the batch size.

    Every schema entry must be present with its dtype and shape, where -1 accepts any size but must be
    the same size in every tensor (the batch dimension). Raises MarketInputError naming the tensor.
    """
    try:
        entries = [e if isinstance(e, TensorSchema) else TensorSchema.from_json(dict(e)) for e in schema]
    except MalformedMessageError as exc:
        raise MarketInputError(f"bad schema: {exc}") from None
    given = _describe(tensors)
    expected_names = [e.name for e in entries]
    batch: int | None = None
    batch_from = ""
    for entry in entries:
        want = f"{entry.dtype} {_shape_text(entry.shape)}"
        if entry.name not in given:
            raise MarketInputError(f"input {entry.name!r} is missing; the model expects {want}")
        dtype, shape = given[entry.name]
        if dtype != entry.dtype:
            raise MarketInputError(f"tensor {entry.name!r} has dtype {dtype}; the model expects {want}")
        if len(shape) != len(entry.shape) or any(
            w not in (-1, g) for g, w in zip(shape, entry.shape, strict=True)
        ):
            raise MarketInputError(
                f"tensor {entry.name!r} has shape {tuple(shape)}; the model expects {want}"
            )
        for got, want_dim in zip(shape, entry.shape, strict=True):
            if want_dim != -1:
                continue
            if batch is None:
                batch, batch_from = got, entry.name
            elif got != batch:
                raise MarketInputError(
                    f"tensor {entry.name!r} has batch size {got} but {batch_from!r} has {batch}; "
                    "all batch dimensions must agree"
                )
    extra = [name for name in given if name not in expected_names]
    if extra:
        raise MarketInputError(
            f"unexpected tensor {extra[0]!r}; the model takes {', '.join(repr(n) for n in expected_names)}"
        )
    return batch
