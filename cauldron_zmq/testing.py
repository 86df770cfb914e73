"""Test harness: a router, a dispatcher and a connected client on free ports.

Instrument authors test their own dispatchers with it in three lines::

    from cauldron_zmq.testing import running_service

    def test_temperature(setup):                 # setup(service) creates keywords
        with running_service(setup, service="demo") as svc:
            assert svc["TEMP"].write(21.5) == "21.5"

or, with pytest, ``pytest_plugins = ["cauldron_zmq.pytest_plugin"]`` and the
``cauldron_service`` fixture, or a fixture of their own made by
:func:`service_fixture`.  Everything listens on 127.0.0.1 only, on ports
found free, with a real TOML configuration written to a temporary directory
(short heartbeats, so liveness tests are fast).  :class:`ServiceHarness`
gives full control: stop, kill, SIGSTOP and restart the router or the
dispatcher, in this process or as subprocesses, to test recovery.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess as _subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Union

from .config import Config, config_from_mapping, load_config

__all__ = [
    "free_port",
    "free_ports",
    "wait_until",
    "write_test_config",
    "ServiceHarness",
    "running_service",
    "service_fixture",
]

PathArg = Union[str, "os.PathLike[str]"]
Setup = Callable[[Any], Any]

LOG_TAIL_LINES = 20               # lines of a child's log quoted when it exits early
_LOW, _HIGH = 20000, 32000        # below Linux's ephemeral range (32768-60999)
_handed_out: Set[int] = set()
_ports_lock = threading.Lock()

#: What a test configuration changes from the defaults: loopback only, and
#: heartbeats fast enough that liveness tests take about a second.
TEST_SETTINGS: Dict[str, Dict[str, Any]] = {
    "zmq": {"host": "127.0.0.1", "timeout": 2000, "heartbeat": 0.2, "liveness": 1.0},
    "zmq-router": {"host": "127.0.0.1", "timeout": 500, "allow-spawn": False,
                   "heartbeat": 0.5, "expiry": 3.0, "process": "thread"},
}


# ----------------------------------------------------------------------- ports

def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on now (never the same twice per process)."""
    return free_ports(1, host=host)[0]


