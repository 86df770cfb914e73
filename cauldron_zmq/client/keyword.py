"""One keyword of a Service, as KTL's ``ktl.Keyword``: its cache, calls, callbacks and waits."""
from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Set

from ..errors import TimeoutError
from ..expression import OPERATORS, Value, compare, parse_relative
from ..protocol.cache import FRESH, REPLY, HistorySlice, KeywordCache
from ..protocol.cache import State as _State
from ..protocol.cache import fields as _value_fields
from ..types import KeywordType
from .operators import Operators
from .task import (
    ServiceShutDown,
    Task,
    _bounded,
    _fmt_s,
    _seconds_or_none,
    _under_deadline,
)
from .values import Values, _described_value, _keyword_type, _short
from .waits import _wait_until

if TYPE_CHECKING:
    from .service import Service


# =============================================================================
# Keyword
# =============================================================================

_ALLOWED_KEYS = ("ascii", "binary", "bin", "populated", "monitored", "monitor", "reads",
                 "writes", "timestamp", "units", "type", "name", "enumerators", "connected",
                 "description", "broadcasts")


class Keyword(Values, Operators):
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
        self._lock = threading.RLock()    # the cache, callbacks and listeners; re-entrant
        self._cache = KeywordCache(self._name, self._kt.equal)   # guarded by _lock
        self._local = threading.local()       # .state: what a running callback sees
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
        return state if state is not None else self._cache.state

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
        with self._lock:
            history = self._cache.history
            return collections.deque(history, maxlen=history.maxlen)

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
        with self._lock:
            return self._cache.broadcasts

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
        if wait:
            timeout = self._timeout(timeout)
            engine = self.service._engine_or_raise()
            reply = engine.direct.request("read", self._name, {}, None, timeout, True,
                                          self._read_description)
            if reply is not None:            # answered in this thread (see client.direct)
                return self._reply_result(reply, binary, both)
        task = self._read_task(binary, both, timeout, REPLY)
        return task if not wait else task.get()

    def _read_task(self, binary: bool, both: bool, timeout: Optional[float],
                   source: str) -> Task:
        engine = self.service._engine_or_raise()
        return engine.submit("read", self._name, timeout=self._timeout(timeout),
                             on_reply=lambda r: self._reply_result(r, binary, both, source),
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
        seconds, explicit = self._timeout(timeout), self._explicit(timeout)
        if wait:
            reply = engine.direct.request(
                "write", self._name, {"value": wire}, raw, seconds, explicit,
                lambda: f"{self.full_name}: write {_short(value)}")
            if reply is not None:            # answered in this thread (see client.direct)
                return self._reply_result(reply, binary, False)
        task = engine.submit("write", self._name, {"value": wire}, raw=raw,
                             timeout=seconds, explicit=explicit,
                             on_reply=lambda r: self._reply_result(r, binary, False),
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

    # ---------------------------------------------------------- monitoring
    def monitor(self, start: bool = True, prime: bool = True, wait: bool = True) -> Optional[Task]:
        """Take broadcasts in and fire callbacks on each; ``prime`` reads first.

        ``start=False`` stops monitoring (callbacks stay registered).  With
        ``wait=False`` the priming read's Task is returned.
        """
        with self._lock:
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
        with self._lock:
            if remove:
                self._callbacks = [f for f in self._callbacks if f != function]
            elif preferred:
                self._callbacks = [function] + [f for f in self._callbacks if f != function]
            elif function not in self._callbacks:
                self._callbacks = self._callbacks + [function]

    def _run_callbacks(self, state: _State) -> None:
        """On the callback thread: each callback sees the value that fired it.

        ``_callbacks`` is replaced whole on every change, never mutated, so
        it is read without the lock (which the I/O thread takes per update).
        """
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
        from ..ktl import _wait_parsed  # ktl builds on this package
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
        with self._lock:
            start = self._cache.updates
        return _wait_until([self], lambda: self._cache.updates != start, limit,
                           f"{self.full_name}: no update", raise_on_timeout, fresh=False)

    def _wait_compare(self, op: str, value: Any, limit: Optional[float], case: bool,
                      raise_on_timeout: bool) -> bool:
        if op not in OPERATORS:
            raise ValueError(f"{self.full_name}: unknown operator {op!r}; expected one of "
                             f"{', '.join(OPERATORS)}")
        return _wait_until([self], lambda: compare(op, self._snapshot(), value, case), limit,
                           f"{self.full_name} {op} {value!r}", raise_on_timeout)

    def _snapshot(self) -> Value:
        """The current value for an expression (the lock is re-entrant)."""
        state = self._cache.state
        return Value(state.value, state.ascii, self.cast)

    def _watch(self, delta: int) -> None:
        with self._lock:
            self._watchers += delta

    def _tracked(self) -> bool:
        """Whether the I/O thread keeps this keyword's cache fresh after a loss."""
        return self._monitored or self._watchers > 0 or self._polled

    def _add_listener(self, event: threading.Event) -> None:
        with self._lock:
            self._listeners.add(event)

    def _remove_listener(self, event: threading.Event) -> None:
        with self._lock:
            self._listeners.discard(event)

    # ------------------------------- updates (the I/O thread or a direct reply)
    def _take(self, payload: Any, raw: Optional[bytes], source: str) -> Any:
        """Take a value in and queue its callbacks, in one step under the lock.

        Replies (in user threads, see :mod:`.direct`) and broadcasts (the I/O
        thread) arrive concurrently: deciding and queueing under one lock
        keeps the callbacks in the order the changes were taken in.  Returns
        the value decoded (None if the payload carries none), so a reply's
        caller gets it without decoding it a second time.
        """
        got = _value_fields(payload, raw)
        if got is None:
            return None
        native = self._decode(got.value, raw)
        self._store(got, native, source, fire=True)
        return native

    def _reply_result(self, reply: Any, binary: bool, both: bool, source: str = REPLY) -> Any:
        """A read or write reply: taken into the cache, then what the call returns."""
        native = self._take(reply.payload, reply.raw, source)
        return self._result(reply.payload, reply.raw, binary, both, native)

    def _fire(self, state: Optional[_State]) -> None:
        """Queue the callbacks for ``state`` (None: nothing to fire)."""
        engine = self.service._engine
        if state is not None and engine is not None:
            engine.callbacks.fire(self, state)

    def _ingest(self, payload: Any, raw: Optional[bytes], source: str) -> Optional[_State]:
        """Store a VALUE (unless older than the cache); the state to fire callbacks with.

        What is stored and what fires is :meth:`.protocol.cache.KeywordCache.ingest`'s
        decision; here the value is decoded (outside the lock: a flood of
        broadcasts must not hold it, or the callback thread starves).
        """
        got = _value_fields(payload, raw)
        if got is None:
            return None                 # no value (yet): stays unpopulated, no history entry
        return self._store(got, self._decode(got.value, raw), source, fire=False)

    def _store(self, got: Any, native: Any, source: str, fire: bool) -> Optional[_State]:
        """The cache's decision under the lock, waiters and listeners woken; ``fire``
        queues the callbacks under the same lock (see :meth:`_take`)."""
        wall = time.time()
        with self._lock:
            state = self._cache.ingest(native, got.ascii, got.time, got.seq, source,
                                       monitored=self._monitored, polled=self._polled,
                                       has_callbacks=bool(self._callbacks), wall=wall)
            if fire:
                self._fire(state)
            listeners = list(self._listeners) if self._listeners else ()
        for event in listeners:
            event.set()
        return state

    def _forget_sequence(self) -> None:
        """The dispatcher restarted: its sequence numbers start again."""
        with self._lock:
            self._cache.forget_sequence()

    def _wake_waiters(self) -> None:
        """The service shut down: threads in wait()/waitFor() raise ServiceShutDown."""
        with self._lock:
            listeners = list(self._listeners)
        for event in listeners:
            event.set()

    def _check_open(self) -> None:
        if self.service.closed:
            raise ServiceShutDown(f"service {self.service.name!r} was shut down while "
                                  f"waiting on {self.full_name}")

    def _set_connected(self, connected: bool) -> Optional[_State]:
        """Record a liveness change; returns the state if callbacks should fire."""
        with self._lock:
            before = self._cache.state
            fire = self._cache.set_connected(connected, monitored=self._monitored,
                                             has_callbacks=bool(self._callbacks))
            if self._cache.state is before:
                return None
            listeners = list(self._listeners)
        for event in listeners:
            event.set()
        return fire

