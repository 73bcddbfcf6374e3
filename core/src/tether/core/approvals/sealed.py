"""The real arguments of a pending request, sealed for the people who answer it.

The audit and the queue's ``request`` column keep only previews (secrets as keyed
fingerprints), which are safe to show anywhere but do not let a person check what they
approve: which IBAN a payment goes to, who an email reaches. So the queue also keeps the call's
real arguments, encrypted, while the request is pending, and clears them in the transaction
that answers, expires or applies it.

The encryption is AES-256-GCM (authenticated: a changed byte is detected, not decrypted) under a
key derived from the store's key with HKDF-SHA256 and a label of its own, so the key behind
fingerprints and the hash chain is never used to encrypt. The entry's id is the associated data:
a ciphertext copied onto another request does not open there.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from dataclasses import dataclass
from typing import Any

from ..values import Plain, canonical_json

PREFIX = "v1:"  # the format of a sealed value: v1:base64url(nonce || ciphertext and tag)
INFO = b"tether approvals: sealed arguments v1"
MAX_SEALED = 1024 * 1024  # bytes of JSON: larger arguments are not kept, and the page says so
_NONCE = 12


class SealError(Exception):
    """A sealed value that does not open: another key, a changed byte, another entry's value."""


@dataclass(frozen=True)
class Revealed:
    """What a person may be shown of a request's real arguments: the arguments, or why not."""

    args: Any = None
    note: str = ""  # empty when ``shown``
    shown: bool = False


@functools.lru_cache(maxsize=8)
def sealing_key(key: bytes) -> bytes:
    """The AES-256 key for sealed arguments, derived from the store's key (HKDF-SHA256)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(key)


ARGS, EDITED = "args", "edited"  # what a sealed value is: the call's arguments, or an approver's edits


def _associated(entry_id: str, purpose: str) -> bytes:
    return f"tether approval {entry_id} {purpose}".encode()


def seal(key: bytes, entry_id: str, args: Plain, purpose: str = ARGS) -> str:
    """``args`` encrypted for the entry ``entry_id``. The call's arguments larger than
    :data:`MAX_SEALED` are replaced by a note of their size (sealed all the same); an approver's
    edits are sealed whole (the call runs with them)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data = canonical_json({"args": args}).encode()
    if len(data) > MAX_SEALED and purpose == ARGS:
        data = canonical_json({"too_large": len(data)}).encode()
    nonce = secrets.token_bytes(_NONCE)
    sealed = AESGCM(sealing_key(key)).encrypt(nonce, data, _associated(entry_id, purpose))
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unseal(key: bytes, entry_id: str, value: str, purpose: str = ARGS) -> Revealed:
    """The real arguments in ``value``, or a note saying why they cannot be shown. Never raises
    for a bad value: a page must still show the preview."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        if not value.startswith(PREFIX):
            raise SealError("unknown format")
        raw = base64.urlsafe_b64decode(value[len(PREFIX) :].encode("ascii"))
        if len(raw) <= _NONCE:
            raise SealError("too short")
        data = AESGCM(sealing_key(key)).decrypt(raw[:_NONCE], raw[_NONCE:], _associated(entry_id, purpose))
        content = json.loads(data)
    except (SealError, InvalidTag, ValueError, UnicodeError):
        return Revealed(
            note="the real values cannot be decrypted (another key, or the stored value was changed); "
            "only the masked form is shown"
        )
    if "too_large" in content:
        size = content["too_large"]
        return Revealed(note=f"the arguments ({size} bytes) are too large to keep; only the masked form is shown")
    return Revealed(content["args"], shown=True)
