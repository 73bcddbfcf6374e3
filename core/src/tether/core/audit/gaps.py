"""What monitor mode could not record while the store was down.

Monitor mode watches an agent without changing what it does, so a store that fails must not
break the agent either: the events are counted instead of written, and the first write that
succeeds again records one ``audit.gap`` event saying how many were lost, over what span of
time, and why. An enforcing guard never gets here: there, a call that cannot be recorded is
denied.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("tether")


@dataclass(frozen=True)
class Gap:
    missed: int  # events not recorded
    first_us: int  # when the first of them happened
    last_us: int  # and the last
    error: str  # the store's latest error

    def details(self) -> dict[str, object]:
        return {"missed": self.missed, "from_us": self.first_us, "to_us": self.last_us, "error": self.error}


class Gaps:
    """The events missed since the store last worked, for one guard (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Gap | None = None

    def missed(self, ts_us: int, error: str) -> None:
        """An event at ``ts_us`` could not be written because of ``error``."""
        self._add(Gap(1, ts_us, ts_us, error))

    def take(self) -> Gap | None:
        """The open gap, to be recorded with the next write (given back with :meth:`restore` if
        that write fails too)."""
        with self._lock:
            gap, self._open = self._open, None
            return gap

    def restore(self, gap: Gap) -> None:
        self._add(gap)

    def _add(self, gap: Gap) -> None:
        with self._lock:
            open_gap = self._open
            if open_gap is None:
                self._open = gap
                log.error("the audit store failed (%s): monitor mode goes on, counting what is not recorded", gap.error)
                return
            newest = gap if gap.last_us >= open_gap.last_us else open_gap
            self._open = Gap(
                open_gap.missed + gap.missed,
                min(open_gap.first_us, gap.first_us),
                newest.last_us,
                newest.error,
            )

    @staticmethod
    def recorded(gap: Gap) -> None:
        log.warning(
            "the audit store is back: %d event(s) were not recorded over %.1f s (recorded as an audit gap)",
            gap.missed,
            (gap.last_us - gap.first_us) / 1e6,
        )
