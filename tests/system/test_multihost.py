"""Several hosts: router, dispatcher and client each in a network namespace.

The test builds its own little network -- four namespaces named
``czmq-<random>-{b,r,d,c}``: a bridge in ``b`` and one veth pair from it to
each "host" (router ``r``, dispatcher ``d``, client ``c``), addresses in
10.203.7.0/24 that exist only inside those namespaces, no route anywhere
else -- and runs each program there with ``ip netns exec``.  It checks that
look-ups, reads, writes and monitors cross hosts, that the router refuses a
``shutdown`` from another host, and that a client recovers after its link is
cut and restored.

It needs root and iproute2's ``ip``; it skips (saying why) where namespaces
cannot be made, and always deletes what it created.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from cauldron_zmq.config import config_from_mapping

pytestmark = pytest.mark.timeout(120)

ROOT = str(Path(__file__).resolve().parents[2])
SUBNET = "10.203.7"
ADDRESSES = {"r": f"{SUBNET}.1", "d": f"{SUBNET}.2", "c": f"{SUBNET}.3"}

KEYWORDS = """
[keyword.POSITION]
type = "double"
initial = 1.0
units = "mm"

[keyword.MODE]
type = "enumerated"
enumerators = ["Idle", "Track"]
initial = "Idle"
"""

# A small program that drives a ktl client from JSON lines on stdin and
# answers (and reports monitor callbacks) as JSON lines on stdout.
AGENT = textwrap.dedent('''
    import json, sys, threading
    from cauldron_zmq import ktl
    from cauldron_zmq.router import RouterClient

    lock = threading.Lock()

    def emit(**message):
        with lock:
            sys.stdout.write(json.dumps(message) + "\\n")
            sys.stdout.flush()

    def report(kw):
        emit(event="value", keyword=kw.name, ascii=kw["ascii"], connected=kw.connected)

    config, svc = sys.argv[1], None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "quit":
                break
            if op == "connect":
                svc = ktl.Service(cmd["service"], config=config, wait=cmd.get("wait"))
                result = svc.keywords()
            elif op == "read":
                result = svc[cmd["keyword"]].read()
            elif op == "write":
                result = svc[cmd["keyword"]].write(cmd["value"])
            elif op == "monitor":
                kw = svc[cmd["keyword"]]
                kw.callback(report)
                kw.monitor()
                result = True
            elif op == "alive":
                result = svc.isAlive()
            elif op in ("lookup", "shutdown"):
                with RouterClient(config) as rc:
                    result = rc.lookup(cmd["service"]) if op == "lookup" else rc.shutdown()
            else:
                raise ValueError("unknown op " + op)
            emit(id=cmd["id"], ok=True, result=result)
        except Exception as exc:
            emit(id=cmd["id"], ok=False, error="%s: %s" % (type(exc).__name__, exc),
                 code=getattr(exc, "code", None))
    if svc is not None:
        svc.shutdown()
''')


# ------------------------------------------------------------------ network

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


class Hosts:
    """The namespaces of one test; ``ns[host]`` is a namespace name."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ns = {host: f"{prefix}-{host}" for host in ("b", "r", "d", "c")}
        self.created: List[str] = []

    def add(self, host: str) -> None:
        _ip("netns", "add", self.ns[host])
        self.created.append(self.ns[host])
        _ip("-n", self.ns[host], "link", "set", "lo", "up")

    def build(self) -> None:
        bridge = self.ns["b"]
        self.add("b")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for host, address in ADDRESSES.items():
            self.add(host)
            _ip("-n", bridge, "link", "add", f"p-{host}", "type", "veth",
                "peer", "name", "eth0", "netns", self.ns[host])
            _ip("-n", bridge, "link", "set", f"p-{host}", "master", "br0", "up")
            _ip("-n", self.ns[host], "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", self.ns[host], "link", "set", "eth0", "up")

    def link(self, host: str, up: bool) -> None:
        """Bring the host's own end of its link down or up (a cable pulled)."""
        _ip("-n", self.ns[host], "link", "set", "eth0", "up" if up else "down")

    def remove(self) -> None:
        for name in reversed(self.created):   # deleting a namespace deletes its links
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=20)
        self.created.clear()

    def run(self, host: str, argv: List[str], log: Path, **kwargs: Any) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get(
            "PYTHONPATH", "").split(os.pathsep) if p])
        env.pop("CAULDRON_ZMQ_CONFIG", None)
        with open(log, "wb") as err:
            return subprocess.Popen(["ip", "netns", "exec", self.ns[host], *argv], env=env,
                                    stderr=err, **kwargs)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are a Linux feature")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2's 'ip' command is not installed")
    net = Hosts(f"czmq-{secrets.token_hex(3)}")
    try:
        try:
            net.build()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            reason = str(getattr(exc, "stderr", "") or exc).strip()
            pytest.skip(f"cannot build a test network of namespaces here "
                        f"({' '.join(map(str, exc.cmd))}): {reason}")
        yield net
    finally:
        net.remove()


# ---------------------------------------------------------------- processes

