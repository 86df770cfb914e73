"""One asyncio Service's engine: its requests in flight, its sockets, its one timer.

Everything runs on the event loop that opened the Service, between two awaits.
Each dispatcher's DEALER and SUB are :class:`~.link.Channel` objects read by
the loop's reader on their ``ZMQ_FD``; monitor and router sockets are read by
:func:`~.link.pump` tasks.  Either way each message reaches a plain method
here, which asks the shared protocol objects what it means
(:class:`~cauldron_zmq.protocol.requests.RequestTable` and
:func:`~cauldron_zmq.protocol.requests.expiry`,
:class:`~cauldron_zmq.protocol.links.LinkState`) and carries it out.  Time is
the loop's clock (``loop.time()``), handed to those objects as ``now``; every
deadline, liveness check, re-look-up and repair retry is one ``call_at``
timer, moved earlier when a new request needs it.

A request's caller awaits an ``asyncio.Future``.  Cancelling it (directly, by
``asyncio.wait_for`` or by cancelling the awaiting task) takes the request
out of the table at once and withdraws a send still queued, so a late reply
finds no entry and is dropped by its id: nothing is misattributed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import (Any, Awaitable, Callable, Dict, Iterable, Iterator, List, Optional, Set,
                    Union)

import zmq
import zmq.asyncio

from .. import protocol
from ..config import Config
from ..errors import AuthenticationError, CauldronError, RemoteError
from ..protocol.links import DOWN, RELOOKUP, REPAIR, link_key
from ..protocol.requests import EXTEND, UNANSWERED, Pending, RequestTable, expiry
from ..security import HANDSHAKE_EVENTS, REFUSED, SUCCEEDED, client_security, handshake_event
from ..security import refused_message
from ..transport import make_socket
from ..client.engine import _routers_text, unknown_keyword_message
from ..client.events import remote_error
from ..client.task import ServiceShutDown, UnknownKeyword, _fmt_s
from .errors import TimeoutError
from .events import LinkEvents
from .routers import RouterRequests
from .link import Channel, Link, Pumped

__all__ = ["Engine", "Call"]

IDLE_TICK = 1.0          # the timer runs at least this often (liveness is a few seconds)
_EVENT_CONNECTED = int(zmq.EVENT_CONNECTED)

Description = Union[str, Callable[[], str]]


class Call:
    """What a Pending's ``task`` is here: the caller's future and how to name the call."""

    __slots__ = ("future", "_description", "send")

    def __init__(self, future: "asyncio.Future[Any]", description: Description) -> None:
        self.future = future
        self._description = description
        self.send: Optional[List[Any]] = None    # its outbox entry, while a send waits

    @property
    def description(self) -> str:
        d = self._description
        return d() if callable(d) else d

    def finish(self, result: Any = None, error: Optional[BaseException] = None) -> None:
        if self.send is not None:
            self.send[1] = False        # never sent: it must not go out later
            self.send = None
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class Engine(LinkEvents, RouterRequests):
    """The sockets, links and requests of one :class:`~cauldron_zmq.aio.Service`."""

    def __init__(self, service: str, config: Config, timeout: float,
                 logger: logging.Logger) -> None:
        self.service = service
        self.config = config
        self.security = client_security(config)     # first: a bad key file leaves nothing
        self.timeout = timeout
        self.log = logger
        self.max_size = config.zmq.max_message_size
        self.liveness = config.zmq.liveness
        self.router_addresses = config.router_addresses()
        self.router_where = _routers_text(self.router_addresses)
        self.router_timeout = config.router.timeout / 1000.0
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time
        self.ctx = zmq.asyncio.Context()
        self.links: Dict[str, Link] = {}
        self.owner: Dict[str, Link] = {}              # KEYWORD -> link
        self.pending = RequestTable()
        self.kwobjs: Dict[str, Any] = {}              # KEYWORD -> aio Keyword
        self.router_socks: Dict[str, Pumped] = {}
        self.router_handshake_errors: Dict[str, str] = {}
        #: How a new dispatcher's keywords are learnt (the Service sets it: list, describe).
        self.learn: Callable[[str], Awaitable[Any]] = self._list_only
        self._learning: Set["asyncio.Future[Any]"] = set()
        self.closed = False
        self._ended: List["asyncio.Future[Any]"] = []   # reader tasks of closed sockets
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = float("inf")
        self._kick(self.now() + IDLE_TICK)

    # -------------------------------------------------------------- requests
    def submit(self, command: str, target: str = "", payload: Any = None, *,
               raw: Optional[bytes] = None, link: Optional[str] = None,
               timeout: Optional[float] = None,
               on_reply: Optional[Callable[[protocol.Reply], Any]] = None,
               description: Description = "", explicit: bool = True) -> "asyncio.Future[Any]":
        """Send a dispatcher request now; the future completes with ``on_reply(reply)``."""
        call, p = self._pending(command, target, payload, raw, link, timeout, on_reply,
                                description, explicit)
        self._send(p)
        return call.future

    def _pending(self, command: str, target: str, payload: Any, raw: Optional[bytes],
                 link: Optional[str], timeout: Optional[float],
                 on_reply: Optional[Callable[[protocol.Reply], Any]],
                 description: Description, explicit: bool) -> Any:
        if self.closed:
            raise ServiceShutDown(f"service {self.service!r} is shut down")
        timeout = self.timeout if timeout is None else float(timeout)
        req = protocol.request(command, target, {} if payload is None else payload, raw=raw)
        call = Call(self.loop.create_future(),
                    description or f"{self.service}.{target or '*'}: {command}")
        p = Pending(req, call, timeout, self.now() + timeout, on_reply, link=link,
                    explicit=explicit)
        call.future.add_done_callback(lambda f: f.cancelled() and self._abandon(p))
        return call, p

    def _abandon(self, p: Pending) -> None:
        """The caller cancelled: nothing of the request stays (a late reply is dropped)."""
        self.pending.pop(p.id)
        p.task.finish()

    def _send(self, p: Pending) -> None:
        link = self.links.get(p.link) if p.link else self.owner.get(p.request.target.upper())
        if link is None:
            p.task.finish(error=self._no_link_error(p))
            return
        if link.refused:
            self._retry_refused(link)
        p.link = link.key
        self._transmit(p, link)

    def _no_link_error(self, p: Pending) -> CauldronError:
        if p.link:
            return CauldronError(f"{p.task.description}: no dispatcher {p.link!r}")
        return UnknownKeyword(unknown_keyword_message(self.service, p.request.target,
                                                      list(self.owner)))

    def _transmit(self, p: Pending, link: Link) -> None:
        """Send on the link's DEALER: at once, or queued in its outbox behind earlier sends."""
        assert link.dealer is not None
        self.pending.add(p, self.now())
        if p.deadline < self._timer_at:
            self._kick(p.deadline)
        p.task.send = link.dealer.send(protocol.encode_request(p.request))

    # --------------------------------------------------------------- replies
    def _on_dealer(self, link: Link, frames: List[Any]) -> None:
        back = link.heard(self.now(), reply=True)
        if back is not None:
            self._came_back(link, back)
        self._on_reply(protocol.decode_reply(frames, self.max_size), link.describe())

    def _on_reply(self, reply: Union[protocol.Reply, protocol.Malformed], peer: str) -> None:
        if isinstance(reply, protocol.Malformed):
            self.log.warning("malformed reply from %s: %s", peer, reply.message)
            p = self.pending.pop(reply.id)
            if p is not None:
                p.task.finish(error=CauldronError(f"{p.task.description}: malformed reply "
                                                  f"from {peer}: {reply.message}"))
            return
        if reply.status == protocol.ACK:
            started = reply.payload.get("started") if isinstance(reply.payload, dict) else None
            self.pending.acknowledged(reply.id, started)
            return
        p = self.pending.pop(reply.id)
        if p is None:
            self.log.debug("dropping a late reply (%s) from %s", reply.status, peer)
            return
        if reply.status == protocol.ERROR:
            p.task.finish(error=self._remote_error(p, reply.payload, peer))
            return
        try:
            result = p.on_reply(reply) if p.on_reply is not None else reply.payload
        except Exception as exc:  # noqa: BLE001 - e.g. a value that does not convert
            p.task.finish(error=exc)
            return
        p.task.finish(result)

    def _remote_error(self, p: Pending, err: Any, peer: str) -> RemoteError:
        return remote_error(self.service, p.request.target, err, peer, router=p.router)

    # -------------------------------------------------------------- timeouts
    def _kick(self, when: float) -> None:
        """Make the timer fire no later than ``when``."""
        if self.closed or when >= self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        if self.closed:
            return
        now = self.now()
        try:
            self._run_timers(now)
        finally:
            self._kick(self._next_due(self.now()))

    def _next_due(self, now: float) -> float:
        due = now + IDLE_TICK
        first = self.pending.next_deadline()
        if first is not None:
            due = min(due, first)
        for link in self.links.values():
            when = link.next_due(now)
            if when is not None:
                due = min(due, when)
        return due

    def _run_timers(self, now: float) -> None:
        self._catch_up()
        now = self.now()
        for p in self.pending.due(now):
            self._expire(p, now)
        for link in list(self.links.values()):
            for action in link.timers(now):
                if action == DOWN:
                    self._link_down(link, now)
                elif action == RELOOKUP:
                    self._relookup(link)
                elif action == REPAIR:
                    self._repair_reads(link, link.repair.due(now, self._tracked_names(link)),
                                       "retrying a failed re-read")

    def _catch_up(self) -> None:
        """Take in what the sockets hold before deciding anything by the clock.

        A program that blocked its loop for a while wakes with its timer due
        and messages waiting (and a router socket's future resolves one
        callback after the timer that shares its iteration): a reply or
        heartbeat waiting to be read must not be taken for silence.
        """
        for link in list(self.links.values()):
            for channel in (link.dealer, link.sub):
                if channel is not None:
                    channel.ready()
        for address, pumped in list(self.router_socks.items()):
            for frames in _ready(pumped.socket):
                self._on_router(address, frames)

    def _expire(self, p: Pending, now: float) -> None:
        if p.router:
            self._expire_router(p)
            return
        link = self.links.get(p.link) if p.link else None
        assert link is not None
        fate = expiry(p, alive=link.alive, refused=link.refused, last_reply=link.last_reply)
        if fate == EXTEND:
            self.pending.extend(p, now + link.liveness())     # a slow write waits on
            return
        if p.acked:
            p.task.finish(error=TimeoutError(
                f"{p.task.description}: {link.describe()} acknowledged the request but did "
                f"not complete it within {_fmt_s(p.timeout)}"))
            return
        p.task.finish(error=TimeoutError(
            f"{p.task.description}: no answer from {link.describe()} within "
            f"{_fmt_s(p.timeout)}" + self._handshake_hint(link.handshake_error)))
        if fate == UNANSWERED and link.dealer is not None:
            self._reset_dealer(link)          # Lazy Pirate
            link.start_relookup(now, self.config.router.enable)

    def _handshake_hint(self, error: str) -> str:
        if error:
            return f" (the last connection attempt failed its handshake: {error})"
        if self.security is not None and not HANDSHAKE_EVENTS:
            return (" (with [zmq-security] enabled, the server's authenticator may have "
                    "refused this client's key)")
        return ""

    # ------------------------------------------------------------ handshakes
    def _on_dealer_event(self, link: Link, event: Dict[str, Any]) -> None:
        kind, text = handshake_event(event, self.security is not None)
        if kind:
            self._on_handshake(link, kind, text)

    def _on_handshake(self, link: Link, kind: str, text: str) -> None:
        """A refusal fails at once what waits on the link (libzmq will not retry)."""
        if not link.handshake(kind == SUCCEEDED, kind == REFUSED, text):
            return
        message = refused_message(link.describe(), self.security)
        self.log.warning("%s", message)
        for p in self.pending.take_link(link.key):
            p.task.finish(error=AuthenticationError(f"{p.task.description}: {message}"))

    def _retry_refused(self, link: Link) -> None:
        """New sockets, so a new handshake: the key may have been authorised since."""
        link.refused = False
        self._close_link_sockets(link)
        self._open_link_sockets(link)
        link.renewed()

    # --------------------------------------------------------------- sockets
    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        return make_socket(self.ctx, kind, max_size=self.max_size, security=self.security,
                           reconnect=True)

    def _retire(self, pumped: Union[Pumped, Channel, None]) -> None:
        if pumped is not None:
            self._ended = [t for t in self._ended if not t.done()] + pumped.close()

    def _open_dealer(self, link: Link) -> None:
        events = HANDSHAKE_EVENTS if self.security is not None else 0
        link.dealer = Channel(self.loop, self._socket(zmq.DEALER), events,
                             lambda frames: self._on_dealer(link, frames),
                             lambda event: self._on_dealer_event(link, event))
        link.dealer.socket.connect(link.dispatch_address)

    def _open_sub(self, link: Link) -> None:
        sock = self._socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.config.zmq.hwm)
        sock.setsockopt(zmq.SUBSCRIBE, protocol.service_prefix(self.service))
        link.sub = Channel(self.loop, sock, _EVENT_CONNECTED | HANDSHAKE_EVENTS,
                          lambda frames: self._on_sub(link, frames),
                          lambda event: self._on_sub_event(link, event))
        sock.connect(link.broadcast_address)

    def _open_link_sockets(self, link: Link) -> None:
        self._open_dealer(link)
        self._open_sub(link)

    def _close_link_sockets(self, link: Link) -> None:
        self._retire(link.dealer)
        self._retire(link.sub)
        link.dealer = link.sub = None

    def _reset_dealer(self, link: Link) -> None:
        """Lazy Pirate: a DEALER whose peer went silent is replaced; unacked requests resent."""
        self.log.debug("resetting the connection to %s", link.describe())
        self._retire(link.dealer)
        self._open_dealer(link)
        self._resend_unacked(link)

    def _resend_unacked(self, link: Link) -> None:
        for p in self.pending.on_link(link.key, acked=False):    # a copy: sends may fail
            self._transmit(p, link)

    # ----------------------------------------------------------------- links
    def add_links(self, entries: Iterable[Dict[str, Any]]) -> List[str]:
        """Connect to every dispatcher listed; returns the link keys."""
        keys = []
        for entry in entries:
            key = link_key(entry)
            keys.append(key)
            link = self.links.get(key)
            if link is None:
                link = self.links[key] = Link(key, entry, self.now(), self.liveness)
                self._open_link_sockets(link)
                self._set_owner(link, link.keywords)
            elif link.moved(entry):
                self._move(link, entry)
        return keys

    async def _list_only(self, key: str) -> None:
        self.listed(key, await self.submit("list", link=key,
                                           description=f"{self.service}: list {key}"))

    def _set_owner(self, link: Link, names: Iterable[str]) -> None:
        for name in names:
            self.owner[name] = link

    def listed(self, key: str, result: Any) -> None:
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
        link.keywords, link.listed = names, True
        self._set_owner(link, names)

    def _move(self, link: Link, entry: Dict[str, Any]) -> None:
        old = link.dispatch_address
        link.move(entry)
        self.log.info("%s moved from %s; reconnecting", link.describe(), old)
        self._close_link_sockets(link)
        self._open_link_sockets(link)
        self._resend_unacked(link)

    def is_alive(self, key: Optional[str] = None) -> bool:
        if key is not None:
            link = self.links.get(key)
            return link is not None and link.alive and not link.refused
        return bool(self.links) and all(lk.alive and not lk.refused
                                        for lk in self.links.values())

    # -------------------------------------------------------------- shutdown
    async def close(self) -> None:
        """Fail what waits, close every socket, end every reader; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        err = ServiceShutDown(f"service {self.service!r} was shut down")
        for p in self.pending.clear():
            p.task.finish(error=err)
        for link in list(self.links.values()):
            self._close_link_sockets(link)
        self._reset_router()
        for task in self._learning:
            task.cancel()
        ended, self._ended = self._ended + list(self._learning), []
        if ended:
            await asyncio.gather(*ended, return_exceptions=True)
        self.ctx.destroy(linger=0)     # every socket is closed already: this only terms


def _ready(sock: zmq.asyncio.Socket) -> Iterator[List[Any]]:
    """The messages ``sock`` holds now, without waiting (a non-blocking receive
    resolves at once in zmq.asyncio, ahead of the reader task's pending one)."""
    while not sock.closed and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
        try:
            yield sock.recv_multipart(flags=zmq.NOBLOCK).result()
        except zmq.Again:
            return
