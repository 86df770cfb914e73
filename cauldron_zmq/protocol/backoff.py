"""Retry schedules as pure functions of time.

A client retries router look-ups (a service that is not up yet, a dispatcher
that moved); a router retries a blocked name, a dispatcher a refused
registration, both a failed save.  Reconnecting is not here: libzmq's own
reconnect (``RECONNECT_IVL``/``RECONNECT_IVL_MAX``, set in
:mod:`cauldron_zmq.transport`) does it.  Retry code is easy to get subtly
wrong when the schedule lives inside an I/O loop (a client once measured
resending only at 0 s and 7.65 s because each delay was added to the
*previous total* instead of the previous attempt), so the schedule is kept
here, apart from any socket, clock or thread, and unit-tested exactly.

A schedule is a sequence of attempt times measured from the start of the
retrying, ``0`` for the first attempt::

    >>> [Schedule(0.05, 2, 1.0).time_of(n) for n in range(8)]
    [0.0, 0.05, 0.15, 0.35, 0.75, 1.55, 2.55, 3.55]

The delay before attempt ``n + 1`` is ``min(cap, initial * factor ** n)``.
Callers keep ``(start, attempts)`` and ask :meth:`Schedule.time_of` or
:meth:`Schedule.due`; nothing here sleeps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Schedule", "LOOKUP"]

_SUM_LIMIT = 10000        # attempts summed one by one before the closed form is used


@dataclass(frozen=True)
class Schedule:
    """Exponential back-off: delays ``initial, initial*factor, ...`` capped at ``cap``."""

    initial: float = 0.05
    factor: float = 2.0
    cap: float = 1.0

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"initial delay must be positive, got {self.initial!r}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if not self.cap >= self.initial:
            raise ValueError(f"cap ({self.cap!r}) must be >= initial ({self.initial!r})")
        object.__setattr__(self, "_capped", self._capped_from())

    def _capped_from(self) -> float:
        """The first ``n`` whose uncapped delay reaches the cap (inf if never).

        Computed with a logarithm, then corrected for rounding: counting the
        doublings would take 10**8 steps for a factor like 1.0000001.
        """
        if self.initial >= self.cap:
            return 0
        if self.factor == 1:
            return math.inf
        k = max(0, math.ceil(math.log(self.cap / self.initial) / math.log(self.factor)))
        while k > 0 and self.initial * self.factor ** (k - 1) >= self.cap:
            k -= 1
        while self.initial * self.factor ** k < self.cap:
            k += 1
        return k

    def delay(self, n: int) -> float:
        """The wait between attempt ``n`` and attempt ``n + 1`` (``n`` from 0)."""
        if n < 0:
            raise ValueError(f"attempt number must be >= 0, got {n}")
        if n >= self._capped:            # type: ignore[attr-defined]  # no factor ** n overflow
            return float(self.cap)
        return float(min(self.cap, self.initial * self.factor ** n))

    def time_of(self, n: int) -> float:
        """When attempt ``n`` (0-based) is due, in seconds from the start.

        The delays are summed one by one (exact for the documented schedule
        after rounding to 1e-9 s); far into a long uncapped stretch the
        geometric series' closed form is used instead.
        """
        if n < 0:
            raise ValueError(f"attempt number must be >= 0, got {n}")
        k = self._capped                 # type: ignore[attr-defined]
        m = n if k == math.inf else min(n, int(k))
        if m <= _SUM_LIMIT:
            head = sum(self.delay(i) for i in range(m))
        elif self.factor == 1:
            head = m * self.initial
        else:
            head = self.initial * (self.factor ** m - 1) / (self.factor - 1)
        return round(head + (n - m) * self.cap, 9)

    def due(self, elapsed: float, attempts: int) -> bool:
        """Whether another attempt is due ``elapsed`` seconds after the start."""
        return elapsed >= self.time_of(attempts) - 1e-9


#: Router look-ups for a service that is not up yet or a dispatcher that moved.
LOOKUP = Schedule(0.05, 2.0, 1.0)
