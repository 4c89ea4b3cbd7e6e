"""`moe verifier register / status / claim / unbond / withdraw` through click against the session devnet."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from market.chain.contracts import MarketChain
from market.chain.deployment import save_deployment
from market.chain.devnet import throwaway_signer
from market.errors import ContractRevertError, MarketConfigError
from node.cli.verifier import verifier


def test_the_stake_lifecycle_from_the_command_line(isolated_devnet, tmp_path: Path, monkeypatch) -> None:
    deployment = isolated_devnet.deployment
    path = save_deployment(tmp_path / "deployment.json", deployment)
    signer = throwaway_signer(7)  # THROWAWAY TEST KEY
    monkeypatch.setenv("MOE_DEPLOYMENT", str(path))
    monkeypatch.setenv("E2E_CLI_VERIFIER_KEY", "0x" + signer.unsafe_private_key().hex())
    key = ["--key-env", "E2E_CLI_VERIFIER_KEY"]
    runner = CliRunner()

    result = runner.invoke(verifier, ["register", *key, "--stake", "1eth"])
    assert result.exit_code == 0, result.output
    assert "registered: stake 1 ETH" in result.output
    result = runner.invoke(verifier, ["register", *key, "--stake", "0.5eth", "--json"])
    assert json.loads(result.output)["action"] == "added"

    status = runner.invoke(verifier, ["status", "--address", signer.address, "--state-dir", str(tmp_path), "--json"])
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert (data["stake"], data["voting_stake"], data["active"], data["votes"]) == (
        str(3 * 10**18 // 2), str(3 * 10**18 // 2), True, [],
    )  # fmt: skip
    assert "claimable rewards: 0" in runner.invoke(verifier, ["status", *key, "--state-dir", str(tmp_path)]).output

    assert "nothing to claim" in runner.invoke(verifier, ["claim", *key]).output
    unbond = runner.invoke(verifier, ["unbond", *key])
    assert unbond.exit_code == 0 and "unbonding" in unbond.output
    early = runner.invoke(verifier, ["withdraw", *key])
    assert isinstance(early.exception, ContractRevertError)
    assert early.exception.name == "RegistryVerifierUnbondingNotOver"

    reader = MarketChain(deployment)
    reader.increase_time(reader.params().unbonding_period + 1)
    done = runner.invoke(verifier, ["withdraw", *key])
    assert done.exit_code == 0, done.output
    assert "withdrew 1.5 ETH" in done.output
    assert reader.voting_stake(signer.address) == 0


def test_keys_are_required_and_never_taken_from_argv(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MOE_PASSWORD", raising=False)
    runner = CliRunner()
    both = runner.invoke(verifier, ["claim", "--deployment", str(tmp_path / "none.json")])
    assert isinstance(both.exception, MarketConfigError)
    help_text = runner.invoke(verifier, ["run", "--help"]).output
    assert "--key-env" in help_text and "--keystore" in help_text and "--unsafe-lie" not in help_text
