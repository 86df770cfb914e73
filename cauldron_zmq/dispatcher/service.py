"""The dispatcher's service: a keyword service that instrument code embeds (DFW's ``Service``).

:class:`Service` holds the keywords (a DFW container), applies initial and
persisted values, and runs the lifecycle: ``begin()`` starts the threads of
:mod:`cauldron_zmq.dispatcher` and registers (:mod:`.registration`),
``shutdown()`` stops them in order.  ``Keyword.set()`` hands broadcasts to the
I/O thread through :attr:`Service._outgoing` (an :class:`~.io.Outbox`) and
waits for room while too much is queued.
"""
from __future__ import annotations

import atexit
import difflib
import logging
import os
import secrets
import signal
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import zmq

from ..config import Config, endpoint, load_config
from ..errors import CauldronError
from ..keywords import VALUE_MODES, DuplicateKeyword, Keyword, Snapshot
from ..limits import raise_file_limit
from ..names import check_name
from ..persist import Persister, legacy_persist_path, persist_path
from ..security import server_security
from ..transport import MailboxClosed
from ..workers import KeyedExecutor, Scheduler
from .handlers import persistable
from . import io as io_module
from .io import BROADCAST, CONTROL, REPLY, IOThread, Outbox
from .registrar import Registrar
from .registration import Registration, advertised_host
from .sources import populate

__all__ = ["Service", "DEFAULT_DISPATCHER", "ServiceLog"]

DEFAULT_DISPATCHER = "default"
SHUTDOWN_GRACE = 5.0           # seconds shutdown() waits for running hooks
MAX_WORKERS = 32
WORKER_IDLE = 5.0

PathLike = Union[str, "os.PathLike[str]"]
ConfigArg = Union[PathLike, Config, None]


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

class Service(Registration):
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
        self._outgoing = Outbox()           # replies, broadcasts, bind, stop: to the I/O thread
        self._lifecycle = threading.Lock()
        self._state = "new"
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        prefix = f"cauldron-{self.name}-{self.dispatcher}"
        self._executor = KeyedExecutor(prefix, max_workers=MAX_WORKERS,
                                       idle_timeout=WORKER_IDLE, log=self.log)
        self._scheduler = Scheduler(prefix, self._executor, log=self.log)
        self._context: Optional[zmq.Context] = None
        self._io: Optional[IOThread] = None
        self._registrar: Optional[Registrar] = None
        self._persister: Optional[Persister] = None
        self._restored: Dict[str, Any] = {}
        self._own_router: Any = None
        self._ports: Optional[Tuple[int, int]] = None
        self._security: Any = None       # security.ServerSecurity with [zmq-security] enable
        self._auth: Any = None           # its ZAP authenticator (a thread of its own)
        self._endpoints: Optional[Tuple[str, str]] = None
        #: KTL XML declarations by keyword name (empty without XML).
        self.declarations: Dict[str, Any] = {}
        populate(self, setup, keywords, xml)

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
                if snap.seq and not self._hand_off((BROADCAST, keyword, snap)):
                    return

    @property
    def address(self) -> Optional[Dict[str, Any]]:
        """Where this dispatcher listens (None before begin)."""
        if self._ports is None:
            return None
        zcfg = self.config.zmq
        dport, bport = self._ports
        return {"host": advertised_host(zcfg.host), "protocol": zcfg.protocol,
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
        """Queue a broadcast (called with the keyword's lock held, so seq order holds).

        On the I/O thread itself (a write answered on the fast path) without
        a wake-up: that thread looks at the outbox before it polls again.
        """
        if self._state == "stopped":
            return
        io = self._io
        if io is not None and io.ident == threading.get_ident():
            self._outgoing.put_here((BROADCAST, keyword, snap))
        else:
            self._hand_off((BROADCAST, keyword, snap))

    def _wait_for_room(self) -> None:
        """Back-pressure, called by Keyword.set() before it takes any lock: see
        :meth:`.io.IOThread.wait_for_room` (no waiting before begin())."""
        io = self._io
        if io is not None and io.queued() >= io_module.MAX_QUEUED:
            io.wait_for_room()

    def _changed(self, keyword: Keyword, snap: Snapshot) -> None:
        persister = self._persister
        if keyword.persist and persister is not None:
            persister.note(keyword.name, persistable(keyword, snap))

    def _send_reply(self, frames: List[Any], copy: bool = True) -> None:
        """Hand a reply (envelope included) to the I/O thread."""
        self._hand_off((REPLY, frames, copy))

    def _hand_off(self, item: Tuple[Any, ...]) -> bool:
        """Into the outbox; False (and dropped) once the I/O thread has stopped."""
        try:
            self._outgoing.put(item)
        except MailboxClosed:       # shutting down: a late set() or an abandoned hook's reply
            return False
        return True

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
        self._io = IOThread(self)
        self._io.start()
        if self.config.router.enable:
            self._registered_at: Set[str] = set()
            self._register_and_bind()
            self._registrar = Registrar(self)
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
                self._persister.note(kw.name, persistable(kw, kw._snap))

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
            if io_stopped and not final:
                self._renew_outbox(io.backlog)
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

    def _renew_outbox(self, backlog: List[Tuple[Any, ...]]) -> None:
        """After a failed begin(): a fresh outbox (the stopped one is closed for good)
        holding the broadcasts not sent yet, so that begin() can be tried again."""
        old, self._outgoing = self._outgoing, Outbox()
        for item in backlog + list(old.take_all()):
            if item[0] != CONTROL:
                self._outgoing.put(item)
        old.close_fds()

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


# =============================================================================
# Helpers
# =============================================================================

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
