"""Dispute evidence: tensors kept and served by their tensor hash, and fetched by it.

A dispute names the disputed input and the claimed output only by their hashes (the receipt's `inputHash`
and `outputHash`, see docs/protocol.md "Tensor hash"); the challenger keeps the tensors and serves them on
`/moe-market/evidence/1.0.0` at the `evidenceEndpoint` it gave when it opened the dispute. Verifiers fetch
them from there and re-hash what they got, so a peer can withhold evidence but never substitute it.

    EvidenceStore(root)                      tensors by hash, in memory (bounded) and optionally in a folder
    serve_evidence(host, store)              answers evidence requests from a store (NOT_FOUND when unknown)
    fetch_evidence(host, endpoint, hash)     asks an endpoint for tensors and checks their hash

Errors:

    MarketError
    ├── ProtocolError
    │   └── EvidenceHashMismatchError   what came back does not hash to what was asked for
    └── RemoteError
        └── EvidenceNotFoundError (LookupError)   the peer does not hold that hash

It must not: import libp2p or web3 (the host comes from market.transport), unpickle anything, or trust a
file of its folder without re-hashing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from market.errors import (
    MalformedMessageError,
    MarketInputError,
    PeerTimeoutError,
    ProtocolError,
    RemoteError,
)
from market.protocol.hashing import tensor_hash
from market.protocol.ids import DEFAULT_FRAME_CAPS, EVIDENCE
from market.protocol.messages import (
    ErrorCode,
    ErrorMessage,
    EvidenceRequest,
    EvidenceResponse,
    decode_body,
    decode_response,
)
from market.protocol.specs import TensorSpec, specs_from_json

if TYPE_CHECKING:
    import torch

    from market.transport import Handler, MarketHost, PeerId

__all__ = [
    "DEFAULT_FETCH_TIMEOUT",
    "EvidenceHashMismatchError",
    "EvidenceNotFoundError",
    "EvidenceStore",
    "fetch_evidence",
    "serve_evidence",
]

logger = logging.getLogger(__name__)

DEFAULT_FETCH_TIMEOUT: Final = 30.0
DEFAULT_MAX_MEMORY_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_DISK_BYTES: Final = 1024 * 1024 * 1024
# An answer carries a JSON header besides the payload; leave it room under the frame cap.
_HEADER_ROOM: Final = 64 * 1024
MAX_EVIDENCE_PAYLOAD: Final = DEFAULT_FRAME_CAPS[EVIDENCE] - _HEADER_ROOM
_SUFFIX: Final = ".evidence"


class EvidenceHashMismatchError(ProtocolError):
    """A peer answered an evidence request with tensors that do not hash to the hash asked for."""


class EvidenceNotFoundError(RemoteError, LookupError):
    """The evidence peer does not hold tensors with that hash (it answered NOT_FOUND)."""


def _check_hash(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise MarketInputError("an evidence hash is 32 bytes")
    return bytes(value)


def _as_specs(specs: Sequence[TensorSpec | Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    if all(isinstance(s, TensorSpec) for s in specs):
        parsed = tuple(specs)  # type: ignore[arg-type]
        names = [s.name for s in parsed]  # type: ignore[union-attr]
        if len(set(names)) != len(names):
            raise MalformedMessageError("tensor names must be unique")
        return parsed  # type: ignore[return-value]
    return specs_from_json([s.to_json() if isinstance(s, TensorSpec) else dict(s) for s in specs])


class EvidenceStore:
    """Tensors by their tensor hash: a bounded in-memory LRU, and a folder when `root` is given.

    With a folder every item is also written there (`<64 hex digits>.evidence`, the same bytes as an
    evidence answer: header length, JSON header, payload), so evidence outlives a restart of the process
    that holds it; the folder is pruned oldest-first above `max_disk_bytes`. A file read back is re-hashed
    and dropped if it no longer matches its name. Thread-safe: the SDK's blocking facade and the trio loop
    may use one store together.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
        max_disk_bytes: int = DEFAULT_MAX_DISK_BYTES,
    ) -> None:
        if max_memory_bytes < 1 or max_disk_bytes < 1:
            raise MarketInputError("evidence store bounds must be positive")
        self.root = None if root is None else Path(root)
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        self.max_memory_bytes = max_memory_bytes
        self.max_disk_bytes = max_disk_bytes
        self._lock = threading.Lock()
        self._memory: OrderedDict[bytes, tuple[tuple[TensorSpec, ...], bytes]] = OrderedDict()
        self._memory_bytes = 0

    def __repr__(self) -> str:
        return f"EvidenceStore(root={self.root}, items_in_memory={len(self._memory)})"

    # -- writing ----------------------------------------------------------------------------------

    def put(self, tensors: Mapping[str, torch.Tensor]) -> bytes:
        """Keep `tensors`; returns their tensor hash (the `inputHash`/`outputHash` a receipt names)."""
        from market.protocol.codec import encode_tensors

        specs, payload = encode_tensors(tensors)
        return self.put_encoded(specs, payload)

    def put_encoded(self, specs: Sequence[TensorSpec | Mapping[str, Any]], payload: bytes) -> bytes:
        """Keep tensors already encoded as they travel (specs + payload); returns their tensor hash."""
        parsed = _as_specs(specs)
        data = bytes(payload)
        digest = tensor_hash(parsed, data)  # also checks that the payload fits the specs
        if len(data) > MAX_EVIDENCE_PAYLOAD:
            raise MarketInputError(
                f"evidence of {len(data)} bytes cannot be served: the evidence protocol carries at most "
                f"{MAX_EVIDENCE_PAYLOAD} bytes of tensors"
            )
        with self._lock:
            self._remember(digest, parsed, data)
        if self.root is not None:
            self._write_file(digest, parsed, data)
        return digest

    def _remember(self, digest: bytes, specs: tuple[TensorSpec, ...], payload: bytes) -> None:
        old = self._memory.pop(digest, None)
        if old is not None:
            self._memory_bytes -= len(old[1])
        self._memory[digest] = (specs, payload)
        self._memory_bytes += len(payload)
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, (_, dropped) = self._memory.popitem(last=False)
            self._memory_bytes -= len(dropped)

    def _path(self, digest: bytes) -> Path:
        assert self.root is not None
        return self.root / f"{digest.hex()}{_SUFFIX}"

    def _write_file(self, digest: bytes, specs: tuple[TensorSpec, ...], payload: bytes) -> None:
        path = self._path(digest)
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)
            return
        body = EvidenceResponse(hash=digest, tensors=specs, payload=payload).to_body()
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._prune_disk()

    def _prune_disk(self) -> None:
        assert self.root is not None
        files = []
        for path in self.root.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(OSError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        files.sort()
        # The newest file always stays: the caller just wrote it and will hand its hash out.
        for _, size, path in files[:-1]:
            if total <= self.max_disk_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
                logger.info("evidence folder over %d bytes: dropped %s", self.max_disk_bytes, path.name)

    def remove(self, digest: bytes) -> None:
        """Forget an item (once its dispute is resolved)."""
        digest = _check_hash(digest)
        with self._lock:
            old = self._memory.pop(digest, None)
            if old is not None:
                self._memory_bytes -= len(old[1])
        if self.root is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(digest).unlink()

    # -- reading ----------------------------------------------------------------------------------

    def get(self, digest: bytes) -> tuple[tuple[TensorSpec, ...], bytes] | None:
        """(specs, payload) of the tensors with this hash, or None when they are not held."""
        digest = _check_hash(digest)
        with self._lock:
            hit = self._memory.get(digest)
            if hit is not None:
                self._memory.move_to_end(digest)
                return hit
        if self.root is None:
            return None
        loaded = self._read_file(digest)
        if loaded is not None:
            with self._lock:
                self._remember(digest, *loaded)
        return loaded

    def _read_file(self, digest: bytes) -> tuple[tuple[TensorSpec, ...], bytes] | None:
        path = self._path(digest)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read evidence file %s: %s", path, exc)
            return None
        try:
            header, payload = decode_body(body)
            message = EvidenceResponse.from_header(header, payload)
            if message.hash != digest or tensor_hash(message.tensors, message.payload) != digest:
                raise MalformedMessageError("content does not hash to the file name")
        except MalformedMessageError as exc:
            logger.warning("evidence file %s is corrupt (%s); removing it", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return message.tensors, message.payload

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, (bytes, bytearray)) or len(digest) != 32:
            return False
        with self._lock:
            if bytes(digest) in self._memory:
                return True
        return self.root is not None and self._path(bytes(digest)).is_file()

    def hashes(self) -> list[bytes]:
        """Every hash held, in memory or in the folder."""
        with self._lock:
            found = set(self._memory)
        if self.root is not None:
            for path in self.root.glob(f"*{_SUFFIX}"):
                name = path.name[: -len(_SUFFIX)]
                if len(name) == 64:
                    with contextlib.suppress(ValueError):
                        found.add(bytes.fromhex(name))
        return sorted(found)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.hashes())

    def __len__(self) -> int:
        return len(self.hashes())


