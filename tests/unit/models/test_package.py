"""Packing and loading: deterministic weights, hash checks before anything is built, no pickle, ModelStore."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

from market.errors import MarketInputError, ModelError, ModelHashMismatchError
from market.manifest import ModelManifest, Tolerance, WeightsRef, keccak256
from market.models.architectures import MLP, architecture_names, build_module
from market.models.package import (
    LoadedModel,
    ModelNotFoundError,
    ModelStore,
    load_from_bytes,
    load_package,
    load_safetensors,
    pack,
    read_package,
    safetensors_bytes,
    safetensors_header,
    verify_bytes,
)

CONFIG = {"sizes": [8, 16, 3], "activation": "gelu"}
INPUTS = [{"name": "x", "dtype": "float32", "shape": [-1, 8]}]
OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": [-1, 3]}]
TOL = Tolerance(1e-4, 1e-3)


def make_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(CONFIG["sizes"], CONFIG["activation"])


def pack_mlp(out: Path, seed: int = 0, **overrides: object) -> ModelManifest:
    args: dict = dict(
        module=make_mlp(seed),
        architecture="mlp",
        config=CONFIG,
        inputs=INPUTS,
        outputs=OUTPUTS,
        tolerance=TOL,
        name="tiny",
        capability="tiny-mlp",
        out_dir=out,
    )
    args.update(overrides)
    return pack(**args)


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, ModelManifest]:
    return tmp_path / "pkg", pack_mlp(tmp_path / "pkg")


def files(path: Path) -> tuple[bytes, bytes]:
    return (path / "manifest.json").read_bytes(), (path / "weights.safetensors").read_bytes()


# -- architectures -------------------------------------------------------------------------------------------


def test_known_architectures_only() -> None:
    assert {"mlp", "minilm"} <= set(architecture_names())
    with pytest.raises(ModelError, match="unknown architecture 'resnet'"):
        build_module("resnet", {})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sizes": [8, 3]}, "missing activation"),
        ({"sizes": [8, 3], "activation": "relu", "dropout": 0.1}, "unknown key"),
        ({"sizes": [8], "activation": "relu"}, "sizes must be a list"),
        ({"sizes": [8, 0], "activation": "relu"}, "entries must be integers"),
        ({"sizes": [8, True], "activation": "relu"}, "entries must be integers"),
        ({"sizes": [60000, 60000, 60000], "activation": "relu"}, "over the cap"),
        ({"sizes": [8, 3], "activation": "softmax"}, "activation must be one of"),
    ],
)
def test_mlp_config_is_validated(config: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_module("mlp", config)


def test_mlp_has_no_dropout_and_the_chosen_activation() -> None:
    module = build_module("mlp", {"sizes": [4, 5, 6, 2], "activation": "tanh"})
    kinds = [type(m).__name__ for m in module.modules()]
    assert kinds.count("Linear") == 3 and kinds.count("Tanh") == 2 and "Dropout" not in kinds


# -- safetensors ---------------------------------------------------------------------------------------------


def test_safetensors_bytes_are_deterministic_and_readable() -> None:
    tensors = {
        "b": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "a": torch.tensor([1, 2], dtype=torch.int64),
        "m": torch.tensor([True, False]),
        "h": torch.ones(3, dtype=torch.bfloat16),
        "s": torch.tensor(2.5),
        "e": torch.zeros(0, 4),
    }
    data = safetensors_bytes(tensors)
    assert data == safetensors_bytes(dict(reversed(list(tensors.items()))))
    assert data == safetensors_bytes({k: v.clone() for k, v in tensors.items()})
    (header_len,) = struct.unpack("<Q", data[:8])
    assert header_len % 8 == 0
    loaded = st_load(data)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    assert safetensors_header(data)["b"] == (torch.float32, (2, 3))


def test_non_contiguous_tensors_are_written_by_value() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).T
    assert safetensors_bytes({"t": t}) == safetensors_bytes({"t": t.contiguous()})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        struct.pack("<Q", 1 << 40) + b"{}",
        struct.pack("<Q", 2) + b"[]",
        struct.pack("<Q", 2) + b"{}" + b"extra",
        struct.pack("<Q", 60)
        + json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode().ljust(60)
        + b"\x00" * 4,
        struct.pack("<Q", 60)
        + json.dumps({"x": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}).encode().ljust(60)
        + b"\x00" * 4,
    ],
)
def test_malformed_safetensors_are_refused(data: bytes) -> None:
    with pytest.raises(ModelError):
        load_safetensors(data)


# -- pack / load ---------------------------------------------------------------------------------------------


def test_pack_writes_manifest_and_pins_the_weights(package: tuple[Path, ModelManifest]) -> None:
    path, manifest = package
    manifest_json, weights = files(path)
    assert manifest.weights == WeightsRef(keccak256=keccak256(weights), size=len(weights))
    assert ModelManifest.from_json(manifest_json) == manifest
    assert manifest.architecture == "mlp" and manifest.capability == "tiny-mlp"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "weights.safetensors"]


def test_same_weights_give_the_same_model_hash(tmp_path: Path) -> None:
    a = pack_mlp(tmp_path / "a", seed=1)
    b = pack_mlp(tmp_path / "b", seed=1)
    c = pack_mlp(tmp_path / "c", seed=2)
    assert a.model_hash == b.model_hash != c.model_hash
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_pack_refuses_a_module_that_does_not_fit_the_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="do not fit"):
        pack_mlp(tmp_path / "x", config={"sizes": [8, 3], "activation": "gelu"})
    with pytest.raises(ModelError, match="wants"):
        pack_mlp(tmp_path / "x", config={"sizes": [8, 17, 3], "activation": "gelu"})
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_round_trip_reproduces_outputs_exactly(package: tuple[Path, ModelManifest]) -> None:
    path, manifest = package
    original = make_mlp(0).eval()
    loaded = load_package(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.model_hash == manifest.model_hash
    assert not loaded.module.training
    assert not any(p.requires_grad for p in loaded.module.parameters())
    x = torch.randn(17, 8, generator=torch.Generator().manual_seed(3))
    out = loaded.forward({"x": x})
    with torch.no_grad():
        assert torch.equal(out["logits"], original(x))
    # The answer is an ordinary tensor: usable in autograd by the caller.
    assert not out["logits"].is_inference()
    weight = torch.ones(3, requires_grad=True)
    (out["logits"] * weight).sum().backward()
    assert weight.grad is not None


def test_forward_checks_inputs(package: tuple[Path, ModelManifest]) -> None:
    loaded = load_package(package[0])
    with pytest.raises(MarketInputError, match="shape"):
        loaded.forward({"x": torch.zeros(2, 9)})
    with pytest.raises(MarketInputError, match="names"):
        loaded.forward({"y": torch.zeros(2, 8)})


def test_load_package_detects_changed_weights(package: tuple[Path, ModelManifest]) -> None:
    path, _ = package
    weights = bytearray((path / "weights.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (path / "weights.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ModelHashMismatchError, match="weights keccak256"):
        load_package(path)
    (path / "weights.safetensors").write_bytes(bytes(weights) + b"\x00")
    with pytest.raises(ModelHashMismatchError, match="bytes"):
        load_package(path)


def test_load_package_checks_the_expected_hash(package: tuple[Path, ModelManifest]) -> None:
    path, manifest = package
    assert load_package(path, expected_model_hash=manifest.model_hash_hex).model_hash == manifest.model_hash
    with pytest.raises(ModelHashMismatchError):
        load_package(path, expected_model_hash=b"\x00" * 32)


def test_load_package_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model package"):
        load_package(tmp_path)


def test_load_from_bytes_accepts_the_genuine_model(package: tuple[Path, ModelManifest]) -> None:
    path, manifest = package
    loaded = load_from_bytes(*files(path), manifest.model_hash)
    x = torch.rand(4, 8)
    assert torch.equal(loaded.forward({"x": x})["logits"], load_package(path).forward({"x": x})["logits"])
    # Canonical bytes hash the same as the pretty file.
    assert load_from_bytes(manifest.canonical_bytes(), files(path)[1], manifest.model_hash_hex)


def test_load_from_bytes_rejects_a_tampered_manifest(
    package: tuple[Path, ModelManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, manifest = package
    manifest_json, weights = files(path)
    obj = json.loads(manifest_json)
    obj["tolerance"]["atol"] = 1.0  # a cheater widening its own tolerance
    built = []
    monkeypatch.setattr("market.models.package.build_module", lambda *a: built.append(a))
    with pytest.raises(ModelHashMismatchError, match="manifest hashes to"):
        load_from_bytes(json.dumps(obj).encode(), weights, manifest.model_hash)
    with pytest.raises(ModelHashMismatchError, match="not valid"):
        load_from_bytes(b"{not json", weights, manifest.model_hash)
    assert built == []


def test_load_from_bytes_rejects_tampered_weights_before_parsing_them(
    package: tuple[Path, ModelManifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, manifest = package
    manifest_json, weights = files(path)
    tampered = bytearray(weights)
    tampered[-4:] = b"\x00\x00\x80\x7f"  # a weight swapped for +inf
    parsed = []
    monkeypatch.setattr("market.models.package.safetensors_header", lambda *a: parsed.append(a))
    with pytest.raises(ModelHashMismatchError, match="weights"):
        load_from_bytes(manifest_json, bytes(tampered), manifest.model_hash)
    assert parsed == []


class _Exploit:
    triggered = False

    def __reduce__(self):  # noqa: ANN204
        return (_trigger, ())


def _trigger() -> None:
    _Exploit.triggered = True


def test_pickled_weights_are_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hash-consistent package whose weights are a pickle (as torch.save writes) fails to load, unread."""
    payload = pickle.dumps({"layers.0.weight": _Exploit()})
    torch_saved = tmp_path / "w.pt"
    torch.save(make_mlp().state_dict(), torch_saved)
    calls = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append("pickle.loads"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append("pickle.load"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append("torch.load"))
    for weights in (payload, torch_saved.read_bytes()):
        manifest = ModelManifest.from_dict(
            {
                **json.loads(pack_mlp(tmp_path / "p").to_json()),
                "weights": {
                    "file": "weights.safetensors",
                    "keccak256": "0x" + keccak256(weights).hex(),
                    "size": len(weights),
                },
            }
        )
        with pytest.raises(ModelError):
            load_from_bytes(manifest.canonical_bytes(), weights, manifest.model_hash)
    assert calls == [] and not _Exploit.triggered


def test_weights_that_do_not_fit_the_architecture_are_refused_before_building(tmp_path: Path) -> None:
    # A hash-consistent manifest asking for a huge model, with small weights: caught on the meta device.
    small = safetensors_bytes(make_mlp().state_dict())
    manifest = ModelManifest.from_dict(
        {
            **json.loads(pack_mlp(tmp_path / "p").to_json()),
            "config": {"sizes": [8, 8192, 8192, 3], "activation": "gelu"},
            "weights": {
                "file": "weights.safetensors",
                "keccak256": "0x" + keccak256(small).hex(),
                "size": len(small),
            },
        }
    )
    with pytest.raises(ModelError, match="do not fit|wants"):
        load_from_bytes(manifest.canonical_bytes(), small, manifest.model_hash)


def test_verify_bytes_builds_nothing(package: tuple[Path, ModelManifest]) -> None:
    path, manifest = package
    assert verify_bytes(*files(path), manifest.model_hash) == manifest


# -- ModelStore ----------------------------------------------------------------------------------------------


def test_model_store(tmp_path: Path, package: tuple[Path, ModelManifest]) -> None:
    path, manifest = package
    store = ModelStore(tmp_path / "store")
    assert not store.has(manifest.model_hash) and len(store) == 0
    with pytest.raises(ModelNotFoundError):
        store.path_of(manifest.model_hash)
    assert store.add(path) == manifest
    assert store.add(path) == manifest  # idempotent
    assert store.has(manifest.model_hash) and manifest.model_hash_hex in store
    assert store.hashes() == [manifest.model_hash]
    assert store.path_of(manifest.model_hash).name == manifest.model_hash.hex()
    assert keccak256(store.manifest_bytes(manifest.model_hash)) == manifest.model_hash
    assert store.weights_bytes(manifest.model_hash) == files(path)[1]
    loaded = store.get(manifest.model_hash_hex)
    assert loaded is store.get(manifest.model_hash)
    # What the store serves is what a fetcher can load.
    fetched = ModelStore(tmp_path / "fetched")
    fetched.add_bytes(
        store.manifest_bytes(manifest.model_hash),
        store.weights_bytes(manifest.model_hash),
        manifest.model_hash,
    )
    assert fetched.get(manifest.model_hash).model_hash == manifest.model_hash
    with pytest.raises(ModelHashMismatchError):
        fetched.add_bytes(store.manifest_bytes(manifest.model_hash), b"junk", manifest.model_hash)


def test_model_store_detects_files_changed_on_disk(
    tmp_path: Path, package: tuple[Path, ModelManifest]
) -> None:
    path, manifest = package
    store = ModelStore(tmp_path / "store")
    store.add(path)
    weights = store.path_of(manifest.model_hash) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ModelHashMismatchError):
        store.weights_bytes(manifest.model_hash)
    with pytest.raises(ModelHashMismatchError):
        store.get(manifest.model_hash)


def test_read_package(package: tuple[Path, ModelManifest]) -> None:
    manifest, weights = read_package(package[0])
    assert manifest == package[1] and keccak256(weights) == manifest.weights.keccak256
