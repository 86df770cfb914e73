"""The client side: connections to a service's dispatchers and its keywords.

:mod:`cauldron_zmq.ktl` is the KTL-named facade over this module; observers'
scripts use that.  This module holds the machinery.

Threads (ZeroMQ's rule: a socket is used by one thread only):

* **the I/O thread** (one per :class:`Service`, ``_Engine``) owns every socket
  of the service: a DEALER to each dispatcher's dispatch port, a SUB to each
  broadcast port, a DEALER to the router for re-lookups, and the read end of a
  wake-up pipe.  It sends requests, matches replies by request id, enforces
  deadlines, watches heartbeats, detects lost broadcasts and restarts, and
  reconnects.  It never runs user code.
* **the callback thread** (one per Service) runs keyword callbacks, one at a
  time, in the order their updates arrived.
* **user threads** (any number) never touch a socket: they queue work for the
  I/O thread (a SimpleQueue plus one byte on the pipe) and wait on a
  :class:`Task` or on a keyword's condition variable, always with a timeout.
"""
from __future__ import annotations

import collections
import contextlib
import difflib
import heapq
import logging
import math
import os
import queue
import threading
import time
import weakref
from typing import (Any, Callable, Deque, Dict, Iterable, Iterator, List, NamedTuple, Optional,
                    Set, Tuple, Union)

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol
from .protocol.backoff import LOOKUP, Schedule
from .protocol.links import Repair
from .config import Config, endpoint, load_config
from .errors import (AuthenticationError, CauldronError, ConversionError, DispatcherDown,
                     DispatcherError, DispatcherRestarted, DispatcherSilent, MessageTooLarge,
                     ProtocolError,
                     RemoteError, RouterError, ServiceNotFound, TimeoutError, remote_exception)
from .expression import OPERATORS, ExpressionError, Value, compare, parse_relative
from .names import check_name, split_entries
from .security import (HANDSHAKE_EVENTS, REFUSED, SUCCEEDED, client_security, handshake_event,
                       refused_message)
from .types import KeywordType, keyword_type

__all__ = [
    "Task",
    "Keyword",
    "Service",
    "HistorySlice",
    "UnknownKeyword",
    "ServiceShutDown",
    "deadline",
]

log = logging.getLogger("cauldron_zmq.client")

PENDING, SUCCESS, ERROR = "pending", "success", "error"
# Where a value came from: a user's read/write reply, a read the client made
# itself to catch up (monitor priming, re-sync after a loss, polling), a broadcast.
REPLY, FRESH, BROADCAST = "reply", "fresh", "broadcast"
HISTORY_LENGTH = 10
_GRACE = 2.0                  # how long past its deadline a waiter trusts the I/O thread
_RECONNECT_IVL_MS = 50        # ZeroMQ's own reconnect: quick on a restart...
_RECONNECT_IVL_MAX_MS = 250   # ...and never slower than this
_IDLE_TICK = 1.0              # the I/O loop wakes at least this often
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


class HistorySlice(NamedTuple):
    """One value a keyword held: the dispatcher's time, the native and ascii forms, its name.

    The fields are Cauldron's (``time, binary, ascii, name``), so code that
    unpacks four of them runs unchanged.
    """

    time: float
    binary: Any
    ascii: Optional[str]
    name: str = ""


class _State(NamedTuple):
    """A keyword's cached value, replaced whole so readers never see half an update."""

    value: Any = None
    ascii: Optional[str] = None
    time: Optional[float] = None
    seq: Optional[int] = None
    populated: bool = False
    connected: bool = True


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


# =============================================================================
# The I/O engine
# =============================================================================

class _Pending:
    """A request in flight; lives in the engine's table until answered or expired."""

    __slots__ = ("request", "link_key", "link", "task", "timeout", "deadline", "sent_at",
                 "acked", "ack_started", "on_reply", "router", "explicit")

    def __init__(self, request: protocol.Request, task: Task, timeout: float,
                 on_reply: Optional[Callable[[protocol.Reply], Any]],
                 link_key: Optional[str] = None, router: bool = False,
                 explicit: bool = True) -> None:
        self.request = request
        # False: the caller set no deadline, so an acknowledged write keeps
        # waiting while its dispatcher stays alive (see _Engine._expire).
        self.explicit = explicit
        self.task = task
        self.timeout = timeout
        self.deadline = task.deadline if task.deadline is not None else time.monotonic() + timeout
        self.on_reply = on_reply
        self.link_key = link_key
        self.link: Optional[_Link] = None
        self.sent_at = 0.0
        self.acked = False
        self.ack_started: Optional[float] = None   # the incarnation that acknowledged it
        self.router = router

    @property
    def description(self) -> str:
        """The task's (made only when a message needs it)."""
        return self.task.description


class _Link:
    """One dispatcher of the service, its two sockets and what we know of it."""

    def __init__(self, key: str, entry: Dict[str, Any], now: float) -> None:
        self.key = key
        self.name = str(entry.get("dispatcher") or "")
        self.protocol = str(entry.get("protocol") or "tcp")
        self.host = str(entry.get("host") or "localhost")
        self.dispatch_port = int(entry.get("dispatch_port") or 0)
        self.broadcast_port = int(entry.get("broadcast_port") or 0)
        self.dealer: Optional[zmq.Socket] = None
        self.sub: Optional[zmq.Socket] = None
        self.monitor: Optional[zmq.Socket] = None
        self.keywords: Set[str] = {str(k).upper() for k in entry.get("keywords") or ()}
        self.listed = False
        self.last_heard = now          # any message from it, SUB or DEALER
        self.last_reply = now          # the last reply on the DEALER
        self.alive = True
        self.started: Optional[float] = None
        self.pid: Optional[int] = None
        self.gseq: Optional[int] = None
        self.synced = False            # a heartbeat arrived since the SUB (re)connected
        self.repair = Repair()         # the re-reads owed after a possible loss
        self.interval: Optional[float] = None
        self.relookup_start: Optional[float] = None
        self.relookup_attempts = 0
        self.lookup_inflight = False
        self.dealer_monitor: Optional[zmq.Socket] = None   # with [zmq-security] only
        self.refused = False           # its authenticator refused our key: new sockets next time
        self.handshake_error = ""      # the last failed handshake, for timeout messages

    @property
    def dispatch_address(self) -> str:
        return endpoint(self.protocol, self.host, self.dispatch_port, bind=False)

    @property
    def broadcast_address(self) -> str:
        return endpoint(self.protocol, self.host, self.broadcast_port, bind=False)

    def address_of(self, entry: Dict[str, Any]) -> Tuple[str, str, int, int]:
        return (str(entry.get("protocol") or "tcp"), str(entry.get("host") or "localhost"),
                int(entry.get("dispatch_port") or 0), int(entry.get("broadcast_port") or 0))

    @property
    def address(self) -> Tuple[str, str, int, int]:
        return (self.protocol, self.host, self.dispatch_port, self.broadcast_port)

    def describe(self) -> str:
        name = f"dispatcher {self.name!r}" if self.name else "the dispatcher"
        return f"{name} at {self.dispatch_address}"


def _link_key(entry: Dict[str, Any]) -> str:
    name = entry.get("dispatcher")
    if name:
        return str(name)
    return f"{entry.get('host')}:{entry.get('dispatch_port')}"


