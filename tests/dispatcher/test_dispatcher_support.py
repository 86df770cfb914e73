"""Helpers shared by the dispatcher tests (imported by them; holds no tests itself).

Real sockets on 127.0.0.1 and free ports from the kernel; a raw DEALER/SUB
client built on :mod:`cauldron_zmq.protocol` (the ``ktl`` client is tested
elsewhere); polling with deadlines instead of sleeps.
"""
from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import zmq

from cauldron_zmq import protocol
from cauldron_zmq.config import DEFAULT, Config
from cauldron_zmq.testing import child_env  # noqa: F401 - test modules import it from here

LOOPBACK = "127.0.0.1"


# ----------------------------------------------------------------- ports

def free_ports(count: int) -> List[int]:
    """Distinct ports the kernel says are free (all held until all are chosen)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_block(count: int) -> int:
    """The first port of ``count`` consecutive free ports."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free block of ports")


# ---------------------------------------------------------------- configs

def standalone_config(tmp_path: Any, **zmq_keys: Any) -> Config:
    """Router disabled, fixed free ports, fast heartbeats, persistence under tmp_path."""
    dport, bport = free_ports(2)
    keys = {"dispatch-port": dport, "broadcast-port": bport, "heartbeat": 0.2,
            "liveness": 1.0, "persist-dir": str(tmp_path / "persist")}
    keys.update(zmq_keys)
    return DEFAULT.replace(router={"enable": False}, zmq=keys)


def router_config(tmp_path: Any, pairs: int = 4, **router_keys: Any) -> Config:
    """Router enabled on a free port with a free block of ``pairs`` port pairs."""
    first = free_block(2 * pairs + 1)
    keys = {"enable": True, "port": first + 2 * pairs, "first-port": first,
            "last-port": first + 2 * pairs - 1, "timeout": 300, "heartbeat": 0.2,
            "expiry": 1.0, "process": "thread", "allow-spawn": False}
    keys.update(router_keys)
    return DEFAULT.replace(router=keys, zmq={"heartbeat": 0.2, "liveness": 1.0,
                                             "persist-dir": str(tmp_path / "persist")})


def write_config(cfg: Config, path: Any) -> str:
    path.write_text(cfg.to_toml())
    return str(path)


# ---------------------------------------------------------------- waiting

def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------- client

