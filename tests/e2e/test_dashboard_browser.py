"""The dashboard in a real browser: a running market (anvil, two `moe expert serve` processes of different
operators, each serving two digits experts), a real client behind the gateway that made a few checked calls,
and headless Chromium loading http://127.0.0.1:PORT/ with nothing else reachable. The DOM after the page's
script ran must show every expert of the market; the screenshot is kept for a person to look at.

Needs Debian's chromium at /usr/bin/chromium (`apt-get install -y chromium`); skipped without it.
Set MOE_UPDATE_SCREENSHOTS=1 to also copy the screenshot to docs/img/dashboard.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from market_harness import digits_bundle

from market.client import Client, ClientConfig
from market.models.digits import load_digits_split
from node.gateway import ClientBackend, Gateway, GatewayConfig
from node.localnet import LocalMarket, NodeSpec

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "img" / "dashboard.png"
PRICES = {"node-a": 10**12, "node-b": 2 * 10**12}

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="headless Chromium is not installed at /usr/bin/chromium (Debian: apt-get install -y chromium)",
    ),
    pytest.mark.timeout(300),
]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def running_market(tmp_path_factory) -> Iterator[tuple[LocalMarket, str]]:
    bundle = digits_bundle()
    workdir = tmp_path_factory.mktemp("dashboard-market")
    market = LocalMarket(workdir)
    market.start()
    try:
        for name, price in PRICES.items():
            market.add_node(NodeSpec(name, (bundle.expert_dir(0), bundle.expert_dir(1)), price=price), start=False)
        for name in PRICES:
            market.start_node(name, wait=False)  # the two processes boot side by side
        for name in PRICES:
            market.wait_ready(name)
        config = ClientConfig(deployment=market.deployment_path, account=market.new_account(),
                              state_dir=workdir / "client")
        with Client(config) as client:
            client.deposit(10**16)
            gateway = Gateway(ClientBackend(client), GatewayConfig(port=0)).start()
            try:
                x = load_digits_split().x_test[:2].tolist()
                models = [bundle.model_hashes[0]] * 3 + [bundle.model_hashes[1]] * 2
                for model_hash in models:
                    result = _post(gateway.url + "/v1/infer",
                                   {"model": "0x" + model_hash.hex(), "inputs": {"x": x}, "redundancy": 2})
                    assert len(result["agreeing"]) == 2, result
                yield market, gateway.url
            finally:
                gateway.stop()
    finally:
        market.stop()


def test_dashboard_shows_the_running_market(running_market, tmp_path: Path) -> None:
    market, url = running_market
    expert_ids = sorted(i for node in market.nodes.values() for i in node.expert_ids)
    assert len(expert_ids) == 4
    screenshot = tmp_path / "dashboard.png"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
        "--window-size=1280,900", f"--screenshot={screenshot}", "--dump-dom", url + "/",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=180, check=False)
    dom = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-4000:]

    # The script ran and drew one row per expert of the market, with the chain's data in it.
    assert 'data-state="live"' in dom, dom[-3000:]
    rows = re.findall(r'<tr id="expert-(\d+)"[^>]*>(.*?)</tr>', dom, re.S)
    assert sorted(int(i) for i, _ in rows) == expert_ids, dom[-3000:]
    for expert_id, cells in rows:
        assert ">active<" in cells
        price = next(PRICES[n] for n, node in market.nodes.items() if int(expert_id) in node.expert_ids)
        assert f"{price // 10**9} gwei" in cells
        assert "reputation" in cells  # the reputation bar's title
    calls = re.search(r'id="total-calls">(\d+)<', dom)
    assert calls and int(calls.group(1)) >= 10  # five calls, two experts each (a failover adds attempts)
    assert re.search(r'id="total-experts">4<', dom)

    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    if os.environ.get("MOE_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)
