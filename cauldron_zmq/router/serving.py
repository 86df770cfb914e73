"""The router's serving loop: a :class:`Book` on a bound ROUTER socket.

:class:`Server` is the loop apart from its launchers, as pyzmq's devices
are: it runs in whichever thread calls :meth:`Server.run` (the socket is
that thread's), decodes each request with :mod:`cauldron_zmq.protocol`, lets
the book decide, saves the book before acknowledging a change, and checks
for expired entries between requests.  :mod:`.launch` gives it a thread, a
process or the caller's thread; :func:`bind` makes its socket.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, List, Optional, Tuple

import zmq

from .. import __version__
from .. import protocol
from ..config import Config, endpoint
from ..errors import CauldronError
from ..protocol.book import Book
from ..protocol.entries import Caller, RouterRefusal
from ..security import frame_property, loopback
from ..transport import make_socket
from .logs import NOTICE, TRACE, log
from .state import StateFile

__all__ = ["Server", "bind", "bind_address", "admin_refusal", "RouterStartError",
           "RouterBindError", "SHUTDOWN_LINGER_MS"]

REFUSAL_TYPE = "RouterRefusal"
ADMIN_COMMANDS = frozenset({"forget", "unblock"})

POLL_MS = 100            # how promptly stop() and expiry are noticed
BATCH = 256              # messages handled between two looks at the stop flag
EXPIRY_CHECK_S = 0.25    # how often entries are checked for expiry
SHUTDOWN_LINGER_MS = 1000  # lets the reply to "shutdown" leave before the socket closes


class RouterStartError(CauldronError):
    """The router could not start (its process died, or it did not answer in time)."""


class RouterBindError(RouterStartError, OSError):
    """The router's address cannot be bound; the message names it."""


def bind_address(config: Config) -> str:
    router = config.router
    if router.protocol == "ipc":
        return f"ipc://{router.host}"
    return endpoint(router.protocol, router.host, router.port, bind=True)


def bind(context: zmq.Context, config: Config, security: Any = None) -> zmq.Socket:
    """The router's ROUTER socket, bound at ``[zmq-router]``; :class:`RouterBindError` if not."""
    address = bind_address(config)
    sock = make_socket(context, zmq.ROUTER, max_size=config.zmq.max_message_size,
                       security=security,
                       options={zmq.ROUTER_HANDOVER: 1, zmq.ROUTER_MANDATORY: 0})
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        reason = zmq.strerror(exc.errno)   # exc.strerror may append the address again
        raise RouterBindError(f"cannot bind {address}: {reason}") from None
    return sock


def admin_refusal(config: Config, security: Any, peer: Any, what: str) -> Optional[str]:
    """Why the sender of ``peer`` (a request's first frame) may not do an admin's
    ``what`` (shutdown, forget, unblock); None if it may.

    With security: only the keys of ``[zmq-security] admins``.  Without:
    only peers on this host (loopback, or ipc whose file permissions
    already say who may connect).
    """
    if security is not None:
        return security.admin_refusal(frame_property(peer, "User-Id") or None, what)
    if config.router.protocol == "ipc":
        return None
    address = frame_property(peer, "Peer-Address")
    if loopback(address):
        return None
    return (f"{what} refused: without [zmq-security] the router accepts {what} only "
            "from its own host (loopback); this request came from "
            f"{address or 'an unknown address'}")


