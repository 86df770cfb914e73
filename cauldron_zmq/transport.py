"""How bytes move: the one mailbox, socket creation, monitored sockets, child processes.

Everything the three roles share about *moving* messages lives here, once;
what a message *means* lives in :mod:`cauldron_zmq.protocol`.

* :class:`Mailbox` -- the one way work crosses into an I/O thread: a queue
  plus one byte on a non-blocking pipe the thread's poller watches.  A burst
  of items costs one ``write(2)``.
* :func:`make_socket` -- a socket with LINGER, MAXMSGSIZE, reconnect interval
  and CurveZMQ applied before it connects or binds.
* :class:`Monitored` -- a socket with its monitor socket, closed in the right
  order (``disable_monitor`` first, so libzmq never writes to a closed pair).
* :func:`drain` -- every message a socket holds now, without blocking.
* :func:`child_env` and :func:`spawn_router` -- the environment of a child
  process that must import this very package, and the one way to start a
  ``python -m cauldron_zmq.router`` process.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Dict, Generic, Iterator, List, Optional, Sequence, TypeVar, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["Mailbox", "make_socket", "Monitored", "drain", "send_frames", "recv_frames", "child_env", "spawn_router",
           "RECONNECT_IVL_MS", "RECONNECT_IVL_MAX_MS"]

T = TypeVar("T")

RECONNECT_IVL_MS = 50         # ZeroMQ's own reconnect: quick on a restart...
RECONNECT_IVL_MAX_MS = 250    # ...and never slower than this
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)


class MailboxClosed(RuntimeError):
    """The mailbox's I/O thread has stopped taking work."""


class Mailbox(Generic[T]):
    """Hand items to one I/O thread that polls :attr:`fd`.

    ``put`` writes the pipe only when no wake-up is pending (written, not yet
    taken): the reader clears the flag, under the same lock, *before* it
    empties the queue, so nothing queued before a skipped write is left
    behind.  Any thread may ``put``; only the owning thread calls
    :meth:`take_all` and :meth:`put_here`.
    """

    def __init__(self) -> None:
        self._queue: "queue.SimpleQueue[T]" = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._lock = threading.Lock()
        self._pending = False
        self._closed = False
        self._fds_closed = False

    @property
    def fd(self) -> int:
        """The read end of the pipe, for ``zmq.Poller.register(fd, POLLIN)``."""
        return self._rfd

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T) -> None:
        """Queue ``item`` and wake the reader; :class:`MailboxClosed` once closed."""
        with self._lock:
            if self._closed:
                raise MailboxClosed("the I/O thread has stopped")
            self._queue.put(item)
            self._wake_locked()

    def put_last(self, item: T) -> bool:
        """Queue a final ``item`` (e.g. "stop") and close for anyone else; False if closed."""
        with self._lock:
            if self._closed:
                return False
            self._queue.put(item)
            self._closed = True
            self._pending = False      # force the write: the reader must see this one
            self._wake_locked()
            return True

    def wake(self) -> None:
        """Wake the reader with nothing queued (it re-checks its own state)."""
        with self._lock:
            if not self._closed:
                self._wake_locked()

    def _wake_locked(self) -> None:
        if self._pending:
            return
        self._pending = True
        try:
            os.write(self._wfd, b"\0")
        except BlockingIOError:
            pass                        # the pipe is full of wake-ups already
        except OSError:
            pass                        # closed fds: the reader is gone

    def put_here(self, item: T) -> None:
        """On the owning thread only: queue ``item`` without a wake-up.

        The owner looks at the queue before it polls again, so its own
        items (a dispatcher's broadcast of a write it answered itself) cost
        no ``write(2)``/``read(2)`` pair.
        """
        self._queue.put(item)

    def qsize(self) -> int:
        """Items waiting (for back-pressure: how far behind the owner is)."""
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()

    def take_all(self) -> Iterator[T]:
        """On the owning thread: clear the wake-up, then yield what is queued.

        The flag is cleared and the pipe emptied together, under the lock
        ``put`` holds, and only when a wake-up was written: a ``put`` cannot
        land between the two (its byte swallowed while the flag stays set,
        so every later ``put`` would skip its wake-up and wait for the poll's
        timeout), and a look at an empty mailbox costs no system call.
        """
        with self._lock:
            if self._pending:
                self._pending = False
                try:
                    while os.read(self._rfd, 4096):
                        pass
                except OSError:          # BlockingIOError: drained; else closed
                    pass
        get = self._queue.get_nowait
        while True:
            try:
                yield get()
            except queue.Empty:
                return

    def close_fds(self) -> None:
        """Close the pipe (after the reader stopped); further puts raise."""
        with self._lock:
            self._closed = True
            if self._fds_closed:
                return
            self._fds_closed = True
            for fd in (self._rfd, self._wfd):
                try:
                    os.close(fd)
                except OSError:
                    pass


