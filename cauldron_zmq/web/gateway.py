"""The bridge between the web server's asyncio loop and the threaded ZeroMQ client.

ZeroMQ sockets belong to the client's own threads (one socket, one thread):
this module never opens one.  It drives :class:`cauldron_zmq.ktl.Service`
(read, write, monitor, callback) and :class:`cauldron_zmq.router.RouterClient`
from executor threads, and the client's callback thread hands every update
to the loop with ``loop.call_soon_threadsafe``.  Each events subscriber has a
bounded queue: one that falls behind loses its queue's content and gets a
``gap`` event followed by fresh values, so a slow browser costs bounded
memory and never hides that it missed something.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from .. import protocol
from ..config import Config
from ..types import json_value
from ..errors import (AuthenticationError, CauldronError, ConversionError, DispatcherRestarted,
                      RemoteError, ServiceNotFound, TimeoutError)

__all__ = ["Gateway", "GatewayError", "ServiceView", "error_for", "E_DOWN", "E_TIMEOUT",
           "E_WRITES_DISABLED"]

log = logging.getLogger("cauldron_zmq.web")

# Codes of the gateway's own, next to the protocol's (cauldron_zmq.protocol).
E_DOWN = "dispatcher-down"          # the service's dispatcher is not answering
E_TIMEOUT = "timeout"               # no answer within the timeout
E_WRITES_DISABLED = protocol.E_NOT_ALLOWED   # --allow-writes is off

HISTORY = 120                       # recent values kept per numeric keyword (charts)
QUEUE_MIN = 256                     # events a subscriber may lag behind, at least
NUMERIC = ("integer", "double", "boolean", "enumerated", "mask")   # charted scalars

_STATUS = {
    protocol.E_INVALID: 400, protocol.E_REQUEST: 400, protocol.E_JSON: 400,
    protocol.E_UNKNOWN_KEYWORD: 404, protocol.E_NOT_FOUND: 404,
    protocol.E_READ_ONLY: 403, protocol.E_NOT_ALLOWED: 403, protocol.E_WRITE_ONLY: 403,
    E_DOWN: 502, protocol.E_SHUTTING_DOWN: 502, protocol.E_WRITE_FAILED: 502,
    protocol.E_READ_FAILED: 502, protocol.E_INTERNAL: 502, E_TIMEOUT: 504,
}


class GatewayError(Exception):
    """A refusal as the HTTP API reports it: a project error code, a status, a message."""

    def __init__(self, code: str, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else _STATUS.get(code, 502)

    def body(self) -> Dict[str, str]:
        return {"error": self.code, "message": self.message}


def error_for(exc: BaseException) -> GatewayError:
    """The GatewayError for an exception of the client (codes kept, statuses fitted)."""
    from ..client import ServiceShutDown, UnknownKeyword
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ServiceNotFound):
        return GatewayError(protocol.E_NOT_FOUND, str(exc))
    if isinstance(exc, UnknownKeyword):
        return GatewayError(protocol.E_UNKNOWN_KEYWORD, str(exc))
    if isinstance(exc, AuthenticationError):     # the gateway's own key was refused
        return GatewayError(protocol.E_NOT_ALLOWED, str(exc), status=502)
    if isinstance(exc, RemoteError):
        return GatewayError(exc.code, exc.message)
    if isinstance(exc, TimeoutError):
        return GatewayError(E_TIMEOUT, str(exc))
    if isinstance(exc, (DispatcherRestarted, ServiceShutDown)):
        return GatewayError(E_DOWN, str(exc))
    if isinstance(exc, (ConversionError, ValueError, TypeError)):
        return GatewayError(protocol.E_INVALID, str(exc))
    return GatewayError(protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}")


def jsonable(kw: Any, native: Any) -> Any:
    """A native value as JSON (:func:`cauldron_zmq.types.json_value`)."""
    return json_value(kw.keyword_type, native)


def value_event(kw: Any) -> Dict[str, Any]:
    """A keyword's value as an event (inside a callback: the value that fired it)."""
    state = kw._view()      # one consistent snapshot, seq included
    return {"type": "value", "name": kw.name, "value": jsonable(kw, state.value),
            "ascii": state.ascii, "timestamp": state.time, "seq": state.seq,
            "connected": state.connected}


def describe_keyword(kw: Any) -> Dict[str, Any]:
    """Type, units, range, flags and description of a keyword (no value)."""
    kt = kw.keyword_type
    meta = kt.describe()
    return {"name": kw.name, "type": kw["type"], "units": kw.units,
            "min": meta.get("min"), "max": meta.get("max"),
            "enumerators": meta.get("enumerators"), "readonly": not kw["writes"],
            "writeonly": not kw["reads"], "description": kw["description"],
            "numeric": is_numeric(kw)}