# ==================================================================================================
# the evidence protocol


def evidence_handler(store: EvidenceStore) -> Handler:
    """The `/moe-market/evidence/1.0.0` handler over `store` (NOT_FOUND for unknown hashes)."""

    async def on_evidence(header: Mapping[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        request = EvidenceRequest.from_header(header, payload)
        # A folder read and a keccak over up to 16 MiB: off the trio loop.
        found = await trio.to_thread.run_sync(store.get, request.hash)
        if found is None:
            raise RemoteError(str(ErrorCode.NOT_FOUND), f"no evidence with hash 0x{request.hash.hex()} here")
        specs, data = found
        logger.debug("serving evidence 0x%s to %s", request.hash.hex()[:12], peer)
        answer = EvidenceResponse(hash=request.hash, tensors=specs, payload=data)
        return answer.to_header(), answer.payload

    return on_evidence


def serve_evidence(host: MarketHost, store: EvidenceStore) -> None:
    """Answer `/moe-market/evidence/1.0.0` requests on `host` from `store`."""
    host.serve(EVIDENCE, evidence_handler(store))


def _endpoint_addrs(endpoint: str) -> list[str]:
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise MarketInputError("an evidence endpoint is a multiaddr ending in /p2p/<peer id>")
    addrs = endpoint.split()
    for addr in addrs:
        if "/p2p/" not in addr:
            raise MarketInputError(f"evidence endpoint {addr[:120]!r} does not end in /p2p/<peer id>")
    return addrs


async def fetch_evidence(
    host: MarketHost,
    endpoint: str,
    hash: bytes,  # noqa: A002 - the protocol's own name for it
    timeout: float = DEFAULT_FETCH_TIMEOUT,
    *,
    max_elements: int | None = None,
) -> dict[str, torch.Tensor]:
    """The tensors with tensor hash `hash`, fetched from `endpoint` (a full multiaddr with /p2p/<peer id>;
    several separated by spaces are tried as addresses of that one peer).

    Raises EvidenceNotFoundError (the peer does not hold them), EvidenceHashMismatchError (what it sent
    hashes to something else), PeerTimeoutError / TransportError (network), MalformedMessageError.
    """
    from market.protocol.codec import DEFAULT_MAX_ELEMENTS, decode_tensors

    digest = _check_hash(hash)
    addrs = _endpoint_addrs(endpoint)
    try:
        with trio.fail_after(timeout):
            peer_id = await host.connect(addrs[0], addrs[1:])
            header, payload = await host.request(
                peer_id, addrs, EVIDENCE, EvidenceRequest(hash=digest).to_header(), timeout=timeout
            )
    except trio.TooSlowError:
        raise PeerTimeoutError(f"evidence request to {addrs[0]} timed out after {timeout:g}s") from None
    answer = decode_response(header, payload)
    if isinstance(answer, ErrorMessage):
        if answer.code == ErrorCode.NOT_FOUND:
            raise EvidenceNotFoundError(str(answer.code), answer.message or "evidence not found")
        raise answer.to_exception()
    if not isinstance(answer, EvidenceResponse):
        raise MalformedMessageError(f"expected an evidence answer, got {header.get('type')!r:.40}")
    got = tensor_hash(answer.tensors, answer.payload)
    if got != digest or answer.hash != digest:
        raise EvidenceHashMismatchError(
            f"{peer_id} answered evidence 0x{digest.hex()} with tensors hashing to 0x{got.hex()}"
        )
    return decode_tensors(answer.tensors, answer.payload, max_elements or DEFAULT_MAX_ELEMENTS)
