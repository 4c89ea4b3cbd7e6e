"""Packing, checking and loading models: a package is a folder with manifest.json and weights.safetensors.

    pack(module, ...) -> ModelManifest            write a package; the weights' keccak256 is pinned in the manifest
    load_package(dir) -> LoadedModel              check the weights against the manifest, build, load, eval
    load_from_bytes(manifest, weights, hash)      what a verifier does with fetched bytes: check the modelHash and
                                                  the weights hash BEFORE parsing weights or building anything
    ModelStore(root)                              packages by modelHash, for serving the model-fetch protocol

Weights are only ever read with safetensors (no pickle, no torch.load) and written by `safetensors_bytes`,
a small deterministic writer: tensors sorted by (alignment, name), a sorted, space-padded JSON header, no
metadata. The same weights therefore give the same bytes, the same keccak256 and the same modelHash on any
machine and with any safetensors version. Before the real module is built, the architecture is built on
torch's "meta" device (no memory) and its parameter names, shapes and dtypes are compared with the weights
file's header, so a manifest cannot make a loader allocate more than its weights hold.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from market.durable import atomic_write
from market.errors import ModelError, ModelHashMismatchError
from market.manifest import (
    WEIGHTS_FILE,
    ModelManifest,
    TensorSchema,
    Tolerance,
    WeightsRef,
    keccak256,
    parse_model_hash,
)
from market.models.architectures import build_module

__all__ = [
    "MANIFEST_FILE",
    "LoadedModel",
    "ModelNotFoundError",
    "ModelStore",
    "load_from_bytes",
    "load_package",
    "load_safetensors",
    "pack",
    "read_package",
    "safetensors_bytes",
    "safetensors_header",
    "verify_bytes",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
_MAX_HEADER = 16 << 20

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class ModelNotFoundError(ModelError, LookupError):
    """No package with this modelHash is in the store (the server answers NOT_FOUND)."""


# -- safetensors ----------------------------------------------------------------------------------------


def safetensors_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize tensors to the safetensors format, byte-for-byte deterministic for equal tensors."""
    if sys.byteorder != "little":
        raise ModelError("safetensors is little-endian; packing on a big-endian machine is not supported")
    items = []
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise ModelError(f"tensor names must be non-empty strings, got {name!r}")
        if tensor.dtype not in _ST_DTYPES:
            raise ModelError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors packing does not support"
            )
        t = tensor.detach().to("cpu").contiguous()
        items.append((-t.element_size(), name, t))
    # Larger elements first keeps every tensor's data aligned to its element size.
    items.sort(key=lambda item: (item[0], item[1]))
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for _, name, t in items:
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _ST_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def safetensors_header(data: bytes) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Names, dtypes and shapes from a safetensors file's header, checked for consistency (no tensor data read)."""
    if len(data) < 8:
        raise ModelError("weights file is too short to be safetensors")
    (size,) = struct.unpack("<Q", data[:8])
    if size > _MAX_HEADER or 8 + size > len(data):
        raise ModelError("weights file has an invalid safetensors header length")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"weights file header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ModelError("weights file header is not a JSON object")
    out: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_NAMES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"weights file header entry {name!r} is malformed") from exc
        numel = 1
        for d in shape:
            if d < 0:
                raise ModelError(f"weights tensor {name!r} has a negative dimension")
            numel *= d
        if end - start != numel * torch.empty((), dtype=dtype).element_size() or start < 0:
            raise ModelError(f"weights tensor {name!r}: data offsets do not match its shape")
        spans.append((start, end))
        out[name] = (dtype, shape)
    spans.sort()
    position = 0
    for start, end in spans:
        if start != position:
            raise ModelError("weights file tensors overlap or leave gaps")
        position = end
    if 8 + size + position != len(data):
        raise ModelError("weights file length does not match its header")
    return out


def load_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """Tensors from safetensors bytes (never pickle); the header is checked first. Raises ModelError."""
    safetensors_header(data)
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"weights are not a valid safetensors file: {exc}") from exc


# -- the loaded model -----------------------------------------------------------------------------------


class LoadedModel:
    """A model ready to serve: its manifest and a module in eval mode with gradients off.

    `forward` checks inputs against the manifest (MarketInputError), runs under `torch.inference_mode`, checks
    outputs (ModelError) and returns ordinary tensors that callers may use freely. It is not thread-safe by
    design: one thread owns a model (node.runtime.ModelRuntime).
    """

    __slots__ = ("_module", "manifest", "model_hash")

    def __init__(self, manifest: ModelManifest, module: nn.Module) -> None:
        self.manifest = manifest
        self.model_hash = manifest.model_hash
        module.eval()
        module.requires_grad_(False)
        self._module = module

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def model_hash_hex(self) -> str:
        return "0x" + self.model_hash.hex()

    def check_inputs(self, inputs: Mapping[str, torch.Tensor]) -> int:
        return self.manifest.check_inputs(inputs)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = self.manifest.check_inputs(inputs)
        args = [inputs[s.name].detach().to("cpu") for s in self.manifest.inputs]
        with torch.inference_mode():
            result = self._module(*args)
            outputs = self._name_outputs(result)
            self.manifest.check_outputs(outputs, batch)
        # Inference tensors cannot take part in autograd later; a clone made outside inference mode can.
        return {name: t.clone() for name, t in outputs.items()}

    __call__ = forward

    def _name_outputs(self, result: object) -> dict[str, torch.Tensor]:
        names = [s.name for s in self.manifest.outputs]
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, Mapping):
            return dict(result)
        if isinstance(result, tuple | list) and len(result) == len(names):
            return dict(zip(names, result, strict=True))
        raise ModelError(f"the module returned {type(result).__name__}; the manifest expects outputs {names}")

    def __repr__(self) -> str:
        return f"LoadedModel({self.manifest.name!r}, {self.model_hash_hex})"


