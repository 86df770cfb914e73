"""One keyword of an asyncio Service: awaitable reads and writes, and monitors.

The cache and its rules are :class:`~cauldron_zmq.protocol.cache.KeywordCache`'s
(shared with the threaded client): a change reaches the monitors once, in
order, whichever socket brings it first; a value older than the cache is not
stored.  A monitor is an async iterator with a queue of its own: every
change the cache lets through is put on every monitor's queue at once, so a
slow consumer never makes the engine wait, and it sees the changes in order.
"""
from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any, Awaitable, Deque, List, NamedTuple, Optional, Set

import asyncio

from .. import protocol
from ..client.keyword import _described_value, _keyword_type
from ..client.task import _seconds_or_none
from ..protocol.cache import FRESH, REPLY, KeywordCache, State, fields
from ..types import KeywordType
from . import values

if TYPE_CHECKING:
    from .service import Service

__all__ = ["Keyword", "Update", "Monitor", "MONITOR_QUEUE"]

#: Updates a monitor holds for a consumer that has fallen behind; past it the
#: oldest are dropped (counted in :attr:`Monitor.dropped`), never the newest.
MONITOR_QUEUE = 100_000


class Update(NamedTuple):
    """One change of a monitored keyword, as the monitor yields it."""

    value: Any                  # the native value
    ascii: Optional[str]        # the dispatcher's canonical text
    timestamp: Optional[float]  # the dispatcher's time of the change (epoch s)
    seq: Optional[int]          # the keyword's change number (restarts with the dispatcher)
    connected: bool = True      # the dispatcher was alive when it was taken in


class _Queue:
    """One monitor's pending updates; the keyword pushes, the monitor pops."""

    __slots__ = ("kw", "items", "event", "closed", "dropped", "maxsize")

    def __init__(self, kw: "Keyword", maxsize: int) -> None:
        self.kw = kw
        self.items: Deque[Update] = collections.deque()
        self.event = asyncio.Event()
        self.closed = False
        self.dropped = 0
        self.maxsize = maxsize

    def push(self, update: Update) -> None:
        if len(self.items) >= self.maxsize:
            self.items.popleft()
            self.dropped += 1
        self.items.append(update)
        self.event.set()

    async def get(self) -> Update:
        while not self.items:
            if self.closed:
                raise StopAsyncIteration
            self.event.clear()
            await self.event.wait()
        return self.items.popleft()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.kw._unsubscribe(self)
            self.event.set()


