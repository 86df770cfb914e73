"""What an engine does when its dispatchers speak: broadcasts, heartbeats, loss, liveness.

The decisions are :class:`~cauldron_zmq.protocol.links.LinkState`'s (pure);
this mixin of :class:`~cauldron_zmq.client.engine.Engine` carries them out:
re-reads after a possible loss, failing requests a restart orphaned or a
silence ended, look-ups of a dispatcher that may have moved.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional

import zmq

from .. import protocol
from ..config import endpoint
from ..errors import (
    DispatcherError,
    DispatcherRestarted,
    DispatcherSilent,
    RemoteError,
    RouterError,
    remote_exception,
)
from ..names import split_entries
from ..protocol.links import LinkState, Resync, link_key
from ..protocol.payloads import Heartbeat, gseq_of
from ..protocol.requests import ROUTER, Pending, RequestTable
from ..security import handshake_event
from ..transport import Monitored, drain
from .task import _EVENT_CONNECTED, BROADCAST, ERROR, FRESH, SUCCESS, Task

if TYPE_CHECKING:
    from .keyword import Keyword


#: Broadcasts taken from a SUB at a time: a flood leaves room for timers and replies.
_DRAIN_LIMIT = 500


class _Link(LinkState):
    """One dispatcher of the service: its state (:class:`LinkState`) and its two sockets."""

    def __init__(self, key: str, entry: Dict[str, Any], now: float, liveness: float) -> None:
        super().__init__(key, entry, now, liveness)
        self.dealer: Optional[Monitored] = None
        self.sub: Optional[Monitored] = None

    @property
    def dispatch_address(self) -> str:
        return endpoint(self.protocol, self.host, self.dispatch_port, bind=False)

    @property
    def broadcast_address(self) -> str:
        return endpoint(self.protocol, self.host, self.broadcast_port, bind=False)

    def describe(self) -> str:
        name = f"dispatcher {self.name!r}" if self.name else "the dispatcher"
        return f"{name} at {self.dispatch_address}"



class _LinkEvents:
    """The part of Engine that reacts to what dispatchers send (see the module)."""

    # Provided by Engine:
    links: Dict[str, "_Link"]
    owner: Dict[str, "_Link"]
    pending: RequestTable
    kwobjs: Dict[str, "Keyword"]
    service: str
    timeout: float

    # ------------------------------------------------------------ broadcasts
    def _on_sub(self, link: _Link, sock: zmq.Socket) -> None:
        self.callbacks.begin_batch()       # one hand-over for the whole drain
        try:
            self._take_broadcasts(link, sock)
        finally:
            self.callbacks.end_batch()

    def _take_broadcasts(self, link: _Link, sock: zmq.Socket) -> None:
        for frames in drain(sock, limit=_DRAIN_LIMIT):
            b = protocol.decode_broadcast(frames, self.max_size)
            if isinstance(b, protocol.Malformed):
                self.log.warning("malformed broadcast from %s: %s", link.describe(), b.message)
                continue
            if b.service != self.service or not isinstance(b.payload, dict):
                continue
            back = link.heard(time.monotonic())
            if back is not None:
                self._came_back(link, back)
            if b.is_heartbeat:
                self._on_heartbeat(link, Heartbeat.from_payload(b.payload))
            else:
                self._on_broadcast(link, b)

    def _on_monitor(self, link: _Link, m: Monitored) -> None:
        for event in m.events():
            if event.get("event") != _EVENT_CONNECTED:
                kind, text = handshake_event(event, self.security is not None)
                if kind:
                    self._on_handshake(link, kind, text)
                    if link.sub is None or m.socket.closed:
                        return
                continue
            # The SUB (re)connected: anything published before its
            # subscription arrived is lost, so re-read now and again at the
            # first heartbeat (see LinkState.on_heartbeat).
            self._do_resync(link, link.sub_connected())

    def _on_heartbeat(self, link: _Link, hb: Heartbeat) -> None:
        action = link.on_heartbeat(hb)
        if action is not None:
            self._do_resync(link, action)

    def _on_broadcast(self, link: _Link, b: protocol.Broadcast) -> None:
        action = link.on_broadcast(gseq_of(b.payload))
        if action is not None:
            self._do_resync(link, action)
        name = b.keyword.upper()
        self.last_broadcast[name] = (b.payload, b.raw)
        kw = self.kwobjs.get(name)
        if kw is not None:
            kw._take(b.payload, b.raw, BROADCAST)

    def _do_resync(self, link: _Link, action: Resync) -> None:
        self._resync(link, action.why, action.restarted, action.supersede)

    def _resync(self, link: _Link, why: str, restarted: bool = False,
                supersede: bool = True) -> None:
        """Re-read what is monitored, waited on or polled, after a possible loss.

        A lost or renewed connection supersedes the reads still in flight (one
        may have gone to a process that is gone); a gap on a live connection
        (``supersede=False``) queues one read behind them: see :mod:`.protocol.links`.
        """
        if link.refused:          # nothing gets through; the next user request retries
            return
        for listener in self.loss_listeners:     # queued before the re-reads' callbacks
            self.callbacks.call(lambda fn=listener: fn(why, restarted))
        kws = [kw for name, kw in self.kwobjs.items() if self.owner.get(name) is link]
        if restarted:
            self.log.info("%s: %s", link.describe(), why)
            for kw in kws:
                kw._forget_sequence()
            self._fail_orphaned(link)
        tracked = [kw.name for kw in kws if kw._tracked()]
        if tracked:
            self.log.debug("%s: %s; re-reading %s", link.describe(), why, ", ".join(tracked))
        self._repair_reads(link, link.repair.lost(tracked, supersede), why)

    def _tracked_names(self, link: _Link) -> List[str]:
        return [name for name, kw in self.kwobjs.items()
                if self.owner.get(name) is link and kw._tracked()]

    def _repair_reads(self, link: _Link, names: Iterable[str], why: str) -> None:
        epoch = link.repair.epoch
        for name in names:
            kw = self.kwobjs.get(name)
            if kw is None or self.owner.get(name) is not link:
                link.repair.done(name, epoch, False, time.monotonic(), tracked=False)
                continue
            task = self._read(kw, why)
            task.add_done_callback(
                lambda t, n=name, k=kw: self._repair_done(link, n, epoch, t, k))

    def _read(self, kw: "Keyword", why: str) -> Task:
        """A read the client makes itself (catching up); its value fires as FRESH."""
        req = protocol.request("read", kw.name, {})
        task = Task(f"{self.service}.{kw.name}: read ({why})", req,
                    time.monotonic() + self.timeout)
        self._send(Pending(req, task, self.timeout, task.deadline,
                           lambda r: kw._take(r.payload, r.raw, FRESH)))
        return task

    def _repair_done(self, link: _Link, name: str, epoch: int, task: Task,
                     kw: "Keyword") -> None:
        if task.status == ERROR:
            self.log.debug("%s", task.error)
        again = link.repair.done(name, epoch, task.status == SUCCESS, time.monotonic(),
                                 tracked=kw._tracked() and self.kwobjs.get(name) is kw)
        self._repair_reads(link, again, "a loss while the last re-read was in flight")

    def _fail_orphaned(self, link: _Link) -> None:
        """Fail requests an earlier incarnation of the dispatcher acknowledged.

        The process that would have answered them is gone; waiting for the
        whole timeout (a long move may have a long one) would tell nothing more.
        """
        for p in self.pending.take_orphans(link.key, link.started):
            p.task._fail(DispatcherRestarted(
                f"{p.task.description}: {link.describe()} restarted after acknowledging the "
                f"request, so no answer will come; it may or may not have been applied "
                f"(read the keyword to know)"))

    def _internal_read(self, name: str, why: str) -> None:
        kw = self.kwobjs.get(name)
        if kw is None or name in self.inflight_reads or name not in self.owner:
            return
        self.inflight_reads.add(name)
        self._read(kw, why).add_done_callback(lambda t: self._read_done(name, t))

    def _read_done(self, name: str, task: Task) -> None:
        self.inflight_reads.discard(name)
        if task.status == ERROR:
            self.log.debug("%s", task.error)

    def io_register(self, kw: "Keyword") -> None:
        """A new Keyword object; catch up with a broadcast newer than its describe."""
        self.kwobjs[kw.name] = kw
        cached = self.last_broadcast.get(kw.name)
        if cached is not None:
            kw._ingest(cached[0], cached[1], FRESH)

    def io_set_poll(self, name: str, period: Optional[float]) -> None:
        if period is None:
            self.polls.pop(name, None)
        else:
            self.polls[name] = [float(period), time.monotonic() + float(period)]

    # ------------------------------------------------------------- liveness
    def _came_back(self, link: _Link, action: Resync) -> None:
        self._publish_alive()
        self.log.info("%s is answering again", link.describe())
        self._connection_changed(link, True)
        self._do_resync(link, action)

    def _link_down(self, link: _Link, now: float) -> None:
        link.went_down()
        self._publish_alive()
        self.log.warning("%s: nothing heard for %.1f s; marking it disconnected",
                         link.describe(), now - link.last_heard)
        self._fail_silent(link, now)
        self._connection_changed(link, False)
        link.start_relookup(now, self.config.router.enable)

    def _fail_silent(self, link: _Link, now: float) -> None:
        """Requests in flight to a dispatcher known dead fail now, not at their timeouts.

        Requests sent after this (while it is down) keep their timeouts: the
        dispatcher may come back (a SIGSTOPped one does).  An unacknowledged one
        that failed here is never delivered later (the DEALER is replaced).
        """
        silent = self.pending.take_link(link.key)
        if not silent:
            return
        for p in silent:
            p.task._fail(silent_error(p.task.description, link, now, p.acked))
        if link.dealer is not None:
            # A request reported failed must not reach a replacement later from
            # the old socket's queue: a new socket drops what the old one held.
            self._reset_dealer(link)

    def _connection_changed(self, link: _Link, connected: bool) -> None:
        for name, kw in self.kwobjs.items():
            if self.owner.get(name) is link:
                kw._fire(kw._set_connected(connected))

    # -------------------------------------------------------------- lookups
    def _relookup(self, link: _Link) -> None:
        """Ask the router where the dispatcher is now (it may have moved)."""
        link.relookup_sent()
        req = protocol.request("lookup", self.service, {})
        what = f"lookup {self.service!r} for {link.describe()}"
        task = Task(what, req, time.monotonic() + self.router_timeout)
        p = Pending(req, task, self.router_timeout, task.deadline, lambda r: r.payload,
                    link=ROUTER)
        task.add_done_callback(lambda t: self._relookup_done(link, t))
        self._send_router(p)

    def _relookup_done(self, link: _Link, task: Task) -> None:
        if task.status == ERROR:
            link.lookup_inflight = False
            self.log.debug("%s", task.error)
            return
        result = task.result if isinstance(task.result, dict) else {}
        entries, _bad = split_entries(result.get("dispatchers") or [])
        same = False
        for entry in entries:
            if link_key(entry) != link.key:
                continue
            if link.moved(entry):
                self._move(link, entry)
            else:
                same = True
        link.relookup_answered(same)
        new = [e for e in entries if link_key(e) not in self.links]
        if new:
            for key in self.io_add_links(new):
                self._list_link(key)

    def _list_link(self, key: str) -> None:
        """Ask a new dispatcher which keywords it owns."""
        req = protocol.request("list", "", {})
        task = Task(f"{self.service}: list {key}", req, time.monotonic() + self.timeout)
        self._send(Pending(req, task, self.timeout, task.deadline, lambda r: r.payload,
                           link=key))
        task.add_done_callback(lambda t: t.status == SUCCESS and self.io_listed(key, t.result))



def remote_error(service: str, target: str, err: Any, peer: str,
                 router: bool = False) -> RemoteError:
    """The peer's exception, type and message kept (the keyword named if it is not)."""
    err = err if isinstance(err, dict) else {}
    base = RouterError if router else DispatcherError
    message = str(err.get("message") or "")
    target = target.upper()
    if not router and target and target not in message.upper():
        message = f"{service}.{target}: {message}"
    return remote_exception(message, code=str(err.get("code") or "internal"),
                            remote_type=str(err.get("type") or ""), peer=peer, base=base)


def silent_error(description: str, link: _Link, now: float, acked: bool) -> DispatcherSilent:
    """A request whose dispatcher went silent while it waited."""
    ago = now - link.last_heard
    since = time.strftime("%H:%M:%S", time.localtime(time.time() - ago))
    fate = ("it acknowledged the request, which may or may not have been applied "
            "(read the keyword to know)" if acked else
            "no acknowledgement came, so it may or may not have reached it")
    return DispatcherSilent(
        f"{description}: {link.describe()} went silent: nothing heard since "
        f"{since} ({ago:.1f} s ago, liveness {link.liveness():g} s); {fate}")
