"""Length-prefixed frames on a byte stream: a 4-byte big-endian length N, then N bytes of body.

`read_frame` (and `FrameReader`, its buffered form for long-lived streams) refuses a length over the
caller's cap before reading the body, never allocates more than what actually arrived (a peer that announces 256 MiB and sends nothing costs nothing), loops over short
reads, and bounds every read by a timeout. It knows nothing of libp2p: any object with
`async read(n) -> bytes` and `async write(data)` works, which is how the unit tests drive it.
Errors out of the stream are translated into the market's tree at this boundary.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

from market.errors import FrameTooLargeError, MarketError, PeerTimeoutError, TransportError
from market.protocol.ids import MAX_FRAME_SIZE

LENGTH_SIZE: Final = 4
# Reads ask for at most this much at once so a large frame is assembled from bounded chunks.
READ_CHUNK: Final = 1024 * 1024
# Above this size the length prefix and the body are written separately instead of copying the body.
_CONCAT_LIMIT: Final = 64 * 1024

DEFAULT_READ_AHEAD: Final = 64 * 1024
DEFAULT_READ_TIMEOUT: Final = 10.0
DEFAULT_WRITE_TIMEOUT: Final = 30.0


class ByteStream(Protocol):
    """What framing needs from a stream (a libp2p INetStream fits)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


class StreamEndedError(TransportError):
    """The peer closed the stream cleanly at a frame boundary (no byte of a next frame was sent)."""


class IdleTimeoutError(PeerTimeoutError):
    """No byte of a next frame arrived within the idle timeout."""


def _reraise(exc: Exception, what: str) -> TransportError:
    if isinstance(exc, MarketError):
        raise exc
    return TransportError(f"stream {what} failed: {type(exc).__name__}: {exc}")


async def _read_some(stream: ByteStream, n: int, timeout: float, got: int, wanted: int) -> bytes:
    try:
        with trio.fail_after(timeout):
            chunk = await stream.read(n)
    except trio.TooSlowError:
        raise PeerTimeoutError(
            f"peer stalled: no data for {timeout:g}s after {got} of {wanted} bytes of a frame"
        ) from None
    except EOFError:
        chunk = b""
    except Exception as exc:
        raise _reraise(exc, "read") from exc
    if len(chunk) > n:
        # A stream that hands back more than asked for would desynchronise the frames.
        raise TransportError(f"stream returned {len(chunk)} bytes when {n} were asked for")
    return chunk


