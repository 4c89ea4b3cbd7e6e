"""The account seam: who signs transactions, vouchers and receipts.

`Signer` is the Protocol the chain client needs (an address and transaction signing), so a local key, a
keystore or a remote signer can be swapped. `LocalSigner` holds a secp256k1 key in memory, loaded from an
eth_account keystore file (`signer_from_keystore`), created fresh into one (`create_keystore`), or taken from
a hex string in clear (`unsafe_signer_from_hex`: the key passes through argv, env or code, so only for
throwaway test keys and devnets). Keys are never logged, printed or put into exception messages.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.chain.eip712 import ReceiptSigner, VoucherSigner
from market.errors import MarketConfigError

log = logging.getLogger(__name__)


@runtime_checkable
class Signer(Protocol):
    """Signs transactions for one address."""

    @property
    def address(self) -> str: ...

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        """The raw signed transaction, ready for eth_sendRawTransaction."""
        ...


class LocalSigner:
    """A key held in this process."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    def __repr__(self) -> str:
        return f"LocalSigner(address={self.address})"

    @classmethod
    def generate(cls) -> LocalSigner:
        """A fresh random key that lives only in memory (store it with to_keystore)."""
        return cls(Account.create())

    @property
    def address(self) -> str:
        return self._account.address

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        return bytes(self._account.sign_transaction(tx).raw_transaction)

    def voucher_signer(self, chain_id: int, escrow: str) -> VoucherSigner:
        """A fast voucher signer for this key (the client side of payments)."""
        return VoucherSigner(bytes(self._account.key), chain_id, escrow)

    def receipt_signer(self, chain_id: int, disputes: str) -> ReceiptSigner:
        """A fast receipt signer for this key (an expert node's hot signer)."""
        return ReceiptSigner(bytes(self._account.key), chain_id, disputes)

    def unsafe_private_key(self) -> bytes:
        """The raw key. Only for handing it to another in-process signer; never log or store it in clear."""
        return bytes(self._account.key)

    def to_keystore(
        self, path: str | Path, password: str, *, kdf: str = "scrypt", iterations: int | None = None
    ) -> Path:
        """Writes this key encrypted with `password` to `path` (mode 0600) and returns the path."""
        return _write_keystore(
            Path(path), Account.encrypt(self._account.key, password, kdf=kdf, iterations=iterations)
        )


def unsafe_signer_from_hex(private_key_hex: str) -> LocalSigner:
    """A signer from a key written in clear (0x-prefixed or bare hex). Throwaway keys only."""
    text = private_key_hex.strip()
    body = text[2:] if text.lower().startswith("0x") else text
    if len(body) != 64:
        raise MarketConfigError("a private key must be 32 bytes written as 64 hex digits")
    try:
        return LocalSigner(Account.from_key(bytes.fromhex(body)))
    except ValueError:
        raise MarketConfigError("the private key is not valid hex or not a valid secp256k1 key") from None


def signer_from_keystore(path: str | Path, password: str) -> LocalSigner:
    """A signer from an eth_account (Web3 Secret Storage) keystore file."""
    path = Path(path).expanduser()
    try:
        keyfile = json.loads(path.read_text())
    except FileNotFoundError:
        raise MarketConfigError(f"keystore {path} does not exist; check the path") from None
    except (OSError, ValueError) as exc:
        raise MarketConfigError(f"keystore {path} is not a readable JSON keystore: {exc}") from None
    try:
        key = Account.decrypt(keyfile, password)
    except ValueError:
        raise MarketConfigError(f"cannot decrypt keystore {path}: wrong password or corrupted file") from None
    except (KeyError, TypeError):
        raise MarketConfigError(f"{path} is not an eth_account keystore") from None
    signer = LocalSigner(Account.from_key(key))
    log.debug("loaded keystore %s for %s", path, signer.address)
    return signer


def create_keystore(
    path: str | Path, password: str, *, kdf: str = "scrypt", iterations: int | None = None
) -> LocalSigner:
    """Generates a new key, writes it encrypted to `path` (refusing to overwrite) and returns its signer.

    `kdf`/`iterations` default to eth_account's scrypt settings; tests pass a cheap pbkdf2 count.
    """
    path = Path(path).expanduser()
    if path.exists():
        raise MarketConfigError(f"{path} already exists; refusing to overwrite a keystore")
    if not password:
        raise MarketConfigError("a keystore needs a non-empty password")
    signer = LocalSigner.generate()
    signer.to_keystore(path, password, kdf=kdf, iterations=iterations)
    log.info("created keystore %s for %s", path, signer.address)
    return signer


def password_from_env(var: str) -> str:
    """The keystore password held in environment variable `var`."""
    value = os.environ.get(var)
    if value is None:
        raise MarketConfigError(f"environment variable {var} (the keystore password) is not set")
    return value


def _write_keystore(path: Path, keyfile: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keyfile, fh)
    return path
