"""Node identity files, peer ids from on-chain node keys, and transport configuration checks."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from market.errors import MarketConfigError, MarketInputError
from market.transport import NodeIdentity, TransportConfig, open_host, peer_id_from_node_key

pytestmark = pytest.mark.timeout(60)

FAST_KDF: dict[str, int] = {"time_cost": 1, "memory_kib": 1024}


def test_identity_file_round_trip(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    path = tmp_path / "node.key"
    identity.save(path, "correct horse", **FAST_KDF)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = NodeIdentity.load(path, "correct horse")
    assert loaded.public_key_bytes == identity.public_key_bytes and loaded.peer_id == identity.peer_id
    document = json.loads(path.read_text())
    assert document["peer_id"] == identity.peer_id and document["kdf"]["name"] == "argon2id"
    assert identity.unsafe_seed().hex() not in path.read_text()
    assert "seed" not in repr(identity).lower() and identity.unsafe_seed().hex() not in repr(identity)


def test_default_kdf_parameters_round_trip(tmp_path: Path) -> None:
    identity = NodeIdentity.generate()
    identity.save(tmp_path / "node.key", b"bytes password")
    assert NodeIdentity.load(tmp_path / "node.key", b"bytes password").peer_id == identity.peer_id


def test_wrong_password_and_damaged_files_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    NodeIdentity.generate().save(path, "right", **FAST_KDF)
    with pytest.raises(MarketConfigError, match="wrong password"):
        NodeIdentity.load(path, "wrong")
    document = json.loads(path.read_text())
    document["public_key"] = "0x" + "11" * 32
    path.write_text(json.dumps(document))
    with pytest.raises(MarketConfigError, match="inconsistent"):
        NodeIdentity.load(path, "right")
    document["kdf"]["memory_cost_kib"] = 2**40  # a crafted file must not make load allocate terabytes
    path.write_text(json.dumps(document))
    with pytest.raises(MarketConfigError, match="out of range"):
        NodeIdentity.load(path, "right")
    path.write_text("not json")
    with pytest.raises(MarketConfigError, match="not valid"):
        NodeIdentity.load(path, "right")
    with pytest.raises(MarketConfigError, match="does not exist"):
        NodeIdentity.load(tmp_path / "missing.key", "right")


def test_save_refuses_to_clobber_or_to_store_without_a_password(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = NodeIdentity.generate()
    first.save(path, "pw", **FAST_KDF)
    with pytest.raises(MarketConfigError, match="already exists"):
        NodeIdentity.generate().save(path, "pw", **FAST_KDF)
    with pytest.raises(MarketConfigError, match="without a password"):
        NodeIdentity.generate().save(tmp_path / "other.key", "")
    second = NodeIdentity.generate()
    second.save(path, "pw", overwrite=True, **FAST_KDF)
    assert NodeIdentity.load(path, "pw").peer_id == second.peer_id
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]  # no temporary files left behind


def test_peer_id_from_the_on_chain_node_key_matches_the_running_host() -> None:
    identity = NodeIdentity.unsafe_from_seed(bytes(range(32)))
    expected = peer_id_from_node_key(identity.public_key_bytes)
    assert expected == identity.peer_id and expected.startswith("12D3KooW")

    async def main() -> None:
        async with open_host(identity) as host:
            assert host.peer_id == expected
            assert host.libp2p.get_id().to_base58() == expected
            assert all(a.endswith(f"/p2p/{expected}") for a in host.listen_addrs)

    trio.run(main)


@pytest.mark.parametrize("key", [b"\x00" * 31, b"\x00" * 33, "00" * 32, bytes(32)[:-1] + b"\x80"])
def test_bad_node_keys_are_refused(key: Any) -> None:
    with pytest.raises(MarketInputError):
        peer_id_from_node_key(key)


def test_signatures_verify_with_the_node_key() -> None:
    from nacl.signing import VerifyKey

    identity = NodeIdentity.generate()
    signature = identity.sign(b"price=10")
    VerifyKey(identity.public_key_bytes).verify(b"price=10", signature)


@pytest.mark.parametrize(
    "changes",
    [
        {"listen_host": "localhost"},
        {"listen_port": 70000},
        {"listen_port": True},
        {"read_timeout": 0},
        {"request_timeout": float("inf")},
        {"idle_stream_timeout": -1},
        {"max_inbound_streams": 0},
        {"max_connections_per_ip": 1.5},
        {"session_streams": 1000},
        {"frame_caps": {"/moe-market/quote/1.0.0": 10}},
        {"frame_caps": {"/moe-market/quote/1.0.0": 2**32}},
        {"frame_caps": {"quote": 65536}},
    ],
)
def test_bad_configs_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(MarketConfigError):
        TransportConfig(**changes)


def test_config_defaults_and_caps() -> None:
    config = TransportConfig(frame_caps={"/moe-market/quote/1.0.0": 8192, "/custom/1.0.0": 5000})
    assert config.frame_cap("/moe-market/quote/1.0.0") == 8192
    assert config.frame_cap("/moe-market/infer/1.0.0") == 16 * 1024 * 1024
    assert config.frame_cap("/custom/1.0.0") == 5000
    assert config.frame_cap("/unknown/1.0.0") == 64 * 1024
    with pytest.raises(TypeError):
        config.frame_caps["/x"] = 1  # type: ignore[index]


def test_a_port_in_use_is_reported() -> None:
    async def main() -> None:
        async with open_host() as first:
            port = int(first.listen_addrs[0].split("/tcp/")[1].split("/")[0])
            with pytest.raises(Exception, match="cannot listen"):
                async with open_host(config=TransportConfig(listen_port=port)):
                    pass

    trio.run(main)


def test_identity_file_is_private_even_with_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        NodeIdentity.generate().save(tmp_path / "node.key", "pw", **FAST_KDF)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "node.key").stat().st_mode) == 0o600
