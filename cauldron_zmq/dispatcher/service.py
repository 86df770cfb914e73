"""The dispatcher: a keyword service that instrument code embeds (DFW's ``Service``).

Threads, and why there are several (one socket belongs to one thread):

* the **I/O thread** owns the ROUTER (requests) and the PUB (broadcasts).  It
  answers requests that run no instrument code itself (the fast path), and
  sends every reply and broadcast that other threads hand it through a
  ``queue.SimpleQueue`` plus one byte on a wake-up pipe;
* **workers** (:class:`~cauldron_zmq.workers.KeyedExecutor`) run user hooks,
  one FIFO queue per keyword, so a 30-second ``write`` only holds up writes
  to that keyword;
* the **scheduler** hands periodic and scheduled updates to those queues;
* the **registrar** owns a client per router (``[zmq-router] replicas``):
  heartbeats to every router, re-registration after a router restart, a
  replacement router when none answers, and the final ``unregister``;
* the **persister** saves persisted values off every other thread.

``docs/dispatcher.rst`` describes the behaviour; ``docs/protocol.rst`` the wire.
"""
from __future__ import annotations

import atexit
import difflib
import errno
import logging
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import zmq

from .. import __version__, protocol
from ..config import Config, endpoint, load_config
from ..errors import CauldronError, NoWriteNecessary, RouterError, TimeoutError
from ..keywords import VALUE_MODES, DuplicateKeyword, Keyword, Snapshot
from ..limits import raise_file_limit
from ..names import check_name
from ..persist import Persister, legacy_persist_path, persist_path
from ..security import frame_property, server_security
from ..workers import KeyedExecutor, QueueFull, RepeatLog, Scheduler

__all__ = ["Service", "DEFAULT_DISPATCHER", "BindError", "ServiceLog", "AlreadyServed"]

DEFAULT_DISPATCHER = "default"
MAX_BIND_ATTEMPTS = 5          # re-registrations with "avoid" before giving up
SPAWN_WAIT = 10.0              # seconds a spawned router has to answer
PROBE_MS = 1000                # how long a port we cannot bind has to answer 'identify'
SHUTDOWN_GRACE = 5.0           # seconds shutdown() waits for running hooks
LINGER_MS = 100                # lets final replies and broadcasts leave on close
BATCH = 256                    # requests handled between two looks at the queues
MAX_WORKERS = 32
WORKER_IDLE = 5.0
MAX_QUEUED = 10_000            # replies and broadcasts queued for the I/O thread before set() waits

_REPLY, _BROADCAST = 0, 1

# Plain ints: pyzmq's enum flags cost an enum construction per frame and
# operation, which shows in the fast path's latency.
_NB = int(zmq.NOBLOCK)
_NB_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

PathLike = Union[str, "os.PathLike[str]"]
ConfigArg = Union[PathLike, Config, None]


class BindError(CauldronError, OSError):
    """A port could not be bound; ``port`` and ``errno`` say which and why."""

    def __init__(self, port: int, address: str, exc: zmq.ZMQError) -> None:
        super().__init__(exc.errno, f"cannot bind {address}: {exc.strerror}")
        self.port = port
        self.address = address

    def __str__(self) -> str:
        return str(self.args[1])


class AlreadyServed(CauldronError):
    """Another live process already serves this (service, dispatcher): a second
    copy is refused rather than splitting the service in two."""


