"""Model manifests, the modelHash that names a model everywhere, and the tolerance used to compare outputs.

A model travels as a manifest (this module) plus a safetensors weights file (market.models.package). The
manifest pins the weights by their keccak256 and size, the architecture and its config, the input/output
tensor schemas and the comparison tolerance. ``modelHash = keccak256(canonical_bytes(manifest))``, where the
canonical bytes are UTF-8 JSON with sorted keys, no spaces and ASCII escapes. A manifest is always parsed and
re-encoded before it is hashed, so whitespace or key order in a file never changes the hash, and a field that
the parser does not know is refused rather than silently left outside the hash.

`outputs_match` is the one place where two model answers are compared: the client's voting and the verifier's
re-execution both use it, with the tolerance the model was registered with, never bit equality.

This module does no I/O and never builds a model.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from Crypto.Hash import keccak as _keccak

from market.errors import MarketInputError, ModelError
from market.protocol.codec import TORCH_DTYPES

__all__ = [
    "DTYPES",
    "MANIFEST_FORMAT",
    "MAX_MANIFEST_BYTES",
    "WEIGHTS_FILE",
    "ModelManifest",
    "TensorSchema",
    "Tolerance",
    "WeightsRef",
    "canonical_json",
    "check_tensors",
    "keccak256",
    "max_abs_diff",
    "outputs_match",
    "parse_model_hash",
]

MANIFEST_FORMAT = "moe-model/1"
WEIGHTS_FILE = "weights.safetensors"
MAX_MANIFEST_BYTES = 1 << 20
_MAX_CONFIG_BYTES = 64 << 10
_MAX_CONFIG_DEPTH = 16
_MAX_TENSORS = 16
_MAX_RANK = 8
_MAX_WEIGHTS_SIZE = 1 << 40

# The wire protocol's dtypes (docs/protocol.md), by their manifest names.
DTYPES: dict[str, torch.dtype] = dict(TORCH_DTYPES)
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_ARCH_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")
# Fits a bytes32 on chain, whichever way the registry encodes it.
_CAPABILITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,31}$")
_HASH_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak256 (not NIST SHA3-256) of `data`, 32 bytes."""
    return _keccak.new(digest_bits=256, data=data).digest()


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys, no spaces, ASCII escapes and no NaN/Infinity: the bytes that get hashed."""
    try:
        return json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise ModelError(f"value cannot be encoded as canonical JSON: {exc}") from exc


def parse_model_hash(value: bytes | str) -> bytes:
    """A modelHash as 32 bytes, from bytes or a 0x-prefixed hex string."""
    if isinstance(value, bytes | bytearray):
        if len(value) != 32:
            raise MarketInputError(f"a modelHash is 32 bytes, got {len(value)}")
        return bytes(value)
    if isinstance(value, str) and _HASH_RE.match(value):
        return bytes.fromhex(value[2:])
    raise MarketInputError(f"a modelHash is 32 bytes or '0x' + 64 hex digits, got {value!r}")


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(obj: object, what: str, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    if not isinstance(obj, dict):
        raise ModelError(f"{what} must be a JSON object, got {type(obj).__name__}")
    required = tuple(required)
    missing = [k for k in required if k not in obj]
    if missing:
        raise ModelError(f"{what} is missing field(s): {', '.join(missing)}")
    unknown = sorted(set(obj) - set(required) - set(optional))
    if unknown:
        raise ModelError(f"{what} has unknown field(s): {', '.join(unknown)}")
    return obj


def _check_json_value(value: object, where: str, depth: int = 0) -> None:
    if depth > _MAX_CONFIG_DEPTH:
        raise ModelError(f"{where}: nested deeper than {_MAX_CONFIG_DEPTH} levels")
    if value is None or isinstance(value, bool | str) or _is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelError(f"{where}: {value} is not a finite number")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelError(f"{where}: keys must be strings, got {key!r}")
            _check_json_value(item, f"{where}.{key}", depth + 1)
        return
    raise ModelError(f"{where}: {type(value).__name__} is not a JSON value")


@dataclass(frozen=True, slots=True)
class TensorSchema:
    """One named input or output tensor. ``shape[0]`` is -1 (the batch dimension); another -1 means any size."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ModelError(f"tensor name {self.name!r} must match {_NAME_RE.pattern}")
        if self.dtype not in DTYPES:
            raise ModelError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(self.shape, tuple | list) or not all(_is_int(d) for d in self.shape):
            raise ModelError(f"tensor {self.name!r}: shape must be a list of integers, got {self.shape!r}")
        shape = tuple(self.shape)
        object.__setattr__(self, "shape", shape)
        if not 1 <= len(shape) <= _MAX_RANK:
            raise ModelError(f"tensor {self.name!r}: rank must be 1..{_MAX_RANK}, got {len(shape)}")
        if shape[0] != -1:
            raise ModelError(
                f"tensor {self.name!r}: the first dimension is the batch and must be -1, got {shape[0]}"
            )
        if any(d != -1 and d < 1 for d in shape[1:]):
            raise ModelError(
                f"tensor {self.name!r}: dimensions must be -1 (any) or positive, got {list(shape)}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, obj: object, where: str = "tensor") -> TensorSchema:
        d = _check_fields(obj, where, ("name", "dtype", "shape"))
        if not isinstance(d["shape"], list):
            raise ModelError(f"{where}: shape must be a list of integers, got {d['shape']!r}")
        return cls(name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]))

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 else ("*" if d == -1 else str(d)) for i, d in enumerate(self.shape))
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How far two answers may differ and still count as the same: ``|a - b| <= atol + rtol * |b|`` elementwise."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        for key in ("atol", "rtol"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ModelError(f"tolerance.{key} must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value) or value < 0:
                raise ModelError(f"tolerance.{key} must be finite and >= 0, got {value}")
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, float]:
        return {"atol": self.atol, "rtol": self.rtol}

    @classmethod
    def from_dict(cls, obj: object) -> Tolerance:
        d = _check_fields(obj, "tolerance", ("atol", "rtol"))
        return cls(atol=d["atol"], rtol=d["rtol"])


