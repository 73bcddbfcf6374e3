"""The secret key behind fingerprints and the audit hash chain.

Fingerprints let an investigator match a value across events without the store holding the
value; the hash chain lets ``tether audit verify`` prove no event was edited. Both are keyed
(BLAKE2b in keyed mode, a MAC) so that someone who can write to the database cannot forge either. Give every
process of a fleet the same key through ``TETHER_KEY``; without it, a key file is created once
next to the SQLite store (mode 0600).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from pathlib import Path

from .errors import StoreError

KEY_ENV = "TETHER_KEY"
MIN_KEY_LENGTH = 16


def load_key(key_file: Path, *, create: bool = True) -> bytes:
    """The key from ``TETHER_KEY``, else from ``key_file`` (created on first use if ``create``)."""
    configured = os.environ.get(KEY_ENV)
    if configured is not None:
        if len(configured) < MIN_KEY_LENGTH:
            raise StoreError(f"{KEY_ENV} must be at least {MIN_KEY_LENGTH} characters long")
        return configured.encode("utf-8")
    try:
        return key_file.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            raise StoreError(f"no key at {key_file}: set {KEY_ENV} to the key this store was written with") from None
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return key_file.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


@functools.lru_cache(maxsize=8)
def mac_key(key: bytes) -> bytes:
    """The key as BLAKE2b takes it (at most 64 bytes): longer keys are hashed down first."""
    return key if len(key) <= 64 else hashlib.sha256(key).digest()


def key_id(key: bytes) -> str:
    """A public name for a key, so a store can tell the wrong key from a tampered log."""
    return hashlib.blake2b(b"tether key id", key=mac_key(key), digest_size=8).hexdigest()


def fingerprint(key: bytes, data: bytes) -> str:
    """A keyed fingerprint: equal values give equal fingerprints, without revealing the value."""
    return hashlib.blake2b(data, key=mac_key(key), digest_size=8).hexdigest()
