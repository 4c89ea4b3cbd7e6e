"""Hostile peers: garbage on the port, plaintext and secio dialers, a wrong peer id, connection floods."""

from __future__ import annotations

import os
from typing import Any

import multiaddr
import pytest
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secio import transport as secio
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from market.errors import TransportError
from market.protocol.ids import QUOTE
from market.transport import MarketHost, NodeIdentity, PeerId, TransportConfig, open_host

pytestmark = pytest.mark.timeout(60)

LOCAL = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")


async def echo(header: dict[str, Any], payload: bytes, peer: PeerId) -> tuple[dict[str, Any], bytes]:
    return {"type": "quote", "n": header.get("n")}, payload


def run(main: Any) -> None:
    async def guarded() -> None:
        with trio.fail_after(45):
            await main()

    trio.run(guarded)


async def wait_until(predicate: Any) -> None:
    with trio.fail_after(15):
        while not predicate():
            await trio.sleep(0.02)


async def works(server: MarketHost, n: int = 1) -> None:
    async with open_host() as client:
        header, _ = await client.session(server.peer_id, server.listen_addrs, QUOTE).call(
            {"type": "quote", "n": n}
        )
        assert header["n"] == n


def port_of(host: MarketHost) -> int:
    return int(multiaddr.Multiaddr(host.listen_addrs[0]).value_for_protocol("tcp"))


def test_garbage_on_the_tcp_port_does_not_hurt_the_host() -> None:
    async def main() -> None:
        async with open_host() as server:
            server.serve(QUOTE, echo)
            port = port_of(server)
            idle = await trio.open_tcp_stream("127.0.0.1", port)  # says nothing at all
            for garbage in (
                os.urandom(4096),
                b"\x13/multistream/1.0.0\n" + os.urandom(512),
                b"\x13/multistream/1.0.0\n\x07/noise\n" + b"\xff" * 1024,
                b"\xff\xff\xff\xff\x0f" + os.urandom(64),
            ):
                sock = await trio.open_tcp_stream("127.0.0.1", port)
                with trio.move_on_after(1):
                    try:
                        await sock.send_all(garbage)
                        await sock.receive_some(1024)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                await sock.aclose()
            await works(server)
            await idle.aclose()

    run(main)


def _raw_host(sec_opt: Any) -> Any:
    return new_host(
        key_pair=sec_opt[1],
        sec_opt=sec_opt[0],
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[LOCAL],
    )


def _plaintext() -> Any:
    kp = generate_new_ed25519_identity()
    return {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(kp)}, kp


def _secio() -> Any:
    kp = generate_new_ed25519_identity()
    return {TProtocol(secio.ID): secio.Transport(kp)}, kp


def _noise() -> Any:
    kp = generate_new_ed25519_identity()
    return {NOISE_PROTOCOL_ID: NoiseTransport(kp, noise_privkey=new_x25519_key_pair().private_key)}, kp


@pytest.mark.parametrize(
    ("make", "accepted"),
    [(_plaintext, False), (_secio, False), (_noise, True)],
    ids=["plaintext", "secio", "noise-control"],
)
def test_only_noise_dialers_get_in(make: Any, accepted: bool) -> None:
    async def main() -> None:
        async with open_host() as server:
            server.serve(QUOTE, echo)
            dialer = _raw_host(make())
            async with dialer.run([LOCAL]):
                target = info_from_p2p_addr(multiaddr.Multiaddr(server.listen_addrs[0]))
                if accepted:
                    await dialer.connect(target)
                else:
                    with pytest.raises(Exception):  # noqa: B017 - py-libp2p raises several types here
                        with trio.fail_after(15):
                            await dialer.connect(target)
                connections = server.libp2p.get_network().get_connections(dialer.get_id())
                assert bool(connections) is accepted
            await works(server)

    run(main)


def test_a_host_with_another_key_at_the_address_is_refused() -> None:
    async def main() -> None:
        async with open_host() as server, open_host() as client:
            server.serve(QUOTE, echo)
            address = server.listen_addrs[0].rsplit("/p2p/", 1)[0]
            impostor = NodeIdentity.generate().peer_id
            with pytest.raises(TransportError):
                await client.connect(impostor, [address])
            assert await client.connect(server.peer_id, [address]) == server.peer_id

    run(main)


def test_connections_per_ip_are_capped_and_released() -> None:
    async def main() -> None:
        config = TransportConfig(max_connections_per_ip=2, handshake_timeout=20)
        async with open_host(config=config) as server:
            server.serve(QUOTE, echo)
            port = port_of(server)
            squatters = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await wait_until(lambda: server.connections_from("127.0.0.1") == 2)
            async with open_host() as client:
                with pytest.raises(TransportError):
                    await client.connect(server.listen_addrs[0])
            for sock in squatters:
                await sock.aclose()
            await wait_until(lambda: server.connections_from("127.0.0.1") == 0)
            await works(server)

    run(main)


def test_closed_connections_give_their_slots_back() -> None:
    # py-libp2p 0.8.1 keeps every inbound connection's slot of its inbound limiter until the swarm stops;
    # with 3 connections allowed (and 2 per IP) the fourth client would be refused if slots leaked.
    async def main() -> None:
        config = TransportConfig(max_connections=3, max_connections_per_ip=2)
        async with open_host(config=config) as server:
            server.serve(QUOTE, echo)
            for n in range(5):
                await works(server, n)
                await wait_until(lambda: server.connections_from("127.0.0.1") == 0)

    run(main)
