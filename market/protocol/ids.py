"""Versioned libp2p protocol ids of the market and the default frame cap of each.

A protocol id names one request/answer exchange (docs/protocol.md, "Protocol ids"). A change that an old
peer cannot read gets a new major version, and a node serves both versions while they coexist.
This module holds constants only: no I/O, no libp2p.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, NewType

ProtocolId = NewType("ProtocolId", str)

QUOTE: Final = ProtocolId("/moe-market/quote/1.0.0")
INFER: Final = ProtocolId("/moe-market/infer/1.0.0")
MODEL: Final = ProtocolId("/moe-market/model/1.0.0")
EVIDENCE: Final = ProtocolId("/moe-market/evidence/1.0.0")

ALL_PROTOCOLS: Final[tuple[ProtocolId, ...]] = (QUOTE, INFER, MODEL, EVIDENCE)

KiB: Final = 1024
MiB: Final = 1024 * KiB

# The length prefix is 4 bytes, so no frame can be larger than this whatever the configured cap.
MAX_FRAME_SIZE: Final = 2**32 - 1
# Smallest cap a configuration may set: an error answer must always fit.
MIN_FRAME_CAP: Final = 4 * KiB

DEFAULT_FRAME_CAPS: Final[Mapping[ProtocolId, int]] = MappingProxyType(
    {
        QUOTE: 64 * KiB,
        INFER: 16 * MiB,
        MODEL: 256 * MiB,
        EVIDENCE: 16 * MiB,
    }
)

# The header "type" a request must carry on each protocol; anything else is answered MALFORMED.
REQUEST_TYPES: Final[Mapping[ProtocolId, str]] = MappingProxyType(
    {
        QUOTE: "quote",
        INFER: "infer",
        MODEL: "model",
        EVIDENCE: "evidence",
    }
)
