"""The one I/O thread and ZeroMQ context every ``ktl.Service`` of a process shares.

caproto's ``Context`` serves every circuit from one selector thread; so does
this loop: each :class:`~cauldron_zmq.client.engine.Engine` (one per Service)
registers its sockets and its timers here, and user threads hand it work
through the one :class:`~cauldron_zmq.transport.Mailbox`.  The thread starts
with the first Service and ends with the last (nothing lingers after the
last ``shutdown()``); a Service opened afterwards starts a new one.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set

import zmq

from ..transport import Mailbox, MailboxClosed

__all__ = ["IOLoop", "acquire", "release"]

log = logging.getLogger("cauldron_zmq.client")

IDLE_TICK = 1.0               # the loop wakes at least this often
THREAD_NAME = "cauldron_zmq.client.io"


class IOLoop:
    """A poller, its handlers, the mailbox, and the engines whose timers it runs."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.mailbox: Mailbox[Callable[[], Any]] = Mailbox()
        self.poller = zmq.Poller()
        self.poller.register(self.mailbox.fd, zmq.POLLIN)
        self.handlers: Dict[Any, Callable[[], None]] = {}
        self.engines: Set[Any] = set()     # the loop thread's own view (see add/discard)
        self.users = 0                     # engines attached (under _lock)
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ any thread
    def post(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the loop thread soon (MailboxClosed once it stopped)."""
        self.mailbox.put(fn)

    def in_loop(self) -> bool:
        return threading.current_thread() is self.thread

    # ------------------------------------------------------- the loop thread
    def watch(self, sock: Any, handler: Callable[[], None]) -> None:
        self.poller.register(sock, zmq.POLLIN)
        self.handlers[sock] = handler

    def unwatch(self, sock: Any) -> None:
        if self.handlers.pop(sock, None) is not None:
            try:
                self.poller.unregister(sock)
            except KeyError:
                pass

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    self._iterate()
                except Exception:  # noqa: BLE001 - a bug must not kill every client
                    log.exception("unexpected error in the I/O thread")
                    time.sleep(0.05)
        finally:
            self._close()

    def _iterate(self) -> None:
        for sock, _ in self.poller.poll(self._wait_ms(time.monotonic())):
            handler = self.handlers.get(sock)
            if handler is not None and not getattr(sock, "closed", False):
                handler()
        self._drain()
        now = time.monotonic()
        for engine in list(self.engines):
            engine.run_timers(now)

    def _wait_ms(self, now: float) -> int:
        due = now + IDLE_TICK
        for engine in self.engines:
            due = min(due, engine.next_wakeup(now))
        return max(0, int(math.ceil((due - now) * 1000)))

    def _drain(self) -> None:
        for fn in self.mailbox.take_all():
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.exception("I/O thread task failed")
            if self._stopping:
                return

    def stop_now(self) -> None:
        """On the loop thread: the last engine left."""
        self._stopping = True

    def _close(self) -> None:
        self._stopping = True
        for fn in self.mailbox.take_all():     # queued before the stop: let them run
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.debug("task queued before the I/O thread stopped failed", exc_info=True)
        for engine in list(self.engines):
            engine.close_all()
        self.mailbox.close_fds()
        self.ctx.term()


_lock = threading.Lock()
_current: Optional[IOLoop] = None


def acquire() -> IOLoop:
    """The process's loop, started if none runs; pair with :func:`release`."""
    global _current
    with _lock:
        if _current is None:
            _current = IOLoop()
        _current.users += 1
        return _current


def release(loop: IOLoop) -> None:
    """An engine is done with ``loop``; the last one out stops its thread."""
    global _current
    with _lock:
        loop.users -= 1
        if loop.users > 0:
            return
        if _current is loop:
            _current = None
    try:
        loop.mailbox.put_last(loop.stop_now)
    except MailboxClosed:
        pass


def _forget_after_fork() -> None:
    """In a forked child the parent's loop thread does not exist: start afresh.

    (The child must not use Services it inherited; new ones get a new loop.)
    """
    global _current, _lock
    _current = None
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def current_threads() -> List[threading.Thread]:
    """The loop's thread, if one runs (for tests and the benchmark)."""
    with _lock:
        return [_current.thread] if _current is not None else []
