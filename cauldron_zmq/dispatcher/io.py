"""The dispatcher's I/O thread: it alone owns the ROUTER (requests) and the PUB (broadcasts).

It serves requests with :func:`.handlers.answer` (the fast path: a read or
write that runs no instrument code is answered on this thread), hands the
rest to the keyword's worker queue, and sends every reply and broadcast
that other threads hand it through the service's :class:`Outbox` (one
:class:`~cauldron_zmq.transport.Mailbox`, which also carries "bind" and
"stop").  It sends the heartbeats, and holds ``set()`` back while too much
is queued (:meth:`IOThread.wait_for_room`).
"""
from __future__ import annotations

import os
import threading
import time
from itertools import islice
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import zmq

from .. import protocol
from ..config import endpoint
from ..errors import CauldronError
from ..keywords import Keyword, Snapshot
from ..security import frame_property
from ..protocol.payloads import Heartbeat
from ..transport import send_frames, Mailbox, MailboxClosed, drain, make_socket
from ..workers import QueueFull
from . import handlers

if TYPE_CHECKING:
    from .service import Service

__all__ = ["IOThread", "Outbox", "BindError", "MAX_QUEUED", "REPLY", "BROADCAST"]

LINGER_MS = 100                # lets final replies and broadcasts leave on close
BATCH = 256                    # requests handled between two looks at the mailbox
MAX_QUEUED = 10_000            # replies and broadcasts queued for the I/O thread before set() waits

#: The kinds of item in the :class:`Outbox`: (REPLY, frames, copy),
#: (BROADCAST, keyword, snapshot), (CONTROL, command, argument, box).
REPLY, BROADCAST, CONTROL = 0, 1, 2

# Plain ints: pyzmq's enum flags cost an enum construction per frame and
# operation, which shows in the fast path's latency.
_NB = int(zmq.NOBLOCK)
_NB_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_POLLIN = int(zmq.POLLIN)


class BindError(CauldronError, OSError):
    """A port could not be bound; ``port`` and ``errno`` say which and why."""

    def __init__(self, port: int, address: str, exc: zmq.ZMQError) -> None:
        super().__init__(exc.errno, f"cannot bind {address}: {exc.strerror}")
        self.port = port
        self.address = address

    def __str__(self) -> str:
        return str(self.args[1])


#: The service's mailbox to its I/O thread (replies, broadcasts, bind, stop):
#: the one :class:`~cauldron_zmq.transport.Mailbox` every I/O loop uses.
Outbox = Mailbox


