"""`moe client ...` and `moe market ...` through click, against the real market of conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from market.errors import MarketInputError
from market.models.digits import DigitsBundle, load_digits_split
from node.cli.client import client
from node.cli.market import market as market_cli
from node.localnet import LocalMarket

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cli(market: LocalMarket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    account = market.new_account()
    monkeypatch.setenv("MOE_TEST_CLIENT_KEY", "0x" + account.unsafe_private_key().hex())
    monkeypatch.setenv("MOE_DEPLOYMENT", str(market.deployment_path))
    monkeypatch.setenv("MOE_CLIENT_STATE", str(tmp_path / "state"))
    runner = CliRunner()

    def run(group: Any, *args: str, key: bool = True) -> Any:
        argv = [*args, "--key-env", "MOE_TEST_CLIENT_KEY"] if key else list(args)
        result = runner.invoke(group, argv, catch_exceptions=True)
        return result

    run.address = account.address  # type: ignore[attr-defined]
    return run


def ok(result: Any) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return str(result.output)


def test_deposit_infer_balance_and_listings(
    cli: Any, bundle: DigitsBundle, tmp_path: Path, market: LocalMarket, prices: dict[str, int]
) -> None:
    model = "0x" + bundle.model_hashes[0].hex()
    x = load_digits_split(0).x_test[:4]
    assert "deposited 0.01 ETH" in ok(cli(client, "deposit", "0.01eth"))

    np.save(tmp_path / "x.npy", x.numpy())
    # The CLI's gate explores (epsilon, Gumbel noise), so which honest expert answers is up to chance; the
    # price cap keeps the perturbing "c" out of a call with nobody to outvote it.
    data = json.loads(ok(cli(client, "infer", "--model", model, str(tmp_path / "x.npy"), "--json",
                             "--max-price", str(prices["b"]))))
    with torch.no_grad():
        expected = bundle.model.experts[0](x)
    assert torch.allclose(torch.tensor(data["outputs"]["logits"]), expected, atol=1e-5)
    first_paid = int(data["paid"])
    assert first_paid in (prices["a"], prices["b"]) and len(data["agreeing"]) == 1

    # JSON input (float64 numbers become the model's float32), redundancy 3, outputs saved to a file.
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    out = tmp_path / "out.npz"
    text = ok(cli(client, "infer", "--model", model, str(tmp_path / "x.json"), "--redundancy", "3", "--out", str(out)))
    assert "answered outside the majority" in text and "moe client dispute --request-id" in text
    assert np.allclose(np.load(out)["logits"], expected.numpy(), atol=1e-5)

    balance = json.loads(ok(cli(client, "balance", "--json")))
    assert balance["escrow"] == str(10**16)
    assert balance["spent"] == str(first_paid + prices["a"] + prices["b"] + prices["c"])
    assert "signed per expert" in ok(cli(client, "balance"))

    experts = json.loads(ok(cli(market_cli, "ls", "--model", model, "--json", key=False)))
    assert len(experts) == 3 and {e["price"] for e in experts} == {str(p) for p in prices.values()}
    assert all(e["status"] == "active" and 0 < e["reputation"] <= 1 for e in experts)
    assert "expert(s)" in ok(cli(market_cli, "ls", key=False))

    # The minority answer of the redundant call is evidence; dispute it without waiting.
    evidence = json.loads(ok(cli(client, "evidence", "--json")))
    (item,) = evidence
    request_id = item["receipt"]["request_id"]
    assert item["expert_id"] == market.nodes["c"].expert_ids[0]
    pending = json.loads(ok(cli(client, "disputes", "--json")))
    assert pending["disputes"] == [] and len(pending["evidence"]) == 1
    text = ok(cli(client, "dispute", "--request-id", request_id, "--no-wait"))
    assert "opened against expert" in text and "moe client serve" in text
    endpoint = text.split("evidence at ")[1].split()[0].rstrip(";")
    # A later process on the same state directory serves the evidence at the address the dispute names.
    served = cli(client, "serve", "--timeout", "1")
    assert f"serving evidence at {endpoint} " in served.output and "warning" not in served.output, served.output
    assert "was not decided within 1s" in str(served.exception)  # nobody votes on this devnet
    listed = json.loads(ok(cli(client, "disputes", "--json")))
    assert [d["status"] for d in listed["disputes"]] == ["OPEN"] and listed["evidence"] == []
    on_chain = json.loads(ok(cli(market_cli, "disputes", "--json", key=False)))
    assert request_id in {d["request_id"] for d in on_chain}


def test_withdraw_request_and_clear_errors(cli: Any, bundle: DigitsBundle, tmp_path: Path) -> None:
    ok(cli(client, "deposit", "1000000gwei"))
    assert "requested" in ok(cli(client, "withdraw", "--request", "0.0005eth"))
    bad = cli(client, "infer", "--model", "0x" + bundle.model_hashes[0].hex(), str(tmp_path / "nope.npy"))
    assert bad.exit_code != 0 and "does not exist" in bad.output
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), dtype=np.float32))
    wrong = cli(client, "infer", "--model", "0x" + bundle.model_hashes[0].hex(), str(tmp_path / "wrong.npy"))
    assert isinstance(wrong.exception, MarketInputError) and "float32[N, 64]" in str(wrong.exception)
    nothing = cli(client, "dispute", "--request-id", "0x" + "00" * 32)
    assert isinstance(nothing.exception, MarketInputError)
    bad_amount = cli(client, "deposit", "1.5wei")
    assert bad_amount.exit_code == 2 and "whole number" in bad_amount.output
    no_key = cli(client, "balance", key=False)
    assert no_key.exit_code != 0 and "--key-env" in str(no_key.exception)


def test_serve_with_no_open_dispute_says_so(cli: Any) -> None:
    assert "nothing to serve" in ok(cli(client, "serve"))
