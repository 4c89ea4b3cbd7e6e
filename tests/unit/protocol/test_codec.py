"""Tensor codec: every dtype round trips bit for bit, bad specs and payloads are refused, schema checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.errors import MalformedMessageError, MarketError, MarketInputError
from market.protocol.codec import TORCH_DTYPES, check_against_schema, decode_tensors, encode_tensors
from market.protocol.specs import DTYPE_ITEMSIZE, MAX_NDIM, TensorSchema, TensorSpec


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=gen).to(dtype)
        if t.numel() >= 3:
            flat = t.view(-1)
            flat[0], flat[1], flat[2] = float("nan"), float("inf"), -0.0
        return t
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bytes(a.contiguous().reshape(-1).view(torch.uint8).numpy()) == bytes(
        b.contiguous().reshape(-1).view(torch.uint8).numpy()
    )


@pytest.mark.parametrize("name", list(TORCH_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3, 4), (3, 0, 2)])
def test_round_trip_every_dtype(name: str, shape: tuple[int, ...]) -> None:
    tensor = sample(TORCH_DTYPES[name], shape)
    specs, payload = encode_tensors({"t": tensor})
    assert specs == [TensorSpec("t", name, shape)]
    assert len(payload) == tensor.numel() * DTYPE_ITEMSIZE[name]
    out = decode_tensors(specs, payload)
    assert list(out) == ["t"] and same_bits(out["t"], tensor)


def test_order_layout_and_little_endian() -> None:
    base = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    tensors = {"b": base.t(), "a": torch.tensor([1.0], dtype=torch.bfloat16), "c": base[:, 1]}
    specs, payload = encode_tensors(tensors)
    assert [s.name for s in specs] == ["b", "a", "c"]
    # the transposed view is sent C-contiguous: row 0 of b is 0, 4, 8
    assert payload[:12] == (0).to_bytes(4, "little") + (4).to_bytes(4, "little") + (8).to_bytes(4, "little")
    assert payload[48:50] == b"\x80\x3f"  # bfloat16 1.0, little-endian
    out = decode_tensors(specs, payload)
    assert all(same_bits(out[k], v) for k, v in tensors.items())


def test_gradients_and_devices_are_ignored() -> None:
    t = torch.ones(2, requires_grad=True) * 3
    specs, payload = encode_tensors({"t": t})
    assert decode_tensors(specs, payload)["t"].tolist() == [3.0, 3.0]


def test_decoded_tensors_own_their_memory() -> None:
    specs, payload = encode_tensors({"t": torch.zeros(4)})
    buffer = bytearray(payload)
    out = decode_tensors(specs, buffer)["t"]
    buffer[:4] = b"\xff" * 4
    assert out.tolist() == [0.0] * 4
    out += 1  # writable, and torch ops on it raise no warning (warnings are errors here)
    assert (out * 2).sum().item() == 8.0
    readonly = decode_tensors(specs, memoryview(bytes(payload)))["t"]
    readonly.add_(1)


def test_spec_dicts_are_accepted() -> None:
    out = decode_tensors([{"name": "x", "dtype": "uint8", "shape": [2]}], b"\x01\x02")
    assert out["x"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("specs", "payload", "match"),
    [
        ([TensorSpec("x", "float32", (2,))], b"\x00" * 7, "need 8"),
        ([TensorSpec("x", "float32", (2,))], b"\x00" * 9, "need 8"),
        ([TensorSpec("x", "float32", (0,))], b"\x00", "need 0"),
        ([{"name": "x", "dtype": "float32", "shape": [-1]}], b"", "negative"),
        ([{"name": "x", "dtype": "float32", "shape": [2**20, 2**20]}], b"", "cap"),
        ([{"name": "x", "dtype": "float32", "shape": [2**41]}], b"", "larger than"),
        ([{"name": "x", "dtype": "float32", "shape": [1] * (MAX_NDIM + 1)}], b"", "dimensions"),
        ([{"name": "x", "dtype": "complex64", "shape": [1]}], b"", "dtype"),
        ([{"name": "x", "dtype": "float32", "shape": "1"}], b"", "shape"),
        ([{"name": "x", "dtype": "bool", "shape": [3]}], b"\x00\x01\x02", "0 or 1"),
        ([TensorSpec("x", "uint8", (1,)), TensorSpec("x", "uint8", (1,))], b"\x00\x00", "unique"),
    ],
)
def test_bad_specs_and_payloads(specs: list, payload: bytes, match: str) -> None:
    with pytest.raises(MalformedMessageError, match=match):
        decode_tensors(specs, payload)


def test_element_cap_is_checked_before_allocation() -> None:
    specs = [TensorSpec("x", "uint8", (1000,))]
    with pytest.raises(MalformedMessageError, match="cap"):
        decode_tensors(specs, b"\x00" * 1000, max_elements=999)
    assert decode_tensors(specs, b"\x00" * 1000, max_elements=1000)["x"].shape == (1000,)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"x": torch.zeros(2, dtype=torch.complex64)}, "cannot be sent"),
        ({"x": [1.0, 2.0]}, "not a torch.Tensor"),
        ({"bad name": torch.zeros(1)}, "tensor name"),
        ({"x": torch.zeros(2, 2).to_sparse()}, "dense"),
    ],
)
def test_encode_refuses_what_the_wire_cannot_carry(tensors: dict, match: str) -> None:
    with pytest.raises(MarketInputError, match=match):
        encode_tensors(tensors)


SCHEMA = [
    {"name": "x", "dtype": "float32", "shape": [-1, 4]},
    {"name": "ids", "dtype": "int64", "shape": [-1]},
]


def test_schema_accepts_and_returns_the_batch_size() -> None:
    assert (
        check_against_schema({"x": torch.zeros(3, 4), "ids": torch.zeros(3, dtype=torch.int64)}, SCHEMA) == 3
    )
    specs, _ = encode_tensors({"ids": torch.zeros(5, dtype=torch.int64), "x": torch.zeros(5, 4)})
    assert check_against_schema(specs, [TensorSchema.from_json(e) for e in SCHEMA]) == 5
    assert (
        check_against_schema({"y": torch.zeros(2)}, [{"name": "y", "dtype": "float32", "shape": [2]}]) is None
    )


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"x": torch.zeros(3, 4)}, "input 'ids' is missing"),
        ({"x": torch.zeros(3, 4), "ids": torch.zeros(3)}, "'ids' has dtype float32; the model expects int64"),
        ({"x": torch.zeros(3, 5), "ids": torch.zeros(3, dtype=torch.int64)}, r"'x' has shape \(3, 5\)"),
        ({"x": torch.zeros(4), "ids": torch.zeros(4, dtype=torch.int64)}, r"'x' has shape \(4,\)"),
        ({"x": torch.zeros(3, 4), "ids": torch.zeros(2, dtype=torch.int64)}, "batch size 2 but 'x' has 3"),
        (
            {"x": torch.zeros(1, 4), "ids": torch.zeros(1, dtype=torch.int64), "z": torch.zeros(1)},
            "unexpected tensor 'z'",
        ),
    ],
)
def test_schema_mismatches_name_the_tensor(tensors: dict, match: str) -> None:
    with pytest.raises(MarketInputError, match=match):
        check_against_schema(tensors, SCHEMA)


def test_a_bad_schema_is_an_input_error() -> None:
    with pytest.raises(MarketInputError, match="bad schema"):
        check_against_schema({}, [{"name": "x", "dtype": "float32", "shape": [-2]}])


spec_dicts = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "b", "c", "bad name"]),
            "dtype": st.sampled_from([*DTYPE_ITEMSIZE, "complex64", 5]),
            "shape": st.lists(st.integers(min_value=-3, max_value=2**45), max_size=4),
        }
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_dicts, st.binary(max_size=64))
def test_random_specs_and_payloads_only_raise_market_errors(specs: list, payload: bytes) -> None:
    try:
        out = decode_tensors(specs, payload, max_elements=10_000)
    except MarketError:
        return
    assert sum(t.numel() * t.element_size() for t in out.values()) == len(payload)
