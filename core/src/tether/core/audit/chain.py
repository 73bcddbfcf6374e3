"""The keyed hash chain that makes the audit tamper-evident.

Each event's hash (keyed BLAKE2b-256) covers its content, the hash of the previous event of its session and the
hash of the previous event in the whole log. Editing an event breaks its own hash; deleting or
moving one breaks the link of the event after it. The key keeps someone with write access to
the database from recomputing the chain after an edit.
"""

from __future__ import annotations

import hashlib
import json

from ..keys import mac_key
from .events import NewEvent

GENESIS = "0" * 64
#: Recorded in each store: a log is only ever verified by the format it was written in.
HASH_FORMAT = "blake2b-256/json-array/v1"


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event_hash(key: bytes, event: NewEvent, seq: int, prev_hash: str, log_prev: str) -> str:
    # A JSON array encodes the fields unambiguously (no two field lists give the same text).
    message = _ENCODE(
        [
            event.event_id,
            event.ts_us,
            event.session_id,
            seq,
            event.kind,
            event.agent,
            event.user_id,
            event.tenant,
            event.tool,
            event.parent_id,
            event.verdict,
            event.data,
            prev_hash,
            log_prev,
        ]
    )
    return hashlib.blake2b(message.encode("utf-8", "surrogatepass"), key=mac_key(key), digest_size=32).hexdigest()
