"""What a call returns and how long it may take: :class:`Task` and :func:`deadline`.

Also the names every other client module shares: the task states, where a
value came from (REPLY, FRESH, BROADCAST), and the two errors a caller of
any of them may meet first (UnknownKeyword, ServiceShutDown).
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Union

import zmq

from .. import protocol
from ..errors import CauldronError, TimeoutError

# Where a value came from (a user's reply, the client's own catch-up read, a
# broadcast): defined with the cache that decides what each may do; re-exported.
from ..protocol.cache import BROADCAST, FRESH, REPLY  # noqa: F401

log = logging.getLogger("cauldron_zmq.client")

PENDING, SUCCESS, ERROR = "pending", "success", "error"
_GRACE = 2.0                  # how long past its deadline a waiter trusts the I/O thread
_IDLE_TICK = 1.0              # an engine's timers are looked at least this often
_LAST_TRY = 0.05              # Service(wait=): the last look-up starts this long before the end
# Plain ints for the hot loop (no enum attribute look-ups per message).
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_EVENT_CONNECTED = int(zmq.EVENT_CONNECTED)


class UnknownKeyword(CauldronError, KeyError):
    """The service has no such keyword.  The message suggests close names."""

    def __str__(self) -> str:   # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ServiceShutDown(CauldronError):
    """The Service was shut down; nothing more can be asked of it."""



# =============================================================================
# Task: a future with KTL's names
# =============================================================================

class Task:
    """What ``read(wait=False)`` and ``write(wait=False)`` return.

    The I/O thread completes it (result or error) no later than its deadline,
    so waiting without a timeout still ends.  The one exception is an
    acknowledged write its caller set no deadline for: the I/O thread moves
    the deadline on while the dispatcher stays alive, and ends the task when
    it goes silent or restarts.  ``status`` is ``'pending'``, ``'success'``
    or ``'error'``.
    """

    def __init__(self, description: Union[str, Callable[[], str]] = "",
                 request: Optional[protocol.Request] = None,
                 deadline: Optional[float] = None) -> None:
        self._description = description   # or a function making it, called when needed
        self.request = request
        self.created = time.monotonic()
        # time.monotonic() by which the I/O thread ends it; the I/O thread moves
        # it later for an acknowledged write it keeps waiting on (see _Engine._expire).
        self.deadline = deadline
        self.timeout = None if deadline is None else round(max(0.0, deadline - self.created), 3)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)   # completion and acknowledgement
        self._status = PENDING
        self._is_acked = False
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._callbacks: List[Callable[["Task"], Any]] = []

    @property
    def description(self) -> str:
        text = self._description
        if not isinstance(text, str):
            text = self._description = text()
        return text

    @description.setter
    def description(self, text: str) -> None:
        self._description = text

    @property
    def status(self) -> str:
        return self._status

    @property
    def result(self) -> Any:
        return self._result

    @property
    def error(self) -> Optional[BaseException]:
        return self._error

    def done(self) -> bool:
        return self._status != PENDING

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once complete (success or error); False if ``timeout`` s passed first."""
        if self._status != PENDING:
            return True
        with self._cond:
            if timeout is not None:
                return self._cond.wait_for(self.done, timeout)
            while True:                      # the deadline may move while we wait
                if self._cond.wait_for(self.done, self._default_wait()):
                    return True
                if self.deadline is None or time.monotonic() >= self.deadline + _GRACE:
                    return False

    def wait_acknowledged(self, timeout: Optional[float] = None) -> bool:
        """True once the dispatcher acknowledged the request (or it completed).

        A ``write(wait=False)`` caller that is about to exit uses it to know
        the request left this process and reached the dispatcher.
        """
        if timeout is None:
            timeout = self._default_wait()
        with self._cond:
            return self._cond.wait_for(self._acked_or_done, timeout)

    def _acked_or_done(self) -> bool:
        return self._is_acked or self._status != PENDING

    def _acknowledge(self) -> None:
        """The dispatcher acknowledged the request (I/O thread)."""
        with self._cond:
            self._is_acked = True
            self._cond.notify_all()

    def get(self, timeout: Optional[float] = None) -> Any:
        """The result; re-raises the error; TimeoutError if not complete in time."""
        start = time.monotonic()
        if not self.wait(timeout):
            asked = timeout if timeout is not None else self.timeout
            waited = time.monotonic() - start
            raise TimeoutError(f"{self.description or 'task'}: not complete within "
                               f"{_fmt_s(asked if asked is not None else waited)} "
                               f"(gave up after waiting {_fmt_s(round(waited, 1))})")
        if self._status == ERROR:
            raise self._error  # type: ignore[misc]
        return self._result

    def timedout(self, message: Optional[str] = None) -> None:
        """Mark the task as timed out (KTL's name)."""
        self._fail(TimeoutError(message or f"{self.description or 'task'} timed out"))

    def add_done_callback(self, fn: Callable[["Task"], Any]) -> None:
        """Call ``fn(task)`` once complete, on the completing thread (internal use)."""
        with self._lock:
            if self._status == PENDING:
                self._callbacks.append(fn)
                return
        fn(self)

    def __repr__(self) -> str:
        return f"<Task {self.description!r} {self._status}>"

    def _default_wait(self) -> float:
        if self.deadline is None:
            return 60.0
        return max(0.0, self.deadline - time.monotonic()) + _GRACE

    def _succeed(self, value: Any) -> bool:
        return self._complete(SUCCESS, value, None)

    def _fail(self, exc: BaseException) -> bool:
        return self._complete(ERROR, None, exc)

    def _complete(self, status: str, value: Any, exc: Optional[BaseException]) -> bool:
        with self._cond:
            if self._status != PENDING:
                return False
            self._result, self._error = value, exc
            self._status = status          # last: done() then result never sees half of it
            self._is_acked = True
            callbacks, self._callbacks = self._callbacks, []
            self._cond.notify_all()
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - a completion hook must not break the caller
                log.exception("task completion hook failed")
        return True