def free_ports(n: int, consecutive: bool = False, host: str = "127.0.0.1") -> List[int]:
    """``n`` distinct free TCP ports; ``consecutive=True``: a run ``p, p+1, ...``.

    Ports come from below the kernel's ephemeral range, so an outgoing
    connection cannot grab one between this call and the bind, and ports
    already handed out in this process are not handed out again.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random()
    with _ports_lock:
        for _ in range(2000):
            if consecutive:
                base = rng.randrange(_LOW, _HIGH - n)
                ports = list(range(base, base + n))
            else:
                ports = rng.sample(range(_LOW, _HIGH), n)
            if any(p in _handed_out for p in ports):
                continue
            if all(_bindable(p, host) for p in ports):
                _handed_out.update(ports)
                return ports
    raise RuntimeError(f"could not find {n} free {'consecutive ' if consecutive else ''}ports")


# ---------------------------------------------------------------------- waiting

def wait_until(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01,
               message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something true; AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        time.sleep(interval)


# ------------------------------------------------------------------ configuration

def write_test_config(directory: PathArg, *, pairs: int = 3,
                overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Path:
    """Write a TOML configuration for a router on a free port; returns its path.

    The router hands out ``pairs`` port pairs from a free consecutive range.
    ``overrides`` (``{"zmq": {...}, "zmq-router": {...}}``) change any key.
    """
    directory = Path(directory)
    router_port = free_port()
    first = free_ports(2 * pairs, consecutive=True)[0]
    zmq_port = free_ports(2, consecutive=True)[0]
    data: Dict[str, Dict[str, Any]] = {name: dict(body) for name, body in TEST_SETTINGS.items()}
    data["zmq"].update({"dispatch-port": zmq_port, "broadcast-port": zmq_port + 1,
                        "persist-dir": str(directory / "persist")})
    data["zmq-router"].update({"port": router_port, "first-port": first,
                               "last-port": first + 2 * pairs - 1})
    for section, body in (overrides or {}).items():
        data.setdefault(_section(section), {}).update(body)
    config = config_from_mapping(data, source="test_config()")   # validate before writing
    path = directory / "cauldron.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    return path


def _section(name: str) -> str:
    return "zmq-router" if name in ("router", "zmq_router") else name


# ---------------------------------------------------------------------- harness

def child_env() -> Dict[str, str]:
    """A subprocess must import this very package, wherever it is installed, and get
    its configuration explicitly (never ``$CAULDRON_ZMQ_CONFIG`` from the shell)."""
    from . import transport     # imported late: it imports zmq, the plugin need not
    return transport.child_env(keep_config=False)


_child_env = child_env


class ServiceHarness:
    """A router and one dispatcher of ``service`` on free loopback ports.

    ``source`` is a ``setup(service)`` function (in-process only) or a TOML
    keyword file (also what ``cauldron-zmq serve`` reads).  ``subprocess=True``
    runs the router and the dispatcher as child processes, which tests can
    :meth:`signal_dispatcher` (SIGSTOP, SIGKILL...).  :meth:`client` makes
    connected ``ktl.Service`` objects that :meth:`close` shuts down.
    """

    def __init__(self, source: Union[Setup, PathArg, None] = None, service: str = "test", *,
                 config: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 subprocess: bool = False, directory: Optional[PathArg] = None,
                 pairs: int = 3, dispatcher: Optional[str] = None) -> None:
        self.setup: Optional[Setup] = None
        self.keywords_file: Optional[str] = None
        if callable(source):
            if subprocess:
                raise TypeError("subprocess=True needs a keyword file, not a setup function")
            self.setup = source
        elif source is not None:
            # Absolute now: the child processes run in the harness's directory.
            self.keywords_file = os.path.abspath(os.fspath(source))
        self.service = service.lower()
        self.subprocess = subprocess
        self.dispatcher_name = dispatcher
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cauldron-zmq-test-")
            directory = self._tmp.name
        self.directory = Path(directory).resolve()
        self.config_path = write_test_config(self.directory, pairs=pairs, overrides=config)
        self.config: Config = load_config(self.config_path)
        self.router: Any = None                    # Router (in-process) or Popen
        self.dispatcher: Any = None                # DFW.Service or Popen
        self._clients: List[Any] = []
        self._logs: Dict[int, Path] = {}           # child pid -> its log file

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> "ServiceHarness":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def start(self) -> "ServiceHarness":
        if self.router is not None or self.dispatcher is not None:
            raise RuntimeError("this harness is already started; close() it first")
        try:
            self.start_router()
            self.start_dispatcher()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Shut down clients, dispatcher and router; remove the temporary directory."""
        for client in self._clients:
            client.shutdown()
        self._clients.clear()
        self.stop_dispatcher()
        self.stop_router()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def client(self, **kwargs: Any) -> Any:
        """A new ``ktl.Service`` for the service, shut down by :meth:`close`."""
        from . import ktl
        svc = ktl.Service(self.service, config=self.config, **kwargs)
        self._clients.append(svc)
        return svc

    # ------------------------------------------------------------------ router
    def start_router(self) -> None:
        if self.subprocess:
            self.router = self._spawn([sys.executable, "-m", "cauldron_zmq.router",
                                       "-c", str(self.config_path)])
            self._wait_router()
        else:
            from .router import Router
            self.router = Router(self.config).start()

    def stop_router(self) -> None:
        router, self.router = self.router, None
        if router is None:
            return
        if isinstance(router, _subprocess.Popen):
            _terminate(router)
        else:
            router.stop()

    def _wait_router(self, timeout: float = 10.0) -> None:
        from .errors import CauldronError
        from .router import RouterClient
        with RouterClient(self.config, timeout=200) as rc:
            def answers() -> bool:
                self._check_alive(self.router, "router")
                try:
                    rc.ping()
                except CauldronError:
                    return False
                return True
            wait_until(answers, timeout, 0.02, "the router answering")

    # -------------------------------------------------------------- dispatcher
    def start_dispatcher(self) -> None:
        """Start (or restart) the dispatcher and wait until it answers."""
        if self.subprocess:
            cmd = [sys.executable, "-m", "cauldron_zmq", "serve", self.service,
                   str(self.keywords_file), "-c", str(self.config_path)]
            if self.dispatcher_name:
                cmd += ["--dispatcher", self.dispatcher_name]
            self.dispatcher = self._spawn(cmd)
            self._wait_dispatcher(self.dispatcher.pid)
        else:
            from . import DFW
            svc = DFW.Service(self.service, config=self.config, setup=self.setup,
                              keywords=self.keywords_file, dispatcher=self.dispatcher_name)
            self.dispatcher = svc.begin()

    def stop_dispatcher(self) -> None:
        """A clean shutdown (SIGTERM for a subprocess): it unregisters."""
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is None:
            return
        if isinstance(dispatcher, _subprocess.Popen):
            _terminate(dispatcher)
        else:
            dispatcher.shutdown()

    def signal_dispatcher(self, signum: int) -> None:
        """Send a signal to the dispatcher subprocess (SIGSTOP, SIGCONT, SIGKILL...)."""
        if not isinstance(self.dispatcher, _subprocess.Popen):
            raise RuntimeError("signal_dispatcher() needs subprocess=True")
        pid = self.dispatcher.pid
        os.kill(pid, signum)
        if signum == signal.SIGKILL:
            self.dispatcher.wait(10)
            self.dispatcher = None
        elif signum in (signal.SIGSTOP, signal.SIGCONT):
            # Delivery is asynchronous: wait until the kernel shows the new state,
            # so a test's next step really meets a stopped (or running) process.
            stopped = signum == signal.SIGSTOP
            wait_until(lambda: _is_stopped(pid) == stopped, 5,
                       message=f"dispatcher {'stopped' if stopped else 'continued'}")

    def kill_dispatcher(self) -> None:
        """SIGKILL: no unregister, no goodbye."""
        self.signal_dispatcher(signal.SIGKILL)

    def _wait_dispatcher(self, pid: int, timeout: float = 15.0) -> None:
        """Until the router lists the service and a dispatcher with this pid answers."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(self.dispatcher, "dispatcher")
            if self._identify() == pid:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"dispatcher (pid {pid}) not answering within {timeout} s")
            time.sleep(0.02)

    def _identify(self) -> Optional[int]:
        """The pid the registered dispatcher reports, or None if none answers."""
        return identify_pid(self.config, self.service)

    # ------------------------------------------------------------------ helpers
    def _spawn(self, cmd: List[str]) -> "_subprocess.Popen[bytes]":
        path = self.directory / f"{Path(cmd[2]).name}-{len(os.listdir(self.directory))}.log"
        log = open(path, "wb")
        try:
            proc = _subprocess.Popen(cmd, env=_child_env(), stdin=_subprocess.DEVNULL,
                                     stdout=log, stderr=_subprocess.STDOUT, cwd=self.directory)
        finally:
            log.close()
        self._logs[proc.pid] = path
        return proc

    def log_tail(self, proc: Any, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines a child process wrote (stdout and stderr), or ""."""
        path = self._logs.get(getattr(proc, "pid", None))
        if path is None:
            return ""
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def _check_alive(self, proc: Any, what: str) -> None:
        """The child's own words in the error: its log is deleted with the directory."""
        if isinstance(proc, _subprocess.Popen) and proc.poll() is not None:
            tail = self.log_tail(proc)
            said = (f"; its last output:\n{textwrap.indent(tail, '    ')}" if tail
                    else " without any output")
            raise RuntimeError(f"the {what} process exited with status {proc.returncode}"
                               f"{said}")


