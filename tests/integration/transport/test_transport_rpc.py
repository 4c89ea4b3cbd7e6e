"""Two hosts in one trio run on 127.0.0.1: request/answer pairs, long-lived streams, limits and failures."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from market.errors import (
    FrameTooLargeError,
    MarketInputError,
    PeerTimeoutError,
    RemoteError,
    TransportError,
)
from market.protocol.framing import StreamEndedError, read_frame, write_frame
from market.protocol.ids import EVIDENCE, INFER, QUOTE
from market.protocol.messages import ErrorCode, decode_body, encode_body
from market.transport import MarketHost, NodeIdentity, PeerId, TransportConfig, open_host

pytestmark = pytest.mark.timeout(60)


async def echo(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
    return {"type": "result", "n": header.get("n"), "peer": peer}, payload


@contextlib.asynccontextmanager
async def pair(
    server_config: TransportConfig | None = None,
    client_config: TransportConfig | None = None,
    handler: Any = echo,
    protocol: str = INFER,
) -> AsyncIterator[tuple[MarketHost, MarketHost]]:
    async with open_host(config=server_config) as server, open_host(config=client_config) as client:
        server.serve(protocol, handler)
        yield server, client


def run(main: Any) -> None:
    async def guarded() -> None:
        with trio.fail_after(45):
            await main()

    trio.run(guarded)


async def wait_until(predicate: Any) -> None:
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.01)


def test_many_calls_share_one_long_lived_stream() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            for n in range(40):
                header, payload = await session.call({"type": "infer", "n": n}, bytes([n]) * 1024)
                assert header == {"type": "result", "n": n, "peer": client.peer_id}
                assert payload == bytes([n]) * 1024
            assert session.streams_opened == 1
            assert client.session(server.peer_id, [], INFER) is session

    run(main)


def test_concurrent_callers_share_a_small_pool() -> None:
    active = 0
    most = 0

    async def slow_echo(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await trio.sleep(0.01)
        active -= 1
        return await echo(header, payload, peer)

    async def main() -> None:
        async with pair(client_config=TransportConfig(session_streams=4), handler=slow_echo) as (
            server,
            client,
        ):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            results: dict[int, bytes] = {}

            async def caller(n: int) -> None:
                header, payload = await session.call({"type": "infer", "n": n}, n.to_bytes(2, "big") * 100)
                assert header["n"] == n
                results[n] = payload

            async with trio.open_nursery() as nursery:
                for n in range(40):
                    nursery.start_soon(caller, n)
            assert results == {n: n.to_bytes(2, "big") * 100 for n in range(40)}
            assert session.streams_opened <= 4
            assert most >= 2  # the pool really runs calls side by side

    run(main)


def test_one_shot_request_and_connect_by_multiaddr() -> None:
    async def main() -> None:
        async with pair(protocol=QUOTE) as (server, client):
            assert await client.connect(server.listen_addrs[0]) == server.peer_id
            header, payload = await client.request(server.peer_id, [], QUOTE, {"type": "quote", "n": 1})
            assert header["n"] == 1 and payload == b""

    run(main)


def test_frame_over_the_cap_is_answered_and_the_host_keeps_serving() -> None:
    async def main() -> None:
        async with pair(protocol=QUOTE) as (server, client):
            cap = server.config.frame_cap(QUOTE)
            stream = await client.open_stream(server.peer_id, server.listen_addrs, QUOTE)
            await stream.write((cap + 1).to_bytes(4, "big") + b"x" * 100)
            header, _ = decode_body(await read_frame(stream, cap))
            assert header["type"] == "error" and header["code"] == ErrorCode.FRAME_TOO_LARGE
            with pytest.raises(TransportError):  # the node closed the stream: its framing was lost
                await read_frame(stream, cap, timeout=5)
            await stream.reset()
            session = client.session(server.peer_id, server.listen_addrs, QUOTE)
            assert (await session.call({"type": "quote", "n": 2}))[0]["n"] == 2
            with pytest.raises(FrameTooLargeError):  # refused locally, before sending
                await session.call({"type": "quote"}, b"x" * cap)

    run(main)


def test_malformed_requests_are_answered_on_the_same_stream() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            stream = await client.open_stream(server.peer_id, server.listen_addrs, INFER)
            for garbage in (
                b"",
                b"\x00\x00\x00\x02{}",
                b"\x00\x00\x00\x05nope!",
                encode_body({"type": "quote"}),
            ):
                await write_frame(stream, garbage)
                header, _ = decode_body(await read_frame(stream, 1 << 20))
                assert header["code"] == ErrorCode.MALFORMED, header
            await write_frame(stream, encode_body({"type": "infer", "n": 5}, b"ok"))
            header, payload = decode_body(await read_frame(stream, 1 << 20))
            assert header["n"] == 5 and payload == b"ok"
            await stream.close()

    run(main)


def test_handler_failures_become_error_answers() -> None:
    async def picky(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        kind = header.get("n")
        if kind == "crash":
            raise RuntimeError("secret internals")
        if kind == "remote":
            raise RemoteError("UNKNOWN_EXPERT", "no expert 9 here")
        if kind == "input":
            raise MarketInputError("tensor 'x' has shape (2,)")
        if kind == "bad-answer":
            return {"type": "not-a-type"}, b""
        if kind == "odd-code":
            raise RemoteError("TEAPOT", "?")
        if kind == "low":
            low = RemoteError("VOUCHER_TOO_LOW", "resync")
            low.cumulative = 10**21  # type: ignore[attr-defined]
            raise low
        return await echo(header, payload, peer)

    async def main() -> None:
        async with pair(handler=picky) as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            expected = {
                "crash": "INTERNAL",
                "remote": "UNKNOWN_EXPERT",
                "input": "BAD_INPUT",
                "bad-answer": "INTERNAL",
                "odd-code": "INTERNAL",
            }
            rid = "0x" + "ab" * 32
            for kind, code in expected.items():
                header, _ = await session.call({"type": "infer", "n": kind, "request_id": rid})
                assert header["type"] == "error" and header["code"] == code and header["request_id"] == rid
            low, _ = await session.call({"type": "infer", "n": "low"})
            assert low["code"] == "VOUCHER_TOO_LOW" and low["cumulative"] == str(10**21)
            crash, _ = await session.call({"type": "infer", "n": "crash"})
            assert "secret" not in crash["message"]
            assert (await session.call({"type": "infer", "n": 1}))[0]["n"] == 1
            assert session.streams_opened == 1

    run(main)


def test_a_handler_past_the_request_timeout_is_cancelled_and_answered() -> None:
    async def stuck(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        if header.get("n") == "stuck":
            await trio.sleep_forever()
        return await echo(header, payload, peer)

    async def main() -> None:
        async with pair(server_config=TransportConfig(request_timeout=0.3), handler=stuck) as (
            server,
            client,
        ):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            header, _ = await session.call({"type": "infer", "n": "stuck"}, timeout=20)
            assert header["code"] == "INTERNAL" and "timed out" in header["message"]
            assert (await session.call({"type": "infer", "n": 3}))[0]["n"] == 3

    run(main)


def test_busy_when_the_node_is_at_capacity() -> None:
    release = trio.Event()
    entered = trio.Event()

    async def gated(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        if header.get("n") == "hold":
            entered.set()
            await release.wait()
        return await echo(header, payload, peer)

    async def main() -> None:
        config = TransportConfig(max_inflight_requests=1)
        async with pair(server_config=config, handler=gated) as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            held: list[dict[str, Any]] = []

            async def hold() -> None:
                held.append((await session.call({"type": "infer", "n": "hold"}))[0])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold)
                await entered.wait()
                header, _ = await session.call({"type": "infer", "n": 2})
                assert header["type"] == "error" and header["code"] == "BUSY"
                release.set()
            assert held[0]["n"] == "hold"

    run(main)


def test_busy_when_a_peer_opens_too_many_streams() -> None:
    async def main() -> None:
        async with pair(server_config=TransportConfig(max_streams_per_peer=1)) as (server, client):
            first = await client.open_stream(server.peer_id, server.listen_addrs, INFER)
            await write_frame(first, encode_body({"type": "infer", "n": 1}))
            assert decode_body(await read_frame(first, 1 << 20))[0]["n"] == 1
            second = await client.open_stream(server.peer_id, server.listen_addrs, INFER)
            await write_frame(second, encode_body({"type": "infer", "n": 2}))
            header, _ = decode_body(await read_frame(second, 1 << 20))
            assert header["code"] == "BUSY"
            with pytest.raises(StreamEndedError):
                await read_frame(second, 1 << 20, timeout=5)
            await first.close()
            await second.close()

    run(main)


def test_a_timed_out_call_drops_its_stream_and_the_next_call_works() -> None:
    release = trio.Event()

    async def slow(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        if header.get("n") == "slow":
            await release.wait()
        return await echo(header, payload, peer)

    async def main() -> None:
        async with pair(handler=slow) as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            with pytest.raises(PeerTimeoutError):
                await session.call({"type": "infer", "n": "slow"}, timeout=0.3)
            release.set()
            assert (await session.call({"type": "infer", "n": 7}))[0]["n"] == 7
            assert session.streams_opened == 2
            with trio.move_on_after(0.05):  # a cancelled call must not leave a half-read stream behind
                await session.call({"type": "infer", "n": "slow"})
            assert (await session.call({"type": "infer", "n": 8}))[0]["n"] == 8

    run(main)


def test_peers_that_vanish_mid_request_do_not_hurt_the_host() -> None:
    entered = trio.Event()

    async def slow(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
        if header.get("n") == "slow":
            entered.set()
            await trio.sleep(0.3)
        return await echo(header, payload, peer)

    async def main() -> None:
        async with open_host() as server:
            server.serve(INFER, slow)
            # 1: half a frame, then the client host goes away
            async with open_host() as client:
                stream = await client.open_stream(server.peer_id, server.listen_addrs, INFER)
                await stream.write((1000).to_bytes(4, "big") + b"half")
            # 2: a full request, then the client leaves while the handler runs
            async with open_host() as client, trio.open_nursery() as nursery:
                session = client.session(server.peer_id, server.listen_addrs, INFER)
                nursery.start_soon(session.call, {"type": "infer", "n": "slow"})
                await entered.wait()
                nursery.cancel_scope.cancel()
            await trio.sleep(0.5)  # let the handler finish and fail to answer
            async with open_host() as client:
                session = client.session(server.peer_id, server.listen_addrs, INFER)
                assert (await session.call({"type": "infer", "n": 4}))[0]["n"] == 4

    run(main)


def test_an_idle_stream_closed_by_the_node_is_replaced_transparently() -> None:
    async def main() -> None:
        async with pair(server_config=TransportConfig(idle_stream_timeout=0.2)) as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            assert (await session.call({"type": "infer", "n": 1}))[0]["n"] == 1
            await wait_until(lambda: server.open_inbound_streams == 0)
            assert (await session.call({"type": "infer", "n": 2}))[0]["n"] == 2
            assert session.streams_opened == 2

    run(main)


def test_a_new_stream_that_sends_nothing_is_closed_after_the_read_timeout() -> None:
    """A silent new stream holds a slot: it gets read_timeout, not the idle time between requests."""

    async def main() -> None:
        config = TransportConfig(read_timeout=0.3, idle_stream_timeout=600)
        async with pair(server_config=config) as (server, client):
            stream = await client.open_stream(server.peer_id, server.listen_addrs, INFER)
            await wait_until(lambda: server.open_inbound_streams == 1)
            await wait_until(lambda: server.open_inbound_streams == 0)  # 600 s idle would fail the 10 s wait
            await stream.reset()
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            assert (await session.call({"type": "infer", "n": 1}))[0]["n"] == 1
            await trio.sleep(0.6)  # twice the read timeout: a stream that carried a request stays open
            assert server.open_inbound_streams == 1

    run(main)


def test_a_protocol_the_peer_does_not_serve_fails_cleanly() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, EVIDENCE)
            with pytest.raises(TransportError, match="could not open"):
                await session.call({"type": "evidence", "hash": "0x" + "00" * 32})
            assert (await client.session(server.peer_id, server.listen_addrs, INFER).call({"type": "infer"}))[
                0
            ]

    run(main)


def test_a_reused_stream_that_the_node_closed_is_retried_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Force the race where the client reuses a stream the node has just timed out as idle.
    import market.transport as transport

    monkeypatch.setattr(transport, "_is_stale", lambda stream: False)
    caplog.set_level(logging.DEBUG, logger="market.transport")

    async def main() -> None:
        async with pair(server_config=TransportConfig(idle_stream_timeout=0.2)) as (server, client):
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            assert (await session.call({"type": "infer", "n": 1}))[0]["n"] == 1
            await wait_until(lambda: server.open_inbound_streams == 0)
            assert (await session.call({"type": "infer", "n": 2}))[0]["n"] == 2
            assert session.streams_opened == 2

    run(main)
    assert any("retrying once" in r.getMessage() for r in caplog.records)


def test_a_frame_at_the_cap_goes_through_both_ways() -> None:
    async def main() -> None:
        async with pair() as (server, client):
            cap = server.config.frame_cap(INFER)
            header = {"type": "infer", "n": 1}
            overhead = len(encode_body({"type": "result", "n": 1, "peer": client.peer_id}))
            payload = bytes(range(256)) * ((cap - overhead) // 256) + b"\x07" * ((cap - overhead) % 256)
            session = client.session(server.peer_id, server.listen_addrs, INFER)
            answer, echoed = await session.call(header, payload, timeout=40)
            assert answer["n"] == 1 and echoed == payload

    run(main)


def test_bad_targets_are_input_errors() -> None:
    async def main() -> None:
        async with open_host() as client:
            stranger = NodeIdentity.generate().peer_id
            with pytest.raises(MarketInputError, match="no address"):
                await client.connect(stranger)
            with pytest.raises(MarketInputError):
                await client.connect("/ip4/127.0.0.1/tcp/1")  # no /p2p/ part
            with pytest.raises(MarketInputError):
                await client.connect("not-a-peer-id", ["/ip4/127.0.0.1/tcp/1"])
            with pytest.raises(MarketInputError, match="names peer"):
                await client.connect(stranger, [f"/ip4/127.0.0.1/tcp/1/p2p/{client.peer_id}"])
            with pytest.raises(MarketInputError, match="itself"):
                await client.connect(client.listen_addrs[0])
            with pytest.raises(TransportError):  # nothing listens there
                await client.connect(stranger, ["/ip4/127.0.0.1/tcp/1"])

    run(main)
