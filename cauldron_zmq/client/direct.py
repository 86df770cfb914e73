"""Synchronous reads and writes sent and awaited in the calling thread.

Handing a synchronous call to the I/O thread and back costs two thread
switches, most of a round trip on loopback.  A user thread that calls
``read()`` or ``write()`` with ``wait=True`` therefore uses a DEALER of its
own (one per thread and dispatcher, owned by that thread only: one socket,
one thread still holds), sends the request and polls for its answer itself.

The link's state stays the I/O thread's: this module only *reads* it (the
published snapshots ``names``, ``addresses``, and a link's ``alive``,
``refused`` and ``started``, each a single attribute load) and falls back to
the I/O thread whenever the fast path cannot decide alone: no link yet, a
link that is down or refused, CurveZMQ (handshake refusals are reported by
the I/O thread's monitors).  The rules are the I/O thread's rules:
:func:`~cauldron_zmq.protocol.requests.keep_waiting` for a slow write, the
same errors for silence, restarts and timeouts, and a timeout closes the
socket (Lazy Pirate) so a late reply is never taken for the next request's.
"""
from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Union

import zmq

from .. import protocol
from ..errors import CauldronError, DispatcherRestarted, TimeoutError
from ..protocol.requests import Pending, keep_waiting
from ..transport import make_socket, recv_frames, send_frames
from .events import remote_error, silent_error
from .task import ServiceShutDown, _fmt_s

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["DirectRequests"]

SLICE = 0.05          # how often a slow call looks at its dispatcher's liveness
_RCVTIMEO = int(zmq.RCVTIMEO)
_NOBLOCK = int(zmq.NOBLOCK)


class _Socket:
    """One thread's DEALER to one dispatcher address."""

    __slots__ = ("sock", "address", "lock", "wait_ms", "__weakref__")

    def __init__(self, ctx: zmq.Context, address: str, max_size: int) -> None:
        self.sock = make_socket(ctx, zmq.DEALER, max_size=max_size, reconnect=True)
        self.sock.connect(address)
        self.address = address
        self.lock = threading.Lock()        # held while its thread uses it (see close)
        self.wait_ms = -1                   # the RCVTIMEO set (set only when it changes)

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close(linger=0)

    def __del__(self) -> None:              # its thread ended: the thread-local let go
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class DirectRequests:
    """The fast path of one Service's synchronous calls."""

    def __init__(self, engine: "Engine") -> None:
        self.engine = engine
        self.enabled = engine.security is None
        self._local = threading.local()
        self._all: "weakref.WeakSet[_Socket]" = weakref.WeakSet()
        self._closed = False

    def close(self) -> None:
        """Shut down: close every idle socket; a busy one is closed by its thread."""
        self._closed = True
        for s in list(self._all):
            if s.lock.acquire(timeout=1.0):
                try:
                    s.close()
                finally:
                    s.lock.release()

    def request(self, command: str, target: str, payload: Any, raw: Optional[bytes],
                timeout: float, explicit: bool,
                description: Union[str, Callable[[], str]]) -> Optional[protocol.Reply]:
        """The reply, or None when this call must go through the I/O thread."""
        engine = self.engine
        key = engine.names.get(target)
        link = engine.links.get(key) if key is not None else None
        if not self.enabled or self._closed or link is None or not link.alive or \
                link.refused or engine.loop.in_loop():
            return None
        address = engine.addresses.get(key)
        if address is None:
            return None
        s = self._socket(key, address)
        with s.lock:
            if s.sock.closed:
                return None
            req = protocol.request(command, target, payload, raw=raw)
            try:
                send_frames(s.sock, protocol.encode_request(req))
            except zmq.Again:
                return None
            try:
                return self._await(s, req, link, timeout, explicit, description)
            except BaseException:
                s.close()                     # Lazy Pirate: nothing late reaches the next call
                raise
            finally:
                if self._closed:
                    s.close()

    def _socket(self, key: str, address: str) -> _Socket:
        socks: Optional[Dict[str, _Socket]] = getattr(self._local, "socks", None)
        if socks is None:
            socks = self._local.socks = {}
        s = socks.get(key)
        if s is None or s.address != address or s.sock.closed:
            if s is not None:
                s.close()
            s = socks[key] = _Socket(self.engine.ctx, address, self.engine.max_size)
            self._all.add(s)
        return s

    def _await(self, s: _Socket, req: protocol.Request, link: Any, timeout: float,
               explicit: bool, description: Union[str, Callable[[], str]]) -> protocol.Reply:
        engine = self.engine
        sent = time.monotonic()
        p = Pending(req, None, timeout, sent + timeout, explicit=explicit)
        while True:
            now = time.monotonic()
            left = p.deadline - now
            if left <= 0:
                if keep_waiting(p, alive=link.alive, refused=link.refused):
                    p.deadline = now + link.liveness()
                    continue
                raise self._timeout(p, link, sent, description)
            if not link.alive:
                raise self._silent(p, link, description)
            if p.acked and p.ack_started is not None and link.started is not None and \
                    link.started != p.ack_started:
                raise DispatcherRestarted(
                    f"{_text(description)}: {link.describe()} restarted after acknowledging "
                    f"the request, so no answer will come; it may or may not have been "
                    f"applied (read the keyword to know)")
            if engine._closed:
                raise ServiceShutDown(f"service {engine.service!r} was shut down")
            wait_ms = int(min(left, SLICE) * 1000) + 1
            if wait_ms != s.wait_ms:              # a blocking receive, bounded: no Poller
                s.sock.setsockopt(_RCVTIMEO, wait_ms)
                s.wait_ms = wait_ms
            try:
                frames = recv_frames(s.sock)
            except zmq.Again:
                continue
            reply = protocol.decode_reply(frames, engine.max_size)
            if reply.id != req.id:
                continue                      # a late reply to a call that timed out
            if isinstance(reply, protocol.Malformed):
                raise CauldronError(f"{_text(description)}: malformed reply from "
                                    f"{link.describe()}: {reply.message}")
            if reply.status == protocol.ACK:
                p.acked = True
                if isinstance(reply.payload, dict):
                    p.ack_started = reply.payload.get("started")
                continue
            if reply.status == protocol.ERROR:
                raise remote_error(engine.service, req.target, reply.payload, link.describe())
            return reply

    def _timeout(self, p: Pending, link: Any, sent: float,
                 description: Union[str, Callable[[], str]]) -> TimeoutError:
        try:
            self.engine.post(lambda: self.engine.io_timed_out(link.key, sent))
        except CauldronError:
            pass
        if p.acked:
            return TimeoutError(
                f"{_text(description)}: {link.describe()} acknowledged the request but did "
                f"not complete it within {_fmt_s(p.timeout)}")
        return TimeoutError(f"{_text(description)}: no answer from {link.describe()} "
                            f"within {_fmt_s(p.timeout)}"
                            + self.engine._handshake_hint(link.handshake_error))

    def _silent(self, p: Pending, link: Any,
                description: Union[str, Callable[[], str]]) -> CauldronError:
        return silent_error(_text(description), link, time.monotonic(), p.acked)


def _text(description: Union[str, Callable[[], str]]) -> str:
    return description() if callable(description) else description