@dataclass(frozen=True, slots=True)
class WeightsRef:
    """The weights file a manifest pins: its name inside the package, keccak256 and size in bytes."""

    keccak256: bytes
    size: int
    file: str = WEIGHTS_FILE

    def __post_init__(self) -> None:
        if self.file != WEIGHTS_FILE:
            raise ModelError(f"weights.file must be {WEIGHTS_FILE!r}, got {self.file!r}")
        if not isinstance(self.keccak256, bytes) or len(self.keccak256) != 32:
            raise ModelError("weights.keccak256 must be 32 bytes")
        if not _is_int(self.size) or not 0 <= self.size <= _MAX_WEIGHTS_SIZE:
            raise ModelError(f"weights.size must be an integer in 0..2**40, got {self.size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "keccak256": _hex(self.keccak256), "size": self.size}

    @classmethod
    def from_dict(cls, obj: object) -> WeightsRef:
        d = _check_fields(obj, "weights", ("file", "keccak256", "size"))
        digest = d["keccak256"]
        if not isinstance(digest, str) or not _HASH_RE.match(digest):
            raise ModelError(f"weights.keccak256 must be '0x' + 64 hex digits, got {digest!r}")
        return cls(file=d["file"], keccak256=bytes.fromhex(digest[2:]), size=d["size"])


def _schemas(value: object, where: str) -> tuple[TensorSchema, ...]:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= _MAX_TENSORS:
        raise ModelError(f"{where} must be a list of 1..{_MAX_TENSORS} tensor schemas")
    out = tuple(
        v if isinstance(v, TensorSchema) else TensorSchema.from_dict(v, f"{where}[{i}]")
        for i, v in enumerate(value)
    )
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ModelError(f"{where} has duplicate tensor names: {names}")
    return out


@dataclass(frozen=True, slots=True)
class ModelManifest:
    """What a model is: architecture + config + pinned weights + tensor schemas + tolerance + capability.

    `config` is a JSON object and is treated as read-only. Construct it directly or with `from_json`; both
    validate every field.
    """

    name: str
    architecture: str
    config: dict[str, Any]
    weights: WeightsRef
    inputs: tuple[TensorSchema, ...]
    outputs: tuple[TensorSchema, ...]
    tolerance: Tolerance
    capability: str
    format: str = MANIFEST_FORMAT
    _canonical: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.format != MANIFEST_FORMAT:
            raise ModelError(f"format must be {MANIFEST_FORMAT!r}, got {self.format!r}")
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 128 or not self.name.isprintable():
            raise ModelError(f"name must be 1..128 printable characters, got {self.name!r}")
        if not isinstance(self.architecture, str) or not _ARCH_RE.match(self.architecture):
            raise ModelError(f"architecture {self.architecture!r} must match {_ARCH_RE.pattern}")
        if not isinstance(self.capability, str) or not _CAPABILITY_RE.match(self.capability):
            raise ModelError(
                f"capability {self.capability!r} must be 1..32 characters from A-Z a-z 0-9 . _ : - "
                "(it is stored as a bytes32 on chain)"
            )
        if not isinstance(self.config, dict):
            raise ModelError(f"config must be a JSON object, got {type(self.config).__name__}")
        _check_json_value(self.config, "config")
        # A private copy: nobody holding the caller's dict can change what was hashed.
        config = json.loads(canonical_json(self.config))
        if len(canonical_json(config)) > _MAX_CONFIG_BYTES:
            raise ModelError(f"config is larger than {_MAX_CONFIG_BYTES} bytes")
        object.__setattr__(self, "config", config)
        if not isinstance(self.weights, WeightsRef):
            raise ModelError("weights must be a WeightsRef")
        if not isinstance(self.tolerance, Tolerance):
            raise ModelError("tolerance must be a Tolerance")
        object.__setattr__(self, "inputs", _schemas(self.inputs, "inputs"))
        object.__setattr__(self, "outputs", _schemas(self.outputs, "outputs"))
        object.__setattr__(self, "_canonical", canonical_json(self.to_dict()))

    def __hash__(self) -> int:
        return hash(self._canonical)

    # -- encoding -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "name": self.name,
            "architecture": self.architecture,
            "config": json.loads(canonical_json(self.config)),
            "weights": self.weights.to_dict(),
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
            "tolerance": self.tolerance.to_dict(),
            "capability": self.capability,
        }

    def canonical_bytes(self) -> bytes:
        """The bytes the modelHash is taken over."""
        return self._canonical

    @property
    def model_hash(self) -> bytes:
        """keccak256 of the canonical bytes: the model's name on chain and on the wire (32 bytes)."""
        return keccak256(self._canonical)

    @property
    def model_hash_hex(self) -> str:
        return _hex(self.model_hash)

    def to_json(self, indent: int | None = None) -> str:
        """JSON text; `indent` for files people read. Any formatting hashes the same."""
        if indent is None:
            return self._canonical.decode("ascii")
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, data: bytes | str) -> ModelManifest:
        """Parse and validate a manifest. Unknown or missing fields, duplicate keys and NaN are refused."""
        if isinstance(data, bytes | bytearray):
            if len(data) > MAX_MANIFEST_BYTES:
                raise ModelError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ModelError(f"manifest is not UTF-8: {exc}") from exc
        elif isinstance(data, str):
            if len(data) > MAX_MANIFEST_BYTES:
                raise ModelError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
            text = data
        else:
            raise ModelError(f"manifest must be bytes or str, got {type(data).__name__}")
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        except ModelError:
            raise
        except (ValueError, RecursionError) as exc:
            raise ModelError(f"manifest is not valid JSON: {exc}") from exc
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: object) -> ModelManifest:
        d = _check_fields(
            obj,
            "manifest",
            (
                "format",
                "name",
                "architecture",
                "config",
                "weights",
                "inputs",
                "outputs",
                "tolerance",
                "capability",
            ),
        )
        if d["format"] != MANIFEST_FORMAT:
            raise ModelError(
                f"unsupported manifest format {d['format']!r}; this version reads {MANIFEST_FORMAT!r}"
            )
        return cls(
            format=d["format"],
            name=d["name"],
            architecture=d["architecture"],
            config=d["config"],
            weights=WeightsRef.from_dict(d["weights"]),
            inputs=_schemas(d["inputs"], "inputs"),
            outputs=_schemas(d["outputs"], "outputs"),
            tolerance=Tolerance.from_dict(d["tolerance"]),
            capability=d["capability"],
        )

    # -- tensors --------------------------------------------------------------------------------------------

    def check_inputs(self, tensors: Mapping[str, torch.Tensor]) -> int:
        """Check `tensors` against the input schemas; returns the batch size. Raises MarketInputError."""
        return check_tensors(self.inputs, tensors, "input", MarketInputError)

    def check_outputs(self, tensors: Mapping[str, torch.Tensor], batch: int | None = None) -> int:
        """Check a model's answer against the output schemas. Raises ModelError."""
        return check_tensors(self.outputs, tensors, "output", ModelError, batch)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ModelError(f"manifest has a duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> None:
    raise ModelError(f"manifest contains {name}, which is not valid JSON")


def check_tensors(
    schemas: Sequence[TensorSchema],
    tensors: Mapping[str, torch.Tensor],
    kind: str,
    error: type[Exception] = MarketInputError,
    batch: int | None = None,
) -> int:
    """Check names, dtypes, ranks and fixed dimensions, and that all tensors share one batch size (>= 1)."""
    if not isinstance(tensors, Mapping):
        raise error(f"{kind}s must be a mapping of name -> tensor, got {type(tensors).__name__}")
    expected = [s.name for s in schemas]
    if set(tensors) != set(expected):
        raise error(f"{kind} names {sorted(tensors)} do not match the manifest's {expected}")
    for schema in schemas:
        tensor = tensors[schema.name]
        if not isinstance(tensor, torch.Tensor):
            raise error(f"{kind} {schema.name!r} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype != schema.torch_dtype:
            got = _DTYPE_NAMES.get(tensor.dtype, str(tensor.dtype))
            raise error(f"{kind} {schema.name!r} has dtype {got}, the manifest says {schema.dtype}")
        shape = tuple(tensor.shape)
        if len(shape) != len(schema.shape) or any(
            want != -1 and got != want for got, want in zip(shape, schema.shape, strict=True)
        ):
            raise error(
                f"{kind} {schema.name!r} has shape {list(shape)}, the manifest says {schema.describe()}"
            )
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise error(f"{kind} {schema.name!r} has batch size {shape[0]}, expected {batch}")
    assert batch is not None  # schemas is never empty (validated by the manifest)
    if batch < 1:
        raise error(f"{kind}s must hold at least one example, got batch size {batch}")
    return batch


def _tensors_close(a: torch.Tensor, b: torch.Tensor, tolerance: Tolerance) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a = a.detach().cpu()
    b = b.detach().cpu()
    if not (a.is_floating_point() or a.is_complex()):
        return bool(torch.equal(a, b))
    # float64 so that low-precision dtypes are compared on the values they hold, not re-rounded.
    a64 = a.to(torch.float64)
    b64 = b.to(torch.float64)
    # Both directions: `torch.allclose` alone is asymmetric (rtol scales |b|), and voting must not
    # depend on which answer came first.
    return bool(
        torch.allclose(a64, b64, atol=tolerance.atol, rtol=tolerance.rtol, equal_nan=False)
        and torch.allclose(b64, a64, atol=tolerance.atol, rtol=tolerance.rtol, equal_nan=False)
    )


def outputs_match(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], tolerance: Tolerance) -> bool:
    """True when two answers are the same within `tolerance`: same names, shapes and dtypes, and
    ``|a - b| <= atol + rtol * min(|a|, |b|)`` everywhere (both allclose directions). NaN never matches;
    integer and bool tensors must be equal. Pure: no I/O, inputs are not modified.
    """
    if set(a) != set(b):
        return False
    return all(_tensors_close(a[name], b[name], tolerance) for name in a)


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The largest elementwise |a - b| over all tensors (0.0 for equal answers); ``inf`` when the answers
    cannot be compared (different names, shapes or dtypes) or when either holds a NaN."""
    if set(a) != set(b):
        return math.inf
    worst = 0.0
    for name in a:
        x, y = a[name].detach().cpu(), b[name].detach().cpu()
        if x.dtype != y.dtype or x.shape != y.shape:
            return math.inf
        if x.numel() == 0:
            continue
        diff = (x.to(torch.float64) - y.to(torch.float64)).abs()
        if torch.isnan(diff).any():
            return math.inf
        worst = max(worst, float(diff.max()))
    return worst