def is_numeric(kw: Any) -> bool:
    """Whether a chart of the keyword's values means something (scalars only)."""
    kt = kw.keyword_type
    return kt.type in NUMERIC and not kt.is_array


class Subscriber:
    """One events stream: a bounded queue the loop fills and the response drains."""

    def __init__(self, maxsize: int) -> None:
        self.queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue(maxsize)
        self.gaps = 0

    def offer(self, event: Dict[str, Any], fresh: Callable[[], List[Dict[str, Any]]]) -> None:
        """Queue ``event``; when full, replace the backlog by a gap and ``fresh()`` values."""
        try:
            self.queue.put_nowait(event)
            return
        except asyncio.QueueFull:
            pass
        while not self.queue.empty():
            self.queue.get_nowait()
        self.gaps += 1
        self.queue.put_nowait({"type": "gap", "reason": "this subscriber fell behind; "
                               "events were dropped", "time": time.time()})
        for item in fresh():
            self.queue.put_nowait(item)


class ServiceView:
    """One open Service, every keyword monitored, its updates fanned out (loop thread).

    ``latest`` and ``history`` are touched on the loop thread only.
    """

    def __init__(self, svc: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.svc = svc
        self.name: str = svc.name
        self.loop = loop
        self.keywords: Dict[str, Any] = {}
        self.latest: Dict[str, Dict[str, Any]] = {}
        self.history: Dict[str, Deque[Tuple[float, float]]] = {}
        self.subscribers: Set[Subscriber] = set()
        self._was_down = False

    # ---------------------------------------------------- executor thread
    def start(self) -> None:
        """Monitor every readable keyword (blocking: call from an executor thread)."""
        for name in self.svc.keywords():
            kw = self.svc[name]
            self.keywords[name] = kw
        events = [value_event(kw) for kw in self.keywords.values()]
        self.loop.call_soon_threadsafe(self._seed, events)
        self.svc.add_loss_listener(self._on_loss)
        tasks = []
        for kw in self.keywords.values():
            kw.callback(self._on_callback)
            if kw["reads"]:
                tasks.append(kw.monitor(wait=False))
        for task in tasks:
            try:
                task.get()
            except CauldronError as exc:
                log.warning("%s: priming read failed: %s", self.name, exc)

    def reread(self, before: Dict[str, Dict[str, Any]], told_restart: bool) -> None:
        """Read every keyword after a loss; the loop publishes what comes back."""
        events = []
        try:
            tasks = [(kw, kw.read(wait=False, both=True)) for kw in self.keywords.values()
                     if kw["reads"]]
            for kw, task in tasks:
                try:
                    task.get()
                except CauldronError as exc:
                    log.info("%s: re-read after a loss failed: %s", kw.full_name, exc)
                    continue
                events.append(value_event(kw))
        except CauldronError as exc:      # e.g. the Service shut down under us
            log.info("%s: re-read after a loss stopped: %s", self.name, exc)
        self._post(self._reread_done, events, before, told_restart)

    # ----------------------------------------------------- callback thread
    def _on_callback(self, kw: Any) -> None:
        event = value_event(kw)
        self._post(self._publish, event)

    def _on_loss(self, why: str, restarted: bool) -> None:
        self._post(self._loss, why, restarted)

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:          # the loop is closed: the server is stopping
            pass

    # ---------------------------------------------------------- loop thread
    def _seed(self, events: List[Dict[str, Any]]) -> None:
        for event in events:
            self.latest.setdefault(event["name"], event)
            self._record(event)

    def _publish(self, event: Dict[str, Any]) -> None:
        self.latest[event["name"]] = event
        if not event.get("connected", True):
            self._was_down = True
        self._record(event)
        for sub in list(self.subscribers):
            sub.offer(event, self.snapshot)

    def _record(self, event: Dict[str, Any]) -> None:
        kw = self.keywords.get(event["name"])
        value = event.get("value")
        if kw is None or not is_numeric(kw) or value is None or event.get("timestamp") is None:
            return
        try:
            number = float(value)
        except (TypeError, ValueError):
            return
        series = self.history.setdefault(kw.name, collections.deque(maxlen=HISTORY))
        stamp = float(event["timestamp"])
        if series and series[-1][0] == stamp:
            return
        series.append((stamp, number))

    def _loss(self, why: str, restarted: bool) -> None:
        """Tell subscribers of a loss, then re-read everything.

        Even a re-sync that is no news by itself (a re-connection the client
        did not see as a restart) is followed by a re-read: the values show
        a restart the heartbeats could not (see _reread_done).
        """
        kind = loss_kind(why, restarted, self._was_down)
        if kind is not None:
            self._was_down = False
            event = {"type": kind, "reason": why, "time": time.time()}
            for sub in list(self.subscribers):
                sub.offer(event, self.snapshot)
        before = dict(self.latest)
        self.loop.run_in_executor(None, self.reread, before, kind == "restart")

    def _reread_done(self, events: List[Dict[str, Any]], before: Dict[str, Dict[str, Any]],
                     told_restart: bool) -> None:
        """Publish re-read values; first a restart the client could not see, if they show one.

        The client learns of a restart from heartbeats, so it misses one when
        it never heard the first incarnation's; the values tell anyway.
        """
        if not told_restart and any(renumbered(before.get(e["name"]), e) for e in events):
            event = {"type": "restart", "reason": "the dispatcher restarted: its sequence "
                     "numbers started again", "time": time.time()}
            for sub in list(self.subscribers):
                sub.offer(event, self.snapshot)
        for event in events:
            self._publish(event)

    def snapshot(self) -> List[Dict[str, Any]]:
        """The latest value event of every keyword."""
        return [self.latest[name] for name in sorted(self.latest)]

    def queue_size(self) -> int:
        return max(QUEUE_MIN, 2 * len(self.keywords) + 8)

    def subscribe(self) -> Subscriber:
        """A new events subscriber, its queue starting with the current value of each keyword."""
        sub = Subscriber(self.queue_size())
        for event in self.snapshot():
            sub.queue.put_nowait(event)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)


