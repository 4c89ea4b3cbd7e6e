"""The dashboard's script in headless Chromium over the fake market: experts of every status and disputes are
drawn (the real market of tests/e2e/test_dashboard_browser.py has no dispute). Skipped without Chromium."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from gateway_fakes import FakeBackend

from node.gateway.app import Gateway

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="headless Chromium is not installed at /usr/bin/chromium (Debian: apt-get install -y chromium)",
)


def test_dashboard_draws_experts_disputes_and_balances(gateway: Gateway, fake: FakeBackend, tmp_path: Path) -> None:
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
        "--dump-dom", gateway.url + "/",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")[-4000:]
    dom = done.stdout.decode("utf-8", "replace")

    assert 'data-state="live"' in dom, dom[-3000:]
    experts = dict(re.findall(r'<tr id="expert-(\d+)"[^>]*>(.*?)</tr>', dom, re.S))
    assert sorted(map(int, experts)) == [1, 2, 3, 4]
    assert ">unbonding<" in experts["3"] and "1 gwei" in experts["1"]
    assert "4.5 ms" in experts["1"] and 'title="reputation 0.9000"' in experts["1"]
    disputes = dict(re.findall(r'<tr id="dispute-(\d+)"[^>]*>(.*?)</tr>', dom, re.S))
    assert sorted(map(int, disputes)) == [1, 2]
    assert ">open<" in disputes["2"] and "this client" in disputes["2"]
    assert ">innocent<" in disputes["1"] and "2 voters" in disputes["1"]
    assert re.search(r'id="total-disputes">2<', dom) and re.search(r'id="total-experts">4<', dom)
    assert re.search(r'id="bal-escrow">0\.1 ETH<', dom)
    assert 'id="disputes-empty" hidden=""' in dom
