"""Where the router runs: :class:`Router` serves in this thread, a thread of its
own or a child process.

The serving itself is :class:`~cauldron_zmq.router.serving.Server`; this
file only gives it a thread (with a context, the authenticator and the
socket, all made, used and closed there), or starts ``python -m
cauldron_zmq.router`` with :func:`cauldron_zmq.transport.spawn_router` and
waits until that process answers a ping with its own pid.
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Deque, Optional, Union

import zmq

from .. import __version__
from ..config import Config, load_config
from ..errors import CauldronError, TimeoutError
from ..limits import raise_file_limit
from ..protocol.book import Book
from ..security import server_security
from ..transport import spawn_router
from .client import RouterClient
from .logs import NOTICE, PROG, log
from .serving import (SHUTDOWN_LINGER_MS, RouterBindError, RouterStartError, Server, bind,
                      bind_address)
from .state import StateFile

__all__ = ["Router"]


class Router:
    """Serves a :class:`~cauldron_zmq.protocol.book.Book` on a ROUTER socket at
    ``[zmq-router]``.

    ``serve()`` runs in the calling thread; ``start()`` runs it in the
    background as ``config.router.process`` says (a thread, or a separate
    ``python -m cauldron_zmq.router`` process so the router keeps its own
    GIL).  The socket is created, used and closed by the one thread that
    serves, with a context of its own.
    """

    def __init__(self, config: Union[str, "os.PathLike[str]", Config, None] = None) -> None:
        self.config = load_config(config)
        self.address = self.config.router_address()
        self.bind_address = bind_address(self.config)
        self.book: Optional[Book] = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._lock = threading.Lock()
        self._active = False
        self._error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None
        self._serving_ident: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._relay: Optional[threading.Thread] = None
        self._proc_lines: Deque[str] = collections.deque(maxlen=20)
        self._tmpdir: Optional[tempfile.TemporaryDirectory] = None
        self._state = StateFile(self.config.router.state_file)
        #: The endpoint actually bound (ZMQ_LAST_ENDPOINT), while serving in-process.
        self.endpoint: Optional[str] = None

    # ------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True while serving, or while its router process is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._active

    @property
    def pid(self) -> int:
        """The pid of the process that serves (the child's in process mode)."""
        return self._proc.pid if self._proc is not None else os.getpid()

    def serve(self) -> None:
        """Serve in this thread until :meth:`stop` or a ``shutdown`` request.

        Raises :class:`RouterBindError` if the address cannot be bound.  The
        book is loaded from the state file first and saved on the way out.
        """
        self._claim()
        self._serve()

    def start(self, timeout: float = 10.0) -> "Router":
        """Serve in the background; returns once the socket is bound and serving.

        Raises :class:`RouterBindError` naming the address if it is in use,
        :class:`RouterStartError` for anything else that stops it starting.
        """
        if self.config.router.process == "process":
            if self.running:
                raise RuntimeError("this Router is already running")
            self._start_process(timeout)
        else:
            self._start_thread(timeout)
        return self

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """True once serving (seconds; None waits for ever).  Re-raises a start failure."""
        if not self._ready.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return self.running

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: the socket is closed and the thread or process gone on return.

        From inside the serving thread (a signal handler during :meth:`serve`)
        it only asks the loop to end.
        """
        self._stop.set()
        if self._proc is not None:
            self._stop_process(timeout)
        elif self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("router thread did not stop within %.1f s", timeout)
                return
            self._thread = None
        elif self._serving_ident not in (None, threading.get_ident()):
            self._stopped.wait(timeout)

    def __enter__(self) -> "Router":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _claim(self) -> None:
        """Mark this Router busy; one serve() at a time."""
        with self._lock:
            if self._active:
                raise RuntimeError("this Router is already serving")
            self._active = True
        self._stop.clear()
        self._stopped.clear()
        self._ready.clear()
        self._error = None

    def _serve(self) -> None:
        self._serving_ident = threading.get_ident()
        context = zmq.Context()
        sock: Optional[zmq.Socket] = None
        auth: Any = None
        linger = 0
        try:
            raise_file_limit()
            security = server_security(self.config, "router")
            if security is not None:
                auth = security.start_authenticator(context)
            self.book = self._state.load(self.config)
            sock = bind(context, self.config, security)
            self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            server = Server(self.config, self.book, self._state, security)
            log.log(NOTICE, "router %s (pid %d) listening on %s, ports %s, state file %s",
                    __version__, os.getpid(), self.bind_address, self.book.range_text,
                    self.config.router.state_file or "none")
            self._ready.set()
            if server.run(sock, self._stop):
                linger = SHUTDOWN_LINGER_MS
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            try:
                if sock is not None:
                    self._state.save(self.book, final=True)
                    sock.close(linger=linger)
                if auth is not None:
                    auth.stop()
                context.term()
            finally:
                self._serving_ident = None
                with self._lock:
                    self._active = False
                self._ready.set()       # wake waiters; they look at _error
                self._stopped.set()
                if sock is not None:
                    log.log(NOTICE, "router on %s stopped", self.bind_address)

    def _start_thread(self, timeout: float) -> None:
        self._claim()

        def run() -> None:
            try:
                self._serve()
            except BaseException:   # noqa: BLE001 - kept in _error for start()
                pass

        self._thread = threading.Thread(target=run, name=f"cauldron-router {self.address}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RouterStartError(f"router on {self.bind_address} not ready within {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            self._thread = None
            error = self._error
            if isinstance(error, CauldronError):
                raise error
            raise RouterStartError(f"router on {self.bind_address} failed: {error}") from error

    # ---------------------------------------------------------- process mode
    def _start_process(self, timeout: float) -> None:
        """Run ``python -m cauldron_zmq.router -c <copy of our config>`` (its
        environment :func:`cauldron_zmq.transport.child_env`).

        Ready means it answered a ping with *its* pid: another router already
        on the address must not be mistaken for ours.
        """
        self._stop_process(0)       # leftovers of a previous run
        self._stop.clear()
        self._ready.clear()
        self._error = None
        self._tmpdir = tempfile.TemporaryDirectory(prefix="cauldron-router-")
        path = os.path.join(self._tmpdir.name, "router.toml")
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(self.config.to_toml())
        self._proc_lines.clear()
        self._proc = spawn_router(path, stderr=subprocess.PIPE)
        self._relay = threading.Thread(target=self._relay_stderr, args=(self._proc.stderr,),
                                       name="cauldron-router stderr", daemon=True)
        self._relay.start()
        try:
            self._await_child(timeout)
        except BaseException:
            self._stop_process(1.0)
            raise
        self._ready.set()

    def _await_child(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        context = zmq.Context()
        try:
            with RouterClient(self.config, timeout=100, context=context) as client:
                while time.monotonic() < deadline:
                    if self._proc.poll() is not None:
                        raise self._child_failure()
                    try:
                        if client.ping().get("pid") == self._proc.pid:
                            return
                    except TimeoutError:
                        continue
                    time.sleep(0.05)    # someone else answers: wait for ours to fail or bind
        finally:
            context.term()
        raise RouterStartError(
            f"router process on {self.bind_address} not ready within {timeout} s")

    def _child_failure(self) -> RouterStartError:
        assert self._proc is not None and self._relay is not None
        self._relay.join(2.0)
        last = self._proc_lines[-1] if self._proc_lines else ""
        message = last[len(PROG) + 2:] if last.startswith(PROG + ": ") else last
        if "cannot bind" in message:
            return RouterBindError(message)
        return RouterStartError(f"router process exited with status {self._proc.returncode}"
                                + (f": {message}" if message else ""))

    def _relay_stderr(self, stream: IO[bytes]) -> None:
        """Pass the child's stderr on, keeping the last lines to explain a failure."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._proc_lines.append(line)
            try:
                sys.stderr.write(line + "\n")
            except (OSError, ValueError):
                pass
        stream.close()

    def _stop_process(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.error("router process %d ignored SIGTERM; killing it", proc.pid)
                    proc.kill()
                    proc.wait()
            if proc.stderr is not None and self._relay is None:
                proc.stderr.close()
        if self._relay is not None:
            self._relay.join(max(timeout, 1.0))   # the pipe closes when the child is gone
            self._relay = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