def renumbered(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> bool:
    """Whether ``new`` comes from another incarnation of the dispatcher than ``old``.

    A dispatcher never gives one sequence number to two changes, and its
    sequence numbers start again when it restarts.
    """
    if old is None or old.get("seq") is None or new.get("seq") is None:
        return False
    if new["seq"] < old["seq"]:
        return True
    return new["seq"] == old["seq"] and new.get("timestamp") != old.get("timestamp")


def loss_kind(why: str, restarted: bool, was_down: bool) -> Optional[str]:
    """What a re-sync of the client tells a subscriber: "restart", "gap" or nothing.

    A re-sync on (re)connecting is news only after the dispatcher was seen down:
    the first connection loses nothing a subscriber had.
    """
    if restarted:
        return "restart"
    if why.startswith("lost broadcasts") or was_down:
        return "gap"
    return None


class Gateway:
    """Every service the router knows, opened on first use and kept monitored.

    Coroutines run on the loop; blocking client calls go to executor threads.
    """

    def __init__(self, config: Config, allow_writes: bool = False) -> None:
        self.config = config
        self.allow_writes = allow_writes
        self.views: Dict[str, ServiceView] = {}
        self._opening: Dict[str, "asyncio.Future[ServiceView]"] = {}
        self.stopping = False          # set when the server starts shutting down

    # ------------------------------------------------------------ the book
    async def book(self) -> Dict[str, Any]:
        """The router's book, grouped by service."""
        listing = await self._run(self._list)
        entries = [e for e in listing.get("entries") or () if isinstance(e, dict)]
        services: Dict[str, List[Dict[str, Any]]] = {}
        for e in entries:
            services.setdefault(str(e.get("service")), []).append({
                "name": e.get("dispatcher"), "state": e.get("state"), "host": e.get("host"),
                "dispatch_port": e.get("dispatch_port"),
                "broadcast_port": e.get("broadcast_port"),
                "heartbeat_age": e.get("age")})
        return {"router": {"address": self.config.router_address(), "state": "live"},
                "services": [{"name": name, "dispatchers": services[name]}
                             for name in sorted(services)]}

    def _list(self) -> Dict[str, Any]:
        """The router's ``list``, on a socket made, used and closed in this thread."""
        from ..router import RouterClient
        with RouterClient(self.config) as client:
            return client.list()

    # ------------------------------------------------------------ services
    async def view(self, name: str) -> ServiceView:
        """The ServiceView of ``name`` (case-insensitive), opened on first use."""
        key = name.strip().lower()
        if not key:
            raise GatewayError(protocol.E_NOT_FOUND, "no service name given")
        view = self.views.get(key)
        if view is not None:
            return view
        opening = self._opening.get(key)       # one opening per service, however many ask
        if opening is None:
            opening = asyncio.ensure_future(self._open(key))
            self._opening[key] = opening
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(opening)    # a client going away does not cancel it

    async def _open(self, key: str) -> ServiceView:
        from ..ktl import Service
        loop = asyncio.get_running_loop()
        try:
            svc = await self._run(lambda: Service(key, populate=True, config=self.config))
        except TimeoutError as exc:
            raise GatewayError(E_DOWN, f"service {key!r}: its dispatcher does not answer "
                                       f"({exc})") from None
        view = ServiceView(svc, loop)
        try:
            await self._run(view.start)
        except BaseException:
            await self._run(svc.shutdown)
            raise
        self.views[key] = view
        return view

    async def keyword(self, service: str, keyword: str) -> Tuple[ServiceView, Any]:
        view = await self.view(service)
        name = keyword.strip().upper()
        kw = view.keywords.get(name)
        if kw is None:
            from ..client import unknown_keyword_message
            raise GatewayError(protocol.E_UNKNOWN_KEYWORD, unknown_keyword_message(
                view.name, name, list(view.keywords)))
        return view, kw

    async def describe_service(self, service: str) -> Dict[str, Any]:
        view = await self.view(service)
        keywords = []
        for name in sorted(view.keywords):
            kw = view.keywords[name]
            item = describe_keyword(kw)
            event = view.latest.get(name) or value_event(kw)
            item.update({k: event.get(k) for k in ("value", "ascii", "timestamp", "seq",
                                                   "connected")})
            if item["numeric"]:
                item["history"] = [list(p) for p in view.history.get(name, ())]
            keywords.append(item)
        return {"name": view.name, "allow_writes": self.allow_writes,
                "subscribers": len(view.subscribers),
                "alive": all(k["connected"] for k in keywords) if keywords else False,
                "keywords": keywords}

    async def read(self, service: str, keyword: str) -> Dict[str, Any]:
        """Read from the dispatcher (its read hooks run), as the API returns it."""
        view, kw = await self.keyword(service, keyword)
        if not kw["reads"]:
            raise GatewayError(protocol.E_WRITE_ONLY, f"{kw.full_name} is write-only")
        self._check_up(kw)
        native, text = await self._run(lambda: kw.read(both=True))
        return self._value_reply(kw, native, text)

    async def write(self, service: str, keyword: str, body: Any) -> Dict[str, Any]:
        """Write ``{"value": native}`` or ``{"ascii": text}``; the value as applied."""
        view, kw = await self.keyword(service, keyword)      # 404 before 403 before 400
        if not self.allow_writes:
            raise GatewayError(E_WRITES_DISABLED, "writes are not enabled on this gateway "
                                                  "(start it with --allow-writes)")
        if not kw["writes"]:
            raise GatewayError(protocol.E_READ_ONLY, f"{kw.full_name} is read-only")
        value = write_argument(body)
        self._check_up(kw)
        text = await self._run(lambda: kw.write(value))
        state = kw._view()
        native = state.value if state.ascii == text else kw.cast(text)
        return self._value_reply(kw, native, text)

    @staticmethod
    def _check_up(kw: Any) -> None:
        if not kw.connected:
            raise GatewayError(E_DOWN, f"{kw.full_name}: its dispatcher is down "
                                       f"(nothing heard within [zmq] liveness)")

    @staticmethod
    def _value_reply(kw: Any, native: Any, text: Optional[str]) -> Dict[str, Any]:
        return {"name": kw.name, "value": jsonable(kw, native), "ascii": text,
                "timestamp": kw.timestamp, "type": kw["type"], "units": kw.units}

    # ----------------------------------------------------------- plumbing
    async def _run(self, fn: Callable[[], Any]) -> Any:
        """A blocking client call on an executor thread; client errors as GatewayError."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, fn)
        except GatewayError:
            raise
        except (CauldronError, ValueError, TypeError, KeyError) as exc:
            raise error_for(exc) from None

    def close(self) -> None:
        """Shut every Service down (blocking)."""
        views, self.views = list(self.views.values()), {}
        for view in views:
            view.svc.shutdown(timeout=2.0)


def write_argument(body: Any) -> Any:
    """The value to write from a PUT body: ``{"value": native}`` or ``{"ascii": "text"}``."""
    if not isinstance(body, dict) or ("value" in body) == ("ascii" in body):
        raise GatewayError(protocol.E_REQUEST, 'the body must be a JSON object with either '
                                               '"value" (native) or "ascii" (text)')
    if "ascii" in body:
        if not isinstance(body["ascii"], str):
            raise GatewayError(protocol.E_REQUEST, '"ascii" must be a string')
        return body["ascii"]
    value = body["value"]
    if value is None:
        raise GatewayError(protocol.E_INVALID, "cannot write null")
    if isinstance(value, (dict,)):
        raise GatewayError(protocol.E_INVALID, "a value is a number, a string, a boolean "
                                               "or a list, not an object")
    if isinstance(value, list):      # an array, as its ascii form (the dispatcher parses it)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            raise GatewayError(protocol.E_INVALID, "an array value is a list of numbers")
        return " ".join(repr(x) for x in value)
    return value
