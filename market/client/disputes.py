"""The client's own records of evidence and disputes, kept in its state directory (small JSON files).

    evidence.jsonl   one line per evidence item: the expert, the reason and its signed receipt; the tensors
                     themselves are in the evidence store (by their hashes), so a later process (for example
                     `moe client dispute --request-id ..`) can open a dispute and serve the evidence
    disputes.json    the disputes this client opened: id, expert, request, endpoint, last status seen

Writes are atomic (temporary file, fsync, rename) or appends of whole lines. No network, no chain.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from market.durable import atomic_write
from market.errors import MarketConfigError
from market.protocol.messages import receipt_from_json, receipt_to_json
from market.types import DisputeStatus, SignedReceipt

__all__ = ["DisputeBook", "EvidenceLog", "receipt_from_json", "receipt_to_json"]

logger = logging.getLogger(__name__)

_FORMAT = "moe-market/client-disputes"


class EvidenceLog:
    """Evidence items (receipt + reason), appended as JSON lines; thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

    def entries(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            try:
                lines = self.path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                return iter(())
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                receipt_from_json(entry["receipt"])
            except (ValueError, KeyError, TypeError) as exc:
                # A torn last line after a crash: skip it, keep the rest.
                logger.warning("%s line %d is not a valid evidence entry (%s); skipped", self.path, n, exc)
                continue
            out.append(entry)
        return iter(out)


class DisputeBook:
    """The disputes this client opened (see the module docstring); thread-safe."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._items: dict[int, dict[str, Any]] = self._load()

    def _load(self) -> dict[int, dict[str, Any]]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise MarketConfigError(f"dispute file {self.path} is corrupt ({exc}); restore or delete it") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("disputes"), list):
            raise MarketConfigError(f"{self.path} is not a {_FORMAT} file")
        return {int(d["dispute_id"]): d for d in doc["disputes"]}

    def _save(self) -> None:
        doc = {"format": _FORMAT, "version": 1, "disputes": [self._items[k] for k in sorted(self._items)]}
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode())

    def add(self, dispute_id: int, signed: SignedReceipt, endpoint: str) -> None:
        with self._lock:
            self._items[dispute_id] = {
                "dispute_id": dispute_id,
                "expert_id": signed.receipt.expert_id,
                "receipt": receipt_to_json(signed),
                "evidence_endpoint": endpoint,
                "status": DisputeStatus.OPEN.name,
            }
            self._save()

    def set_status(self, dispute_id: int, status: DisputeStatus) -> None:
        with self._lock:
            item = self._items.get(dispute_id)
            if item is None or item.get("status") == status.name:
                return
            item["status"] = status.name
            self._save()

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(self._items[k]) for k in sorted(self._items)]

    def get(self, dispute_id: int) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(dispute_id)
            return None if item is None else dict(item)

    def open_against(self) -> set[int]:
        """Expert ids with a dispute this client opened that was last seen open."""
        with self._lock:
            return {int(d["expert_id"]) for d in self._items.values() if d.get("status") == DisputeStatus.OPEN.name}

    def status_of(self, dispute_id: int) -> DisputeStatus | None:
        item = self.get(dispute_id)
        return None if item is None else DisputeStatus[item["status"]]
