"""A local chain for demos and tests: anvil (on 127.0.0.1 by default) with the market deployed on it.

`Devnet` is a context manager that starts anvil on a free port (chain id 31337, automine, `--silent`),
waits until it answers, deploys the market with `MarketParams.devnet()` from anvil's first account, and on
exit kills anvil's process group. `devnet_up(state_dir, port, params)` does the same detached from the
calling process and leaves anvil.pid, anvil.log and deployment.json in `state_dir`; `devnet_down(state_dir)`
stops it; `devnet_status(state_dir)` reports on it.

Both listen on `host` (default 127.0.0.1, loopback only; another address makes the chain reachable from
other machines or network namespaces, and the deployment's rpc_url names it). `Devnet(launcher=...)` starts
anvil behind an argv prefix, e.g. `("ip", "netns", "exec", "chain")` to run it inside a network namespace
(then give `host` an address of that namespace and a `port`: free ports cannot be probed from outside it).

anvil is found through $MOE_ANVIL, then node_modules/.bin/anvil of this checkout, then $PATH.

ANVIL_TEST_KEYS are anvil's ten default accounts, derived from its public default mnemonic. They are
THROWAWAY TEST KEYS known to everyone: only devnets and tests may use them, never a real chain.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from market.chain.deploy import deploy_market
from market.chain.deployment import load_deployment, save_deployment
from market.chain.params import MarketParams
from market.chain.signer import LocalSigner, unsafe_signer_from_hex
from market.errors import MarketConfigError
from market.types import Deployment

log = logging.getLogger(__name__)

DEVNET_CHAIN_ID = 31337
DEVNET_HOST = "127.0.0.1"
DEFAULT_PORT = 8545
START_TIMEOUT = 30.0

# THROWAWAY TEST KEYS: anvil's default accounts 0-9, from the public mnemonic
# "test test test test test test test test test test test junk" (m/44'/60'/0'/0/i).
# Everyone knows them; anything sent to their addresses on a real chain is stolen at once.
ANVIL_TEST_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)
ANVIL_TEST_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_ACCOUNT_BALANCE = 10_000 * 10**18

PID_FILE = "anvil.pid"
LOG_FILE = "anvil.log"
DEPLOYMENT_FILE = "deployment.json"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def throwaway_signer(index: int) -> LocalSigner:
    """THROWAWAY TEST KEY: anvil's default account `index` (0-9). Devnets and tests only."""
    return unsafe_signer_from_hex(ANVIL_TEST_KEYS[index])


def find_anvil() -> str:
    """Path of the anvil executable: $MOE_ANVIL, node_modules/.bin/anvil of this checkout, or $PATH."""
    env = os.environ.get("MOE_ANVIL")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise MarketConfigError(f"MOE_ANVIL={env} is not an executable file")
    candidates = [
        _REPO_ROOT / "node_modules" / ".bin" / "anvil",
        Path.cwd() / "node_modules" / ".bin" / "anvil",
    ]
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("anvil")
    if found:
        return found
    raise MarketConfigError(
        "anvil (the local chain) was not found: run `npm ci` at the repository root, or set MOE_ANVIL to its path"
    )


def free_port(host: str = DEVNET_HOST) -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_in_use(port: int, host: str = DEVNET_HOST) -> bool:
    """Whether `port` is taken on `host`. An address this process cannot bind at all (another network
    namespace's, say) says nothing about the port: False, and anvil reports the problem if there is one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return False


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def rpc_request(url: str, method: str, params: list[Any] | None = None, timeout: float = 2.0) -> Any:
    """One JSON-RPC call with the standard library (used before web3 is worth setting up)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise MarketConfigError(f"{method} failed on {url}: {answer['error']}")
    return answer["result"]