class _CallbackRunner:
    """The one thread per Service that runs user callbacks, in arrival order."""

    _STOP = object()

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._log = logger
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def fire(self, keyword: "Keyword", state: _State) -> None:
        """Run ``keyword``'s callbacks, showing them ``state`` (the value that fired them)."""
        self._queue.put((keyword, state))

    def call(self, fn: Callable[[], Any]) -> None:
        self._queue.put(fn)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def stop(self, timeout: float) -> None:
        self._queue.put(self._STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            try:
                if isinstance(item, tuple):
                    item[0]._run_callbacks(item[1])
                else:
                    item()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                self._log.exception("callback dispatch failed")


class _Engine:
    """The I/O thread of one Service and everything it owns.

    Methods whose names start with ``io_`` or ``_`` run on the I/O thread
    only; the others are safe to call from any thread.
    """

    def __init__(self, service: str, config: Config, timeout: float,
                 logger: logging.Logger) -> None:
        self.service = service
        self.config = config
        self.security = client_security(config)     # first: a bad key file leaves nothing behind
        self.timeout = timeout
        self.log = logger
        self.max_size = config.zmq.max_message_size
        self.liveness = config.zmq.liveness
        self.router_address = config.router_address()
        #: Every router of the installation ([zmq-router] replicas): each look-up asks all.
        self.router_addresses = config.router_addresses()
        self.router_where = _routers_text(self.router_addresses)
        self.router_timeout = config.router.timeout / 1000.0
        self.lookup_schedule: Schedule = LOOKUP
        self.callbacks = _CallbackRunner(f"cauldron_zmq.client.{service}.callbacks", logger)
        self.loss_listeners: List[Callable[[str, bool], Any]] = []   # Service.add_loss_listener
        self._inbox: "queue.SimpleQueue[Callable[[], Any]]" = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._post_lock = threading.Lock()
        self._wake_pending = False     # a byte is on the pipe, not drained yet (see post())
        self._closed = False
        self._stopping = False
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.poller.register(self._wake_r, zmq.POLLIN)
        self.handlers: Dict[Any, Callable[[], None]] = {self._wake_r: self._drain_wake}
        self.links: Dict[str, _Link] = {}
        self.owner: Dict[str, _Link] = {}          # KEYWORD -> link (I/O thread)
        self.pending: Dict[str, _Pending] = {}
        # (deadline, request id, _Pending) of what is or was pending: entries of
        # requests answered since are dropped lazily (see _add_pending).
        self.deadlines: List[Tuple[float, str, _Pending]] = []
        self.kwobjs: Dict[str, Keyword] = {}
        self.last_broadcast: Dict[str, Tuple[Any, Optional[bytes]]] = {}
        self.polls: Dict[str, List[float]] = {}    # KEYWORD -> [period, next due]
        self.inflight_reads: Set[str] = set()
        # One DEALER per router, open only while a look-up waits (see _on_router).
        self.router_socks: Dict[str, zmq.Socket] = {}
        self.router_monitors: Dict[str, zmq.Socket] = {}
        self.router_handshake_errors: Dict[str, str] = {}
        # request id -> [routers yet to answer, the best error answer so far]
        self.router_waiting: Dict[str, List[Any]] = {}
        # Snapshots readable from any thread (replaced whole, never mutated).
        self.names: Dict[str, str] = {}            # KEYWORD -> link key
        self.alive_links: Dict[str, bool] = {}
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"cauldron_zmq.client.{service}.io")

    # ------------------------------------------------------------ any thread
    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the I/O thread soon.

        The pipe is written only when no wake-up is pending (written, not yet
        drained): a burst of requests costs one write(2).  The I/O thread
        clears the flag before it drains the pipe and then empties the inbox,
        so nothing queued before a skipped write is left behind.
        """
        with self._post_lock:
            if self._closed:
                raise ServiceShutDown(f"service {self.service!r} is shut down")
            self._inbox.put(fn)
            if self._wake_pending:
                return
            self._wake_pending = True
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass                  # the pipe is full of wake-ups already

    def call(self, fn: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        """Run ``fn`` on the I/O thread and return its result (or raise its error)."""
        task = Task(f"{self.service}: internal call",
                    deadline=time.monotonic() + (timeout or self.timeout))

        def run() -> None:
            try:
                task._succeed(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                task._fail(exc)
        self.post(run)
        return task.get()

    def submit(self, command: str, target: str = "", payload: Any = None, *,
               raw: Optional[bytes] = None, link: Optional[str] = None,
               timeout: Optional[float] = None,
               on_reply: Optional[Callable[[protocol.Reply], Any]] = None,
               description: Union[str, Callable[[], str]] = "",
               explicit: bool = True) -> Task:
        """Send a dispatcher request; the Task completes with ``on_reply(reply)``.

        ``description`` may be a function: it is called only if a message needs it.
        ``explicit=False`` (a write the caller set no deadline for): once
        acknowledged, it waits past ``timeout`` while the dispatcher stays alive.
        """
        timeout = self.timeout if timeout is None else float(timeout)
        req = protocol.request(command, target, {} if payload is None else payload, raw=raw)
        what = description or f"{self.service}.{target or '*'}: {command}"
        task = Task(what, req, time.monotonic() + timeout)
        p = _Pending(req, task, timeout, on_reply, link_key=link, explicit=explicit)
        self.post(lambda: self._send(p))
        return task

    def router_request(self, command: str, target: str = "", payload: Any = None, *,
                       timeout: Optional[float] = None, description: str = "") -> Task:
        """Send a router request from the I/O thread's own DEALER."""
        timeout = self.router_timeout if timeout is None else float(timeout)
        req = protocol.request(command, target, {} if payload is None else payload)
        what = description or f"router {command} {target!r}"
        task = Task(what, req, time.monotonic() + timeout)
        p = _Pending(req, task, timeout, lambda r: r.payload, router=True)
        self.post(lambda: self._send_router(p))
        return task

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads, close every socket; idempotent."""
        with self._post_lock:
            if self._closed:
                return
            self._inbox.put(self._request_stop)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass
            self._closed = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        elif not self._thread.is_alive() and self._thread.ident is None:
            self._close_all()      # never started
        self.callbacks.stop(timeout)
        if not self._thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def is_alive(self, link_key: Optional[str] = None) -> bool:
        alive = self.alive_links
        if link_key is None:
            return bool(alive) and all(alive.values())
        return alive.get(link_key, False)

    # -------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._iterate()
                except Exception:  # noqa: BLE001 - a bug must not kill the client
                    self.log.exception("unexpected error in the I/O thread")
                    time.sleep(0.05)
        finally:
            self._close_all()

    def _iterate(self) -> None:
        wait_ms = self._next_wakeup_ms(time.monotonic())
        events = self.poller.poll(wait_ms)
        for sock, _ in events:
            handler = self.handlers.get(sock)
            if handler is not None and not getattr(sock, "closed", False):
                handler()
        self._drain_inbox()
        self._run_timers(time.monotonic())

    def _drain_wake(self) -> None:
        self._wake_pending = False        # before draining: see post()
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _drain_inbox(self) -> None:
        while not self._stopping:
            try:
                fn = self._inbox.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:  # noqa: BLE001
                self.log.exception("I/O thread task failed")

    def _request_stop(self) -> None:
        self._stopping = True

    def _close_all(self) -> None:
        self._stopping = True
        while True:          # queued before the stop: let them fail like the rest
            try:
                fn = self._inbox.get_nowait()
            except queue.Empty:
                break
            try:
                fn()
            except Exception:  # noqa: BLE001
                self.log.debug("task queued before the shutdown failed", exc_info=True)
        err = ServiceShutDown(f"service {self.service!r} was shut down")
        for p in list(self.pending.values()):
            p.task._fail(err)
        self.pending.clear()
        self.deadlines.clear()
        for link in list(self.links.values()):
            self._close_link_sockets(link)
        self._reset_router()
        self.ctx.term()

    # ---------------------------------------------------------------- timers
    def _add_pending(self, p: _Pending) -> None:
        rid = p.request.id
        self.pending[rid] = p
        heap = self.deadlines
        heapq.heappush(heap, (p.deadline, rid, p))
        if len(heap) > 2 * len(self.pending) + 64:      # mostly answered ones: rebuild
            pending = self.pending
            heap[:] = [e for e in heap if pending.get(e[1]) is e[2]]
            heapq.heapify(heap)

    def _next_deadline(self) -> Optional[float]:
        """The earliest deadline of a pending request (drops answered entries)."""
        heap, pending = self.deadlines, self.pending
        while heap:
            deadline, rid, p = heap[0]
            if pending.get(rid) is p:
                return deadline
            heapq.heappop(heap)
        return None

    def _next_wakeup_ms(self, now: float) -> int:
        due = now + _IDLE_TICK
        first = self._next_deadline()
        if first is not None and first < due:
            due = first
        for link in self.links.values():
            if link.alive:
                due = min(due, link.last_heard + self._liveness(link))
            if link.relookup_start is not None and not link.lookup_inflight:
                due = min(due, link.relookup_start +
                          self.lookup_schedule.time_of(link.relookup_attempts))
            retry = link.repair.next_due() if link.alive else None
            if retry is not None:     # while it is down, coming back re-reads anyway
                due = min(due, retry)
        for _period, next_due in self.polls.values():
            due = min(due, next_due)
        return max(0, int(math.ceil((due - now) * 1000)))

    def _run_timers(self, now: float) -> None:
        heap, pending = self.deadlines, self.pending
        while heap and heap[0][0] <= now:
            _deadline, rid, p = heapq.heappop(heap)
            if pending.get(rid) is p:
                self._expire(p)
        for link in list(self.links.values()):
            if link.alive and now - link.last_heard > self._liveness(link):
                self._link_down(link, now)
            if link.relookup_start is not None and not link.lookup_inflight and \
                    self.lookup_schedule.due(now - link.relookup_start, link.relookup_attempts):
                self._relookup(link)
            retry = link.repair.next_due() if link.alive else None
            if retry is not None and retry <= now:
                self._repair_reads(link, link.repair.due(now, self._tracked_names(link)),
                                   "retrying a failed re-read")
        for name, slot in self.polls.items():
            if slot[1] <= now:
                slot[1] = now + slot[0]
                self._internal_read(name, "poll")

    def _liveness(self, link: _Link) -> float:
        """cfg.zmq.liveness, unless the dispatcher's own heartbeat is slower than that."""
        if link.interval and link.interval * 2 >= self.liveness:
            return link.interval * 3
        return self.liveness

    # -------------------------------------------------------------- sockets
    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_size)
        sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        if self.security is not None:
            self.security.apply(sock)
        return sock

    def _watch(self, sock: zmq.Socket, handler: Callable[[], None]) -> None:
        self.poller.register(sock, zmq.POLLIN)
        self.handlers[sock] = handler

    def _close_socket(self, sock: Optional[zmq.Socket]) -> None:
        if sock is None or sock.closed:
            return
        try:
            self.poller.unregister(sock)
        except KeyError:
            pass
        self.handlers.pop(sock, None)
        sock.close(linger=0)

    def _open_dealer(self, link: _Link) -> None:
        sock = self._socket(zmq.DEALER)
        if self.security is not None and HANDSHAKE_EVENTS:
            mon = sock.get_monitor_socket(HANDSHAKE_EVENTS)
            link.dealer_monitor = mon
            self._watch(mon, lambda: self._on_dealer_monitor(link, mon))
        sock.connect(link.dispatch_address)
        link.dealer = sock
        self._watch(sock, lambda: self._on_dealer(link, sock))

    def _open_sub(self, link: _Link) -> None:
        sock = self._socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.config.zmq.hwm)
        sock.setsockopt(zmq.SUBSCRIBE, protocol.service_prefix(self.service))
        mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | HANDSHAKE_EVENTS)
        sock.connect(link.broadcast_address)
        link.sub, link.monitor = sock, mon
        self._watch(sock, lambda: self._on_sub(link, sock))
        self._watch(mon, lambda: self._on_monitor(link, mon))

    def _close_dealer(self, link: _Link) -> None:
        if link.dealer_monitor is not None:
            if link.dealer is not None and not link.dealer.closed:
                try:
                    link.dealer.disable_monitor()
                except zmq.ZMQError:
                    pass
            self._close_socket(link.dealer_monitor)
            link.dealer_monitor = None
        self._close_socket(link.dealer)
        link.dealer = None

    def _close_link_sockets(self, link: _Link) -> None:
        self._close_dealer(link)
        if link.sub is not None and not link.sub.closed:
            try:
                link.sub.disable_monitor()
            except zmq.ZMQError:
                pass
        self._close_socket(link.monitor)
        self._close_socket(link.sub)
        link.dealer = link.sub = link.monitor = None

    def _router_socket(self, address: str) -> zmq.Socket:
        sock = self.router_socks.get(address)
        if sock is None:
            sock = self._socket(zmq.DEALER)
            if HANDSHAKE_EVENTS:
                mon = sock.get_monitor_socket(HANDSHAKE_EVENTS)
                self.router_monitors[address] = mon
                self._watch(mon, lambda: self._on_router_monitor(address, mon))
            sock.connect(address)
            self.router_socks[address] = sock
            self._watch(sock, lambda: self._on_router(address, sock))
        return sock

    def _reset_router(self, address: Optional[str] = None) -> None:
        """Close the DEALER to one router (``address``), or to every router."""
        for where in [address] if address is not None else list(self.router_socks):
            sock = self.router_socks.pop(where, None)
            mon = self.router_monitors.pop(where, None)
            if mon is not None:
                if sock is not None and not sock.closed:
                    try:
                        sock.disable_monitor()
                    except zmq.ZMQError:
                        pass
                self._close_socket(mon)
            self._close_socket(sock)

    # ---------------------------------------------------------------- links
    def io_add_links(self, entries: Iterable[Dict[str, Any]]) -> List[str]:
        """Connect to every dispatcher listed; returns the link keys."""
        keys = []
        now = time.monotonic()
        for entry in entries:
            key = _link_key(entry)
            keys.append(key)
            link = self.links.get(key)
            if link is None:
                link = _Link(key, entry, now)
                self.links[key] = link
                self._open_dealer(link)
                self._open_sub(link)
                self._set_owner(link, link.keywords)
            elif link.address != link.address_of(entry):
                self._move(link, entry)
        self._publish_alive()
        return keys

    def _set_owner(self, link: _Link, names: Iterable[str]) -> None:
        for name in names:
            self.owner[name] = link
        self.names = {name: lk.key for name, lk in self.owner.items()}

    def io_listed(self, key: str, result: Any) -> None:
        """A dispatcher's ``list`` reply: the keywords it owns."""
        link = self.links.get(key)
        if link is None or not isinstance(result, dict):
            return
        if result.get("dispatcher") and not link.name:
            link.name = str(result["dispatcher"])
        names = {str(k).upper() for k in result.get("keywords") or ()}
        for stale in link.keywords - names:
            if self.owner.get(stale) is link:
                del self.owner[stale]
        link.keywords = names
        link.listed = True
        self._set_owner(link, names)

    def _publish_alive(self) -> None:
        self.alive_links = {key: link.alive for key, link in self.links.items()}

    def _move(self, link: _Link, entry: Dict[str, Any]) -> None:
        """The router gives the dispatcher a new address: reconnect both sockets."""
        old = link.dispatch_address
        link.protocol, link.host, link.dispatch_port, link.broadcast_port = link.address_of(entry)
        self.log.info("%s moved from %s; reconnecting", link.describe(), old)
        self._close_link_sockets(link)
        self._open_dealer(link)
        self._open_sub(link)
        link.synced, link.gseq = False, None
        self._resend_unacked(link)

    def _reset_dealer(self, link: _Link) -> None:
        """Lazy Pirate: a DEALER whose peer went silent is closed and reconnected."""
        self.log.debug("resetting the connection to %s", link.describe())
        self._close_dealer(link)
        self._open_dealer(link)
        self._resend_unacked(link)

    def _resend_unacked(self, link: _Link) -> None:
        """Requests the old socket swallowed go out again, same id, same deadline."""
        for p in self.pending.values():
            if p.link is link and not p.acked:
                self._transmit(p)

    # ------------------------------------------------------------- requests
    def _send(self, p: _Pending) -> None:
        link = self.links.get(p.link_key) if p.link_key else self.owner.get(p.request.target.upper())
        if link is None:
            p.task._fail(self._no_link_error(p))
            return
        if link.refused:
            self._retry_refused(link)
        p.link = link
        self._add_pending(p)
        self._transmit(p)

    def _no_link_error(self, p: _Pending) -> CauldronError:
        if p.link_key:
            return CauldronError(f"{p.description}: no dispatcher {p.link_key!r}")
        return UnknownKeyword(unknown_keyword_message(self.service, p.request.target,
                                                      list(self.owner)))

    def _transmit(self, p: _Pending) -> None:
        assert p.link is not None and p.link.dealer is not None
        p.sent_at = time.monotonic()
        try:
            p.link.dealer.send_multipart(protocol.encode_request(p.request), _NOBLOCK)
        except zmq.Again:
            self.pending.pop(p.request.id, None)
            p.task._fail(CauldronError(f"{p.description}: the send queue to "
                                       f"{p.link.describe()} is full"))

    def _send_router(self, p: _Pending) -> None:
        """The same request to every router at once: the first good answer wins,
        so a dead or hung router costs nothing while another one answers."""
        self._add_pending(p)
        p.sent_at = time.monotonic()
        frames = protocol.encode_request(p.request)
        left: Set[str] = set()
        for address in self.router_addresses:
            try:
                self._router_socket(address).send_multipart(frames, _NOBLOCK)
            except zmq.Again:
                self._reset_router(address)
                continue
            left.add(address)
        if not left:
            self.pending.pop(p.request.id, None)
            p.task._fail(TimeoutError(f"{p.description}: cannot queue a request to "
                                      f"{self.router_where}"))
            return
        self.router_waiting[p.request.id] = [left, None]

    def _expire(self, p: _Pending) -> None:
        if self._keep_waiting(p):
            return
        self.pending.pop(p.request.id, None)
        if p.router:
            left, error = self.router_waiting.pop(p.request.id, [set(), None])
            for address in left:          # Lazy Pirate: silent routers get new sockets
                self._reset_router(address)
            if error is not None:         # one refused, the others were silent
                p.task._fail(error)
                return
            hints = [self.router_handshake_errors.get(a, "") for a in sorted(left)]
            p.task._fail(TimeoutError(
                f"{p.description}: no answer from {self.router_where} "
                f"within {_fmt_s(p.timeout)}; is the router running?"
                + self._handshake_hint(next((h for h in hints if h), ""))))
            return
        link = p.link
        assert link is not None
        if p.acked:
            p.task._fail(TimeoutError(
                f"{p.description}: {link.describe()} acknowledged the request but did not "
                f"complete it within {_fmt_s(p.timeout)}"))
            return
        p.task._fail(TimeoutError(f"{p.description}: no answer from {link.describe()} "
                                  f"within {_fmt_s(p.timeout)}"
                                  + self._handshake_hint(link.handshake_error)))
        if link.last_reply < p.sent_at and link.dealer is not None:
            self._reset_dealer(link)
            self._start_relookup(link)

    def _keep_waiting(self, p: _Pending) -> bool:
        """A slow write: acknowledged, no deadline from the caller, dispatcher alive.

        It waits another liveness period; the dispatcher going silent
        (_link_down) or restarting (_fail_orphaned) ends it with its own error.
        """
        link = p.link
        if p.router or p.explicit or not p.acked or link is None or not link.alive \
                or link.refused or p.request.command != "write":
            return False
        now = time.monotonic()
        p.deadline = p.task.deadline = now + self._liveness(link)
        heapq.heappush(self.deadlines, (p.deadline, p.request.id, p))
        return True

    def _handshake_hint(self, error: str) -> str:
        """What a timeout message adds about security (nothing in the common case)."""
        if error:
            return f" (the last connection attempt failed its handshake: {error})"
        if self.security is not None and not HANDSHAKE_EVENTS:
            return (" (with [zmq-security] enabled, the server's authenticator may have "
                    "refused this client's key)")
        return ""

    # ------------------------------------------------------- handshake events
    def _handshake_events(self, mon: zmq.Socket) -> List[Tuple[str, str]]:
        events = []
        while not mon.closed and mon.getsockopt(_EVENTS) & _POLLIN:
            try:
                event = recv_monitor_message(mon, _NOBLOCK)
            except zmq.Again:
                break
            kind, text = handshake_event(event, self.security is not None)
            if kind:
                events.append((kind, text))
        return events

    def _on_dealer_monitor(self, link: _Link, mon: zmq.Socket) -> None:
        for kind, text in self._handshake_events(mon):
            self._on_handshake(link, kind, text)

    def _on_handshake(self, link: _Link, kind: str, text: str) -> None:
        """A handshake with the dispatcher succeeded, failed, or was refused."""
        if kind == SUCCEEDED:
            link.handshake_error, link.refused = "", False
            return
        link.handshake_error = text
        if kind != REFUSED or link.refused:
            return
        # libzmq drops a refused connection for good: fail what waits on it
        # now, and open new sockets for the next request (_retry_refused).
        link.refused = True
        message = refused_message(link.describe(), self.security)
        self.log.warning("%s", message)
        for p in [p for p in self.pending.values() if p.link is link]:
            del self.pending[p.request.id]
            p.task._fail(AuthenticationError(f"{p.description}: {message}"))

    def _retry_refused(self, link: _Link) -> None:
        """New sockets, so a new handshake: the key may have been authorised since."""
        link.refused = False
        self._close_link_sockets(link)
        self._open_dealer(link)
        self._open_sub(link)
        link.synced, link.gseq = False, None

    def _on_router_monitor(self, address: str, mon: zmq.Socket) -> None:
        for kind, text in self._handshake_events(mon):
            if kind == SUCCEEDED:
                self.router_handshake_errors.pop(address, None)
                continue
            again = self.router_handshake_errors.get(address) == text
            self.router_handshake_errors[address] = text
            if kind != REFUSED:
                continue
            message = refused_message(f"the router at {address}", self.security)
            self.log.log(logging.DEBUG if again else logging.WARNING, "%s", message)
            for rid, (left, _error) in list(self.router_waiting.items()):
                p = self.pending.get(rid)
                if address in left and p is not None:
                    self._router_refused(p, address,
                                         AuthenticationError(f"{p.description}: {message}"))
            self._reset_router(address)   # the next request makes a new connection
            return

    def _on_dealer(self, link: _Link, sock: zmq.Socket) -> None:
        while not sock.closed and sock.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            now = time.monotonic()
            link.last_reply = now
            self._heard(link, now)
            self._on_reply(protocol.decode_reply(frames, self.max_size), link.describe())

    def _on_router(self, address: str, sock: zmq.Socket) -> None:
        while not sock.closed and sock.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            self._on_router_reply(address, protocol.decode_reply(frames, self.max_size))
        if not any(p.router for p in self.pending.values()):
            self.router_waiting.clear()
            self._reset_router()   # off the data path: hold no connection between look-ups

    def _on_router_reply(self, address: str,
                         reply: Union[protocol.Reply, protocol.Malformed]) -> None:
        """A good answer completes the request; a refusal waits for the other routers."""
        peer = f"the router at {address}"
        p = self.pending.get(reply.id) if reply.id else None
        waiting = self.router_waiting.get(reply.id) if reply.id else None
        if p is None or waiting is None or (isinstance(reply, protocol.Reply) and
                                            reply.status != protocol.ERROR):
            self.router_waiting.pop(reply.id, None)
            self._on_reply(reply, peer)      # a good answer, or a late or stray one
            return
        if isinstance(reply, protocol.Malformed):
            self.log.warning("malformed reply from %s: %s", peer, reply.message)
            error: BaseException = CauldronError(f"{p.description}: malformed reply from "
                                                 f"{peer}: {reply.message}")
        else:
            error = self._remote_error(p, reply.payload, peer)
        self._router_refused(p, address, error)

    def _router_refused(self, p: _Pending, address: str, error: BaseException) -> None:
        """Keep the most telling refusal (``not-found`` first); fail once all refused."""
        waiting = self.router_waiting[p.request.id]
        waiting[0].discard(address)
        best = waiting[1]
        if best is None or (getattr(error, "code", "") == protocol.E_NOT_FOUND and
                            getattr(best, "code", "") != protocol.E_NOT_FOUND):
            waiting[1] = error
        if not waiting[0]:
            del self.router_waiting[p.request.id]
            self.pending.pop(p.request.id, None)
            p.task._fail(waiting[1])

    def _on_reply(self, reply: Union[protocol.Reply, protocol.Malformed], peer: str) -> None:
        if isinstance(reply, protocol.Malformed):
            self.log.warning("malformed reply from %s: %s", peer, reply.message)
            p = self.pending.pop(reply.id, None) if reply.id else None
            if p is not None:
                p.task._fail(CauldronError(f"{p.description}: malformed reply from {peer}: "
                                           f"{reply.message}"))
            return
        p = self.pending.get(reply.id)
        if p is None:
            self.log.debug("dropping a late reply (%s) from %s", reply.status, peer)
            return
        if reply.status == protocol.ACK:
            p.acked = True
            if isinstance(reply.payload, dict):
                p.ack_started = reply.payload.get("started")
            p.task._acknowledge()
            return
        del self.pending[reply.id]
        if reply.status == protocol.ERROR:
            p.task._fail(self._remote_error(p, reply.payload, peer))
            return
        try:
            result = p.on_reply(reply) if p.on_reply is not None else reply.payload
        except Exception as exc:  # noqa: BLE001 - e.g. a value that does not convert
            p.task._fail(exc)
            return
        p.task._succeed(result)

    def _remote_error(self, p: _Pending, err: Dict[str, Any], peer: str) -> RemoteError:
        """The peer's exception, type and message kept (the keyword named if it is not)."""
        base = RouterError if p.router else DispatcherError
        message = str(err.get("message") or "")
        target = p.request.target.upper()
        if not p.router and target and target not in message.upper():
            message = f"{self.service}.{target}: {message}"
        return remote_exception(message, code=str(err.get("code") or "internal"),
                                remote_type=str(err.get("type") or ""), peer=peer, base=base)

    # ------------------------------------------------------------ broadcasts
    def _on_sub(self, link: _Link, sock: zmq.Socket) -> None:
        while not sock.closed and sock.getsockopt(_EVENTS) & _POLLIN:
            try:
                frames = sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            b = protocol.decode_broadcast(frames, self.max_size)
            if isinstance(b, protocol.Malformed):
                self.log.warning("malformed broadcast from %s: %s", link.describe(), b.message)
                continue
            if b.service != self.service or not isinstance(b.payload, dict):
                continue
            self._heard(link, time.monotonic())
            if b.is_heartbeat:
                self._on_heartbeat(link, b.payload)
            else:
                self._on_broadcast(link, b)

    def _on_monitor(self, link: _Link, mon: zmq.Socket) -> None:
        while not mon.closed and mon.getsockopt(_EVENTS) & _POLLIN:
            try:
                event = recv_monitor_message(mon, _NOBLOCK)
            except zmq.Again:
                return
            if event.get("event") != _EVENT_CONNECTED:
                kind, text = handshake_event(event, self.security is not None)
                if kind:
                    self._on_handshake(link, kind, text)
                    if link.sub is None or mon.closed:
                        return
                continue
            if event.get("event") == _EVENT_CONNECTED:
                # The SUB (re)connected: anything published before its
                # subscription arrived is lost, so re-read now and again at
                # the first heartbeat (see _on_heartbeat).
                link.synced = False
                self._resync(link, "broadcast socket connected")

    def _on_heartbeat(self, link: _Link, hb: Dict[str, Any]) -> None:
        started, pid, gseq = hb.get("started"), hb.get("pid"), hb.get("gseq")
        interval = hb.get("interval")
        if isinstance(interval, (int, float)) and interval > 0:
            link.interval = float(interval)
        restarted = link.started is not None and (started != link.started or pid != link.pid)
        link.started, link.pid = started, pid
        if restarted:
            self._resync(link, "dispatcher restarted", restarted=True)
        elif not link.synced:
            self._resync(link, "first heartbeat since connecting")
        elif isinstance(gseq, int) and link.gseq is not None and gseq != link.gseq:
            backwards = gseq < link.gseq
            self._resync(link, "broadcast sequence went backwards" if backwards
                         else f"lost broadcasts (heartbeat gseq {gseq}, last seen {link.gseq})",
                         restarted=backwards, supersede=backwards)
        link.synced = True
        if isinstance(gseq, int):
            link.gseq = gseq

    def _on_broadcast(self, link: _Link, b: protocol.Broadcast) -> None:
        gseq = b.payload.get("gseq")
        if isinstance(gseq, int) and link.gseq is not None:
            if gseq <= link.gseq:
                self._resync(link, "broadcast sequence went backwards", restarted=True)
            elif gseq > link.gseq + 1:
                self._resync(link, f"lost broadcasts (gseq {link.gseq} -> {gseq})",
                             supersede=False)
        if isinstance(gseq, int):
            link.gseq = gseq
        name = b.keyword.upper()
        self.last_broadcast[name] = (b.payload, b.raw)
        kw = self.kwobjs.get(name)
        if kw is not None:
            self._fire(kw, kw._ingest(b.payload, b.raw, BROADCAST))

    def _resync(self, link: _Link, why: str, restarted: bool = False,
                supersede: bool = True) -> None:
        """Re-read what is monitored, waited on or polled, after a possible loss.

        A lost or renewed connection supersedes the reads still in flight (one
        may have gone to a process that is gone); a gap on a live connection
        (``supersede=False``) queues one read behind them: see :mod:`.protocol.links`.
        """
        if link.refused:          # nothing gets through; the next user request retries
            return
        for listener in self.loss_listeners:     # queued before the re-reads' callbacks
            self.callbacks.call(lambda fn=listener: fn(why, restarted))
        kws = [kw for name, kw in self.kwobjs.items() if self.owner.get(name) is link]
        if restarted:
            self.log.info("%s: %s", link.describe(), why)
            for kw in kws:
                kw._forget_sequence()
            self._fail_orphaned(link)
        tracked = [kw.name for kw in kws if kw._tracked()]
        if tracked:
            self.log.debug("%s: %s; re-reading %s", link.describe(), why, ", ".join(tracked))
        self._repair_reads(link, link.repair.lost(tracked, supersede), why)

    def _tracked_names(self, link: _Link) -> List[str]:
        return [name for name, kw in self.kwobjs.items()
                if self.owner.get(name) is link and kw._tracked()]

    def _repair_reads(self, link: _Link, names: Iterable[str], why: str) -> None:
        epoch = link.repair.epoch
        for name in names:
            kw = self.kwobjs.get(name)
            if kw is None or self.owner.get(name) is not link:
                link.repair.done(name, epoch, False, time.monotonic(), tracked=False)
                continue
            req = protocol.request("read", name, {})
            task = Task(f"{self.service}.{name}: read ({why})", req,
                        time.monotonic() + self.timeout)
            p = _Pending(req, task, self.timeout,
                         lambda r, kw=kw: self._ingest_reply(kw, r, FRESH))
            task.add_done_callback(
                lambda t, n=name, k=kw: self._repair_done(link, n, epoch, t, k))
            self._send(p)

    def _repair_done(self, link: _Link, name: str, epoch: int, task: Task,
                     kw: "Keyword") -> None:
        if task.status == ERROR:
            self.log.debug("%s", task.error)
        again = link.repair.done(name, epoch, task.status == SUCCESS, time.monotonic(),
                                 tracked=kw._tracked() and self.kwobjs.get(name) is kw)
        self._repair_reads(link, again, "a loss while the last re-read was in flight")

    def _fail_orphaned(self, link: _Link) -> None:
        """Fail requests an earlier incarnation of the dispatcher acknowledged.

        The process that would have answered them is gone; waiting for the
        whole timeout (a long move may have a long one) would tell nothing more.
        """
        if link.started is None:
            return
        orphans = [p for p in self.pending.values() if p.link is link and p.acked
                   and p.ack_started is not None and p.ack_started != link.started]
        for p in orphans:
            self.pending.pop(p.request.id, None)
            p.task._fail(DispatcherRestarted(
                f"{p.description}: {link.describe()} restarted after acknowledging the "
                f"request, so no answer will come; it may or may not have been applied "
                f"(read the keyword to know)"))

    def _internal_read(self, name: str, why: str) -> None:
        kw = self.kwobjs.get(name)
        if kw is None or name in self.inflight_reads or name not in self.owner:
            return
        self.inflight_reads.add(name)
        req = protocol.request("read", name, {})
        task = Task(f"{self.service}.{name}: read ({why})", req, time.monotonic() + self.timeout)
        p = _Pending(req, task, self.timeout, lambda r: self._ingest_reply(kw, r, FRESH))
        task.add_done_callback(lambda t: self._read_done(name, t))
        self._send(p)

    def _read_done(self, name: str, task: Task) -> None:
        self.inflight_reads.discard(name)
        if task.status == ERROR:
            self.log.debug("%s", task.error)

    def _ingest_reply(self, kw: "Keyword", reply: protocol.Reply, source: str = REPLY) -> Any:
        """Take in a VALUE reply (I/O thread); fire callbacks if it is news."""
        self._fire(kw, kw._ingest(reply.payload, reply.raw, source))
        return reply.payload

    def _fire(self, kw: "Keyword", state: Optional[_State]) -> None:
        if state is not None:
            self.callbacks.fire(kw, state)

    def io_register(self, kw: "Keyword") -> None:
        """A new Keyword object; catch up with a broadcast newer than its describe."""
        self.kwobjs[kw.name] = kw
        cached = self.last_broadcast.get(kw.name)
        if cached is not None:
            kw._ingest(cached[0], cached[1], FRESH)

    def io_set_poll(self, name: str, period: Optional[float]) -> None:
        if period is None:
            self.polls.pop(name, None)
        else:
            self.polls[name] = [float(period), time.monotonic() + float(period)]

    # ------------------------------------------------------------- liveness
    def _heard(self, link: _Link, now: float) -> None:
        link.last_heard = now
        if link.alive:
            return
        link.alive = True
        link.relookup_start = None
        self._publish_alive()
        self.log.info("%s is answering again", link.describe())
        self._connection_changed(link, True)
        self._resync(link, "answering again")

    def _link_down(self, link: _Link, now: float) -> None:
        link.alive = False
        link.synced = False
        self._publish_alive()
        self.log.warning("%s: nothing heard for %.1f s; marking it disconnected",
                         link.describe(), now - link.last_heard)
        self._fail_silent(link, now)
        self._connection_changed(link, False)
        self._start_relookup(link)

    def _fail_silent(self, link: _Link, now: float) -> None:
        """Requests in flight to a dispatcher known dead fail now, not at their timeouts.

        Requests sent after this (while it is down) keep their timeouts: the
        dispatcher may come back (a SIGSTOPped one does).  An unacknowledged one
        that failed here is never delivered later (the DEALER is replaced).
        """
        silent = [p for p in self.pending.values() if p.link is link and not p.router]
        if not silent:
            return
        ago = now - link.last_heard
        since = time.strftime("%H:%M:%S", time.localtime(time.time() - ago))
        for p in silent:
            self.pending.pop(p.request.id, None)
            fate = ("it acknowledged the request, which may or may not have been applied "
                    "(read the keyword to know)" if p.acked else
                    "no acknowledgement came, so it may or may not have reached it")
            p.task._fail(DispatcherSilent(
                f"{p.description}: {link.describe()} went silent: nothing heard since "
                f"{since} ({ago:.1f} s ago, liveness {self._liveness(link):g} s); {fate}"))
        if link.dealer is not None:
            # A request reported failed must not reach a replacement later from
            # the old socket's queue: a new socket drops what the old one held.
            self._reset_dealer(link)

    def _connection_changed(self, link: _Link, connected: bool) -> None:
        for name, kw in self.kwobjs.items():
            if self.owner.get(name) is link:
                self._fire(kw, kw._set_connected(connected))

    # -------------------------------------------------------------- lookups
    def _start_relookup(self, link: _Link) -> None:
        if not self.config.router.enable or not link.name or link.relookup_start is not None:
            return
        link.relookup_start = time.monotonic()
        link.relookup_attempts = 0

    def _relookup(self, link: _Link) -> None:
        """Ask the router where the dispatcher is now (it may have moved)."""
        link.relookup_attempts += 1
        link.lookup_inflight = True
        req = protocol.request("lookup", self.service, {})
        what = f"lookup {self.service!r} for {link.describe()}"
        task = Task(what, req, time.monotonic() + self.router_timeout)
        p = _Pending(req, task, self.router_timeout, lambda r: r.payload, router=True)
        task.add_done_callback(lambda t: self._relookup_done(link, t))
        self._send_router(p)

    def _relookup_done(self, link: _Link, task: Task) -> None:
        link.lookup_inflight = False
        if task.status == ERROR:
            self.log.debug("%s", task.error)
            return
        result = task.result if isinstance(task.result, dict) else {}
        entries, _bad = split_entries(result.get("dispatchers") or [])
        for entry in entries:
            if _link_key(entry) != link.key:
                continue
            if link.address != link.address_of(entry):
                self._move(link, entry)
            elif link.alive:           # a slow dispatcher, not a moved one: stop asking
                link.relookup_start = None
        new = [e for e in entries if _link_key(e) not in self.links]
        if new:
            for key in self.io_add_links(new):
                self._list_link(key)

    def _list_link(self, key: str) -> None:
        """Ask a new dispatcher which keywords it owns."""
        req = protocol.request("list", "", {})
        task = Task(f"{self.service}: list {key}", req, time.monotonic() + self.timeout)
        p = _Pending(req, task, self.timeout, lambda r: r.payload, link_key=key)
        task.add_done_callback(lambda t: t.status == SUCCESS and self.io_listed(key, t.result))
        self._send(p)