class Agent:
    """A client program in a namespace, driven over its stdin/stdout."""

    def __init__(self, hosts: Hosts, host: str, config: Path, directory: Path) -> None:
        script = directory / "agent.py"
        if not script.exists():
            script.write_text(AGENT, encoding="utf-8")
        self.proc = hosts.run(host, [sys.executable, str(script), str(config)],
                              directory / f"agent-{host}.log",
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.events: List[Dict[str, Any]] = []
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))

    def _take(self, deadline: float) -> Dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("the agent did not answer in time")
        try:
            return self.lines.get(timeout=remaining)
        except queue.Empty:
            raise AssertionError("the agent did not answer in time") from None

    def call(self, op: str, timeout: float = 20.0, **args: Any) -> Dict[str, Any]:
        self._next += 1
        ident = self._next
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(dict(args, op=op, id=ident)) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            message = self._take(deadline)
            if message.get("id") == ident:
                return message
            self.events.append(message)

    def ok(self, op: str, **args: Any) -> Any:
        answer = self.call(op, **args)
        assert answer["ok"], answer
        return answer["result"]

    def wait_event(self, match: Callable[[Dict[str, Any]], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(match(e) for e in self.events):
            self.events.append(self._take(deadline))

    def poll(self, op: str, want: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ok(op) != want:
            if time.monotonic() > deadline:
                raise AssertionError(f"{op} never became {want!r}")
            time.sleep(0.05)

    def close(self) -> None:
        stop(self.proc)


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def write_config(path: Path, zmq_host: str) -> Path:
    """The installation's configuration; only ``[zmq] host`` differs per host."""
    config = config_from_mapping({
        "zmq": {"host": zmq_host, "timeout": 3000, "heartbeat": 0.2, "liveness": 1.0},
        "zmq-router": {"host": ADDRESSES["r"], "timeout": 500, "allow-spawn": False,
                       "heartbeat": 0.5, "expiry": 3.0},
    })
    path.write_text(config.to_toml(), encoding="utf-8")
    return path


@contextlib.contextmanager
def children(tmp_path: Path) -> Iterator[List[Any]]:
    """A list for the test's processes and agents: each is stopped at the end, and on a
    failure the logs in ``tmp_path`` are printed (pytest shows them)."""
    procs: List[Any] = []
    try:
        yield procs
    except BaseException:
        for log in sorted(tmp_path.glob("*.log")):
            print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        for proc in reversed(procs):
            if isinstance(proc, Agent):
                proc.close()
            else:
                stop(proc)


# -------------------------------------------------------------------- test

def test_router_dispatcher_and_client_on_three_hosts(hosts: Hosts, tmp_path: Path) -> None:
    keywords = tmp_path / "stage.toml"
    keywords.write_text(KEYWORDS, encoding="utf-8")
    router_cfg = write_config(tmp_path / "router.toml", "localhost")
    dispatcher_cfg = write_config(tmp_path / "dispatcher.toml", ADDRESSES["d"])
    client_cfg = write_config(tmp_path / "client.toml", "localhost")
    with children(tmp_path) as procs:
        procs.append(hosts.run("r", [sys.executable, "-m", "cauldron_zmq.router", "-c",
                                     str(router_cfg)], tmp_path / "router.log",
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        procs.append(hosts.run("d", [sys.executable, "-m", "cauldron_zmq", "serve", "stage",
                                     str(keywords), "-c", str(dispatcher_cfg)],
                               tmp_path / "dispatcher.log",
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        client = Agent(hosts, "c", client_cfg, tmp_path)
        procs.append(client)
        writer = Agent(hosts, "r", client_cfg, tmp_path)    # another client, on the router host
        procs.append(writer)

        # Look-up across hosts: the router hands out the dispatcher's own address.
        assert client.ok("connect", service="stage", wait=20) == ["MODE", "POSITION"]
        [entry] = client.ok("lookup", service="stage")["dispatchers"]
        assert entry["host"] == ADDRESSES["d"]
        # Reads, writes and monitors cross hosts.
        assert client.ok("read", keyword="POSITION") == "1.0"
        client.ok("monitor", keyword="POSITION")
        client.ok("write", keyword="POSITION", value=2.5)
        client.wait_event(lambda e: e.get("ascii") == "2.5")
        writer.ok("connect", service="stage", wait=10)
        writer.ok("write", keyword="POSITION", value=3.5)
        client.wait_event(lambda e: e.get("ascii") == "3.5")
        assert writer.ok("read", keyword="POSITION") == "3.5"

        # Without [zmq-security] the router takes "shutdown" only from its own host.
        refused = client.call("shutdown", service="")
        assert not refused["ok"] and refused["code"] == "not-allowed"
        assert "only from its own host" in refused["error"]
        assert f"came from {ADDRESSES['c']}" in refused["error"]

        # Cut the client's link: it notices, and recovers when the link returns.
        hosts.link("c", up=False)
        client.poll("alive", False)
        writer.ok("write", keyword="POSITION", value=7.25)     # while the client is cut off
        client.wait_event(lambda e: e.get("connected") is False)
        hosts.link("c", up=True)
        client.poll("alive", True, timeout=30)
        client.wait_event(lambda e: e.get("ascii") == "7.25" and e.get("connected"), timeout=30)
        writer.ok("write", keyword="POSITION", value=8.0)      # and it keeps working
        client.wait_event(lambda e: e.get("ascii") == "8.0")
        assert client.ok("read", keyword="POSITION") == "8.0"