class _Box:
    """A one-shot result handed between two threads."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def finish(self, error: Optional[BaseException] = None) -> None:
        self.error = error
        self.done.set()


class ServiceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The service's logger (``service.log.info(...)``), also callable as KTL's
    ``service.log(level, message, *args)``, which KTL dispatchers call."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})

    def __call__(self, level: Union[int, str], message: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(level, str):
            number = logging.getLevelName(level.strip().upper())
            level = number if isinstance(number, int) else logging.INFO
        self.log(level, message, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> Any:
        return msg, kwargs          # no adapter "extra": the caller's, if any, stays


# =============================================================================
# The service
# =============================================================================

class Service:
    """A keyword service (the native API): create it, add keywords, ``begin()``, ``shutdown()``.

    ``config`` is a path, a :class:`~cauldron_zmq.config.Config` or None
    (``$CAULDRON_ZMQ_CONFIG`` or defaults); it belongs to this object only.
    ``setup(service)`` creates keywords in code; ``keywords`` names TOML
    keyword files (one path or several; loaded first, so ``setup`` can attach
    hooks to their keywords; KTL XML among them is taken as ``xml``).
    ``dispatcher`` names this dispatcher when several serve one service
    (default ``"default"``).

    ``values`` is the value mode of every keyword of the service: ``"native"``
    (typed values; this class's default) or ``"ascii"`` (KTL's strings;
    :class:`cauldron_zmq.DFW.Service`'s default); see :mod:`cauldron_zmq.keywords`.

    ``xml`` names KTL XML bundles (files or directories); without it the
    bundles are looked for in ``[zmq] xml-dir``, else in
    ``$RELDIR/data/<service>/``.  Keywords created in ``setup`` take what
    the code leaves unsaid from their declaration, and declared keywords the
    code does not create are served as plain keywords (:attr:`declarations`).

    This class does not begin serving when constructed: call :meth:`begin`,
    use ``with``, or :meth:`serve_forever`.  ``DFW.Service`` does, as KTL's.
    """

    def __init__(self, name: str, config: ConfigArg = None,
                 setup: Optional[Callable[["Service"], Any]] = None,
                 dispatcher: Optional[str] = None,
                 keywords: Union[PathLike, Sequence[PathLike], None] = None, *,
                 values: str = "native",
                 xml: Union[PathLike, Sequence[PathLike], None] = None) -> None:
        self.name = _service_name(name)
        self.config: Config = load_config(config)
        self.dispatcher = _dispatcher_name(dispatcher)
        self.log = ServiceLog(logging.getLogger(f"cauldron_zmq.dispatcher.{self.name}"))
        if values not in VALUE_MODES:
            raise ValueError(f"values must be one of {', '.join(map(repr, VALUE_MODES))}, "
                             f"got {values!r}")
        #: The value mode of every keyword of this service: "ascii" or "native".
        self.values: str = values
        self.status_keyword: Optional[Keyword] = None
        self.started: Optional[float] = None
        self._keywords: Dict[str, Keyword] = {}
        self._keywords_lock = threading.Lock()
        self._outgoing: "queue.SimpleQueue[Tuple[Any, ...]]" = queue.SimpleQueue()
        self._lifecycle = threading.Lock()
        self._state = "new"
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        prefix = f"cauldron-{self.name}-{self.dispatcher}"
        self._executor = KeyedExecutor(prefix, max_workers=MAX_WORKERS,
                                       idle_timeout=WORKER_IDLE, log=self.log)
        self._scheduler = Scheduler(prefix, self._executor, log=self.log)
        self._context: Optional[zmq.Context] = None
        self._io: Optional[_IOThread] = None
        self._registrar: Optional[_Registrar] = None
        self._persister: Optional[Persister] = None
        self._restored: Dict[str, Any] = {}
        self._own_router: Any = None
        self._ports: Optional[Tuple[int, int]] = None
        self._security: Any = None       # security.ServerSecurity with [zmq-security] enable
        self._auth: Any = None           # its ZAP authenticator (a thread of its own)
        self._endpoints: Optional[Tuple[str, str]] = None
        from ..ktlxml import is_bundle_path
        files = _paths(keywords) if keywords is not None else []
        bundles = [path for path in files if is_bundle_path(path)]
        if bundles:                     # KTL XML among the keyword files
            xml = _paths(xml) + bundles if xml is not None else bundles
        #: KTL XML declarations by keyword name (empty without XML).
        self.declarations: Dict[str, Any] = self._find_declarations(xml)
        if files:
            from ..keywordfile import load_keywords
            for path in files:
                if path not in bundles:
                    load_keywords(self, path)
        if setup is not None:
            setup(self)
        self._serve_declared()

    def _find_declarations(self, xml: Union[PathLike, Sequence[PathLike], None]) -> Dict[str, Any]:
        """The XML declarations: ``xml``, else ``[zmq] xml-dir``, else ``$RELDIR/data/<svc>``."""
        from .. import ktlxml
        if xml is not None:
            sources = _paths(xml)
        elif self.config.zmq.xml_dir is not None:
            sources = [self.config.zmq.xml_dir]
        else:
            found = ktlxml.service_directory(self.name)
            sources = [found] if found else []
        declarations = ktlxml.load_declarations(sources, self.name) if sources else {}
        if declarations:
            self.log.info("%d keyword(s) declared in KTL XML (%s)", len(declarations),
                          ", ".join(os.fspath(p) for p in sources))
        return declarations

    def _serve_declared(self) -> None:
        """Keywords declared in XML but not created in code: plain keywords of their type.

        When bundles name dispatchers (``<dispatcher><name>``) and one of
        them is this dispatcher, only its bundles' keywords are added: the
        others belong to the service's other dispatchers.
        """
        from ..keywords import keyword_class
        mine = [d for d in self.declarations.values() if d.dispatcher == self.dispatcher]
        for declaration in mine or list(self.declarations.values()):
            if declaration.name not in self._keywords:
                keyword_class(declaration.type)(declaration.name, self)

    # ------------------------------------------------------- DFW container

    def __getitem__(self, name: str) -> Keyword:
        key = name.upper() if isinstance(name, str) else name
        try:
            return self._keywords[key]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def __setitem__(self, name: str, keyword: Keyword) -> None:
        if not isinstance(keyword, Keyword):
            raise TypeError(f"{self.name}: only Keyword objects can be stored, got {keyword!r}")
        if name.upper() != keyword.name:
            raise ValueError(f"{self.name}: keyword {keyword.name} stored under {name!r}")
        if self._keywords.get(keyword.name) is not keyword:
            self._attach(keyword)       # a different keyword of that name: DuplicateKeyword

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.upper() in self._keywords

    def __iter__(self) -> Iterator[Keyword]:
        return iter([self._keywords[name] for name in self.keywords()])

    def __len__(self) -> int:
        return len(self._keywords)

    def __repr__(self) -> str:
        return f"<Service {self.name}/{self.dispatcher} {self._state}, {len(self)} keywords>"

    def keywords(self) -> List[str]:
        """Sorted keyword names."""
        return sorted(self._keywords)

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def _unknown(self, name: Any) -> str:
        close = difflib.get_close_matches(str(name).upper(), list(self._keywords), n=3,
                                          cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"service {self.name!r} (dispatcher {self.dispatcher!r}) has no keyword {name!r}{hint}"

    def _attach(self, keyword: Keyword) -> None:
        """Called by Keyword.__init__; a duplicate name is a DuplicateKeyword (RuntimeError)."""
        mode = getattr(keyword, "values", self.values)
        if mode != self.values:        # one service never mixes the two meanings
            raise ValueError(f"keyword {keyword.name} gives {mode} values; service "
                             f"{self.name!r} gives {self.values} values")
        with self._keywords_lock:
            if keyword.name in self._keywords:
                raise DuplicateKeyword(f"keyword named {keyword.name} already exists in "
                                       f"service {self.name!r}")
            self._keywords[keyword.name] = keyword
        if self._state == "running":
            self._apply_initial([keyword])
            if self._registrar is not None:
                self._registrar.request_registration()

    def setStatusKeyword(self, keyword: Union[Keyword, str, None]) -> bool:  # noqa: N802 - DFW
        """Record the service's status keyword; False if it is unchanged."""
        if isinstance(keyword, str):
            keyword = self[keyword]
        if keyword is self.status_keyword:
            return False
        self.status_keyword = keyword
        return True

    def broadcast(self) -> None:
        """Re-broadcast every keyword that has a value (same seq, new gseq)."""
        for keyword in self:
            with keyword._lock:
                snap = keyword._snap
                if snap.seq:
                    self._outgoing.put((_BROADCAST, keyword, snap))
        self._wake()

    @property
    def address(self) -> Optional[Dict[str, Any]]:
        """Where this dispatcher listens (None before begin)."""
        if self._ports is None:
            return None
        zcfg = self.config.zmq
        dport, bport = self._ports
        return {"host": _advertised_host(zcfg.host), "protocol": zcfg.protocol,
                "dispatch_port": dport, "broadcast_port": bport,
                "dispatch": endpoint(zcfg.protocol, zcfg.host, dport, bind=False),
                "broadcast": endpoint(zcfg.protocol, zcfg.host, bport, bind=False)}

    @property
    def bound_endpoints(self) -> Optional[Tuple[str, str]]:
        """The (ROUTER, PUB) endpoints actually bound (ZMQ_LAST_ENDPOINT); None before begin."""
        return self._endpoints

    @property
    def running(self) -> bool:
        return self._state == "running"

    # ---------------------------------------------- called by Keyword.set()

    def _publish(self, keyword: Keyword, snap: Snapshot) -> None:
        """Queue a broadcast (called with the keyword's lock held, so seq order holds)."""
        if self._state in ("stopped",):
            return
        self._outgoing.put((_BROADCAST, keyword, snap))
        self._wake()

    def _wait_for_room(self) -> None:
        """Backpressure, called by Keyword.set() before it takes any lock.

        A producer calling set() faster than the I/O thread publishes (a tight
        loop easily is) would otherwise queue broadcasts without bound: some
        hundreds of MB within seconds.  While MAX_QUEUED messages wait, the
        caller waits on a condition the I/O thread notifies once fewer than
        half of them are left (never a polling loop).  Never on the I/O thread.
        """
        if self._outgoing.qsize() < MAX_QUEUED:
            return
        io = self._io
        if io is None or threading.get_ident() == io._ident:
            return
        io.wait_for_room(MAX_QUEUED // 2, lambda: self._state == "running")

    def _changed(self, keyword: Keyword, snap: Snapshot) -> None:
        persister = self._persister
        if keyword.persist and persister is not None:
            persister.note(keyword.name, _persistable(keyword, snap))

    def _send_reply(self, frames: List[Any], copy: bool = True) -> None:
        """Hand a reply (envelope included) to the I/O thread."""
        self._outgoing.put((_REPLY, frames, copy))
        self._wake()

    def _wake(self) -> None:
        io = self._io
        if io is not None:
            io.wake()

    # ----------------------------------------------------------- lifecycle

    def __enter__(self) -> "Service":
        return self.begin()

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()

    def begin(self) -> "Service":
        """Set initial values and start serving; registers with the router.

        Raises RouterError (``conflict``: a keyword owned by another
        dispatcher), TimeoutError (no router and no spawning allowed) or
        BindError.  A failed begin() leaves nothing running and may be retried.
        """
        with self._lifecycle:
            if self._state == "running":
                return self
            if self._state != "new":
                raise CauldronError(f"service {self.name!r} was shut down; create a new Service")
            try:
                self._begin()
            except BaseException:
                self._teardown(final=False)
                raise
            self._state = "running"
        _track(self)
        address = self.address or {}
        self.log.info("serving %s/%s: requests on %s, broadcasts on %s, %d keywords",
                      self.name, self.dispatcher, address.get("dispatch"),
                      address.get("broadcast"), len(self))
        return self

    def _begin(self) -> None:
        self.started = time.time()
        raise_file_limit()
        self._instance = secrets.token_hex(8)    # tells a restart from a second copy
        self._context = zmq.Context()
        self._security = server_security(self.config, "dispatcher")
        if self._security is not None:
            self._auth = self._security.start_authenticator(self._context)
        if any(kw.persist for kw in self._keywords.values()):
            where = (self.config.zmq.persist_dir, self.name, self.dispatcher)
            self._persister = Persister(persist_path(*where), self.log,
                                        legacy=legacy_persist_path(*where))
            self._restored = self._persister.load()
        self._apply_initial(list(self))
        self._io = _IOThread(self)
        self._io.start()
        if self.config.router.enable:
            self._registered_at: Set[str] = set()
            self._register_and_bind()
            self._registrar = _Registrar(self)
            self._registrar.start()
        else:
            zcfg = self.config.zmq
            self._io.bind((zcfg.dispatch_port, zcfg.broadcast_port))
        if self._persister is not None:
            self._persister.start(f"cauldron-{self.name}-{self.dispatcher}-persist")
        self._scheduler.start()

    def _apply_initial(self, keywords: Sequence[Keyword]) -> None:
        """Restored value, else ``initial``, for keywords that have no value yet."""
        for kw in keywords:
            if kw.seq == 0 and kw.persist and kw.name in self._restored:
                try:
                    kw.set(kw.type.from_wire(self._restored[kw.name]))
                except Exception as exc:  # noqa: BLE001
                    self.log.warning("%s: persisted value %r refused (%s); using the initial "
                                     "value", kw.full_name, self._restored[kw.name], exc)
            if kw.seq == 0 and kw.initial is not None:
                try:
                    kw.set(kw.initial)
                except Exception as exc:  # noqa: BLE001 - DFW logs a bad initial value
                    self.log.error("%s: bad initial value %r: %s", kw.full_name, kw.initial, exc)
            if kw.persist and kw.seq and self._persister is not None:
                self._persister.note(kw.name, _persistable(kw, kw._snap))

    def shutdown(self) -> None:
        """Stop serving: unregister, join threads, close sockets.  Idempotent.

        Hooks still running after SHUTDOWN_GRACE seconds are abandoned (their
        daemon threads finish on their own; their replies are dropped).
        """
        with self._lifecycle:
            state = self._state
            if state == "new":
                self._state = "stopped"
            elif state == "running":
                self._state = "stopping"
        if state != "running":
            if state == "stopping":      # another thread is shutting down: wait for it
                self._stopped.wait(SHUTDOWN_GRACE + 30)
            return
        self._stop_requested.set()
        try:
            self._teardown(final=True)
        finally:
            self._state = "stopped"
            self._stopped.set()
            _untrack(self)
            self.log.info("%s/%s stopped", self.name, self.dispatcher)

    def _teardown(self, final: bool) -> None:
        """Release everything begin() acquired (also after a failed begin)."""
        self._scheduler.stop()
        if final:
            stuck = self._executor.close(SHUTDOWN_GRACE)
            if stuck:
                self.log.warning("%d hook(s) still running after %.0f s; abandoning them",
                                 len(stuck), SHUTDOWN_GRACE)
        if self._registrar is not None:
            self._registrar.stop()
            self._registrar = None
        io, self._io = self._io, None
        io_stopped = True
        if io is not None:
            io_stopped = io.stop()
        if self._persister is not None:
            self._persister.close(flush=final)     # a failed begin() writes nothing
            if not final:
                self._persister = None
        if self._own_router is not None:
            router, self._own_router = self._own_router, None
            router.stop()
        if self._auth is not None:
            auth, self._auth = self._auth, None
            auth.stop()
        if self._context is not None:
            context, self._context = self._context, None
            if io_stopped:
                context.term()
            else:
                context.destroy(linger=0)
        self._ports = None

    def serve_forever(self, ready: Optional[Callable[["Service"], Any]] = None) -> None:
        """Begin (if needed) and serve until SIGTERM/SIGINT or shutdown(); then shut down.

        In the main thread SIGTERM and SIGINT handlers are installed for the
        duration (and the previous ones restored).  ``ready(service)`` is
        called once serving.  Returns after a clean shutdown.
        """
        previous: Dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, _frame: Any) -> None:
                self.log.info("%s received; shutting down", signal.Signals(signum).name)
                self._stop_requested.set()
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            self.begin()
            if ready is not None:
                ready(self)
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            try:
                self.shutdown()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    run = serve_forever

    # -------------------------------------------------------- registration

    def _registration_payload(self, prefer: Optional[Tuple[int, int]] = None,
                              avoid: Sequence[int] = (), ready: bool = True) -> Dict[str, Any]:
        payload: Dict[str, Any] = {"dispatcher": self.dispatcher,
                                   "host": _advertised_host(self.config.zmq.host),
                                   "keywords": self.keywords(), "pid": os.getpid(),
                                   "instance": self._instance}
        if not ready:
            payload["ready"] = False
        if prefer is not None:
            payload["prefer"] = list(prefer)
        if avoid:
            payload["avoid"] = sorted(avoid)
        return payload

    def _register(self, client: Any, prefer: Optional[Tuple[int, int]] = None,
                  avoid: Sequence[int] = (), ready: bool = True) -> Tuple[int, int]:
        payload = self._registration_payload(prefer, avoid, ready)
        if prefer is not None and len(client.addresses) > 1:
            payload["strict"] = True    # bound (or about to be): that pair or a conflict
        result = client.request("register", self.name, payload)
        self._held_by = result.get("held_by") if isinstance(result.get("held_by"), dict) \
            else None
        return int(result["dispatch_port"]), int(result["broadcast_port"])

    def _register_and_bind(self) -> None:
        """Reserve a pair (spawning a router if none answers), bind it, then register:
        look-ups never return a dispatcher that does not listen yet."""
        assert self._context is not None
        client = _Routers(self.config, self._context)
        try:
            ports = self._first_registration(client)
            try:
                self._bind_registered(client, ports, serving=False)
                self._announce(client)
            except BaseException:         # AlreadyServed, BindError...: leave no reservation
                self._withdraw(client)
                raise
        finally:
            client.close()

    def _announce(self, client: Any) -> None:
        """Bound: register for real (``ready``), keeping the pair we listen on.

        The routers that answered are remembered (``_registered_at``): the
        registrar registers with the others at once.
        """
        for attempt in range(MAX_BIND_ATTEMPTS):
            try:
                ports = self._register(client, prefer=self._ports)
            except TimeoutError:          # a router answered the reservation: a busy one
                if attempt == MAX_BIND_ATTEMPTS - 1:
                    raise
                continue
            if ports == self._ports:
                self._registered_at = client.accepted(ports)
                return
            self.log.warning("the router gave a new pair %d/%d; moving there", *ports)
            self._bind_registered(client, ports, serving=False)
        raise CauldronError(f"{self.name}/{self.dispatcher}: the router keeps moving us")

    def _withdraw(self, client: Any) -> None:
        """Take back our reservation (it is only ours if nobody else held the name)."""
        try:
            client.unregister(self.name, self.dispatcher, instance=self._instance)
        except CauldronError:
            pass

    def _first_registration(self, client: Any) -> Tuple[int, int]:
        # Without allow-spawn nothing else can help, so a router that is slow
        # for a moment (a loaded disk under its state file, a restart under
        # way) is asked again until [zmq] timeout has passed, not given up on
        # after one [zmq-router] timeout.
        started = time.monotonic()
        patience = 0.0 if self.config.router.allow_spawn else self.config.zmq.timeout / 1000
        while True:
            try:
                return self._register(client, ready=False)
            except TimeoutError:
                if time.monotonic() - started >= patience:
                    break
        address = self.config.router_address()
        if not self.config.router.allow_spawn:
            waited = time.monotonic() - started
            raise TimeoutError(
                f"{self.name}: no router answered at "
                f"{', '.join(self.config.router_addresses())} within {waited:.1f} s, "
                f"and [zmq-router] allow-spawn is false; "
                f"start one with 'Cauldron-router-zmq' or set allow-spawn = true")
        self.log.warning("no router answered at %s; starting one (%s mode)", address,
                         self.config.router.process)
        cleanup = self._spawn_router()
        try:
            return self._register_spawned(client, address)
        finally:
            cleanup()

    def _register_spawned(self, client: Any, address: str) -> Tuple[int, int]:
        """Register with the router we (or a concurrent dispatcher) just started."""
        deadline = time.monotonic() + SPAWN_WAIT
        while True:
            try:
                return self._register(client, ready=False)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name}: started a router at {address}, but it "
                                       f"did not answer within {SPAWN_WAIT:.0f} s") from None

    def _spawn_router(self) -> Callable[[], None]:
        """Start a router as configured; returns what to clean up after registering.

        A router that cannot bind because another one appeared meanwhile is
        not an error: registration is simply retried with whoever answers.
        """
        if self.config.router.process == "process":
            return _spawn_router_process(self.config, self.log)
        from ..router import Router, RouterStartError
        router = Router(self.config)
        try:
            router.start()
        except RouterStartError as exc:
            self.log.info("did not start a router (%s); another one may have appeared", exc)
            return lambda: None
        self._own_router = router
        return lambda: None

    def _bind_registered(self, client: Any, ports: Tuple[int, int],
                         serving: bool = True) -> None:
        """Bind the pair; when a foreign process holds a port, ask for another pair.

        Before we serve (``serving`` false), a port we cannot bind is first
        asked ``identify``: if a dispatcher of our own name answers, this is a
        second copy of a live dispatcher, refused with :class:`AlreadyServed`
        (nothing is blocked because of it).
        """
        assert self._io is not None
        avoid: Set[int] = set()
        for _attempt in range(MAX_BIND_ATTEMPTS):
            try:
                self._io.bind(ports)
                return
            except BindError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                if not serving:
                    self._refuse_second_copy(exc.port)
                self.log.warning("port %d is held by another process; asking the router for "
                                 "another pair", exc.port)
                avoid.add(exc.port)
                ports = self._register(client, avoid=sorted(avoid), ready=serving)
        raise BindError(ports[0], f"{self.name}/{self.dispatcher}", zmq.ZMQError(
            errno.EADDRINUSE, f"no bindable port pair after {MAX_BIND_ATTEMPTS} attempts; "
            f"ports held by other processes: {sorted(avoid)}"))

    def _refuse_second_copy(self, port: int) -> None:
        """Raise AlreadyServed when a dispatcher of our name answers on ``port``."""
        held = getattr(self, "_held_by", None) or {}
        host = str(held.get("host") or _advertised_host(self.config.zmq.host))
        who = _probe_identity(self._context, self.config, port)
        if who is None or who.get("service") != self.name or \
                who.get("dispatcher") != self.dispatcher:
            return
        raise AlreadyServed(f"{self.name}/{self.dispatcher} is already served by pid "
                            f"{who.get('pid')} on {host}")