class Client:
    """A raw DEALER (requests) and SUB (broadcasts) for one dispatcher."""

    def __init__(self, dispatch: str, broadcast: Optional[str] = None,
                 context: Optional[zmq.Context] = None) -> None:
        self.context = context or zmq.Context()
        self._own_context = context is None
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(dispatch)
        self.sub: Optional[zmq.Socket] = None
        if broadcast is not None:
            self.sub = self.context.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.connect(broadcast)
        self.acks: List[str] = []

    @classmethod
    def of(cls, service: Any, subscribe: Optional[bytes] = None) -> "Client":
        address = service.address
        client = cls(address["dispatch"], address["broadcast"])
        if subscribe is not None:
            client.subscribe(subscribe)
        return client

    def close(self) -> None:
        self.dealer.close(0)
        if self.sub is not None:
            self.sub.close(0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # requests
    def send(self, command: str, target: str = "", payload: Any = None,
             raw: Optional[bytes] = None) -> str:
        req = protocol.request(command, target, {} if payload is None else payload, raw=raw)
        self.dealer.send_multipart(protocol.encode_request(req))
        return req.id

    def send_frames(self, frames: List[bytes]) -> None:
        self.dealer.send_multipart(frames)

    def receive(self, timeout: float = 5.0) -> protocol.Reply:
        if not self.dealer.poll(int(timeout * 1000)):
            pytest.fail(f"no reply within {timeout} s")
        reply = protocol.decode_reply(self.dealer.recv_multipart())
        assert not isinstance(reply, protocol.Malformed), reply
        return reply

    def final(self, rid: str, timeout: float = 5.0) -> protocol.Reply:
        """The ok/error reply to ``rid`` (acks are recorded in ``self.acks``)."""
        while True:
            reply = self.receive(timeout)
            if reply.id != rid:
                continue
            if reply.status == protocol.ACK:
                self.acks.append(rid)
                continue
            return reply

    def request(self, command: str, target: str = "", payload: Any = None,
                raw: Optional[bytes] = None, timeout: float = 5.0) -> protocol.Reply:
        return self.final(self.send(command, target, payload, raw), timeout)

    def read(self, keyword: str) -> Dict[str, Any]:
        reply = self.request("read", keyword)
        assert reply.status == "ok", reply.payload
        return reply.payload

    def write(self, keyword: str, value: Any) -> protocol.Reply:
        return self.request("write", keyword, {"value": value})

    # broadcasts
    def subscribe(self, prefix: bytes) -> None:
        assert self.sub is not None
        self.sub.setsockopt(zmq.SUBSCRIBE, prefix)

    def next_broadcast(self, timeout: float = 5.0) -> protocol.Broadcast:
        assert self.sub is not None
        if not self.sub.poll(int(timeout * 1000)):
            pytest.fail(f"no broadcast within {timeout} s")
        b = protocol.decode_broadcast(self.sub.recv_multipart())
        assert not isinstance(b, protocol.Malformed), b
        return b

    def wait_heartbeat(self, timeout: float = 5.0) -> protocol.Broadcast:
        """The next heartbeat (keyword broadcasts before it are dropped): the SUB is connected."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.next_broadcast(max(0.01, deadline - time.monotonic()))
            if b.is_heartbeat:
                return b

    def keyword_broadcasts(self, until: Callable[[List[protocol.Broadcast]], bool],
                           timeout: float = 5.0) -> List[protocol.Broadcast]:
        """Keyword broadcasts (heartbeats skipped) until ``until(collected)`` is true."""
        got: List[protocol.Broadcast] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            b = self.next_broadcast(max(0.01, deadline - time.monotonic()))
            if not b.is_heartbeat:
                got.append(b)
        return got

    def drain(self, duration: float = 0.0) -> List[protocol.Broadcast]:
        """Every broadcast that arrives within ``duration`` seconds (or is waiting)."""
        assert self.sub is not None
        got = []
        deadline = time.monotonic() + duration
        while self.sub.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            got.append(protocol.decode_broadcast(self.sub.recv_multipart()))
        return got


# ---------------------------------------------------------------- leaks

def _our_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("cauldron") and t.is_alive()]


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail if a cauldron thread outlives the test."""
    before = set(_our_threads())
    yield
    wait_for(lambda: not (set(_our_threads()) - before), timeout=10.0,
             what="dispatcher threads to end")


# ---------------------------------------------------------- subprocesses

def start_router_process(config_path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cauldron_zmq.router", "-c", config_path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=child_env())


def ping_router(cfg: Config, timeout: int = 200) -> Optional[Dict[str, Any]]:
    """The router's ping result, or None if it does not answer."""
    from cauldron_zmq.errors import TimeoutError as CzTimeout
    from cauldron_zmq.router import RouterClient
    context = zmq.Context()
    try:
        with RouterClient(cfg, timeout=timeout, context=context) as client:
            try:
                return client.ping()
            except CzTimeout:
                return None
    finally:
        context.term()


def router_request(cfg: Config, command: str, target: str = "", payload: Any = None,
                   timeout: int = 1000) -> Dict[str, Any]:
    from cauldron_zmq.router import RouterClient
    context = zmq.Context()
    try:
        with RouterClient(cfg, timeout=timeout, context=context) as client:
            return client.request(command, target, payload or {})
    finally:
        context.term()


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
    finally:
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def router_process(cfg: Config, tmp_path: Any, name: str = "router.toml") -> Iterator[subprocess.Popen]:
    """A ``python -m cauldron_zmq.router`` for the duration; waits until it answers."""
    proc = start_router_process(write_config(cfg, tmp_path / name))
    try:
        wait_for(lambda: proc.poll() is not None or ping_router(cfg), timeout=10.0,
                 what="the router process")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        yield proc
    finally:
        stop_process(proc, signal.SIGKILL)
