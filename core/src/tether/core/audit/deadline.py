"""Bounded time for every statement sent to a PostgreSQL store.

PostgreSQL's own ``statement_timeout`` and ``lock_timeout`` bound work the server does, but
not a silent network: with the connection open and nothing forwarded, a client blocks in
``recv`` for as long as TCP keeps the connection (minutes), and a decision waiting on it would
wait as long. A watchdog thread therefore shuts down the socket of any statement still running
past its deadline; the blocked call then fails at once with an error the store reports, and
the guard denies. The connection is discarded and the next statement opens a fresh one, so the
store recovers by itself when the server answers again.

Arming and disarming are a dict update under a lock, cheap enough for every statement; the
watchdog checks a few times per second, so a deadline is kept within a tenth of a second.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import StoreError

log = logging.getLogger("tether.store")

_CHECK_EVERY = 0.1  # seconds between the watchdog's looks at the armed statements


class Watchdog:
    """Shuts the sockets of statements that outlive their deadline (see the module's docstring)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, socket fd)
        self._cut_tokens: set[int] = set()  # statements cut off and not yet disarmed
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.expired = 0  # statements cut off so far, for tests and logs

    def arm(self, fileno: int, timeout: float | None = None) -> int:
        """Watch the socket ``fileno`` from now for ``timeout`` seconds (default: the store's); return a token."""
        token = next(self._tokens)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._lock:
            self._armed[token] = (deadline, fileno)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tether-store-watchdog", daemon=True)
                self._thread.start()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; return whether the statement ran past its deadline and was cut off."""
        with self._lock:
            self._armed.pop(token, None)
            if token in self._cut_tokens:
                self._cut_tokens.discard(token)
                return True
            return False

    def late_message(self, timeout: float | None = None) -> str:
        return f"the audit store did not answer within {self.timeout if timeout is None else timeout:g} s"

    @contextlib.contextmanager
    def bounded(self, dbapi_connection: Any, timeout: float | None = None) -> Iterator[None]:
        """Run the block with the connection's socket watched (a no-op for connections without one)."""
        fileno = socket_of(dbapi_connection)
        if fileno is None:
            yield
            return
        token = self.arm(fileno, timeout)
        try:
            yield
        except Exception as exc:
            if self.disarm(token):
                raise StoreError(self.late_message(timeout)) from exc
            raise
        finally:
            self.disarm(token)

    def _run(self) -> None:
        while not self._stopped.wait(_CHECK_EVERY):
            now = time.monotonic()
            with self._lock:
                late = [(token, fd) for token, (deadline, fd) in self._armed.items() if deadline <= now]
                for token, _ in late:
                    del self._armed[token]
                    self._cut_tokens.add(token)
            for _, fd in late:
                self._cut(fd)

    def _cut(self, fileno: int) -> None:
        """Shut the socket down for both directions: a call blocked on it returns with an error.
        A duplicate of the descriptor is shut, never closed under the driver's feet."""
        self.expired += 1
        log.error("the audit store did not answer in time: dropping its connection")
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fileno)) as sock:
            sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped.set()


def socket_of(dbapi_connection: Any) -> int | None:
    """The socket of a psycopg connection (through SQLAlchemy's wrapper or not), else None."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    pgconn = getattr(driver, "pgconn", None)
    if pgconn is None:
        return None
    try:
        fileno = pgconn.socket
    except Exception:  # noqa: BLE001 - a closed or broken connection has no socket to watch
        return None
    return fileno if isinstance(fileno, int) and fileno >= 0 else None