# =============================================================================
# The I/O thread
# =============================================================================

class _IOThread:
    """Owns the ROUTER and PUB sockets; nothing else touches them.

    Other threads talk to it through ``service._outgoing`` (replies and
    broadcasts) and ``self._control`` (bind, stop), each followed by one
    byte on a non-blocking pipe that the poller watches.
    """

    def __init__(self, service: Service) -> None:
        self.svc = service
        self.log = service.log
        self.config = service.config
        self._control: "queue.SimpleQueue[Tuple[str, Any, _Box]]" = queue.SimpleQueue()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._pipe_lock = threading.Lock()
        self._pipe_open = True
        self._wake_pending = False
        self._router: Optional[zmq.Socket] = None
        self._pub: Optional[zmq.Socket] = None
        self._poller = zmq.Poller()
        self._gseq = 0
        self._topics: Dict[str, bytes] = {}      # keyword name -> its broadcast topic
        self._next_heartbeat: Optional[float] = None
        self._ident: Optional[int] = None
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"cauldron-{service.name}-{service.dispatcher}-io")
        self._max_size = self.config.zmq.max_message_size
        self._malformed = protocol.Throttle()     # a peer sending garbage must not flood the log
        self._oversize = protocol.Throttle()      # values too large to send, logged with restraint
        self.hook_errors = RepeatLog(self.log)    # a failing hook is logged once per minute
        self._room = threading.Condition()        # set() waits here while _outgoing is full
        self._room_waiters = 0
        self._client_key: Optional[str] = None    # who sent the request being handled (CURVE)
        self._handlers: Dict[str, Callable[[protocol.Request, List[bytes]], Optional[List[Any]]]] = {
            "read": self._on_read, "write": self._on_write, "list": self._on_list,
            "describe": self._on_describe, "identify": self._on_identify, "ping": self._on_ping,
        }

    # ---------------------------------------------------- other threads' API

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """One byte on the pipe; never blocks (a full pipe already means 'wake up').

        Skipped while a wake-up is already pending (written and not yet
        drained): a burst of set() calls then costs one write(2), not one per
        broadcast.  The I/O thread clears the flag before it drains the pipe
        and then empties the queues, so nothing queued before a skipped write
        is left behind.
        """
        if self._wake_pending or threading.get_ident() == self._ident:
            return
        self._wake_pending = True
        with self._pipe_lock:
            if self._pipe_open:
                try:
                    os.write(self._wfd, b"\0")
                except BlockingIOError:
                    pass

    def wait_for_room(self, low: int, running: Callable[[], bool]) -> None:
        """Block until fewer than ``low`` messages are queued (or the thread ends).

        The I/O thread notifies after each flush while someone waits; the
        timeout only bounds a wake-up lost to a race, it is not a poll.
        """
        outgoing = self.svc._outgoing
        with self._room:
            self._room_waiters += 1
            try:
                while outgoing.qsize() > low and running() and self._thread.is_alive():
                    self.wake()
                    self._room.wait(0.5)
            finally:
                self._room_waiters -= 1

    def _notify_room(self) -> None:
        """After a flush: wake set() callers waiting for room (cheap when none wait)."""
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def _call(self, command: str, argument: Any, timeout: float = 30.0) -> None:
        box = _Box()
        self._control.put((command, argument, box))
        self.wake()
        if not box.done.wait(timeout):
            raise CauldronError(f"the I/O thread did not answer {command!r} within {timeout} s")
        if box.error is not None:
            raise box.error

    def bind(self, ports: Tuple[int, int]) -> None:
        """Bind (or move to) a port pair; raises BindError."""
        self._call("bind", ports)
        self.svc._ports = ports

    def stop(self, timeout: float = 10.0) -> bool:
        """Flush, close the sockets and end the thread; False if it did not end."""
        if self._thread.is_alive():
            try:
                self._call("stop", None, timeout)
            except CauldronError:
                self.log.error("the I/O thread did not stop")
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        with self._pipe_lock:
            if self._pipe_open and stopped:
                self._pipe_open = False
                os.close(self._rfd)
                os.close(self._wfd)
        return stopped

    # ------------------------------------------------------------- the loop

    def _run(self) -> None:
        self._ident = threading.get_ident()
        self._poller.register(self._rfd, zmq.POLLIN)
        try:
            while True:
                events = dict(self._poller.poll(self._poll_timeout()))
                if self._router is not None and self._router in events:
                    self._serve_requests()
                if self._rfd in events:
                    self._drain_pipe()
                stop = self._run_control()
                if self._pub is not None:
                    self._flush()
                self._notify_room()
                if stop:
                    return
                self._maybe_heartbeat()
        except Exception:  # noqa: BLE001 - log it; the service can only be shut down now
            self.log.exception("the I/O thread failed; requests are no longer served")
        finally:
            self._close_sockets()
            with self._room:           # nobody waits for room on a thread that has ended
                self._room.notify_all()

    def _poll_timeout(self) -> Optional[int]:
        if self._next_heartbeat is None:
            return None
        return max(0, int((self._next_heartbeat - time.monotonic()) * 1000) + 1)

    def _drain_pipe(self) -> None:
        self._wake_pending = False        # before draining: see wake()
        try:
            while os.read(self._rfd, 4096):
                pass
        except BlockingIOError:
            pass

    def _run_control(self) -> bool:
        """Bind/stop requests; True when asked to stop."""
        control = self._control
        while not control.empty():       # one consumer: not empty means get() won't block
            command, argument, box = control.get_nowait()   # (no queue.Empty raised per loop)
            if command == "stop":
                if self._pub is not None:
                    self._flush()
                self._close_sockets()
                box.finish()
                return True
            try:
                self._bind(argument)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box.finish(exc)
            else:
                box.finish()
        return False

    # --------------------------------------------------------------- sockets

    def _bind(self, ports: Tuple[int, int]) -> None:
        if self.svc._ports == ports and self._router is not None:
            return
        self._close_sockets()
        ctx = self.svc._context
        assert ctx is not None
        router = self._open(ctx, zmq.ROUTER, ports[0])
        try:
            pub = self._open(ctx, zmq.PUB, ports[1])
        except BaseException:
            router.close(linger=0)
            raise
        self._router, self._pub = router, pub
        self._poller.register(router, zmq.POLLIN)
        self._next_heartbeat = time.monotonic()      # first heartbeat right after the initial values
        self.svc._endpoints = (router.getsockopt_string(zmq.LAST_ENDPOINT),
                               pub.getsockopt_string(zmq.LAST_ENDPOINT))
        self.log.debug("bound %s and %s", *self.svc._endpoints)

    def _open(self, ctx: zmq.Context, kind: int, port: int) -> zmq.Socket:
        zcfg = self.config.zmq
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.SNDHWM, zcfg.hwm)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.MAXMSGSIZE, zcfg.max_message_size)
            sock.setsockopt(zmq.RCVHWM, zcfg.hwm)
        if self.svc._security is not None:
            self.svc._security.apply(sock)
        address = endpoint(zcfg.protocol, zcfg.host, port, bind=True)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise BindError(port, address, exc) from None
        return sock

    def _close_sockets(self) -> None:
        if self._router is not None:
            self._poller.unregister(self._router)
            self._router.close(linger=LINGER_MS)
            self._router = None
        if self._pub is not None:
            self._pub.close(linger=LINGER_MS)
            self._pub = None
        self._next_heartbeat = None

    # ------------------------------------------------------------ outgoing

    def _flush(self) -> None:
        """Send every queued reply and broadcast, in order."""
        outgoing = self.svc._outgoing
        low = MAX_QUEUED // 2
        while not outgoing.empty():          # one consumer: not empty means get() won't block
            item = outgoing.get_nowait()
            if item[0] == _REPLY:
                self._send(item[1], item[2])
            else:
                self._publish(item[1], item[2])
            if self._room_waiters and outgoing.qsize() <= low:
                self._notify_room()          # the producer refills while we go on sending

    def _send(self, frames: List[Any], copy: bool = True) -> None:
        if self._router is None:
            return
        try:
            _send_frames(self._router, frames, copy)
        except zmq.ZMQError as exc:      # the peer's queue is full: it will time out
            self.log.warning("reply not sent: %s", exc.strerror)

    def _publish(self, keyword: Keyword, snap: Snapshot) -> None:
        """One keyword broadcast; PUB drops rather than blocks when a subscriber is slow."""
        assert self._pub is not None
        self._gseq += 1
        payload = keyword.value_payload(snap)
        payload["gseq"] = self._gseq
        payload["dispatcher"] = self.svc.dispatcher
        topic = self._topics.get(keyword.name)
        if topic is None:
            topic = self._topics[keyword.name] = protocol.topic(self.svc.name, keyword.name)
        try:
            frames = protocol.broadcast_frames(topic, payload, snap.raw)
        except (TypeError, ValueError) as exc:    # one bad value must not end the I/O thread
            self.log.error("broadcast of %s not sent: %s", keyword.name, exc)
            return
        size = protocol.frames_size(frames)
        if size > self._max_size:   # libzmq would drop every subscriber's connection for it
            self._log_oversize(f"broadcast of {keyword.full_name} not sent", size)
            return
        try:
            _send_frames(self._pub, frames, snap.raw is None)
        except zmq.ZMQError as exc:
            self.log.warning("broadcast of %s not sent: %s", keyword.name, exc.strerror)

    def _log_oversize(self, what: str, size: int) -> None:
        log_it, unlogged = self._oversize.allow(time.monotonic())
        if log_it:
            self.log.error("%s: %d bytes exceed the message size limit of %d ([zmq] "
                           "max-message-size); a value that large was set by instrument "
                           "code, not by a client write%s", what, size, self._max_size,
                           f" ({unlogged} more not logged)" if unlogged else "")

    def _maybe_heartbeat(self) -> None:
        if self._next_heartbeat is None or self._pub is None:
            return
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        interval = self.config.zmq.heartbeat
        self._next_heartbeat = now + interval
        payload = {"dispatcher": self.svc.dispatcher, "time": time.time(), "interval": interval,
                   "gseq": self._gseq, "pid": os.getpid(), "started": self.svc.started}
        frames = protocol.encode_broadcast(protocol.Broadcast(self.svc.name, "", payload))
        try:
            _send_frames(self._pub, frames)
        except zmq.ZMQError:
            pass

    # ------------------------------------------------------------- requests

    def _serve_requests(self) -> None:
        """Handle what is waiting (at most BATCH, so the queues are not starved)."""
        router = self._router
        assert router is not None
        for _ in range(BATCH):
            if not router.getsockopt(_EVENTS) & _POLLIN:
                return
            if self.svc._security is None:
                self._handle(_recv_frames(router))
            else:
                frames, self._client_key = _recv_frames_with_key(router)
                self._handle(frames)
            if self._pub is not None:
                self._flush()

    def _handle(self, frames: List[bytes]) -> None:
        if len(frames) < 2:
            self.log.warning("dropped a message of %d frame(s): no identity and body", len(frames))
            return
        envelope, body = protocol.split_envelope(frames)
        req = protocol.decode_request(body, protocol.DISPATCHER_COMMANDS, self._max_size)
        if isinstance(req, protocol.Malformed):
            log_it, unlogged = self._malformed.allow(time.monotonic())
            if log_it:
                self.log.warning("malformed request: %s [%s]%s", req.message, req.code,
                                 f" ({unlogged} more not logged)" if unlogged else "")
            self._send(envelope + protocol.malformed_reply(req))
            return
        try:
            reply = self._handlers[req.command](req, envelope)
        except _Refusal as exc:
            reply = _error(req.id, exc.exc, exc.code)
        except protocol.BadRequest as exc:
            reply = _error(req.id, exc, protocol.E_REQUEST)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the dispatcher
            self.log.exception("internal error answering %s %r", req.command, req.target)
            reply = protocol.error(req.id, protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}",
                                   type(exc).__name__)
        if reply is not None:
            self._send(envelope + reply, copy=len(reply) < 5)   # a raw frame goes uncopied

    def _keyword(self, req: protocol.Request) -> Keyword:
        if not req.target:
            raise protocol.BadRequest(f"{req.command} needs a keyword name as its target")
        kw = self.svc._keywords.get(req.target.upper())
        if kw is None:
            raise _Refusal(protocol.E_UNKNOWN_KEYWORD, KeyError(self.svc._unknown(req.target)))
        return kw

    def _value_reply(self, rid: str, kw: Keyword, extra: Optional[Dict[str, Any]] = None) -> List[Any]:
        """The VALUE reply, or a ``too-large`` error if it would exceed the limit."""
        snap = kw._snap
        payload = kw.value_payload(snap)
        if extra:
            payload.update(extra)
        reply = protocol.ok(rid, payload, snap.raw)
        size = protocol.frames_size(reply)
        if size > self._max_size:
            self._log_oversize(f"reply with the value of {kw.full_name} not sent", size)
            return protocol.error(rid, protocol.E_TOO_LARGE, (
                f"{kw.full_name}: its value takes {size} bytes, above the message size limit "
                f"of {self._max_size} bytes ([zmq] max-message-size)"), "ValueError")
        return reply

    def _check_size(self, kw: Keyword, value: Any) -> None:
        """Refuse (too-large) a value whose replies and broadcasts would exceed the limit.

        Checked before a write is applied: once stored, a value that cannot
        be sent would make the keyword unreadable.
        """
        wire, raw = kw.type.to_wire(value)
        if protocol.oversize(wire, raw, self._max_size, OVERHEAD_BOUND) is None:
            return          # the common case, decided in O(1) without encoding anything
        size = protocol.oversize(wire, raw, self._max_size, self._overhead(kw, value))
        if size is not None:
            raise _Refusal(protocol.E_TOO_LARGE, ValueError(
                f"{kw.full_name}: a value of {size} bytes or more would not fit the message "
                f"size limit of {self._max_size} bytes ([zmq] max-message-size) in its "
                f"replies and broadcasts; refused, nothing was applied"))

    def _overhead(self, kw: Keyword, value: Any) -> int:
        """The most a reply or broadcast of ``value`` adds around its wire value.

        The VALUE's own fields (so it follows value_payload), those of a write
        reply and a broadcast, numbers at their widest, the longer of the
        topic and a reply's id and status.  Called on worker threads too.
        """
        payload = kw.value_payload(Snapshot(None, "", 0, None, -1.2345678901234567e+300,
                                            2 ** 63))
        if "ascii" in payload:          # small types: their ascii is short, and counted
            payload["ascii"] = kw.type.to_ascii(value)
        payload.update({"changed": False, "gseq": 2 ** 63, "dispatcher": self.svc.dispatcher})
        topic = protocol.topic(self.svc.name, kw.name)
        return protocol.payload_overhead(payload, protocol.VERSION,
                                         b"x" * max(len(topic), 4 * protocol.MAX_ID_LENGTH + 2))

    def _defer(self, req: protocol.Request, envelope: List[bytes], kw: Keyword,
               work: Callable[[], List[Any]]) -> None:
        """Ack now; run ``work`` (which returns the reply) on the keyword's worker queue.

        At most ``[zmq] max-queued-writes`` requests wait per keyword; beyond
        that the request is refused at once (``busy``), nothing applied.
        """
        svc = self.svc

        def task() -> None:
            try:
                reply = work()
            except Exception as exc:  # noqa: BLE001
                svc.log.exception("internal error in %s %s", req.command, kw.name)
                reply = protocol.error(req.id, protocol.E_INTERNAL,
                                       f"{type(exc).__name__}: {exc}", type(exc).__name__)
            svc._send_reply(envelope + reply, copy=len(reply) < 5)

        def cancelled() -> None:
            svc._send_reply(envelope + _shutting_down(req.id, svc))

        limit = self.config.zmq.max_queued_writes
        try:
            svc._executor.submit(kw.name, task, cancelled, limit=limit)
        except QueueFull as full:
            self._send(envelope + protocol.error(req.id, protocol.E_BUSY, (
                f"{kw.full_name} is busy: {full.waiting} request(s) already wait for its "
                f"hooks (at most {limit}, [zmq] max-queued-writes); this {req.command} was "
                f"refused and nothing was applied, try again once it is done"), "KeywordBusy"))
            return
        except RuntimeError:
            self._send(envelope + _shutting_down(req.id, svc))
            return
        self._send(envelope + protocol.ack(req.id, self.svc.started))

    def _on_read(self, req: protocol.Request, envelope: List[bytes]) -> Optional[List[Any]]:
        kw = self._keyword(req)
        if kw.writeonly:
            raise _Refusal(protocol.E_WRITE_ONLY, ValueError(f"{kw.full_name} is write-only"))
        if kw.fast_read():
            return self._value_reply(req.id, kw)
        hook_errors = self.hook_errors

        def work() -> List[Any]:
            try:
                kw.update()
            except Exception as exc:  # noqa: BLE001 - the client gets type and message
                hook_errors.error(("read", kw.name), exc, "%s: a read hook raised %s: %s "
                                  "(the client got read-failed)", kw.full_name,
                                  type(exc).__name__, exc)
                return _error(req.id, exc, protocol.E_READ_FAILED)
            return self._value_reply(req.id, kw)

        self._defer(req, envelope, kw, work)
        return None

    def _on_write(self, req: protocol.Request, envelope: List[bytes]) -> Optional[List[Any]]:
        kw = self._keyword(req)
        if self.svc._security is not None:
            refusal = self.svc._security.write_refusal(self.svc.name, kw.name, self._client_key)
            if refusal is not None:
                raise _Refusal(protocol.E_NOT_ALLOWED, PermissionError(refusal))
        if kw.readonly:
            raise _Refusal(protocol.E_READ_ONLY, ValueError(f"{kw.full_name} is read-only"))
        value = protocol.field_of(req.payload, "value", object)
        if req.raw is not None or isinstance(value, dict):
            try:
                value = kw.type.from_wire(value, req.raw)
            except ValueError as exc:
                raise _Refusal(protocol.E_INVALID, exc) from None
        if kw.fast_write():
            try:
                value = kw.type.coerce(value)
            except (ValueError, TypeError) as exc:
                return _error(req.id, exc, protocol.E_INVALID)
            self._check_size(kw, value)
            try:
                changed = kw._fast_modify(value)
            except (ValueError, TypeError) as exc:
                return _error(req.id, exc, protocol.E_INVALID)
            return self._value_reply(req.id, kw, {"changed": changed})
        self._defer(req, envelope, kw, lambda: _write(req.id, kw, value, self._value_reply,
                                                      self._check_size, self.hook_errors))
        return None

    def _on_list(self, req: protocol.Request, envelope: List[bytes]) -> List[Any]:
        return protocol.ok(req.id, {"service": self.svc.name, "dispatcher": self.svc.dispatcher,
                                    "keywords": self.svc.keywords()})

    def _on_describe(self, req: protocol.Request, envelope: List[bytes]) -> List[Any]:
        """One keyword: its DESCRIPTION and, for a numpy array, the raw frame (as a read).

        Every keyword: one reply, which can hold no raw frame, so a numpy
        array's value travels as a JSON list when it is small and is left
        out when it is not; and values are left out, largest first, while the
        reply would not fit the size limit (the client reads them instead).
        """
        if req.target:
            kw = self._keyword(req)
            snap = kw._snap
            desc = kw.describe()
            desc.update(kw.value_payload(snap))
            reply = protocol.ok(req.id, desc, snap.raw)
            if protocol.frames_size(reply) <= self._max_size:
                return reply
            return protocol.ok(req.id, _without_value(desc))
        descs = {kw.name: _description(kw) for kw in self.svc}
        reply = protocol.ok(req.id, {"keywords": descs})
        if protocol.frames_size(reply) > self._max_size:
            reply = protocol.ok(req.id, {"keywords": _fit(descs, self._max_size)})
        size = protocol.frames_size(reply)
        if size > self._max_size:
            return protocol.error(req.id, protocol.E_TOO_LARGE, (
                f"the descriptions of {len(descs)} keywords take {size} bytes even without "
                f"values, above the message size limit of {self._max_size} bytes; describe "
                f"them one at a time"), "ValueError")
        return reply

    def _on_identify(self, req: protocol.Request, envelope: List[bytes]) -> List[Any]:
        return protocol.ok(req.id, {
            "service": self.svc.name, "dispatcher": self.svc.dispatcher, "version": __version__,
            "protocol": protocol.VERSION.decode(), "keywords": len(self.svc),
            "pid": os.getpid(), "started": self.svc.started})

    def _on_ping(self, req: protocol.Request, envelope: List[bytes]) -> List[Any]:
        return protocol.ok(req.id, {})


