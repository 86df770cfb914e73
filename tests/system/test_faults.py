"""Faults, with real processes: what survives a SIGKILL, a SIGSTOP, a dead peer.

Each test starts routers, dispatchers and clients as real processes (or
threads where the fault does not need a process) on free loopback ports, and
injects one fault at a chosen moment:

* the router SIGKILLed mid-traffic and restarted (same state file, then a
  lost state file): clients keep working, dispatchers come back, same book;
* a dispatcher SIGKILLed inside a write hook and restarted: the waiting
  client gets an error (not a hang), persisted values are intact, monitors
  resume; a restart is recognised even before any heartbeat, and a request
  acknowledged before it fails at once;
* a client SIGKILLed while its write runs in a slow hook: the dispatcher
  finishes, drops the reply to the dead peer and serves others;
* subscribers that stop reading (a raw SUB that never reads, a SIGSTOPped
  client) while 200,000 broadcasts go out: bounded dispatcher memory, other
  subscribers get everything, the stopped client detects the loss and
  re-reads;
* instrument code calling set() faster than broadcasts can be sent: held back;
* a foreign process on the dispatcher's port pair: another pair, found by
  clients.

No test sleeps to wait for something (everything polls a condition with a
deadline) and no timing is asserted.  ``docs/reliability.rst`` lists what
each test shows.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import pytest
import zmq

from cauldron_zmq import DFW, ktl, protocol
from cauldron_zmq.config import Config, endpoint, load_config
from cauldron_zmq.errors import (CauldronError, DispatcherRestarted, DispatcherSilent,
                                 TimeoutError)
from cauldron_zmq.persist import persist_path
from cauldron_zmq.router import Router, RouterClient
from cauldron_zmq.testing import ServiceHarness, wait_until, write_test_config
from cauldron_zmq.testing import identify_pid
import process_support
from traffic_support import Traffic

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_client_threads_left")]


KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = 0

[keyword.MODE]
type = "enumerated"
enumerators = ["OFF", "ON"]
initial = "OFF"
"""

#: A dispatcher with hooks that let a test place a fault exactly.
FAULTY = textwrap.dedent('''
    import os, sys, threading
    from cauldron_zmq import DFW

    config, marker, name = sys.argv[1], sys.argv[2], sys.argv[3]

    class Slow(DFW.Integer):
        def write(self, value):              # tells the test it is in here, then hangs
            with open(marker, "w") as stream:
                stream.write(str(value))
            threading.Event().wait(60)

    class Burst(DFW.Integer):
        """Writing N makes COUNTER count up N times, as fast as it can be published."""
        def prewrite(self, value):
            return value                     # even when N is written twice
        def write(self, value):              # set() itself keeps pace with the I/O thread
            counter = self.service["COUNTER"]
            start = counter.value or 0
            for i in range(start + 1, start + value + 1):
                counter.set(i)

    def setup(s):
        Slow("SLOW", s, initial=0)
        DFW.Integer("KEPT", s, initial=0, persist=True)
        DFW.Integer("HAMMER", s, initial=0, persist=True)
        DFW.Integer("VALUE", s, initial=0)
        DFW.Integer("COUNTER", s, initial=0)
        Burst("BURST", s, initial=0)

    DFW.Service(name, config, setup=setup, values="native").serve_forever()
''')


# =============================================================================
# Helpers: processes, logs, the router's book
# =============================================================================

class Processes(process_support.Processes):
    """The base's children, plus dispatchers from keyword files and the FAULTY script."""

    def serve(self, service: str, keywords: Path, config_path: Path) -> subprocess.Popen:
        return self.spawn(["-m", "cauldron_zmq", "serve", service, str(keywords), "-c",
                           str(config_path)], f"{service}.log")

    def faulty(self, service: str, config_path: Path, marker: Path) -> subprocess.Popen:
        script = self.directory / "faulty.py"
        if not script.exists():
            script.write_text(FAULTY)
        return self.spawn([str(script), str(config_path), str(marker), service],
                          f"{service}.log")


procs = process_support.processes_fixture(Processes)


def sigkill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)


