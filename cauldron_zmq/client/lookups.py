"""Asking the routers, from the I/O thread: every router at once, the first good answer wins.

The router is one more peer of the request table
(:data:`~cauldron_zmq.protocol.requests.ROUTER`): a look-up is one
:class:`~cauldron_zmq.protocol.requests.Pending` sent on a DEALER per router
(open only while a look-up waits), ended by the first good answer, by the
most telling refusal once every router refused
(:func:`~cauldron_zmq.protocol.requests.better_refusal`), or by its deadline.
A mixin of :class:`~cauldron_zmq.client.engine.Engine`.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Union

import zmq

from .. import protocol
from ..errors import AuthenticationError, CauldronError, TimeoutError
from ..protocol.requests import ROUTER, Pending, RequestTable, better_refusal
from ..security import HANDSHAKE_EVENTS, REFUSED, SUCCEEDED, refused_message
from ..transport import Monitored, drain
from .task import _NOBLOCK, Task, _fmt_s


class _RouterRequests:
    """The part of Engine that asks the routers (see the module)."""

    # Provided by Engine:
    pending: RequestTable
    router_addresses: list
    router_where: str
    router_timeout: float
    router_socks: Dict[str, Monitored]
    router_handshake_errors: Dict[str, str]
    security: Any
    log: logging.Logger

    def router_request(self, command: str, target: str = "", payload: Any = None, *,
                       timeout: Optional[float] = None, description: str = "") -> Task:
        """Ask every router at once from the I/O thread's DEALERs; the first good answer wins."""
        timeout = self.router_timeout if timeout is None else float(timeout)
        req = protocol.request(command, target, {} if payload is None else payload)
        what = description or f"router {command} {target!r}"
        task = Task(what, req, time.monotonic() + timeout)
        p = Pending(req, task, timeout, task.deadline, lambda r: r.payload, link=ROUTER)
        self.post(lambda: self._send_router(p))
        return task

    def _router_socket(self, address: str) -> zmq.Socket:
        m = self.router_socks.get(address)
        if m is None:
            m = Monitored(self._socket(zmq.DEALER), HANDSHAKE_EVENTS)
            if m.monitor is not None:
                self._watch(m.monitor, lambda: self._on_router_monitor(address, m))
            m.socket.connect(address)
            self.router_socks[address] = m
            self._watch(m.socket, lambda: self._on_router(address, m.socket))
        return m.socket

    def _reset_router(self, address: Optional[str] = None) -> None:
        """Close the DEALER to one router (``address``), or to every router."""
        for where in [address] if address is not None else list(self.router_socks):
            self._close(self.router_socks.pop(where, None))

    def _send_router(self, p: Pending) -> None:
        """The same request to every router at once: the first good answer wins,
        so a dead or hung router costs nothing while another one answers."""
        self.pending.add(p, time.monotonic())
        frames = protocol.encode_request(p.request)
        for address in self.router_addresses:
            try:
                self._router_socket(address).send_multipart(frames, _NOBLOCK)
            except zmq.Again:
                self._reset_router(address)
                continue
            p.peers_left.add(address)
        if not p.peers_left:
            self.pending.pop(p.id)
            p.task._fail(TimeoutError(f"{p.task.description}: cannot queue a request to "
                                      f"{self.router_where}"))

    def _expire_router(self, p: Pending) -> None:
        # What the handshake monitors already hold is taken in before judging by
        # the clock: a refusal or a failed handshake that came with the deadline
        # is reported as such, not as mere silence.
        for address in sorted(p.peers_left):
            m = self.router_socks.get(address)
            if m is not None:
                self._on_router_monitor(address, m)
        if p.task.done():                     # a refusal taken in just now ended it
            return
        for address in p.peers_left:          # Lazy Pirate: silent routers get new sockets
            self._reset_router(address)
        if p.refusal is not None:             # one refused, the others were silent
            p.task._fail(p.refusal)
            return
        hints = [self.router_handshake_errors.get(a, "") for a in sorted(p.peers_left)]
        p.task._fail(TimeoutError(
            f"{p.task.description}: no answer from {self.router_where} "
            f"within {_fmt_s(p.timeout)}; is the router running?"
            + self._handshake_hint(next((h for h in hints if h), ""))))

    def _on_router_monitor(self, address: str, m: Monitored) -> None:
        for kind, text in self._handshake_events(m):
            if kind == SUCCEEDED:
                self.router_handshake_errors.pop(address, None)
                continue
            again = self.router_handshake_errors.get(address) == text
            self.router_handshake_errors[address] = text
            if kind != REFUSED:
                continue
            message = refused_message(f"the router at {address}", self.security)
            self.log.log(logging.DEBUG if again else logging.WARNING, "%s", message)
            for p in self.pending.waiting_on_router(address):
                self._router_refused(p, address,
                                     AuthenticationError(f"{p.task.description}: {message}"))
            self._reset_router(address)   # the next request makes a new connection
            return

    def _on_router(self, address: str, sock: zmq.Socket) -> None:
        for frames in drain(sock):
            self._on_router_reply(address, protocol.decode_reply(frames, self.max_size))
        if not self.pending.any_router():
            self._reset_router()   # off the data path: hold no connection between look-ups

    def _on_router_reply(self, address: str,
                         reply: Union[protocol.Reply, protocol.Malformed]) -> None:
        """A good answer completes the request; a refusal waits for the other routers."""
        peer = f"the router at {address}"
        p = self.pending.get(reply.id)
        if p is None or not p.router or (isinstance(reply, protocol.Reply) and
                                         reply.status != protocol.ERROR):
            self._on_reply(reply, peer)      # a good answer, or a late or stray one
            return
        if isinstance(reply, protocol.Malformed):
            self.log.warning("malformed reply from %s: %s", peer, reply.message)
            error: BaseException = CauldronError(f"{p.task.description}: malformed reply "
                                                 f"from {peer}: {reply.message}")
        else:
            error = self._remote_error(p, reply.payload, peer)
        self._router_refused(p, address, error)

    def _router_refused(self, p: Pending, address: str, error: BaseException) -> None:
        """Keep the most telling refusal (``not-found`` first); fail once all refused."""
        p.peers_left.discard(address)
        p.refusal = better_refusal(p.refusal, error)
        if not p.peers_left:
            self.pending.pop(p.id)
            p.task._fail(p.refusal)