def _schema_list(values: Sequence[TensorSchema | Mapping[str, Any]], where: str) -> tuple[TensorSchema, ...]:
    out = []
    for i, v in enumerate(values):
        out.append(v if isinstance(v, TensorSchema) else TensorSchema.from_dict(dict(v), f"{where}[{i}]"))
    return tuple(out)


def _check_weights_fit(
    manifest: ModelManifest, header: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
) -> None:
    """Build the architecture on the meta device and compare its state dict with the weights header."""
    try:
        with torch.device("meta"):
            skeleton = build_module(manifest.architecture, manifest.config)
    except ModelError:
        raise
    except Exception as exc:  # a builder rejecting its config in its own words
        raise ModelError(f"cannot build {manifest.architecture!r} from this config: {exc}") from exc
    want = {name: (t.dtype, tuple(t.shape)) for name, t in skeleton.state_dict().items()}
    if set(want) != set(header):
        missing = sorted(set(want) - set(header))[:5]
        extra = sorted(set(header) - set(want))[:5]
        raise ModelError(
            f"weights do not fit architecture {manifest.architecture!r}: missing {missing}, unexpected {extra}"
        )
    for name, (dtype, shape) in want.items():
        if header[name] != (dtype, shape):
            got_dtype, got_shape = header[name]
            raise ModelError(
                f"weights tensor {name!r} is {got_dtype} {list(got_shape)}, the architecture wants {dtype} {list(shape)}"
            )


def _build(manifest: ModelManifest, weights: bytes) -> LoadedModel:
    header = safetensors_header(weights)
    _check_weights_fit(manifest, header)
    tensors = load_safetensors(weights)
    module = build_module(manifest.architecture, manifest.config)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights do not load into {manifest.architecture!r}: {exc}") from exc
    return LoadedModel(manifest, module)


def _check_weights_hash(manifest: ModelManifest, weights: bytes) -> None:
    if len(weights) != manifest.weights.size:
        raise ModelHashMismatchError(
            f"weights are {len(weights)} bytes, the manifest pins {manifest.weights.size}; the file was changed or truncated"
        )
    digest = keccak256(weights)
    if digest != manifest.weights.keccak256:
        raise ModelHashMismatchError(
            f"weights keccak256 is 0x{digest.hex()}, the manifest pins 0x{manifest.weights.keccak256.hex()}; "
            "the weights file was changed"
        )


# -- public API -----------------------------------------------------------------------------------------


def pack(
    module: nn.Module,
    architecture: str,
    config: Mapping[str, Any],
    inputs: Sequence[TensorSchema | Mapping[str, Any]],
    outputs: Sequence[TensorSchema | Mapping[str, Any]],
    tolerance: Tolerance | tuple[float, float],
    name: str,
    capability: str,
    out_dir: str | Path,
) -> ModelManifest:
    """Write `module`'s weights and a manifest for them into `out_dir`; returns the manifest.

    The module must be of the named architecture built from `config` (checked: parameter names, shapes and
    dtypes, against the architecture built on the meta device) before anything is written.
    """
    if not isinstance(tolerance, Tolerance):
        tolerance = Tolerance(*tolerance)
    weights = safetensors_bytes(module.state_dict())
    manifest = ModelManifest(
        name=name,
        architecture=architecture,
        config=dict(config),
        weights=WeightsRef(keccak256=keccak256(weights), size=len(weights)),
        inputs=_schema_list(inputs, "inputs"),
        outputs=_schema_list(outputs, "outputs"),
        tolerance=tolerance,
        capability=capability,
    )
    _check_weights_fit(manifest, safetensors_header(weights))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_FILE, weights)
    atomic_write(out / MANIFEST_FILE, (manifest.to_json(indent=2) + "\n").encode("ascii"))
    log.info("packed %s (%s) into %s", manifest.name, manifest.model_hash_hex, out)
    return manifest


def read_package(path: str | Path) -> tuple[ModelManifest, bytes]:
    """Read a package folder and check its weights against the manifest (no model is built)."""
    folder = Path(path)
    try:
        manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
        manifest = ModelManifest.from_json(manifest_bytes)
        weights = (folder / manifest.weights.file).read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{folder} is not a model package: {exc.filename} is missing") from exc
    _check_weights_hash(manifest, weights)
    return manifest, weights