def router_answers(cfg: Config, pid: Optional[int] = None) -> bool:
    try:
        with RouterClient(cfg, timeout=200) as rc:
            got = rc.ping()["pid"]
    except CauldronError:
        return False
    return pid is None or got == pid


def book_pairs(cfg: Config) -> Set[Tuple[str, str, str, int, int]]:
    """(service, dispatcher, host, dispatch port, broadcast port) of every live entry."""
    with RouterClient(cfg, timeout=1000) as rc:
        entries = rc.list()["entries"]
    return {(e["service"], e["dispatcher"], e["host"], e["dispatch_port"], e["broadcast_port"])
            for e in entries if e["state"] == "live"}


def identify(cfg: Config, service: str) -> Optional[int]:
    """The pid of the registered dispatcher of ``service`` that answers, or None."""
    return identify_pid(cfg, service)


def wait_serving(cfg: Config, service: str, proc: subprocess.Popen,
                 timeout: float = 20.0) -> None:
    def up() -> bool:
        assert proc.poll() is None, f"{service} exited with status {proc.returncode}"
        return identify(cfg, service) == proc.pid
    wait_until(up, timeout, 0.02, f"{service} (pid {proc.pid}) serving")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise AssertionError(f"process {pid} has no VmRSS (exited?)")


def is_stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
        return stream.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


