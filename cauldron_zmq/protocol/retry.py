"""Retrying a failing save: when to try again and when to say so, as pure state.

A full disk or a read-only directory must neither flood the log nor make
each request pay for one more failed file creation.  :class:`Retry` is the
whole policy, apart from any file, clock or thread: the caller reports each
attempt's outcome with ``now`` and gets back the log line due (if any); it
asks :meth:`Retry.due` before attempting again.  Attempts follow a
:class:`~cauldron_zmq.backoff.Schedule` (0.1 s, 0.2 s, ... capped at 30 s
by default) and the log gets the first failure, then at most one line per
``log_every`` seconds with the count of failures since the last line, then
one line when it works again.
"""
from __future__ import annotations

from typing import Optional

from .backoff import Schedule

__all__ = ["Retry", "SAVE"]

#: Retries of a failed save: 0.1 s after the first failure, doubling up to 30 s.
SAVE = Schedule(0.1, 2.0, 30.0)
#: Seconds between two log lines about one continuing failure.
LOG_EVERY = 60.0


class Retry:
    """The retry and log schedule of one repeatedly failing operation."""

    def __init__(self, what: str, schedule: Schedule = SAVE, log_every: float = LOG_EVERY) -> None:
        self.what = what
        self.schedule = schedule
        self.log_every = float(log_every)
        self.failures = 0              # consecutive failures (0: working)
        self._since = 0.0              # time of the first of them
        self._unlogged = 0             # failures not yet counted in a log line
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def next_attempt(self) -> Optional[float]:
        """When the next attempt is due (None: not failing, attempt whenever needed)."""
        if not self.failures:
            return None
        return self._since + self.schedule.time_of(self.failures)

    def due(self, now: float) -> bool:
        """Whether an attempt may be made at ``now``."""
        at = self.next_attempt()
        return at is None or now >= at - 1e-9

    def failed(self, now: float, error: str) -> Optional[str]:
        """Record a failed attempt; the line to log now, or None."""
        if not self.failures:
            self._since = now
        self.failures += 1
        self._unlogged += 1
        if self.failures == 1:
            self._logged_at, self._unlogged = now, 0
            return (f"{self.what} failed: {error}; retrying in "
                    f"{self.schedule.delay(0):g} s, then less and less often")
        if now - self._logged_at >= self.log_every:
            count, self._logged_at, self._unlogged = self._unlogged, now, 0
            return (f"{self.what} still failing: {count} more failed attempt(s) in the last "
                    f"{self.log_every:g} s ({self.failures} since {now - self._since:.0f} s "
                    f"ago): {error}")
        return None

    def succeeded(self, now: float) -> Optional[str]:
        """Record a successful attempt; the line to log now, or None."""
        if not self.failures:
            return None
        line = (f"{self.what} works again after {self.failures} failed attempt(s) "
                f"over {now - self._since:.1f} s")
        self.failures, self._unlogged = 0, 0
        return line
