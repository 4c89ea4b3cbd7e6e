"""`moe gateway` in process on a real devnet (no expert yet): it starts the client and the gateway, answers
HTTP, and stops both on SIGINT (Ctrl-C)."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.error

import pytest
from click.testing import CliRunner
from gateway_fakes import WAIT_S, Http

from market.chain.deployment import save_deployment
from market.chain.devnet import free_port, throwaway_signer
from node.cli import cli

CLIENT_INDEX = 8  # a THROWAWAY anvil account no other test of this session uses as a client here


def test_cli_serves_until_ctrl_c(devnet, tmp_path, monkeypatch) -> None:
    deployment = tmp_path / "deployment.json"
    save_deployment(deployment, devnet.deployment)
    monkeypatch.setenv("GATEWAY_TEST_KEY", "0x" + throwaway_signer(CLIENT_INDEX).unsafe_private_key().hex())
    port = free_port()
    http = Http(f"http://127.0.0.1:{port}")
    seen: dict[str, object] = {}

    def drive() -> None:
        # Runs beside the command: wait until it answers, look around, then press Ctrl-C.
        try:
            give_up = time.monotonic() + WAIT_S * 4
            while time.monotonic() < give_up:
                try:
                    seen["health"] = http.get("/v1/health")
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.1)
            seen["experts"] = http.get("/v1/experts")
            seen["balances"] = http.get("/v1/balances")
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    driver = threading.Thread(target=drive)
    driver.start()
    result = CliRunner().invoke(
        cli,
        ["gateway", "--port", str(port), "--deployment", str(deployment), "--key-env", "GATEWAY_TEST_KEY",
         "--state-dir", str(tmp_path / "client")],
        catch_exceptions=False,
    )
    driver.join(WAIT_S)
    assert result.exit_code == 0, result.output
    assert f"gateway on http://127.0.0.1:{port}/" in result.output
    assert "stopping the gateway and the client" in result.output
    status, _, health = seen["health"]
    assert status == 200 and health["status"] == "ok" and health["chain_id"] == devnet.deployment.chain_id
    assert health["client"] == throwaway_signer(CLIENT_INDEX).address
    status, _, experts = seen["experts"]
    assert status == 200 and experts["count"] == 0
    assert seen["balances"][0] == 200
    with pytest.raises(urllib.error.URLError):
        http.get("/v1/health")  # stopped


def test_cli_refuses_a_public_address_without_allow_remote(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["gateway", "--host", "0.0.0.0", "--key-env", "UNSET_KEY"])
    assert result.exit_code != 0
    assert "--allow-remote" in str(result.exception) + result.output


def test_cli_refuses_an_unset_or_short_token(monkeypatch) -> None:
    monkeypatch.delenv("MOE_TEST_UNSET_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["gateway", "--token-env", "MOE_TEST_UNSET_TOKEN", "--key-env", "UNSET_KEY"])
    assert result.exit_code != 0
    assert "MOE_TEST_UNSET_TOKEN" in str(result.exception) + result.output
    monkeypatch.setenv("MOE_TEST_SHORT_TOKEN", "short")
    result = CliRunner().invoke(cli, ["gateway", "--token-env", "MOE_TEST_SHORT_TOKEN", "--key-env", "UNSET_KEY"])
    assert result.exit_code != 0
    assert "at least 16" in str(result.exception) + result.output
