"""Every queue of the dispatcher is bounded (issue 10, item 5).

* writes (and reads that run a hook) waiting behind a slow hook: at most
  ``[zmq] max-queued-writes`` per keyword, the rest refused at once with the
  code ``busy`` (``KeywordBusy`` on the client), and the dispatcher's memory
  stays flat under a flood of them (a real dispatcher process, its RSS read
  from /proc with a generous margin);
* broadcasts queued for the I/O thread: ``set()`` waits on a condition
  (no polling loop) while the queue is full, and resumes when it drains.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import zmq

from cauldron_zmq import DFW, protocol
from cauldron_zmq.dispatcher import io as dispatcher_io
from cauldron_zmq.errors import KeywordBusy
from cauldron_zmq.testing import ServiceHarness, _child_env, wait_until

pytestmark = pytest.mark.timeout(120)

LIMIT = 20
SLOW_DISPATCHER = textwrap.dedent("""
    import json, sys, time
    from cauldron_zmq import DFW

    class Slow(DFW.String):
        def write(self, value):             # a stage that takes half a second per move
            time.sleep(0.5)

    def setup(svc):
        Slow("SLOW", svc, initial="")
        DFW.Integer("FAST", svc, initial=0)

    def ready(svc):
        print("ready " + json.dumps(svc.address), flush=True)

    DFW.Service("bounds", config=sys.argv[1], setup=setup).serve_forever(ready=ready)
