"""The libp2p host of the market: noise only, yamux, ed25519 identities, frame caps, timeouts and limits.

This is the only module of `market` that imports libp2p. It offers:

- `NodeIdentity`: the node's ed25519 key (its public key is the on-chain `nodeKey`, its peer id follows
  from it), stored encrypted with argon2id + SecretBox.
- `TransportConfig`: every limit and timeout, frozen and validated once.
- `open_host(identity, config)`: an async context manager yielding a `MarketHost` that serves
  request/answer pairs (`serve`) and calls peers over pooled long-lived streams (`session`) or one-shot
  streams (`request`).

What py-libp2p 0.8.1 does by default and this module changes (measured, see docs/protocol.md):
plaintext and secio are accepted (only noise is offered here); three connections per peer add 250 ms to a
dial (one here); each inbound connection keeps its slot of the swarm's inbound limiter until the swarm
stops, so a node refuses every connection after its 250th (the inbound handler is replaced to hold the
slot only while the connection lives, and to cap connections per IP); nothing caps message sizes (frames
are capped per protocol); a listen failure is silently ignored (checked here); a failed dial blacklists
the peer for 60 s (lifted on an explicit dial).

It must not: import torch, touch the chain, log keys, payloads or vouchers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import stat
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NewType

import multiaddr
import nacl.exceptions
import nacl.secret
import nacl.signing
import trio
from argon2.low_level import Type as Argon2Type
from argon2.low_level import hash_secret_raw
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.rcmgr import ResourceLimits, new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from nacl.bindings import crypto_core_ed25519_is_valid_point

from market.durable import atomic_write
from market.errors import (
    FrameTooLargeError,
    MalformedMessageError,
    MarketConfigError,
    MarketError,
    MarketInputError,
    PeerTimeoutError,
    RemoteError,
    TransportError,
)
from market.protocol.framing import FrameReader, IdleTimeoutError, StreamEndedError, read_frame, write_frame
from market.protocol.ids import (
    DEFAULT_FRAME_CAPS,
    MAX_FRAME_SIZE,
    MIN_FRAME_CAP,
    REQUEST_TYPES,
    ProtocolId,
)
from market.protocol.messages import ErrorCode, Header, decode_body, encode_body, error_header

logger = logging.getLogger(__name__)

PeerId = NewType("PeerId", str)
"""A libp2p peer id in its base58 text form (`12D3KooW...` for ed25519 keys)."""

Handler = Callable[[Header, bytes, PeerId], Awaitable[tuple[Mapping[str, Any], bytes]]]
"""A server handler: (request header, request payload, caller's peer id) -> (answer header, payload)."""

NODE_KEY_SIZE: Final = 32


# ==================================================================================================
# identity

_IDENTITY_FORMAT: Final = "moe-market-node-identity"
_IDENTITY_VERSION: Final = 1
_KDF_SALT_SIZE: Final = 16
# Loading refuses parameters outside these bounds: a crafted file must not make `load` eat the machine.
_KDF_MAX_TIME: Final = 16
_KDF_MAX_MEMORY_KIB: Final = 1024 * 1024
_KDF_MIN_MEMORY_KIB: Final = 8


def _derive_key(
    password: str | bytes, salt: bytes, time_cost: int, memory_kib: int, parallelism: int
) -> bytes:
    secret = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    return hash_secret_raw(
        secret=secret,
        salt=salt,
        time_cost=time_cost,
        memory_cost=memory_kib,
        parallelism=parallelism,
        hash_len=nacl.secret.SecretBox.KEY_SIZE,
        type=Argon2Type.ID,
    )


class NodeIdentity:
    """A node's ed25519 key pair: its libp2p identity and the `nodeKey` registered on chain.

    The file written by `save` is UTF-8 JSON, mode 0600::

        {"format": "moe-market-node-identity", "version": 1, "key_type": "ed25519",
         "public_key": "0x<32 bytes>", "peer_id": "12D3KooW...",
         "kdf": {"name": "argon2id", "salt": "0x<16 bytes>", "time_cost": 3,
                 "memory_cost_kib": 65536, "parallelism": 1},
         "cipher": {"name": "xsalsa20poly1305", "nonce": "0x<24 bytes>",
                    "ciphertext": "0x<48 bytes: the 32-byte ed25519 seed + 16-byte tag>"}}

    The key is argon2id(password, salt) with the stored parameters; the ciphertext is nacl SecretBox.
    `public_key` and `peer_id` are in clear so the node can be identified without the password; after
    decryption the seed must reproduce `public_key`.
    """

    __slots__ = ("_signing_key",)

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def unsafe_from_seed(cls, seed: bytes) -> NodeIdentity:
        """From a raw 32-byte seed (tests, key import). Whoever holds the seed is the node."""
        if len(seed) != 32:
            raise MarketConfigError("an ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(bytes(seed)))

    def unsafe_seed(self) -> bytes:
        """The raw private seed. Never log it or send it anywhere."""
        return bytes(self._signing_key)

    @property
    def public_key_bytes(self) -> bytes:
        """The 32-byte ed25519 public key: the `nodeKey` registered on chain."""
        return bytes(self._signing_key.verify_key)

    @property
    def peer_id(self) -> PeerId:
        return peer_id_from_node_key(self.public_key_bytes)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte ed25519 signature (for gossiped announcements the chain does not hold)."""
        return self._signing_key.sign(message).signature

    def libp2p_key_pair(self) -> KeyPair:
        private = Ed25519PrivateKey(self._signing_key)
        return KeyPair(private, private.get_public_key())

    def __repr__(self) -> str:
        return f"NodeIdentity(peer_id={self.peer_id})"

    def save(
        self,
        path: str | os.PathLike[str],
        password: str | bytes,
        *,
        overwrite: bool = False,
        time_cost: int = 3,
        memory_kib: int = 64 * 1024,
    ) -> None:
        """Write the key encrypted under `password` to `path` (mode 0600, replaced atomically)."""
        if not password:
            raise MarketConfigError("refusing to save a node identity without a password")
        if (
            not 1 <= time_cost <= _KDF_MAX_TIME
            or not _KDF_MIN_MEMORY_KIB <= memory_kib <= _KDF_MAX_MEMORY_KIB
        ):
            raise MarketConfigError("argon2id parameters out of range")
        target = Path(path)
        if target.exists() and not overwrite:
            raise MarketConfigError(f"{target} already exists; pass overwrite=True to replace the identity")
        salt = secrets.token_bytes(_KDF_SALT_SIZE)
        box = nacl.secret.SecretBox(_derive_key(password, salt, time_cost, memory_kib, 1))
        encrypted = box.encrypt(self.unsafe_seed())
        document = {
            "format": _IDENTITY_FORMAT,
            "version": _IDENTITY_VERSION,
            "key_type": "ed25519",
            "public_key": "0x" + self.public_key_bytes.hex(),
            "peer_id": str(self.peer_id),
            "kdf": {
                "name": "argon2id",
                "salt": "0x" + salt.hex(),
                "time_cost": time_cost,
                "memory_cost_kib": memory_kib,
                "parallelism": 1,
            },
            "cipher": {
                "name": "xsalsa20poly1305",
                "nonce": "0x" + encrypted.nonce.hex(),
                "ciphertext": "0x" + encrypted.ciphertext.hex(),
            },
        }
        data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        atomic_write(target, data, private=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], password: str | bytes) -> NodeIdentity:
        """Read a file written by `save`; a wrong password raises MarketConfigError."""
        source = Path(path)
        try:
            raw = source.read_bytes()
        except FileNotFoundError:
            raise MarketConfigError(f"identity file {source} does not exist") from None
        except OSError as exc:
            raise MarketConfigError(f"cannot read identity file {source}: {exc}") from exc
        mode = source.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("identity file %s is readable by other users; chmod 600 it", source)
        try:
            doc = json.loads(raw.decode("utf-8"))
            if doc.get("format") != _IDENTITY_FORMAT or doc.get("version") != _IDENTITY_VERSION:
                raise ValueError("not a moe-market node identity (format/version)")
            kdf, cipher = doc["kdf"], doc["cipher"]
            if (
                kdf["name"] != "argon2id"
                or cipher["name"] != "xsalsa20poly1305"
                or doc["key_type"] != "ed25519"
            ):
                raise ValueError("unsupported key type, kdf or cipher")
            time_cost, memory_kib, parallelism = kdf["time_cost"], kdf["memory_cost_kib"], kdf["parallelism"]
            if not (
                isinstance(time_cost, int)
                and 1 <= time_cost <= _KDF_MAX_TIME
                and isinstance(memory_kib, int)
                and _KDF_MIN_MEMORY_KIB <= memory_kib <= _KDF_MAX_MEMORY_KIB
                and isinstance(parallelism, int)
                and 1 <= parallelism <= 16
            ):
                raise ValueError("argon2id parameters out of range")
            salt = _unhex(kdf["salt"])
            nonce = _unhex(cipher["nonce"])
            ciphertext = _unhex(cipher["ciphertext"])
            public_key = _unhex(doc["public_key"])
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            raise MarketConfigError(f"identity file {source} is not valid: {exc}") from None
        box = nacl.secret.SecretBox(_derive_key(password, salt, time_cost, memory_kib, parallelism))
        try:
            seed = box.decrypt(ciphertext, nonce)
        except nacl.exceptions.CryptoError:
            raise MarketConfigError(
                f"wrong password for identity file {source} (or the file was altered)"
            ) from None
        identity = cls.unsafe_from_seed(seed)
        if identity.public_key_bytes != public_key:
            raise MarketConfigError(
                f"identity file {source} is inconsistent: the key does not match public_key"
            )
        return identity


def _unhex(value: object) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError("expected a 0x-prefixed hex string")
    return bytes.fromhex(value[2:])


def peer_id_from_node_key(node_key: bytes) -> PeerId:
    """The peer id of the node whose ed25519 public key (the on-chain `nodeKey`) is `node_key`.

    A client dials a registered expert expecting this id; noise proves the remote holds the key.
    """
    if not isinstance(node_key, (bytes, bytearray)) or len(node_key) != NODE_KEY_SIZE:
        raise MarketInputError(f"a node key is {NODE_KEY_SIZE} bytes of ed25519 public key")
    if not crypto_core_ed25519_is_valid_point(bytes(node_key)):
        raise MarketInputError("node key is not a valid ed25519 public key")
    return PeerId(ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(node_key))).to_base58())


def _parse_peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(str(peer_id))
    except Exception as exc:
        raise MarketInputError(f"{str(peer_id)[:80]!r} is not a libp2p peer id") from exc


# ==================================================================================================
# configuration


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Every limit and timeout of the transport. Times are seconds; sizes bytes.

    Server side: `max_inbound_streams` open streams in all (a new one over it is answered BUSY and
    closed), `max_streams_per_peer` per caller, `max_inflight_requests` handled at once (over it a
    request is answered BUSY and the stream stays open), `max_connections_per_ip` connections (including
    ones still in the handshake) from one address, `idle_stream_timeout` before an idle stream is closed
    (`read_timeout` for a new stream that sends nothing),
    `request_timeout` for a handler, `frame_timeout` for receiving one request frame.
    Client side: `session_streams` streams per (peer, protocol), `request_timeout` default per call.
    Both: `read_timeout` for a stalled read inside a frame, `dial_timeout`, `handshake_timeout`.
    """

    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    frame_caps: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(dict(DEFAULT_FRAME_CAPS)))
    read_timeout: float = 10.0
    frame_timeout: float = 120.0
    request_timeout: float = 30.0
    idle_stream_timeout: float = 60.0
    dial_timeout: float = 5.0
    handshake_timeout: float = 5.0
    max_inbound_streams: int = 512
    max_streams_per_peer: int = 64
    max_inflight_requests: int = 256
    max_connections: int = 512
    max_connections_per_ip: int = 16
    session_streams: int = 8

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.listen_host)
        except ValueError:
            raise MarketConfigError(f"listen_host {self.listen_host!r} is not an IP address") from None
        if not _is_int(self.listen_port) or not 0 <= self.listen_port <= 65535:
            raise MarketConfigError(f"listen_port must be within 0..65535, got {self.listen_port!r}")
        caps = dict(DEFAULT_FRAME_CAPS)
        for protocol, cap in dict(self.frame_caps).items():
            if not isinstance(protocol, str) or not protocol.startswith("/"):
                raise MarketConfigError(f"frame cap key {protocol!r} is not a protocol id")
            if not _is_int(cap) or not MIN_FRAME_CAP <= cap <= MAX_FRAME_SIZE:
                raise MarketConfigError(
                    f"frame cap for {protocol} must be within {MIN_FRAME_CAP}..{MAX_FRAME_SIZE}, got {cap!r}"
                )
            caps[protocol] = cap
        object.__setattr__(self, "frame_caps", MappingProxyType(caps))
        for name in (
            "read_timeout",
            "frame_timeout",
            "request_timeout",
            "idle_stream_timeout",
            "dial_timeout",
            "handshake_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise MarketConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")
        for name in (
            "max_inbound_streams",
            "max_streams_per_peer",
            "max_inflight_requests",
            "max_connections",
            "max_connections_per_ip",
            "session_streams",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise MarketConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.session_streams > 128:
            # yamux lets a connection open 256 outbound streams; leave room for other protocols.
            raise MarketConfigError("session_streams must be at most 128")

    def frame_cap(self, protocol_id: str) -> int:
        """The cap of a protocol; unknown protocols get the smallest default (the quote cap)."""
        return self.frame_caps.get(protocol_id, min(DEFAULT_FRAME_CAPS.values()))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ==================================================================================================
# host


def _stream_peer(stream: INetStream) -> PeerId:
    return PeerId(stream.muxed_conn.peer_id.to_base58())


async def _close_quietly(stream: INetStream, *, reset: bool = False) -> None:
    # Shielded and bounded: cleanup must run even when the caller is being cancelled, and never hang.
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            if reset:
                await stream.reset()
            else:
                await stream.close()
        except Exception:  # the connection may already be gone; nothing left to clean
            logger.debug("closing a stream failed", exc_info=True)


def _is_stale(stream: INetStream) -> bool:
    if stream.is_closed:
        return True
    muxed = stream.muxed_stream
    return bool(getattr(muxed, "recv_closed", False) or getattr(muxed, "reset_received", False))


def _strip_p2p(addr: str | multiaddr.Multiaddr, peer: ID) -> multiaddr.Multiaddr:
    try:
        maddr = multiaddr.Multiaddr(str(addr))
    except Exception as exc:
        raise MarketInputError(f"{str(addr)[:120]!r} is not a multiaddr") from exc
    embedded = maddr.get_peer_id()
    if embedded is None:
        return maddr
    if embedded != peer.to_base58():
        raise MarketInputError(f"address {maddr} names peer {embedded}, expected {peer.to_base58()}")
    return maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{embedded}"))


class MarketHost:
    """A running libp2p host; obtain one with `open_host`. See the module docstring."""

    def __init__(self, identity: NodeIdentity, config: TransportConfig) -> None:
        self.identity = identity
        self.config = config
        self._peer_id = identity.peer_id
        self._host: IHost | None = None
        self._handlers: dict[str, Handler] = {}
        self._open_streams = 0
        self._streams_by_peer: defaultdict[PeerId, int] = defaultdict(int)
        self._inflight = trio.Semaphore(config.max_inflight_requests)
        self._connections_by_ip: defaultdict[str, int] = defaultdict(int)
        self._dial_locks: dict[PeerId, trio.Lock] = {}
        self._sessions: dict[tuple[PeerId, str], Session] = {}

    # -- properties -------------------------------------------------------------------------------

    @property
    def libp2p(self) -> IHost:
        """The underlying py-libp2p host (escape hatch; prefer the methods of this class)."""
        if self._host is None:
            raise TransportError("the host is not running; use `async with open_host(...)`")
        return self._host

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def open_inbound_streams(self) -> int:
        """Inbound streams being served now."""
        return self._open_streams

    @property
    def listen_addrs(self) -> list[str]:
        """Full multiaddrs others dial, each ending in /p2p/<peer id>."""
        return [str(a) for a in self.libp2p.get_addrs()]

    def connections_from(self, ip: str) -> int:
        """Inbound connections (handshaking or established) from one IP address now."""
        return self._connections_by_ip.get(ip, 0)

    # -- server -----------------------------------------------------------------------------------

    def serve(self, protocol_id: str, handler: Handler) -> None:
        """Answer requests on `protocol_id` with `handler`, on long-lived streams (many pairs each).

        The host reads frames in a loop on each inbound stream and answers by itself: MALFORMED for a
        body it cannot decode or a request type the protocol does not carry, FRAME_TOO_LARGE (then
        closes the stream, whose framing is lost), BUSY over the stream or in-flight limits, INTERNAL
        when the handler fails or runs past `request_timeout`. A handler may raise RemoteError(code,
        message) to answer that code, MalformedMessageError (MALFORMED) or MarketInputError (BAD_INPUT).
        The handler is cancelled after `request_timeout`: shield work that must finish once started.
        Registering a protocol again replaces its handler.
        """
        if not isinstance(protocol_id, str) or not protocol_id.startswith("/"):
            raise MarketInputError(f"{protocol_id!r} is not a protocol id")
        self._handlers[protocol_id] = handler

        async def on_stream(stream: INetStream) -> None:
            await self._serve_stream(protocol_id, stream)

        self.libp2p.set_stream_handler(TProtocol(protocol_id), on_stream)

    async def _send_error(
        self, stream: INetStream, code: ErrorCode, message: str, request_id: object = None
    ) -> bool:
        try:
            await write_frame(
                stream, encode_body(error_header(code, message, request_id)), timeout=self.config.read_timeout
            )
            return True
        except MarketError as exc:
            logger.debug("could not send %s to a peer: %s", code, exc)
            return False

    async def _serve_stream(self, protocol_id: str, stream: INetStream) -> None:
        config = self.config
        peer = _stream_peer(stream)
        if (
            self._open_streams >= config.max_inbound_streams
            or self._streams_by_peer.get(peer, 0) >= config.max_streams_per_peer
        ):
            logger.info("refusing a %s stream from %s: stream limit reached", protocol_id, peer)
            await self._send_error(stream, ErrorCode.BUSY, "too many open streams; try later or another node")
            await _close_quietly(stream)
            return
        self._open_streams += 1
        self._streams_by_peer[peer] += 1
        reset = True
        try:
            reset = await self._serve_loop(protocol_id, stream, peer)
        except Exception:  # never let one stream take the host down
            logger.exception("stream handler for %s from %s failed", protocol_id, peer)
        finally:
            self._open_streams -= 1
            self._streams_by_peer[peer] -= 1
            if self._streams_by_peer[peer] <= 0:
                del self._streams_by_peer[peer]
            await _close_quietly(stream, reset=reset)

    async def _serve_loop(self, protocol_id: str, stream: INetStream, peer: PeerId) -> bool:
        """Serve frames until the stream ends; return True if it should be reset rather than closed."""
        config = self.config
        cap = config.frame_cap(protocol_id)
        expected_type = REQUEST_TYPES.get(ProtocolId(protocol_id))
        handler = self._handlers[protocol_id]
        reader = FrameReader(stream)
        # A new stream is opened to send a request at once: one that stays silent gets `read_timeout`, not the
        # idle time a stream that already carried requests may wait between them (it would hold a slot).
        idle_timeout = config.read_timeout
        while True:
            try:
                body = await reader.read_frame(
                    cap,
                    timeout=config.read_timeout,
                    idle_timeout=idle_timeout,
                    frame_timeout=config.frame_timeout,
                )
                idle_timeout = config.idle_stream_timeout
            except (StreamEndedError, IdleTimeoutError):
                return False
            except FrameTooLargeError as exc:
                logger.info("%s from %s: %s", protocol_id, peer, exc)
                await self._send_error(stream, ErrorCode.FRAME_TOO_LARGE, str(exc))
                return False
            except TransportError as exc:
                logger.debug("%s stream from %s ended: %s", protocol_id, peer, exc)
                return True
            try:
                header, payload = decode_body(body)
                if expected_type is not None and header["type"] != expected_type:
                    raise MalformedMessageError(
                        f"{protocol_id} carries {expected_type!r} requests, got {header['type']!r}"
                    )
            except MalformedMessageError as exc:
                # The frame boundary is intact, so the stream can carry the next request.
                if not await self._send_error(stream, ErrorCode.MALFORMED, str(exc)):
                    return True
                continue
            del body
            answer = await self._answer(protocol_id, handler, header, payload, peer, cap)
            try:
                # Answers can be large (a model is up to 256 MiB): the frame timeout bounds them, not the handler's.
                await write_frame(stream, answer, timeout=config.frame_timeout)
            except MarketError as exc:
                logger.debug("could not answer %s on %s: %s", peer, protocol_id, exc)
                return True

    async def _answer(
        self, protocol_id: str, handler: Handler, header: Header, payload: bytes, peer: PeerId, cap: int
    ) -> bytes:
        request_id = header.get("request_id")
        try:
            self._inflight.acquire_nowait()
        except trio.WouldBlock:
            return encode_body(
                error_header(ErrorCode.BUSY, "node at capacity; try another expert", request_id)
            )
        try:
            with trio.move_on_after(self.config.request_timeout) as scope:
                out_header, out_payload = await handler(header, payload, peer)
            if scope.cancelled_caught:
                logger.warning("%s handler timed out for %s", protocol_id, peer)
                return encode_body(
                    error_header(ErrorCode.INTERNAL, "request timed out on the node", request_id)
                )
        except RemoteError as exc:
            try:
                code = ErrorCode(exc.code)
            except ValueError:
                code = ErrorCode.INTERNAL
            # VOUCHER_TOO_LOW carries the node's amount: from `exc.cumulative`, or `exc.error.cumulative`
            # when the exception came from ErrorMessage.to_exception().
            cumulative = getattr(exc, "cumulative", None)
            if cumulative is None:
                cumulative = getattr(getattr(exc, "error", None), "cumulative", None)
            return encode_body(error_header(code, exc.message, request_id, cumulative))
        except MalformedMessageError as exc:
            return encode_body(error_header(ErrorCode.MALFORMED, str(exc), request_id))
        except MarketInputError as exc:
            return encode_body(error_header(ErrorCode.BAD_INPUT, str(exc), request_id))
        except Exception:
            logger.exception("%s handler failed for %s", protocol_id, peer)
            return encode_body(error_header(ErrorCode.INTERNAL, "internal error", request_id))
        finally:
            self._inflight.release()
        try:
            answer = encode_body(out_header, out_payload)
        except MalformedMessageError:
            logger.exception("%s handler built an invalid answer for %s", protocol_id, peer)
            return encode_body(error_header(ErrorCode.INTERNAL, "internal error", request_id))
        if len(answer) > cap:
            logger.error(
                "%s handler built an answer of %d bytes, over the cap %d", protocol_id, len(answer), cap
            )
            return encode_body(error_header(ErrorCode.INTERNAL, "answer too large", request_id))
        return answer

    # -- client -----------------------------------------------------------------------------------

    async def connect(self, peer: str, addrs: Sequence[str] = ()) -> PeerId:
        """Make sure a connection to `peer` exists and return its peer id.

        `peer` is either a full multiaddr ending in /p2p/<id> (and `addrs` empty) or a peer id with
        `addrs`. Noise proves that the remote holds the key of that peer id.
        """
        text = str(peer)
        if text.startswith("/"):
            try:
                maddr = multiaddr.Multiaddr(text)
                embedded = maddr.get_peer_id()
            except Exception as exc:
                raise MarketInputError(f"{text[:120]!r} is not a multiaddr") from exc
            if embedded is None:
                raise MarketInputError(f"{text} does not end in /p2p/<peer id>")
            peer_id = _parse_peer_id(embedded)
            all_addrs = [text, *addrs]
        else:
            peer_id = _parse_peer_id(text)
            all_addrs = list(addrs)
        await self._ensure_connected(peer_id, [_strip_p2p(a, peer_id) for a in all_addrs])
        return PeerId(peer_id.to_base58())

    async def _ensure_connected(self, peer: ID, addrs: Sequence[multiaddr.Multiaddr]) -> None:
        host = self.libp2p
        network = host.get_network()
        if network.get_connections(peer):
            return
        key = PeerId(peer.to_base58())
        if key == self.peer_id:
            raise MarketInputError("a host cannot dial itself")
        if not addrs:
            try:
                known = host.get_peerstore().addrs(peer)
            except Exception:  # py-libp2p raises PeerStoreError for a peer it never heard of
                known = []
            if not known:
                raise MarketInputError(f"no address known for peer {key}")
        lock = self._dial_locks.setdefault(key, trio.Lock())
        try:
            async with lock:
                if network.get_connections(peer):
                    return
                # py-libp2p blacklists a peer for 60 s after a failed dial; an explicit dial is the
                # caller's decision to try again.
                network.unblock_peer(peer)
                try:
                    with trio.fail_after(self.config.dial_timeout + self.config.handshake_timeout):
                        await host.connect(PeerInfo(peer, list(addrs)))
                except trio.TooSlowError:
                    raise PeerTimeoutError(f"dialing {key} timed out") from None
                except MarketError:
                    raise
                except Exception as exc:
                    raise TransportError(
                        f"could not connect to {key} at {', '.join(map(str, addrs)) or 'its known addresses'}: {exc}"
                    ) from exc
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._dial_locks.pop(key, None)

    async def open_stream(self, peer_id: str, addrs: Sequence[str], protocol_id: str) -> INetStream:
        """A new raw libp2p stream to `peer_id` speaking `protocol_id` (used by sessions and tests)."""
        peer = _parse_peer_id(peer_id)
        await self._ensure_connected(peer, [_strip_p2p(a, peer) for a in addrs])
        try:
            with trio.fail_after(self.config.handshake_timeout + self.config.read_timeout):
                stream = await self.libp2p.new_stream(peer, [TProtocol(protocol_id)])
        except trio.TooSlowError:
            raise PeerTimeoutError(f"opening a {protocol_id} stream to {peer_id} timed out") from None
        except Exception as exc:
            raise TransportError(f"could not open a {protocol_id} stream to {peer_id}: {exc}") from exc
        if stream.muxed_conn.peer_id != peer:
            # Noise already proved the remote key; this guards against a connection mix-up.
            await _close_quietly(stream, reset=True)
            raise TransportError(f"stream to {peer_id} landed on {stream.muxed_conn.peer_id}")
        return stream

    def session(self, peer_id: str, addrs: Sequence[str], protocol_id: str) -> Session:
        """The host's shared `Session` to (peer, protocol): pooled long-lived streams, closed with the host."""
        key = (PeerId(_parse_peer_id(peer_id).to_base58()), protocol_id)
        existing = self._sessions.get(key)
        if existing is not None:
            existing.add_addrs(addrs)
            return existing
        created = Session(self, key[0], addrs, protocol_id, self.config.session_streams)
        self._sessions[key] = created
        return created

    async def request(
        self,
        peer_id: str,
        addrs: Sequence[str],
        protocol_id: str,
        header: Mapping[str, Any],
        payload: bytes = b"",
        *,
        timeout: float | None = None,
    ) -> tuple[Header, bytes]:
        """One request on a fresh stream, closed afterwards (quote, model, evidence)."""
        timeout = self.config.request_timeout if timeout is None else timeout
        cap = self.config.frame_cap(protocol_id)
        body = encode_body(header, payload)
        if len(body) > cap:
            raise FrameTooLargeError(f"request of {len(body)} bytes is over the {protocol_id} cap of {cap}")
        deadline = trio.current_time() + timeout
        ok = False
        stream: INetStream | None = None
        try:
            with trio.fail_after(timeout):
                stream = await self.open_stream(peer_id, addrs, protocol_id)
                await write_frame(stream, body, timeout=timeout)
                answer = await read_frame(
                    stream,
                    cap,
                    timeout=self.config.read_timeout,
                    idle_timeout=max(deadline - trio.current_time(), 0.001),
                )
                ok = True
        except trio.TooSlowError:
            raise PeerTimeoutError(
                f"{protocol_id} request to {peer_id} timed out after {timeout:g}s"
            ) from None
        finally:
            if stream is not None:
                await _close_quietly(stream, reset=not ok)
        return decode_body(answer)

    async def disconnect(self, peer_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.libp2p.disconnect(_parse_peer_id(peer_id))

    # -- lifecycle --------------------------------------------------------------------------------

    def _install_inbound_guard(self, host: IHost) -> None:
        """Replace the swarm's inbound-connection handler (see the module docstring for why)."""
        swarm: Any = host.get_network()
        needed = (
            "_do_handle_inbound_connection",
            "_build_remote_multiaddr",
            "connection_gate",
            "upgrade_inbound_raw_conn",
        )
        if not all(hasattr(swarm, name) for name in needed):
            raise TransportError(
                "this py-libp2p version changed its swarm internals; the inbound connection guard cannot be "
                "installed (pin libp2p 0.8.x)"
            )
        per_ip = self.config.max_connections_per_ip
        counts = self._connections_by_ip

        async def guarded_inbound(
            read_write_closer: Any, maddr: multiaddr.Multiaddr, failure_event: Any
        ) -> None:
            remote = None
            with contextlib.suppress(Exception):
                remote = read_write_closer.get_remote_address()
            ip = str(remote[0]) if remote else "?"
            if counts[ip] >= per_ip:
                # debug, not info: this runs before authentication, an attacker controls how often
                logger.debug(
                    "refusing a connection from %s: %d connections from that address", ip, counts[ip]
                )
                with contextlib.suppress(Exception):
                    await read_write_closer.close()
                return
            counts[ip] += 1
            try:
                remote_maddr = swarm._build_remote_multiaddr(read_write_closer)
                if remote_maddr is not None and not await swarm.connection_gate.is_allowed(remote_maddr):
                    with contextlib.suppress(Exception):
                        await read_write_closer.close()
                    return
                raw_conn = RawConnection(read_write_closer, False)
                try:
                    muxed = await swarm.upgrade_inbound_raw_conn(raw_conn, maddr)
                except Exception as exc:  # garbage, wrong security protocol, limits: drop the socket
                    logger.debug("inbound connection from %s failed: %s", ip, exc)
                    with contextlib.suppress(Exception):
                        await raw_conn.close()
                    return
                # The listener closes the socket when this returns, so wait while the connection
                # lives, and no longer: py-libp2p waits until the whole swarm stops.
                closed = getattr(muxed, "event_closed", None)
                if closed is not None:
                    await closed.wait()
                else:
                    while not muxed.is_closed:
                        await trio.sleep(1)
            finally:
                counts[ip] -= 1
                if counts[ip] <= 0:
                    del counts[ip]

        swarm._do_handle_inbound_connection = guarded_inbound

    def _check_port_free(self) -> None:
        # py-libp2p listens with SO_REUSEPORT, so a second node on the same port would silently share
        # it; a plain bind fails with EADDRINUSE when anyone holds the port.
        family = socket.AF_INET6 if ":" in self.config.listen_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR ignores TIME_WAIT leftovers of a previous run but not a live listener.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.config.listen_host, self.config.listen_port))
            except OSError as exc:
                raise TransportError(
                    f"cannot listen on {self.config.listen_host}:{self.config.listen_port}: {exc.strerror}"
                ) from None

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[MarketHost]:
        config = self.config
        if config.listen_port:
            self._check_port_free()
        key_pair = self.identity.libp2p_key_pair()
        proto = "ip6" if ":" in config.listen_host else "ip4"
        listen = multiaddr.Multiaddr(f"/{proto}/{config.listen_host}/tcp/{config.listen_port}")
        connection_config = ConnectionConfig(
            max_connections=config.max_connections,
            min_connections=0,
            # Pruning starts above high_watermark and goes down to low_watermark: only trim the excess.
            low_watermark=config.max_connections,
            high_watermark=config.max_connections,
            max_connections_per_peer=1,
            dial_timeout=config.dial_timeout,
            inbound_upgrade_timeout=config.handshake_timeout,
            outbound_upgrade_timeout=config.handshake_timeout,
            outbound_stream_protocol_negotiation_timeout=config.handshake_timeout,
            inbound_stream_protocol_negotiation_timeout=config.handshake_timeout,
        )
        resource_manager = new_resource_manager(
            limits=ResourceLimits(max_connections=2 * config.max_connections),
            connection_limits=ConnectionLimits(
                max_established_inbound=config.max_connections,
                max_established_outbound=config.max_connections,
                max_established_per_peer=4,
                max_established_total=2 * config.max_connections,
            ),
        )
        host = new_host(
            key_pair=key_pair,
            # Noise only: py-libp2p's default also accepts plaintext and secio.
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            connection_config=connection_config,
            resource_manager=resource_manager,
            listen_addrs=[listen],
            negotiate_timeout=max(1, int(config.handshake_timeout)),
        )
        swarm: Any = host.get_network()
        swarm.retry_config = RetryConfig(max_retries=0)

        async def no_auto_connect() -> None:
            return None

        # py-libp2p's auto-connector dials every peer in the peerstore until the connection count reaches
        # the middle of the watermarks: a market node dials whom it calls, nobody else.
        swarm.auto_connector.maybe_connect = no_auto_connect
        self._install_inbound_guard(host)
        async with host.run([listen]):
            if not host.get_addrs():
                raise TransportError(f"could not listen on {listen}")
            self._host = host
            try:
                yield self
            finally:
                with trio.CancelScope(shield=True):
                    for session in list(self._sessions.values()):
                        await session.aclose()
                    self._sessions.clear()
                    await self._close_connections(host)
                self._host = None

    @staticmethod
    async def _close_connections(host: IHost) -> None:
        # Leaving py-libp2p's run() cancels tasks but leaves the sockets open until garbage collection, so
        # peers never learn that the connection is gone. Close them, all at once: each close sleeps 0.2 s.
        swarm: Any = host.get_network()

        async def close_one(conn: Any) -> None:
            with contextlib.suppress(Exception):
                await conn.close()

        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                for conns in list(swarm.connections.values()):
                    for conn in list(conns):
                        nursery.start_soon(close_one, conn)
            with contextlib.suppress(Exception):
                await host.close()


