"""Ed25519 signatures on checkpoints, so an auditor can check them without the store's key.

Optional: set ``TETHER_SIGNING_KEY`` to an Ed25519 private key in PEM (``openssl genpkey
-algorithm ed25519 -out signing.pem``) and install ``tether[signing]``. Each checkpoint then also
carries the public key and a signature; ``tether audit verify --public-key PUB.pem`` checks it
with the public key (``openssl pkey -in signing.pem -pubout -out signing.pub.pem``) only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import StoreError

SIGNING_KEY_ENV = "TETHER_SIGNING_KEY"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise StoreError(
            "Ed25519 checkpoint signatures need the cryptography package: pip install 'tether[signing]'"
        ) from None
    return serialization, ed25519


class Signer:
    """Signs with an Ed25519 private key."""

    def __init__(self, pem: bytes, where: str) -> None:
        serialization, ed25519 = _crypto()
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{where} is not an unencrypted PEM private key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise StoreError(f"{where} is not an Ed25519 key")
        self._key = key
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        self.public_key = key.public_key().public_bytes(*raw).hex()

    def sign(self, message: bytes) -> str:
        return str(self._key.sign(message).hex())


def signer_from_environment() -> Signer | None:
    """The signer ``TETHER_SIGNING_KEY`` names, if it is set."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if not path:
        return None
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {SIGNING_KEY_ENV} ({path}): {exc.strerror or exc}") from None
    return Signer(pem, f"{SIGNING_KEY_ENV} ({path})")


def public_key_from_pem(pem: bytes) -> str:
    """The raw public key (hex) of an Ed25519 public key in PEM."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise StoreError("not an Ed25519 public key")
    return str(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())


def valid_signature(public_key: str, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (hex) is ``public_key``'s (hex) over ``message``."""
    _, ed25519 = _crypto()
    from cryptography.exceptions import InvalidSignature

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(bytes.fromhex(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True
