"""Telling people that a request waits: a webhook sender for chat, paging or ticket systems.

Any callable taking an :class:`~tether.core.approvals.queue.Entry` can be passed to
``QueueApprover(notify=[...])``; this one posts the request as JSON to a URL, retrying with
backoff in the background so a slow or failing receiver never delays the agent or the wait.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping

from .queue import Entry

log = logging.getLogger("tether")


class WebhookNotifier:
    """POST ``{"id", "agent", "session_id", "tool", "arguments", "reason", "expires_us", "link"}``
    to ``url``; ``link`` is ``link_base + "/approvals/" + id`` when a page base URL is given."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        link_base: str | None = None,
        attempts: int = 4,
        backoff: float = 0.5,
        timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.headers, self.link_base = url, dict(headers or {}), link_base
        self.attempts, self.backoff, self.timeout, self._sleep = attempts, backoff, timeout, sleep

    def __call__(self, entry: Entry) -> None:
        body = {
            "id": entry.id,
            "agent": entry.agent,
            "session_id": entry.session_id,
            "tool": entry.tool,
            "arguments": entry.request.get("args"),
            "reason": entry.request.get("reason"),
            "expires_us": entry.expires_us,
            "link": f"{self.link_base.rstrip('/')}/approvals/{entry.id}" if self.link_base else None,
        }
        threading.Thread(target=self.send, args=(json.dumps(body).encode(),), daemon=True).start()

    def send(self, payload: bytes) -> bool:
        """Deliver, retrying failures; True once the receiver answered 2xx."""
        headers = {"Content-Type": "application/json", **self.headers}
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        return True
            except OSError as exc:
                log.warning("approval webhook attempt %d/%d failed: %s", attempt, self.attempts, exc)
            if attempt < self.attempts:
                self._sleep(self.backoff * 2 ** (attempt - 1))
        log.error("approval webhook gave up after %d attempts", self.attempts)
        return False