def _send_frames(sock: zmq.Socket, frames: List[Any], copy: bool = True) -> None:
    """send_multipart without blocking, with int flags (see _NB)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _NB_MORE if i < last else _NB, copy=copy)


def _recv_frames_with_key(sock: zmq.Socket) -> Tuple[List[bytes], Optional[str]]:
    """_recv_frames, and the sender's CurveZMQ public key (z85, ZAP "User-Id")."""
    first = sock.recv(_NB, copy=False)
    key = frame_property(first, "User-Id") or None
    frames = [first.bytes]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv(_NB))
    return frames, key


def _recv_frames(sock: zmq.Socket) -> List[bytes]:
    """recv_multipart of a message known to be waiting, with int flags."""
    frames = [sock.recv(_NB)]
    while sock.getsockopt(_RCVMORE):
        frames.append(sock.recv(_NB))
    return frames


class _Refusal(Exception):
    """A request refused with a protocol code; ``exc`` gives type and message."""

    def __init__(self, code: str, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.code = code
        self.exc = exc


def _error(rid: str, exc: BaseException, code: str) -> List[bytes]:
    """An error reply carrying the exception's type name and its own message."""
    payload = protocol.exception_payload(exc, code)
    return protocol.error(rid, payload["code"], payload["message"], payload["type"])


#: More than a reply or broadcast ever adds around a value (names of 256
#: characters, UTF-8): below ``limit - OVERHEAD_BOUND`` a value needs no exact check.
OVERHEAD_BOUND = 8192
#: Elements of a numpy array value a describe of every keyword still carries (as JSON).
DESCRIBE_ARRAY_ELEMENTS = 4096
_VALUE_FIELDS = ("value", "ascii", "time", "seq")


def _description(kw: Keyword) -> Dict[str, Any]:
    """A keyword's DESCRIPTION for a reply without a raw frame (describe of every keyword)."""
    snap = kw._snap
    desc = kw.describe()
    desc.update(kw.value_payload(snap))
    if snap.raw is not None:
        if getattr(snap.value, "size", DESCRIBE_ARRAY_ELEMENTS + 1) <= DESCRIBE_ARRAY_ELEMENTS:
            desc["value"] = _persistable(kw, snap)
            desc["dtype"] = snap.wire.get("dtype")   # so a client makes it an array again
        else:
            desc = _without_value(desc)
    return desc


def _without_value(desc: Dict[str, Any]) -> Dict[str, Any]:
    return {key: item for key, item in desc.items() if key not in _VALUE_FIELDS}


def _fit(descs: Dict[str, Dict[str, Any]], limit: int) -> Dict[str, Dict[str, Any]]:
    """Leave values out, largest first, until the descriptions fit ``limit`` bytes."""
    sizes = sorted(((len(protocol.dumps(d.get("value"))) + len(protocol.dumps(d.get("ascii"))),
                     name) for name, d in descs.items()), reverse=True)
    total = len(protocol.dumps(descs)) + protocol.ENVELOPE_ALLOWANCE
    out = dict(descs)
    for size, name in sizes:
        if total <= limit:
            break
        out[name] = _without_value(out[name])
        total -= size
    return out


def _shutting_down(rid: str, svc: Service) -> List[bytes]:
    return protocol.error(rid, protocol.E_SHUTTING_DOWN,
                          f"service {svc.name!r} is shutting down", "CauldronError")


def _write(rid: str, kw: Keyword, value: Any,
           value_reply: Callable[[str, Keyword, Dict[str, Any]], List[Any]],
           check_size: Callable[[Keyword, Any], None],
           hook_errors: RepeatLog) -> List[Any]:
    """The client write: refusals are invalid-value, hook failures write-failed.

    A hook's exception reaches the client and is logged here with its
    traceback (repeats throttled): the client's message says what, the
    dispatcher's log says where.
    """
    try:
        value = kw._prepare_write(value)
    except NoWriteNecessary:
        return value_reply(rid, kw, {"changed": False})
    except (ValueError, TypeError) as exc:
        kw.log.debug("%s: write refused: %s", kw.full_name, exc)
        return _error(rid, exc, protocol.E_INVALID)
    except Exception as exc:  # noqa: BLE001
        _log_hook_error(hook_errors, kw, exc)
        return _error(rid, exc, protocol.E_WRITE_FAILED)
    try:
        check_size(kw, value)
    except _Refusal as refusal:
        return _error(rid, refusal.exc, refusal.code)
    try:
        changed = kw._apply_write(value)
    except NoWriteNecessary:
        changed = False
    except Exception as exc:  # noqa: BLE001
        _log_hook_error(hook_errors, kw, exc)
        return _error(rid, exc, protocol.E_WRITE_FAILED)
    return value_reply(rid, kw, {"changed": changed})


def _log_hook_error(hook_errors: RepeatLog, kw: Keyword, exc: BaseException) -> None:
    hook_errors.error(("write", kw.name), exc, "%s: a write hook raised %s: %s (the client "
                      "got write-failed)", kw.full_name, type(exc).__name__, exc)


# =============================================================================
# The registrar
# =============================================================================

class _Routers:
    """Every router of the installation (``[zmq-router] replicas``), asked at once.

    Used from one thread (begin()'s, then the registrar's), one
    RouterClient per router.  :meth:`request` returns the first good answer,
    so the first router to answer a reservation allocates the pair; the
    registrar then registers with the others strictly (that pair or a
    conflict).  With one router it behaves as a plain RouterClient.
    """

    def __init__(self, config: Config, context: zmq.Context) -> None:
        from ..router import RouterClient
        self.timeout = config.router.timeout
        self.clients = [RouterClient(config, address=a, context=context)
                        for a in config.router_addresses()]
        self.addresses = [c.address for c in self.clients]
        self.last: Dict[str, Any] = {}

    def ask(self, command: str, target: str, payload: Any = None, *, first: bool = False,
            requests: Optional[Dict[str, Tuple[str, Any]]] = None,
            timeout: Optional[int] = None) -> Dict[str, Any]:
        """address -> result or exception (:func:`cauldron_zmq.router.ask_routers`)."""
        from ..router import ask_routers
        clients = self.clients if requests is None else \
            [c for c in self.clients if c.address in requests]
        self.last = ask_routers(clients, command, target, payload, first=first,
                                requests=requests, timeout=timeout or self.timeout)
        return self.last

    def request(self, command: str, target: str = "", payload: Any = None,
                timeout: Optional[int] = None) -> Dict[str, Any]:
        """The first good answer of any router; else the most telling error."""
        from ..router import first_good
        answers = self.ask(command, target, payload, first=True, timeout=timeout)
        return first_good(answers, command, target, timeout or self.timeout)

    def accepted(self, ports: Tuple[int, int]) -> Set[str]:
        """The routers whose last answer gave ``ports``."""
        return {a for a, r in self.last.items() if isinstance(r, dict) and
                (r.get("dispatch_port"), r.get("broadcast_port")) == tuple(ports)}

    def unregister(self, service: str, dispatcher: str, instance: Optional[str] = None,
                   timeout: Optional[int] = None) -> Dict[str, Any]:
        """Unregister at every router (all asked at once; waits for each)."""
        from ..router import first_good
        payload: Dict[str, Any] = {"dispatcher": dispatcher}
        if instance is not None:
            payload["instance"] = instance
        answers = self.ask("unregister", service, payload, timeout=timeout)
        return first_good(answers, "unregister", service, timeout or self.timeout)

    def close(self) -> None:
        for client in self.clients:
            client.close()


SPAWN_RETRY = 10.0      # seconds between two replacement routers started by one dispatcher
SPAWN_SETTLE = 0.3      # seconds a replacement router is given before it is asked


class _Registrar:
    """Registers and heartbeats with every router, from a thread of its own.

    One :class:`~cauldron_zmq.protocol.replicas.RouterLink` per router: the pure
    :func:`~cauldron_zmq.protocol.replicas.plan` says what each is sent (heartbeat,
    or register where it does not know us: ``not-found`` means the router
    restarted with an empty book or expired us), :func:`~cauldron_zmq.protocol.replicas.record`
    what its answer means.  All are asked at once, so a dead router delays
    nobody.  A silent router is logged once and tried again every heartbeat;
    a refusing one (another dispatcher holds our pair there) is logged, reported
    to the others and retried with back-off.  When no router answers and
    ``allow-spawn`` is on, it starts a replacement router process (the bind
    decides which dispatcher's serves).  On stop it unregisters everywhere.
    """

    def __init__(self, service: Service) -> None:
        from ..protocol.replicas import RouterLink
        self.svc = service
        self.log = service.log
        self._wake = threading.Event()
        self._stopping = False
        self._reregister = False
        self._interval = service.config.router.heartbeat
        now = time.monotonic()
        done = getattr(service, "_registered_at", set())
        self._links = [RouterLink(a, registered=a in done,
                                  due=now + self._interval if a in done else now)
                       for a in service.config.router_addresses()]
        self._last_spawn: Optional[float] = None
        self._spawn_cleanup: Optional[Callable[[], None]] = None
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name=f"cauldron-{service.name}-{service.dispatcher}-registrar")

    def start(self) -> None:
        self._thread.start()

    def request_registration(self) -> None:
        """Register again soon (e.g. the keyword list changed)."""
        self._reregister = True
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        svc = self.svc
        assert svc._context is not None
        routers = _Routers(svc.config, svc._context)
        try:
            self._beat_until_stopped(routers)
            try:
                routers.unregister(svc.name, svc.dispatcher, instance=svc._instance)
            except (TimeoutError, RouterError) as exc:
                self.log.info("could not unregister from the router: %s", exc)
        finally:
            routers.close()
            self._cleanup_spawn()

    def _beat_until_stopped(self, routers: _Routers) -> None:
        while True:
            due = min(link.due for link in self._links)
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._beat(routers)
            except Exception as exc:  # noqa: BLE001 - never let the registrar die
                self.log.error("registration with the router failed: %s", exc)
                for link in self._links:
                    link.due = max(link.due, time.monotonic() + self._interval)

    def _beat(self, routers: _Routers) -> None:
        """Send what is due to each router at once, then act on the answers."""
        from ..protocol.replicas import plan
        now = time.monotonic()
        if self._reregister:
            self._reregister = False
            for link in self._links:
                link.registered, link.due = False, now
        due = plan(self._links, now)
        if not due:
            return
        requests = {link.address: self._request(action) for link, action in due}
        answers = routers.ask("", self.svc.name, requests=requests)
        now = time.monotonic()
        for link, action in due:
            self._note(routers, link, action, answers.get(link.address), now)
        self._maybe_spawn(now)

    def _request(self, action: str) -> Tuple[str, Any]:
        from ..protocol.replicas import REGISTER, conflicts
        svc = self.svc
        if action == REGISTER:
            payload = svc._registration_payload(prefer=svc._ports)
            if len(self._links) > 1:
                payload["strict"] = True
        else:
            payload = {"dispatcher": svc.dispatcher, "instance": svc._instance}
        if len(self._links) > 1:
            payload["conflicts"] = conflicts(self._links)
        return action, payload

    def _note(self, routers: _Routers, link: Any, action: str, answer: Any,
              now: float) -> None:
        """Record one router's answer (pure), then log and act on what it meant."""
        from ..protocol import replicas
        svc = self.svc
        was_silent, old_problem = link.silent, link.problem
        code = None
        if isinstance(answer, RouterError):
            code, answer = answer.code, str(getattr(answer, "message", None) or answer)
        elif isinstance(answer, TimeoutError) or answer is None:
            answer = None
        elif isinstance(answer, BaseException):
            answer = str(answer)
        meaning = replicas.record(link, action, answer, svc._ports, now, self._interval,
                                  strict=len(self._links) > 1, code=code)
        where = f"the router at {link.address}"
        if meaning == replicas.SILENT:
            if link.silent == 1:
                self.log.warning("no answer from %s within %d ms; still serving, will keep "
                                 "trying", where, routers.timeout)
            return
        self._cleanup_spawn()
        if was_silent:
            self.log.warning("%s answers again", where)
        if meaning == replicas.LOST:
            self.log.warning("%s no longer knows %s/%s (or names other ports); registering "
                             "again", where, svc.name, svc.dispatcher)
        elif meaning == replicas.MOVED:
            ports = (int(answer["dispatch_port"]), int(answer["broadcast_port"]))
            self.log.warning("the router gave a new pair %d/%d; moving there", *ports)
            svc._bind_registered(routers, ports)
        elif meaning in (replicas.CONFLICT, replicas.REFUSED):
            if link.problem != old_problem:
                self.log.error("%s refuses %s/%s: %s; still serving%s", where, svc.name,
                               svc.dispatcher, link.problem,
                               ", reported to the other routers" if len(self._links) > 1
                               else "")
        elif old_problem:
            self.log.warning("%s accepts %s/%s again", where, svc.name, svc.dispatcher)

    def _maybe_spawn(self, now: float) -> None:
        """No router answers: start a detached one that outlives us (the bind decides)."""
        from ..protocol.replicas import should_spawn
        rcfg = self.svc.config.router
        if not should_spawn(self._links, rcfg.allow_spawn, rcfg.protocol, self._last_spawn,
                            now, SPAWN_RETRY):
            return
        self._last_spawn = now
        self._cleanup_spawn()
        self.log.warning("no router answers (%s); starting a replacement at %s",
                         ", ".join(link.address for link in self._links),
                         self.svc.config.router_address())
        self._spawn_cleanup = _spawn_router_process(self.svc.config, self.log)
        for link in self._links:
            link.due = min(link.due, now + SPAWN_SETTLE)

    def _cleanup_spawn(self) -> None:
        cleanup, self._spawn_cleanup = self._spawn_cleanup, None
        if cleanup is not None:
            cleanup()


