"""A connection to every dispatcher of a KTL service (``ktl.Service``)."""
from __future__ import annotations

import difflib
import logging
import math
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .. import protocol
from ..config import Config, load_config
from ..errors import (
    AuthenticationError,
    CauldronError,
    DispatcherDown,
    ProtocolError,
    RouterError,
    ServiceNotFound,
    TimeoutError,
)
from ..names import check_name, split_entries
from ..protocol.backoff import LOOKUP
from .engine import _Engine, unknown_keyword_message
from .keyword import Keyword
from .task import (
    _LAST_TRY,
    ServiceShutDown,
    UnknownKeyword,
    _bounded,
    _left,
    _scope,
    deadline,
)

# =============================================================================
# Service
# =============================================================================

_services: "weakref.WeakSet[Service]" = weakref.WeakSet()


class Service:
    """A connection to every dispatcher of a KTL service.

    ``Service(name)`` asks the router where the service's dispatchers listen
    (or, with ``[zmq-router] enable = false``, uses the ``[zmq]`` ports),
    connects to each and learns which keywords each owns.  ``timeout`` (s)
    is the default for every call (default ``[zmq] timeout``); ``wait`` (s)
    keeps retrying, on the back-off schedule, for a service that is not up
    yet.  Safe to share between threads.  Call :meth:`shutdown` (or use
    ``with``) when done; interpreter exit also shuts it down.
    """

    def __init__(self, name: str, populate: bool = False,
                 config: Union[str, "os.PathLike[str]", Config, None] = None,
                 timeout: Optional[float] = None, wait: Optional[float] = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"a service name is a non-empty str, not {name!r}")
        self.name = check_name("service", name.strip().lower())   # ValueError: not a name
        self.config = load_config(config)
        self.timeout = float(timeout) if timeout is not None else self.config.zmq.timeout / 1000.0
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.log = logging.getLogger(f"cauldron_zmq.client.{self.name}")
        self._explicit_timeout = timeout is not None
        self._keywords: Dict[str, Keyword] = {}
        self._lock = threading.RLock()
        self._engine: Optional[_Engine] = _Engine(self.name, self.config, self.timeout, self.log)
        self._engine.start()
        try:
            # One deadline for the whole constructor: ``wait`` if given, else the timeout.
            with deadline(float(wait) if wait else self.timeout):
                self._connect(wait)
                if populate:
                    self._populate()
        except BaseException:
            self.shutdown()
            raise
        _services.add(self)

    # ------------------------------------------------------------- connect
    def _connect(self, wait: Optional[float]) -> None:
        """Look up and connect; with ``wait``, retry until the constructor's deadline."""
        end = getattr(_scope, "end", None) or math.inf
        start, attempt = time.monotonic(), 0
        while True:
            try:
                self._connect_once()
                return
            except (ServiceNotFound, TimeoutError) as exc:
                attempt += 1
                now = time.monotonic()
                # the last attempt comes just before the end, not after it
                next_at = min(start + LOOKUP.time_of(attempt), end - _LAST_TRY)
                if not wait or now >= end - _LAST_TRY:
                    hint = self._service_hint() if isinstance(exc, ServiceNotFound) else ""
                    if wait:
                        hint += f" (still, after {now - start:.1f} s of waiting up to " \
                                f"{float(wait):g} s)"
                    if not hint:
                        raise
                    again = type(exc)(f"{exc}{hint}")
                    again._waited = bool(wait)   # type: ignore[attr-defined]
                    raise again from None
                self.log.debug("%s; retrying", exc)
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _connect_once(self) -> None:
        engine = self._engine_or_raise()
        entries = self._lookup() if self.config.router.enable else [self._static_entry()]
        keys = engine.call(lambda: engine.io_add_links(entries))
        tasks = {key: engine.submit("list", link=key, description=f"{self.name}: list",
                                    timeout=_bounded(self.timeout, f"{self.name}: list"))
                 for key in keys}
        errors = []
        for key, task in tasks.items():
            try:
                result = task.get()
            except CauldronError as exc:
                errors.append(exc)
                continue
            engine.call(lambda k=key, r=result: engine.io_listed(k, r))
        refused = [exc for exc in errors if isinstance(exc, AuthenticationError)]
        if errors and len(errors) == len(tasks) and (not engine.names or refused):
            raise (refused or errors)[0]
        if errors and _left() < 0.05:       # no time left for anything else: say why
            raise errors[0]
        for exc in errors:
            self.log.warning("%s; using the router's keyword list for it", exc)

    def _static_entry(self) -> Dict[str, Any]:
        z = self.config.zmq
        return {"dispatcher": "", "host": z.host, "protocol": z.protocol,
                "dispatch_port": z.dispatch_port, "broadcast_port": z.broadcast_port}

    def _lookup(self) -> List[Dict[str, Any]]:
        engine = self._engine_or_raise()
        what = f"looking up service {self.name!r}"
        timeout = self.timeout if self._explicit_timeout else engine.router_timeout
        task = engine.router_request("lookup", self.name, timeout=_bounded(timeout, what),
                                     description=what)
        try:
            result = task.get()
        except RouterError as exc:
            if exc.code == protocol.E_NOT_FOUND:
                raise ServiceNotFound(f"service {self.name!r} is not known to "
                                      f"{engine.router_where}") from None
            raise
        raw = result.get("dispatchers") if isinstance(result, dict) else None
        entries, problems = split_entries(raw or [])
        for problem in problems:
            self.log.info("service %r: ignoring a bad look-up entry: %s", self.name, problem)
        if problems and not entries:
            raise ProtocolError(protocol.E_REQUEST, (
                f"service {self.name!r}: {engine.router_where} lists no "
                f"usable dispatcher ({'; '.join(problems[:3])})"))
        if not entries:
            raise ServiceNotFound(f"service {self.name!r}: {engine.router_where} "
                                  f"lists no dispatcher for it")
        return entries

    def _book(self) -> List[Dict[str, Any]]:
        """The router's book entries (every service, down ones too); [] if it cannot tell."""
        engine = self._engine_or_raise()
        if not self.config.router.enable:
            return []
        try:
            task = engine.router_request("list", timeout=_bounded(engine.router_timeout),
                                         description="listing the router's book")
            book = task.get()
        except CauldronError as exc:
            self.log.debug("cannot list the router's book: %s", exc)
            return []
        entries = book.get("entries") if isinstance(book, dict) else None
        return [e for e in entries or () if isinstance(e, dict)]

    def _service_hint(self) -> str:
        """'; did you mean 'focus'?' from the services the router knows."""
        if _left() < 0.05:
            return ""
        names = {str(e.get("service") or "") for e in self._book()}
        close = difflib.get_close_matches(self.name, sorted(n for n in names if n), 3, 0.6)
        return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

    def _down_error(self, name: str) -> Optional[DispatcherDown]:
        """The error for a keyword whose dispatcher is down (the router's book says)."""
        for entry in self._book():
            if str(entry.get("service") or "").lower() != self.name or \
                    name not in {str(k).upper() for k in entry.get("keywords") or ()}:
                continue
            state = str(entry.get("state") or "")
            if state == "live":
                return None
            age = entry.get("age")
            heard = f"last heard {age:.0f} s ago" if isinstance(age, (int, float)) else state
            return DispatcherDown(f"{self.name}.{name} is served by dispatcher "
                                  f"{entry.get('dispatcher')!r}, which is down ({heard})")
        return None

    def _silent_error(self, name: str) -> Optional[DispatcherDown]:
        """The error for a keyword whose dispatcher this client knows is silent."""
        engine = self._engine_or_raise()

        def state() -> Optional[Tuple[str, bool, bool, float]]:
            link = engine.owner.get(name)
            if link is None:
                return None
            return (link.name, link.alive, link.started is not None,
                    time.monotonic() - link.last_heard)
        try:
            found = engine.call(state, timeout=1.0)
        except CauldronError:
            return None
        if found is None or found[1]:
            return None
        who, _alive, heard, ago = found
        how = (f"which is down (last heard {ago:.0f} s ago)" if heard else
               f"which has not answered since this client connected ({ago:.0f} s ago)")
        return DispatcherDown(f"{self.name}.{name} is served by dispatcher {who!r}, {how}")

    def _populate(self) -> None:
        """Create every Keyword in one describe round trip per dispatcher."""
        engine = self._engine_or_raise()
        keys = sorted(set(engine.names.values()))
        tasks = [engine.submit("describe", "", link=key, description=f"{self.name}: describe",
                               timeout=_bounded(self.timeout, f"{self.name}: describe"))
                 for key in keys]
        for task in tasks:
            result = task.get() or {}
            for name, desc in (result.get("keywords") or {}).items():
                if isinstance(desc, dict):
                    self._adopt(str(name).upper(), desc)

    def _engine_or_raise(self) -> _Engine:
        engine = self._engine
        if engine is None:
            raise ServiceShutDown(f"service {self.name!r} is shut down")
        return engine

    # ------------------------------------------------------------ keywords
    def __getitem__(self, name: str) -> Keyword:
        if not isinstance(name, str):
            raise TypeError(f"a keyword name is a str, not {type(name).__name__}")
        upper = name.strip().upper()
        with self._lock:
            kw = self._keywords.get(upper)
        if kw is not None:
            return kw
        if not self.has_keyword(upper):
            raise self._down_error(upper) or UnknownKeyword(
                unknown_keyword_message(self.name, upper, self.keywords()))
        what = f"{self.name}.{upper}: describe"
        try:
            desc, raw = self._engine_or_raise().submit(
                "describe", upper, on_reply=lambda r: (r.payload, r.raw), description=what,
                timeout=_bounded(self.timeout, what)).get()
        except TimeoutError:
            down = self._silent_error(upper) or (
                None if _left() < 0.05 else self._down_error(upper))
            if down is not None:
                raise down from None
            raise
        return self._adopt(upper, desc if isinstance(desc, dict) else {}, raw)

    def _adopt(self, name: str, desc: Dict[str, Any], raw: Optional[bytes] = None) -> Keyword:
        with self._lock:
            kw = self._keywords.get(name)
            if kw is not None:
                return kw
            kw = Keyword(self, name, desc, raw)
            self._keywords[name] = kw
        engine = self._engine_or_raise()
        engine.call(lambda: engine.io_register(kw))
        return kw

    def has_keyword(self, name: str) -> bool:
        return isinstance(name, str) and name.strip().upper() in self._engine_or_raise().names

    has_key = has_keyword

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has_keyword(name)

    def keywords(self) -> List[str]:
        """Every keyword name of the service, sorted."""
        return sorted(self._engine_or_raise().names)

    def populated(self) -> List[str]:
        """Names of the Keyword objects created so far (no I/O)."""
        with self._lock:
            return sorted(self._keywords)

    def __iter__(self):  # type: ignore[no-untyped-def]
        """The Keyword objects created so far."""
        with self._lock:
            return iter(list(self._keywords.values()))

    def read(self, keyword: str, *args: Any, **kwargs: Any) -> Any:
        """``self[keyword].read(...)``: describe and read within the one timeout."""
        timeout = kwargs.get("timeout")
        with deadline(float(timeout) if timeout is not None else self.timeout):
            return self[keyword].read(*args, **kwargs)

    def write(self, keyword: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        """``self[keyword].write(...)``; an explicit ``timeout`` bounds describe and write."""
        timeout = kwargs.get("timeout")
        if timeout is None:
            return self[keyword].write(value, *args, **kwargs)
        with deadline(float(timeout)):
            return self[keyword].write(value, *args, **kwargs)

    def isAlive(self) -> bool:  # noqa: N802 - KTL's name
        """True if every dispatcher of the service was heard from within liveness."""
        return self._engine_or_raise().is_alive()

    def dispatchers(self) -> List[Dict[str, Any]]:
        """Name, address and liveness of each dispatcher (for tools and logs)."""
        engine = self._engine_or_raise()
        return engine.call(lambda: [
            {"dispatcher": link.name, "address": link.dispatch_address,
             "broadcast": link.broadcast_address, "alive": link.alive,
             "in_sync": link.repair.in_sync(),     # every re-read owed has answered
             "keywords": len(link.keywords)} for link in engine.links.values()])

    def add_loss_listener(self, listener: Callable[[str, bool], Any]) -> None:
        """Call ``listener(why, restarted)`` whenever the client re-syncs after a possible loss.

        For gateways that must not hide loss from their own subscribers: it
        runs on the callback thread, before the callbacks of the values the
        client re-reads.  ``restarted`` is True for a dispatcher restart;
        ``why`` says what was noticed ("lost broadcasts (...)", "broadcast
        socket connected", ...).
        """
        if not callable(listener):
            raise TypeError(f"loss listener {listener!r} is not callable")
        engine = self._engine_or_raise()
        engine.post(lambda: engine.loss_listeners.append(listener))

    # ------------------------------------------------------------ lifecycle
    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop this Service's threads and close its sockets.  Idempotent."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop(timeout)
            with self._lock:
                keywords = list(self._keywords.values())
            for kw in keywords:
                kw._wake_waiters()

    @property
    def closed(self) -> bool:
        return self._engine is None

    def __enter__(self) -> "Service":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "shut down" if self._engine is None else f"{len(self.keywords())} keywords"
        return f"<cauldron_zmq.ktl.Service {self.name!r} {state}>"


def shutdown_all() -> None:
    """Shut down every Service still running (registered with atexit)."""
    for svc in list(_services):
        try:
            svc.shutdown(timeout=1.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


import atexit  # noqa: E402 - kept next to its one use

atexit.register(shutdown_all)