def make_socket(ctx: zmq.Context, kind: int, *, linger: int = 0,
                max_size: Optional[int] = None, security: Any = None,
                reconnect: bool = False, options: Optional[Dict[int, Any]] = None) -> zmq.Socket:
    """A socket with the options every role sets, security applied before connect/bind.

    ``security`` is a client or server half from :mod:`cauldron_zmq.security`
    (anything with ``apply(sock)``); ``reconnect`` sets the quick reconnect
    interval clients use so a restarted peer is found within 250 ms.
    """
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger)
    if max_size is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_size)
    if reconnect:
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    for option, value in (options or {}).items():
        sock.setsockopt(option, value)
    if security is not None:
        security.apply(sock)
    return sock


class Monitored:
    """A socket and (when ``events``) its monitor socket, closed together and in order."""

    __slots__ = ("socket", "monitor")

    def __init__(self, sock: zmq.Socket, events: int) -> None:
        self.socket = sock
        self.monitor: Optional[zmq.Socket] = sock.get_monitor_socket(events) if events else None

    def events(self) -> List[Dict[str, Any]]:
        """Every monitor event waiting now (none without a monitor)."""
        mon, out = self.monitor, []
        while mon is not None and not mon.closed and mon.getsockopt(_EVENTS) & _POLLIN:
            try:
                out.append(recv_monitor_message(mon, _NOBLOCK))
            except zmq.Again:
                break
        return out

    def close(self, linger: int = 0) -> None:
        """Stop the monitor, close it, then the socket; idempotent."""
        sock, mon = self.socket, self.monitor
        if mon is not None:
            if not sock.closed:
                try:
                    sock.disable_monitor()
                except zmq.ZMQError:
                    pass
            if not mon.closed:
                mon.close(linger=0)
        if not sock.closed:
            sock.close(linger=linger)


# The compiled socket methods, under pyzmq's Python layer (which only adds the
# DRAFT routing_id/group arguments): on the data path that layer and its flag
# enums cost more than the send itself (40 us a 5-frame round trip on inproc,
# 14 us without them).  Older pyzmq without them: the public methods.
try:
    from zmq.backend import Socket as _Compiled
    _send, _recv, _get = _Compiled.send, _Compiled.recv, _Compiled.get
except (ImportError, AttributeError):  # pragma: no cover - pyzmq < 23
    _send, _recv, _get = zmq.Socket.send, zmq.Socket.recv, zmq.Socket.getsockopt


def send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int = _NOBLOCK,
                copy: bool = True) -> None:
    """``send_multipart`` with plain-int flags (``zmq.Again`` when it would block)."""
    last = len(frames) - 1
    more = flags | _SNDMORE
    for i, frame in enumerate(frames):
        _send(sock, frame, more if i < last else flags, copy)


def recv_frames(sock: zmq.Socket, flags: int = 0, copy: bool = True) -> List[Any]:
    """``recv_multipart`` with plain-int flags (see :func:`send_frames`).

    Each part is received as a Frame, whose ``more`` says whether another
    follows: asking the socket (``RCVMORE``) makes an option enum per frame.
    ``copy=True`` gives bytes, as ``recv_multipart`` does; ``copy=False`` Frames.
    """
    frame = _recv(sock, flags, False)
    parts = [frame.bytes if copy else frame]
    while frame.more:
        frame = _recv(sock, flags, False)
        parts.append(frame.bytes if copy else frame)
    return parts


def drain(sock: zmq.Socket, copy: bool = True, limit: Optional[int] = None) -> Iterator[List[Any]]:
    """The multipart messages ``sock`` holds now; stops when it is empty or closed.

    ``limit`` bounds one call: a flood on one socket must not keep its loop
    from its mailbox, its timers and its other sockets (the poller reports
    the socket readable again at once; nothing is lost).
    """
    n = 0
    while not sock.closed and _get(sock, _EVENTS) & _POLLIN:
        if limit is not None and n >= limit:
            return
        n += 1
        try:
            frames = recv_frames(sock, _NOBLOCK, copy)
        except zmq.Again:
            return
        yield frames


# ------------------------------------------------------------ child processes

PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def child_env(keep_config: bool = True) -> Dict[str, str]:
    """The environment of a child that must import this very package, wherever it is.

    ``keep_config=False`` also drops ``$CAULDRON_ZMQ_CONFIG`` (test children
    get their configuration explicitly, never from the developer's shell).
    """
    env = dict(os.environ)
    paths = [PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if not keep_config:
        env.pop("CAULDRON_ZMQ_CONFIG", None)
    return env


def spawn_router(config_path: str, *, detached: bool = False,
                 stderr: Union[int, IO[Any], None] = subprocess.PIPE,
                 extra_args: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None) -> "subprocess.Popen[bytes]":
    """Start ``python -m cauldron_zmq.router -c config_path`` (the one way to).

    ``detached`` gives it a session of its own (^C in our terminal does not
    reach it) and closes our descriptors in it: a router a dispatcher starts
    outlives that dispatcher.
    """
    cmd = [sys.executable, "-m", "cauldron_zmq.router", "-c", config_path, *extra_args]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL if detached else None,
                            stderr=stderr, env=env if env is not None else child_env(),
                            start_new_session=detached, close_fds=True)
