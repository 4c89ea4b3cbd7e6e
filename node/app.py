"""An expert node as a process: its home directory, its configuration file, and the trio task that serves.

A node's home holds everything it needs and nothing else:

    node.toml        configuration (below); environment variables override what the CLI reads
    identity.key     the libp2p ed25519 identity, encrypted (its public key is the on-chain nodeKey)
    signer.json      the hot signer keystore: signs receipts and pays gas for redemptions
    models/          the model packages served (a ModelStore indexed by modelHash)
    ledger.db        vouchers, redemptions and receipts (SQLite WAL)
    ready.json       written once the node listens: peer id and addresses (for scripts and tests)

node.toml:

    deployment = "/abs/path/deployment.json"
    listen_host = "127.0.0.1"
    listen_port = 40123
    announce_host = "127.0.0.1"        # the address registered on chain
    [redeem]
    threshold_wei = 10000000000000000
    max_age_s = 30.0
    interval_s = 2.0
    shutdown_s = 15.0                  # the most the last redemption waits for the chain on the way out
    reorg_window_s = 3600.0            # redemptions this recent are checked against the chain again (reorgs)
    recheck_s = 60.0                   # how often
    [[experts]]
    expert_id = 3
    model_hash = "0x..."
    price = 1000000000000
    behaviour = "honest"               # anything else is for demos and tests only

Passwords for the identity and the signer come from the environment (`MOE_PASSWORD`), never from the file.
"""

from __future__ import annotations

import json
import logging
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from market.chain.contracts import MarketChain
from market.chain.deployment import load_deployment
from market.chain.eip712 import ReceiptSigner
from market.chain.signer import LocalSigner, signer_from_keystore
from market.errors import MarketConfigError
from market.models.package import ModelStore
from market.transport import NodeIdentity, TransportConfig, open_host
from node.ledger import VoucherLedger
from node.redeemer import Redeemer, RedeemPolicy
from node.runtime import ModelRuntime
from node.server import Behaviour, ExpertServer, ServedExpert, ServerConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "node.toml"
IDENTITY_FILE = "identity.key"
SIGNER_FILE = "signer.json"
LEDGER_FILE = "ledger.db"
MODELS_DIR = "models"
READY_FILE = "ready.json"