def _routers_text(addresses: List[str]) -> str:
    """"the router at A", or "the routers at A, B" (messages name every one asked)."""
    if len(addresses) == 1:
        return f"the router at {addresses[0]}"
    return f"the routers at {', '.join(addresses)}"


def unknown_keyword_message(service: str, name: str, known: Iterable[str]) -> str:
    """'service 'x' has no keyword 'FOO'; did you mean ...' for a KeyError."""
    close = difflib.get_close_matches(name.upper(), list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"service {service!r} has no keyword {name.upper()!r}{hint}"


# =============================================================================
# Keyword
# =============================================================================

_ALLOWED_KEYS = ("ascii", "binary", "bin", "populated", "monitored", "monitor", "reads",
                 "writes", "timestamp", "units", "type", "name", "enumerators", "connected",
                 "description", "broadcasts")


class Keyword:
    """One keyword of a :class:`Service`, as KTL's ``ktl.Keyword``.

    Values arrive in two forms: *ascii* (the dispatcher's canonical string,
    what KTL shows) and *binary* (the native Python value).  The cache
    (``kw['ascii']``, ``kw.value``...) holds the latest value taken in from a
    read, a write reply or a broadcast.
    """

    def __init__(self, service: "Service", name: str, description: Dict[str, Any],
                 raw: Optional[bytes] = None) -> None:
        self.service = service
        self._name = name.upper()
        self._kt = _keyword_type(self._name, description, service.log)
        self._units = description.get("units") or ""
        self._text = description.get("description") or ""
        self._readonly = bool(description.get("readonly"))
        self._writeonly = bool(description.get("writeonly"))
        self._declared_timeout = _seconds_or_none(description.get("timeout"))
        self.progress = description.get("progress") or None   # the keyword showing progress
        self._cond = threading.Condition()
        self._state = _State()
        self._local = threading.local()       # .state: what a running callback sees
        self._fired_seq: Optional[int] = None    # the last change the callbacks were given
        self._fired_time: Optional[float] = None  # ...and its dispatcher time (restarts)
        self._broadcasts = 0
        self._updates = 0                 # broadcasts and catch-up reads taken in
        self._history: Deque[HistorySlice] = collections.deque(maxlen=HISTORY_LENGTH)
        self._callbacks: List[Callable[["Keyword"], Any]] = []
        self._listeners: Set[threading.Event] = set()
        self._monitored = False
        self._watchers = 0
        self._polled = False
        if "value" in description:                 # raw: a numpy array's frame
            self._ingest(*_described_value(self._kt, description, raw), REPLY)

    # ------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self._name

    @property
    def full_name(self) -> str:
        return f"{self.service.name}.{self._name}"

    @property
    def KTL_TYPE(self) -> str:  # noqa: N802 - KTL's attribute name
        return self._kt.type

    @property
    def keyword_type(self) -> KeywordType:
        return self._kt

    @property
    def units(self) -> str:
        return self._units

    def clone(self) -> "Keyword":
        return self

    def __repr__(self) -> str:
        return (f"<cauldron_zmq.ktl.Keyword {self.full_name} {self._kt.ktl_type} "
                f"ascii={self._view().ascii!r}>")

    # --------------------------------------------------------------- values
    def _view(self) -> _State:
        """The cached state; inside a callback, the state that fired it."""
        state = getattr(self._local, "state", None)
        return state if state is not None else self._state

    @property
    def value(self) -> Any:
        """The cached native ("binary") value; None until one was received."""
        return self._view().value

    def _current_value(self, binary: bool = False, both: bool = False) -> Any:
        """The cached value as ``read()`` would give it, without asking (Cauldron's name)."""
        state = self._view()
        if both:
            return state.value, state.ascii
        return state.value if binary else state.ascii

    @property
    def binary(self) -> Any:
        """KTL's name for :attr:`value`: the cached native value (None until one arrived)."""
        return self._view().value

    @property
    def ascii(self) -> Optional[str]:
        """The ascii value; an array's is formatted here, when asked (it does not travel)."""
        state = self._view()
        if state.ascii is None and state.value is not None:
            return self._ascii_of(state.value)
        return state.ascii

    @property
    def timestamp(self) -> Optional[float]:
        """The dispatcher's time (epoch s, sub-second) of the cached value."""
        return self._view().time

    @property
    def history(self) -> Deque[HistorySlice]:
        with self._cond:
            return collections.deque(self._history, maxlen=self._history.maxlen)

    @property
    def connected(self) -> bool:
        """False while the dispatcher is silent (no heartbeat within liveness)."""
        return self._view().connected

    @property
    def populated_value(self) -> bool:
        return self._view().populated

    def cast(self, value: Any) -> Any:
        """ascii (or any accepted form) to the native value, as the type converts it."""
        return self._kt.from_wire(value, None, check=False)

    # ------------------------------------------------- values as operands
    # KTL's Keyword compares and computes by its binary value: ``kw > 5``,
    # ``kw == 'Open'``, ``abs(kw) > other_kw``, ``'%s' % kw``.  A keyword that
    # has no value yet is read once first.  ``__eq__`` compares values, yet
    # ``__hash__`` stays the object's identity: a Keyword is still a usable
    # dict key and set member (one Keyword object per name and Service, so
    # identity is the name), and a value that changes never moves it in a
    # dict.  ``kw in {'Open'}`` is therefore False; compare explicitly.

    def _binary_now(self) -> Any:
        """The cached binary value, read from the dispatcher if none arrived yet."""
        if not self._view().populated:
            self.read()
        return self._view().value

    def _operand(self) -> Value:
        self._binary_now()
        return self._snapshot_view()

    def _snapshot_view(self) -> Value:
        state = self._view()
        return Value(state.value, state.ascii, self.cast)

    def _compare_to(self, op: str, other: Any) -> bool:
        right = other._operand() if isinstance(other, Keyword) else other
        try:
            return compare(op, self._operand(), right, case=True)
        except ExpressionError as exc:
            raise TypeError(f"{self.full_name}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return other is self or self._compare_to("==", other)

    def __ne__(self, other: object) -> bool:
        return other is not self and self._compare_to("!=", other)

    def __lt__(self, other: Any) -> bool:
        return self._compare_to("<", other)

    def __le__(self, other: Any) -> bool:
        return self._compare_to("<=", other)

    def __gt__(self, other: Any) -> bool:
        return self._compare_to(">", other)

    def __ge__(self, other: Any) -> bool:
        return self._compare_to(">=", other)

    __hash__ = object.__hash__        # identity, on purpose: see above

    def __str__(self) -> str:
        """The ascii value (read first if none arrived yet), as KTL's ``str(kw)``."""
        self._binary_now()
        text = self._view().ascii
        return "" if text is None else text

    def __format__(self, spec: str) -> str:
        """``f"{kw}"`` is the ascii value; ``f"{kw:.2f}"`` formats the binary value."""
        return str(self) if not spec else format(self._binary_now(), spec)

    def __int__(self) -> int:
        return int(self._binary_now())

    def __float__(self) -> float:
        return float(self._binary_now())

    def __round__(self, ndigits: Optional[int] = None) -> Any:
        return round(self._binary_now(), ndigits)

    def __abs__(self) -> Any:
        return abs(self._binary_now())

    def __neg__(self) -> Any:
        return -self._binary_now()

    def __pos__(self) -> Any:
        return +self._binary_now()

    def __add__(self, other: Any) -> Any:
        return self._binary_now() + _value_of(other)

    def __radd__(self, other: Any) -> Any:
        return other + self._binary_now()

    def __sub__(self, other: Any) -> Any:
        return self._binary_now() - _value_of(other)

    def __rsub__(self, other: Any) -> Any:
        return other - self._binary_now()

    def __mul__(self, other: Any) -> Any:
        return self._binary_now() * _value_of(other)

    def __rmul__(self, other: Any) -> Any:
        return other * self._binary_now()

    def __truediv__(self, other: Any) -> Any:
        return self._binary_now() / _value_of(other)

    def __rtruediv__(self, other: Any) -> Any:
        return other / self._binary_now()

    def __floordiv__(self, other: Any) -> Any:
        return self._binary_now() // _value_of(other)

    def __rfloordiv__(self, other: Any) -> Any:
        return other // self._binary_now()

    def __mod__(self, other: Any) -> Any:
        return self._binary_now() % _value_of(other)

    def __rmod__(self, other: Any) -> Any:
        return other % self._binary_now()

    def __pow__(self, other: Any) -> Any:
        return self._binary_now() ** _value_of(other)

    def __rpow__(self, other: Any) -> Any:
        return other ** self._binary_now()

    def __getitem__(self, key: str) -> Any:
        if key not in _ALLOWED_KEYS:
            raise KeyError(f"{self.full_name}: unknown key {key!r}; "
                           f"expected one of {', '.join(_ALLOWED_KEYS)}")
        return getattr(self, "_item_" + key)()

    def _item_ascii(self) -> Optional[str]:
        return self.ascii

    def _item_binary(self) -> Any:
        return self.value

    _item_bin = _item_binary          # KTL's short spelling

    def _item_populated(self) -> bool:
        return self.populated_value

    def _item_monitored(self) -> bool:
        return self._monitored

    _item_monitor = _item_monitored

    def _item_reads(self) -> bool:
        return not self._writeonly

    def _item_writes(self) -> bool:
        return not self._readonly

    def _item_timestamp(self) -> Optional[float]:
        return self.timestamp

    def _item_units(self) -> str:
        return self._units

    def _item_type(self) -> str:
        return self._kt.ktl_type

    def _item_name(self) -> str:
        return self._name

    def _item_connected(self) -> bool:
        return self.connected

    def _item_description(self) -> str:
        return self._text

    def _item_broadcasts(self) -> int:
        with self._cond:
            return self._broadcasts

    def _item_enumerators(self) -> Dict[str, str]:
        if self._kt.enumerators is None:
            raise KeyError(f"{self.full_name} ({self._kt.ktl_type}) has no enumerators")
        return {str(value): name for value, name in self._kt.enumerators}

    # ----------------------------------------------------------------- I/O
    def read(self, binary: bool = False, both: bool = False, wait: bool = True,
             timeout: Optional[float] = None) -> Any:
        """Ask the dispatcher for the value (running its read hooks).

        Returns ascii, or native with ``binary=True``, or ``(binary, ascii)``
        with ``both=True``; ``wait=False`` returns a :class:`Task`.
        """
        task = self._read_task(binary, both, timeout, REPLY)
        return task if not wait else task.get()

    def _read_task(self, binary: bool, both: bool, timeout: Optional[float],
                   source: str) -> Task:
        engine = self.service._engine_or_raise()
        return engine.submit("read", self._name, timeout=self._timeout(timeout),
                             on_reply=lambda r: self._result(
                                 engine._ingest_reply(self, r, source), r.raw, binary, both),
                             description=self._read_description)

    def _read_description(self) -> str:
        return f"{self.full_name}: read"

    def write(self, value: Any, wait: bool = True, binary: bool = False,
              timeout: Optional[float] = None) -> Any:
        """Write and, with ``wait``, return once the dispatcher applied it.

        Returns the value as applied (ascii; native with ``binary=True``).  A
        refusal raises the dispatcher's error (a DispatcherError that is also
        the remote built-in type); a refused *value* is always a ValueError,
        whichever side refused it (ConversionError here, code
        ``invalid-value`` there).  ``wait=False`` returns a :class:`Task`.
        """
        wire, raw = self._encode(value)
        engine = self.service._engine_or_raise()
        task = engine.submit("write", self._name, {"value": wire}, raw=raw,
                             timeout=self._timeout(timeout), explicit=self._explicit(timeout),
                             on_reply=lambda r: self._result(engine._ingest_reply(self, r),
                                                             r.raw, binary, False),
                             description=lambda: f"{self.full_name}: write {_short(value)}")
        return task if not wait else task.get()

    def _timeout(self, timeout: Optional[float]) -> float:
        """The caller's, else the keyword's declared, else the service's; cut to a deadline()."""
        if timeout is None:
            timeout = self._declared_timeout or self.service.timeout
        return _bounded(float(timeout), self.full_name)

    def _explicit(self, timeout: Optional[float]) -> bool:
        """Whether a deadline bounds a write even after the dispatcher acknowledged it."""
        return (timeout is not None or self._declared_timeout is not None
                or self.service._explicit_timeout or _under_deadline())

    def _encode(self, value: Any) -> Tuple[Any, Optional[bytes]]:
        """Text goes as ascii (the dispatcher parses it); anything else as wire JSON.

        A request over ``[zmq] max-message-size`` is refused here
        (MessageTooLarge): ZeroMQ would drop the connection it travels on
        and the write would only time out.
        """
        if value is None:
            raise ConversionError(f"{self.full_name}: cannot write None")
        limit = self.service._engine_or_raise().max_size
        overhead = protocol.request_overhead("write", self._name)
        size = None
        if isinstance(value, (list, tuple)) and 2 * len(value) + 1 + overhead > limit:
            size = 2 * len(value) + 1 + overhead     # a byte and a comma each, at least:
        if size is None:                             # refused before converting 10**7 items
            wire, raw = (value, None) if isinstance(value, str) else self._kt.to_wire(value)
            size = protocol.oversize(wire, raw, limit, overhead)
            if size is not None and raw is None and isinstance(value, (list, tuple)):
                framed = self._framed(value)         # too long as JSON: try a raw frame
                if framed is not None and protocol.oversize(*framed, limit, overhead) is None:
                    (wire, raw), size = framed, None
        if size is not None:
            raise MessageTooLarge(
                f"{self.full_name}: the write of {size} bytes or more exceeds the message size "
                f"limit of {limit} bytes ([zmq] max-message-size); nothing was sent",
                size=size, limit=limit)
        return wire, (bytes(raw) if raw is not None else None)

    def _framed(self, value: Any) -> Optional[Tuple[Any, Any]]:
        """An array's (header, frame) wire form, with numpy; None if that cannot be."""
        np = _numpy() if self._kt.is_array else None
        if np is None:
            return None
        try:
            return self._kt.to_wire(self._kt.from_wire(np.asarray(value), check=False))
        except (ConversionError, ValueError, TypeError):
            return None

    def _decode(self, wire: Any, raw: Optional[bytes]) -> Any:
        if wire is None:
            return None
        try:
            return self._kt.from_wire(wire, raw, check=False)
        except (ConversionError, ValueError, TypeError) as exc:
            self.service.log.warning("%s: cannot convert %s: %s", self.full_name, _short(wire), exc)
            return None if isinstance(wire, dict) else wire   # never an array's frame header

    def _ascii_of(self, native: Any) -> str:
        """The ascii form of a value that came without one (strings, arrays)."""
        if isinstance(native, str):
            return native
        try:
            return self._kt.to_ascii(native)
        except (ConversionError, ValueError, TypeError):
            return str(native)

    def _result(self, payload: Any, raw: Optional[bytes], binary: bool, both: bool) -> Any:
        if not isinstance(payload, dict):
            raise CauldronError(f"{self.full_name}: the dispatcher answered {payload!r}, "
                                "not a value")
        native = self._decode(payload.get("value"), raw)
        if binary and not both:
            return native
        text = payload.get("ascii")
        if text is None and native is not None:
            text = self._ascii_of(native)
        return (native, text) if both else text

    # ---------------------------------------------------------- monitoring
    def monitor(self, start: bool = True, prime: bool = True, wait: bool = True) -> Optional[Task]:
        """Take broadcasts in and fire callbacks on each; ``prime`` reads first.

        ``start=False`` stops monitoring (callbacks stay registered).  With
        ``wait=False`` the priming read's Task is returned.
        """
        with self._cond:
            self._monitored = bool(start)
        if start and prime:
            task = self._read_task(False, False, None, FRESH)   # callbacks get this value
            if not wait:
                return task
            task.get()
        return None

    subscribe = monitor

    def callback(self, function: Callable[["Keyword"], Any], remove: bool = False,
                 preferred: bool = False) -> None:
        """Register ``function(keyword)``; held strongly until ``remove=True``.

        Callbacks run on the Service's callback thread, one update at a time,
        and see the keyword as that update left it (``kw['ascii']`` is the
        value that fired them, even if newer ones arrived since).  Unlike the
        original Cauldron they fire on every broadcast received while
        monitored, changed or not, and for the value ``monitor()`` primes
        with; unmonitored, on a read or write reply that brings a new value.
        """
        if not callable(function):
            raise TypeError(f"{self.full_name}: callback {function!r} is not callable")
        with self._cond:
            if remove:
                self._callbacks = [f for f in self._callbacks if f != function]
            elif preferred:
                self._callbacks = [function] + [f for f in self._callbacks if f != function]
            elif function not in self._callbacks:
                self._callbacks = self._callbacks + [function]

    def _run_callbacks(self, state: _State) -> None:
        """On the callback thread: each callback sees the value that fired it."""
        with self._cond:
            callbacks = self._callbacks
        self._local.state = state
        try:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                    self.service.log.exception("%s: callback %r raised", self.full_name, fn)
        finally:
            self._local.state = None

    def poll(self, period: float = 1.0, start: bool = True) -> None:
        """Read in the background every ``period`` s (callbacks fire on new values)."""
        if start and not period > 0:
            raise ValueError(f"{self.full_name}: poll period must be positive, got {period!r}")
        self._polled = bool(start)
        name = self._name
        engine = self.service._engine_or_raise()
        engine.post(lambda: engine.io_set_poll(name, float(period) if start else None))

    def isAlive(self) -> bool:  # noqa: N802 - KTL's name
        """True if the dispatcher was heard from within ``[zmq] liveness`` seconds."""
        engine = self.service._engine_or_raise()
        key = engine.names.get(self._name)
        return engine.is_alive(key) if key is not None else False

    # -------------------------------------------------------------- waiting
    def wait(self, timeout: Optional[float] = None, operator: Optional[str] = None,
             value: Any = None, sequence: Optional[Task] = None, reset: bool = False,
             case: bool = False, *, raise_on_timeout: bool = False) -> bool:
        """Block until the next update, a comparison holds, or a write Task ends.

        * no condition: the next update of this keyword (a broadcast, or a
          value the client re-read to catch up) arriving after the call;
        * ``operator`` ('==', '!=', '<', '<=', '>', '>=') and ``value``: until
          the keyword's value compares so (a string is cast with the
          keyword's type, so enumerator names work);
        * ``sequence=task``: until that ``write(wait=False)`` Task completes
          (its error is re-raised).

        Returns True, or **False when** ``timeout`` **seconds pass first**, as
        KTL does; ``timeout=None`` waits as long as it takes.  With
        ``raise_on_timeout=True`` an expired timeout raises TimeoutError
        (saying the last value seen) instead.  What is not a timeout raises
        anyway: a bad operator, a priming read the dispatcher does not answer,
        a dispatcher silent when the timeout expires, a Service shut down.
        ``reset`` is accepted for KTL's signature: every wait looks only at
        updates after the call.
        """
        limit = None if timeout is None else float(timeout)
        if sequence is not None:
            return self._wait_sequence(sequence, limit, raise_on_timeout)
        if operator is not None:
            return self._wait_compare(operator, value, limit, case, raise_on_timeout)
        return self._wait_update(limit, raise_on_timeout)

    def waitFor(self, expression: str, timeout: Optional[float] = None,  # noqa: N802 - KTL
                case: bool = False, *, raise_on_timeout: bool = False) -> bool:
        """Block until an expression relative to this keyword holds: ``'== "open"'``.

        The expression starts with a comparison and may go on as any KTL
        expression (``'== 1 or == 2'``, ``'>= $svc.LIMIT - 0.5'``); bare words
        are this keyword's enumerator names.  True when it holds, False when
        ``timeout`` expires (or TimeoutError with ``raise_on_timeout=True``).
        """
        from .ktl import _wait_parsed      # ktl builds on this module
        expr = parse_relative(expression, self.service.name, self._name)
        return _wait_parsed(expr, timeout, case, raise_on_timeout,
                            {(self.service.name, self._name): self})

    waitfor = waitFor

    def _wait_sequence(self, task: Task, limit: Optional[float], raise_on_timeout: bool) -> bool:
        if not isinstance(task, Task):
            raise TypeError(f"{self.full_name}: sequence= takes the Task that "
                            f"write(wait=False) returned, not {task!r}")
        if not task.wait(limit):
            if raise_on_timeout:
                raise TimeoutError(f"{self.full_name}: {task.description or 'task'} not "
                                   f"complete within {_fmt_s(limit)}")
            return False
        task.get()                        # re-raises the request's own error
        return True

    def _wait_update(self, limit: Optional[float], raise_on_timeout: bool) -> bool:
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            start = self._updates
            while self._updates == start:
                self._check_open()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return _timed_out([self], f"{self.full_name}: no update", limit,
                                      raise_on_timeout)
                self._cond.wait(remaining)
        return True

    def _wait_compare(self, op: str, value: Any, limit: Optional[float], case: bool,
                      raise_on_timeout: bool) -> bool:
        if op not in OPERATORS:
            raise ValueError(f"{self.full_name}: unknown operator {op!r}; expected one of "
                             f"{', '.join(OPERATORS)}")
        return _wait_until([self], lambda: compare(op, self._snapshot(), value, case), limit,
                           f"{self.full_name} {op} {value!r}", raise_on_timeout)

    def _snapshot(self) -> Value:
        """The current value for an expression (the lock is re-entrant)."""
        state = self._state
        return Value(state.value, state.ascii, self.cast)

    def _watch(self, delta: int) -> None:
        with self._cond:
            self._watchers += delta

    def _tracked(self) -> bool:
        """Whether the I/O thread keeps this keyword's cache fresh after a loss."""
        return self._monitored or self._watchers > 0 or self._polled

    def _add_listener(self, event: threading.Event) -> None:
        with self._cond:
            self._listeners.add(event)

    def _remove_listener(self, event: threading.Event) -> None:
        with self._cond:
            self._listeners.discard(event)

    # --------------------------------------------- updates (the I/O thread)
    def _ingest(self, payload: Any, raw: Optional[bytes], source: str) -> Optional[_State]:
        """Store a VALUE (unless older than the cache); the state to fire callbacks with.

        Each change (``seq``) reaches the callbacks once, in order: broadcasts
        fire while monitored; the client's own catch-up reads (FRESH) fire
        while monitored or polled; a user's read or write reply fires only
        when not monitored (when monitored, its broadcast follows; replies
        and broadcasts travel on different sockets and may overtake each other).
        """
        if not isinstance(payload, dict) or payload.get("value") is None and raw is None:
            return None                 # no value (yet): stays unpopulated, no history entry
        native = self._decode(payload.get("value"), raw)
        text = payload.get("ascii")
        if text is None and isinstance(native, str):
            text = native                # a string's ascii is itself; an array's is made
                                         # when asked (the ascii property), not per update
        stamp = payload.get("time")
        stamp = float(stamp) if isinstance(stamp, (int, float)) else None
        seq = payload.get("seq") if isinstance(payload.get("seq"), int) else None
        with self._cond:
            old = self._state
            state = _State(native, text, stamp, seq, True, old.connected)
            if not self._is_stale(old, seq, stamp):
                if not old.populated or seq != old.seq or not self._kt.equal(native, old.value):
                    self._history.append(HistorySlice(
                        stamp if stamp is not None else time.time(), native, text, self._name))
                self._state = state
            if source == BROADCAST:
                self._broadcasts += 1
            if source == BROADCAST or (source == FRESH and self._state is state and (
                    not old.populated or (seq, stamp) != (old.seq, old.time))):
                self._updates += 1      # what wait() with no condition waits for
            wanted = {BROADCAST: self._monitored,
                      FRESH: self._monitored or self._polled,
                      REPLY: not self._monitored}[source]
            fire = wanted and bool(self._callbacks) and self._unseen(seq, stamp)
            if fire:
                self._fired_seq, self._fired_time = seq, stamp
            self._cond.notify_all()
            listeners = list(self._listeners)
        for event in listeners:
            event.set()
        return state if fire else None

    def _unseen(self, seq: Optional[int], stamp: Optional[float] = None) -> bool:
        """Whether the change ``seq`` (made at ``stamp``) has not reached the callbacks yet.

        A dispatcher's sequence numbers start again when it restarts, and a
        value read from the replacement may come before any heartbeat shows
        the restart (or none of the old one was ever seen): the same or a
        lower ``seq`` with a newer dispatcher time is a new value.  The same
        change always carries the same time, whichever socket brings it.
        """
        fired = self._fired_seq
        if seq is None or fired is None or seq > fired:
            return True
        fired_time = self._fired_time
        return stamp is not None and fired_time is not None and stamp > fired_time

    @staticmethod
    def _is_stale(old: _State, seq: Optional[int], stamp: Optional[float]) -> bool:
        """A reply older than what a broadcast already brought (sockets race)."""
        if not old.populated or seq is None or old.seq is None or seq >= old.seq:
            return False
        return stamp is None or old.time is None or stamp <= old.time

    def _forget_sequence(self) -> None:
        """The dispatcher restarted: its sequence numbers start again."""
        with self._cond:
            self._state = self._state._replace(seq=None)
            self._fired_seq = self._fired_time = None

    def _wake_waiters(self) -> None:
        """The service shut down: threads in wait()/waitFor() raise ServiceShutDown."""
        with self._cond:
            self._cond.notify_all()
            listeners = list(self._listeners)
        for event in listeners:
            event.set()

    def _check_open(self) -> None:
        if self.service.closed:
            raise ServiceShutDown(f"service {self.service.name!r} was shut down while "
                                  f"waiting on {self.full_name}")

    def _set_connected(self, connected: bool) -> Optional[_State]:
        """Record a liveness change; returns the state if callbacks should fire."""
        with self._cond:
            if self._state.connected == connected:
                return None
            state = self._state = self._state._replace(connected=connected)
            self._cond.notify_all()
            listeners = list(self._listeners)
            fire = self._monitored and bool(self._callbacks)
        for event in listeners:
            event.set()
        return state if fire else None


def _wait_until(keywords: List[Keyword], holds: Callable[[], bool], limit: Optional[float],
                what: str, raise_on_timeout: bool) -> bool:
    """Block until ``holds()`` is true, re-testing it on every change of ``keywords``.

    The keywords are read first unless monitoring keeps them fresh (a read
    the dispatcher does not answer raises: that is no timeout), and kept
    fresh while waiting (re-read after any loss of broadcasts).  ``limit``
    None waits as long as it takes, as KTL does.  Driven by updates, never
    by polling.
    """
    deadline = None if limit is None else time.monotonic() + limit
    changed = threading.Event()
    for kw in keywords:
        kw._watch(+1)
        kw._add_listener(changed)
    try:
        _prime([kw for kw in keywords if not kw._monitored or not kw.populated_value])
        while True:
            changed.clear()
            for kw in keywords:
                kw._check_open()
            if holds():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return _timed_out(keywords, what, limit, raise_on_timeout)
            changed.wait(remaining)
    finally:
        for kw in keywords:
            kw._remove_listener(changed)
            kw._watch(-1)


def _prime(keywords: List[Keyword]) -> None:
    """Read, in parallel and with each service's timeout, the keywords named."""
    tasks = [kw.read(wait=False) for kw in keywords]
    for task in tasks:
        task.get()


def _timed_out(keywords: List[Keyword], what: str, limit: Optional[float],
               raise_on_timeout: bool) -> bool:
    """False (KTL's answer to an expired timeout), unless it was no mere timeout.

    A keyword whose dispatcher is silent when the time is up means the wait
    could not be decided: that raises TimeoutError whatever
    ``raise_on_timeout`` says, so a script never takes the "timed out" branch
    for a dispatcher that is gone.
    """
    seen = ", ".join(f"{kw.full_name}={kw.ascii!r}" for kw in keywords)
    silent = [kw.full_name for kw in keywords if not kw.connected]
    if silent:
        raise TimeoutError(f"{what}: not decided within {_fmt_s(limit)}: the dispatcher of "
                           f"{', '.join(silent)} is silent (no heartbeat within liveness); "
                           f"last values seen: {seen}")
    if raise_on_timeout:
        raise TimeoutError(f"{what}: not satisfied within {_fmt_s(limit)}; "
                           f"last values seen: {seen}")
    return False


def _value_of(x: Any) -> Any:
    """A Keyword's binary value (what it computes with), anything else as it is."""
    return x._binary_now() if isinstance(x, Keyword) else x


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "..." + text[-6:]


def _described_value(kt: KeywordType, description: Dict[str, Any],
                     raw: Optional[bytes]) -> Tuple[Dict[str, Any], Optional[bytes]]:
    """A DESCRIPTION's value as a read would bring it.

    A describe of every keyword has no room for raw frames: it gives a numpy
    array as a JSON list with its ``dtype``, made an array again here (when
    numpy is installed), so its type does not depend on how it was described.
    """
    dtype, value = description.get("dtype"), description.get("value")
    if raw is not None or not kt.is_array or not isinstance(dtype, str) \
            or not isinstance(value, list):
        return description, raw
    np = _numpy()
    if np is None:
        return description, raw
    try:
        native = np.array(kt.from_wire(value, check=False), dtype=dtype)
        header, frame = kt.to_wire(kt.from_wire(native, check=False))
    except (ConversionError, ValueError, TypeError):
        return description, raw
    return dict(description, value=header), bytes(frame)


def _numpy() -> Any:
    from .types import _numpy_import
    return _numpy_import()


def _keyword_type(name: str, description: Dict[str, Any], logger: logging.Logger) -> KeywordType:
    """The KeywordType a ``describe`` reply announces (string if it makes no sense)."""
    try:
        return KeywordType.from_description(description, name)
    except (ConversionError, KeyError, TypeError, ValueError) as exc:
        logger.warning("%s: unusable type in describe reply (%s); treating it as a string",
                       name, exc)
        return keyword_type("string", name=name)


# =============================================================================
# Service
# =============================================================================

_services: "weakref.WeakSet[Service]" = weakref.WeakSet()


class Service:
    """A connection to every dispatcher of a KTL service.

    ``Service(name)`` asks the router where the service's dispatchers listen
    (or, with ``[zmq-router] enable = false``, uses the ``[zmq]`` ports),
    connects to each and learns which keywords each owns.  ``timeout`` (s)
    is the default for every call (default ``[zmq] timeout``); ``wait`` (s)
    keeps retrying, on the back-off schedule, for a service that is not up
    yet.  Safe to share between threads.  Call :meth:`shutdown` (or use
    ``with``) when done; interpreter exit also shuts it down.
    """

    def __init__(self, name: str, populate: bool = False,
                 config: Union[str, "os.PathLike[str]", Config, None] = None,
                 timeout: Optional[float] = None, wait: Optional[float] = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a service name is a non-empty str, not {name!r}")
        self.name = check_name("service", name.strip().lower())   # ValueError: not a name
        self.config = load_config(config)
        self.timeout = float(timeout) if timeout is not None else self.config.zmq.timeout / 1000.0
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.log = logging.getLogger(f"cauldron_zmq.client.{self.name}")
        self._explicit_timeout = timeout is not None
        self._keywords: Dict[str, Keyword] = {}
        self._lock = threading.RLock()
        self._engine: Optional[_Engine] = _Engine(self.name, self.config, self.timeout, self.log)
        self._engine.start()
        try:
            # One deadline for the whole constructor: ``wait`` if given, else the timeout.
            with deadline(float(wait) if wait else self.timeout):
                self._connect(wait)
                if populate:
                    self._populate()
        except BaseException:
            self.shutdown()
            raise
        _services.add(self)

    # ------------------------------------------------------------- connect
    def _connect(self, wait: Optional[float]) -> None:
        """Look up and connect; with ``wait``, retry until the constructor's deadline."""
        end = getattr(_scope, "end", None) or math.inf
        start, attempt = time.monotonic(), 0
        while True:
            try:
                self._connect_once()
                return
            except (ServiceNotFound, TimeoutError) as exc:
                attempt += 1
                now = time.monotonic()
                # the last attempt comes just before the end, not after it
                next_at = min(start + LOOKUP.time_of(attempt), end - _LAST_TRY)
                if not wait or now >= end - _LAST_TRY:
                    hint = self._service_hint() if isinstance(exc, ServiceNotFound) else ""
                    if wait:
                        hint += f" (still, after {now - start:.1f} s of waiting up to " \
                                f"{float(wait):g} s)"
                    if not hint:
                        raise
                    again = type(exc)(f"{exc}{hint}")
                    again._waited = bool(wait)   # type: ignore[attr-defined]
                    raise again from None
                self.log.debug("%s; retrying", exc)
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _connect_once(self) -> None:
        engine = self._engine_or_raise()
        entries = self._lookup() if self.config.router.enable else [self._static_entry()]
        keys = engine.call(lambda: engine.io_add_links(entries))
        tasks = {key: engine.submit("list", link=key, description=f"{self.name}: list",
                                    timeout=_bounded(self.timeout, f"{self.name}: list"))
                 for key in keys}
        errors = []
        for key, task in tasks.items():
            try:
                result = task.get()
            except CauldronError as exc:
                errors.append(exc)
                continue
            engine.call(lambda k=key, r=result: engine.io_listed(k, r))
        refused = [exc for exc in errors if isinstance(exc, AuthenticationError)]
        if errors and len(errors) == len(tasks) and (not engine.names or refused):
            raise (refused or errors)[0]
        if errors and _left() < 0.05:       # no time left for anything else: say why
            raise errors[0]
        for exc in errors:
            self.log.warning("%s; using the router's keyword list for it", exc)

    def _static_entry(self) -> Dict[str, Any]:
        z = self.config.zmq
        return {"dispatcher": "", "host": z.host, "protocol": z.protocol,
                "dispatch_port": z.dispatch_port, "broadcast_port": z.broadcast_port}

    def _lookup(self) -> List[Dict[str, Any]]:
        engine = self._engine_or_raise()
        what = f"looking up service {self.name!r}"
        timeout = self.timeout if self._explicit_timeout else engine.router_timeout
        task = engine.router_request("lookup", self.name, timeout=_bounded(timeout, what),
                                     description=what)
        try:
            result = task.get()
        except RouterError as exc:
            if exc.code == protocol.E_NOT_FOUND:
                raise ServiceNotFound(f"service {self.name!r} is not known to "
                                      f"{engine.router_where}") from None
            raise
        raw = result.get("dispatchers") if isinstance(result, dict) else None
        entries, problems = split_entries(raw or [])
        for problem in problems:
            self.log.info("service %r: ignoring a bad look-up entry: %s", self.name, problem)
        if problems and not entries:
            raise ProtocolError(protocol.E_REQUEST, (
                f"service {self.name!r}: {engine.router_where} lists no "
                f"usable dispatcher ({'; '.join(problems[:3])})"))
        if not entries:
            raise ServiceNotFound(f"service {self.name!r}: {engine.router_where} "
                                  f"lists no dispatcher for it")
        return entries

    def _book(self) -> List[Dict[str, Any]]:
        """The router's book entries (every service, down ones too); [] if it cannot tell."""
        engine = self._engine_or_raise()
        if not self.config.router.enable:
            return []
        try:
            task = engine.router_request("list", timeout=_bounded(engine.router_timeout),
                                         description="listing the router's book")
            book = task.get()
        except CauldronError as exc:
            self.log.debug("cannot list the router's book: %s", exc)
            return []
        entries = book.get("entries") if isinstance(book, dict) else None
        return [e for e in entries or () if isinstance(e, dict)]

    def _service_hint(self) -> str:
        """'; did you mean 'focus'?' from the services the router knows."""
        if _left() < 0.05:
            return ""
        names = {str(e.get("service") or "") for e in self._book()}
        close = difflib.get_close_matches(self.name, sorted(n for n in names if n), 3, 0.6)
        return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

    def _down_error(self, name: str) -> Optional[DispatcherDown]:
        """The error for a keyword whose dispatcher is down (the router's book says)."""
        for entry in self._book():
            if str(entry.get("service") or "").lower() != self.name or \
                    name not in {str(k).upper() for k in entry.get("keywords") or ()}:
                continue
            state = str(entry.get("state") or "")
            if state == "live":
                return None
            age = entry.get("age")
            heard = f"last heard {age:.0f} s ago" if isinstance(age, (int, float)) else state
            return DispatcherDown(f"{self.name}.{name} is served by dispatcher "
                                  f"{entry.get('dispatcher')!r}, which is down ({heard})")
        return None

    def _silent_error(self, name: str) -> Optional[DispatcherDown]:
        """The error for a keyword whose dispatcher this client knows is silent."""
        engine = self._engine_or_raise()

        def state() -> Optional[Tuple[str, bool, bool, float]]:
            link = engine.owner.get(name)
            if link is None:
                return None
            return (link.name, link.alive, link.started is not None,
                    time.monotonic() - link.last_heard)
        try:
            found = engine.call(state, timeout=1.0)
        except CauldronError:
            return None
        if found is None or found[1]:
            return None
        who, _alive, heard, ago = found
        how = (f"which is down (last heard {ago:.0f} s ago)" if heard else
               f"which has not answered since this client connected ({ago:.0f} s ago)")
        return DispatcherDown(f"{self.name}.{name} is served by dispatcher {who!r}, {how}")

    def _populate(self) -> None:
        """Create every Keyword in one describe round trip per dispatcher."""
        engine = self._engine_or_raise()
        keys = sorted(set(engine.names.values()))
        tasks = [engine.submit("describe", "", link=key, description=f"{self.name}: describe",
                               timeout=_bounded(self.timeout, f"{self.name}: describe"))
                 for key in keys]
        for task in tasks:
            result = task.get() or {}
            for name, desc in (result.get("keywords") or {}).items():
                if isinstance(desc, dict):
                    self._adopt(str(name).upper(), desc)

    def _engine_or_raise(self) -> _Engine:
        engine = self._engine
        if engine is None:
            raise ServiceShutDown(f"service {self.name!r} is shut down")
        return engine

    # ------------------------------------------------------------ keywords
    def __getitem__(self, name: str) -> Keyword:
        if not isinstance(name, str):
            raise TypeError(f"a keyword name is a str, not {type(name).__name__}")
        upper = name.strip().upper()
        with self._lock:
            kw = self._keywords.get(upper)
        if kw is not None:
            return kw
        if not self.has_keyword(upper):
            raise self._down_error(upper) or UnknownKeyword(
                unknown_keyword_message(self.name, upper, self.keywords()))
        what = f"{self.name}.{upper}: describe"
        try:
            desc, raw = self._engine_or_raise().submit(
                "describe", upper, on_reply=lambda r: (r.payload, r.raw), description=what,
                timeout=_bounded(self.timeout, what)).get()
        except TimeoutError:
            down = self._silent_error(upper) or (
                None if _left() < 0.05 else self._down_error(upper))
            if down is not None:
                raise down from None
            raise
        return self._adopt(upper, desc if isinstance(desc, dict) else {}, raw)

    def _adopt(self, name: str, desc: Dict[str, Any], raw: Optional[bytes] = None) -> Keyword:
        with self._lock:
            kw = self._keywords.get(name)
            if kw is not None:
                return kw
            kw = Keyword(self, name, desc, raw)
            self._keywords[name] = kw
        engine = self._engine_or_raise()
        engine.call(lambda: engine.io_register(kw))
        return kw

    def has_keyword(self, name: str) -> bool:
        return isinstance(name, str) and name.strip().upper() in self._engine_or_raise().names

    has_key = has_keyword

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has_keyword(name)

    def keywords(self) -> List[str]:
        """Every keyword name of the service, sorted."""
        return sorted(self._engine_or_raise().names)

    def populated(self) -> List[str]:
        """Names of the Keyword objects created so far (no I/O)."""
        with self._lock:
            return sorted(self._keywords)

    def __iter__(self):  # type: ignore[no-untyped-def]
        """The Keyword objects created so far."""
        with self._lock:
            return iter(list(self._keywords.values()))

    def read(self, keyword: str, *args: Any, **kwargs: Any) -> Any:
        """``self[keyword].read(...)``: describe and read within the one timeout."""
        timeout = kwargs.get("timeout")
        with deadline(float(timeout) if timeout is not None else self.timeout):
            return self[keyword].read(*args, **kwargs)

    def write(self, keyword: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        """``self[keyword].write(...)``; an explicit ``timeout`` bounds describe and write."""
        timeout = kwargs.get("timeout")
        if timeout is None:
            return self[keyword].write(value, *args, **kwargs)
        with deadline(float(timeout)):
            return self[keyword].write(value, *args, **kwargs)

    def isAlive(self) -> bool:  # noqa: N802 - KTL's name
        """True if every dispatcher of the service was heard from within liveness."""
        return self._engine_or_raise().is_alive()

    def dispatchers(self) -> List[Dict[str, Any]]:
        """Name, address and liveness of each dispatcher (for tools and logs)."""
        engine = self._engine_or_raise()
        return engine.call(lambda: [
            {"dispatcher": link.name, "address": link.dispatch_address,
             "broadcast": link.broadcast_address, "alive": link.alive,
             "in_sync": link.repair.in_sync(),     # every re-read owed has answered
             "keywords": len(link.keywords)} for link in engine.links.values()])

    def add_loss_listener(self, listener: Callable[[str, bool], Any]) -> None:
        """Call ``listener(why, restarted)`` whenever the client re-syncs after a possible loss.

        For gateways that must not hide loss from their own subscribers: it
        runs on the callback thread, before the callbacks of the values the
        client re-reads.  ``restarted`` is True for a dispatcher restart;
        ``why`` says what was noticed ("lost broadcasts (...)", "broadcast
        socket connected", ...).
        """
        if not callable(listener):
            raise TypeError(f"loss listener {listener!r} is not callable")
        engine = self._engine_or_raise()
        engine.post(lambda: engine.loss_listeners.append(listener))

    # ------------------------------------------------------------ lifecycle
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop this Service's threads and close its sockets.  Idempotent."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop(timeout)
            with self._lock:
                keywords = list(self._keywords.values())
            for kw in keywords:
                kw._wake_waiters()

    @property
    def closed(self) -> bool:
        return self._engine is None

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "shut down" if self._engine is None else f"{len(self.keywords())} keywords"
        return f"<cauldron_zmq.ktl.Service {self.name!r} {state}>"


def shutdown_all() -> None:
    """Shut down every Service still running (registered with atexit)."""
    for svc in list(_services):
        try:
            svc.shutdown(timeout=1.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


import atexit  # noqa: E402 - kept next to its one use

atexit.register(shutdown_all)