@contextlib.asynccontextmanager
async def open_host(
    identity: NodeIdentity | None = None, config: TransportConfig | None = None
) -> AsyncIterator[MarketHost]:
    """Start a host (a fresh identity and the default config unless given); stop it on exit."""
    host = MarketHost(identity or NodeIdentity.generate(), config or TransportConfig())
    async with host._running() as running:
        yield running


# ==================================================================================================
# client sessions


class Session:
    """Request/answer pairs to one (peer, protocol) over a small pool of long-lived streams.

    Each call takes an idle stream (or opens one while fewer than `max_streams` exist), sends one frame,
    reads one frame and puts the stream back; concurrent calls use different streams, so up to
    `max_streams` are in flight and the rest wait (within their timeout). A stream that failed, timed out
    or was cancelled mid-call is reset and dropped. A call whose reused stream turns out to have been
    closed by the node before it answered (its idle timeout) is sent once more on a fresh stream: every
    request of the protocol is safe to repeat (quote, model and evidence are reads; a repeated infer
    carries the same cumulative voucher, which adds nothing to what the node holds: refused as
    VOUCHER_TOO_LOW, or served from what the client paid ahead). Streams idle longer than half the idle timeout are not reused.
    """

    def __init__(
        self, host: MarketHost, peer_id: PeerId, addrs: Sequence[str], protocol_id: str, max_streams: int
    ) -> None:
        self._host = host
        self.peer_id = peer_id
        self.protocol_id = protocol_id
        self._addrs: list[str] = []
        self.add_addrs(addrs)
        self._slots = trio.Semaphore(max_streams)
        self._idle: list[tuple[FrameReader, float]] = []
        self.streams_opened = 0

    def add_addrs(self, addrs: Sequence[str]) -> None:
        for addr in addrs:
            if str(addr) not in self._addrs:
                self._addrs.append(str(addr))

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle streams; calls in flight finish and the session stays usable."""
        idle, self._idle = self._idle, []
        for reader, _ in idle:
            await _close_quietly(reader.stream)

    async def _take(self) -> tuple[FrameReader, bool]:
        max_idle = self._host.config.idle_stream_timeout / 2
        now = trio.current_time()
        while self._idle:
            reader, last_used = self._idle.pop()
            if not _is_stale(reader.stream) and now - last_used < max_idle:
                return reader, True
            await _close_quietly(reader.stream, reset=True)
        stream = await self._host.open_stream(self.peer_id, self._addrs, self.protocol_id)
        self.streams_opened += 1
        return FrameReader(stream), False

    async def _exchange(self, body: bytes, deadline: float) -> tuple[bytearray | None, bool]:
        """One frame out, one frame in. Returns (answer, False), or (None, True) to retry on a fresh stream."""
        config = self._host.config
        reader, reused = await self._take()
        stream = reader.stream
        keep = False
        try:
            try:
                await write_frame(stream, body, timeout=max(deadline - trio.current_time(), 0.001))
            except PeerTimeoutError:
                raise
            except TransportError:
                if not reused:
                    raise
                logger.debug("reused stream to %s is gone; retrying once on a fresh one", self.peer_id)
                return None, True
            try:
                answer = await reader.read_frame(
                    config.frame_cap(self.protocol_id),
                    timeout=config.read_timeout,
                    idle_timeout=max(deadline - trio.current_time(), 0.001),
                )
            except StreamEndedError:
                # The node closed the stream without answering: it had timed the stream out as idle.
                if not reused:
                    raise
                logger.debug("reused stream to %s was closed by the node; retrying once", self.peer_id)
                return None, True
            keep = True
            return answer, False
        finally:
            # Bytes past the answer mean the node sent more than one answer: the stream is out of step.
            if keep and not _is_stale(stream) and not reader.buffered:
                self._idle.append((reader, trio.current_time()))
            else:
                await _close_quietly(stream, reset=not keep)

    async def call(
        self, header: Mapping[str, Any], payload: bytes = b"", *, timeout: float | None = None
    ) -> tuple[Header, bytes]:
        """Send one request and return the answer (header, payload); an `error` answer is returned too.

        Raises FrameTooLargeError (before sending), PeerTimeoutError, TransportError,
        MalformedMessageError (the answer could not be decoded).
        """
        config = self._host.config
        timeout = config.request_timeout if timeout is None else timeout
        cap = config.frame_cap(self.protocol_id)
        body = encode_body(header, payload)
        if len(body) > cap:
            raise FrameTooLargeError(
                f"request of {len(body)} bytes is over the {self.protocol_id} cap of {cap}"
            )
        deadline = trio.current_time() + timeout
        try:
            with trio.fail_after(timeout):
                async with self._slots:
                    answer, retry = await self._exchange(body, deadline)
                    if retry:
                        answer, _ = await self._exchange(body, deadline)
        except trio.TooSlowError:
            raise PeerTimeoutError(
                f"{self.protocol_id} call to {self.peer_id} timed out after {timeout:g}s"
            ) from None
        assert answer is not None
        return decode_body(answer)


__all__ = [
    "Handler",
    "MarketHost",
    "NodeIdentity",
    "PeerId",
    "Session",
    "TransportConfig",
    "open_host",
    "peer_id_from_node_key",
]