def _fmt_s(seconds: Optional[float]) -> str:
    """'2 s', '0.35 s': a timeout cut to what was left of a deadline is no 0.997389 s."""
    if seconds is None:
        return "?"
    return f"{round(seconds, 2 if seconds >= 0.1 else 3):g} s"


# =============================================================================
# Deadlines: one for a whole call
# =============================================================================

_scope = threading.local()      # .end: the time.monotonic() this thread's calls end by


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Every call this thread makes in the block ends within ``seconds``, all together.

    ``Service(...)`` (look-up and keyword lists), ``svc[name]`` (describe),
    ``read`` and ``write`` each take what is left, never more than their own
    timeout; a TimeoutError leaving the block says how long was actually
    waited.  Blocks nest (the earlier end wins).  ``caget -w 1`` gives up
    after one second; ``with deadline(1): ...`` does too.  Yields the end
    (``time.monotonic()``).
    """
    seconds = float(seconds)
    if not seconds > 0:
        raise ValueError(f"a deadline must be positive, got {seconds!r}")
    outer = getattr(_scope, "end", None)
    start = time.monotonic()
    end = start + seconds if outer is None else min(outer, start + seconds)
    _scope.end = end
    try:
        yield end
    except TimeoutError as exc:
        # The block whose own end was the binding one says so; an inner block cut
        # short by an outer one leaves it to the outer (its start, its seconds).
        binding = outer is None or end < outer
        if binding and not getattr(exc, "_waited", False) and exc.args:
            exc.args = (f"{exc.args[0]} (gave up after {time.monotonic() - start:.1f} s; "
                        f"the deadline was {_fmt_s(end - start)})",) + tuple(exc.args[1:])
            exc._waited = True   # type: ignore[attr-defined]
        raise
    finally:
        _scope.end = outer


def _bounded(timeout: float, what: str = "the call") -> float:
    """``timeout``, cut to what is left of the thread's :func:`deadline` (if any)."""
    end = getattr(_scope, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{what}: the deadline passed before it could start")
    return min(timeout, left)


def _left() -> float:
    """Seconds left of the thread's deadline (inf without one)."""
    end = getattr(_scope, "end", None)
    return math.inf if end is None else end - time.monotonic()


def _under_deadline() -> bool:
    return getattr(_scope, "end", None) is not None


def _seconds_or_none(value: Any) -> Optional[float]:
    """A describe field that should be a positive number of seconds (else ignored)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < math.inf else None