class Lines:
    """Lines a child prints on stdout, read with a deadline (never a blocking read)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line from pid {self.proc.pid} within {timeout} s")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"pid {self.proc.pid} closed its output "
                                         f"(status {self.proc.poll()})")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


# =============================================================================
# The router killed
# =============================================================================

def test_router_sigkilled_mid_traffic_and_restarted(tmp_path: Path, procs: Processes) -> None:
    state = tmp_path / "book.json"
    config_path = write_test_config(tmp_path, pairs=4,
                                    overrides={"zmq-router": {"state-file": str(state)}})
    cfg = load_config(config_path)
    kwfile = tmp_path / "kw.toml"
    kwfile.write_text(KEYWORDS)
    router = procs.router(config_path, "router-1.log")
    wait_until(lambda: router_answers(cfg, router.pid), 15, message="router")
    dispatchers = {name: procs.serve(name, kwfile, config_path) for name in ("alpha", "beta")}
    for name, proc in dispatchers.items():
        wait_serving(cfg, name, proc)
    book = book_pairs(cfg)
    assert {entry[0] for entry in book} == {"alpha", "beta"}

    with ktl.Service("alpha", config=cfg) as alpha, ktl.Service("beta", config=cfg) as beta:
        seen: List[str] = []
        mode = beta["MODE"]
        mode.callback(lambda kw: seen.append(kw["ascii"]))
        mode.monitor()
        traffic = Traffic([alpha, beta])
        traffic.start()
        try:
            traffic.progressed(50)

            # 1. SIGKILL: no goodbye, no final save
            sigkill(router)
            wait_until(lambda: all("will keep trying" in procs.log(f"{n}.log")
                                   for n in dispatchers), 10,
                       message="both dispatchers noticed the router is gone")
            traffic.progressed(100)                   # clients never needed it
            mode.write("ON")                           # broadcasts still flow
            wait_until(lambda: seen[-1:] == ["ON"], 5, message="monitor sees ON")

            # 2. restarted on the same state file: the same book at once ...
            router = procs.router(config_path, "router-2.log")
            wait_until(lambda: router_answers(cfg, router.pid), 15, message="router back")
            assert book_pairs(cfg) == book
            # ... and both dispatchers heartbeat it again
            wait_until(lambda: all(f"heartbeat from {n}/default" in procs.log("router-2.log")
                                   for n in dispatchers), 10, message="heartbeats")
            with ktl.Service("beta", config=cfg) as newcomer:   # new look-ups work
                assert newcomer["MODE"].read() == "ON"

            # 3. killed again and the state file lost: dispatchers register again,
            #    each on the pair it holds (prefer), so the book is the same
            sigkill(router)
            state.unlink()
            traffic.progressed(50)
            router = procs.router(config_path, "router-3.log")
            wait_until(lambda: router_answers(cfg, router.pid), 15, message="router back")
            wait_until(lambda: book_pairs(cfg) == book, 15, message="the same book again")
            assert "registered alpha/default" in procs.log("router-3.log")
            traffic.progressed(50)
            mode.write("OFF")
            wait_until(lambda: seen[-1:] == ["OFF"], 5, message="monitor sees OFF")
        finally:
            traffic.stop()
    assert traffic.errors == []
    assert traffic.ops >= 250
    for proc in dispatchers.values():
        assert proc.poll() is None


# =============================================================================
# A dispatcher killed inside a write
# =============================================================================

def test_dispatcher_sigkilled_during_a_write_and_restarted(tmp_path: Path,
                                                          procs: Processes) -> None:
    config_path = write_test_config(tmp_path, pairs=2)
    cfg = load_config(config_path)
    persisted = Path(persist_path(cfg.zmq.persist_dir, "faulty", "default"))

    def on_disk() -> Dict[str, Any]:
        try:
            data = json.loads(persisted.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v["value"] for k, v in data["keywords"].items()}

    router = Router(cfg).start()
    try:
        marker = tmp_path / "entered-1"
        first = procs.faulty("faulty", config_path, marker)
        wait_serving(cfg, "faulty", first)
        with ktl.Service("faulty", config=cfg, timeout=2.0) as svc, \
                ktl.Service("faulty", config=cfg) as other:
            assert svc["KEPT"].write(42) == "42"
            wait_until(lambda: on_disk().get("KEPT") == 42, 5, message="KEPT on disk")
            seen: List[str] = []
            value = svc["VALUE"]
            value.callback(lambda kw: seen.append(kw["ascii"]))
            value.monitor()

            # a persisted keyword written continuously while the kill happens
            acked: List[int] = []
            done = threading.Event()

            def hammering() -> None:
                n = 0
                while not done.is_set():
                    n += 1
                    try:
                        svc["HAMMER"].write(n, timeout=1.0)
                        acked.append(n)
                    except CauldronError:
                        pass                         # after the kill: expected
                    done.wait(0.002)                 # pace
            hammer = threading.Thread(target=hammering, name="hammer", daemon=True)
            hammer.start()
            try:
                wait_until(lambda: len(acked) >= 20 and on_disk().get("HAMMER", 0) >= 1, 10,
                           message="HAMMER written and persisted")
                task = svc["SLOW"].write(5, wait=False, timeout=3.0)
                wait_until(marker.exists, 10, message="the write hook entered")
                assert task.wait_acknowledged(5)
                sigkill(first)                        # inside the hook, mid-write
                assert task.wait(30), "the client is still waiting: a hang"
                assert task.status == "error"
                assert isinstance(task.error, (TimeoutError, ConnectionError)), task.error
                assert "acknowledged" in str(task.error)
            finally:
                done.set()
                hammer.join(30)
            assert not list(persisted.parent.glob("*.corrupt-*"))
            saved = on_disk()
            assert saved["KEPT"] == 42 and 1 <= saved["HAMMER"] <= max(acked) + 1

            second = procs.faulty("faulty", config_path, tmp_path / "entered-2")
            wait_serving(cfg, "faulty", second)
            assert svc["KEPT"].read() == "42"             # persisted values intact
            assert svc["HAMMER"].read(binary=True) == saved["HAMMER"]
            assert svc["SLOW"].read() == "0"              # the interrupted write never applied
            other["VALUE"].write(7)                       # monitors resume
            wait_until(lambda: seen[-1:] == ["7"] and value["connected"], 10,
                       message="the monitor sees the value written after the restart")
            assert svc["VALUE"].write(8) == "8"
            wait_until(lambda: seen[-1:] == ["8"], 5, message="and the next one")
    finally:
        router.stop()


# =============================================================================
# A client killed while its write runs
# =============================================================================

CLIENT = textwrap.dedent('''
    import sys
    from cauldron_zmq import ktl
    svc = ktl.Service(sys.argv[2], config=sys.argv[1], timeout=60)
    tasks = [svc["SLOW"].write(v, wait=False) for v in (5, 6, 7)]
    print("SENT", flush=True)
    tasks[-1].get()
''')


def test_client_sigkilled_mid_request(tmp_path: Path, procs: Processes,
                                      caplog: pytest.LogCaptureFixture) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(value: Any) -> None:
        entered.set()
        assert release.wait(30)

    def setup(service: Any) -> None:
        DFW.Integer("SLOW", service, initial=0, write=slow)
        DFW.Integer("OTHER", service, initial=0, write=lambda v: None)

    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    with ServiceHarness(setup, "victim", directory=tmp_path) as h:
        client = procs.spawn([str(script), str(h.config_path), "victim"], "client.log",
                             stdout=subprocess.PIPE, bufsize=0)
        assert Lines(client).next() == "SENT"
        assert entered.wait(15)
        sigkill(client)                       # the write to SLOW is in its hook; 6, 7 queued
        svc = h.client()
        assert svc["OTHER"].write(3) == "3"   # others are served meanwhile
        assert svc["SLOW"].read() == "0"
        release.set()                         # the hook returns; the reply has nowhere to go
        dispatcher = h.dispatcher
        wait_until(lambda: dispatcher["SLOW"].binary == 7, 10,
                   message="the dead client's queued writes done")
        wait_until(lambda: not dispatcher._executor._queues, 10,
                   message="the keyword's queue freed")
        wait_until(dispatcher._outgoing.empty, 5, message="nothing left to send")
        assert svc["SLOW"].write(8) == "8"    # the keyword is free for others
        assert svc["SLOW"].read() == "8"
        assert svc["OTHER"].read() == "3"
    assert not [r for r in caplog.records if "not sent" in r.getMessage()]


# =============================================================================
# Subscribers that stop reading
# =============================================================================

SLOW_CLIENT = textwrap.dedent('''
    import json, logging, sys, time
    from cauldron_zmq import ktl

    rereads = []                             # why the client re-read (debug log)
    class Catch(logging.Handler):
        def emit(self, record):
            if "re-reading COUNTER" in record.getMessage():
                rereads.append(record.getMessage())
    logger = logging.getLogger("cauldron_zmq.client")
    logger.addHandler(Catch())
    logger.setLevel(logging.DEBUG)

    svc = ktl.Service(sys.argv[2], config=sys.argv[1], timeout=10)
    kw = svc["COUNTER"]
    seen = []
    kw.callback(lambda k: seen.append(k["binary"]))
    kw.monitor()
    print("READY", flush=True)
    for line in sys.stdin:
        if line.startswith("wait"):
            target = int(line.split()[1])
            kw.wait(timeout=60, operator="==", value=target)
            deadline = time.monotonic() + 30
            while seen[-1:] != [target] and time.monotonic() < deadline:
                time.sleep(0.01)             # the callback thread catching up
        jumps = sum(1 for a, b in zip(seen, seen[1:]) if b is not None and a is not None
                    and b > a + 1)
        print(json.dumps({"value": kw["binary"], "broadcasts": kw["broadcasts"],
                          "callbacks": len(seen), "jumps": jumps, "rereads": rereads}),
              flush=True)
''')

BURST = 200_000       # broadcasts sent while the slow subscribers do not read
HWM = 20_000          # [zmq] hwm for this test: the PUB queue of each subscriber
#: What the dispatcher may grow by while BURST broadcasts go out and two
#: subscribers read nothing: the two queues that ZeroMQ fills up to HWM
#: messages (~400 bytes each: 16 MB together), plus slack for the allocator.
#: With hwm 1,000,000 instead, the same burst grew it by 97 MB.
RSS_BOUND_MB = 40.0


class Reader(threading.Thread):
    """A raw SUB that reads everything (RCVHWM 0) and checks the sequence."""

    def __init__(self, context: zmq.Context, address: str, topic: bytes,
                 keyword: str = "COUNTER") -> None:
        super().__init__(name="reader", daemon=True)
        self.keyword = keyword
        self.sock = context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(address)
        self.values: List[int] = []
        self.gaps = 0
        self.heartbeats = 0
        self.finished = threading.Event()

    def run(self) -> None:
        try:
            while not self.finished.is_set():
                if not self.sock.poll(50):
                    continue
                b = protocol.decode_broadcast(self.sock.recv_multipart())
                assert isinstance(b, protocol.Broadcast), b
                if b.is_heartbeat:
                    self.heartbeats += 1
                    continue
                if b.keyword != self.keyword:
                    continue
                value = b.payload["value"]
                if self.values and value != self.values[-1] + 1:
                    self.gaps += 1
                self.values.append(value)
        finally:
            self.sock.close(0)

    def stop(self) -> None:
        self.finished.set()
        self.join(10)


def test_slow_subscribers_do_not_grow_the_dispatcher(tmp_path: Path, procs: Processes) -> None:
    config_path = write_test_config(tmp_path, pairs=2, overrides={"zmq": {"hwm": HWM}})
    cfg = load_config(config_path)
    router = Router(cfg).start()
    context = zmq.Context()
    reader: Optional[Reader] = None
    stalled: Optional[zmq.Socket] = None
    try:
        dispatcher = procs.faulty("slow", config_path, tmp_path / "unused")
        wait_serving(cfg, "slow", dispatcher)
        with RouterClient(cfg) as rc:
            [entry] = rc.lookup("slow")["dispatchers"]
        pub = endpoint(entry["protocol"], entry["host"], entry["broadcast_port"], bind=False)

        reader = Reader(context, pub, protocol.service_prefix("slow"))
        reader.start()
        wait_until(lambda: reader.heartbeats > 0, 10, message="the reader subscribed")

        (tmp_path / "slow_client.py").write_text(SLOW_CLIENT)
        slow_client = procs.spawn([str(tmp_path / "slow_client.py"), str(config_path), "slow"],
                                  "slow_client.log", stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, bufsize=0)
        assert slow_client.stdin is not None
        lines = Lines(slow_client)
        assert lines.next() == "READY"

        with ktl.Service("slow", config=cfg, timeout=120) as svc:
            burst = svc["BURST"]

            def client_report(command: str = "report") -> Dict[str, Any]:
                slow_client.stdin.write(f"{command}\n".encode())
                return json.loads(lines.next(90))

            # warm up: the dispatcher at its working size, the slow client
            # connected and receiving broadcasts
            burst.write(20_000)
            wait_until(lambda: reader.values[-1:] == [20_000], 30, message="warm-up seen")
            assert client_report("wait 20000")["broadcasts"] > 0
            before = rss_mb(dispatcher.pid)

            # a raw SUB that never reads, with a tiny receive queue
            stalled = context.socket(zmq.SUB)
            stalled.setsockopt(zmq.LINGER, 0)
            stalled.setsockopt(zmq.RCVHWM, 100)
            stalled.setsockopt(zmq.SUBSCRIBE, protocol.service_prefix("slow"))
            stalled.connect(pub)
            assert stalled.poll(10_000), "the stalled SUB never got a heartbeat"
            stalled.recv_multipart()               # subscribed; it reads nothing more

            # what it re-read so far: counted before it stops, since on resuming it
            # may re-read at once (silent for longer than liveness: "answering again")
            # or at the next heartbeat (the gap), before any report could be asked for
            rereads = len(client_report()["rereads"])
            os.kill(slow_client.pid, signal.SIGSTOP)
            wait_until(lambda: is_stopped(slow_client.pid), 5, message="client stopped")
            try:
                burst.write(BURST)
                last = 20_000 + BURST
                wait_until(lambda: reader.values[-1:] == [last], 60,
                           message="the reader received the whole burst")
                after = rss_mb(dispatcher.pid)
            finally:
                os.kill(slow_client.pid, signal.SIGCONT)
            print(f"dispatcher VmRSS {before:.1f} MB -> {after:.1f} MB after {BURST} "
                  f"broadcasts with two stalled subscribers (hwm {HWM})")
            assert after - before < RSS_BOUND_MB
            # the reader was not slowed into losing anything
            assert reader.gaps == 0 and reader.values[0] == 1 and len(reader.values) == last

            # the stopped client resumes: it finds the gap and re-reads
            report = client_report(f"wait {last}")
            print("slow client:", report)
            assert report["value"] == last
            assert report["broadcasts"] < 20_000 + BURST   # it did miss some ...
            assert report["rereads"][rereads:], report     # ... knew it, and re-read:
            assert report["jumps"] >= 1                    # its callbacks see the jump
            assert svc["COUNTER"].read(binary=True) == last
        slow_client.stdin.close()
        assert dispatcher.poll() is None
    finally:
        if reader is not None:
            reader.stop()
        if stalled is not None:
            stalled.close(0)
        context.term()
        router.stop()


def test_a_producer_faster_than_the_io_thread_is_held_back(tmp_path: Path) -> None:
    """set() in a tight loop outruns publishing; the queue to the I/O thread stays
    bounded (it used to grow to ~1 million broadcasts, 350 MB, in 5 s) and nothing
    is lost on the way."""
    from cauldron_zmq.dispatcher import MAX_QUEUED
    cfg = load_config(write_test_config(tmp_path, overrides={"zmq-router": {"enable": False}}))
    n = 4 * MAX_QUEUED
    with DFW.Service("producer", cfg, setup=lambda s: DFW.Integer("C", s, initial=0)) as svc:
        context = zmq.Context()
        reader = Reader(context, svc.address["broadcast"], protocol.service_prefix("producer"),
                        keyword="C")
        reader.start()
        try:
            wait_until(lambda: reader.heartbeats > 0, 10, message="the reader subscribed")
            peak, kw, outgoing = 0, svc["C"], svc._outgoing
            for i in range(1, n + 1):
                kw.set(i)
                if i % 64 == 0:
                    peak = max(peak, outgoing.qsize())
            wait_until(lambda: reader.values[-1:] == [n], 30, message="every broadcast read")
            assert peak <= MAX_QUEUED + 64
            assert reader.gaps == 0 and len(reader.values) == n
        finally:
            reader.stop()
            context.term()


# =============================================================================
# A foreign process on our ports
# =============================================================================

def test_foreign_process_on_the_port_pair(tmp_path: Path) -> None:
    """The first pair's dispatch port is held: the dispatcher process gets the next
    pair, the router blocks the port (for a back-off: it is tried again later), and a
    ktl client finds the dispatcher on its new pair."""
    kwfile = tmp_path / "kw.toml"
    kwfile.write_text(KEYWORDS)
    squatter = socket.socket()
    try:
        with ServiceHarness(kwfile, "squat", subprocess=True, directory=tmp_path,
                            pairs=3) as h:
            h.stop_dispatcher()                      # unregistered; its pair stays reserved
            first = h.config.router.first_port
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT
            squatter.bind(("127.0.0.1", first))      # a foreign process takes our port
            squatter.listen(1)
            h.start_dispatcher()                     # our pair, taken: it asks for another
            with RouterClient(h.config) as rc:
                [entry] = rc.lookup("squat")["dispatchers"]
                assert entry["dispatch_port"] != first
                assert first in rc.list()["blocked"]
            with ktl.Service("squat", config=h.config) as svc:
                assert svc["COUNT"].write(4) == "4"
                assert svc["COUNT"].read() == "4"
                address = svc.dispatchers()[0]["address"]
                assert address.endswith(f":{entry['dispatch_port']}")
    finally:
        squatter.close()


# =============================================================================
# Restarts the client must recognise
# =============================================================================

@contextlib.contextmanager
def client_log(service: str) -> Iterator[List[str]]:
    """The messages a ktl.Service of ``service`` logs (debug included) meanwhile."""
    messages: List[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger(f"cauldron_zmq.client.{service}")
    handler, level = Catch(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def logged(messages: List[str], text: str, after: int = 0) -> bool:
    return any(text in m for m in messages[after:])


def test_acknowledged_request_fails_when_its_dispatcher_restarts(tmp_path: Path,
                                                                procs: Processes) -> None:
    """A long move's write, acknowledged, then its dispatcher killed and restarted: the
    client knows no answer can come and says so at once, not at the end of its 60 s."""
    config_path = write_test_config(tmp_path, pairs=2)
    cfg = load_config(config_path)
    router = Router(cfg).start()
    try:
        first = procs.faulty("restart", config_path, tmp_path / "entered-1")
        wait_serving(cfg, "restart", first)
        with client_log("restart") as log, \
                ktl.Service("restart", config=cfg, timeout=60) as svc:
            svc["VALUE"].monitor()
            wait_until(lambda: logged(log, "first heartbeat since connecting"), 5,
                       message="a heartbeat of the first dispatcher")
            task = svc["SLOW"].write(5, wait=False)           # a long move: 60 s allowed
            wait_until((tmp_path / "entered-1").exists, 10, message="the hook entered")
            assert task.wait_acknowledged(5)
            mark = len(log)
            sigkill(first)
            second = procs.faulty("restart", config_path, tmp_path / "entered-2")
            wait_serving(cfg, "restart", second)
            wait_until(lambda: logged(log, "dispatcher restarted", mark), 10,
                       message="the client saw the restart")
            assert task.wait(5.0), "still waiting for an answer that cannot come"
            # restarted within liveness: DispatcherRestarted; after it: went silent first
            assert task.status == "error" and isinstance(task.error, (DispatcherRestarted,
                                                                      DispatcherSilent))
            assert "may or may not have been applied" in str(task.error)
            assert svc["SLOW"].read() == "0"                  # it was not
    finally:
        router.stop()


def test_quick_restart_before_any_heartbeat_is_still_a_restart(tmp_path: Path,
                                                               procs: Processes) -> None:
    """A dispatcher that restarts before the client got any heartbeat from it must
    still count as restarted: the client used to take it for a first connection,
    keep the old sequence numbers, and its monitors missed the new dispatcher's
    changes until their seq passed the old one (here: the first write)."""
    config_path = write_test_config(tmp_path, pairs=2,
                                    overrides={"zmq": {"heartbeat": 1.0, "liveness": 3.0}})
    cfg = load_config(config_path)
    router = Router(cfg).start()
    context = zmq.Context()
    watcher = context.socket(zmq.SUB)
    try:
        first = procs.faulty("quick", config_path, tmp_path / "unused")
        wait_serving(cfg, "quick", first)
        with RouterClient(cfg) as rc:
            [entry] = rc.lookup("quick")["dispatchers"]
        watcher.setsockopt(zmq.LINGER, 0)
        watcher.setsockopt(zmq.SUBSCRIBE, protocol.topic("quick", ""))
        watcher.connect(endpoint(entry["protocol"], entry["host"], entry["broadcast_port"],
                                 bind=False))
        with client_log("quick") as log:
            # just after a heartbeat: the next one is a second away, and the client
            # below is created, fed and cut off before it
            assert watcher.poll(5000), "no heartbeat"
            watcher.recv_multipart()
            with ktl.Service("quick", config=cfg) as svc:
                seen: List[str] = []
                value = svc["VALUE"]
                value.callback(lambda kw: seen.append(kw["ascii"]))
                value.monitor()
                value.write(3)                            # seq 2 at the first dispatcher
                wait_until(lambda: seen[-1:] == ["3"], 5, message="monitor sees 3")
                assert not logged(log, "heartbeat"), "too slow: a heartbeat arrived"
                sigkill(first)
                second = procs.faulty("quick", config_path, tmp_path / "unused")
                wait_serving(cfg, "quick", second)
                wait_until(lambda: logged(log, "first heartbeat since connecting"), 10,
                           message="a heartbeat of the restarted dispatcher")
                assert svc["VALUE"].read() == "0"         # the client talks to the new one
                with ktl.Service("quick", config=cfg) as other:
                    other["VALUE"].write(7)               # seq 2 at the new dispatcher
                wait_until(lambda: seen[-1:] == ["7"], 3, message="monitor sees 7")
    finally:
        watcher.close(0)
        context.term()
        router.stop()