class Server:
    """Answers requests for ``book`` on a bound socket until stopped or shut down.

    ``security`` is the :class:`~cauldron_zmq.security.ServerSecurity` the
    socket was made with (None without ``[zmq-security]``): it says who is a
    caller and who an admin.  ``state`` saves the book.
    """

    def __init__(self, config: Config, book: Book, state: StateFile,
                 security: Any = None) -> None:
        self.config = config
        self.book = book
        self.state = state
        self.security = security
        self.started = time.time()
        self._peer: Any = None            # first frame of the request being answered
        self._malformed = protocol.Throttle()   # a peer sending garbage must not flood the log

    def run(self, sock: zmq.Socket, stop: threading.Event) -> bool:
        """Serve until ``stop`` is set (False) or a shutdown request (True)."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        next_check = 0.0
        while not stop.is_set():
            if poller.poll(POLL_MS) and self._drain(sock):
                return True
            now = time.time()
            if now >= next_check:
                self.book.expire(now)
                next_check = now + EXPIRY_CHECK_S
            if self.state.failing:
                self.state.save(self.book)   # due on the back-off schedule, not per request
        return False

    def _drain(self, sock: zmq.Socket) -> bool:
        """Handle what is queued (up to BATCH); asking EVENTS is cheaper than zmq.Again."""
        for _ in range(BATCH):
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            self._peer = frames[0]      # its properties say who sent it (see admin_refusal)
            if self._handle(sock, [frame.bytes for frame in frames]):
                return True
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return False
        return False

    def _handle(self, sock: zmq.Socket, frames: List[bytes]) -> bool:
        """Answer one message; True when it asked the router to shut down."""
        if len(frames) < 2:
            log.warning("dropped a message of %d frame(s): no identity and body", len(frames))
            return False
        envelope, body = protocol.split_envelope(frames)
        req = protocol.decode_request(body, protocol.ROUTER_COMMANDS,
                                      self.config.zmq.max_message_size)
        if isinstance(req, protocol.Malformed):
            log_it, unlogged = self._malformed.allow(time.monotonic())
            if log_it:
                log.warning("malformed request from peer %s: %s [%s]%s", envelope[0].hex()[:16],
                            req.message, req.code,
                            f" ({unlogged} more not logged)" if unlogged else "")
            self._send(sock, envelope + protocol.malformed_reply(req))
            return False
        log.log(TRACE, "request %s %s %r %.200s", req.id, req.command, req.target, req.payload)
        reply, shutdown = self._answer(req)
        self._send(sock, envelope + reply)
        return shutdown

    def _answer(self, req: protocol.Request) -> Tuple[List[bytes], bool]:
        """The reply frames for a decoded request; saves first when the book changed,
        so that an acknowledged registration survives a crash."""
        now = time.time()
        try:
            if req.command == "ping":
                return protocol.ok(req.id, {"version": __version__, "pid": os.getpid(),
                                            "uptime": now - self.started}), False
            if req.command == "shutdown":
                refusal = self._admin_refusal("shutdown")
                if refusal is not None:
                    log.warning("%s", refusal)
                    return protocol.error(req.id, protocol.E_NOT_ALLOWED, refusal,
                                          REFUSAL_TYPE), False
                log.log(NOTICE, "shutdown requested")
                return protocol.ok(req.id, {}), True
            caller = self._caller()
            if req.command in ADMIN_COMMANDS and not caller.admin:
                refusal = self._admin_refusal(req.command) or f"{req.command} refused"
                log.warning("%s", refusal)
                return protocol.error(req.id, protocol.E_NOT_ALLOWED, refusal,
                                      REFUSAL_TYPE), False
            result = self.book.handle(req.command, req.target, req.payload, now=now,
                                      caller=caller)
            self.state.save(self.book)
            return protocol.ok(req.id, result), False
        except RouterRefusal as exc:
            level = logging.INFO if req.command in ("register", "unregister") else logging.DEBUG
            log.log(level, "refused %s %r: %s [%s]", req.command, req.target, exc.message, exc.code)
            return protocol.error(req.id, exc.code, exc.message, REFUSAL_TYPE), False
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the router
            log.exception("internal error answering %s %r", req.command, req.target)
            return protocol.error(req.id, protocol.E_INTERNAL,
                                  f"{type(exc).__name__}: {exc}", type(exc).__name__), False

    def _admin_refusal(self, what: str) -> Optional[str]:
        return admin_refusal(self.config, self.security, self._peer, what)

    def _caller(self) -> Caller:
        """Who sent the request being answered: its CURVE key, and whether it is an admin."""
        key = None
        if self.security is not None:
            key = frame_property(self._peer, "User-Id") or None
        return Caller(key=key, admin=self._admin_refusal("admin") is None)

    def _send(self, sock: zmq.Socket, frames: List[bytes]) -> None:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:   # peer gone or its queue full: it will time out
            log.warning("reply not sent: %s", exc.strerror)
