"""One Service's engine: its links, its requests in flight, its sockets on the shared loop."""
from __future__ import annotations

import difflib
import logging
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

import zmq

from .. import protocol
from ..config import Config
from ..errors import AuthenticationError, CauldronError, RemoteError, TimeoutError
from ..protocol.links import DOWN, RELOOKUP, REPAIR, link_key
from ..protocol.requests import (
    Pending,
    RequestTable,
    keep_waiting,
)
from ..security import (
    HANDSHAKE_EVENTS,
    REFUSED,
    SUCCEEDED,
    client_security,
    handshake_event,
    refused_message,
)
from ..transport import send_frames, MailboxClosed, Monitored, drain, make_socket
from .callbacks import _CallbackRunner
from .direct import DirectRequests
from .events import _Link, _LinkEvents, remote_error
from .lookups import _RouterRequests
from .loop import acquire as acquire_loop
from .loop import release as release_loop
from .task import _IDLE_TICK, ServiceShutDown, Task, UnknownKeyword, _fmt_s

if TYPE_CHECKING:
    from .keyword import Keyword


class Engine(_RouterRequests, _LinkEvents):
    """Everything one Service knows and owns, driven by the process's shared I/O loop.

    Methods whose names start with ``io_`` or ``_`` run on the loop thread
    only; the others are safe to call from any thread.  The protocol's
    decisions are made by :mod:`cauldron_zmq.protocol` (the request table,
    each link's state); this class turns them into socket operations.
    """

    def __init__(self, service: str, config: Config, timeout: float,
                 logger: logging.Logger) -> None:
        self.service = service
        self.config = config
        self.security = client_security(config)     # first: a bad key file leaves nothing behind
        self.timeout = timeout
        self.log = logger
        self.max_size = config.zmq.max_message_size
        self.liveness = config.zmq.liveness
        self.router_address = config.router_address()
        #: Every router of the installation ([zmq-router] replicas): each look-up asks all.
        self.router_addresses = config.router_addresses()
        self.router_where = _routers_text(self.router_addresses)
        self.router_timeout = config.router.timeout / 1000.0
        self.callbacks = _CallbackRunner(f"cauldron_zmq.client.{service}.callbacks", logger)
        self.loss_listeners: List[Callable[[str, bool], Any]] = []   # Service.add_loss_listener
        self._closed = False
        self._stopped = threading.Event()
        self.links: Dict[str, _Link] = {}
        self.owner: Dict[str, _Link] = {}          # KEYWORD -> link (I/O thread)
        self.pending = RequestTable()
        self.kwobjs: Dict[str, Keyword] = {}
        self.last_broadcast: Dict[str, Tuple[Any, Optional[bytes]]] = {}
        self.polls: Dict[str, List[float]] = {}    # KEYWORD -> [period, next due]
        self.inflight_reads: Set[str] = set()
        # One DEALER per router, open only while a look-up waits (see _on_router).
        self.router_socks: Dict[str, Monitored] = {}
        self.router_handshake_errors: Dict[str, str] = {}
        # Snapshots readable from any thread (replaced whole, never mutated).
        self.names: Dict[str, str] = {}            # KEYWORD -> link key
        self.alive_links: Dict[str, bool] = {}
        self.addresses: Dict[str, str] = {}        # link key -> its dispatch address
        self.direct = DirectRequests(self)         # synchronous calls from user threads
        self.loop = acquire_loop()
        self.ctx = self.loop.ctx
        self.loop.post(lambda: self.loop.engines.add(self))

    # ------------------------------------------------------------ any thread
    @property
    def thread(self) -> threading.Thread:
        return self.loop.thread

    def start(self) -> None:
        """Kept for callers of the per-Service engine: the shared loop runs already."""

    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the I/O thread soon."""
        if self._closed:
            raise ServiceShutDown(f"service {self.service!r} is shut down")
        try:
            self.loop.post(fn)
        except MailboxClosed:
            raise ServiceShutDown(f"service {self.service!r} is shut down") from None

    def call(self, fn: Callable[[], Any], timeout: Optional[float] = None) -> Any:
        """Run ``fn`` on the I/O thread and return its result (or raise its error)."""
        if self.loop.in_loop():
            return fn()
        task = Task(f"{self.service}: internal call",
                    deadline=time.monotonic() + (timeout or self.timeout))

        def run() -> None:
            try:
                task._succeed(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                task._fail(exc)
        self.post(run)
        return task.get()

    def submit(self, command: str, target: str = "", payload: Any = None, *,
               raw: Optional[bytes] = None, link: Optional[str] = None,
               timeout: Optional[float] = None,
               on_reply: Optional[Callable[[protocol.Reply], Any]] = None,
               description: Union[str, Callable[[], str]] = "",
               explicit: bool = True) -> Task:
        """Send a dispatcher request; the Task completes with ``on_reply(reply)``.

        ``description`` may be a function: it is called only if a message needs it.
        ``explicit=False`` (a write the caller set no deadline for): once
        acknowledged, it waits past ``timeout`` while the dispatcher stays alive.
        """
        timeout = self.timeout if timeout is None else float(timeout)
        req = protocol.request(command, target, {} if payload is None else payload, raw=raw)
        what = description or f"{self.service}.{target or '*'}: {command}"
        task = Task(what, req, time.monotonic() + timeout)
        p = Pending(req, task, timeout, task.deadline, on_reply, link=link, explicit=explicit)
        self.post(lambda: self._send(p))
        return task

    def stop(self, timeout: float = 5.0) -> None:
        """Close every socket of this Service, leave the shared loop; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.direct.close()
        if self.loop.in_loop():
            self.close_all()
        else:
            try:
                self.loop.post(self.close_all)
            except MailboxClosed:
                pass
            self._stopped.wait(timeout)
        release_loop(self.loop)
        self.callbacks.stop(timeout)

    def is_alive(self, link_key: Optional[str] = None) -> bool:
        alive = self.alive_links
        if link_key is None:
            return bool(alive) and all(alive.values())
        return alive.get(link_key, False)

    # ----------------------------------------------------- the loop's calls
    def close_all(self) -> None:
        """On the loop thread: fail what waits, close every socket, leave the loop."""
        if self._stopped.is_set():
            return
        self.loop.engines.discard(self)
        err = ServiceShutDown(f"service {self.service!r} was shut down")
        for p in self.pending.clear():
            p.task._fail(err)
        for link in list(self.links.values()):
            self._close_link_sockets(link)
        self._reset_router()
        self._stopped.set()

    def next_wakeup(self, now: float) -> float:
        """When this engine's next timer is due (the loop sleeps until the earliest)."""
        due = now + _IDLE_TICK
        first = self.pending.next_deadline()
        if first is not None:
            due = min(due, first)
        for link in self.links.values():
            when = link.next_due(now)
            if when is not None:
                due = min(due, when)
        for _period, next_due in self.polls.values():
            due = min(due, next_due)
        return due

    def run_timers(self, now: float) -> None:
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
        for name, slot in self.polls.items():
            if slot[1] <= now:
                slot[1] = now + slot[0]
                self._internal_read(name, "poll")

    # -------------------------------------------------------------- sockets
    def _socket(self, kind: int) -> zmq.Socket:
        return make_socket(self.ctx, kind, max_size=self.max_size, security=self.security,
                           reconnect=True)

    def _watch(self, sock: zmq.Socket, handler: Callable[[], None]) -> None:
        self.loop.watch(sock, handler)

    def _close(self, m: Optional[Monitored]) -> None:
        if m is None:
            return
        self.loop.unwatch(m.socket)
        if m.monitor is not None:
            self.loop.unwatch(m.monitor)
        m.close()

    def _open_dealer(self, link: _Link) -> None:
        events = HANDSHAKE_EVENTS if self.security is not None else 0
        m = Monitored(self._socket(zmq.DEALER), events)
        if m.monitor is not None:
            self._watch(m.monitor, lambda: self._on_dealer_monitor(link, m))
        m.socket.connect(link.dispatch_address)
        link.dealer = m
        self._watch(m.socket, lambda: self._on_dealer(link, m.socket))

    def _open_sub(self, link: _Link) -> None:
        sock = self._socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.config.zmq.hwm)
        sock.setsockopt(zmq.SUBSCRIBE, protocol.service_prefix(self.service))
        m = Monitored(sock, zmq.EVENT_CONNECTED | HANDSHAKE_EVENTS)
        sock.connect(link.broadcast_address)
        link.sub = m
        self._watch(sock, lambda: self._on_sub(link, sock))
        self._watch(m.monitor, lambda: self._on_monitor(link, m))

    def _open_link_sockets(self, link: _Link) -> None:
        self._open_dealer(link)
        self._open_sub(link)
        self._publish_addresses()

    def _close_dealer(self, link: _Link) -> None:
        self._close(link.dealer)
        link.dealer = None

    def _close_link_sockets(self, link: _Link) -> None:
        self._close_dealer(link)
        self._close(link.sub)
        link.sub = None

    # ---------------------------------------------------------------- links
    def io_add_links(self, entries: Iterable[Dict[str, Any]]) -> List[str]:
        """Connect to every dispatcher listed; returns the link keys."""
        keys = []
        now = time.monotonic()
        for entry in entries:
            key = link_key(entry)
            keys.append(key)
            link = self.links.get(key)
            if link is None:
                link = _Link(key, entry, now, self.liveness)
                self.links[key] = link
                self._open_link_sockets(link)
                self._set_owner(link, link.keywords)
            elif link.moved(entry):
                self._move(link, entry)
        self._publish_alive()
        return keys

    def _set_owner(self, link: _Link, names: Iterable[str]) -> None:
        for name in names:
            self.owner[name] = link
        self.names = {name: lk.key for name, lk in self.owner.items()}

    def io_listed(self, key: str, result: Any) -> None:
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
        link.keywords = names
        link.listed = True
        self._set_owner(link, names)

    def _publish_alive(self) -> None:
        self.alive_links = {key: link.alive and not link.refused
                            for key, link in self.links.items()}

    def _publish_addresses(self) -> None:
        self.addresses = {key: link.dispatch_address for key, link in self.links.items()}

    def _move(self, link: _Link, entry: Dict[str, Any]) -> None:
        """The router gives the dispatcher a new address: reconnect both sockets."""
        old = link.dispatch_address
        link.move(entry)
        self.log.info("%s moved from %s; reconnecting", link.describe(), old)
        self._close_link_sockets(link)
        self._open_link_sockets(link)
        self._resend_unacked(link)

    def _reset_dealer(self, link: _Link) -> None:
        """Lazy Pirate: a DEALER whose peer went silent is closed and reconnected."""
        self.log.debug("resetting the connection to %s", link.describe())
        self._close_dealer(link)
        self._open_dealer(link)
        self._resend_unacked(link)

    def _resend_unacked(self, link: _Link) -> None:
        """Requests the old socket swallowed go out again, same id, same deadline.

        The table gives a copy: a send that fails (a full queue) ends its
        request without disturbing the walk through the others.
        """
        for p in self.pending.on_link(link.key, acked=False):
            self._transmit(p, link)

    # ------------------------------------------------------------- requests
    def _send(self, p: Pending) -> None:
        link = self.links.get(p.link) if p.link else self.owner.get(p.request.target.upper())
        if link is None:
            p.task._fail(self._no_link_error(p))
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

    def _transmit(self, p: Pending, link: _Link) -> None:
        assert link.dealer is not None
        self.pending.add(p, time.monotonic())
        try:
            send_frames(link.dealer.socket, protocol.encode_request(p.request))
        except zmq.Again:
            self.pending.pop(p.id)
            p.task._fail(CauldronError(f"{p.task.description}: the send queue to "
                                       f"{link.describe()} is full"))

    def _expire(self, p: Pending, now: float) -> None:
        link = self.links.get(p.link) if p.link else None
        if link is not None and keep_waiting(p, alive=link.alive, refused=link.refused):
            # A slow write with no deadline from its caller: it waits another
            # liveness period; the dispatcher going silent (_link_down) or
            # restarting (_fail_orphaned) ends it with its own error.
            p.task.deadline = now + link.liveness()
            self.pending.extend(p, p.task.deadline)
            return
        if p.router:
            self._expire_router(p)
            return
        assert link is not None
        if link.dealer is not None and link.dealer.monitor is not None:
            self._on_dealer_monitor(link, link.dealer)    # a refusal that came with the deadline
            if p.task.done():
                return
        if p.acked:
            p.task._fail(TimeoutError(
                f"{p.task.description}: {link.describe()} acknowledged the request but did "
                f"not complete it within {_fmt_s(p.timeout)}"))
            return
        p.task._fail(TimeoutError(f"{p.task.description}: no answer from {link.describe()} "
                                  f"within {_fmt_s(p.timeout)}"
                                  + self._handshake_hint(link.handshake_error)))
        if link.last_reply < p.sent_at and link.dealer is not None:
            self._reset_dealer(link)
            link.start_relookup(time.monotonic(), self.config.router.enable)

    def io_timed_out(self, key: str, sent_at: float) -> None:
        """A direct (user-thread) request timed out: look the dispatcher up again if
        nothing came back from it since (the same as for the I/O thread's own)."""
        link = self.links.get(key)
        if link is not None and link.last_reply < sent_at and link.last_heard < sent_at:
            link.start_relookup(time.monotonic(), self.config.router.enable)

    def _handshake_hint(self, error: str) -> str:
        """What a timeout message adds about security (nothing in the common case)."""
        if error:
            return f" (the last connection attempt failed its handshake: {error})"
        if self.security is not None and not HANDSHAKE_EVENTS:
            return (" (with [zmq-security] enabled, the server's authenticator may have "
                    "refused this client's key)")
        return ""

    # ------------------------------------------------------- handshake events
    def _handshake_events(self, m: Monitored) -> List[Tuple[str, str]]:
        events = []
        for event in m.events():
            kind, text = handshake_event(event, self.security is not None)
            if kind:
                events.append((kind, text))
        return events

    def _on_dealer_monitor(self, link: _Link, m: Monitored) -> None:
        for kind, text in self._handshake_events(m):
            self._on_handshake(link, kind, text)

    def _on_handshake(self, link: _Link, kind: str, text: str) -> None:
        """A handshake with the dispatcher succeeded, failed, or was refused."""
        if not link.handshake(kind == SUCCEEDED, kind == REFUSED, text):
            self._publish_alive()
            return
        # libzmq drops a refused connection for good: fail what waits on it
        # now, and open new sockets for the next request (_retry_refused).
        self._publish_alive()
        message = refused_message(link.describe(), self.security)
        self.log.warning("%s", message)
        for p in self.pending.take_link(link.key):
            p.task._fail(AuthenticationError(f"{p.task.description}: {message}"))

    def _retry_refused(self, link: _Link) -> None:
        """New sockets, so a new handshake: the key may have been authorised since."""
        link.refused = False
        self._close_link_sockets(link)
        self._open_link_sockets(link)
        link.renewed()
        self._publish_alive()

    def _on_dealer(self, link: _Link, sock: zmq.Socket) -> None:
        for frames in drain(sock):
            back = link.heard(time.monotonic(), reply=True)
            if back is not None:
                self._came_back(link, back)
            self._on_reply(protocol.decode_reply(frames, self.max_size), link.describe())

    def _on_reply(self, reply: Union[protocol.Reply, protocol.Malformed], peer: str) -> None:
        if isinstance(reply, protocol.Malformed):
            self.log.warning("malformed reply from %s: %s", peer, reply.message)
            p = self.pending.pop(reply.id)
            if p is not None:
                p.task._fail(CauldronError(f"{p.task.description}: malformed reply from "
                                           f"{peer}: {reply.message}"))
            return
        if reply.status == protocol.ACK:
            started = reply.payload.get("started") if isinstance(reply.payload, dict) else None
            p = self.pending.acknowledged(reply.id, started)
            if p is not None:
                p.task._acknowledge()
            return
        p = self.pending.pop(reply.id)
        if p is None:
            self.log.debug("dropping a late reply (%s) from %s", reply.status, peer)
            return
        if reply.status == protocol.ERROR:
            p.task._fail(self._remote_error(p, reply.payload, peer))
            return
        try:
            result = p.on_reply(reply) if p.on_reply is not None else reply.payload
        except Exception as exc:  # noqa: BLE001 - e.g. a value that does not convert
            p.task._fail(exc)
            return
        p.task._succeed(result)

    def _remote_error(self, p: Pending, err: Any, peer: str) -> RemoteError:
        return remote_error(self.service, p.request.target, err, peer, router=p.router)



_Engine = Engine     # the name tests and tools knew it by


def _routers_text(addresses: List[str]) -> str:
    """"the router at A", or "the routers at A, B" (messages name every one asked)."""
    if len(addresses) == 1:
        return f"the router at {addresses[0]}"
    return f"the routers at {', '.join(addresses)}"


def unknown_keyword_message(service: str, name: str, known: Iterable[str]) -> str:
    """'service 'x' has no keyword 'FOO'; did you mean ...' for a KeyError."""
    close = difflib.get_close_matches(name.upper(), list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"service {service!r} has no keyword {name.upper()!r}{hint}"
