"""Keccak-256 and the tensor hash: known vectors, the definition spelled out, order and content sensitivity."""

from __future__ import annotations

import json

import pytest
import torch

from market.errors import MalformedMessageError
from market.protocol.codec import encode_tensors
from market.protocol.hashing import keccak256, new_request_id, tensor_hash, tensors_hash
from market.protocol.specs import TensorSpec


def test_keccak_known_vectors() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"abc").hex() == "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    assert keccak256(bytearray(b"abc")) == keccak256(memoryview(b"abc"))


def test_tensor_hash_is_keccak_of_canonical_specs_then_payload() -> None:
    specs = [TensorSpec("x", "float32", (2,)), TensorSpec("m", "bool", ())]
    payload = b"\x00" * 8 + b"\x01"
    canonical = json.dumps([["x", "float32", [2]], ["m", "bool", []]], separators=(",", ":")).encode()
    assert canonical == b'[["x","float32",[2]],["m","bool",[]]]'
    assert tensor_hash(specs, payload) == keccak256(canonical + payload)
    # pinned so that an accidental change of the definition is caught (other languages compute it too)
    assert (
        tensor_hash(specs, payload).hex()
        == "fdb8f8e79d81b0b796838bbb797212c4a50ec433682a4befc122b3b2e4dff84f"
    )


def test_tensors_hash_matches_the_wire_encoding() -> None:
    tensors = {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor([1.5], dtype=torch.bfloat16),
    }
    specs, payload = encode_tensors(tensors)
    assert tensors_hash(tensors) == tensor_hash(specs, payload)
    assert tensors_hash(dict(reversed(tensors.items()))) != tensors_hash(tensors)
    changed = {**tensors, "a": tensors["a"] + 1e-6}
    assert tensors_hash(changed) != tensors_hash(tensors)
    assert tensors_hash({"a": tensors["a"].reshape(3, 2), "b": tensors["b"]}) != tensors_hash(tensors)


def test_mismatched_payload_is_refused() -> None:
    with pytest.raises(MalformedMessageError):
        tensor_hash([TensorSpec("x", "float32", (2,))], b"\x00" * 7)


def test_request_ids_are_random_32_bytes() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)
