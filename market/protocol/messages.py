"""The messages of docs/protocol.md: body encoding, one frozen dataclass per message, error codes.

A body is a 4-byte big-endian header length H, H bytes of UTF-8 JSON (an object with a `"type"`), then
the binary payload. Parsing is strict where a mistake could cost money or hide an attack: hex strings
have exact lengths, amounts are decimal strings (wei does not fit a JSON double), integers are real JSON
integers (never `true`), duplicate JSON keys are refused, and a message that carries no payload must not
have one. Unknown extra header fields are ignored so that a minor protocol revision can add fields.
Every failure raises MalformedMessageError with a message that names the field. No torch, no I/O.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final, TypeAlias

from market.errors import ExpertBusyError, MalformedMessageError, RemoteError
from market.protocol.specs import (
    TensorSchema,
    TensorSpec,
    payload_size,
    schema_from_json,
    specs_from_json,
)
from market.types import Receipt, SignedReceipt, SignedVoucher, Voucher

HEADER_LENGTH_SIZE: Final = 4
MAX_HEADER_SIZE: Final = 1024 * 1024
MAX_ERROR_TEXT: Final = 4096
MAX_UINT256: Final = 2**256 - 1
MAX_ID: Final = 2**63 - 1
SIGNATURE_SIZE: Final = 65

MESSAGE_TYPES: Final[frozenset[str]] = frozenset({"quote", "infer", "result", "error", "model", "evidence"})

_HEX_RE: Final = re.compile(r"0x[0-9a-fA-F]*")
_AMOUNT_RE: Final = re.compile(r"0|[1-9][0-9]{0,77}")
_ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_ID_KEY_RE: Final = re.compile(r"0|[1-9][0-9]{0,18}")

Header: TypeAlias = dict[str, Any]


class ErrorCode(enum.StrEnum):
    """Codes of an `error` answer (docs/protocol.md, "Error codes")."""

    MALFORMED = "MALFORMED"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    UNKNOWN_EXPERT = "UNKNOWN_EXPERT"
    BAD_INPUT = "BAD_INPUT"
    BAD_VOUCHER = "BAD_VOUCHER"
    VOUCHER_TOO_LOW = "VOUCHER_TOO_LOW"
    INSUFFICIENT_DEPOSIT = "INSUFFICIENT_DEPOSIT"
    BUSY = "BUSY"
    DEADLINE = "DEADLINE"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL = "INTERNAL"


# --------------------------------------------------------------------------------------------------
# body


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Two parsers could pick different values for a duplicated key: refuse the ambiguity.
            raise MalformedMessageError(f"header repeats the key {key!r}")
        obj[key] = value
    return obj


def encode_body(header: Mapping[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
    """Header length, JSON header, payload. The header must be an object with a known `type`."""
    if not isinstance(header, Mapping):
        raise MalformedMessageError(f"header must be a mapping, got {type(header).__name__}")
    kind = header.get("type")
    if kind not in MESSAGE_TYPES:
        raise MalformedMessageError(f"header type {kind!r} is not one of {sorted(MESSAGE_TYPES)}")
    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"header cannot be encoded as JSON: {exc}") from exc
    if len(raw) > MAX_HEADER_SIZE:
        raise MalformedMessageError(f"header of {len(raw)} bytes is over the limit of {MAX_HEADER_SIZE}")
    return b"".join((len(raw).to_bytes(HEADER_LENGTH_SIZE, "big"), raw, payload))


_JSON_STRING = re.compile(rb'"(?:[^"\\\\]|\\\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
MAX_HEADER_BRACKETS: Final = 8192
MAX_HEADER_DEPTH: Final = 32


def _check_nesting(raw: bytes) -> None:
    """Refuse deeply nested headers before parsing: the C JSON decoder recurses once per level and a
    header of 100,000 nested arrays can overflow the C stack (a crash, not an exception) when the
    interpreter's recursion limit has been raised. No message of the protocol nests more than a few levels."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_HEADER_DEPTH:
        return
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) > MAX_HEADER_BRACKETS:
        raise MalformedMessageError(f"header has over {MAX_HEADER_BRACKETS} arrays and objects")
    depth = 0
    for b in brackets:
        if b in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_HEADER_DEPTH:
                raise MalformedMessageError(f"header nests deeper than {MAX_HEADER_DEPTH} levels")
        else:
            depth -= 1


