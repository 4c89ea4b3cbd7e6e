"""`moe client ...`: what a client does from a shell: deposit, call an expert, check its money, dispute.

Every command opens the SDK's blocking client (market.Client) for the deployment and the key given, runs,
and closes it. The key comes from `--key-env VAR` (an environment variable holding a hex key: throwaway and
devnet keys) or `--keystore FILE` (password from MOE_PASSWORD); never from an argument. The state directory
(`--state-dir`, default $MOE_CLIENT_STATE or ~/.moe/client) keeps the voucher book, reputation, evidence
and disputes between commands; one process uses it at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from market.errors import MarketInputError
from market.types import DisputeStatus
from node.cli.common import (
    AMOUNT,
    deployment_option,
    deployment_path,
    format_eth,
    key_options,
    load_signer,
    print_json,
    print_table,
)

DEFAULT_STATE_DIR = "~/.moe/client"


def _state_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("MOE_CLIENT_STATE") or DEFAULT_STATE_DIR).expanduser()


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--deployment, --key-env / --keystore and --state-dir."""
    fn = click.option(
        "--state-dir",
        type=click.Path(file_okay=False),
        help=f"Client state (voucher book, reputation, evidence); default $MOE_CLIENT_STATE or {DEFAULT_STATE_DIR}.",
    )(fn)
    fn = key_options("client")(fn)
    return deployment_option(fn)


def _open(deployment: str | None, key_env: str | None, keystore: str | None, state_dir: str | None, **config: Any):  # noqa: ANN202
    from market.client import Client, ClientConfig

    account = load_signer(key_env, keystore, what="client")
    return Client(
        ClientConfig(
            deployment=deployment_path(deployment), account=account, state_dir=_state_dir(state_dir), **config
        )
    )


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _when(timestamp: int) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group()
def client() -> None:
    """Deposit, call experts, check balances, open disputes.

    \b
    Examples:
      export CLIENT_KEY=0x...                       # a devnet key (or use --keystore FILE + MOE_PASSWORD)
      moe client deposit 0.1eth --key-env CLIENT_KEY
      moe client balance --key-env CLIENT_KEY
      moe client infer --model 0x<modelHash> x.npy --redundancy 3 --key-env CLIENT_KEY
      moe client disputes --key-env CLIENT_KEY
      moe client dispute --request-id 0x<id> --key-env CLIENT_KEY
    """


@client.command()
@click.argument("amount", type=AMOUNT)
@client_options
def deposit(amount: int, deployment: str | None, key_env: str | None, keystore: str | None, state_dir: str | None) -> None:
    """Deposit AMOUNT into the escrow that pays experts (0.1eth, 100gwei or wei).

    \b
    Example:
      moe client deposit 0.1eth --key-env CLIENT_KEY
    """
    with _open(deployment, key_env, keystore, state_dir) as c:
        c.deposit(amount)
        balance = c.balance()
    click.echo(f"deposited {format_eth(amount)}; escrow balance {format_eth(balance.escrow)}, "
               f"available {format_eth(balance.available)}")


@client.command()
@click.option("--request", "request_amount", type=AMOUNT, default=None,
              help="Ask to withdraw this amount (paid after the escrow's withdraw delay).")
@client_options
def withdraw(request_amount: int | None, deployment: str | None, key_env: str | None, keystore: str | None,
             state_dir: str | None) -> None:
    """Withdraw from the escrow: first `--request AMOUNT`, then, after the delay, without options.

    \b
    Examples:
      moe client withdraw --request 0.05eth --key-env CLIENT_KEY
      moe client withdraw --key-env CLIENT_KEY          # once the delay has passed
    """
    with _open(deployment, key_env, keystore, state_dir) as c:
        if request_amount is not None:
            at = c.request_withdraw(request_amount)
            click.echo(f"withdrawal of {format_eth(request_amount)} requested; run `moe client withdraw` after {_when(at)}")
            return
        amount = c.withdraw()
    click.echo(f"withdrew {format_eth(amount)}")


@client.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def balance(as_json: bool, deployment: str | None, key_env: str | None, keystore: str | None,
            state_dir: str | None) -> None:
    """Escrow balance, what was signed to each expert, what the experts redeemed, what is free.

    \b
    Example:
      moe client balance --key-env CLIENT_KEY --json
    """
    with _open(deployment, key_env, keystore, state_dir) as c:
        b = c.balance()
    if as_json:
        print_json(b.to_json())
        return
    print_table(f"client {b.client}", ["escrow", "signed", "redeemed", "unredeemed", "in flight", "withdraw pending", "available"], [
        (format_eth(b.escrow), format_eth(b.spent), format_eth(b.redeemed), format_eth(b.unredeemed),
         format_eth(b.in_flight), format_eth(b.withdraw_pending), format_eth(b.available)),
    ])
    if b.spent_per_expert:
        print_table("signed per expert", ["expert", "signed"],
                    [(eid, format_eth(amount)) for eid, amount in sorted(b.spent_per_expert.items())])