def identify_pid(config: Config, service: str) -> Optional[int]:
    """The pid a registered dispatcher of ``service`` reports to ``identify``,
    or None if the router or every dispatcher stays silent (200 ms each)."""
    import zmq
    from . import protocol
    from .config import endpoint
    from .errors import CauldronError
    from .router import RouterClient
    from .security import client_security
    try:
        with RouterClient(config, timeout=200) as rc:
            entries = rc.lookup(service)["dispatchers"]
    except CauldronError:
        return None
    keys = client_security(config)
    ctx = zmq.Context.instance()
    for entry in entries:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(sock)
        try:
            sock.connect(endpoint(entry["protocol"], entry["host"], entry["dispatch_port"],
                                  bind=False))
            sock.send_multipart(protocol.encode_request(protocol.request("identify")))
            if sock.poll(200):
                reply = protocol.decode_reply(sock.recv_multipart())
                if isinstance(reply, protocol.Reply) and reply.ok:
                    return int(reply.payload["pid"])
        finally:
            sock.close(0)
    return None


def _is_stopped(pid: int) -> bool:
    """Whether /proc says the process is stopped by a signal (state T)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] == b"T"


def _terminate(proc: "_subprocess.Popen[bytes]", timeout: float = 10.0) -> None:
    """SIGCONT (in case it was stopped), SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout)
    except _subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@contextlib.contextmanager
def running_service(source: Union[Setup, PathArg], service: str = "test", *,
                    config: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    subprocess: bool = False, **client_options: Any) -> Iterator[Any]:
    """Start a router and a dispatcher and yield a connected ``ktl.Service``.

    ``source`` is a ``setup(service)`` function or a TOML keyword file;
    ``config`` overrides configuration keys (``{"zmq": {"timeout": 500}}``);
    ``subprocess=True`` runs both servers as child processes (keyword file
    only).  Everything is shut down on exit.  The harness is available as
    the yielded Service's ``harness`` attribute.
    """
    with ServiceHarness(source, service, config=config, subprocess=subprocess) as harness:
        svc = harness.client(**client_options)
        svc.harness = harness
        yield svc


def service_fixture(source: Union[Setup, PathArg], service: str = "test", *,
                    config: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    subprocess: bool = False, scope: str = "function",
                    name: Optional[str] = None) -> Any:
    """A pytest fixture yielding a connected ``ktl.Service`` (see :func:`running_service`).

    In a conftest.py: ``demo = service_fixture(setup, service="demo")``; tests
    then take a ``demo`` argument.
    """
    import pytest

    def fixture() -> Iterator[Any]:
        with running_service(source, service, config=config, subprocess=subprocess) as svc:
            yield svc

    if name is not None:
        return pytest.fixture(scope=scope, name=name)(fixture)  # type: ignore[call-overload]
    return pytest.fixture(scope=scope)(fixture)  # type: ignore[call-overload]
