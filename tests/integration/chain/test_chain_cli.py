"""`moe devnet up / status / down` and `moe deploy` through click, against real anvil processes."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from market.chain.contracts import MarketChain
from market.chain.deployment import load_deployment
from market.chain.devnet import free_port, throwaway_signer
from market.chain.params import MarketParams
from node.cli.deploy import deploy
from node.cli.devnet import devnet


def test_devnet_up_status_down(tmp_path) -> None:
    runner = CliRunner()
    state = tmp_path / "devnet"
    port = free_port()
    try:
        result = runner.invoke(devnet, ["up", "--port", str(port), "--state-dir", str(state), "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["chain_id"] == 31337 and data["rpc_url"] == f"http://127.0.0.1:{port}"
        deployment = load_deployment(data["deployment_file"])
        MarketChain(deployment).check_deployment()
        assert (state / "anvil.pid").exists()

        again = runner.invoke(devnet, ["up", "--port", str(port), "--state-dir", str(state)])
        assert again.exit_code != 0 and "already running" in str(again.exception)

        status = runner.invoke(devnet, ["status", "--state-dir", str(state), "--json"])
        assert status.exit_code == 0, status.output
        assert json.loads(status.output)["answering"] is True
        human = runner.invoke(devnet, ["status", "--state-dir", str(state)])
        assert "answering" in human.output
    finally:
        down = runner.invoke(devnet, ["down", "--state-dir", str(state)])
    assert down.exit_code == 0 and "stopped" in down.output
    status = runner.invoke(devnet, ["status", "--state-dir", str(state)])
    assert status.exit_code == 1 and "no devnet running" in status.output
    assert "no devnet was running" in runner.invoke(devnet, ["down", "--state-dir", str(state)]).output


def test_deploy_command_with_a_keystore(isolated_devnet, tmp_path, monkeypatch) -> None:
    keystore = throwaway_signer(8).to_keystore(tmp_path / "deployer.json", "pw", kdf="pbkdf2", iterations=2)
    monkeypatch.setenv("MOE_TEST_DEPLOYER_PW", "pw")
    out = tmp_path / "deployment.json"
    args = ["--rpc", isolated_devnet.rpc_url, "--keystore", str(keystore), "--password-env", "MOE_TEST_DEPLOYER_PW",
            "--profile", "devnet", "--out", str(out), "--yes"]  # fmt: skip
    result = CliRunner().invoke(deploy, args)
    assert result.exit_code == 0, result.output
    assert "market deployed on chain 31337" in result.output
    chain = MarketChain(load_deployment(out))
    chain.check_deployment()
    assert chain.params() == MarketParams.devnet()

    refused = CliRunner().invoke(deploy, args)
    assert refused.exit_code != 0 and "already exists" in str(refused.exception)


def test_deploy_command_asks_before_sending(isolated_devnet, tmp_path) -> None:
    keystore = throwaway_signer(8).to_keystore(tmp_path / "deployer.json", "pw", kdf="pbkdf2", iterations=2)
    out = tmp_path / "deployment.json"
    args = ["--rpc", isolated_devnet.rpc_url, "--keystore", str(keystore), "--out", str(out)]
    result = CliRunner().invoke(deploy, args, input="pw\nn\n")
    assert result.exit_code != 0
    assert not out.exists()


@pytest.mark.parametrize("bad", ["--profile=nope", "--password-env=MOE_TEST_UNSET_VAR"])
def test_deploy_command_reports_bad_options(isolated_devnet, tmp_path, bad) -> None:
    keystore = throwaway_signer(8).to_keystore(tmp_path / "deployer.json", "pw", kdf="pbkdf2", iterations=2)
    args = ["--rpc", isolated_devnet.rpc_url, "--keystore", str(keystore), "--out", str(tmp_path / "d.json"), bad,
            "--yes"]  # fmt: skip
    result = CliRunner().invoke(deploy, args, input="pw\n")
    assert result.exit_code != 0
    assert "profile" in str(result.exception) or "MOE_TEST_UNSET_VAR" in str(result.exception)


def test_devnet_up_on_another_host_address(tmp_path) -> None:
    runner = CliRunner()
    state = tmp_path / "devnet"
    port = free_port("127.0.0.2")
    bad = runner.invoke(devnet, ["up", "--host", "localhost", "--state-dir", str(state)])
    assert bad.exit_code != 0 and "not an IP address" in bad.output
    try:
        result = runner.invoke(
            devnet, ["up", "--host", "127.0.0.2", "--port", str(port), "--state-dir", str(state), "--json"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["rpc_url"] == f"http://127.0.0.2:{port}"
        status = runner.invoke(devnet, ["status", "--state-dir", str(state), "--json"])
        assert json.loads(status.output)["answering"] is True
    finally:
        assert runner.invoke(devnet, ["down", "--state-dir", str(state)]).exit_code == 0