""")


def vmrss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.fixture
def slow_dispatcher(tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """A router in this process and the SLOW dispatcher as a child process."""
    harness = ServiceHarness(None, "bounds", config={"zmq": {"max-queued-writes": LIMIT}})
    script = tmp_path / "slow_dispatcher.py"
    script.write_text(SLOW_DISPATCHER, encoding="utf-8")
    log_path = tmp_path / "dispatcher.log"
    proc = None
    try:
        harness.start_router()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, str(script), str(harness.config_path)],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=_child_env())

        def address() -> Any:
            assert proc is not None and proc.poll() is None, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if line.startswith("ready "):
                    return json.loads(line[6:])
            return None
        found = wait_until(address, 30, 0.02, "the slow dispatcher serving")
        yield {"proc": proc, "address": found, "harness": harness, "log": log_path}
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        harness.close()


def _flood(address: str, count: int, value: str, window: int = 500) -> Dict[str, int]:
    """``count`` writes to SLOW from a raw DEALER; the first answer of each.

    At most ``window`` requests are unanswered at a time, so what is measured
    is the dispatcher's own queues, not libzmq's receive buffer (bounded by
    the high-water mark, and as large as the sender's lead).
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    first: Dict[str, str] = {}
    codes: Dict[str, int] = {}

    def drain(timeout_ms: int = 0) -> None:
        while sock.poll(timeout_ms):
            reply = protocol.decode_reply(sock.recv_multipart())
            assert isinstance(reply, protocol.Reply), reply
            if reply.id in first:
                continue                       # a final answer after an ack
            kind = reply.payload["code"] if reply.status == "error" else reply.status
            first[reply.id] = kind
            codes[kind] = codes.get(kind, 0) + 1
            timeout_ms = 0
    try:
        for i in range(count):
            sock.send_multipart(protocol.encode_request(protocol.request(
                "write", "SLOW", {"value": f"{i} {value}"}, id=f"flood-{i}")))
            while i + 1 - len(first) > window:
                drain(100)
        deadline = time.monotonic() + 60
        while len(first) < count:
            assert time.monotonic() < deadline, f"only {len(first)} of {count} answered: {codes}"
            drain(100)
    finally:
        sock.close(0)
        ctx.term()
    return codes


def test_a_flood_of_writes_to_a_slow_keyword_is_refused_and_memory_stays_flat(
        slow_dispatcher: Dict[str, Any]) -> None:
    proc, address = slow_dispatcher["proc"], slow_dispatcher["address"]["dispatch"]
    value = "x" * 2000
    _flood(address, 1000, value)                # warm up: allocations settle
    before = vmrss_kb(proc.pid)
    t0 = time.monotonic()
    codes = _flood(address, 20000, value)
    elapsed = time.monotonic() - t0
    after = vmrss_kb(proc.pid)
    # Without the bound every write queued: ~6 kB each, over 100 MB for these.
    assert after - before < 40 * 1024, (before, after, codes)
    # At most LIMIT waiting plus the one running, plus one per half second of flooding.
    accepted = codes.get("ack", 0)
    assert accepted <= LIMIT + 1 + 2 * elapsed + 5, (codes, elapsed)
    assert codes.get("busy", 0) >= 20000 - accepted and set(codes) <= {"ack", "busy"}, codes
    # Still serving, and a ktl client gets a clear error while the queue is full.
    svc = slow_dispatcher["harness"].client()
    assert svc["FAST"].write(5) == "5"
    burst = [svc["SLOW"].write(f"more {i}", wait=False) for i in range(LIMIT + 5)]
    for task in burst:
        assert task.wait_acknowledged(10)
    refused = [task.error for task in burst if task.done()]
    assert refused and all(isinstance(exc, KeywordBusy) for exc in refused), refused
    message = str(refused[0])
    assert "bounds.SLOW" in message and "busy" in message and "max-queued-writes" in message
    assert refused[0].code == "busy"


def test_client_gets_busy_at_the_limit_and_writes_again_after(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Event()
    done: List[str] = []

    class Gate(DFW.String):
        def write(self, value: str) -> None:
            started.set()
            release.wait(20)
            done.append(value)

    reading = threading.Event()

    class SlowRead(DFW.Integer):
        def read(self) -> int:
            reading.set()
            release.wait(20)
            return 1

    def setup(svc: Any) -> None:
        Gate("GATE", svc, initial="")
        SlowRead("SENSOR", svc, initial=0)

    with ServiceHarness(setup, "busy", config={"zmq": {"max-queued-writes": 2}}) as harness:
        svc = harness.client(timeout=30)
        gate = svc["GATE"]
        tasks = [gate.write("a", wait=False)]
        assert started.wait(10)
        tasks += [gate.write(v, wait=False) for v in ("b", "c")]
        for task in tasks:
            assert task.wait_acknowledged(10)
        with pytest.raises(KeywordBusy) as info:
            gate.write("d")
        assert "busy.GATE is busy" in str(info.value)
        assert "2 request(s) already wait" in str(info.value)
        # Reads that run a hook are bounded the same way.
        sensor = svc["SENSOR"]
        reads = [sensor.read(wait=False)]
        assert reading.wait(10)                   # running: no longer waiting in the queue
        reads += [sensor.read(wait=False) for _ in range(2)]
        for task in reads:
            assert task.wait_acknowledged(10)
        with pytest.raises(KeywordBusy):
            sensor.read()
        release.set()
        for task in tasks + reads:
            task.get(20)
        assert done == ["a", "b", "c"]            # what was accepted was applied, in order
        assert gate.write("e") == "e"             # and the keyword takes writes again


def test_set_waits_on_a_condition_while_the_broadcast_queue_is_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer faster than the I/O thread blocks (no 1 ms polling) and resumes."""
    monkeypatch.setattr(dispatcher_io, "MAX_QUEUED", 50)
    sleeps: List[float] = []                  # time.sleep() calls made by set()'s caller
    real_sleep = time.sleep

    def recorded_sleep(seconds: float) -> None:
        if threading.current_thread().name == "producer":
            sleeps.append(seconds)
        real_sleep(seconds)
    monkeypatch.setattr(time, "sleep", recorded_sleep)
    gate = threading.Event()
    real_publish = dispatcher_io.IOThread._publish

    def gated_publish(io: Any, keyword: Any, snap: Any) -> None:
        if snap.seq > 1:                      # the producer's: hold the I/O thread there
            gate.wait(20)                     # (bind and stop share its mailbox since #12)
        real_publish(io, keyword, snap)
    monkeypatch.setattr(dispatcher_io.IOThread, "_publish", gated_publish)

    with ServiceHarness(lambda s: DFW.Integer("COUNT", s, initial=0), "room") as harness:
        svc = harness.dispatcher
        count = svc["COUNT"]
        finished = threading.Event()

        def produce() -> None:
            for i in range(1, 501):
                count.set(i)
            finished.set()
        producer = threading.Thread(target=produce, daemon=True, name="producer")
        producer.start()
        wait_until(lambda: svc._io._room_waiters == 1, 10, message="set() waiting for room")
        assert not finished.is_set()
        assert svc._outgoing.qsize() <= 50 + 1
        gate.set()                                 # the I/O thread drains: set() resumes
        assert finished.wait(20)
        producer.join(5)
        assert count.binary == 500
    assert sleeps == []                        # the old loop slept 1 ms at a time
