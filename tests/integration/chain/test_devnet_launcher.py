"""`Devnet(host=..., launcher=...)`: anvil started behind an argv prefix and listening on a given address."""

from __future__ import annotations

from pathlib import Path

from market.chain.devnet import Devnet, free_port, rpc_request


def test_devnet_behind_a_launcher_on_a_given_host() -> None:
    port = free_port("127.0.0.3")
    # `env` stands in for a real launcher such as `ip netns exec NS`: an argv prefix that ends in anvil.
    with Devnet(
        host="127.0.0.3", port=port, launcher=("env", "MOE_DEVNET_LAUNCHER_TEST=1"), deploy=False
    ) as net:
        assert net.rpc_url == f"http://127.0.0.3:{port}"
        assert int(rpc_request(net.rpc_url, "eth_chainId"), 16) == 31337
        pid = net._proc.pid  # noqa: SLF001 - the launcher execs anvil: the process is anvil itself
        assert b"anvil" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert net._proc is None  # noqa: SLF001