class Monitor:
    """``async for update in kw.monitor():`` -- every change, in order, from the current value.

    Subscribed from the moment it is made, so nothing between ``monitor()``
    and the first ``__anext__`` is missed.  Leaving the loop unsubscribes
    (the iterator is released: CPython finalises it at once); so do
    :meth:`aclose` and leaving ``async with kw.monitor() as updates:``.  It
    ends when the Service closes, after the updates already queued.
    """

    def __init__(self, kw: "Keyword", prime: bool, maxsize: int) -> None:
        self._kw = kw
        self._queue = _Queue(kw, maxsize)
        self._primed = not prime
        kw._subscribe(self._queue)

    @property
    def dropped(self) -> int:
        """Updates dropped because the consumer fell more than ``maxsize`` behind."""
        return self._queue.dropped

    def __aiter__(self) -> "Monitor":
        return self

    async def __anext__(self) -> Update:
        if not self._primed:
            await self._kw._prime(self._queue)
            self._primed = True
        return await self._queue.get()

    async def aclose(self) -> None:
        self._queue.close()

    async def __aenter__(self) -> "Monitor":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._queue.close()

    def __del__(self) -> None:
        try:
            self._queue.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class Keyword:
    """One keyword of an :class:`~cauldron_zmq.aio.Service` (``svc["TEMP"]``)."""

    def __init__(self, service: "Service", name: str, description: Any,
                 raw: Optional[bytes] = None) -> None:
        self.service = service
        self._name = name.upper()
        desc = description if isinstance(description, dict) else {}
        self._kt = _keyword_type(self._name, desc, service.log)
        self._units = str(desc.get("units") or "")
        self._readonly = bool(desc.get("readonly"))
        self._writeonly = bool(desc.get("writeonly"))
        self._declared_timeout = _seconds_or_none(desc.get("timeout"))
        self._cache = KeywordCache(self._name, self._kt.equal)
        self._monitors: List[_Queue] = []            # replaced whole, never mutated
        self._listeners: Set[asyncio.Event] = set()  # waits, woken on every change
        self._watchers = 0
        if "value" in desc:
            self._take(*_described_value(self._kt, desc, raw), REPLY)

    # ------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self._name

    @property
    def full_name(self) -> str:
        return f"{self.service.name}.{self._name}"

    @property
    def keyword_type(self) -> KeywordType:
        return self._kt

    @property
    def type(self) -> str:
        """KTL's type name (``KTL_DOUBLE``...)."""
        return self._kt.ktl_type

    @property
    def units(self) -> str:
        return self._units

    @property
    def value(self) -> Any:
        """The cached native value (None until one arrived); no I/O."""
        return self._cache.state.value

    @property
    def ascii(self) -> Optional[str]:
        state = self._cache.state
        if state.ascii is None and state.value is not None:
            return values.ascii_of(self._kt, state.value)
        return state.ascii

    @property
    def timestamp(self) -> Optional[float]:
        return self._cache.state.time

    @property
    def connected(self) -> bool:
        return self._cache.state.connected

    @property
    def populated(self) -> bool:
        return self._cache.state.populated

    @property
    def monitored(self) -> bool:
        return bool(self._monitors)

    def cast(self, value: Any) -> Any:
        return self._kt.from_wire(value, None, check=False)

    def __repr__(self) -> str:
        return f"<cauldron_zmq.aio.Keyword {self.full_name} {self._kt.ktl_type} " \
               f"ascii={self.ascii!r}>"

    # ----------------------------------------------------------------- I/O
    def read(self, binary: bool = False, both: bool = False, wait: bool = True,
             timeout: Optional[float] = None) -> Awaitable[Any]:
        """``await kw.read()``: ascii; native with ``binary``; ``(native, ascii)`` with ``both``.

        ``wait=False`` sends the request at once and returns its future.
        """
        if wait:
            return self._await(lambda: self._submit_read(binary, both, timeout))
        return self._submit_read(binary, both, timeout)

    def _submit_read(self, binary: bool, both: bool,
                     timeout: Optional[float]) -> "asyncio.Future[Any]":
        return self.service._engine_or_raise().submit(
            "read", self._name, {}, timeout=self._timeout(timeout),
            on_reply=lambda r: self._reply(r, REPLY, binary, both),
            description=f"{self.full_name}: read")

    def write(self, value: Any, wait: bool = True, binary: bool = False,
              timeout: Optional[float] = None) -> Awaitable[Any]:
        """``await kw.write(value)``: the value as applied (ascii; native with ``binary``).

        A refused value is a ValueError whichever side refused it (here:
        ConversionError, MessageTooLarge, raised at once; the dispatcher: a
        DispatcherError with code ``invalid-value``).  ``wait=False`` sends
        at once and returns the future of the completion.
        """
        engine = self.service._engine_or_raise()
        wire, raw = values.encode(self._kt, self.full_name, self._name, value, engine.max_size)
        explicit = (timeout is not None or self._declared_timeout is not None
                    or self.service._explicit_timeout)

        def submit() -> "asyncio.Future[Any]":
            return self.service._engine_or_raise().submit(
                "write", self._name, {"value": wire}, raw=raw, timeout=self._timeout(timeout),
                explicit=explicit, on_reply=lambda r: self._reply(r, REPLY, binary, False),
                description=lambda: f"{self.full_name}: write {_short(value)}")
        return self._await(submit) if wait else submit()

    @staticmethod
    async def _await(submit: Any) -> Any:
        return await submit()

    def _reply(self, reply: protocol.Reply, source: str, binary: bool, both: bool) -> Any:
        self._take(reply.payload, reply.raw, source)
        return values.result(self._kt, self.full_name, reply.payload, reply.raw, binary, both,
                             self.service.log)

    def _timeout(self, timeout: Optional[float]) -> float:
        """The caller's, else the keyword's declared, else the service's."""
        if timeout is None:
            timeout = self._declared_timeout or self.service.timeout
        return float(timeout)

    # ---------------------------------------------------------- monitoring
    def monitor(self, prime: bool = True, maxsize: int = MONITOR_QUEUE) -> Monitor:
        """An async iterator of :class:`Update`, from the current value (read first,
        unless ``prime=False``) through every change, in order."""
        if maxsize < 1:
            raise ValueError(f"{self.full_name}: maxsize must be >= 1, got {maxsize!r}")
        return Monitor(self, prime, maxsize)

    def _subscribe(self, queue: _Queue) -> None:
        self.service._engine_or_raise()
        self._monitors = self._monitors + [queue]

    def _unsubscribe(self, queue: _Queue) -> None:
        self._monitors = [q for q in self._monitors if q is not queue]

    async def _prime(self, queue: _Queue) -> None:
        """Read the value now; the monitor starts with it (or with something newer)."""
        engine = self.service._engine_or_raise()
        await engine.submit("read", self._name, {}, timeout=self._timeout(None),
                            on_reply=lambda r: self._take(r.payload, r.raw, FRESH),
                            description=f"{self.full_name}: read (monitor)")
        if not queue.items and not queue.closed:
            queue.push(self._update(self._cache.state))

    async def wait_for(self, expression: str, timeout: Optional[float] = None,
                       case: bool = False) -> bool:
        """Until an expression relative to this keyword holds: ``'== "open"'``, ``'> 5'``.

        True; TimeoutError (an ``asyncio.TimeoutError``) when ``timeout`` passes first.
        """
        from .waits import wait_for_keyword
        return await wait_for_keyword(self, expression, timeout, case)

    def _tracked(self) -> bool:
        """Whether the engine keeps the cache fresh after a loss (monitored or waited on)."""
        return bool(self._monitors) or self._watchers > 0

    # ----------------------------------------------------- the engine's calls
    def _take(self, payload: Any, raw: Optional[bytes], source: str) -> None:
        """Take a VALUE in; the cache decides whether it is stored and whether it is news."""
        got = fields(payload, raw)
        if got is None:
            return
        native = values.decode(self._kt, self.full_name, got.value, raw, self.service.log)
        before = self._cache.state
        monitors = self._monitors
        state = self._cache.ingest(native, got.ascii, got.time, got.seq, source,
                                   monitored=bool(monitors), polled=False,
                                   has_callbacks=bool(monitors), wall=time.time())
        if state is not None:
            update = self._update(state)
            for queue in monitors:
                queue.push(update)
        if self._cache.state is not before:
            self._wake()

    def _set_connected(self, connected: bool) -> None:
        before = self._cache.state
        self._cache.set_connected(connected, monitored=False, has_callbacks=False)
        if self._cache.state is not before:
            self._wake()

    def _update(self, state: State) -> Update:
        text = state.ascii
        if text is None and state.value is not None:
            text = values.ascii_of(self._kt, state.value)
        return Update(state.value, text, state.time, state.seq, state.connected)

    def _wake(self) -> None:
        for event in self._listeners:
            event.set()

    def _closed(self) -> None:
        """The Service closed: monitors end (after what they hold), waits wake."""
        for queue in self._monitors:
            queue.closed = True
            queue.event.set()
        self._monitors = []
        self._wake()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:30] + "..." + text[-6:]