class _Box:
    """A one-shot result handed between two threads."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

    def finish(self, error: Optional[BaseException] = None) -> None:
        self.error = error
        self.done.set()


class IOThread:
    """Owns the ROUTER and PUB sockets; nothing else touches them.

    Other threads talk to it only through ``service._outgoing`` (an
    :class:`Outbox`): replies and broadcasts from any thread, and the
    :meth:`bind` and :meth:`stop` commands, handled in the order queued.
    """

    def __init__(self, service: "Service") -> None:
        self.svc = service
        self.log = service.log
        self.config = service.config
        self._outbox: Outbox = service._outgoing
        self._router: Optional[zmq.Socket] = None
        self._pub: Optional[zmq.Socket] = None
        self._poller = zmq.Poller()
        self._gseq = 0
        self._topics: Dict[str, bytes] = {}      # keyword name -> its broadcast topic
        self._next_heartbeat: Optional[float] = None
        self.ident: Optional[int] = None           # the thread's, once it runs
        self._stopping = False
        #: Broadcasts taken from the outbox while no PUB is bound (sent once bound).
        self.backlog: List[Tuple[Any, ...]] = []
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"cauldron-{service.name}-{service.dispatcher}-io")
        self._max_size = self.config.zmq.max_message_size
        self._malformed = protocol.Throttle()     # a peer sending garbage must not flood the log
        self.context = handlers.Context(self._max_size, self.log)
        self._room = threading.Condition()        # set() waits here while the outbox is full
        self._room_waiters = 0

    # ---------------------------------------------------- other threads' API

    def start(self) -> None:
        self._thread.start()

    def queued(self) -> int:
        """Replies and broadcasts waiting to be sent."""
        return self._outbox.qsize() + len(self.backlog)

    def wait_for_room(self) -> None:
        """Back-pressure, called by Keyword.set() (through the service) before any lock.

        A producer calling set() faster than this thread publishes (a tight
        loop easily is) would otherwise queue broadcasts without bound: some
        hundreds of MB within seconds.  While MAX_QUEUED messages wait, the
        caller waits on a condition this thread notifies once fewer than
        half of them are left.  The timeout only bounds a wake-up lost to a
        race, it is not a poll.  Never waits on this thread itself.
        """
        if self.queued() < MAX_QUEUED or threading.get_ident() == self.ident:
            return                  # (the service checked the first already: re-checked here)
        low = MAX_QUEUED // 2
        with self._room:
            self._room_waiters += 1
            try:
                while self.queued() > low and self.svc.running and self._thread.is_alive():
                    self._outbox.wake()
                    self._room.wait(0.5)
            finally:
                self._room_waiters -= 1

    def bind(self, ports: Tuple[int, int]) -> None:
        """Bind (or move to) a port pair; raises BindError."""
        self._call("bind", ports)
        self.svc._ports = ports

    def stop(self, timeout: float = 10.0) -> bool:
        """Send what is queued, close the sockets and end the thread; False if it did not end."""
        if self._thread.is_alive():
            try:
                self._call("stop", None, timeout)
            except CauldronError:
                self.log.error("the I/O thread did not stop")
            self._thread.join(timeout)
        return not self._thread.is_alive()     # (the thread closed the outbox on its way out)

    def _call(self, command: str, argument: Any, timeout: float = 30.0) -> None:
        box = _Box()
        item = (CONTROL, command, argument, box)
        try:
            if command == "stop":
                if not self._outbox.put_last(item):
                    return
            else:
                self._outbox.put(item)
        except MailboxClosed:
            raise CauldronError(f"the I/O thread has stopped; cannot {command}") from None
        if not box.done.wait(timeout):
            raise CauldronError(f"the I/O thread did not answer {command!r} within {timeout} s")
        if box.error is not None:
            raise box.error

    # ------------------------------------------------------------- the loop

    def _run(self) -> None:
        self.ident = threading.get_ident()
        outbox = self._outbox
        self._poller.register(outbox.fd, zmq.POLLIN)
        try:
            while not self._stopping:
                events = dict(self._poller.poll(self._poll_timeout()))
                if self._router is not None and self._router in events:
                    self._serve_requests()
                if outbox.fd in events or not outbox.empty():
                    self._flush()
                self._notify_room()
                self._maybe_heartbeat()
        except Exception:  # noqa: BLE001 - log it; the service can only be shut down now
            self.log.exception("the I/O thread failed; requests are no longer served")
        finally:
            self._close_sockets()
            self._outbox.close_fds()   # later puts are refused, not queued without bound
            with self._room:           # nobody waits for room on a thread that has ended
                self._room.notify_all()

    def _poll_timeout(self) -> Optional[int]:
        if self._next_heartbeat is None:
            return None
        return max(0, int((self._next_heartbeat - time.monotonic()) * 1000) + 1)

    def _notify_room(self) -> None:
        """After a flush: wake set() callers waiting for room (cheap when none wait)."""
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def _flush(self) -> None:
        """Carry out everything the outbox holds, in order."""
        outbox = self._outbox
        low = MAX_QUEUED // 2
        for item in outbox.take_all():
            kind = item[0]
            if kind == BROADCAST:
                if self._pub is None:
                    self.backlog.append(item)
                else:
                    self._publish(item[1], item[2])
            elif kind == REPLY:
                self._send(item[1], item[2])
            else:
                self._control(item[1], item[2], item[3])
            if self._room_waiters and outbox.qsize() <= low:
                self._notify_room()          # the producer refills while we go on sending

    def _control(self, command: str, argument: Any, box: _Box) -> None:
        if command == "stop":            # the last item: everything before it went out
            self._stopping = True
            self._close_sockets()
            box.finish()
            return
        try:
            self._bind(argument)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box.finish(exc)
        else:
            box.finish()

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
        backlog, self.backlog = self.backlog, []
        for item in backlog:
            self._publish(item[1], item[2])

    def _open(self, ctx: zmq.Context, kind: int, port: int) -> zmq.Socket:
        zcfg = self.config.zmq
        options = {zmq.SNDHWM: zcfg.hwm}
        if kind == zmq.ROUTER:
            options[zmq.RCVHWM] = zcfg.hwm
        sock = make_socket(ctx, kind, linger=LINGER_MS, security=self.svc._security,
                           max_size=zcfg.max_message_size if kind == zmq.ROUTER else None,
                           options=options)
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
            self.context.log_oversize(f"broadcast of {keyword.full_name} not sent", size)
            return
        try:
            _send_frames(self._pub, frames, snap.raw is None)
        except zmq.ZMQError as exc:
            self.log.warning("broadcast of %s not sent: %s", keyword.name, exc.strerror)

    def _maybe_heartbeat(self) -> None:
        if self._next_heartbeat is None or self._pub is None:
            return
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        interval = self.config.zmq.heartbeat
        self._next_heartbeat = now + interval
        payload = Heartbeat(self.svc.started, os.getpid(), self._gseq, interval).to_payload(
            self.svc.dispatcher, time.time())
        frames = protocol.encode_broadcast(protocol.Broadcast(self.svc.name, "", payload))
        try:
            _send_frames(self._pub, frames)
        except zmq.ZMQError:
            pass

    # ------------------------------------------------------------- requests

    def _serve_requests(self) -> None:
        """Handle what is waiting (at most BATCH, so the outbox is not starved)."""
        router = self._router
        assert router is not None
        outbox = self._outbox
        secure = self.svc._security is not None
        for frames in islice(drain(router, copy=not secure), BATCH):
            if secure:                  # who sent it: the CurveZMQ key (ZAP "User-Id")
                self.context.client_key = frame_property(frames[0], "User-Id") or None
                frames = [frame.bytes for frame in frames]
            self._handle(frames)
            if not outbox.empty():
                self._flush()           # the broadcast of a fast write, replies of workers
            if self._router is not router:
                return                  # moved to another pair, or stopped

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
        decision = handlers.answer(req, self.svc, self.context)
        if isinstance(decision, handlers.Deferred):
            self._defer(req, envelope, decision)
        else:
            self._send(envelope + decision, copy=len(decision) < 5)   # a raw frame goes uncopied

    def _defer(self, req: protocol.Request, envelope: List[bytes],
               deferred: handlers.Deferred) -> None:
        """Ack now; run the work (which returns the reply) on the keyword's worker queue.

        At most ``[zmq] max-queued-writes`` requests wait per keyword; beyond
        that the request is refused at once (``busy``), nothing applied.
        """
        svc, kw = self.svc, deferred.keyword

        def task() -> None:
            reply = handlers.run_deferred(req, deferred, svc.log)
            svc._send_reply(envelope + reply, copy=len(reply) < 5)

        def cancelled() -> None:
            svc._send_reply(envelope + handlers.shutting_down(req.id, svc.name))

        limit = self.config.zmq.max_queued_writes
        try:
            svc._executor.submit(kw.name, task, cancelled, limit=limit)
        except QueueFull as full:
            self._send(envelope + handlers.busy(req, kw, full.waiting, limit))
            return
        except RuntimeError:
            self._send(envelope + handlers.shutting_down(req.id, svc.name))
            return
        self._send(envelope + protocol.ack(req.id, svc.started))


def _send_frames(sock: zmq.Socket, frames: List[Any], copy: bool = True) -> None:
    """send_multipart without blocking (transport.send_frames: int flags, compiled send)."""
    send_frames(sock, frames, copy=copy)
