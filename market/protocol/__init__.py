"""The market's wire protocol: protocol ids, framing, messages, tensor specs and hashing.

Nothing here does network I/O beyond reading and writing frames on a stream it is handed; the libp2p host
lives in market/transport.py. The tensor codec (market.protocol.codec) imports torch and is therefore not
imported here: `import market.protocol.codec` where tensors are needed.
"""

from market.protocol.framing import (
    FrameReader,
    IdleTimeoutError,
    StreamEndedError,
    read_frame,
    write_frame,
)
from market.protocol.hashing import keccak256, new_request_id, tensor_hash, tensors_hash
from market.protocol.ids import (
    ALL_PROTOCOLS,
    DEFAULT_FRAME_CAPS,
    EVIDENCE,
    INFER,
    MODEL,
    QUOTE,
    REQUEST_TYPES,
    ProtocolId,
)
from market.protocol.messages import (
    ErrorCode,
    ErrorMessage,
    EvidenceRequest,
    EvidenceResponse,
    ExpertQuote,
    InferRequest,
    InferResult,
    ModelRequest,
    ModelResponse,
    QuoteRequest,
    QuoteResponse,
    decode_body,
    decode_request,
    decode_response,
    encode_body,
)
from market.protocol.specs import TensorSchema, TensorSpec

__all__ = [
    "ALL_PROTOCOLS",
    "DEFAULT_FRAME_CAPS",
    "EVIDENCE",
    "INFER",
    "MODEL",
    "QUOTE",
    "REQUEST_TYPES",
    "ErrorCode",
    "ErrorMessage",
    "EvidenceRequest",
    "EvidenceResponse",
    "ExpertQuote",
    "FrameReader",
    "IdleTimeoutError",
    "InferRequest",
    "InferResult",
    "ModelRequest",
    "ModelResponse",
    "ProtocolId",
    "QuoteRequest",
    "QuoteResponse",
    "StreamEndedError",
    "TensorSchema",
    "TensorSpec",
    "decode_body",
    "decode_request",
    "decode_response",
    "encode_body",
    "keccak256",
    "new_request_id",
    "read_frame",
    "tensor_hash",
    "tensors_hash",
    "write_frame",
]
