"""Manifests: canonical bytes, modelHash, strict parsing, and the tolerance semantics of outputs_match."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from market.errors import MarketInputError, ModelError
from market.manifest import (
    ModelManifest,
    TensorSchema,
    Tolerance,
    WeightsRef,
    canonical_json,
    keccak256,
    max_abs_diff,
    outputs_match,
    parse_model_hash,
)

GOLDEN_CANONICAL = (
    '{"architecture":"mlp","capability":"golden-test","config":{"activation":"relu","sizes":[2,1]},'
    '"format":"moe-model/1","inputs":[{"dtype":"float32","name":"x","shape":[-1,2]}],"name":"golden",'
    '"outputs":[{"dtype":"float32","name":"y","shape":[-1,1]}],"tolerance":{"atol":0.0001,"rtol":0.001},'
    '"weights":{"file":"weights.safetensors","keccak256":"0x1111111111111111111111111111111111111111111111111111111111111111",'
    '"size":128}}'
)
GOLDEN_HASH = "0x7d60941a53707e5abbad08144b5bb56e4e3aec7984f88d14450d115d7e3af144"


def golden() -> ModelManifest:
    return ModelManifest(
        name="golden",
        architecture="mlp",
        config={"sizes": [2, 1], "activation": "relu"},
        weights=WeightsRef(keccak256=b"\x11" * 32, size=128),
        inputs=(TensorSchema("x", "float32", (-1, 2)),),
        outputs=(TensorSchema("y", "float32", (-1, 1)),),
        tolerance=Tolerance(1e-4, 1e-3),
        capability="golden-test",
    )


def test_keccak256_is_ethereum_keccak_not_sha3() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


def test_canonical_bytes_and_model_hash_are_golden() -> None:
    m = golden()
    assert m.canonical_bytes().decode() == GOLDEN_CANONICAL
    assert m.model_hash_hex == GOLDEN_HASH
    assert m.model_hash == keccak256(GOLDEN_CANONICAL.encode())
    assert len(m.model_hash) == 32


def test_formatting_and_key_order_do_not_change_the_hash() -> None:
    obj = json.loads(GOLDEN_CANONICAL)
    pretty = json.dumps(dict(reversed(list(obj.items()))), indent=4)
    assert ModelManifest.from_json(pretty).model_hash_hex == GOLDEN_HASH
    assert ModelManifest.from_json(golden().to_json(indent=2)).model_hash_hex == GOLDEN_HASH
    assert ModelManifest.from_json(golden().to_json().encode()) == golden()


def test_integer_tolerance_is_normalized_to_float() -> None:
    obj = json.loads(GOLDEN_CANONICAL)
    obj["tolerance"] = {"atol": 0, "rtol": 0}
    m = ModelManifest.from_dict(obj)
    assert m.tolerance == Tolerance(0.0, 0.0)
    assert b'"atol":0.0' in m.canonical_bytes()


def test_config_is_copied_so_the_hash_cannot_change_under_the_holder() -> None:
    config = {"sizes": [2, 1], "activation": "relu"}
    m = dataclasses.replace(golden(), config=config)
    before = m.model_hash
    config["sizes"].append(5)
    assert m.model_hash == before
    m.to_dict()["config"]["sizes"].append(7)
    assert m.model_hash == before


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("weights", WeightsRef(keccak256=b"\x12" + b"\x11" * 31, size=128)),
        ("weights", WeightsRef(keccak256=b"\x11" * 32, size=129)),
        ("tolerance", Tolerance(1e-4, 1e-2)),
        ("tolerance", Tolerance(2e-4, 1e-3)),
        ("inputs", (TensorSchema("x", "float32", (-1, 3)),)),
        ("inputs", (TensorSchema("x", "float64", (-1, 2)),)),
        ("outputs", (TensorSchema("z", "float32", (-1, 1)),)),
        ("config", {"sizes": [2, 1], "activation": "tanh"}),
        ("capability", "golden-test-2"),
        ("name", "golden2"),
        ("architecture", "minilm"),
    ],
)
def test_model_hash_changes_with_every_field(change: str, value: object) -> None:
    assert dataclasses.replace(golden(), **{change: value}).model_hash != golden().model_hash


def _mutated(path: list[str], value: object) -> str:
    obj = json.loads(GOLDEN_CANONICAL)
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(obj)


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["name"], _DELETE, "missing field(s): name"),
        (["capability"], _DELETE, "missing field(s): capability"),
        (["extra"], 1, "unknown field(s): extra"),
        (["format"], "moe-model/2", "unsupported manifest format"),
        (["name"], "", "name must be"),
        (["architecture"], "Bad Arch", "architecture"),
        (["capability"], "x" * 33, "bytes32"),
        (["config"], [1, 2], "config must be a JSON object"),
        (["weights", "file"], "../evil.bin", "weights.file"),
        (["weights", "keccak256"], "0x1234", "weights.keccak256"),
        (["weights", "size"], -1, "weights.size"),
        (["weights", "size"], True, "weights.size"),
        (["weights", "extra"], 1, "unknown field(s): extra"),
        (["inputs"], [], "inputs must be a list"),
        (["inputs"], [{"name": "x", "dtype": "float32"}], "missing field(s): shape"),
        (["inputs"], [{"name": "x", "dtype": "complex64", "shape": [-1, 2]}], "dtype"),
        (["inputs"], [{"name": "x", "dtype": "float32", "shape": [2, 2]}], "batch"),
        (["inputs"], [{"name": "x", "dtype": "float32", "shape": [-1, 0]}], "positive"),
        (["inputs"], [{"name": "x", "dtype": "float32", "shape": [-1, 2.5]}], "integers"),
        (["inputs"], [{"name": "x", "dtype": "float32", "shape": "-1,2"}], "shape must be a list"),
        (["inputs"], [{"name": "x", "dtype": "float32", "shape": [-1]}] * 2, "duplicate"),
        (["outputs"], [{"name": "bad name", "dtype": "float32", "shape": [-1]}], "tensor name"),
        (["tolerance", "atol"], -1e-3, "tolerance.atol"),
        (["tolerance", "rtol"], "0.1", "tolerance.rtol"),
        (["tolerance"], {"atol": 1e-3}, "missing field(s): rtol"),
    ],
)
def test_from_json_rejects_bad_fields(path: list[str], value: object, message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelManifest.from_json(_mutated(path, value))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (GOLDEN_CANONICAL.replace('"size":128', '"size":128,"size":129'), "duplicate key"),
        (GOLDEN_CANONICAL.replace('"atol":0.0001', '"atol":NaN'), "NaN"),
        (GOLDEN_CANONICAL.replace('"sizes":[2,1]', '"sizes":[2,1],"x":Infinity'), "Infinity"),
        ("x" * (1 << 21), "larger than"),
    ],
)
def test_from_json_rejects_malformed_text(text: str | bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelManifest.from_json(text)


def test_config_must_be_plain_json() -> None:
    with pytest.raises(ModelError, match="not a finite number"):
        dataclasses.replace(golden(), config={"eps": math.inf})
    with pytest.raises(ModelError, match="not a JSON value"):
        dataclasses.replace(golden(), config={"x": object()})
    with pytest.raises(ModelError, match="cannot be encoded"):
        canonical_json({"x": {1, 2}})


def test_parse_model_hash() -> None:
    assert parse_model_hash(GOLDEN_HASH) == bytes.fromhex(GOLDEN_HASH[2:])
    assert parse_model_hash(b"\x00" * 32) == b"\x00" * 32
    for bad in ("0x12", b"\x00" * 31, GOLDEN_HASH[2:], 5):
        with pytest.raises(MarketInputError):
            parse_model_hash(bad)  # type: ignore[arg-type]


def test_check_inputs_names_dtypes_shapes_and_batch() -> None:
    m = dataclasses.replace(
        golden(),
        inputs=(TensorSchema("x", "float32", (-1, 2)), TensorSchema("ids", "int64", (-1, -1))),
    )
    assert m.check_inputs({"x": torch.zeros(3, 2), "ids": torch.zeros(3, 7, dtype=torch.int64)}) == 3
    bad_inputs = [
        ({"x": torch.zeros(3, 2)}, "names"),
        (
            {"x": torch.zeros(3, 2, dtype=torch.float64), "ids": torch.zeros(3, 7, dtype=torch.int64)},
            "dtype float64",
        ),
        ({"x": torch.zeros(3, 3), "ids": torch.zeros(3, 7, dtype=torch.int64)}, "shape"),
        ({"x": torch.zeros(3, 2, 1), "ids": torch.zeros(3, 7, dtype=torch.int64)}, "shape"),
        ({"x": torch.zeros(3, 2), "ids": torch.zeros(4, 7, dtype=torch.int64)}, "batch size 4"),
        ({"x": torch.zeros(0, 2), "ids": torch.zeros(0, 7, dtype=torch.int64)}, "at least one"),
        ({"x": [[0.0, 0.0]], "ids": torch.zeros(1, 7, dtype=torch.int64)}, "torch.Tensor"),
    ]
    for tensors, message in bad_inputs:
        with pytest.raises(MarketInputError, match=message):
            m.check_inputs(tensors)
    with pytest.raises(ModelError, match="output"):
        m.check_outputs({"y": torch.zeros(3, 2)})
    assert m.check_outputs({"y": torch.zeros(3, 1)}, batch=3) == 3


# -- outputs_match -------------------------------------------------------------------------------------------

TOL = Tolerance(atol=1e-4, rtol=1e-3)


def test_outputs_match_within_and_beyond_atol() -> None:
    a = {"y": torch.zeros(4, 3)}
    assert outputs_match(a, {"y": torch.full((4, 3), 0.9e-4)}, TOL)
    assert not outputs_match(a, {"y": torch.full((4, 3), 1.1e-4)}, TOL)
    assert outputs_match(a, {"y": torch.zeros(4, 3)}, Tolerance(0.0, 0.0))


def test_outputs_match_rtol_is_symmetric() -> None:
    a = {"y": torch.tensor([1000.0])}
    b = {"y": torch.tensor([1000.9])}
    assert outputs_match(a, b, TOL) and outputs_match(b, a, TOL)
    c = {"y": torch.tensor([1001.2])}
    assert not outputs_match(a, c, TOL) and not outputs_match(c, a, TOL)


def test_nan_never_matches_even_itself() -> None:
    a = {"y": torch.tensor([1.0, math.nan])}
    assert not outputs_match(a, a, TOL)
    assert not outputs_match(a, {"y": torch.tensor([1.0, 1.0])}, TOL)
    assert max_abs_diff(a, a) == math.inf


@pytest.mark.parametrize(
    "other",
    [
        {"y": torch.zeros(4, 2)},
        {"y": torch.zeros(12)},
        {"y": torch.zeros(4, 3, dtype=torch.float64)},
        {"z": torch.zeros(4, 3)},
        {"y": torch.zeros(4, 3), "z": torch.zeros(1)},
    ],
)
def test_structure_mismatch_never_matches(other: dict[str, torch.Tensor]) -> None:
    a = {"y": torch.zeros(4, 3)}
    assert not outputs_match(a, other, Tolerance(1e9, 1e9))
    assert max_abs_diff(a, other) == math.inf


def test_integer_outputs_compare_exactly() -> None:
    a = {"label": torch.tensor([1, 2, 3])}
    assert outputs_match(a, {"label": torch.tensor([1, 2, 3])}, Tolerance(10.0, 10.0))
    assert not outputs_match(a, {"label": torch.tensor([1, 2, 4])}, Tolerance(10.0, 10.0))
    assert outputs_match({"m": torch.tensor([True])}, {"m": torch.tensor([True])}, TOL)


def test_max_abs_diff() -> None:
    a = {"y": torch.tensor([1.0, 2.0]), "z": torch.tensor([0.0])}
    b = {"y": torch.tensor([1.5, 2.0]), "z": torch.tensor([-0.25])}
    assert max_abs_diff(a, b) == pytest.approx(0.5)
    assert max_abs_diff(a, a) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=8),
    st.floats(0, 9.5e-5),
)
def test_outputs_match_accepts_any_perturbation_under_atol(values: list[float], noise: float) -> None:
    a = torch.tensor(values, dtype=torch.float32)
    b = a + torch.tensor(noise, dtype=torch.float32)
    # b differs from a by float32 rounding of noise; atol alone must cover it up to rtol slack
    assert outputs_match({"y": a}, {"y": b}, TOL) == outputs_match({"y": b}, {"y": a}, TOL)
    assert outputs_match({"y": a}, {"y": b}, TOL)
