"""The compiled contracts shipped inside the Python package, and the tool that regenerates them.

`moe deploy` and `moe devnet up` run where no Solidity compiler exists, so the ABI and creation bytecode of
the three market contracts live in market/chain/artifacts/<Name>.json, generated from forge's output
(contracts/out) by

    python -m market.chain.artifacts --write     # after `cd contracts && forge build`
    python -m market.chain.artifacts --check     # exit 1 when the shipped files drift from the sources

Each file holds {"contract", "abi", "bytecode", "source_hash", "sources", "compiler"}: `sources` maps every
source file that went into the contract (imports included; `src/...` relative to contracts/, libraries such as
`@openzeppelin/...` relative to node_modules/) to its keccak256, taken from the compiler metadata, and
`source_hash` is one keccak256 over that map. `--check` compares the shipped files with contracts/out (ABI
exactly; bytecode without solc's metadata trailer, which also hashes the source paths a build happened to use)
and the recorded source hashes with the files on disk, so an edited contract that was not rebuilt, or rebuilt
without regenerating the artifacts, is caught.

This module reads files only; it never compiles.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

from market.errors import MarketConfigError

CONTRACTS: tuple[str, ...] = ("ExpertRegistry", "PaymentEscrow", "DisputeManager")
INTERFACES: dict[str, str] = {
    "ExpertRegistry": "IExpertRegistry",
    "PaymentEscrow": "IPaymentEscrow",
    "DisputeManager": "IDisputeManager",
}

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
DEFAULT_OUT = CONTRACTS_DIR / "out"


@dataclass(frozen=True, slots=True)
class Artifact:
    """ABI and creation bytecode of one contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    source_hash: str
    sources: dict[str, str]

    @property
    def deployable(self) -> bool:
        return len(self.bytecode) > 2


def _normalize_source(path: str) -> str:
    """A source name independent of where the checkout lives and of how remappings were written.

    forge names sources `src/X.sol` and `../node_modules/@openzeppelin/...`, but a build through absolute
    remappings (slither, `forge build --root`) names them `/abs/path/node_modules/@openzeppelin/...`.
    """
    marker = "node_modules/"
    if marker in path:
        return path[path.rindex(marker) + len(marker) :]
    return path


def _source_path(name: str, contracts_dir: Path) -> Path:
    if name.startswith(("src/", "test/", "script/")):
        return contracts_dir / name
    return contracts_dir.parent / "node_modules" / name


def code_without_metadata(bytecode: str) -> str:
    """Creation bytecode minus solc's CBOR metadata trailer, which hashes source paths as well as content."""
    raw = bytes.fromhex(bytecode.removeprefix("0x"))
    if len(raw) >= 2:
        length = int.from_bytes(raw[-2:], "big")
        start = len(raw) - 2 - length
        if 0 <= start < len(raw) - 2 and 0xA0 <= raw[start] <= 0xBF:  # a CBOR map
            raw = raw[:start]
    return "0x" + raw.hex()


def _source_hash(sources: dict[str, str]) -> str:
    lines = "\n".join(f"{path}:{digest}" for path, digest in sorted(sources.items()))
    return "0x" + keccak(lines.encode()).hex()


def read_forge_output(name: str, out_dir: Path = DEFAULT_OUT) -> dict[str, Any]:
    """The artifact of contract `name` as built by forge into `out_dir`, in the shipped format."""
    path = out_dir / f"{name}.sol" / f"{name}.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise MarketConfigError(
            f"{path} is missing: build the contracts first (cd contracts && forge build)"
        ) from None
    except (OSError, ValueError) as exc:
        raise MarketConfigError(f"cannot read forge output {path}: {exc}") from exc
    metadata = raw.get("metadata") or json.loads(raw.get("rawMetadata") or "{}")
    sources = dict(
        sorted(
            (_normalize_source(src), info["keccak256"]) for src, info in metadata.get("sources", {}).items()
        )
    )
    return {
        "contract": name,
        "abi": raw["abi"],
        "bytecode": raw["bytecode"]["object"],
        "source_hash": _source_hash(sources),
        "sources": sources,
        "compiler": metadata.get("compiler", {}).get("version", ""),
    }


