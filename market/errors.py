"""The one exception tree of moe-market: every error a user can see derives from `MarketError`.

    MarketError
    ├── MarketConfigError (ValueError)       bad configuration: missing deployment file, bad key, bad URL
    ├── MarketInputError (ValueError)        bad input from the caller: wrong shape/dtype, unknown model, bad argument
    ├── ProtocolError                        a peer broke the wire protocol
    │   ├── FrameTooLargeError               a frame over the size cap
    │   └── MalformedMessageError (ValueError)
    ├── TransportError (ConnectionError)     dialing, streams, timeouts on the network
    │   └── PeerTimeoutError (TimeoutError)
    ├── RemoteError                          a node answered with an error code (see protocol.ErrorCode)
    │   └── ExpertBusyError
    ├── PaymentError                         vouchers and deposits
    │   ├── InsufficientDepositError
    │   └── VoucherRejectedError
    ├── SelectionError                       the gate found no expert that fits
    │   └── NoExpertError
    ├── VerificationError                    redundant answers did not reach a quorum
    ├── ModelError                           model packaging, hashing and loading
    │   └── ModelHashMismatchError
    └── ChainError                           talking to the chain
        └── ContractRevertError              a named custom error from a contract (see market.chain.errors)

User-facing messages say what was wrong and what to do. Exceptions also subclass the matching built-in
where one fits, so `except ValueError` keeps working for callers that expect it.
"""

from __future__ import annotations


class MarketError(Exception):
    """Root of every moe-market error."""


class MarketConfigError(MarketError, ValueError):
    """The configuration is missing or wrong."""


class MarketInputError(MarketError, ValueError):
    """The caller passed something the market cannot accept."""


class ProtocolError(MarketError):
    """A peer sent something that breaks the wire protocol."""


class FrameTooLargeError(ProtocolError):
    """A frame is larger than the cap for its protocol."""


class MalformedMessageError(ProtocolError, ValueError):
    """A frame could not be decoded into a message."""


class TransportError(MarketError, ConnectionError):
    """A network operation failed: dial, stream open, read or write."""


class PeerTimeoutError(TransportError, TimeoutError):
    """A peer did not answer in time."""


class RemoteError(MarketError):
    """A node answered a request with an error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ExpertBusyError(RemoteError):
    """The node is at capacity; try another expert or later."""


class PaymentError(MarketError):
    """A payment could not be made or was refused."""


class InsufficientDepositError(PaymentError):
    """The client's escrow balance does not cover the call; deposit more with `moe client deposit`."""


class VoucherRejectedError(PaymentError):
    """The node refused the voucher (signature, amount, escrow or chain)."""


class SelectionError(MarketError):
    """The gate could not choose experts for a request."""


class NoExpertError(SelectionError):
    """No registered expert fits the request (model, price, stake, liveness)."""


class VerificationError(MarketError):
    """Redundant answers disagreed and no group reached the quorum."""


class ModelError(MarketError):
    """A model could not be packed, hashed or loaded."""


class ModelHashMismatchError(ModelError):
    """Fetched model bytes do not hash to the modelHash they were asked for."""


class ChainError(MarketError):
    """A call to the chain failed."""


class ContractRevertError(ChainError):
    """A contract reverted with a named custom error.

    `name` is the Solidity error name (for example ``EscrowVoucherNotIncreasing``) and `args` its decoded values.
    """

    def __init__(self, name: str, args: dict[str, object] | None = None, message: str | None = None) -> None:
        self.name = name
        self.args_by_name = dict(args or {})
        detail = ", ".join(f"{k}={v}" for k, v in self.args_by_name.items())
        super().__init__(message or f"{name}({detail})")