# =============================================================================
# Helpers
# =============================================================================

def _paths(value: Any) -> List[Any]:
    """One path or a sequence of them, as a list."""
    if isinstance(value, (str, bytes, os.PathLike)):
        return [value]
    return list(value)


def _service_name(name: Any) -> str:
    """Stripped and lower-cased, then :func:`cauldron_zmq.names.check_name` (a ValueError)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a service name must be a non-empty string, got {name!r}")
    return check_name("service", name.strip().lower())


def _dispatcher_name(name: Any) -> str:
    if name is None:
        return DEFAULT_DISPATCHER
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a dispatcher name must be a non-empty string, got {name!r}")
    return check_name("dispatcher", name.strip())


def _probe_identity(context: Optional[zmq.Context], config: Config,
                    port: int) -> Optional[Dict[str, Any]]:
    """What answers ``identify`` on ``port`` of our host within PROBE_MS, or None."""
    from ..security import client_security
    zcfg = config.zmq
    ctx = context if context is not None else zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, zcfg.max_message_size)
        keys = client_security(config)
        if keys is not None:
            keys.apply(sock)
        sock.connect(endpoint(zcfg.protocol, zcfg.host, port, bind=False))
        sock.send_multipart(protocol.encode_request(protocol.request("identify")), zmq.NOBLOCK)
        if not sock.poll(PROBE_MS):
            return None
        reply = protocol.decode_reply(sock.recv_multipart(zmq.NOBLOCK), zcfg.max_message_size)
        if isinstance(reply, protocol.Reply) and reply.ok and isinstance(reply.payload, dict):
            return reply.payload
        return None
    except (zmq.ZMQError, CauldronError):
        return None
    finally:
        sock.close(linger=0)


def _advertised_host(host: str) -> str:
    """What clients should connect to: loopback for localhost, our name for wildcards."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    if host in ("*", "0.0.0.0", "::"):
        return socket.getfqdn()
    return host


