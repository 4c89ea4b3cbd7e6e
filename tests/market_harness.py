"""Shared helpers for tests that run a real market: the digits models and what the nodes hold.

Imported by conftest files (pytest puts tests/ on sys.path because tests/ has no __init__.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from market.models.digits import DigitsBundle, build_or_load_cached

if TYPE_CHECKING:
    from node.localnet import LocalMarket

REPO = Path(__file__).resolve().parents[1]


def digits_bundle() -> DigitsBundle:
    """The trained digits mixture of experts, cached across runs (trained in a few seconds on a miss)."""
    cache = Path(os.environ.get("MOE_CACHE_DIR", REPO / ".moe" / "cache"))
    return build_or_load_cached(cache)


def ledger_holdings(market: LocalMarket, client: str) -> dict[int, int]:
    """What the market's expert nodes hold from `client`, per expert id, read from their ledger files."""
    from node.app import LEDGER_FILE
    from node.ledger import VoucherLedger

    deployment = market.devnet.deployment
    out: dict[int, int] = {}
    for node in market.nodes.values():
        with VoucherLedger(node.home / LEDGER_FILE, escrow=deployment.escrow, chain_id=deployment.chain_id) as ledger:
            out.update({eid: ledger.last_cumulative(client, eid) for eid in node.expert_ids})
    return out