@dataclass(frozen=True, slots=True)
class ExpertEntry:
    expert_id: int
    model_hash: bytes
    price: int
    behaviour: Behaviour = Behaviour.HONEST


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The validated contents of node.toml plus the home directory it was read from."""

    home: Path
    deployment: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    announce_host: str = "127.0.0.1"
    experts: tuple[ExpertEntry, ...] = ()
    redeem: RedeemPolicy = field(default_factory=RedeemPolicy)
    max_batch: int = 32
    max_wait_ms: float = 2.0
    threads: int = 1

    @property
    def endpoint(self) -> list[str]:
        return [f"/ip4/{self.announce_host}/tcp/{self.listen_port}"]

    # -- file -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, home: str | Path) -> NodeConfig:
        home = Path(home).expanduser().resolve()
        path = home / CONFIG_FILE
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise MarketConfigError(
                f"{path} does not exist: run `moe expert register --home {home}` first"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise MarketConfigError(f"{path} is not valid TOML: {exc}") from exc
        try:
            experts = tuple(
                ExpertEntry(
                    expert_id=int(e["expert_id"]),
                    model_hash=bytes.fromhex(str(e["model_hash"]).removeprefix("0x")),
                    price=int(e["price"]),
                    behaviour=Behaviour(e.get("behaviour", "honest")),
                )
                for e in data.get("experts", [])
            )
            redeem = RedeemPolicy(**data.get("redeem", {}))
            config = cls(
                home=home,
                deployment=Path(data["deployment"]),
                listen_host=str(data.get("listen_host", "127.0.0.1")),
                listen_port=int(data.get("listen_port", 0)),
                announce_host=str(data.get("announce_host", data.get("listen_host", "127.0.0.1"))),
                experts=experts,
                redeem=redeem,
                max_batch=int(data.get("max_batch", 32)),
                max_wait_ms=float(data.get("max_wait_ms", 2.0)),
                threads=int(data.get("threads", 1)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise MarketConfigError(f"{path}: {exc}") from exc
        return config

    def save(self) -> Path:
        lines = [
            "# moe-market expert node configuration (see node/app.py). Passwords come from MOE_PASSWORD.",
            f"deployment = {json.dumps(str(self.deployment))}",
            f"listen_host = {json.dumps(self.listen_host)}",
            f"listen_port = {self.listen_port}",
            f"announce_host = {json.dumps(self.announce_host)}",
            f"max_batch = {self.max_batch}",
            f"max_wait_ms = {self.max_wait_ms}",
            f"threads = {self.threads}",
            "",
            "[redeem]",
            f"threshold_wei = {self.redeem.threshold_wei}",
            f"max_age_s = {float(self.redeem.max_age_s)}",
            f"max_batch = {self.redeem.max_batch}",
            f"interval_s = {float(self.redeem.interval_s)}",
            f"max_backoff_s = {float(self.redeem.max_backoff_s)}",
            f"shutdown_s = {float(self.redeem.shutdown_s)}",
            f"reorg_window_s = {float(self.redeem.reorg_window_s)}",
            f"recheck_s = {float(self.redeem.recheck_s)}",
        ]
        for e in self.experts:
            lines += [
                "",
                "[[experts]]",
                f"expert_id = {e.expert_id}",
                f'model_hash = "0x{e.model_hash.hex()}"',
                f"price = {e.price}",
                f'behaviour = "{e.behaviour.value}"',
            ]
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path

    def with_experts(self, experts: Sequence[ExpertEntry]) -> NodeConfig:
        return replace(self, experts=tuple(experts))


# -- keys -------------------------------------------------------------------------------------------


def password() -> str:
    value = os.environ.get("MOE_PASSWORD")
    if not value:
        raise MarketConfigError("set MOE_PASSWORD: it unlocks the node's identity and signer key files")
    return value


def load_or_create_identity(home: Path, secret: str) -> NodeIdentity:
    path = home / IDENTITY_FILE
    if path.exists():
        return NodeIdentity.load(path, secret)
    identity = NodeIdentity.generate()
    identity.save(path, secret)
    return identity


def load_or_create_signer(home: Path, secret: str) -> LocalSigner:
    path = home / SIGNER_FILE
    if path.exists():
        return signer_from_keystore(path, secret)
    signer = LocalSigner.generate()
    signer.to_keystore(path, secret)
    return signer


# -- serving ----------------------------------------------------------------------------------------


async def serve_node(config: NodeConfig, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the node until cancelled: libp2p host, handlers, runtimes, redeemer."""
    if not config.experts:
        raise MarketConfigError(f"{config.home / CONFIG_FILE} lists no experts: register one first")
    secret = password()
    identity = load_or_create_identity(config.home, secret)
    signer = load_or_create_signer(config.home, secret)
    deployment = load_deployment(config.deployment)
    chain = MarketChain(deployment, signer)
    store = ModelStore(config.home / MODELS_DIR)
    ledger = VoucherLedger(config.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id)
    runtimes: list[ModelRuntime] = []
    try:
        served: list[ServedExpert] = []
        for entry in config.experts:
            model = store.get(entry.model_hash)
            runtime = ModelRuntime(
                model, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms, threads=config.threads,
                name=f"expert-{entry.expert_id}",
            )
            runtimes.append(runtime)
            served.append(ServedExpert(entry.expert_id, model, runtime, entry.price, entry.behaviour))
        server = ExpertServer(
            experts=served,
            ledger=ledger,
            receipt_signer=ReceiptSigner(signer.unsafe_private_key(), deployment.chain_id, deployment.disputes),
            chain_id=deployment.chain_id,
            escrow=deployment.escrow,
            balance_of=chain.balance_of,
            store=store,
            config=ServerConfig(),
        )
        redeemer = Redeemer(ledger, chain, [e.expert_id for e in config.experts], config.redeem)
        transport = TransportConfig(listen_host=config.listen_host, listen_port=config.listen_port)
        async with open_host(identity, transport) as host:
            server.install(host)
            ready = {
                "peer_id": str(host.peer_id),
                "addrs": host.listen_addrs,
                "experts": [e.expert_id for e in config.experts],
                "pid": os.getpid(),
            }
            (config.home / READY_FILE).write_text(json.dumps(ready))
            logger.info("serving experts %s as %s", ready["experts"], host.peer_id)
            task_status.started(host)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(redeemer.run)
                await trio.sleep_forever()
    finally:
        (config.home / READY_FILE).unlink(missing_ok=True)
        for runtime in runtimes:
            runtime.close()
        ledger.close()