def load_package(path: str | Path, expected_model_hash: bytes | str | None = None) -> LoadedModel:
    """Load a package folder: weights hash checked, architecture built, weights loaded strictly, eval mode."""
    manifest, weights = read_package(path)
    if expected_model_hash is not None:
        _check_model_hash(manifest, parse_model_hash(expected_model_hash))
    return _build(manifest, weights)


def _check_model_hash(manifest: ModelManifest, expected: bytes) -> None:
    if manifest.model_hash != expected:
        raise ModelHashMismatchError(
            f"manifest hashes to {manifest.model_hash_hex}, expected 0x{expected.hex()}; the manifest was changed"
        )


def verify_bytes(manifest_json: bytes, weights: bytes, expected_model_hash: bytes | str) -> ModelManifest:
    """Check fetched bytes against a modelHash without building anything; returns the parsed manifest."""
    expected = parse_model_hash(expected_model_hash)
    try:
        manifest = ModelManifest.from_json(manifest_json)
    except ModelError as exc:
        raise ModelHashMismatchError(f"fetched manifest for 0x{expected.hex()} is not valid: {exc}") from exc
    _check_model_hash(manifest, expected)
    _check_weights_hash(manifest, weights)
    return manifest


def load_from_bytes(manifest_json: bytes, weights: bytes, expected_model_hash: bytes | str) -> LoadedModel:
    """Load a fetched model. The modelHash and the weights hash are checked before anything is parsed
    beyond the manifest JSON or built (ModelHashMismatchError); weights are read with safetensors only."""
    manifest = verify_bytes(manifest_json, weights, expected_model_hash)
    return _build(manifest, weights)


@dataclass(frozen=True, slots=True)
class _Entry:
    manifest: ModelManifest
    path: Path


class ModelStore:
    """A folder of packages named by modelHash (``<root>/<64 hex digits>/``), for a node that serves models.

    Everything that enters is checked: the weights against the manifest and, for fetched bytes, the manifest
    against the modelHash asked for. Thread-safe; loaded models are cached (one LoadedModel per hash).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._loaded: dict[bytes, LoadedModel] = {}

    def _dir(self, model_hash: bytes | str) -> Path:
        return self.root / parse_model_hash(model_hash).hex()

    def add(self, package_dir: str | Path) -> ModelManifest:
        """Copy a package folder into the store (after checking it); returns its manifest."""
        manifest, weights = read_package(package_dir)
        self._write(manifest, weights)
        return manifest

    def add_bytes(
        self, manifest_json: bytes, weights: bytes, expected_model_hash: bytes | str
    ) -> ModelManifest:
        """Store fetched bytes after checking them against `expected_model_hash`."""
        manifest = verify_bytes(manifest_json, weights, expected_model_hash)
        self._write(manifest, weights)
        return manifest

    def _write(self, manifest: ModelManifest, weights: bytes) -> None:
        final = self.root / manifest.model_hash.hex()
        if final.is_dir():
            return
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            (tmp / WEIGHTS_FILE).write_bytes(weights)
            (tmp / MANIFEST_FILE).write_text(manifest.to_json(indent=2) + "\n", encoding="ascii")
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # another writer winning the race is fine; anything else is not
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def has(self, model_hash: bytes | str) -> bool:
        return (self._dir(model_hash) / MANIFEST_FILE).is_file()

    __contains__ = has

    def hashes(self) -> list[bytes]:
        return sorted(
            bytes.fromhex(p.name)
            for p in self.root.iterdir()
            if len(p.name) == 64
            and (p / MANIFEST_FILE).is_file()
            and all(c in "0123456789abcdef" for c in p.name)
        )

    def __len__(self) -> int:
        return len(self.hashes())

    def path_of(self, model_hash: bytes | str) -> Path:
        if not self.has(model_hash):
            raise ModelNotFoundError(f"model 0x{parse_model_hash(model_hash).hex()} is not in {self.root}")
        return self._dir(model_hash)

    def manifest(self, model_hash: bytes | str) -> ModelManifest:
        path = self.path_of(model_hash)
        manifest = ModelManifest.from_json((path / MANIFEST_FILE).read_bytes())
        _check_model_hash(manifest, parse_model_hash(model_hash))
        return manifest

    def manifest_bytes(self, model_hash: bytes | str) -> bytes:
        """The canonical manifest bytes: what the model-fetch answer carries (they hash to the modelHash)."""
        return self.manifest(model_hash).canonical_bytes()

    def weights_bytes(self, model_hash: bytes | str) -> bytes:
        manifest = self.manifest(model_hash)
        weights = (self.path_of(model_hash) / WEIGHTS_FILE).read_bytes()
        _check_weights_hash(manifest, weights)
        return weights

    def get(self, model_hash: bytes | str) -> LoadedModel:
        """The loaded model (built once, then cached)."""
        key = parse_model_hash(model_hash)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load_package(self.path_of(key), expected_model_hash=key)
            return self._loaded[key]
