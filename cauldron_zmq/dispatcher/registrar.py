"""The registrar: a thread that keeps a serving dispatcher registered with every router.

It owns its router clients (one socket, one thread): heartbeats to every
router of ``[zmq-router] replicas``, registration again after a router
restart, a replacement router when none answers, and the final
``unregister``.  What to send and what an answer means are decided by the
pure :mod:`cauldron_zmq.protocol.replicas`; this module only carries it out.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from ..errors import RouterError, TimeoutError
from ..protocol import replicas
from .registration import Routers, spawn_router_process

if TYPE_CHECKING:
    from .service import Service

__all__ = ["Registrar"]

SPAWN_RETRY = 10.0      # seconds between two replacement routers started by one dispatcher
SPAWN_SETTLE = 0.3      # seconds a replacement router is given before it is asked


class Registrar:
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

    def __init__(self, service: "Service") -> None:
        self.svc = service
        self.log = service.log
        self._wake = threading.Event()
        self._stopping = False
        self._reregister = False
        self._interval = service.config.router.heartbeat
        now = time.monotonic()
        done = getattr(service, "_registered_at", set())
        self._links = [replicas.RouterLink(a, registered=a in done,
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
        routers = Routers(svc.config, svc._context)
        try:
            self._beat_until_stopped(routers)
            try:
                routers.unregister(svc.name, svc.dispatcher, instance=svc._instance)
            except (TimeoutError, RouterError) as exc:
                self.log.info("could not unregister from the router: %s", exc)
        finally:
            routers.close()
            self._cleanup_spawn()

    def _beat_until_stopped(self, routers: Routers) -> None:
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

    def _beat(self, routers: Routers) -> None:
        """Send what is due to each router at once, then act on the answers."""
        now = time.monotonic()
        if self._reregister:
            self._reregister = False
            for link in self._links:
                link.registered, link.due = False, now
        due = replicas.plan(self._links, now)
        if not due:
            return
        requests = {link.address: self._request(action) for link, action in due}
        answers = routers.ask("", self.svc.name, requests=requests)
        now = time.monotonic()
        for link, action in due:
            self._note(routers, link, action, answers.get(link.address), now)
        self._maybe_spawn(now)

    def _request(self, action: str) -> Tuple[str, Any]:
        svc = self.svc
        if action == replicas.REGISTER:
            payload = svc._registration_payload(prefer=svc._ports)
            if len(self._links) > 1:
                payload["strict"] = True
        else:
            payload = {"dispatcher": svc.dispatcher, "instance": svc._instance}
        if len(self._links) > 1:
            payload["conflicts"] = replicas.conflicts(self._links)
        return action, payload

    def _note(self, routers: Routers, link: Any, action: str, answer: Any,
              now: float) -> None:
        """Record one router's answer (pure), then log and act on what it meant."""
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
        rcfg = self.svc.config.router
        if not replicas.should_spawn(self._links, rcfg.allow_spawn, rcfg.protocol,
                                     self._last_spawn, now, SPAWN_RETRY):
            return
        self._last_spawn = now
        self._cleanup_spawn()
        self.log.warning("no router answers (%s); starting a replacement at %s",
                         ", ".join(link.address for link in self._links),
                         self.svc.config.router_address())
        self._spawn_cleanup = spawn_router_process(self.svc.config, self.log)
        for link in self._links:
            link.due = min(link.due, now + SPAWN_SETTLE)

    def _cleanup_spawn(self) -> None:
        cleanup, self._spawn_cleanup = self._spawn_cleanup, None
        if cleanup is not None:
            cleanup()

