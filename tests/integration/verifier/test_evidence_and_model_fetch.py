"""Evidence and model fetching between real libp2p hosts on 127.0.0.1: what a verifier and a client rely on.

A peer can withhold evidence or a model, never substitute them: everything is re-hashed before use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import trio

from market.errors import MarketInputError, ModelHashMismatchError, RemoteError
from market.evidence import (
    EvidenceHashMismatchError,
    EvidenceNotFoundError,
    EvidenceStore,
    fetch_evidence,
    serve_evidence,
)
from market.manifest import Tolerance, outputs_match
from market.models.architectures import MLP
from market.models.fetch import ModelUnavailableError, fetch_manifest, fetch_model, get_model
from market.models.package import ModelStore, pack
from market.protocol.codec import encode_tensors
from market.protocol.ids import EVIDENCE, MODEL
from market.protocol.messages import ErrorCode, EvidenceResponse, ModelRequest, ModelResponse
from market.transport import PeerId, open_host

pytestmark = pytest.mark.timeout(90)


def run(main: Any) -> None:
    async def guarded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(guarded)


def packed_store(tmp_path: Path, seed: int = 0) -> tuple[ModelStore, bytes]:
    torch.manual_seed(seed)
    module = MLP([8, 16, 3], "relu")
    manifest = pack(
        module, "mlp", {"sizes": [8, 16, 3], "activation": "relu"},
        [{"name": "x", "dtype": "float32", "shape": [-1, 8]}],
        [{"name": "y", "dtype": "float32", "shape": [-1, 3]}],
        Tolerance(1e-4, 1e-3), "tiny", "tiny-mlp", tmp_path / f"pkg{seed}",
    )  # fmt: skip
    store = ModelStore(tmp_path / f"store{seed}")
    store.add(tmp_path / f"pkg{seed}")
    return store, manifest.model_hash


def model_handler(store: ModelStore, tamper: bool = False) -> Any:
    """The expert node's model handler, as node/server.py answers it (optionally sending changed weights)."""

    async def on_model(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        request = ModelRequest.from_header(header, payload)
        if not store.has(request.model_hash):
            raise RemoteError(str(ErrorCode.NOT_FOUND), "not here")
        weights = bytearray(store.weights_bytes(request.model_hash))
        if tamper:
            weights[-1] ^= 0x01
        answer = ModelResponse(manifest=json.loads(store.manifest_bytes(request.model_hash)), payload=bytes(weights))
        return answer.to_header(), answer.payload

    return on_model


def test_evidence_round_trip_and_not_found(tmp_path: Path) -> None:
    store = EvidenceStore(tmp_path / "evidence")
    x = {"x": torch.randn(3, 8)}
    digest = store.put(x)

    async def main() -> None:
        async with open_host() as server, open_host() as client:
            serve_evidence(server, store)
            endpoint = server.listen_addrs[0]
            got = await fetch_evidence(client, endpoint, digest, timeout=10)
            assert torch.equal(got["x"], x["x"])
            with pytest.raises(EvidenceNotFoundError):
                await fetch_evidence(client, endpoint, bytes(32), timeout=10)
            with pytest.raises(MarketInputError, match="/p2p/"):
                await fetch_evidence(client, endpoint.split("/p2p/")[0], digest, timeout=10)

    run(main)


def test_evidence_that_does_not_hash_to_the_request_is_refused() -> None:
    async def lying(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        specs, data = encode_tensors({"x": torch.zeros(1, 8)})
        answer = EvidenceResponse(hash=bytes.fromhex(header["hash"][2:]), tensors=tuple(specs), payload=data)
        return answer.to_header(), answer.payload

    async def main() -> None:
        async with open_host() as server, open_host() as client:
            server.serve(EVIDENCE, lying)
            with pytest.raises(EvidenceHashMismatchError):
                await fetch_evidence(client, server.listen_addrs[0], b"\x01" * 32, timeout=10)

    run(main)


def test_fetch_model_checks_the_hash_loads_and_stores(tmp_path: Path) -> None:
    served, model_hash = packed_store(tmp_path)
    local = ModelStore(tmp_path / "local")
    x = {"x": torch.randn(4, 8)}

    async def main() -> None:
        async with open_host() as server, open_host() as client:
            server.serve(MODEL, model_handler(served))
            manifest = await fetch_manifest(client, server.peer_id, server.listen_addrs, model_hash, timeout=20)
            assert manifest.model_hash == model_hash
            model = await fetch_model(client, server.peer_id, server.listen_addrs, model_hash, local, timeout=20)
            assert local.has(model_hash)
            assert outputs_match(model(x), served.get(model_hash)(x), manifest.tolerance)

    run(main)


def test_changed_weights_are_refused_before_loading(tmp_path: Path) -> None:
    served, model_hash = packed_store(tmp_path)
    local = ModelStore(tmp_path / "local")

    async def main() -> None:
        async with open_host() as server, open_host() as client:
            server.serve(MODEL, model_handler(served, tamper=True))
            with pytest.raises(ModelHashMismatchError):
                await fetch_model(client, server.peer_id, server.listen_addrs, model_hash, local, timeout=20)
            assert not local.has(model_hash)

    run(main)


def test_get_model_is_local_first_then_tries_each_source(tmp_path: Path) -> None:
    served, model_hash = packed_store(tmp_path)
    empty = ModelStore(tmp_path / "empty")
    local = ModelStore(tmp_path / "local")

    async def main() -> None:
        # Local hit: no host needed at all.
        assert (await get_model(None, model_hash, served)).model_hash == model_hash
        async with open_host() as bad, open_host() as good, open_host() as client:
            bad.serve(MODEL, model_handler(empty))
            good.serve(MODEL, model_handler(served))
            sources = [(bad.peer_id, bad.listen_addrs), (good.peer_id, good.listen_addrs)]
            model = await get_model(client, model_hash, local, sources, timeout=20)
            assert model.model_hash == model_hash and local.has(model_hash)
            with pytest.raises(ModelUnavailableError) as info:
                await get_model(client, b"\x07" * 32, local, sources[:1], timeout=20)
            assert len(info.value.failures) == 1

    run(main)
