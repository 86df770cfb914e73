"""One dispatcher as the asyncio client sees it, and the task that reads a socket.

The link's *state* is :class:`~cauldron_zmq.protocol.links.LinkState` (pure,
shared with the threaded client); this module adds its two ``zmq.asyncio``
sockets and names it in messages.  :func:`pump` is the one way the asyncio
client reads a socket: a task awaiting ``recv_multipart`` and handing each
message to a plain function, so every protocol decision runs synchronously
between two awaits and nothing can interleave with it.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, List, Optional

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ..config import endpoint
from ..protocol.links import LinkState
from ..transport import Monitored

__all__ = ["Link", "Pumped", "pump"]

log = logging.getLogger("cauldron_zmq.aio")

#: Messages handled before a reader yields to the loop (a busy socket must not
#: starve the other tasks: an await on a ready socket does not yield).
FAIRNESS = 256
_NOBLOCK = int(zmq.NOBLOCK)


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


class Link(LinkState):
    """One dispatcher of the service: its state (:class:`LinkState`) and its two sockets."""

    def __init__(self, key: str, entry: Dict[str, Any], now: float, liveness: float) -> None:
        super().__init__(key, entry, now, liveness)
        self.dealer: Optional[Pumped] = None
        self.sub: Optional[Pumped] = None

    @property
    def dispatch_address(self) -> str:
        return endpoint(self.protocol, self.host, self.dispatch_port, bind=False)

    @property
    def broadcast_address(self) -> str:
        return endpoint(self.protocol, self.host, self.broadcast_port, bind=False)

    def describe(self) -> str:
        name = f"dispatcher {self.name!r}" if self.name else "the dispatcher"
        return f"{name} at {self.dispatch_address}"
