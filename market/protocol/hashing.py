"""Keccak-256 and the tensor hash of docs/protocol.md (the `inputHash`/`outputHash` of receipts).

tensor_hash = keccak256(canonical_json([[name, dtype, shape], ...]) || payload), canonical JSON meaning
`separators=(",", ":")` and ASCII only (tensor names are restricted to ASCII, see specs.py). The same
function runs on clients, nodes and verifiers so that a receipt can be checked anywhere. Uses pycryptodome
(no web3); torch is imported only by `tensors_hash`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from Crypto.Hash import keccak

from market.errors import MalformedMessageError
from market.protocol.specs import TensorSpec, payload_size

if TYPE_CHECKING:
    import torch

REQUEST_ID_SIZE = 32


def keccak256(data: bytes | bytearray | memoryview) -> bytes:
    """Ethereum's Keccak-256 (not NIST SHA3-256)."""
    h = keccak.new(digest_bits=256)
    h.update(data)
    return h.digest()


def canonical_specs_json(specs: Sequence[TensorSpec]) -> bytes:
    return json.dumps(
        [[s.name, s.dtype, list(s.shape)] for s in specs], separators=(",", ":"), ensure_ascii=True
    ).encode("ascii")


def tensor_hash(specs: Sequence[TensorSpec], payload: bytes | bytearray | memoryview) -> bytes:
    """The hash of tensors as they travel; the payload must be exactly what the specs describe."""
    expected = payload_size(specs)
    if expected != len(payload):
        raise MalformedMessageError(f"tensors need {expected} payload bytes, the payload has {len(payload)}")
    h = keccak.new(digest_bits=256)
    h.update(canonical_specs_json(specs))
    h.update(payload)
    return h.digest()


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """tensor_hash of torch tensors, encoded exactly as the codec sends them."""
    from market.protocol.codec import encode_tensors

    specs, payload = encode_tensors(tensors)
    return tensor_hash(specs, payload)


def new_request_id() -> bytes:
    return secrets.token_bytes(REQUEST_ID_SIZE)