async def _main(home: str) -> None:
    import signal

    config = NodeConfig.load(home)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_node, config)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                logger.info("stopping: redeeming what is owed, then closing")
                nursery.cancel_scope.cancel()
                break


def run(home: str) -> None:
    """Blocking entry point used by `moe expert serve`."""
    trio.run(_main, home)


# -- registration -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisteredExpert:
    expert_id: int
    name: str
    model_hash: bytes


@dataclass(frozen=True, slots=True)
class Registration:
    config: NodeConfig
    identity: NodeIdentity
    signer: LocalSigner
    registered: tuple[RegisteredExpert, ...]


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def register_node(
    home: str | Path,
    deployment_path: str | Path,
    operator: LocalSigner,
    model_dirs: Sequence[str | Path],
    *,
    price: int,
    stake: int,
    listen_host: str = "127.0.0.1",
    listen_port: int = 0,
    announce_host: str | None = None,
    gas_fund: int = 5 * 10**16,
    behaviour: str = "honest",
) -> Registration:
    """Stake and register one expert per model package for the node in `home`, and write node.toml.

    Creates the node's identity and hot signer if missing (password from MOE_PASSWORD), copies the packages
    into the node's model store, and funds the hot signer with `gas_fund` for redemption gas.
    """
    from market.chain.contracts import capability_id

    home = Path(home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    secret = password()
    identity = load_or_create_identity(home, secret)
    hot = load_or_create_signer(home, secret)
    if (home / CONFIG_FILE).exists():
        config = NodeConfig.load(home)
    else:
        config = NodeConfig(
            home=home,
            deployment=Path(deployment_path).resolve(),
            listen_host=listen_host,
            listen_port=listen_port or _free_port(listen_host),
            announce_host=announce_host or listen_host,
        )
    chain = MarketChain(load_deployment(config.deployment), operator)
    store = ModelStore(home / MODELS_DIR)
    entries = list(config.experts)
    registered: list[RegisteredExpert] = []
    for model_dir in model_dirs:
        manifest = store.add(model_dir)
        expert_id = chain.register_expert(
            signer=hot.address,
            model_hash=manifest.model_hash,
            capability=capability_id(manifest.capability),
            price=price,
            node_key=identity.public_key_bytes,
            endpoint=config.endpoint,
            stake=stake,
        )
        entries.append(ExpertEntry(expert_id, manifest.model_hash, price, Behaviour(behaviour)))
        registered.append(RegisteredExpert(expert_id, manifest.name, manifest.model_hash))
        logger.info("registered expert %d for model %s", expert_id, manifest.name)
    if gas_fund > 0 and chain.native_balance(hot.address) < gas_fund:
        chain.send_value(hot.address, gas_fund)
    config = config.with_experts(entries)
    config.save()
    return Registration(config, identity, hot, tuple(registered))
