"""How a dispatcher gets its ports: bind first, then register; second copies refused.

* :class:`Registration` -- the half of :class:`~.service.Service` that talks to
  the routers at ``begin()``: reserve a port pair (starting a router when
  none answers and ``[zmq-router] allow-spawn`` says so), bind it, and only
  then register it as ready, so a look-up never returns a dispatcher that
  does not listen yet.  A port we cannot bind is first asked ``identify``:
  a live dispatcher of our own name there is a second copy, refused with
  :class:`AlreadyServed`.
* :class:`Routers` -- every router of ``[zmq-router] replicas``, asked at once.
* :func:`spawn_router_process` -- a detached router that outlives us
  (:func:`cauldron_zmq.transport.spawn_router`).

The registrar thread that keeps us registered afterwards is :mod:`.registrar`.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import zmq

from .. import protocol
from ..config import Config, endpoint
from ..errors import CauldronError, TimeoutError
from ..transport import make_socket, spawn_router
from .io import BindError

if TYPE_CHECKING:
    from .io import IOThread

__all__ = ["Registration", "Routers", "AlreadyServed", "spawn_router_process",
           "advertised_host"]

MAX_BIND_ATTEMPTS = 5          # re-registrations with "avoid" before giving up
SPAWN_WAIT = 10.0              # seconds a spawned router has to answer
PROBE_MS = 1000                # how long a port we cannot bind has to answer 'identify'


class AlreadyServed(CauldronError):
    """Another live process already serves this (service, dispatcher): a second
    copy is refused rather than splitting the service in two."""


class Registration:
    """Bind-first registration, mixed into :class:`~.service.Service`.

    Uses the service's ``name``, ``dispatcher``, ``config``, ``log``,
    ``_context``, ``_io``, ``_ports`` and ``_instance``; keeps what the
    routers said in ``_held_by`` (who held our name) and ``_registered_at``
    (the routers that accepted us, for the registrar).
    """

    name: str
    dispatcher: str
    config: Config
    log: Any
    _context: Optional[zmq.Context]
    _io: Optional["IOThread"]
    _ports: Optional[Tuple[int, int]]
    _instance: str
    _own_router: Any
    keywords: Callable[[], List[str]]

    def _registration_payload(self, prefer: Optional[Tuple[int, int]] = None,
                              avoid: Sequence[int] = (), ready: bool = True) -> Dict[str, Any]:
        payload: Dict[str, Any] = {"dispatcher": self.dispatcher,
                                   "host": advertised_host(self.config.zmq.host),
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
        client = Routers(self.config, self._context)
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
            return spawn_router_process(self.config, self.log)
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
        host = str(held.get("host") or advertised_host(self.config.zmq.host))
        who = probe_identity(self._context, self.config, port)
        if who is None or who.get("service") != self.name or \
                who.get("dispatcher") != self.dispatcher:
            return
        raise AlreadyServed(f"{self.name}/{self.dispatcher} is already served by pid "
                            f"{who.get('pid')} on {host}")



class Routers:
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


# ---------------------------------------------------------------------- helpers

def probe_identity(context: Optional[zmq.Context], config: Config,
                   port: int) -> Optional[Dict[str, Any]]:
    """What answers ``identify`` on ``port`` of our host within PROBE_MS, or None."""
    from ..security import client_security
    zcfg = config.zmq
    ctx = context if context is not None else zmq.Context.instance()
    sock = make_socket(ctx, zmq.DEALER, max_size=zcfg.max_message_size,
                       security=client_security(config))
    try:
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


def advertised_host(host: str) -> str:
    """What clients should connect to: loopback for localhost, our name for wildcards."""
    if host.lower() == "localhost":
        return "127.0.0.1"
    if host in ("*", "0.0.0.0", "::"):
        return socket.getfqdn()
    return host


#: Router processes we started and have not seen exit (reaped by the next spawn).
_spawned: List[subprocess.Popen] = []


def spawn_router_process(config: Config, log: logging.Logger) -> Callable[[], None]:
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
    with open(logfile, "ab") as err:
        proc = spawn_router(path, detached=True, stderr=err)
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