def _persistable(keyword: Keyword, snap: Snapshot) -> Any:
    """The JSON form saved for a value (numpy arrays as lists, not raw frames)."""
    if snap.raw is not None and hasattr(snap.value, "tolist"):
        return keyword.type.to_wire(snap.value.tolist())[0]
    return snap.wire


_spawned: List[subprocess.Popen] = []


def _spawn_router_process(config: Config, log: logging.Logger) -> Callable[[], None]:
    """A detached ``python -m cauldron_zmq.router`` that outlives this process.

    Its own session, so ^C in our terminal does not reach it; stderr goes to
    a log file in the temporary directory.  Returns a clean-up for the copy of
    the configuration it reads at start-up.
    """
    _reap()
    fd, path = tempfile.mkstemp(prefix="cauldron_zmq-router-", suffix=".toml")
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        stream.write(config.to_toml())
    logfile = os.path.join(tempfile.gettempdir(), f"cauldron_zmq-router-{config.router.port}.log")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    with open(logfile, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cauldron_zmq.router", "-c", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=env, start_new_session=True, close_fds=True)
    _spawned.append(proc)
    log.warning("started router process %d (log: %s); it outlives this dispatcher",
                proc.pid, logfile)

    def cleanup() -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
    return cleanup


def _reap() -> None:
    """Collect routers we spawned that have exited (no zombies, no ResourceWarning)."""
    for proc in list(_spawned):
        if proc.poll() is not None:
            _spawned.remove(proc)


# ---------------------------------------------------------- interpreter exit

_running: "weakref.WeakSet[Service]" = weakref.WeakSet()
_running_lock = threading.Lock()
_atexit_installed = False


def _track(service: Service) -> None:
    """Shut running services down at interpreter exit; held weakly."""
    global _atexit_installed
    with _running_lock:
        if not _atexit_installed:
            atexit.register(_shutdown_all)
            _atexit_installed = True
        _running.add(service)


def _untrack(service: Service) -> None:
    with _running_lock:
        _running.discard(service)


def _shutdown_all() -> None:
    with _running_lock:
        services = list(_running)
    for service in services:
        try:
            service.shutdown()
        except Exception:  # noqa: BLE001 - at exit, do what we can
            service.log.exception("error shutting down at exit")
