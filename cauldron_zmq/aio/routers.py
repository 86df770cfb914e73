"""The asyncio engine's requests to the routers: look-ups, sent to every router at once.

The router is one more peer of the request table (link
:data:`~cauldron_zmq.protocol.requests.ROUTER`): a request goes to every
router of ``[zmq-router] replicas`` at once and the first good answer wins,
keeping the most telling refusal (:func:`~cauldron_zmq.protocol.requests.better_refusal`).
One DEALER per router, open only while a look-up waits; a CurveZMQ refusal
seen by its monitor fails what waits on that router at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import zmq
import zmq.asyncio

from .. import protocol
from ..client.task import _fmt_s
from ..errors import AuthenticationError, CauldronError
from ..protocol.requests import ROUTER, Pending, better_refusal
from ..security import HANDSHAKE_EVENTS, REFUSED, SUCCEEDED, handshake_event, refused_message
from .errors import TimeoutError
from .link import Pumped

if TYPE_CHECKING:
    import asyncio

    from .engine import Engine

__all__ = ["RouterRequests"]



class RouterRequests:
    """The part of the Engine that asks the routers (see the module)."""

    def router_request(self: "Engine", command: str, target: str = "", payload: Any = None, *,
                       timeout: Optional[float] = None,
                       description: str = "") -> "asyncio.Future[Any]":
        """Ask every router at once; the first good answer wins (its payload)."""
        timeout = self.router_timeout if timeout is None else timeout
        call, p = self._pending(command, target, payload, None, ROUTER, timeout,
                                lambda r: r.payload,
                                description or f"router {command} {target!r}", True)
        self._send_router(p)
        return call.future

    def _send_router(self: "Engine", p: Pending) -> None:
        """The same request to every router at once: a dead one costs nothing."""
        self.pending.add(p, self.now())
        self._kick(p.deadline)
        frames = protocol.encode_request(p.request)
        for address in self.router_addresses:
            sent = self._router_socket(address).send_multipart(frames)
            if sent.done() and sent.exception() is not None:
                continue
            p.peers_left.add(address)
        if not p.peers_left:
            self.pending.pop(p.id)
            p.task.finish(error=TimeoutError(f"{p.task.description}: cannot queue a request "
                                             f"to {self.router_where}"))

    def _on_router(self: "Engine", address: str, frames: List[Any]) -> None:
        reply = protocol.decode_reply(frames, self.max_size)
        peer = f"the router at {address}"
        p = self.pending.get(reply.id)
        if p is None or not p.router or (isinstance(reply, protocol.Reply) and
                                         reply.status != protocol.ERROR):
            self._on_reply(reply, peer)      # a good answer, or a late or stray one
        elif isinstance(reply, protocol.Malformed):
            self._router_refused(p, address, CauldronError(
                f"{p.task.description}: malformed reply from {peer}: {reply.message}"))
        else:
            self._router_refused(p, address, self._remote_error(p, reply.payload, peer))
        if not self.pending.any_router():    # off the data path between look-ups
            self.loop.call_soon(self._close_idle_routers)

    def _router_refused(self: "Engine", p: Pending, address: str, error: BaseException) -> None:
        """Keep the most telling refusal (``not-found`` first); fail once all refused."""
        p.peers_left.discard(address)
        p.refusal = better_refusal(p.refusal, error)
        if not p.peers_left:
            self.pending.pop(p.id)
            p.task.finish(error=p.refusal)

    def _expire_router(self: "Engine", p: Pending) -> None:
        for address in p.peers_left:          # silent routers get new sockets
            self._reset_router(address)
        if p.refusal is not None:
            p.task.finish(error=p.refusal)
            return
        hints = [self.router_handshake_errors.get(a, "") for a in sorted(p.peers_left)]
        p.task.finish(error=TimeoutError(
            f"{p.task.description}: no answer from {self.router_where} within "
            f"{_fmt_s(p.timeout)}; is the router running?"
            + self._handshake_hint(next((h for h in hints if h), ""))))

    def _on_router_event(self: "Engine", address: str, event: Dict[str, Any]) -> None:
        kind, text = handshake_event(event, self.security is not None)
        if kind == SUCCEEDED:
            self.router_handshake_errors.pop(address, None)
        if kind in ("", SUCCEEDED):
            return
        self.router_handshake_errors[address] = text
        if kind != REFUSED:
            return
        message = refused_message(f"the router at {address}", self.security)
        self.log.warning("%s", message)
        for p in self.pending.waiting_on_router(address):
            self._router_refused(p, address,
                                 AuthenticationError(f"{p.task.description}: {message}"))
        self.loop.call_soon(self._reset_router, address)

    def _router_socket(self: "Engine", address: str) -> zmq.asyncio.Socket:
        pumped = self.router_socks.get(address)
        if pumped is None:
            pumped = Pumped(self._socket(zmq.DEALER), HANDSHAKE_EVENTS,
                            lambda frames: self._on_router(address, frames),
                            lambda event: self._on_router_event(address, event))
            pumped.socket.connect(address)
            self.router_socks[address] = pumped
        return pumped.socket

    def _reset_router(self: "Engine", address: Optional[str] = None) -> None:
        for where in [address] if address is not None else list(self.router_socks):
            self._retire(self.router_socks.pop(where, None))

    def _close_idle_routers(self: "Engine") -> None:
        if not self.pending.any_router():
            self._reset_router()