def artifact_path(name: str) -> Path:
    return ARTIFACTS_DIR / f"{name}.json"


@cache
def load_artifact(name: str) -> Artifact:
    """The shipped artifact of `name` (one of CONTRACTS)."""
    if name not in CONTRACTS:
        raise MarketConfigError(f"unknown contract {name!r}; expected one of {', '.join(CONTRACTS)}")
    path = artifact_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MarketConfigError(
            f"the contract artifact {path} is missing from this installation; in a checkout run `make artifacts`"
        ) from None
    except (OSError, ValueError) as exc:
        raise MarketConfigError(f"the contract artifact {path} is unreadable: {exc}") from exc
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=data["bytecode"],
        source_hash=data["source_hash"],
        sources=dict(data.get("sources", {})),
    )


def load_abi(name: str) -> list[dict[str, Any]]:
    """The ABI of `name`: the shipped artifact, or the interface from contracts/out while none is shipped."""
    try:
        return load_artifact(name).abi
    except MarketConfigError:
        interface = INTERFACES[name]
        path = DEFAULT_OUT / f"{interface}.sol" / f"{interface}.json"
        if path.exists():
            return json.loads(path.read_text())["abi"]
        raise


def write_artifacts(out_dir: Path = DEFAULT_OUT, dest: Path = ARTIFACTS_DIR) -> list[Path]:
    """Copies the three contracts from forge's output into the package; returns the files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        data = read_forge_output(name, out_dir)
        path = dest / f"{name}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        written.append(path)
    load_artifact.cache_clear()
    return written


def stale_sources(sources: dict[str, str], contracts_dir: Path = CONTRACTS_DIR) -> list[str]:
    """Source files whose content on disk no longer hashes to the recorded keccak256 (`src/...` names are
    relative to contracts/, library names such as `@openzeppelin/...` to node_modules/)."""
    stale = []
    for rel, digest in sources.items():
        path = _source_path(rel, contracts_dir)
        try:
            actual = "0x" + keccak(path.read_bytes()).hex()
        except OSError:
            stale.append(f"{rel} (missing)")
            continue
        if actual != digest:
            stale.append(rel)
    return stale


def check_artifacts(out_dir: Path = DEFAULT_OUT, shipped_dir: Path = ARTIFACTS_DIR) -> list[str]:
    """Every difference between the shipped artifacts, forge's output and the sources on disk (empty: in sync)."""
    problems: list[str] = []
    for name in CONTRACTS:
        shipped_path = shipped_dir / f"{name}.json"
        if not shipped_path.exists():
            problems.append(f"{name}: no shipped artifact at {shipped_path}")
            continue
        shipped = json.loads(shipped_path.read_text())
        for rel in stale_sources(shipped.get("sources", {})):
            problems.append(f"{name}: source {rel} changed since the artifact was generated")
        try:
            built = read_forge_output(name, out_dir)
        except MarketConfigError as exc:
            problems.append(f"{name}: {exc}")
            continue
        for rel in stale_sources(built["sources"]):
            problems.append(f"{name}: {out_dir} is older than source {rel}; run forge build")
        for key in ("abi", "source_hash"):
            if shipped.get(key) != built[key]:
                problems.append(f"{name}: shipped {key} differs from {out_dir}")
        if code_without_metadata(shipped.get("bytecode", "0x")) != code_without_metadata(built["bytecode"]):
            problems.append(f"{name}: shipped bytecode differs from {out_dir}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m market.chain.artifacts",
        description="Regenerate or check the contract artifacts shipped in market/chain/artifacts.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="copy ABI + bytecode from forge's output")
    mode.add_argument("--check", action="store_true", help="exit 1 if the shipped artifacts drift")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="forge output dir (default contracts/out)"
    )
    args = parser.parse_args(argv)
    try:
        if args.write:
            for path in write_artifacts(args.out):
                print(f"wrote {path}")
            return 0
        problems = check_artifacts(args.out)
    except MarketConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("the shipped artifacts are out of date: run `make artifacts`", file=sys.stderr)
        return 1
    print("artifacts in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