def _load_inputs(path: Path, manifest: Any, input_name: str | None) -> dict[str, Any]:
    """Tensors from .npy (one input), .npz (named inputs) or .json (a nested list, or {name: nested list})."""
    import numpy as np
    import torch

    names = [s.name for s in manifest.inputs]
    dtypes = {s.name: s.torch_dtype for s in manifest.inputs}
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            raw: dict[str, Any] = {input_name or names[0]: np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw = {k: data[k] for k in data.files}
        elif suffix == ".json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            raw = obj if isinstance(obj, dict) else {input_name or names[0]: obj}
        else:
            raise MarketInputError(f"{path}: use a .npy, .npz or .json file")
    except (OSError, ValueError) as exc:
        raise MarketInputError(f"cannot read the input {path}: {exc}") from exc
    tensors = {}
    for name, value in raw.items():
        array = np.asarray(value)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        want = dtypes.get(name)
        # JSON numbers and numpy's float64 default become the model's dtype; floats never turn into ints.
        if want is not None and tensor.dtype != want and (want.is_floating_point or not tensor.is_floating_point()):
            tensor = tensor.to(want)
        tensors[name] = tensor
    return tensors


@client.command()
@click.option("--model", "model_hash", required=True, metavar="0xHASH", help="The modelHash to call.")
@click.argument("input_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--input-name", default=None, help="Input tensor name for a .npy/.json array (default: the only input).")
@click.option("--redundancy", type=click.IntRange(1, 16), default=None, help="Experts of distinct operators to ask.")
@click.option("--audit", "audit_rate", type=click.FloatRange(0, 1), default=None,
              help="Audit policy instead: ask a second expert with this probability.")
@click.option("--max-price", type=AMOUNT, default=None, help="Highest price per call and expert, e.g. 2gwei.")
@click.option("--deadline", type=click.FloatRange(0.1, 3600), default=None, help="Seconds for the whole call.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the outputs to this .npz file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (outputs as nested lists).")
@client_options
def infer(model_hash: str, input_file: Path, input_name: str | None, redundancy: int | None, audit_rate: float | None,
          max_price: int | None, deadline: float | None, out_file: Path | None, as_json: bool,
          deployment: str | None, key_env: str | None, keystore: str | None, state_dir: str | None) -> None:
    """Call the model 0xHASH on INPUT_FILE (.npy, .npz or .json), paid and checked.

    \b
    Examples:
      moe client infer --model 0xabc... x.npy --key-env CLIENT_KEY
      moe client infer --model 0xabc... x.json --redundancy 3 --max-price 2gwei --json --key-env CLIENT_KEY
    """
    from market.audit import AuditPolicy

    audit = None if audit_rate is None else AuditPolicy(audit_rate)
    with _open(deployment, key_env, keystore, state_dir) as c:
        manifest = c.manifest(model_hash)
        inputs = _load_inputs(input_file, manifest, input_name)
        result = c.infer(model_hash, inputs, redundancy=redundancy, audit=audit, max_price=max_price, deadline=deadline)
    if out_file is not None:
        import numpy as np

        np.savez(out_file, **{k: v.numpy() for k, v in result.outputs.items()})
    if as_json:
        print_json({
            "model_hash": _hex(result.model_hash),
            "request_id": _hex(result.request_id),
            "outputs": {k: v.tolist() for k, v in result.outputs.items()},
            "agreeing": list(result.agreeing),
            "paid": str(result.paid),
            "latency_ms": round(result.latency_ms, 3),
            "receipts": {str(k): {"output_hash": _hex(r.receipt.output_hash), "price": str(r.receipt.price)}
                         for k, r in result.receipts.items()},
            "evidence": [e.to_json() for e in result.evidence],
            "failures": [{"expert_id": f.expert_id, "kind": f.kind, "message": f.message} for f in result.failures],
        })
        return
    for name, value in result.outputs.items():
        shown = value[:5].tolist()
        click.echo(f"{name}: {value.dtype} {list(value.shape)}  {shown}{' ...' if value.shape[0] > 5 else ''}")
    click.echo(f"request 0x{result.request_id.hex()}: experts {', '.join(map(str, result.agreeing))} agree; "
               f"paid {format_eth(result.paid)} in {result.latency_ms:.0f} ms")
    for item in result.evidence:
        click.echo(f"expert {item.expert_id} answered outside the majority ({item.reason}): "
                   f"dispute it with `moe client dispute --request-id 0x{result.request_id.hex()}`")


@client.command("disputes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def disputes_cmd(as_json: bool, deployment: str | None, key_env: str | None, keystore: str | None,
                 state_dir: str | None) -> None:
    """The disputes this client opened and their status on chain; and its evidence not yet disputed.

    \b
    Example:
      moe client disputes --key-env CLIENT_KEY --json
    """
    with _open(deployment, key_env, keystore, state_dir) as c:
        records = c.disputes()
        evidence = c.evidence()
    disputed = {(r.expert_id, r.request_id) for r in records}
    pending = [e for e in evidence if (e.expert_id, e.request_id) not in disputed]
    if as_json:
        print_json({"disputes": [r.to_json() for r in records], "evidence": [e.to_json() for e in pending]})
        return
    print_table("disputes", ["id", "expert", "request", "status", "bond", "slashed", "reveal ends"], [
        (r.dispute_id, r.expert_id, _hex(r.request_id)[:18] + "..", r.status.name.lower(), format_eth(r.bond),
         format_eth(r.slashed), _when(r.reveal_ends)) for r in records
    ])
    if pending:
        print_table("evidence not disputed", ["expert", "request", "reason"],
                    [(e.expert_id, _hex(e.request_id), e.reason) for e in pending])


@client.command()
@click.option("--request-id", required=True, metavar="0xID", help="The request whose minority answers to dispute.")
@click.option("--expert", "expert_id", type=int, default=None, help="Only the answer of this expert.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Keep serving the evidence until the dispute is decided (it must be served to the verifiers).")
@click.option("--timeout", type=click.FloatRange(1, 30 * 86400), default=3600, show_default=True,
              help="Seconds to wait for the decision.")
@client_options
def dispute(request_id: str, expert_id: int | None, wait: bool, timeout: float, deployment: str | None,
            key_env: str | None, keystore: str | None, state_dir: str | None) -> None:
    """Open a dispute (paying the bond) against the minority answers of a request this client made.

    The evidence (input and claimed output) is served from this process: with --wait (the default) it stays
    up until the verifiers have voted and the dispute is resolved.

    \b
    Example:
      moe client dispute --request-id 0x<id> --key-env CLIENT_KEY
    """
    with _open(deployment, key_env, keystore, state_dir) as c:
        items = [e for e in c.evidence(request_id) if expert_id is None or e.expert_id == expert_id]
        if not items:
            raise MarketInputError(
                f"no evidence recorded for request {request_id}{'' if expert_id is None else f' and expert {expert_id}'}: "
                "only answers outvoted (or malformed) in this client's calls can be disputed"
            )
        ids = []
        for item in items:
            dispute_id = c.dispute(item)
            ids.append(dispute_id)
            click.echo(f"dispute {dispute_id} opened against expert {item.expert_id}; evidence at {c.evidence_endpoint}")
        if not wait:
            click.echo("not waiting: verifiers fetch the evidence during the first half of the commit period; "
                       "run `moe client serve` with this state directory until then")
            return
        for dispute_id in ids:
            record = c.wait_dispute(dispute_id, timeout=timeout)
            click.echo(f"dispute {dispute_id}: {record.status.name.lower()}, slashed {format_eth(record.slashed)}")


@client.command()
@click.option("--timeout", type=click.FloatRange(1, 30 * 86400), default=30 * 86400, show_default=True,
              help="Seconds to serve at most.")
@client_options
def serve(timeout: float, deployment: str | None, key_env: str | None, keystore: str | None,
          state_dir: str | None) -> None:
    """Serve this client's dispute evidence until every dispute it opened is decided (resolving them when due).

    After `moe client dispute --no-wait`, or when the process that opened a dispute stopped: the client listens
    on the port its last run used (kept in the state directory), so the address the dispute names on chain
    is served again.

    \b
    Example:
      moe client serve --key-env CLIENT_KEY
    """
    with _open(deployment, key_env, keystore, state_dir) as c:
        pending = [r for r in c.disputes() if r.status is DisputeStatus.OPEN]
        if not pending:
            click.echo("no open dispute of this client: nothing to serve")
            return
        click.echo(f"serving evidence at {c.evidence_endpoint} for dispute(s) {', '.join(str(r.dispute_id) for r in pending)}")
        for record in pending:
            if record.evidence_endpoint and record.evidence_endpoint != c.evidence_endpoint:
                click.echo(f"warning: dispute {record.dispute_id} names the evidence address {record.evidence_endpoint}, "
                           "which this process does not serve (its port was taken): verifiers cannot fetch it", err=True)
        for record in pending:
            done = c.wait_dispute(record.dispute_id, timeout=timeout)
            click.echo(f"dispute {done.dispute_id}: {done.status.name.lower()}, slashed {format_eth(done.slashed)}")


@client.command("evidence")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
def evidence_cmd(as_json: bool, deployment: str | None, key_env: str | None, keystore: str | None,
                 state_dir: str | None) -> None:
    """Signed answers this client caught outside the majority (what `dispute` takes)."""
    with _open(deployment, key_env, keystore, state_dir) as c:
        items = c.evidence()
    if as_json:
        print_json([e.to_json() for e in items])
        return
    print_table("evidence", ["expert", "request", "reason", "output hash"],
                [(e.expert_id, _hex(e.request_id), e.reason, _hex(e.output_hash)[:18] + "..") for e in items])