def anvil_command(
    port: int, chain_id: int = DEVNET_CHAIN_ID, anvil: str | None = None, host: str = DEVNET_HOST
) -> list[str]:
    return [
        anvil or find_anvil(),
        "--host", host,
        "--port", str(port),
        "--chain-id", str(chain_id),
        "--accounts", str(len(ANVIL_TEST_KEYS)),
        "--silent",
    ]  # fmt: skip


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = ""
            if log_path is not None and log_path.exists():
                tail = log_path.read_text(errors="replace")[-2000:]
            raise MarketConfigError(
                f"anvil exited with status {proc.returncode} before answering on {url}. {tail}"
            )
        try:
            rpc_request(url, "eth_chainId", timeout=1.0)
            return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise MarketConfigError(f"anvil did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.05)


def _spawn(
    port: int, out: IO[bytes] | int, host: str = DEVNET_HOST, launcher: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    # A session of its own: stopping kills the whole group, and Ctrl-C in a terminal does not reach it.
    return subprocess.Popen(
        [*launcher, *anvil_command(port, host=host)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill_group(pid: int, timeout: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (reaped first when it is a child of ours, so a zombie does not count)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_anvil(pid: int) -> bool:
    """Whether `pid` is still an anvil process (guards against a recycled pid in a stale pid file)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return process_alive(pid)
    return b"anvil" in cmdline


class Devnet:
    """anvil with the market deployed, for the lifetime of a `with` block."""

    def __init__(
        self,
        params: MarketParams | None = None,
        *,
        port: int | None = None,
        deploy: bool = True,
        host: str = DEVNET_HOST,
        launcher: Sequence[str] = (),
    ) -> None:
        self.params = params or MarketParams.devnet()
        self._port = port
        self._deploy = deploy
        self.host = host
        self.launcher = tuple(launcher)
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.deployment: Deployment | None = None

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise MarketConfigError("the devnet is not started")
        return _url(self.host, self.port)

    @property
    def accounts(self) -> list[LocalSigner]:
        """THROWAWAY TEST KEYS: anvil's ten funded accounts (index 0 deployed the market)."""
        return [throwaway_signer(i) for i in range(len(ANVIL_TEST_KEYS))]

    def start(self) -> Devnet:
        if self._proc is not None:
            return self
        attempts = 1 if self._port is not None else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else self._free_port()
            if self._port is not None and _port_in_use(port, self.host):
                raise MarketConfigError(f"port {port} on {self.host} is in use; choose another port")
            proc = _spawn(port, subprocess.DEVNULL, self.host, self.launcher)
            self._proc, self.port = proc, port
            try:
                _wait_ready(self.rpc_url, proc, START_TIMEOUT, None)
                break
            except MarketConfigError:
                self.stop()
                if attempt == attempts - 1:
                    raise
                log.debug("anvil failed to start on port %d; trying another port", port)
        if self._deploy:
            try:
                self.deployment = deploy_market(self.rpc_url, throwaway_signer(0), self.params)
            except BaseException:
                self.stop()
                raise
        log.info("devnet up on %s", self.rpc_url)
        return self

    def _free_port(self) -> int:
        try:
            return free_port(self.host)
        except OSError as exc:
            raise MarketConfigError(
                f"cannot find a free port on {self.host} from here ({exc.strerror}): give the devnet a port"
            ) from None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def __enter__(self) -> Devnet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------------------------
# Detached devnet with a state directory (moe devnet up / down / status)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevnetStatus:
    state_dir: Path
    running: bool
    pid: int | None
    rpc_url: str | None
    answering: bool
    block: int | None
    deployment: Deployment | None


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def devnet_up(
    state_dir: str | Path,
    port: int = DEFAULT_PORT,
    params: MarketParams | None = None,
    host: str = DEVNET_HOST,
) -> Deployment:
    """Starts anvil detached on host:port, deploys the market, writes anvil.pid, anvil.log and deployment.json
    into state_dir."""
    state_dir = Path(state_dir).expanduser()
    pid = _read_pid(state_dir)
    if pid is not None and process_alive(pid) and _is_anvil(pid):
        raise MarketConfigError(
            f"a devnet is already running from {state_dir} (pid {pid}); stop it with `moe devnet down`"
        )
    if _port_in_use(port, host):
        raise MarketConfigError(f"port {port} on {host} is in use; choose another with --port")
    params = params or MarketParams.devnet()
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / DEPLOYMENT_FILE).unlink(missing_ok=True)
    log_path = state_dir / LOG_FILE
    with open(log_path, "ab") as log_file:
        proc = _spawn(port, log_file, host)
    (state_dir / PID_FILE).write_text(f"{proc.pid}\n")
    url = _url(host, port)
    try:
        _wait_ready(url, proc, START_TIMEOUT, log_path)
        deployment = deploy_market(url, throwaway_signer(0), params)
    except BaseException:
        _kill_group(proc.pid)
        (state_dir / PID_FILE).unlink(missing_ok=True)
        raise
    save_deployment(state_dir / DEPLOYMENT_FILE, deployment, params.as_dict())
    return deployment


def devnet_down(state_dir: str | Path) -> bool:
    """Stops the devnet started from `state_dir`; False when none was running."""
    state_dir = Path(state_dir).expanduser()
    pid = _read_pid(state_dir)
    running = pid is not None and process_alive(pid) and _is_anvil(pid)
    if running:
        assert pid is not None
        _kill_group(pid)
    (state_dir / PID_FILE).unlink(missing_ok=True)
    return running


def devnet_status(state_dir: str | Path) -> DevnetStatus:
    """Whether the devnet of `state_dir` runs and answers, and what is deployed on it."""
    state_dir = Path(state_dir).expanduser()
    pid = _read_pid(state_dir)
    running = pid is not None and process_alive(pid) and _is_anvil(pid)
    deployment = None
    with contextlib.suppress(MarketConfigError):
        deployment = load_deployment(state_dir / DEPLOYMENT_FILE)
    rpc_url = deployment.rpc_url if deployment else None
    answering, block = False, None
    if running and rpc_url:
        try:
            block = int(rpc_request(rpc_url, "eth_blockNumber"), 16)
            answering = True
        except (OSError, urllib.error.URLError, ValueError, MarketConfigError):
            pass
    return DevnetStatus(state_dir, running, pid if running else None, rpc_url, answering, block, deployment)
