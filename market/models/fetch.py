"""Fetching models by modelHash over `/moe-market/model/1.0.0`: verified before anything is built.

    fetch_model(host, peer_id, addrs, model_hash, store)    manifest + weights from one node, checked, loaded
    fetch_manifest(host, peer_id, addrs, model_hash)        only the manifest (schema, tolerance), checked
    get_model(host, model_hash, store, sources)             the local store first, then each source in turn

A node answers a model request with the manifest in the header and the safetensors weights as payload. The
fetcher recomputes the modelHash from the manifest and the weights' keccak256 the manifest pins before it
parses a weight or builds a module (market.models.package.load_from_bytes); nothing is ever unpickled. A peer
can refuse to serve a model, never make us run another one.

Errors: ModelHashMismatchError (the bytes are not the model asked for), ModelNotFoundError (the node does not
hold it), ModelUnavailableError (no source served it), and the transport's TransportError/PeerTimeoutError.

It must not: import libp2p or web3, or load anything that did not hash to the modelHash asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

import trio

from market.errors import (
    MalformedMessageError,
    MarketError,
    ModelError,
    ModelHashMismatchError,
    PeerTimeoutError,
)
from market.manifest import ModelManifest, parse_model_hash
from market.models.package import LoadedModel, ModelNotFoundError, ModelStore, load_from_bytes
from market.protocol.ids import MODEL
from market.protocol.messages import ErrorCode, ErrorMessage, ModelRequest, ModelResponse, decode_response

if TYPE_CHECKING:
    from market.transport import MarketHost

__all__ = [
    "DEFAULT_MODEL_TIMEOUT",
    "ModelSource",
    "ModelUnavailableError",
    "fetch_manifest",
    "fetch_model",
    "fetch_model_bytes",
    "get_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_TIMEOUT: Final = 120.0

ModelSource = tuple[str, Sequence[str]]
"""Where a model may be fetched: (peer id, addresses of that peer)."""


class ModelUnavailableError(ModelNotFoundError):
    """No source served a model that hashes to the modelHash (every failure is in `failures`)."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.failures = list(failures)


async def fetch_model_bytes(
    host: MarketHost,
    peer_id: str,
    addrs: Sequence[str],
    model_hash: bytes | str,
    timeout: float = DEFAULT_MODEL_TIMEOUT,
) -> tuple[bytes, bytes]:
    """(manifest JSON, weights) as one node sent them, NOT yet checked: callers go through verify_bytes."""
    expected = parse_model_hash(model_hash)
    try:
        with trio.fail_after(timeout):
            header, payload = await host.request(
                peer_id, list(addrs), MODEL, ModelRequest(model_hash=expected).to_header(), timeout=timeout
            )
    except trio.TooSlowError:
        raise PeerTimeoutError(f"model request to {peer_id} timed out after {timeout:g}s") from None
    answer = decode_response(header, payload)
    if isinstance(answer, ErrorMessage):
        if answer.code == ErrorCode.NOT_FOUND:
            raise ModelNotFoundError(f"{peer_id} does not serve model 0x{expected.hex()}: {answer.message}")
        raise answer.to_exception()
    if not isinstance(answer, ModelResponse):
        raise MalformedMessageError(f"expected a model answer, got {header.get('type')!r:.40}")
    try:
        manifest_json = json.dumps(dict(answer.manifest), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ModelHashMismatchError(f"{peer_id} sent a manifest that is not JSON: {exc}") from None
    return manifest_json, answer.payload


def _manifest_of(manifest_json: bytes, expected: bytes) -> ModelManifest:
    try:
        manifest = ModelManifest.from_json(manifest_json)
    except ModelError as exc:
        raise ModelHashMismatchError(f"fetched manifest for 0x{expected.hex()} is not valid: {exc}") from exc
    if manifest.model_hash != expected:
        raise ModelHashMismatchError(
            f"fetched manifest hashes to {manifest.model_hash_hex}, expected 0x{expected.hex()}"
        )
    return manifest


async def fetch_manifest(
    host: MarketHost,
    peer_id: str,
    addrs: Sequence[str],
    model_hash: bytes | str,
    timeout: float = DEFAULT_MODEL_TIMEOUT,
) -> ModelManifest:
    """The manifest of `model_hash` from one node; it must hash to `model_hash` (ModelHashMismatchError).

    The model protocol always carries the weights too; they are not needed for a manifest and are dropped.
    """
    expected = parse_model_hash(model_hash)
    manifest_json, _ = await fetch_model_bytes(host, peer_id, addrs, expected, timeout)
    return _manifest_of(manifest_json, expected)


async def fetch_model(
    host: MarketHost,
    peer_id: str,
    addrs: Sequence[str],
    model_hash: bytes | str,
    store: ModelStore | None = None,
    timeout: float = DEFAULT_MODEL_TIMEOUT,
) -> LoadedModel:
    """The model `model_hash` from one node: modelHash and weights hash checked before loading, then added
    to `store` (when given) so the next call is local."""
    expected = parse_model_hash(model_hash)
    manifest_json, weights = await fetch_model_bytes(host, peer_id, addrs, expected, timeout)

    def verify_and_load() -> LoadedModel:
        if store is None:
            return load_from_bytes(manifest_json, weights, expected)
        store.add_bytes(manifest_json, weights, expected)  # verify_bytes first, then written
        try:
            return store.get(expected)
        except ModelError:
            # The store already held a damaged copy under this hash (it never overwrites): use the bytes.
            logger.warning("stored copy of 0x%s is damaged; loading the fetched bytes", expected.hex())
            return load_from_bytes(manifest_json, weights, expected)

    # Hashing up to 256 MiB and building a module are CPU work: off the trio loop.
    model = await trio.to_thread.run_sync(verify_and_load)
    logger.info("fetched model %s from %s", model.model_hash_hex, peer_id)
    return model


async def get_model(
    host: MarketHost | None,
    model_hash: bytes | str,
    store: ModelStore | None,
    sources: Iterable[ModelSource] = (),
    timeout: float = DEFAULT_MODEL_TIMEOUT,
) -> LoadedModel:
    """The model from the local store when it holds it, else from the first source that serves bytes hashing
    to `model_hash` (each failure is logged and the next source tried). Raises ModelUnavailableError."""
    expected = parse_model_hash(model_hash)
    if store is not None and store.has(expected):
        try:
            return await trio.to_thread.run_sync(store.get, expected)
        except ModelError as exc:  # a damaged package: fetch it again below
            logger.warning("stored model 0x%s does not load (%s); fetching it again", expected.hex(), exc)
    failures: list[tuple[str, str]] = []
    for peer_id, addrs in sources:
        if host is None:
            break
        try:
            return await fetch_model(host, peer_id, addrs, expected, store, timeout)
        except MarketError as exc:
            logger.info("model 0x%s from %s failed: %s", expected.hex()[:12], peer_id, exc)
            failures.append((str(peer_id), f"{type(exc).__name__}: {exc}"))
    detail = "; ".join(f"{peer}: {why}" for peer, why in failures) or "no source to ask"
    raise ModelUnavailableError(f"model 0x{expected.hex()} is not available: {detail}", failures)
