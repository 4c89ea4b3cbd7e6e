"""Framing: short reads, caps refused before the body, EOF and stalls mapped to market errors."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from market.errors import FrameTooLargeError, MarketError, PeerTimeoutError, TransportError
from market.protocol.framing import FrameReader, IdleTimeoutError, StreamEndedError, read_frame, write_frame


class FakeStream:
    """Serves `data` at most `step` bytes per read; then EOF (b"") or a stall; records writes."""

    def __init__(self, data: bytes = b"", step: int = 1, *, stall_at_end: bool = False, trickle: float = 0.0):
        self.data = bytes(data)
        self.pos = 0
        self.step = step
        self.stall_at_end = stall_at_end
        self.trickle = trickle
        self.consumed = 0
        self.reads = 0
        self.written = bytearray()
        self.writes = 0

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        if self.trickle:
            await trio.sleep(self.trickle)
        left = len(self.data) - self.pos
        if not left:
            if self.stall_at_end:
                await trio.sleep_forever()
            return b""
        take = min(n if n is not None else left, self.step, left)
        chunk = self.data[self.pos : self.pos + take]
        self.pos += take
        self.consumed += take
        await trio.lowlevel.checkpoint()
        return chunk

    async def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1
        await trio.lowlevel.checkpoint()


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def run(fn, *args):  # noqa: ANN001, ANN202
    return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 1000, 70_000])
@pytest.mark.parametrize("step", [1, 3, 65536])
def test_round_trip_with_short_reads(size: int, step: int) -> None:
    if size > 1000 and step < 1000:
        step *= 1000  # keep the test fast; tiny steps are covered by the smaller sizes
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)

    async def main() -> None:
        out = FakeStream()
        await write_frame(out, body)
        assert bytes(out.written) == frame(body)
        stream = FakeStream(bytes(out.written) + frame(b"next"), step=step)
        assert await read_frame(stream, 100_000) == body
        assert await read_frame(stream, 100_000) == b"next"
        with pytest.raises(StreamEndedError):
            await read_frame(stream, 100_000)

    run(main)


def test_large_body_is_written_without_concatenation() -> None:
    async def main() -> None:
        out = FakeStream()
        await write_frame(out, b"z" * 200_000)
        assert out.writes == 2 and bytes(out.written) == frame(b"z" * 200_000)

    run(main)


def test_over_cap_is_refused_before_the_body_is_read() -> None:
    async def main() -> None:
        stream = FakeStream(frame(b"a" * 101), step=1000)
        with pytest.raises(FrameTooLargeError, match="101 bytes"):
            await read_frame(stream, 100)
        assert stream.consumed == 4

    run(main)


def test_a_huge_announced_length_allocates_nothing() -> None:
    async def main() -> None:
        # 4 GiB - 1 announced, nothing sent: must stall out, not allocate.
        stream = FakeStream(b"\xff\xff\xff\xff", step=4, stall_at_end=True)
        with pytest.raises(PeerTimeoutError):
            await read_frame(stream, 2**32 - 1, timeout=1)

    run(main)


@pytest.mark.parametrize("data", [b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x05ab"])
def test_eof_mid_frame_is_a_transport_error(data: bytes) -> None:
    async def main() -> None:
        with pytest.raises(TransportError) as info:
            await read_frame(FakeStream(data), 100)
        assert not isinstance(info.value, StreamEndedError)

    run(main)


def test_stall_mid_frame_times_out() -> None:
    async def main() -> None:
        with pytest.raises(PeerTimeoutError) as info:
            await read_frame(FakeStream(b"\x00\x00\x00\x05ab", step=2, stall_at_end=True), 100, timeout=2)
        assert not isinstance(info.value, IdleTimeoutError)

    run(main)


def test_idle_timeout_applies_before_the_first_byte_only() -> None:
    async def main() -> None:
        with pytest.raises(IdleTimeoutError):
            await read_frame(FakeStream(stall_at_end=True), 100, timeout=1, idle_timeout=5)
        # A slow first byte within the idle timeout is fine even if it exceeds the read timeout.
        slow = FakeStream(frame(b"ok"), step=100, trickle=3)
        assert await read_frame(slow, 100, timeout=5, idle_timeout=10) == b"ok"

    run(main)


def test_frame_timeout_bounds_a_trickling_frame() -> None:
    async def main() -> None:
        trickling = FakeStream(frame(b"x" * 50), step=1, trickle=0.5)
        with pytest.raises(PeerTimeoutError):
            await read_frame(trickling, 100, timeout=1, frame_timeout=5)

    run(main)


class BrokenStream:
    def __init__(self, exc: BaseException, chunk: bytes = b"") -> None:
        self.exc = exc
        self.chunk = chunk

    async def read(self, n: int | None = None) -> bytes:
        if self.chunk:
            return self.chunk
        raise self.exc

    async def write(self, data: bytes) -> None:
        raise self.exc


@pytest.mark.parametrize("exc", [OSError("boom"), RuntimeError("bug in a stream"), ConnectionResetError()])
def test_stream_errors_become_transport_errors(exc: Exception) -> None:
    async def main() -> None:
        with pytest.raises(TransportError) as info:
            await read_frame(BrokenStream(exc), 100)
        assert info.value.__cause__ is exc
        with pytest.raises(TransportError):
            await write_frame(BrokenStream(exc), b"abc")

    run(main)


def test_eof_error_from_a_stream_is_end_of_stream() -> None:
    async def main() -> None:
        with pytest.raises(StreamEndedError):
            await read_frame(BrokenStream(EOFError()), 100)

    run(main)


def test_a_stream_returning_more_than_asked_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(TransportError, match="more|bytes when"):
            await read_frame(BrokenStream(OSError(), chunk=b"\x00" * 10), 100)

    run(main)


def test_write_refuses_over_cap_without_sending() -> None:
    async def main() -> None:
        out = FakeStream()
        with pytest.raises(FrameTooLargeError):
            await write_frame(out, b"a" * 11, max_size=10)
        assert out.writes == 0

    run(main)


def test_write_that_blocks_times_out() -> None:
    class Blocked(FakeStream):
        async def write(self, data: bytes) -> None:
            await trio.sleep_forever()

    async def main() -> None:
        with pytest.raises(PeerTimeoutError):
            await write_frame(Blocked(), b"abc", timeout=3)

    run(main)


def test_errors_are_market_errors() -> None:
    assert issubclass(StreamEndedError, MarketError) and issubclass(IdleTimeoutError, PeerTimeoutError)


@pytest.mark.parametrize("step", [1, 7, 100_000])
def test_frame_reader_keeps_the_bytes_of_the_next_frames(step: int) -> None:
    bodies = [b"first", b"", b"x" * 3000, b"last"]

    async def main() -> None:
        stream = FakeStream(b"".join(frame(b) for b in bodies), step=step)
        reader = FrameReader(stream)
        for body in bodies:
            assert await reader.read_frame(10_000) == body
        assert reader.buffered == 0
        with pytest.raises(StreamEndedError):
            await reader.read_frame(10_000)
        if step == 100_000:
            assert stream.reads <= 2  # everything arrived in one read (plus the EOF)

    run(main)


def test_frame_reader_refuses_over_cap_and_does_not_wait_for_buffered_frames() -> None:
    async def main() -> None:
        reader = FrameReader(FakeStream(frame(b"ok") + frame(b"y" * 500), step=100_000, stall_at_end=True))
        assert await reader.read_frame(100, idle_timeout=1) == b"ok"
        with pytest.raises(FrameTooLargeError):
            await reader.read_frame(100, idle_timeout=1)
        with pytest.raises(IdleTimeoutError):
            await FrameReader(FakeStream(stall_at_end=True)).read_frame(100, idle_timeout=1)

    run(main)


def test_frame_reader_read_ahead_is_bounded() -> None:
    async def main() -> None:
        stream = FakeStream(frame(b"a") + b"\x00" * 200_000, step=10**9)
        reader = FrameReader(stream, read_ahead=1000)
        assert await reader.read_frame(10) == b"a"
        assert stream.consumed == 1000
        with pytest.raises(ValueError):
            FrameReader(stream, read_ahead=-1)

    run(main)
