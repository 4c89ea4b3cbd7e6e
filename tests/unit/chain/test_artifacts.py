"""The contract artifacts shipped in market/chain/artifacts must match a compile of contracts/src.

The quick test compares them with contracts/out (the Makefile runs `forge build` before pytest) and the
recorded source hashes with the files on disk; the slow one compiles with forge into a temporary directory.
Fix a failure with `make artifacts`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from market.chain import artifacts
from market.chain.artifacts import (
    ARTIFACTS_DIR,
    CONTRACTS,
    CONTRACTS_DIR,
    check_artifacts,
    code_without_metadata,
    load_artifact,
    main,
    stale_sources,
)
from market.errors import MarketConfigError


def test_shipped_artifacts_match_the_build_and_the_sources() -> None:
    problems = check_artifacts()
    assert problems == [], "shipped artifacts drifted (run `make artifacts`):\n" + "\n".join(problems)


def test_shipped_artifacts_are_deployable() -> None:
    for name in CONTRACTS:
        artifact = load_artifact(name)
        assert artifact.deployable
        assert artifact.source_hash.startswith("0x") and len(artifact.source_hash) == 66
        assert f"src/{name}.sol" in artifact.sources
        assert any(item["type"] == "constructor" for item in artifact.abi)


def test_check_cli_passes() -> None:
    assert main(["--check"]) == 0


def test_drift_in_bytecode_or_abi_is_caught(tmp_path) -> None:
    shipped = tmp_path / "shipped"
    shutil.copytree(ARTIFACTS_DIR, shipped)
    path = shipped / "PaymentEscrow.json"
    data = json.loads(path.read_text())
    code = data["bytecode"]
    data["bytecode"] = code[:200] + ("00" if code[200:202] != "00" else "01") + code[202:]  # inside the code
    path.write_text(json.dumps(data))
    path = shipped / "DisputeManager.json"
    data = json.loads(path.read_text())
    data["abi"] = data["abi"][1:]
    path.write_text(json.dumps(data))
    problems = check_artifacts(shipped_dir=shipped)
    assert any("PaymentEscrow: shipped bytecode" in p for p in problems)
    assert any("DisputeManager: shipped abi" in p for p in problems)


def test_metadata_trailer_is_ignored_but_code_is_not() -> None:
    code = load_artifact("PaymentEscrow").bytecode
    trailer = int(code[-4:], 16) * 2 + 4  # hex digits of the CBOR map plus its 2-byte length
    other_paths = code[:-trailer] + code[-trailer:].replace(code[-trailer + 20 : -trailer + 30], "ab" * 5)
    assert code_without_metadata(other_paths) == code_without_metadata(code)
    assert len(code_without_metadata(code)) == len(code) - trailer
    assert code_without_metadata(code[:-trailer] + "00" + code[-trailer:]) != code_without_metadata(code)


def test_edited_source_is_caught(tmp_path) -> None:
    contracts = tmp_path / "contracts"
    source = contracts / "src" / "X.sol"
    source.parent.mkdir(parents=True)
    source.write_text("contract X {}")
    library = tmp_path / "node_modules" / "@lib" / "L.sol"
    library.parent.mkdir(parents=True)
    library.write_text("library L {}")
    recorded = {"src/X.sol": "0x" + "00" * 32, "@lib/L.sol": "0x" + "00" * 32, "src/Y.sol": "0x" + "00" * 32}
    assert stale_sources(recorded, contracts_dir=contracts) == [
        "src/X.sol",
        "@lib/L.sol",
        "src/Y.sol (missing)",
    ]


def test_missing_artifact_and_unknown_name(monkeypatch, tmp_path) -> None:
    with pytest.raises(MarketConfigError, match="unknown contract"):
        load_artifact("Nope")
    monkeypatch.setattr(artifacts, "ARTIFACTS_DIR", tmp_path)
    load_artifact.cache_clear()
    try:
        with pytest.raises(MarketConfigError, match="make artifacts"):
            load_artifact("ExpertRegistry")
    finally:
        load_artifact.cache_clear()


@pytest.mark.slow
def test_fresh_forge_compile_matches_shipped_artifacts(tmp_path) -> None:
    forge = CONTRACTS_DIR.parent / "node_modules" / ".bin" / "forge"
    if not forge.exists():
        pytest.skip("forge is not installed (npm ci)")
    env = {**os.environ, "FOUNDRY_DISABLE_NIGHTLY_WARNING": "1"}
    subprocess.run(
        [str(forge), "build", "--quiet", "--out", str(tmp_path / "out"), "--cache-path", str(tmp_path / "cache")],
        cwd=CONTRACTS_DIR, env=env, check=True, timeout=600,
    )  # fmt: skip
    problems = check_artifacts(out_dir=Path(tmp_path / "out"))
    assert problems == [], "\n".join(problems)