class FrameReader:
    """Reads frames from one stream for its whole life, keeping bytes that belong to the next frame.

    With `read_ahead` > 0 each read asks for up to that many bytes, so a small frame usually arrives in
    one read: with py-libp2p's yamux every read also sends a window update, so two reads per frame
    (length, then body) cost a third more round-trip time than one. Bytes after the current frame stay
    buffered for the next call. With `read_ahead=0` reads ask for exactly what the frame still needs
    and nothing past the frame is ever consumed.
    """

    __slots__ = ("_buf", "_read_ahead", "stream")

    def __init__(self, stream: ByteStream, *, read_ahead: int = DEFAULT_READ_AHEAD) -> None:
        if read_ahead < 0:
            raise ValueError("read_ahead must be >= 0")
        self.stream = stream
        self._buf = bytearray()
        self._read_ahead = read_ahead

    @property
    def buffered(self) -> int:
        """Bytes already read that belong to frames not yet returned."""
        return len(self._buf)

    def _ask(self, missing: int) -> int:
        return min(max(missing, self._read_ahead), READ_CHUNK)

    async def _fill(self, need: int, *, timeout: float, deadline: float | None, wanted: int) -> None:
        """Read until the buffer holds `need` bytes of the started frame."""
        while len(self._buf) < need:
            step = timeout
            if deadline is not None:
                step = min(step, deadline - trio.current_time())
                if step <= 0:
                    raise PeerTimeoutError(
                        f"frame not complete in time: {len(self._buf)} of {wanted} bytes arrived"
                    )
            chunk = await _read_some(
                self.stream, self._ask(need - len(self._buf)), step, len(self._buf), wanted
            )
            if not chunk:
                raise TransportError(
                    f"peer closed the stream in the middle of a frame ({len(self._buf)} of {wanted} bytes)"
                )
            self._buf += chunk

    async def read_frame(
        self,
        max_size: int,
        *,
        timeout: float = DEFAULT_READ_TIMEOUT,
        idle_timeout: float | None = None,
        frame_timeout: float | None = None,
    ) -> bytearray:
        """Read one frame and return its body (a fresh buffer the caller owns); see `read_frame`."""
        if not 0 <= max_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_size must be within 0..{MAX_FRAME_SIZE}, got {max_size}")
        if not self._buf:
            first_wait = timeout if idle_timeout is None else idle_timeout
            try:
                chunk = await _read_some(self.stream, self._ask(LENGTH_SIZE), first_wait, 0, LENGTH_SIZE)
            except PeerTimeoutError:
                if idle_timeout is None:
                    raise
                raise IdleTimeoutError(f"no frame started within {idle_timeout:g}s") from None
            if not chunk:
                raise StreamEndedError("peer closed the stream")
            self._buf += chunk
        deadline = None if frame_timeout is None else trio.current_time() + frame_timeout
        await self._fill(LENGTH_SIZE, timeout=timeout, deadline=deadline, wanted=LENGTH_SIZE)
        length = int.from_bytes(self._buf[:LENGTH_SIZE], "big")
        if length > max_size:
            raise FrameTooLargeError(f"frame of {length} bytes is over the cap of {max_size} bytes")
        end = LENGTH_SIZE + length
        await self._fill(end, timeout=timeout, deadline=deadline, wanted=end)
        if len(self._buf) == end:
            # The common case: hand the buffer over instead of copying the body out of it.
            body, self._buf = self._buf, bytearray()
            del body[:LENGTH_SIZE]
            return body
        body = self._buf[LENGTH_SIZE:end]
        del self._buf[:end]
        return body


async def read_frame(
    stream: ByteStream,
    max_size: int,
    *,
    timeout: float = DEFAULT_READ_TIMEOUT,
    idle_timeout: float | None = None,
    frame_timeout: float | None = None,
) -> bytearray:
    """Read one frame and return its body (a fresh buffer the caller owns), consuming nothing past it.

    `timeout` bounds each read (a stalled peer raises PeerTimeoutError). `idle_timeout`, when given, bounds
    the wait for the first byte of the frame instead and raises IdleTimeoutError: a long-lived stream waits
    between requests longer than a started frame may stall, and a client waits for an answer as long as
    its call allows. `frame_timeout` bounds the whole frame from its first byte. A length over `max_size`
    raises FrameTooLargeError before any of the body is read; the stream is then out of step and must be
    closed. EOF before the first byte raises StreamEndedError, EOF later TransportError.
    For many frames on one stream, a `FrameReader` does fewer reads.
    """
    reader = FrameReader(stream, read_ahead=0)
    return await reader.read_frame(
        max_size, timeout=timeout, idle_timeout=idle_timeout, frame_timeout=frame_timeout
    )


async def write_frame(
    stream: ByteStream,
    body: bytes | bytearray | memoryview,
    *,
    max_size: int | None = None,
    timeout: float = DEFAULT_WRITE_TIMEOUT,
) -> None:
    """Write one frame. A body over `max_size` raises FrameTooLargeError before anything is sent."""
    size = len(body)
    limit = MAX_FRAME_SIZE if max_size is None else min(max_size, MAX_FRAME_SIZE)
    if size > limit:
        raise FrameTooLargeError(f"frame of {size} bytes is over the cap of {limit} bytes")
    prefix = size.to_bytes(LENGTH_SIZE, "big")
    try:
        with trio.fail_after(timeout):
            if size <= _CONCAT_LIMIT:
                # One write: each write is a muxer frame and a noise message, so small frames go out whole.
                await stream.write(prefix + bytes(body))
            else:
                await stream.write(prefix)
                await stream.write(body if isinstance(body, bytes) else bytes(body))
    except trio.TooSlowError:
        raise PeerTimeoutError(f"peer did not take a frame of {size} bytes within {timeout:g}s") from None
    except Exception as exc:
        raise _reraise(exc, "write") from exc
