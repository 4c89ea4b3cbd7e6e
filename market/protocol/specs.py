"""Tensor descriptions as they travel in message headers: `TensorSpec` (a concrete tensor) and
`TensorSchema` (a manifest entry, where -1 marks the batch dimension).

Pure data and validation: no torch, no I/O, so message parsing and hashing never import torch.
Tensor names are restricted to a small ASCII alphabet so that the canonical JSON used for tensor hashes
has exactly one spelling in every language.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from market.errors import MalformedMessageError

# name -> bytes per element. The order is the one of docs/protocol.md.
DTYPE_ITEMSIZE: Final[Mapping[str, int]] = MappingProxyType(
    {
        "float32": 4,
        "float64": 8,
        "float16": 2,
        "bfloat16": 2,
        "int64": 8,
        "int32": 4,
        "int16": 2,
        "int8": 1,
        "uint8": 1,
        "bool": 1,
    }
)
DTYPES: Final[frozenset[str]] = frozenset(DTYPE_ITEMSIZE)

MAX_NDIM: Final = 16
MAX_DIM: Final = 2**40
MAX_TENSORS: Final = 256
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.:/\-]{1,128}")


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise MalformedMessageError(
            f"{where}: tensor name {name!r} must be 1-128 characters of A-Z a-z 0-9 _ . : / -"
        )
    return name


def _check_dtype(dtype: object, where: str) -> str:
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise MalformedMessageError(f"{where}: dtype {dtype!r} is not one of {', '.join(DTYPE_ITEMSIZE)}")
    return dtype


def _check_shape(shape: object, where: str, *, allow_batch: bool) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)):
        raise MalformedMessageError(f"{where}: shape must be a list of integers, got {type(shape).__name__}")
    if len(shape) > MAX_NDIM:
        raise MalformedMessageError(f"{where}: {len(shape)} dimensions, at most {MAX_NDIM} are allowed")
    dims: list[int] = []
    for dim in shape:
        # bool is an int subclass: refuse it, JSON true is not a dimension.
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise MalformedMessageError(f"{where}: shape entry {dim!r} is not an integer")
        if dim == -1 and allow_batch:
            dims.append(dim)
            continue
        if dim < 0:
            raise MalformedMessageError(f"{where}: negative dimension {dim} in shape {list(shape)}")
        if dim > MAX_DIM:
            raise MalformedMessageError(f"{where}: dimension {dim} is larger than {MAX_DIM}")
        dims.append(dim)
    return tuple(dims)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a message: name, dtype name and shape; its bytes are in the payload."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "tensor spec")
        _check_dtype(self.dtype, f"tensor {self.name!r}")
        object.__setattr__(
            self, "shape", _check_shape(self.shape, f"tensor {self.name!r}", allow_batch=False)
        )

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_ITEMSIZE[self.dtype]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: object) -> TensorSpec:
        if not isinstance(obj, dict):
            raise MalformedMessageError(
                f"a tensor spec must be an object with name, dtype, shape; got {obj!r:.80}"
            )
        missing = {"name", "dtype", "shape"} - obj.keys()
        if missing:
            raise MalformedMessageError(f"tensor spec is missing {', '.join(sorted(missing))}")
        name = _check_name(obj["name"], "tensor spec")
        return cls(name, _check_dtype(obj["dtype"], f"tensor {name!r}"), obj["shape"])


@dataclass(frozen=True, slots=True)
class TensorSchema:
    """A manifest's description of one input or output; -1 in `shape` is the batch dimension."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "tensor schema")
        _check_dtype(self.dtype, f"schema {self.name!r}")
        object.__setattr__(self, "shape", _check_shape(self.shape, f"schema {self.name!r}", allow_batch=True))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: object) -> TensorSchema:
        if not isinstance(obj, dict):
            raise MalformedMessageError(
                f"a schema entry must be an object with name, dtype, shape; got {obj!r:.80}"
            )
        missing = {"name", "dtype", "shape"} - obj.keys()
        if missing:
            raise MalformedMessageError(f"schema entry is missing {', '.join(sorted(missing))}")
        name = _check_name(obj["name"], "tensor schema")
        return cls(name, _check_dtype(obj["dtype"], f"schema {name!r}"), obj["shape"])


def specs_from_json(items: object, where: str = "tensors") -> tuple[TensorSpec, ...]:
    """Parse a header's `"tensors"` list; names must be unique."""
    if not isinstance(items, list):
        raise MalformedMessageError(f"{where} must be a list of tensor specs")
    if len(items) > MAX_TENSORS:
        raise MalformedMessageError(f"{where}: {len(items)} tensors, at most {MAX_TENSORS} are allowed")
    specs = tuple(TensorSpec.from_json(item) for item in items)
    _check_unique(specs, where)
    return specs


def schema_from_json(items: object, where: str = "schema") -> tuple[TensorSchema, ...]:
    if not isinstance(items, list):
        raise MalformedMessageError(f"{where} must be a list of schema entries")
    if len(items) > MAX_TENSORS:
        raise MalformedMessageError(f"{where}: {len(items)} entries, at most {MAX_TENSORS} are allowed")
    schema = tuple(TensorSchema.from_json(item) for item in items)
    _check_unique(schema, where)
    return schema


def _check_unique(entries: Iterable[TensorSpec | TensorSchema], where: str) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise MalformedMessageError(f"{where}: tensor name {entry.name!r} appears twice")
        seen.add(entry.name)


def payload_size(specs: Sequence[TensorSpec]) -> int:
    """Bytes the payload must hold for these specs."""
    return sum(spec.nbytes for spec in specs)
