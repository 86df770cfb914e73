"""One dispatcher as the asyncio client sees it, and how its sockets are read.

The link's *state* is :class:`~cauldron_zmq.protocol.links.LinkState` (pure,
shared with the threaded client); this module adds its two sockets and names
it in messages.  The data path (each dispatcher's DEALER and SUB) is a
:class:`Channel`, read by the loop's reader on ``ZMQ_FD``; monitor and router
sockets, off the data path, are read by :func:`pump` tasks awaiting
``zmq.asyncio`` receives.  Either way every message reaches a plain function,
so every protocol decision runs synchronously between two awaits and nothing
can interleave with it.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Deque, Dict, List, Optional

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..client.events import _Link as _ThreadedLink
from ..transport import Monitored

__all__ = ["Link", "Pumped", "Channel", "pump"]

log = logging.getLogger("cauldron_zmq.aio")

#: Messages handled before a reader yields to the loop (a busy socket must not
#: starve the other tasks: an await on a ready socket does not yield).
FAIRNESS = 256
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)


async def pump(sock: zmq.asyncio.Socket, handle: Callable[[List[Any]], None],
               monitor: bool = False) -> None:
    """Hand every message ``sock`` receives to ``handle`` until cancelled or closed.

    ``monitor``: ``sock`` is a monitor socket; ``handle`` gets the parsed event.
    A bug in ``handle`` is logged, never the end of the reader.
    """
    n = 0
    try:
        while True:
            frames = await sock.recv_multipart()
            try:
                handle(parse_monitor_message(frames) if monitor else frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the link
                log.exception("unexpected error handling a message")
            n += 1
            if n % FAIRNESS == 0:
                await asyncio.sleep(0)
    except zmq.ZMQError:
        return          # closed under us (ENOTSOCK, ETERM): the owner is shutting it


class Pumped:
    """A socket (and its monitor), each read by a :func:`pump` task; closed together."""

    __slots__ = ("m", "tasks")

    def __init__(self, sock: zmq.asyncio.Socket, events: int,
                 on_message: Callable[[List[Any]], None],
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.m = Monitored(sock, events)
        self.tasks = [asyncio.ensure_future(pump(sock, on_message))]
        if self.m.monitor is not None and on_event is not None:
            self.tasks.append(asyncio.ensure_future(pump(self.m.monitor, on_event, True)))

    @property
    def socket(self) -> zmq.asyncio.Socket:
        return self.m.socket

    def close(self) -> List["asyncio.Future[Any]"]:
        """Stop the readers (their pending receives are cancelled now), close the sockets.

        Returns the reader tasks, for the owner to await once they have ended.
        """
        for task in self.tasks:
            task.cancel()
        self.m.close()
        return self.tasks


class Channel:
    """A dispatcher's DEALER or SUB, read straight from the loop: the data path.

    ``zmq.asyncio`` resolves a future per message, which a task then awaits:
    two loop iterations and much machinery per reply.  A channel instead
    watches the socket's ``ZMQ_FD`` with ``loop.add_reader`` (as zmq.asyncio
    does underneath) and hands every message to ``on_message`` from the
    reader callback itself, so a reply completes its caller's future in the
    iteration that found it.  The socket is a ``zmq.asyncio`` one, used
    through its synchronous shadow only, never through its futures.

    ``ZMQ_FD`` is edge-triggered: any operation on the socket may consume its
    signal, so after each send (and each drain) the channel asks
    ``ZMQ_EVENTS`` and drains again when a message waits.  A send that finds
    the queue full (the high-water mark) waits in :attr:`outbox`, in order,
    until the socket can take it: back-pressure, never a failure.
    """

    __slots__ = ("m", "sock", "loop", "fd", "on_message", "outbox", "closed", "_scheduled",
                 "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.asyncio.Socket, events: int,
                 on_message: Callable[[List[Any]], None],
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.m = Monitored(sock, events)
        self.sock = zmq.Socket.shadow(sock.underlying)
        self.loop = loop
        self.fd = self.sock.getsockopt(zmq.FD)
        self.on_message = on_message
        self.outbox: Deque[List[Any]] = collections.deque()   # [frames, wanted] entries
        self.closed = False
        self._scheduled = False
        self.tasks: List["asyncio.Future[Any]"] = []
        if self.m.monitor is not None and on_event is not None:
            self.tasks.append(asyncio.ensure_future(pump(self.m.monitor, on_event, True)))
        loop.add_reader(self.fd, self.ready)

    @property
    def socket(self) -> zmq.asyncio.Socket:
        return self.m.socket

    def send(self, frames: List[Any]) -> Optional[List[Any]]:
        """Send now, or queue behind earlier sends; returns the outbox entry if queued.

        Setting a queued entry's second item to False withdraws it.
        """
        entry: Optional[List[Any]] = None
        if self.outbox:
            entry = [frames, True]
            self.outbox.append(entry)
        else:
            try:
                self.sock.send_multipart(frames, _NOBLOCK)
            except zmq.Again:
                entry = [frames, True]
                self.outbox.append(entry)
        self._check()
        return entry

    def _check(self) -> None:
        """After an operation: drain soon if a message (or room for the outbox) waits."""
        events = self.sock.getsockopt(_EVENTS)
        if (events & _POLLIN or (self.outbox and events & _POLLOUT)) and not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.ready)

    def ready(self) -> None:
        """The reader callback: flush the outbox, hand over every message waiting."""
        self._scheduled = False
        n = 0
        while not self.closed:
            events = self.sock.getsockopt(_EVENTS)
            if self.outbox and events & _POLLOUT:
                self._flush()
            if not events & _POLLIN:
                return
            try:
                frames = self.sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_message(frames)
            except Exception:  # noqa: BLE001 - one bad message must not stop the link
                log.exception("unexpected error handling a message")
            n += 1
            if n >= FAIRNESS and not self.closed:   # let the other tasks run, then go on
                self._scheduled = True
                self.loop.call_soon(self.ready)
                return

    def _flush(self) -> None:
        while self.outbox:
            frames, wanted = self.outbox[0]
            if wanted:
                try:
                    self.sock.send_multipart(frames, _NOBLOCK)
                except zmq.Again:
                    return
            self.outbox.popleft()

    def close(self) -> List["asyncio.Future[Any]"]:
        """Stop reading, close the socket (and its monitor); returns the monitor's reader."""
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.outbox.clear()
            for task in self.tasks:
                task.cancel()
            self.m.close()
        return self.tasks


class Link(_ThreadedLink):
    """One dispatcher of the service: its state (:class:`LinkState`), its addresses and
    name in messages (shared with the threaded client), and its two Channels."""

    def __init__(self, key: str, entry: Dict[str, Any], now: float, liveness: float) -> None:
        super().__init__(key, entry, now, liveness)
        self.dealer: Optional[Channel] = None      # type: ignore[assignment]
        self.sub: Optional[Channel] = None         # type: ignore[assignment]
