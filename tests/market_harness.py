"""Shared helpers for tests that run a real market: the digits models and a started LocalMarket.

Imported by conftest files (pytest puts tests/ on sys.path because tests/ has no __init__.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from market.models.digits import DigitsBundle, build_or_load_cached

REPO = Path(__file__).resolve().parents[1]


def digits_bundle() -> DigitsBundle:
    """The trained digits mixture of experts, cached across runs (trained in a few seconds on a miss)."""
    cache = Path(os.environ.get("MOE_CACHE_DIR", REPO / ".moe" / "cache"))
    return build_or_load_cached(cache)
