"""What the asyncio engine does when its dispatchers speak, or fall silent.

The decisions are :class:`~cauldron_zmq.protocol.links.LinkState`'s and its
:class:`~cauldron_zmq.protocol.links.Repair`'s (pure, shared with the
threaded client); this mixin of :class:`~cauldron_zmq.aio.engine.Engine`
carries them out: re-reads after a possible loss (a fresh read per tracked
keyword, issued after the loss), failing requests a restart orphaned or a
silence ended, look-ups of a dispatcher that may have moved.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Dict, Iterable, List

import zmq

from .. import protocol
from ..errors import DispatcherRestarted
from ..names import split_entries
from ..protocol.cache import BROADCAST, FRESH
from ..protocol.links import Resync, link_key
from ..protocol.payloads import Heartbeat, gseq_of
from ..protocol.requests import ROUTER
from ..client.events import silent_error
from ..security import handshake_event
from .link import Link

if TYPE_CHECKING:
    from .engine import Engine

_EVENT_CONNECTED = int(zmq.EVENT_CONNECTED)


class LinkEvents:
    """The part of the Engine that reacts to what dispatchers send (see the module)."""

    # ------------------------------------------------------------ broadcasts
    def _on_sub(self: "Engine", link: Link, frames: List[Any]) -> None:
        b = protocol.decode_broadcast(frames, self.max_size)
        if isinstance(b, protocol.Malformed):
            self.log.warning("malformed broadcast from %s: %s", link.describe(), b.message)
            return
        if b.service != self.service or not isinstance(b.payload, dict):
            return
        back = link.heard(self.now())
        if back is not None:
            self._came_back(link, back)
        if b.is_heartbeat:
            action = link.on_heartbeat(Heartbeat.from_payload(b.payload))
            if action is not None:
                self._resync(link, action)
            return
        action = link.on_broadcast(gseq_of(b.payload))
        if action is not None:
            self._resync(link, action)
        kw = self.kwobjs.get(b.keyword.upper())
        if kw is not None:
            kw._take(b.payload, b.raw, BROADCAST)

    def _on_sub_event(self: "Engine", link: Link, event: Dict[str, Any]) -> None:
        if event.get("event") == _EVENT_CONNECTED:
            # Whatever was published before the subscription reached the
            # dispatcher is lost: re-read now, and again at the first heartbeat.
            self._resync(link, link.sub_connected())
            return
        kind, text = handshake_event(event, self.security is not None)
        if kind:
            self._on_handshake(link, kind, text)

    # ---------------------------------------------------------------- repair
    def _resync(self: "Engine", link: Link, action: Resync) -> None:
        """Re-read what is tracked (monitored or waited on) after a possible loss."""
        if link.refused:          # nothing gets through; the next request retries
            return
        kws = [kw for name, kw in self.kwobjs.items() if self.owner.get(name) is link]
        if action.restarted:
            self.log.info("%s: %s", link.describe(), action.why)
            for kw in kws:
                kw._cache.forget_sequence()
            self._fail_orphaned(link)
        tracked = [kw.name for kw in kws if kw._tracked()]
        if tracked:
            self.log.debug("%s: %s; re-reading %s", link.describe(), action.why,
                           ", ".join(tracked))
        self._repair_reads(link, link.repair.lost(tracked, action.supersede), action.why)

    def _tracked_names(self: "Engine", link: Link) -> List[str]:
        return [name for name, kw in self.kwobjs.items()
                if self.owner.get(name) is link and kw._tracked()]

    def _repair_reads(self: "Engine", link: Link, names: Iterable[str], why: str) -> None:
        epoch = link.repair.epoch
        for name in names:
            kw = self.kwobjs.get(name)
            if kw is None or self.owner.get(name) is not link:
                link.repair.done(name, epoch, False, self.now(), tracked=False)
                continue
            future = self.fresh_read(kw, why)
            future.add_done_callback(
                lambda f, n=name, k=kw: self._repair_done(link, n, epoch, f, k))

    def fresh_read(self: "Engine", kw: Any, why: str) -> "asyncio.Future[Any]":
        """A read the client makes itself (catching up); its value reaches monitors."""
        return self.submit("read", kw.name, {}, timeout=self.timeout,
                           on_reply=lambda r: kw._take(r.payload, r.raw, FRESH),
                           description=f"{self.service}.{kw.name}: read ({why})")

    def _repair_done(self: "Engine", link: Link, name: str, epoch: int,
                     future: "asyncio.Future[Any]", kw: Any) -> None:
        ok = not future.cancelled() and future.exception() is None
        if not ok and not future.cancelled():
            self.log.debug("%s", future.exception())
        if self.closed:
            return
        again = link.repair.done(name, epoch, ok, self.now(),
                                 tracked=kw._tracked() and self.kwobjs.get(name) is kw)
        self._repair_reads(link, again, "a loss while the last re-read was in flight")
        retry = link.repair.next_due()
        if retry is not None:
            self._kick(retry)

    def _fail_orphaned(self: "Engine", link: Link) -> None:
        """Requests an earlier incarnation acknowledged will never be answered."""
        for p in self.pending.take_orphans(link.key, link.started):
            p.task.finish(error=DispatcherRestarted(
                f"{p.task.description}: {link.describe()} restarted after acknowledging the "
                f"request, so no answer will come; it may or may not have been applied "
                f"(read the keyword to know)"))

    # -------------------------------------------------------------- liveness
    def _came_back(self: "Engine", link: Link, action: Resync) -> None:
        self.log.info("%s is answering again", link.describe())
        self._connection_changed(link, True)
        self._resync(link, action)

    def _link_down(self: "Engine", link: Link, now: float) -> None:
        link.went_down()
        self.log.warning("%s: nothing heard for %.1f s; marking it disconnected",
                         link.describe(), now - link.last_heard)
        silent = self.pending.take_link(link.key)
        for p in silent:
            p.task.finish(error=silent_error(p.task.description, link, now, p.acked))
        if silent and link.dealer is not None:
            self._reset_dealer(link)     # what was reported failed must not go out later
        self._connection_changed(link, False)
        link.start_relookup(now, self.config.router.enable)

    def _connection_changed(self: "Engine", link: Link, connected: bool) -> None:
        for name, kw in self.kwobjs.items():
            if self.owner.get(name) is link:
                kw._set_connected(connected)

    # --------------------------------------------------------------- lookups
    def _relookup(self: "Engine", link: Link) -> None:
        """Ask the routers where the dispatcher is now (it may have moved)."""
        link.relookup_sent()
        future = self.router_request("lookup", self.service, {},
                                     description=f"lookup {self.service!r} for "
                                                 f"{link.describe()}")
        future.add_done_callback(lambda f: self._relookup_done(link, f))

    def _relookup_done(self: "Engine", link: Link, future: "asyncio.Future[Any]") -> None:
        if future.cancelled() or future.exception() is not None:
            link.lookup_inflight = False
            if not future.cancelled():
                self.log.debug("%s", future.exception())
            return
        if self.closed:
            return
        result = future.result() if isinstance(future.result(), dict) else {}
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
        for key in self.add_links([e for e in entries if link_key(e) not in self.links]):
            self._learn_later(key)       # a dispatcher of the service that came up since

    def _learn_later(self: "Engine", key: str) -> None:
        """List and describe a new dispatcher's keywords (the Service's ``learn``)."""
        task = asyncio.ensure_future(self.learn(key))
        self._learning.add(task)
        task.add_done_callback(self._learned)

    def _learned(self: "Engine", task: "asyncio.Future[Any]") -> None:
        self._learning.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.warning("%s; its keywords are not available", task.exception())


__all__ = ["LinkEvents", "ROUTER"]
