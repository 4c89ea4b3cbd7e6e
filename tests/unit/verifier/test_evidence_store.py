"""EvidenceStore: tensors by their tensor hash, bounded in memory, durable in a folder, re-hashed on read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from market.errors import MalformedMessageError, MarketInputError
from market.evidence import EvidenceStore
from market.protocol.codec import decode_tensors, encode_tensors
from market.protocol.hashing import tensors_hash


def tensors(seed: int = 0, rows: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.rand((rows, 8), generator=g), "ids": torch.arange(rows, dtype=torch.int64)}


def test_put_returns_the_protocol_tensor_hash_and_get_gives_the_bytes_back() -> None:
    store = EvidenceStore(None)
    t = tensors()
    digest = store.put(t)
    assert digest == tensors_hash(t)
    assert digest in store
    specs, payload = store.get(digest)
    back = decode_tensors(specs, payload)
    assert set(back) == {"x", "ids"}
    assert torch.equal(back["x"], t["x"]) and torch.equal(back["ids"], t["ids"])


def test_put_encoded_takes_json_specs_and_checks_the_payload_length() -> None:
    store = EvidenceStore(None)
    specs, payload = encode_tensors(tensors(1))
    digest = store.put_encoded([s.to_json() for s in specs], payload)
    assert digest == store.put_encoded(specs, payload)
    with pytest.raises(MalformedMessageError):
        store.put_encoded(specs, payload[:-1])


def test_unknown_or_malformed_hashes() -> None:
    store = EvidenceStore(None)
    assert store.get(bytes(32)) is None
    assert bytes(32) not in store
    assert "nope" not in store
    with pytest.raises(MarketInputError):
        store.get(b"short")


def test_memory_is_bounded_and_evicts_the_least_recently_used() -> None:
    one_item = len(encode_tensors(tensors(0))[1])
    store = EvidenceStore(None, max_memory_bytes=2 * one_item)
    a, b = store.put(tensors(0)), store.put(tensors(1))
    assert store.get(a) is not None  # a is now the most recent
    c = store.put(tensors(2))
    assert a in store and c in store and b not in store
    assert len(store) == 2


def test_a_folder_keeps_evidence_across_instances(tmp_path: Path) -> None:
    digest = EvidenceStore(tmp_path).put(tensors(3))
    again = EvidenceStore(tmp_path)
    assert digest in again
    specs, payload = again.get(digest)
    assert torch.equal(decode_tensors(specs, payload)["x"], tensors(3)["x"])
    assert again.hashes() == [digest]


def test_a_corrupted_file_is_dropped_not_served(tmp_path: Path) -> None:
    digest = EvidenceStore(tmp_path).put(tensors(4))
    (path,) = tmp_path.glob("*.evidence")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert EvidenceStore(tmp_path).get(digest) is None
    assert not path.exists()


def test_the_folder_is_pruned_oldest_first(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path, max_disk_bytes=1)
    first = store.put(tensors(0))
    os.utime(tmp_path / f"{first.hex()}.evidence", (1, 1))
    second = store.put(tensors(1))
    files = {p.name for p in tmp_path.glob("*.evidence")}
    assert files == {f"{second.hex()}.evidence"}


def test_remove_forgets_memory_and_file(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path)
    digest = store.put(tensors(5))
    store.remove(digest)
    assert digest not in store
    assert store.get(digest) is None
    assert not list(tmp_path.glob("*.evidence"))
