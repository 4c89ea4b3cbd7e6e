"""Several "hosts" on one machine: Linux network namespaces on a private bridge, for the multi-host tests.

`NetLab(["chain", "exp-a", ...])` creates, when entered, a uniquely named Linux bridge in the root namespace
holding `<subnet>.1` (so the test process itself can reach every host: read the chain, check the money), and
per host a network namespace with `lo` up and one veth pair: the namespace side gets `<subnet>.N` (N = 2, 3,
... in the order given), the other side is a port of the bridge. The subnet is a free 10.213.X.0/24. On exit
(also after an error) it kills what still runs inside its namespaces and deletes the namespaces, the veth
pairs and the bridge.

    with NetLab(["chain", "exp-a"]) as lab:
        lab.ip("exp-a")                          # "10.213.X.3"
        lab.launcher("exp-a")                    # ("ip", "netns", "exec", "<ns>"): an argv prefix
        proc = lab.run_in("exp-a", [sys.executable, "server.py"])   # subprocess.Popen inside it
        lab.partition("exp-a")                   # its bridge port down: cut off from every other host
        lab.heal("exp-a")                        # and back

A partition is `ip link set <bridge side of the host's veth> down`: the host keeps running but reaches no
one (chain included) and no one reaches it; `heal` sets it up again. There is no added latency here: the
kernels these tests run on have no netem qdisc, so test_multihost.py adds delay with a user-space relay
(delay_relay.py) in a host of its own.

`netns_available()` says whether this machine allows all that (root, `ip`, a namespace, a veth pair and a
bridge can be created), with the reason when it does not, so tests skip with that reason.

Names: namespaces `mmlab<pid>-<tag>-<host>`, links `mm<tag><n>` (15 characters at most). A run killed
before its clean-up leaves them behind; a later NetLab removes leftovers whose creating process is gone and
that hold no process (it never kills processes of another run).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from market.chain.devnet import process_alive

__all__ = ["NetLab", "NetLabError", "netns_available"]

LOCK_FILE = Path("/tmp/moe-netlab.lock")
SUBNET_PREFIX = "10.213"
NS_PREFIX = "mmlab"
_probe_result: tuple[bool, str] | None = None


class NetLabError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise NetLabError(f"ip {' '.join(args)}: {(result.stderr or result.stdout).strip()}")
    return result


def netns_available() -> tuple[bool, str]:
    """(True, "") when network namespaces, veth pairs and a bridge can be created here; else (False, why)."""
    global _probe_result
    if _probe_result is not None:
        return _probe_result
    _probe_result = _probe()
    return _probe_result


def _probe() -> tuple[bool, str]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "network namespaces need root (run the tests as root, as CI does)"
    if shutil.which("ip") is None:
        return False, "the `ip` command (iproute2) is not installed"
    tag = secrets.token_hex(3)
    ns, bridge, veth = f"{NS_PREFIX}probe-{tag}", f"mmp{tag}b", f"mmp{tag}v"
    try:
        try:
            _ip("netns", "add", ns)
        except (NetLabError, OSError, subprocess.TimeoutExpired) as exc:
            return False, f"cannot create a network namespace: {exc}"
        try:
            _ip("link", "add", veth, "type", "veth", "peer", "name", veth + "p")
            _ip("link", "set", veth + "p", "netns", ns)
        except (NetLabError, subprocess.TimeoutExpired) as exc:
            return False, f"cannot create a veth pair into a namespace: {exc}"
        try:
            _ip("link", "add", bridge, "type", "bridge")
        except (NetLabError, subprocess.TimeoutExpired) as exc:
            return False, f"cannot create a Linux bridge: {exc}"
        return True, ""
    finally:
        _ip("link", "del", bridge, check=False)
        _ip("link", "del", veth, check=False)
        _ip("netns", "del", ns, check=False)


class NetLab:
    """A bridge and one network namespace per host; see the module docstring."""

    def __init__(self, hosts: Sequence[str], *, bridge_forward_delay: int = 0) -> None:
        if len(set(hosts)) != len(hosts) or not hosts:
            raise ValueError("give distinct host names")
        if len(hosts) > 200:
            raise ValueError("at most 200 hosts")
        for h in hosts:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,15}", h):
                raise ValueError(f"host name {h!r}: lower-case letters, digits and '-', 16 at most")
        self.hosts = tuple(hosts)
        self.tag = secrets.token_hex(3)
        self.bridge = f"mm{self.tag}br"
        self._forward_delay = bridge_forward_delay
        self._ns = {h: f"{NS_PREFIX}{os.getpid()}-{self.tag}-{h}" for h in hosts}
        self._veth = {h: f"mm{self.tag}{i:03d}" for i, h in enumerate(hosts)}
        self.subnet: ipaddress.IPv4Network | None = None
        self.root_ip = ""
        self._ips: dict[str, str] = {}
        self._created_ns: list[str] = []
        self._bridge_created = False
        self.partitions: list[tuple[str, str, float]] = []  # (host, "down" | "up", time.time())

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        ok, reason = netns_available()
        if not ok:
            raise NetLabError(reason)
        with (
            _lock()
        ):  # one lab at a time picks its subnet and builds (another test run may be doing the same)
            _sweep_leftovers()
            self.subnet = _free_subnet()
            self.root_ip = str(self.subnet.network_address + 1)
            _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", str(self._forward_delay))
            self._bridge_created = True
            _ip("addr", "add", f"{self.root_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self._add_hosts()

    def _add_hosts(self) -> None:
        assert self.subnet is not None
        for i, host in enumerate(self.hosts):
            ns, veth = self._ns[host], self._veth[host]
            inner = veth + "n"
            ip = str(self.subnet.network_address + 2 + i)
            _ip("netns", "add", ns)
            self._created_ns.append(ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            self._ips[host] = ip

    def close(self) -> None:
        """Kill what still runs inside the namespaces, delete them, their links and the bridge. Idempotent."""
        for ns in list(self._created_ns):
            _kill_inside(ns)
        for ns in list(self._created_ns):
            _ip("netns", "del", ns, check=False)  # deletes the veth inside, and with it its peer
            self._created_ns.remove(ns)
        for veth in self._veth.values():
            if _ip("link", "show", veth, check=False).returncode == 0:
                _ip("link", "del", veth, check=False)
        if self._bridge_created:
            _ip("link", "del", self.bridge, check=False)
            self._bridge_created = False

    # -- hosts -------------------------------------------------------------------------------------------

    def ip(self, host: str) -> str:
        return self._ips[host]

    def namespace(self, host: str) -> str:
        return self._ns[host]

    def launcher(self, host: str) -> tuple[str, ...]:
        """The argv prefix that runs a command inside `host`'s namespace."""
        return ("ip", "netns", "exec", self._ns[host])

    def run_in(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `host` (a new session, so it can be stopped as a group)."""
        popen_kwargs.setdefault("start_new_session", True)
        return subprocess.Popen([*self.launcher(host), *argv], **popen_kwargs)

    def check_in(self, host: str, argv: Sequence[str], timeout: float = 30.0) -> str:
        """Run `argv` inside `host` to completion; its stdout (NetLabError when it fails)."""
        result = subprocess.run(
            [*self.launcher(host), *argv], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise NetLabError(f"{' '.join(argv)} in {host}: {(result.stderr or result.stdout).strip()}")
        return result.stdout

    def partition(self, host: str) -> None:
        """Cut `host` off from every other host (its bridge port down)."""
        _ip("link", "set", self._veth[host], "down")
        self.partitions.append((host, "down", time.time()))

    def heal(self, host: str) -> None:
        _ip("link", "set", self._veth[host], "up")
        self.partitions.append((host, "up", time.time()))

    def pids(self, host: str) -> list[int]:
        out = _ip("netns", "pids", self._ns[host], check=False).stdout
        return [int(p) for p in out.split()]


def _kill_inside(ns: str) -> None:
    """SIGKILL what this lab started inside `ns` and still runs there (after a failed test), then wait."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


@contextlib.contextmanager
def _lock():
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 no address or route of the root namespace touches."""
    used: list[ipaddress.IPv4Network] = []
    for line in (
        _ip("-4", "-o", "addr", "show").stdout.splitlines() + _ip("-4", "route", "show").stdout.splitlines()
    ):
        for token in re.findall(r"\d+\.\d+\.\d+\.\d+(?:/\d+)?", line):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(token, strict=False))
    start = secrets.randbelow(250)
    for k in range(250):
        x = 1 + (start + k) % 250
        candidate = ipaddress.ip_network(f"{SUBNET_PREFIX}.{x}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NetLabError(f"no free {SUBNET_PREFIX}.X.0/24 subnet left")


def _sweep_leftovers() -> None:
    """Delete namespaces and bridges of earlier runs whose creating process is gone and that hold no process."""
    listing = _ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({NS_PREFIX}(\d+)-([0-9a-f]{{6}})-\S+)", listing, flags=re.M):
        ns, pid, tag = name
        if process_alive(int(pid)):
            continue
        if _ip("netns", "pids", ns, check=False).stdout.split():
            continue  # something still runs in it: not ours to kill
        _ip("netns", "del", ns, check=False)
    links = _ip("-o", "link", "show", "type", "bridge", check=False).stdout
    live_tags = set(
        re.findall(rf"^{NS_PREFIX}\d+-([0-9a-f]{{6}})-", _ip("netns", "list", check=False).stdout, flags=re.M)
    )
    for tag in re.findall(r"^\d+: mm([0-9a-f]{6})br[:@]", links, flags=re.M):
        if tag in live_tags:
            continue
        ports = _ip("-o", "link", "show", "master", f"mm{tag}br", check=False).stdout
        if not ports.strip():
            _ip("link", "del", f"mm{tag}br", check=False)
