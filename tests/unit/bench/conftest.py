"""The benchmarks live in bench/ at the repository root, outside the installed packages: make them importable
however pytest was started (`python -m pytest` puts the working directory on sys.path, `pytest` does not)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