def decode_body(body: bytes | bytearray | memoryview) -> tuple[Header, bytes]:
    """Split a frame body into (header, payload); the header is a JSON object with a known `type`."""
    view = memoryview(body)
    if len(view) < HEADER_LENGTH_SIZE:
        raise MalformedMessageError(f"body of {len(view)} bytes is shorter than its header length field")
    size = int.from_bytes(view[:HEADER_LENGTH_SIZE], "big")
    if size > len(view) - HEADER_LENGTH_SIZE:
        raise MalformedMessageError(
            f"header length {size} is more than the {len(view) - HEADER_LENGTH_SIZE} bytes that follow"
        )
    if size > MAX_HEADER_SIZE:
        raise MalformedMessageError(f"header of {size} bytes is over the limit of {MAX_HEADER_SIZE}")
    raw = bytes(view[HEADER_LENGTH_SIZE : HEADER_LENGTH_SIZE + size])
    _check_nesting(raw)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except MalformedMessageError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: a header of deeply nested arrays; ValueError includes over-long integers.
        raise MalformedMessageError(f"header is not valid UTF-8 JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise MalformedMessageError(f"header must be a JSON object, got {type(header).__name__}")
    kind = header.get("type")
    if not isinstance(kind, str):
        raise MalformedMessageError('header has no "type" string')
    if kind not in MESSAGE_TYPES:
        raise MalformedMessageError(f"unknown message type {kind[:64]!r}")
    return header, bytes(view[HEADER_LENGTH_SIZE + size :])


# --------------------------------------------------------------------------------------------------
# field parsing


def _field(header: Mapping[str, Any], key: str, where: str | None = None) -> Any:
    try:
        return header[key]
    except KeyError:
        place = where or f"{header.get('type')} message"
        raise MalformedMessageError(f"{place}: missing field {key!r}") from None


def parse_hex(value: object, size: int, name: str) -> bytes:
    """`0x` followed by exactly 2*size hex digits."""
    if not isinstance(value, str) or _HEX_RE.fullmatch(value) is None or len(value) != 2 + 2 * size:
        raise MalformedMessageError(
            f"{name} must be 0x followed by {2 * size} hex digits, got {str(value)[:80]!r}"
        )
    return bytes.fromhex(value[2:])


def _opt_hex(value: object, size: int, name: str) -> bytes | None:
    return None if value is None else parse_hex(value, size, name)


def parse_int(value: object, name: str, *, low: int = 0, high: int = MAX_ID) -> int:
    """A JSON integer within [low, high]; booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedMessageError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise MalformedMessageError(f"{name} must be within {low}..{high}, got {value}")
    return value


def parse_amount(value: object, name: str) -> int:
    """A wei amount: a decimal string without sign or leading zeros, at most 2**256-1."""
    if not isinstance(value, str) or _AMOUNT_RE.fullmatch(value) is None:
        raise MalformedMessageError(f"{name} must be a decimal string of wei, got {str(value)[:80]!r}")
    amount = int(value)
    if amount > MAX_UINT256:
        raise MalformedMessageError(f"{name} is larger than 2**256-1")
    return amount


def parse_address(value: object, name: str) -> str:
    if not isinstance(value, str) or _ADDRESS_RE.fullmatch(value) is None:
        raise MalformedMessageError(
            f"{name} must be a 0x-prefixed 20-byte hex address, got {str(value)[:80]!r}"
        )
    return value


def _parse_float(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise MalformedMessageError(f"{name} must be a finite non-negative number, got {value!r:.40}")
    return float(value)


def _parse_object(value: object, name: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedMessageError(f"{name} must be a JSON object, got {type(value).__name__}")
    return MappingProxyType(value)


def _no_payload(kind: str, payload: bytes) -> None:
    if payload:
        raise MalformedMessageError(f"{kind} message carries no payload, got {len(payload)} bytes")


def _check_tensor_payload(kind: str, specs: Sequence[TensorSpec], payload: bytes) -> None:
    expected = payload_size(specs)
    if expected != len(payload):
        raise MalformedMessageError(
            f"{kind} message: tensors need {expected} payload bytes, the payload has {len(payload)}"
        )


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _check_size(data: bytes, size: int, name: str) -> None:
    if not isinstance(data, (bytes, bytearray)) or len(data) != size:
        raise MalformedMessageError(f"{name} must be {size} bytes")


# --------------------------------------------------------------------------------------------------
# messages


class _Message:
    """Shared plumbing: a message is a header plus an optional payload."""

    __slots__ = ()
    TYPE: ClassVar[str]

    def to_header(self) -> Header:
        raise NotImplementedError

    @property
    def body_payload(self) -> bytes:
        return getattr(self, "payload", b"")

    def to_body(self) -> bytes:
        return encode_body(self.to_header(), self.body_payload)

    @classmethod
    def from_body(cls, body: bytes | bytearray | memoryview) -> Any:
        header, payload = decode_body(body)
        return cls.from_header(header, payload)

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> Any:
        raise NotImplementedError

    @classmethod
    def _check_type(cls, header: Mapping[str, Any]) -> None:
        if header.get("type") != cls.TYPE:
            raise MalformedMessageError(f"expected a {cls.TYPE!r} message, got {header.get('type')!r:.40}")


@dataclass(frozen=True, slots=True)
class QuoteRequest(_Message):
    """Ask a node for its experts, prices, load and the caller's last voucher amounts."""

    TYPE: ClassVar[str] = "quote"
    client: str | None = None
    model_hash: bytes | None = None

    def to_header(self) -> Header:
        return {
            "type": self.TYPE,
            "client": self.client,
            "model_hash": None if self.model_hash is None else _hex(self.model_hash),
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> QuoteRequest:
        cls._check_type(header)
        _no_payload(cls.TYPE, payload)
        client = header.get("client")
        return cls(
            client=None if client is None else parse_address(client, "client"),
            model_hash=_opt_hex(header.get("model_hash"), 32, "model_hash"),
        )


@dataclass(frozen=True, slots=True)
class ExpertQuote:
    """One expert a node serves, as a quote answer lists it."""

    expert_id: int
    model_hash: bytes
    price: int
    inputs: tuple[TensorSchema, ...]
    outputs: tuple[TensorSchema, ...]
    tolerance: Mapping[str, Any]
    max_batch: int

    def to_json(self) -> dict[str, Any]:
        return {
            "expert_id": self.expert_id,
            "model_hash": _hex(self.model_hash),
            "price": str(self.price),
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "tolerance": dict(self.tolerance),
            "max_batch": self.max_batch,
        }

    @classmethod
    def from_json(cls, obj: object) -> ExpertQuote:
        if not isinstance(obj, dict):
            raise MalformedMessageError("quote: each entry of experts must be an object")
        return cls(
            expert_id=parse_int(_field(obj, "expert_id", "quote expert"), "expert_id"),
            model_hash=parse_hex(_field(obj, "model_hash", "quote expert"), 32, "model_hash"),
            price=parse_amount(_field(obj, "price", "quote expert"), "price"),
            inputs=schema_from_json(_field(obj, "inputs", "quote expert"), "inputs"),
            outputs=schema_from_json(_field(obj, "outputs", "quote expert"), "outputs"),
            tolerance=_parse_object(_field(obj, "tolerance", "quote expert"), "tolerance"),
            max_batch=parse_int(_field(obj, "max_batch", "quote expert"), "max_batch", low=1, high=2**31 - 1),
        )


@dataclass(frozen=True, slots=True)
class QuoteResponse(_Message):
    TYPE: ClassVar[str] = "quote"
    experts: tuple[ExpertQuote, ...]
    queue: int = 0
    # expert id -> the latest cumulative voucher amount the node holds from the asking client
    cumulative: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))

    def to_header(self) -> Header:
        return {
            "type": self.TYPE,
            "experts": [e.to_json() for e in self.experts],
            "queue": self.queue,
            "cumulative": {str(k): str(v) for k, v in self.cumulative.items()},
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> QuoteResponse:
        cls._check_type(header)
        _no_payload(cls.TYPE, payload)
        experts = _field(header, "experts")
        if not isinstance(experts, list):
            raise MalformedMessageError("quote: experts must be a list")
        raw_cumulative = _field(header, "cumulative")
        if not isinstance(raw_cumulative, dict):
            raise MalformedMessageError("quote: cumulative must be an object of expert id -> wei")
        cumulative: dict[int, int] = {}
        for key, value in raw_cumulative.items():
            if _ID_KEY_RE.fullmatch(key) is None:
                raise MalformedMessageError(f"quote: cumulative key {key[:40]!r} is not an expert id")
            cumulative[parse_int(int(key), "cumulative key")] = parse_amount(value, f"cumulative[{key}]")
        return cls(
            experts=tuple(ExpertQuote.from_json(e) for e in experts),
            queue=parse_int(_field(header, "queue"), "queue", high=2**31 - 1),
            cumulative=MappingProxyType(cumulative),
        )


def _voucher_to_json(voucher: SignedVoucher) -> dict[str, Any]:
    return {
        "client": voucher.voucher.client,
        "expert_id": voucher.voucher.expert_id,
        "cumulative_amount": str(voucher.voucher.cumulative_amount),
        "signature": _hex(voucher.signature),
    }


def _voucher_from_json(obj: object) -> SignedVoucher:
    if not isinstance(obj, dict):
        raise MalformedMessageError("infer: voucher must be an object")
    return SignedVoucher(
        voucher=Voucher(
            client=parse_address(_field(obj, "client", "voucher"), "voucher.client"),
            expert_id=parse_int(_field(obj, "expert_id", "voucher"), "voucher.expert_id"),
            cumulative_amount=parse_amount(
                _field(obj, "cumulative_amount", "voucher"), "voucher.cumulative_amount"
            ),
        ),
        signature=parse_hex(_field(obj, "signature", "voucher"), SIGNATURE_SIZE, "voucher.signature"),
    )


def receipt_to_json(receipt: SignedReceipt) -> dict[str, Any]:
    """The JSON form of a signed receipt: on the wire, in the client's evidence files and in the gateway."""
    r = receipt.receipt
    return {
        "expert_id": r.expert_id,
        "model_hash": _hex(r.model_hash),
        "request_id": _hex(r.request_id),
        "input_hash": _hex(r.input_hash),
        "output_hash": _hex(r.output_hash),
        "price": str(r.price),
        "signature": _hex(receipt.signature),
    }


def receipt_from_json(obj: object) -> SignedReceipt:
    """Parses `receipt_to_json`'s form (MalformedMessageError, a ValueError, on anything else)."""
    if not isinstance(obj, dict):
        raise MalformedMessageError("result: receipt must be an object")
    return SignedReceipt(
        receipt=Receipt(
            expert_id=parse_int(_field(obj, "expert_id", "receipt"), "receipt.expert_id"),
            model_hash=parse_hex(_field(obj, "model_hash", "receipt"), 32, "receipt.model_hash"),
            request_id=parse_hex(_field(obj, "request_id", "receipt"), 32, "receipt.request_id"),
            input_hash=parse_hex(_field(obj, "input_hash", "receipt"), 32, "receipt.input_hash"),
            output_hash=parse_hex(_field(obj, "output_hash", "receipt"), 32, "receipt.output_hash"),
            price=parse_amount(_field(obj, "price", "receipt"), "receipt.price"),
        ),
        signature=parse_hex(_field(obj, "signature", "receipt"), SIGNATURE_SIZE, "receipt.signature"),
    )


@dataclass(frozen=True, slots=True)
class InferRequest(_Message):
    """A paid call: input tensors (specs in the header, bytes in the payload) and a cumulative voucher."""

    TYPE: ClassVar[str] = "infer"
    request_id: bytes
    expert_id: int
    model_hash: bytes
    tensors: tuple[TensorSpec, ...]
    voucher: SignedVoucher
    deadline_ms: int
    payload: bytes = b""

    def to_header(self) -> Header:
        _check_size(self.request_id, 32, "request_id")
        return {
            "type": self.TYPE,
            "request_id": _hex(self.request_id),
            "expert_id": self.expert_id,
            "model_hash": _hex(self.model_hash),
            "tensors": [s.to_json() for s in self.tensors],
            "voucher": _voucher_to_json(self.voucher),
            "deadline_ms": self.deadline_ms,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> InferRequest:
        cls._check_type(header)
        tensors = specs_from_json(_field(header, "tensors"))
        _check_tensor_payload(cls.TYPE, tensors, payload)
        return cls(
            request_id=parse_hex(_field(header, "request_id"), 32, "request_id"),
            expert_id=parse_int(_field(header, "expert_id"), "expert_id"),
            model_hash=parse_hex(_field(header, "model_hash"), 32, "model_hash"),
            tensors=tensors,
            voucher=_voucher_from_json(_field(header, "voucher")),
            deadline_ms=parse_int(_field(header, "deadline_ms"), "deadline_ms", high=2**31 - 1),
            payload=bytes(payload),
        )


@dataclass(frozen=True, slots=True)
class InferResult(_Message):
    """A node's answer to an infer request: output tensors and the signed receipt that binds them."""

    TYPE: ClassVar[str] = "result"
    request_id: bytes
    tensors: tuple[TensorSpec, ...]
    receipt: SignedReceipt
    compute_ms: float
    payload: bytes = b""

    def to_header(self) -> Header:
        return {
            "type": self.TYPE,
            "request_id": _hex(self.request_id),
            "tensors": [s.to_json() for s in self.tensors],
            "receipt": receipt_to_json(self.receipt),
            "compute_ms": self.compute_ms,
        }

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> InferResult:
        cls._check_type(header)
        tensors = specs_from_json(_field(header, "tensors"))
        _check_tensor_payload(cls.TYPE, tensors, payload)
        return cls(
            request_id=parse_hex(_field(header, "request_id"), 32, "request_id"),
            tensors=tensors,
            receipt=receipt_from_json(_field(header, "receipt")),
            compute_ms=_parse_float(_field(header, "compute_ms"), "compute_ms"),
            payload=bytes(payload),
        )


@dataclass(frozen=True, slots=True)
class ErrorMessage(_Message):
    """A refusal or failure; `cumulative` (VOUCHER_TOO_LOW) is the amount the node holds."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str = ""
    request_id: bytes | None = None
    cumulative: int | None = None

    def to_header(self) -> Header:
        header: Header = {"type": self.TYPE, "code": str(self.code), "message": self.message[:MAX_ERROR_TEXT]}
        if self.request_id is not None:
            header["request_id"] = _hex(self.request_id)
        if self.cumulative is not None:
            header["cumulative"] = str(self.cumulative)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> ErrorMessage:
        cls._check_type(header)
        _no_payload(cls.TYPE, payload)
        code = _field(header, "code")
        try:
            parsed = ErrorCode(code)
        except ValueError:
            raise MalformedMessageError(f"error: unknown code {str(code)[:40]!r}") from None
        message = header.get("message", "")
        if not isinstance(message, str) or len(message) > MAX_ERROR_TEXT:
            raise MalformedMessageError(
                f"error: message must be a string of at most {MAX_ERROR_TEXT} characters"
            )
        cumulative = header.get("cumulative")
        return cls(
            code=parsed,
            message=message,
            request_id=_opt_hex(header.get("request_id"), 32, "request_id"),
            cumulative=None if cumulative is None else parse_amount(cumulative, "cumulative"),
        )

    def to_exception(self) -> RemoteError:
        """The exception a caller raises for this answer; `.error` keeps the message (and its cumulative)."""
        cls = ExpertBusyError if self.code == ErrorCode.BUSY else RemoteError
        exc = cls(str(self.code), self.message)
        exc.error = self  # type: ignore[attr-defined]
        return exc


@dataclass(frozen=True, slots=True)
class ModelRequest(_Message):
    TYPE: ClassVar[str] = "model"
    model_hash: bytes

    def to_header(self) -> Header:
        return {"type": self.TYPE, "model_hash": _hex(self.model_hash)}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> ModelRequest:
        cls._check_type(header)
        _no_payload(cls.TYPE, payload)
        return cls(model_hash=parse_hex(_field(header, "model_hash"), 32, "model_hash"))


@dataclass(frozen=True, slots=True)
class ModelResponse(_Message):
    """A model: its manifest in the header, the weights file as the payload. Check the hash before use."""

    TYPE: ClassVar[str] = "model"
    manifest: Mapping[str, Any]
    payload: bytes = b""

    def to_header(self) -> Header:
        return {"type": self.TYPE, "manifest": dict(self.manifest)}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> ModelResponse:
        cls._check_type(header)
        return cls(manifest=_parse_object(_field(header, "manifest"), "manifest"), payload=bytes(payload))


@dataclass(frozen=True, slots=True)
class EvidenceRequest(_Message):
    TYPE: ClassVar[str] = "evidence"
    hash: bytes

    def to_header(self) -> Header:
        return {"type": self.TYPE, "hash": _hex(self.hash)}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> EvidenceRequest:
        cls._check_type(header)
        _no_payload(cls.TYPE, payload)
        return cls(hash=parse_hex(_field(header, "hash"), 32, "hash"))


@dataclass(frozen=True, slots=True)
class EvidenceResponse(_Message):
    TYPE: ClassVar[str] = "evidence"
    hash: bytes
    tensors: tuple[TensorSpec, ...]
    payload: bytes = b""

    def to_header(self) -> Header:
        return {"type": self.TYPE, "hash": _hex(self.hash), "tensors": [s.to_json() for s in self.tensors]}

    @classmethod
    def from_header(cls, header: Mapping[str, Any], payload: bytes = b"") -> EvidenceResponse:
        cls._check_type(header)
        tensors = specs_from_json(_field(header, "tensors"))
        _check_tensor_payload(cls.TYPE, tensors, payload)
        return cls(
            hash=parse_hex(_field(header, "hash"), 32, "hash"), tensors=tensors, payload=bytes(payload)
        )


Request: TypeAlias = QuoteRequest | InferRequest | ModelRequest | EvidenceRequest
Response: TypeAlias = QuoteResponse | InferResult | ErrorMessage | ModelResponse | EvidenceResponse

_REQUESTS: Final[Mapping[str, Any]] = MappingProxyType(
    {"quote": QuoteRequest, "infer": InferRequest, "model": ModelRequest, "evidence": EvidenceRequest}
)
_RESPONSES: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "quote": QuoteResponse,
        "result": InferResult,
        "error": ErrorMessage,
        "model": ModelResponse,
        "evidence": EvidenceResponse,
    }
)


def decode_request(header: Mapping[str, Any], payload: bytes = b"") -> Request:
    """The request message for a decoded header (MalformedMessageError if it is not a request)."""
    cls = _REQUESTS.get(header.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise MalformedMessageError(f"{header.get('type')!r:.40} is not a request type")
    return cls.from_header(header, payload)  # type: ignore[no-any-return]


def decode_response(header: Mapping[str, Any], payload: bytes = b"") -> Response:
    """The answer message for a decoded header (MalformedMessageError if it is not an answer type)."""
    cls = _RESPONSES.get(header.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise MalformedMessageError(f"{header.get('type')!r:.40} is not an answer type")
    return cls.from_header(header, payload)  # type: ignore[no-any-return]


def error_header(
    code: ErrorCode, message: str, request_id: object = None, cumulative: int | None = None
) -> Header:
    """An error answer header; `request_id` is echoed only when it is a well-formed 32-byte hex id."""
    rid: bytes | None = None
    if isinstance(request_id, bytes) and len(request_id) == 32:
        rid = request_id
    elif isinstance(request_id, str):
        try:
            rid = parse_hex(request_id, 32, "request_id")
        except MalformedMessageError:
            rid = None
    return ErrorMessage(code=code, message=message, request_id=rid, cumulative=cumulative).to_header()
