"""`moe model`: pack, pack-digits, hash, show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from market.models.architectures import MLP
from market.models.package import load_package, safetensors_bytes
from node.cli.model import model

CONFIG = {"sizes": [6, 5, 2], "activation": "relu"}


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(model, list(args), catch_exceptions=True)
    if result.exception and not isinstance(result.exception, SystemExit):
        return 1, f"{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, result.output


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes(MLP(CONFIG["sizes"], CONFIG["activation"]).state_dict()))
    return path


def pack_args(weights: Path, out: Path) -> list[str]:
    return [
        "pack",
        "--arch", "mlp",
        "--config", json.dumps(CONFIG),
        "--weights", str(weights),
        "--inputs", '[{"name": "x", "dtype": "float32", "shape": [-1, 6]}]',
        "--outputs", '{"name": "y", "dtype": "float32", "shape": [-1, 2]}',
        "--tolerance", "1e-4,1e-3",
        "--name", "cli-test",
        "--capability", "cli-test",
        "--out", str(out),
    ]  # fmt: skip


def test_pack_hash_show(tmp_path: Path, weights_file: Path) -> None:
    code, out = run(*pack_args(weights_file, tmp_path / "pkg"))
    assert code == 0, out
    model_hash = out.strip()
    assert model_hash.startswith("0x") and len(model_hash) == 66
    assert load_package(tmp_path / "pkg").model_hash_hex == model_hash

    code, out = run(*pack_args(weights_file, tmp_path / "pkg2"), "--json")
    assert code == 0 and json.loads(out)["model_hash"] == model_hash

    code, out = run("hash", str(tmp_path / "pkg"), "--expect", model_hash)
    assert code == 0 and out.strip() == model_hash
    code, out = run("hash", str(tmp_path / "pkg"), "--expect", "0x" + "00" * 32)
    assert code != 0 and "ModelHashMismatchError" in out

    code, out = run("show", str(tmp_path / "pkg"), "--json")
    assert code == 0 and json.loads(out)["manifest"]["capability"] == "cli-test"
    code, out = run("show", str(tmp_path / "pkg"))
    assert code == 0 and model_hash in out

    weights = tmp_path / "pkg" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x07")
    code, out = run("hash", str(tmp_path / "pkg"))
    assert code != 0 and "ModelHashMismatchError" in out


def test_pack_refuses_weights_of_another_shape(tmp_path: Path, weights_file: Path) -> None:
    args = pack_args(weights_file, tmp_path / "pkg")
    args[args.index("--config") + 1] = json.dumps({"sizes": [6, 7, 2], "activation": "relu"})
    code, out = run(*args)
    assert code != 0 and "does not fit" in out
    args = pack_args(weights_file, tmp_path / "pkg")
    args[args.index("--tolerance") + 1] = "tight"
    code, out = run(*args)
    assert code == 2 and "ATOL,RTOL" in out


def test_pack_digits_uses_the_cache(tmp_path: Path) -> None:
    args = ["pack-digits", "--cache", str(tmp_path / "cache"), "--epochs", "2", "--json"]
    code, out = run(*args, "--out", str(tmp_path / "out"))
    assert code == 0, out
    first = json.loads(out)
    assert len(first["experts"]) == 4 and 0 <= first["metrics"]["test_accuracy"] <= 1
    assert (tmp_path / "out" / "gate" / "gate.json").is_file()
    for i, expert in enumerate(first["experts"]):
        assert load_package(tmp_path / "out" / f"expert-{i}").model_hash_hex == expert["model_hash"]
    code, out = run(*args)
    assert code == 0
    assert [e["model_hash"] for e in json.loads(out)["experts"]] == [
        e["model_hash"] for e in first["experts"]
    ]
    code, out = run("pack-digits", "--cache", str(tmp_path / "cache"), "--epochs", "2")
    assert code == 0 and "test accuracy" in out and first["experts"][0]["model_hash"][:10] in out


def test_help_has_examples() -> None:
    code, out = run("--help")
    assert code == 0 and "Examples" in out and "pack-digits" in out
    code, out = run("pack", "--help")
    assert code == 0 and "--tolerance" in out
