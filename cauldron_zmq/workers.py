"""The dispatcher's executor and scheduler: where instrument code runs.

User hooks (``write`` moving a stage for 30 s, ``read`` polling a sensor) must
never run on the I/O thread, and a slow hook of one keyword must not hold up
the others.  :class:`KeyedExecutor` gives every key (a keyword name) its own
FIFO queue: tasks of one key run one at a time in submission order, tasks of
different keys run in parallel on a pool that grows on demand up to a bound
and shrinks when workers stay idle.

:class:`Scheduler` runs periodic and one-shot work (``Keyword.period`` and
``Keyword.schedule``) on one thread with a heap and a condition variable; it
never runs the work itself but hands it to the executor under the keyword's
key, so updates and client writes of one keyword are serialised too.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

__all__ = ["KeyedExecutor", "QueueFull", "Scheduler", "ScheduledEntry", "RepeatLog"]

Task = Callable[[], Any]
Cancel = Optional[Callable[[], Any]]


class QueueFull(RuntimeError):
    """``submit(..., limit=N)`` found N tasks of the key already waiting."""

    def __init__(self, key: Any, waiting: int, limit: int) -> None:
        super().__init__(f"{key}: {waiting} task(s) already waiting (limit {limit})")
        self.key = key
        self.waiting = waiting
        self.limit = limit


class _Item:
    """One queued task and what to do if it is discarded at shutdown."""

    __slots__ = ("fn", "on_cancel")

    def __init__(self, fn: Task, on_cancel: Cancel) -> None:
        self.fn = fn
        self.on_cancel = on_cancel


class KeyedExecutor:
    """A thread pool with per-key FIFO ordering.

    ``submit(key, fn)`` queues ``fn``.  Tasks with the same key never overlap
    and run in the order submitted; a key whose task is running waits and
    does not occupy a second worker, so a blocked key costs one thread at
    most.  Workers are created when a key is ready and no worker is idle (up
    to ``max_workers``) and exit after ``idle_timeout`` seconds without work.
    """

    def __init__(self, name: str, *, max_workers: int = 32, idle_timeout: float = 5.0,
                 log: Optional[logging.Logger] = None) -> None:
        self.name = name
        self.max_workers = max(1, int(max_workers))
        self.idle_timeout = idle_timeout
        self.log = log or logging.getLogger(__name__)
        self._cond = threading.Condition()
        self._queues: Dict[Any, Deque[_Item]] = {}   # key -> pending items; present while active
        self._ready: Deque[Any] = deque()             # keys with work, not running
        self._workers: Set[threading.Thread] = set()
        self._idle = 0
        self._closed = False
        self._serial = itertools.count(1)

    # ------------------------------------------------------------ submitting

    def submit(self, key: Any, fn: Task, on_cancel: Cancel = None,
               limit: Optional[int] = None) -> None:
        """Queue ``fn`` behind earlier tasks of ``key``.

        ``on_cancel`` is called instead of ``fn`` if the executor is closed
        before ``fn`` starts (so a client still gets an answer).  Raises
        RuntimeError once closed.  With ``limit``, raises :class:`QueueFull`
        instead of queueing when ``limit`` tasks of ``key`` already wait
        behind the running one (``limit=0``: whenever one runs): a slow hook
        must not let a stream of requests grow the process without bound.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name}: executor is shut down")
            queue = self._queues.get(key)
            if queue is not None:
                if limit is not None and len(queue) >= limit:
                    raise QueueFull(key, len(queue), limit)
                queue.append(_Item(fn, on_cancel))
                return
            self._queues[key] = deque([_Item(fn, on_cancel)])
            self._ready.append(key)
            self._wake_worker()

    def _wake_worker(self) -> None:
        """Called with the lock held after a key became ready."""
        if len(self._ready) > self._idle and len(self._workers) < self.max_workers:
            self._spawn()
        self._cond.notify()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._work, daemon=True,
                                  name=f"{self.name}-worker-{next(self._serial)}")
        self._workers.add(thread)
        thread.start()

    # --------------------------------------------------------------- workers

    def _work(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                taken = self._take()
                if taken is None:
                    return
                key, item = taken
                self._run(item)
                self._finish(key)
        finally:
            with self._cond:
                self._workers.discard(me)
                self._cond.notify_all()

    def _take(self) -> Optional[Tuple[Any, _Item]]:
        """The next ready key and its first task; None when the worker should exit."""
        with self._cond:
            while not self._ready:
                if self._closed:
                    return None
                self._idle += 1
                try:
                    woken = self._cond.wait(self.idle_timeout)
                finally:
                    self._idle -= 1
                if not woken and not self._ready:
                    return None
            key = self._ready.popleft()
            return key, self._queues[key].popleft()

    def _run(self, item: _Item) -> None:
        try:
            item.fn()
        except BaseException:  # noqa: BLE001 - a task must never kill its worker
            self.log.exception("%s: unhandled error in a task", self.name)

    def _finish(self, key: Any) -> None:
        with self._cond:
            queue = self._queues[key]
            if queue and not self._closed:
                self._ready.append(key)
            else:
                del self._queues[key]

    # -------------------------------------------------------------- shutdown

    def close(self, timeout: float = 5.0) -> List[threading.Thread]:
        """Stop accepting work, cancel what has not started, wait for running tasks.

        Returns the workers still running after ``timeout`` (a hook that does
        not return); they are daemon threads and finish on their own.
        """
        with self._cond:
            self._closed = True
            cancelled = [item for queue in self._queues.values() for item in queue]
            for queue in self._queues.values():
                queue.clear()
            self._ready.clear()
            self._cond.notify_all()
        for item in cancelled:
            if item.on_cancel is not None:
                try:
                    item.on_cancel()
                except Exception:  # noqa: BLE001
                    self.log.exception("%s: error while cancelling a task", self.name)
        return self._join(timeout)

    def _join(self, timeout: float) -> List[threading.Thread]:
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        with self._cond:
            while True:
                others = [t for t in self._workers if t is not me]
                remaining = deadline - time.monotonic()
                if not others or remaining <= 0:
                    break
                self._cond.wait(remaining)
        for thread in others:
            thread.join(0)
        return [t for t in others if t.is_alive()]

    @property
    def worker_count(self) -> int:
        with self._cond:
            return len(self._workers)

    def waiting(self, key: Any) -> int:
        """How many tasks of ``key`` wait (not counting the one running)."""
        with self._cond:
            queue = self._queues.get(key)
            return 0 if queue is None else len(queue)


class ScheduledEntry:
    """A periodic or one-shot appointment; ``cancel()`` stops it."""

    __slots__ = ("key", "fn", "period", "when", "cancelled", "pending", "failures")

    def __init__(self, key: Any, fn: Task, when: float, period: Optional[float]) -> None:
        self.key = key
        self.fn = fn
        self.when = when
        self.period = period
        self.cancelled = False
        self.pending = False        # handed to the executor and not finished yet
        self.failures = 0           # consecutive failures (periodic entries)

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """One thread that hands due work to a :class:`KeyedExecutor`.

    Times are epoch seconds (sub-second, not truncated).  A periodic entry
    whose previous run has not finished is skipped rather than queued again,
    so a slow ``read`` cannot pile up updates; its next time advances by whole
    periods so the cadence does not drift.
    """

    def __init__(self, name: str, executor: KeyedExecutor, *,
                 log: Optional[logging.Logger] = None) -> None:
        self.name = name
        self.executor = executor
        self.log = log or logging.getLogger(__name__)
        self._cond = threading.Condition()
        self._heap: List[Tuple[float, int, ScheduledEntry]] = []
        self._serial = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False

    def add(self, key: Any, fn: Callable[[ScheduledEntry], Any], when: float,
            period: Optional[float] = None) -> ScheduledEntry:
        """Run ``fn(entry)`` under ``key`` at ``when`` (and every ``period`` s after)."""
        entry = ScheduledEntry(key, fn, when, period)
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._serial), entry))
            self._cond.notify()
        return entry

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name=f"{self.name}-scheduler")
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            due = self._next_due()
            if due is None:
                return
            self._dispatch(due)

    def _next_due(self) -> Optional[ScheduledEntry]:
        """Block until an entry is due (returned) or the scheduler stops (None)."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, entry = self._heap[0]
                delay = when - time.time()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if entry.period is not None:
                    entry.when = _next_time(when, entry.period, time.time())
                    heapq.heappush(self._heap, (entry.when, next(self._serial), entry))
                return entry

    def _dispatch(self, entry: ScheduledEntry) -> None:
        if entry.pending:
            return
        entry.pending = True

        def run() -> None:
            try:
                if not entry.cancelled:
                    entry.fn(entry)
            finally:
                entry.pending = False

        try:
            self.executor.submit(entry.key, run)
        except RuntimeError:        # executor closed: we are shutting down
            entry.pending = False


class RepeatLog:
    """Log an error with its traceback once, then count its repeats.

    A hook that fails on every write (a typo, hardware unplugged) must show
    up in the dispatcher's log, with the traceback that says where, but a
    client retrying it in a loop must not fill the disk: the same failure
    (key, exception type and the line that raised it, whatever the message,
    which often names the value) is logged in full at most once per
    ``period`` seconds, and the next line logged for it says how many
    repeats were not.  At most ``size`` distinct failures are remembered.
    Sans I/O apart from the logger: ``now`` is given.
    """

    def __init__(self, log: logging.Logger, period: float = 60.0, size: int = 256) -> None:
        self.log = log
        self.period = period
        self.size = size
        self._seen: Dict[Tuple[Any, ...], List[float]] = {}   # key -> [last logged, unlogged]
        self._lock = threading.Lock()

    def error(self, key: Any, exc: BaseException, message: str, *args: Any,
              now: Optional[float] = None) -> bool:
        """Log ``message % args`` with ``exc``'s traceback unless it repeats; True if logged."""
        now = time.monotonic() if now is None else now
        ident = (key, type(exc).__name__, _raised_at(exc))
        with self._lock:
            entry = self._seen.get(ident)
            if entry is not None and now - entry[0] < self.period:
                entry[1] += 1
                return False
            repeats = 0 if entry is None else int(entry[1])
            if entry is None and len(self._seen) >= self.size:
                self._seen.pop(next(iter(self._seen)))
            self._seen[ident] = [now, 0]
        if repeats:
            message += f" ({repeats} repeat(s) since it was last logged were not logged)"
        self.log.error(message, *args, exc_info=(type(exc), exc, exc.__traceback__))
        return True


def _raised_at(exc: BaseException) -> Tuple[str, int]:
    """(file, line) of the innermost frame of ``exc``'s traceback."""
    tb = exc.__traceback__
    if tb is None:
        return ("", 0)
    while tb.tb_next is not None:
        tb = tb.tb_next
    return (tb.tb_frame.f_code.co_filename, tb.tb_lineno)


def _next_time(previous: float, period: float, now: float) -> float:
    """The next multiple of ``period`` after ``previous`` that is in the future."""
    nxt = previous + period
    if nxt <= now:
        nxt += ((now - nxt) // period + 1) * period
    return nxt
