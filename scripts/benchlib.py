"""The machinery of ``scripts/bench``: processes, roles, measurements, report.

Not part of the package: nothing here is imported by ``cauldron_zmq``.  The
bench runs this project and bare pyzmq side by side, in the same run, on
loopback, and reports each figure with its ratio to the bare one.
``docs/benchmarks.rst`` says what is measured and how.

Subprocess roles (``scripts/bench --role NAME ...``):

* ``echo``: the bare server.  A ROUTER that answers every request with reply
  frames captured beforehand from the real server (same sizes, request id
  copied), and a PUB that publishes, after a reply, the broadcast the real
  server would have published, plus ``prime``/``burst`` commands for the
  broadcast measures.  No decoding, no JSON: the floor set by pyzmq.
* ``dispatcher``: a ``DFW.Service`` with the bench's keywords, including
  ``BURST``, whose write hook calls ``set()`` N times on a counter keyword,
  so broadcasts are driven from inside the dispatcher process.
* ``subs``: the pool of subscribers (a process each, forked from one; each
  with a bare SUB socket, and a ``ktl.Service`` during a project run),
  steered by the bench over a DEALER.
* ``services``: opens 50 ``ktl.Service`` objects and reports what they added.

For the array measure the echo server sends the request's raw frame back in
its reply and its broadcast, as the dispatcher sends the array it stored.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "scripts", "bench")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

VERSION = b"CZMQ1"
SERVICE = "bench"            # the bench dispatcher's service
BARE_SERVICE = "bare0"       # topics of the bare publisher (same length as SERVICE)
RECOVERY_SERVICE = "recov"
MEMORY_SERVICE = "memsvc"
SUBSCRIBERS = 10
COUNTERS = 64                # counted keywords C0000..C0063: one per broadcast run
WARMUP = 200
BLOCK = 100                  # operations per block when interleaving measures
SECTIONS = ("startup", "memory", "router", "roundtrip", "aio", "concurrency", "broadcast",
            "services", "recovery", "array", "replicas")
SERVICES_OPENED = 50         # ktl.Service objects one process opens (section services)
CONCURRENT_THREADS = 8       # threads reading at once (section concurrency)
ARRAY_ELEMENTS = 2 * 1024 * 1024     # doubles: a 16 MiB array
ARRAY_LIMIT = 17 * 1024 * 1024       # [zmq] max-message-size: the array and room to spare

# A bare pyzmq ROUTER "echo" script: what start-up time and memory compare
# against.  It imports zmq and nothing else.
BARE_ECHO = textwrap.dedent("""
    import sys, zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:%s" % sys.argv[1])
    while True:
        f = sock.recv_multipart()
        sock.send_multipart([f[0], b"CZMQ1", f[2], b"ok", b"{}"])
""")


class BenchError(RuntimeError):
    """Something the bench needs did not happen (a process died, a wait expired)."""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# =============================================================================
# Processes
# =============================================================================

def child_env() -> Dict[str, str]:
    """Children import this checkout's cauldron_zmq and no configuration from the user."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("CAULDRON_ZMQ_CONFIG", None)
    return env


def console_script(name: str, module: str) -> List[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(path, os.X_OK):
        return [path]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


class Processes:
    """Every subprocess the bench starts: each in its own process group, all killed at the end."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._procs: List[subprocess.Popen] = []
        self._serial = 0
        self.started: List[int] = []      # pids of every process started, for the report

    def spawn(self, name: str, cmd: Sequence[str]) -> subprocess.Popen:
        self._serial += 1
        path = os.path.join(self.directory, f"{self._serial:02d}-{name}.log")
        with open(path, "wb") as out:
            proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=child_env(),
                                    cwd=self.directory, start_new_session=True)
        proc.log_path = path          # type: ignore[attr-defined]
        proc.bench_name = name        # type: ignore[attr-defined]
        self._procs.append(proc)
        self.started.append(proc.pid)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Signal the process group; SIGKILL it if it is still there after ``timeout``.

        The group is only signalled while its leader is not reaped, so its id
        cannot have been reused by a process that is not ours.
        """
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(5)

    def stop(self, proc: subprocess.Popen, timeout: float = 3.0) -> None:
        self.kill(proc, signal.SIGTERM, timeout)

    def close(self) -> None:
        for proc in reversed(self._procs):
            try:
                self.stop(proc, 2.0)
            except Exception:  # noqa: BLE001 - clean up the others regardless
                pass
        self._procs.clear()

    @staticmethod
    def tail(proc: subprocess.Popen, lines: int = 15) -> str:
        try:
            with open(proc.log_path, "rb") as stream:   # type: ignore[attr-defined]
                text = stream.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_for_log(self, proc: subprocess.Popen, pattern: str, timeout: float) -> "re.Match[str]":
        """Until the process's output matches ``pattern``; BenchError if it dies or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with open(proc.log_path, "rb") as stream:   # type: ignore[attr-defined]
                match = regex.search(stream.read().decode("utf-8", "replace"))
            if match:
                return match
            if proc.poll() is not None:
                raise BenchError(f"{proc.bench_name} exited with status {proc.returncode}:\n"  # type: ignore[attr-defined]
                                 f"{self.tail(proc)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.bench_name} not ready within {timeout} s:\n"  # type: ignore[attr-defined]
                                 f"{self.tail(proc)}")
            time.sleep(0.01)


def vmrss_kb(pid: int) -> int:
    """Resident memory of a process (VmRSS from /proc/PID/status), in kB."""
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


# =============================================================================
# Measuring
# =============================================================================

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, int(math.ceil(q / 100.0 * len(ordered))))
    return ordered[min(rank, len(ordered)) - 1]


def interleaved(ops: Dict[str, Callable[[], Any]], count: int, block: int = BLOCK,
                warmup: int = WARMUP) -> Dict[str, List[float]]:
    """Latencies (us) of ``count`` calls of each op, run in alternating blocks.

    Interleaving puts this project and its bare baseline under the same
    background load (the machine is shared), so their ratio is steadier than
    either figure.
    """
    for op in ops.values():
        for _ in range(_warmups(count, warmup)):
            op()
    out: Dict[str, List[float]] = {name: [] for name in ops}
    clock = time.perf_counter_ns
    for n in _blocks(count, block):
        for name, op in ops.items():
            lat = out[name]
            for _ in range(n):
                t0 = clock()
                op()
                lat.append((clock() - t0) / 1000.0)
    return out


async def interleaved_async(ops: Dict[str, Callable[[], Awaitable[Any]]], count: int,
                            block: int = BLOCK, warmup: int = WARMUP) -> Dict[str, List[float]]:
    """:func:`interleaved` for asyncio: each op returns an awaitable, awaited one at a time."""
    for op in ops.values():
        for _ in range(_warmups(count, warmup)):
            await op()
    out: Dict[str, List[float]] = {name: [] for name in ops}
    clock = time.perf_counter_ns
    for n in _blocks(count, block):
        for name, op in ops.items():
            lat = out[name]
            for _ in range(n):
                t0 = clock()
                await op()
                lat.append((clock() - t0) / 1000.0)
    return out


def _warmups(count: int, warmup: int) -> int:
    return min(warmup, max(5, count // 5))


def _blocks(count: int, block: int) -> List[int]:
    """The size of each block of ``count`` operations: ``block`` each, the rest last."""
    return [min(block, count - done) for done in range(0, count, block)]


def latency(lat: Sequence[float]) -> Dict[str, float]:
    return {"count": len(lat), "median_us": statistics.median(lat),
            "p99_us": percentile(lat, 99), "ops_per_s": len(lat) / (sum(lat) / 1e6)}


class RawDealer:
    """The bare client: pre-encoded request frames, a DEALER, nothing else."""

    def __init__(self, context: zmq.Context, address: str, hwm: int = 1000) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.connect(address)

    def round_trip(self, frames: List[bytes], timeout_ms: int = 10000) -> List[bytes]:
        self.sock.send_multipart(frames)
        if not self.sock.poll(timeout_ms):
            raise BenchError("no answer within %d ms" % timeout_ms)
        return self.sock.recv_multipart()

    def final(self, frames: List[bytes], timeout_ms: int = 60000) -> List[bytes]:
        """A round trip that skips the dispatcher's ``ack``."""
        self.sock.send_multipart(frames)
        deadline = time.monotonic() + timeout_ms / 1000.0
        while True:
            remaining = int((deadline - time.monotonic()) * 1000)
            if remaining <= 0 or not self.sock.poll(remaining):
                raise BenchError("no final answer within %d ms" % timeout_ms)
            reply = self.sock.recv_multipart()
            if reply[2] != b"ack":
                return reply

    def close(self) -> None:
        self.sock.close(linger=0)


def request(command: str, target: str = "", payload: Any = None, raw: Optional[bytes] = None,
            rid: Optional[str] = None) -> List[bytes]:
    from cauldron_zmq import protocol
    return protocol.encode_request(protocol.request(command, target, {} if payload is None
                                                    else payload, raw=raw, id=rid))


def ping_until_answer(context: zmq.Context, address: str, deadline: float,
                      proc: Optional[subprocess.Popen] = None) -> float:
    """Monotonic time of the first answer to a ping at ``address``.

    The DEALER reconnects every 2 ms, so the answer comes within a few ms of
    the server binding; the ping is re-sent every 100 ms in case it was lost.
    """
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 2)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
    sock.connect(address)
    frames = request("ping", rid="bench-ping")
    try:
        while True:
            sock.send_multipart(frames)
            resend = time.monotonic() + 0.1
            while time.monotonic() < resend:
                if sock.poll(2):
                    sock.recv_multipart()
                    return time.monotonic()
                if proc is not None and proc.poll() is not None:
                    raise BenchError(f"{proc.bench_name} exited with status "  # type: ignore[attr-defined]
                                     f"{proc.returncode}:\n{Processes.tail(proc)}")
            if time.monotonic() > deadline:
                raise BenchError(f"nothing answered a ping at {address}")
    finally:
        sock.close(0)


# =============================================================================
# Subprocess roles
# =============================================================================

def role_echo(port: int, pub_port: int, canned_path: str, hwm: int) -> None:
    """The bare server (see the module docstring).  Canned replies are keyed by (command, target)."""
    with open(canned_path) as stream:
        data = json.load(stream)
    canned: Dict[Tuple[bytes, bytes], Tuple[List[bytes], Optional[List[bytes]]]] = {}
    echo_raw = set()
    for row in data["replies"]:
        reply = [row["status"].encode(), row["payload"].encode()]
        pub = [part.encode("latin-1") for part in row["pub"]] if row.get("pub") else None
        canned[(row["command"].encode(), row["target"].encode())] = (reply, pub)
        if row.get("echo_raw"):
            echo_raw.add((row["command"].encode(), row["target"].encode()))
    burst_sample = json.loads(data["burst_payload"])
    default = ([b"ok", b"{}"], None)
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.bind(f"tcp://127.0.0.1:{port}")
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, hwm)
    pub.bind(f"tcp://127.0.0.1:{pub_port}")
    print("echo ready", flush=True)
    try:
        while True:
            f = sock.recv_multipart()
            reply, broadcast = canned.get((f[3], f[4]), default)
            if reply is default[0]:
                command = f[3]
                if command == b"quit":
                    sock.send_multipart([f[0], VERSION, f[2], b"ok", b"{}"])
                    break
                if command == b"prime":                      # target: the topic
                    pub.send_multipart([f[4], VERSION, b"{}"])
                elif command == b"burst":                    # target: topic, payload: count
                    _bare_burst(pub, f[4], burst_sample, int(f[5]))
            if (f[3], f[4]) in echo_raw:          # the array: its frame goes back out, twice
                sock.send_multipart([f[0], VERSION, f[2]] + reply + [f[6]])
                pub.send_multipart(broadcast + [f[6]])
                continue
            sock.send_multipart([f[0], VERSION, f[2]] + reply)
            if broadcast is not None:
                pub.send_multipart(broadcast)
    finally:
        sock.close(linger=200)
        pub.close(linger=0)
        context.term()


def _bare_burst(pub: zmq.Socket, topic: bytes, sample: Dict[str, Any], count: int) -> None:
    """Bare PUB with JSON: the dispatcher's broadcast payload, values 1..count, encoded per message.

    A dispatcher encodes every broadcast it sends, so the bare publisher does
    too, with the fields the dispatcher sends and as fast as the stdlib
    allows: compact, with the C encoder built once (as ``protocol.wire``
    does; ``JSONEncoder.encode`` builds it on every call, which made this
    publisher, not the subscriber, the bottleneck of a one-subscriber run).
    """
    payload = dict(sample)
    dumps = _fast_json_encoder()
    send = pub.send_multipart
    wall = time.time
    gseq = int(payload.get("gseq", 0))
    for i in range(1, count + 1):
        payload["value"], payload["ascii"], payload["time"] = i, str(i), wall()
        payload["seq"], payload["gseq"] = i, gseq + i
        send([topic, VERSION, dumps(payload).encode()])


def _fast_json_encoder() -> Callable[[Any], str]:
    """Compact JSON of plain dicts, by the stdlib's C encoder made once (else JSONEncoder)."""
    try:
        from json.encoder import c_make_encoder, encode_basestring
    except ImportError:                                   # pragma: no cover - CPython has it
        c_make_encoder = None
    if c_make_encoder is None:
        return json.JSONEncoder(separators=(",", ":")).encode
    encode = c_make_encoder(None, None, encode_basestring, None, ":", ",", False, False, False)
    return lambda obj: "".join(encode(obj, 0))


def role_dispatcher(config_path: str, service: str) -> None:
    """The bench dispatcher: round-trip keywords, PRIME, BURST and counters."""
    from cauldron_zmq import DFW

    class Burst(DFW.String):
        """Writing "C0003 20000" sets C0003 20000 times, from this (worker) thread."""

        def write(self, value: str) -> None:
            name, count = value.split()[:2]
            counter = self.service[name]
            start = counter.value or 0
            for i in range(start + 1, start + int(count) + 1):
                counter.set(i)

    def setup(svc: Any) -> None:
        for name in ("READV", "WSAME", "WCHG"):
            DFW.Double(name, svc, initial=1.5)
        DFW.Integer("PRIME", svc, initial=0)
        DFW.DoubleArray("ARRAY", svc, initial=[0.0])
        Burst("BURST", svc, initial="idle")
        for i in range(COUNTERS):
            DFW.Integer(f"C{i:04d}", svc, initial=0)

    def ready(svc: Any) -> None:
        print("bench dispatcher ready " + json.dumps(svc.address), flush=True)

    DFW.Service(service, config=config_path, setup=setup, values="native",
                start=False).serve_forever(ready=ready)


class Tally:
    """What one subscriber was shown in a run: which of the values 1..n, and the last one.

    The counted keyword goes 1, 2, ... n.  ``received`` is how many distinct
    values of 1..n were shown, in whatever order (a client that re-reads
    after a suspected loss may show a newer value before older broadcasts
    still queued; those arrive all the same); ``last`` is the value shown
    last, which must be n: the final value, delivered and not overwritten.
    ``shown`` counts every value shown (repeats too), ``behind`` those below
    one shown before them.
    """

    __slots__ = ("n", "seen", "last", "top", "shown", "behind", "t_first", "t_last")

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen: set = set()
        self.last: Any = None
        self.top = 0
        self.shown = self.behind = 0
        self.t_first = self.t_last = 0.0

    @property
    def received(self) -> int:
        return len(self.seen)

    def add(self, value: Any, now: float) -> None:
        self.last = value
        self.shown += 1
        if not isinstance(value, int):
            return
        if value < self.top:
            self.behind += 1
        else:
            self.top = value
        if 0 < value <= self.n and value not in self.seen:
            self.seen.add(value)
            self.t_last = now
            if len(self.seen) == 1:
                self.t_first = now

    def finished(self, now: float, deadline: float, idle: float) -> bool:
        """All arrived, or nothing new came for ``idle`` s, or time is up."""
        return (len(self.seen) >= self.n or now > deadline
                or bool(self.seen and now - self.t_last > idle))

    def result(self) -> Dict[str, Any]:
        return {"received": len(self.seen), "last": self.last, "shown": self.shown,
                "behind": self.behind, "t_first": self.t_first, "t_last": self.t_last}


class RawRun:
    """A run read by the bare SUB: subscribe to the prime and counted topics, JSON-decode each.

    Decoding each payload and taking its ``value`` is what any client does
    with a broadcast, so the bare baseline does it too ("bare PUB/SUB with JSON").
    """

    def __init__(self, msg: Dict[str, Any], sub: zmq.Socket) -> None:
        self.sub = sub
        self.prime = msg["prime"].encode("latin-1")
        self.topic = msg["topic"].encode("latin-1")
        self.tally = Tally(int(msg["n"]))
        self.primed = False
        sub.setsockopt(zmq.SUBSCRIBE, self.prime)
        sub.setsockopt(zmq.SUBSCRIBE, self.topic)

    def take(self, frames: List[bytes], now: float) -> None:
        if frames[0] == self.topic:
            self.tally.add(json.loads(frames[2])["value"], now)
        elif frames[0] == self.prime:
            self.primed = True

    def ready(self) -> bool:
        return self.primed

    def finished(self, now: float, deadline: float, idle: float) -> bool:
        return self.tally.finished(now, deadline, idle)

    def result(self) -> Dict[str, Any]:
        return self.tally.result()

    def close(self) -> None:
        self.sub.setsockopt(zmq.UNSUBSCRIBE, self.prime)
        self.sub.setsockopt(zmq.UNSUBSCRIBE, self.topic)


class KtlRun:
    """A run read by a ``ktl.Service`` of this process: a callback on the counted keyword.

    The Service is opened for the run and shut down after it, so the
    subscribers that sit a run out receive nothing (as the bare SUBs, which
    are subscribed to nothing then).  Ready once the callback on ``PRIME``
    has seen two values of this run: at least one of them came by broadcast
    (the client re-reads once when its SUB connects), so the subscription
    has reached the dispatcher.
    """

    def __init__(self, msg: Dict[str, Any]) -> None:
        from cauldron_zmq import ktl
        self.tally = Tally(int(msg["n"]))
        self.lock = threading.Lock()
        self.primes: set = set()
        self.resyncs: List[str] = []          # why the client re-read (a possible loss)
        threshold = int(msg["threshold"])
        clock = time.monotonic
        self.svc = ktl.Service(msg["service"], config=msg["config"])
        try:
            self.svc.add_loss_listener(lambda why, _restarted: self.resyncs.append(why))
            counter, prime = self.svc[msg["counter"]], self.svc["PRIME"]

            def on_count(kw: Any) -> None:
                with self.lock:
                    self.tally.add(kw["binary"], clock())

            def on_prime(kw: Any) -> None:
                value = kw["binary"]
                if isinstance(value, int) and value >= threshold:
                    with self.lock:
                        self.primes.add(value)

            counter.callback(on_count)
            counter.monitor(prime=False)
            prime.callback(on_prime)
            prime.monitor(prime=False)
        except BaseException:
            self.svc.shutdown()
            raise

    def take(self, frames: List[bytes], now: float) -> None:
        pass                                  # the bare SUB is not part of this run

    def ready(self) -> bool:
        with self.lock:
            return len(self.primes) >= 2

    def finished(self, now: float, deadline: float, idle: float) -> bool:
        with self.lock:
            return self.tally.finished(now, deadline, idle)

    def result(self) -> Dict[str, Any]:
        with self.lock:
            return dict(self.tally.result(), resyncs=list(self.resyncs))

    def close(self) -> None:
        self.svc.shutdown()


def role_sub(control: str, publishers: List[str], hwm: int, index: int) -> None:
    """One subscriber of the pool.  Idle (subscribed to nothing) until told to run.

    A run (``kind`` ``raw``: the bare SUB, JSON-decoding; ``ktl``: a
    ``ktl.Service`` with a callback): subscribe to the prime and counted
    topics; say ``ready`` once primed (the subscription has reached the
    publisher); count the counted keyword's values until all arrived, or
    nothing came for ``idle`` s, or the deadline; report; unsubscribe.
    """
    context = zmq.Context()
    ctl = context.socket(zmq.DEALER)
    ctl.setsockopt(zmq.LINGER, 200)
    ctl.setsockopt(zmq.IDENTITY, f"sub{index}".encode())
    ctl.connect(control)
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, hwm)
    for address in publishers:
        sub.connect(address)
    poller = zmq.Poller()
    poller.register(ctl, zmq.POLLIN)
    poller.register(sub, zmq.POLLIN)
    ctl.send_json({"op": "hello", "index": index, "pid": os.getpid()})
    run: Any = None
    msg: Dict[str, Any] = {}
    said_ready = False
    deadline = 0.0
    NB = zmq.NOBLOCK
    clock = time.monotonic
    try:
        while True:
            events = dict(poller.poll(50 if run is None else 5))
            if ctl in events:
                msg = ctl.recv_json()
                if msg["op"] == "quit":
                    return
                said_ready, deadline = False, clock() + float(msg["timeout"])
                try:
                    run = RawRun(msg, sub) if msg["kind"] == "raw" else KtlRun(msg)
                except Exception as exc:  # noqa: BLE001 - the bench says why and stops
                    ctl.send_json({"op": "error", "index": index, "message": repr(exc)})
                    run = None
            if sub in events:
                while True:
                    try:
                        frames = sub.recv_multipart(NB)
                    except zmq.Again:
                        break
                    if run is not None:
                        run.take(frames, clock())
            if run is None:
                continue
            if not said_ready and run.ready():
                said_ready = True
                ctl.send_json({"op": "ready", "index": index})
            if run.finished(clock(), deadline, float(msg["idle"])):
                ctl.send_json(dict(run.result(), op="result", index=index))
                run.close()
                run = None
    finally:
        if run is not None:
            run.close()
        ctl.close()
        sub.close()
        context.term()


def role_subs(control: str, publishers: List[str], hwm: int, count: int) -> None:
    """The pool of ``count`` subscribers: this process and ``count - 1`` forks of it.

    ``cauldron_zmq.ktl`` is imported once, before forking (no thread and no
    ZeroMQ context exists yet, so the forks are clean), instead of once per
    subscriber: on two CPUs ten imports take longer than the quick run can
    spare.  All of them share this process's group, which the bench signals.
    """
    from cauldron_zmq import ktl  # noqa: F401 - imported here, shared by the forks
    children = []
    for index in range(1, count):
        pid = os.fork()
        if pid == 0:                              # a subscriber: never back into the parent's code
            status = 1
            try:
                role_sub(control, publishers, hwm, index)
                status = 0
            except KeyboardInterrupt:
                status = 0
            finally:
                os._exit(status)
        children.append(pid)
    try:
        role_sub(control, publishers, hwm, 0)
    finally:
        for pid in children:
            os.waitpid(pid, 0)


def run_role(argv: List[str]) -> None:
    role, args = argv[0], argv[1:]
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # clean exit on SIGTERM
    try:
        if role == "echo":
            role_echo(int(args[0]), int(args[1]), args[2], int(args[3]))
        elif role == "dispatcher":
            role_dispatcher(args[0], args[1])
        elif role == "subs":
            role_subs(args[0], json.loads(args[1]), int(args[2]), int(args[3]))
        elif role == "services":
            role_services(args[0], args[1], int(args[2]))
        else:
            raise SystemExit(f"unknown role {role!r}")
    except KeyboardInterrupt:
        pass


# =============================================================================
# The environment: configuration, shared servers
# =============================================================================

class Env:
    """Temporary directory, configuration and the servers several sections share.

    Servers are started on first use: the router (``Cauldron-router-zmq``),
    the bench dispatcher, the bare echo server and the subscriber pool.
    """

    def __init__(self, quick: bool) -> None:
        from cauldron_zmq.config import config_from_mapping
        from cauldron_zmq.testing import free_port, free_ports
        self.quick = quick
        self._tmp = tempfile.TemporaryDirectory(prefix="cauldron-bench-")
        self.dir = self._tmp.name
        self.procs = Processes(self.dir)
        self.context = zmq.Context()
        self.free_port = free_port
        self.free_ports = free_ports
        router_port = free_port()
        first = free_ports(2 * 16, consecutive=True)[0]
        self.config_data = {
            "zmq": {"host": "127.0.0.1", "persist-dir": os.path.join(self.dir, "persist"),
                    "max-message-size": ARRAY_LIMIT},
            "zmq-router": {"host": "127.0.0.1", "port": router_port, "first-port": first,
                           "last-port": first + 31, "allow-spawn": False},
        }
        self.config = config_from_mapping(self.config_data, source="bench")
        self.config_path = self.write_config("bench.toml", self.config)
        self.hwm = self.config.zmq.hwm
        self._router: Optional[subprocess.Popen] = None
        self._dispatcher: Optional[Dict[str, Any]] = None
        self._echo: Optional[Dict[str, Any]] = None
        self._subs: Optional[Dict[str, Any]] = None
        self.canned: Dict[str, Any] = {"replies": [], "burst_payload": "{}"}

    def write_config(self, name: str, config: Any) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(config.to_toml())
        return path

    def close(self) -> None:
        try:
            if self._subs is not None:
                for ident in self._subs["ids"]:
                    try:
                        self._subs["ctl"].send_multipart([ident, b'{"op": "quit"}'], zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass
                self._subs["ctl"].close(linger=100)
            if self._echo is not None:
                self._echo["raw"].close()
            if self._dispatcher is not None:
                self._dispatcher["raw"].close()
        finally:
            self.procs.close()
            self.context.destroy(linger=0)
            self._tmp.cleanup()

    # ------------------------------------------------------------- servers
    def router(self) -> subprocess.Popen:
        if self._router is None:
            proc = self.procs.spawn("router", console_script("Cauldron-router-zmq",
                                                             "cauldron_zmq.router")
                                    + ["-c", self.config_path])
            ping_until_answer(self.context, self.config.router_address(),
                              time.monotonic() + 30, proc)
            self._router = proc
        return self._router

    def dispatcher(self) -> Dict[str, Any]:
        """The bench dispatcher, registered with the router: its ports and a raw DEALER."""
        if self._dispatcher is None:
            self.router()
            proc = self.procs.spawn("dispatcher", [sys.executable, BENCH, "--role", "dispatcher",
                                                   self.config_path, SERVICE])
            match = self.procs.wait_for_log(proc, r"bench dispatcher ready (\{.*\})", 60)
            address = json.loads(match.group(1))
            raw = RawDealer(self.context, address["dispatch"], self.hwm)
            self._dispatcher = {"proc": proc, "address": address, "raw": raw}
        return self._dispatcher

    def echo(self) -> Dict[str, Any]:
        """The bare server, answering with what the real servers answered (capture first)."""
        if self._echo is None:
            self.capture()
            port, pub_port = self.free_ports(2)
            path = os.path.join(self.dir, "canned.json")
            with open(path, "w") as stream:
                json.dump(self.canned, stream)
            proc = self.procs.spawn("echo", [sys.executable, BENCH, "--role", "echo", str(port),
                                             str(pub_port), path, str(self.hwm)])
            self.procs.wait_for_log(proc, r"echo ready", 30)
            address = f"tcp://127.0.0.1:{port}"
            raw = RawDealer(self.context, address, self.hwm)
            raw.round_trip(request("ping"))
            self._echo = {"proc": proc, "port": port, "pub_port": pub_port, "address": address,
                          "broadcast": f"tcp://127.0.0.1:{pub_port}", "raw": raw}
        return self._echo

    def capture(self) -> None:
        """Record the real servers' answers, for the echo server to replay."""
        from cauldron_zmq import protocol
        from cauldron_zmq.router import RouterClient
        disp = self.dispatcher()
        raw = disp["raw"]
        replies = []

        def keep(command: str, target: str, frames: List[bytes],
                 pub: Optional[List[bytes]] = None) -> Dict[str, Any]:
            row = {"command": command, "target": target, "status": frames[2].decode(),
                   "payload": frames[3].decode(), "pub": None}
            if pub is not None:
                row["pub"] = [part.decode("latin-1") for part in pub]
            replies.append(row)
            return row

        keep("read", "READV", raw.round_trip(request("read", "READV")))
        keep("write", "WSAME", raw.round_trip(request("write", "WSAME", {"value": 1.5})))
        changed = raw.round_trip(request("write", "WCHG", {"value": 2.5}))
        raw.round_trip(request("write", "WCHG", {"value": 1.5}))
        payload = json.loads(changed[3])
        payload.pop("changed", None)
        payload.update({"gseq": 1000 + payload["seq"], "dispatcher": "default"})
        keep("write", "WCHG", changed, [protocol.topic(SERVICE, "WCHG"), VERSION,
                                        protocol.dumps(payload)])
        keep("list", "", raw.round_trip(request("list")))
        self._capture_array(keep, raw)
        for name in ("READV", "WSAME", "WCHG"):
            keep("describe", name, raw.round_trip(request("describe", name)))
        with RouterClient(self.config, context=self.context) as client:
            lookup = client.lookup(SERVICE)
            register = client.register("benchreg", "r0", "127.0.0.1")
        replies.append({"command": "lookup", "target": SERVICE, "status": "ok",
                        "payload": protocol.dumps(lookup).decode(), "pub": None})
        replies.append({"command": "register", "target": "benchreg", "status": "ok",
                        "payload": protocol.dumps(register).decode(), "pub": None})
        # What the dispatcher publishes for a counter in the middle of a burst.
        sample = {"keyword": "C0000", "value": 12345, "ascii": "12345", "time": time.time(),
                  "seq": 12346, "gseq": 24690, "dispatcher": "default"}
        self.canned = {"replies": replies, "burst_payload": protocol.dumps(sample).decode()}

    def _capture_array(self, keep: Callable[..., Dict[str, Any]], raw: "RawDealer") -> None:
        """The dispatcher's reply and broadcast to a 16 MiB array write, without the frame."""
        from cauldron_zmq import protocol
        header = {"dtype": "<f8", "shape": [ARRAY_ELEMENTS]}
        frame = bytes(8 * ARRAY_ELEMENTS)
        reply = raw.final(request("write", "ARRAY", {"value": header}, raw=frame))
        if reply[2] != b"ok":
            raise BenchError(f"the 16 MiB array write was refused: {reply[3][:300]!r}")
        payload = json.loads(reply[3])
        payload.pop("changed", None)
        payload.update({"gseq": 1000 + payload["seq"], "dispatcher": "default"})
        row = keep("write", "ARRAY", reply[:4], [protocol.topic(SERVICE, "ARRAY"), VERSION,
                                                 protocol.dumps(payload)])
        row["echo_raw"] = True

    def subscribers(self) -> Dict[str, Any]:
        """The pool: SUBSCRIBERS processes, each connected to both publishers, subscribed to nothing."""
        if self._subs is None:
            disp, echo = self.dispatcher(), self.echo()
            ctl = self.context.socket(zmq.ROUTER)
            ctl.setsockopt(zmq.LINGER, 0)
            port = ctl.bind_to_random_port("tcp://127.0.0.1")
            publishers = json.dumps([disp["address"]["broadcast"], echo["broadcast"]])
            proc = self.procs.spawn("subs", [sys.executable, BENCH, "--role", "subs",
                                             f"tcp://127.0.0.1:{port}", publishers,
                                             str(self.hwm), str(SUBSCRIBERS)])
            hello = set()
            deadline = time.monotonic() + 60
            while len(hello) < SUBSCRIBERS:
                if ctl.poll(100):
                    ident, body = ctl.recv_multipart()
                    msg = json.loads(body)
                    if msg["op"] == "hello" and ident not in hello:
                        hello.add(ident)
                        self.procs.started.append(msg["pid"])    # a fork: in the report too
                if proc.poll() is not None:
                    raise BenchError(f"the subscribers exited:\n{Processes.tail(proc)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"only {len(hello)} of {SUBSCRIBERS} subscribers started")
            self._subs = {"ctl": ctl, "ids": [f"sub{i}".encode() for i in range(SUBSCRIBERS)],
                          "proc": proc, "runs": 0}
        return self._subs


# =============================================================================
# Figures
# =============================================================================

class Report:
    """Figures (this project vs bare pyzmq) and diagnostics, for the table and the JSON."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.figures: List[Dict[str, Any]] = []
        self.diagnostics: List[Dict[str, Any]] = []
        self.notes: List[str] = []

    def figure(self, fid: str, label: str, unit: str, project: float, bare: Optional[float],
               *, better: str = "lower", bar: Optional[float] = None, bar_on: str = "ratio",
               **extra: Any) -> None:
        """One figure.  ``bar`` is the aim, on the ratio (or, ``bar_on="value"``, on the
        project's own figure, e.g. 0 messages lost); ``better`` says which way is good."""
        ratio = None if bare is None or not bare else project / bare
        meets = None
        measured = ratio if bar_on == "ratio" else project
        if bar is not None and measured is not None:
            meets = measured <= bar if better == "lower" else measured >= bar
        row = {"id": fid, "figure": label, "unit": unit, "project": project, "bare": bare,
               "ratio": ratio, "better": better, "bar": bar, "bar_on": bar_on,
               "meets_bar": meets}
        row.update(extra)
        self.figures.append(row)

    def diagnostic(self, label: str, unit: str, value: float, reference: Optional[float],
                   reference_label: str = "") -> None:
        self.diagnostics.append({"figure": label, "unit": unit, "value": value,
                                 "reference": reference, "reference_label": reference_label,
                                 "ratio": value / reference if reference else None})

    def to_json(self, meta: Dict[str, Any]) -> Dict[str, Any]:
        return dict(meta, figures=self.figures, diagnostics=self.diagnostics, notes=self.notes)


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("us", "ms"):
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit in ("msgs/s", "ops/s"):
        return f"{value:,.0f} {unit}"
    return f"{value:g} {unit}".strip()


def _ratio(ratio: Optional[float]) -> str:
    return "—" if ratio is None else f"{ratio:.2f}"


def table(report: Dict[str, Any]) -> str:
    rows = [("figure", "this project", "bare pyzmq", "ratio", "bar")]
    for f in report["figures"]:
        bar = ""
        if f["bar"] is not None:
            sign = "<=" if f["better"] == "lower" else ">="
            what = "x" if f.get("bar_on", "ratio") == "ratio" else ""
            bar = f"{sign} {f['bar']:g}{what} " + ("ok" if f["meets_bar"] else "SHORT")
        rows.append((f["figure"], _fmt(f["project"], f["unit"]), _fmt(f["bare"], f["unit"]),
                     _ratio(f["ratio"]), bar))
    lines = [
        f"cauldron_zmq {report['version']} vs bare pyzmq -- python {report['python']}, "
        f"pyzmq {report['pyzmq']}, libzmq {report['libzmq']}, {report['cpus']} CPUs, "
        f"load {report['load'][0]:.2f} at start; {'QUICK (small counts)' if report['quick'] else 'full run'}",
        "ratio = this project / bare pyzmq (lower is better for times and memory, "
        "higher for rates)", ""]
    lines += _columns(rows)
    if report["diagnostics"]:
        lines += ["", "Where the time goes (one side replaced by its bare counterpart):"]
        drows = [("measure", "value", "reference", "ratio")]
        for d in report["diagnostics"]:
            ref = _fmt(d["reference"], d["unit"])
            if d["reference_label"]:
                ref += f" ({d['reference_label']})"
            drows.append((d["figure"], _fmt(d["value"], d["unit"]), ref, _ratio(d["ratio"])))
        lines += _columns(drows)
    if report["notes"]:
        lines += [""] + [f"* {note}" for note in report["notes"]]
    return "\n".join(lines)


def _columns(rows: List[Tuple[str, ...]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


# =============================================================================
# Sections
# =============================================================================

def section_startup(env: Env, report: Report, repeats: int) -> None:
    """Launch to first answered ping: Cauldron-router-zmq vs a bare pyzmq ROUTER script."""
    from cauldron_zmq.config import config_from_mapping
    project: List[float] = []
    bare: List[float] = []
    for rep in range(repeats):
        for kind in ("project", "bare"):
            port = env.free_port()
            if kind == "project":
                data = json.loads(json.dumps(env.config_data))
                data["zmq-router"]["port"] = port
                path = env.write_config(f"startup-{rep}.toml",
                                        config_from_mapping(data, source="bench"))
                cmd = console_script("Cauldron-router-zmq", "cauldron_zmq.router") + ["-c", path]
            else:
                cmd = [sys.executable, "-c", BARE_ECHO, str(port)]
            t0 = time.monotonic()
            proc = env.procs.spawn(f"startup-{kind}", cmd)
            try:
                t1 = ping_until_answer(env.context, f"tcp://127.0.0.1:{port}", t0 + 30, proc)
            finally:
                env.procs.kill(proc)
            (project if kind == "project" else bare).append((t1 - t0) * 1000)
    report.figure("startup", "start-up: launch to first ping answer (median)", "ms",
                  statistics.median(project), statistics.median(bare), repeats=repeats,
                  project_all=project, bare_all=bare)


def section_memory(env: Env, report: Report, services: int, keywords: int) -> None:
    """VmRSS: a router holding N services, a dispatcher holding M keywords, a bare ROUTER script."""
    from cauldron_zmq.config import config_from_mapping
    from cauldron_zmq.router import RouterClient
    # bare: imports zmq, binds a ROUTER, has answered one ping
    port = env.free_port()
    proc = env.procs.spawn("memory-bare", [sys.executable, "-c", BARE_ECHO, str(port)])
    try:
        ping_until_answer(env.context, f"tcp://127.0.0.1:{port}", time.monotonic() + 30, proc)
        time.sleep(0.2)
        bare_kb = vmrss_kb(proc.pid)
    finally:
        env.procs.kill(proc)
    # router with `services` registered services (a range wide enough for all of them)
    data = json.loads(json.dumps(env.config_data))
    port = env.free_port()
    data["zmq-router"].update({"port": port, "first-port": 40000,
                               "last-port": 40000 + 2 * services + 1})
    cfg = config_from_mapping(data, source="bench")
    path = env.write_config("memory-router.toml", cfg)
    proc = env.procs.spawn("memory-router", console_script("Cauldron-router-zmq",
                                                           "cauldron_zmq.router") + ["-c", path])
    try:
        ping_until_answer(env.context, cfg.router_address(), time.monotonic() + 30, proc)
        time.sleep(0.2)
        empty_kb = vmrss_kb(proc.pid)
        with RouterClient(cfg, context=env.context, timeout=5000) as client:
            for i in range(services):
                client.register(f"svc{i:05d}", "default", "127.0.0.1", pid=100000 + i,
                                keywords=[f"KEYWORD{k:02d}" for k in range(10)])
            client.ping()
        time.sleep(0.2)
        router_kb = vmrss_kb(proc.pid)
    finally:
        env.procs.kill(proc)
    # dispatcher (cauldron-zmq serve) with `keywords` keywords of four types
    path = os.path.join(env.dir, "memory-keywords.toml")
    with open(path, "w") as stream:
        stream.write(keyword_file(keywords))
    env.router()
    proc = env.procs.spawn("memory-dispatcher", console_script("cauldron-zmq", "cauldron_zmq")
                           + ["serve", MEMORY_SERVICE, path, "-c", env.config_path])
    try:
        env.procs.wait_for_log(proc, r"serving memsvc", 120)
        time.sleep(0.3)
        dispatcher_kb = vmrss_kb(proc.pid)
    finally:
        env.procs.stop(proc)
    report.figure("memory.router", f"RSS: router holding {services:,} services", "MB",
                  router_kb / 1024, bare_kb / 1024, services=services,
                  empty_router_mb=empty_kb / 1024,
                  kb_per_service=(router_kb - empty_kb) / services)
    report.figure("memory.dispatcher", f"RSS: dispatcher holding {keywords:,} keywords", "MB",
                  dispatcher_kb / 1024, bare_kb / 1024, keywords=keywords)


def keyword_file(n: int) -> str:
    """A keyword file of n keywords cycling through double, integer, string and enumerated."""
    parts = []
    for i in range(n):
        kind = i % 4
        name = f"KW{i:05d}"
        if kind == 0:
            parts.append(f'[keyword.{name}]\ntype = "double"\nunits = "mm"\ninitial = {i}.5\n'
                         f'description = "double keyword {i}"\n')
        elif kind == 1:
            parts.append(f'[keyword.{name}]\ntype = "integer"\nmin = 0\nmax = 1000000\n'
                         f'initial = {i}\n')
        elif kind == 2:
            parts.append(f'[keyword.{name}]\ntype = "string"\ninitial = "value {i}"\n')
        else:
            parts.append(f'[keyword.{name}]\ntype = "enumerated"\n'
                         f'enumerators = ["OFF", "STANDBY", "ON"]\ninitial = "ON"\n')
    return "\n".join(parts)


def section_router(env: Env, report: Report, count: int) -> None:
    """Look-ups and registrations: RouterClient -> router vs raw DEALER -> bare echo (from bench_router)."""
    from cauldron_zmq.router import RouterClient
    env.router()
    echo = env.echo()
    registrations = max(100, count // 5)
    names = [f"r{i % 8}" for i in range(registrations + 2 * WARMUP)]
    raw = echo["raw"]
    lookup = request("lookup", SERVICE, rid="bench-lookup")
    register = request("register", "benchreg", {"dispatcher": "r0", "host": "127.0.0.1"},
                       rid="bench-register")
    n = {"i": 0}

    with RouterClient(env.config, context=env.context, timeout=5000) as client:
        def project_register() -> None:
            client.register("benchreg", names[n["i"] % len(names)], "127.0.0.1")
            n["i"] += 1

        lat = interleaved({"lookup": lambda: client.lookup(SERVICE),
                           "bare lookup": lambda: raw.round_trip(lookup)}, count)
        reg = interleaved({"register": project_register,
                           "bare register": lambda: raw.round_trip(register)}, registrations)
        echo_client = RouterClient(env.config, context=env.context, timeout=5000,
                                   address=echo["address"])
        with echo_client:
            diag = interleaved({"client->echo": lambda: echo_client.lookup(SERVICE),
                                "bare lookup": lambda: raw.round_trip(lookup)}, count // 2)
    p, b = latency(lat["lookup"]), latency(lat["bare lookup"])
    report.figure("router.lookups", "router look-ups per second (one at a time)", "ops/s",
                  p["ops_per_s"], b["ops_per_s"], better="higher", count=count,
                  median_us=p["median_us"], bare_median_us=b["median_us"])
    p, b = latency(reg["register"]), latency(reg["bare register"])
    report.figure("router.register.median", "router registration latency, median", "us",
                  p["median_us"], b["median_us"], count=registrations)
    report.figure("router.register.p99", "router registration latency, p99", "us",
                  p["p99_us"], b["p99_us"], count=registrations)
    d, b = latency(diag["client->echo"]), latency(diag["bare lookup"])
    report.diagnostic("look-up: RouterClient -> bare echo, median", "us", d["median_us"],
                      b["median_us"], "raw DEALER -> bare echo")
    _register_with_state_file(env, report, max(50, registrations // 10), reg["register"])


def _register_with_state_file(env: Env, report: Report, count: int,
                              reference: List[float]) -> None:
    """Registration latency when the router saves its book (atomic write + fsync) each time."""
    from cauldron_zmq.config import config_from_mapping
    from cauldron_zmq.router import RouterClient
    data = json.loads(json.dumps(env.config_data))
    data["zmq-router"].update({"port": env.free_port(),
                               "state-file": os.path.join(env.dir, "router-book.json")})
    cfg = config_from_mapping(data, source="bench")
    proc = env.procs.spawn("router-state-file", console_script(
        "Cauldron-router-zmq", "cauldron_zmq.router") + ["-c", env.write_config(
            "router-state.toml", cfg)])
    try:
        ping_until_answer(env.context, cfg.router_address(), time.monotonic() + 30, proc)
        with RouterClient(cfg, context=env.context, timeout=10000) as client:
            lat = interleaved({"register": lambda: client.register("benchreg", "r0",
                                                                   "127.0.0.1")},
                              count, warmup=10)
    finally:
        env.procs.stop(proc)
    report.diagnostic("registration with a state file (fsync each), median", "us",
                      latency(lat["register"])["median_us"], latency(reference)["median_us"],
                      "without")


#: Issue 12's targets, as ratios to the bare echo of the same frames in the same run.
ROUNDTRIP_BARS = {"median": 1.3, "p99": 1.5}


def section_roundtrip(env: Env, report: Report, count: int) -> None:
    """Read and write round trips: ktl -> dispatcher vs raw DEALER -> bare echo (same frame sizes)."""
    from cauldron_zmq import ktl
    echo = env.echo()                   # (starts the dispatcher first, to capture its answers)
    raw = echo["raw"]
    read, wsame, wchg = _roundtrip_frames()
    bare_sub = _bare_sub(env, echo)

    svc = ktl.Service(SERVICE, config=env.config)
    try:
        readv, wsame_kw, wchg_kw = svc["READV"], svc["WSAME"], svc["WCHG"]
        values, state = (2.5, 1.5), {"i": 0}

        def ktl_changed() -> None:
            state["i"] ^= 1
            wchg_kw.write(values[state["i"]])

        lat = interleaved({
            "ktl read": lambda: readv.read(binary=True),
            "bare read": lambda: raw.round_trip(read),
            "ktl wsame": lambda: wsame_kw.write(1.5),
            "bare wsame": lambda: raw.round_trip(wsame),
            "ktl wchg": ktl_changed,
            "bare wchg": _alternate(raw, wchg, bare_sub),
        }, count)
    finally:
        svc.shutdown()
        bare_sub.close(0)
    _roundtrip_figures(report, lat, "ktl", ("read", "wsame", "wchg"), count)
    _roundtrip_diagnostics(env, report, max(200, count // 2))


ROUNDTRIP_LABELS = {"read": "read", "wsame": "write, unchanged",
                    "wchg": "write, changed (+ broadcast)"}


def _roundtrip_figures(report: Report, lat: Dict[str, List[float]], client: str,
                       keys: Sequence[str], count: int, prefix: str = "",
                       label_prefix: str = "") -> None:
    """Median and p99 of each ``"{client} {key}"`` against ``"bare {key}"``, with the bars."""
    for key in keys:
        p, b = latency(lat[f"{client} {key}"]), latency(lat[f"bare {key}"])
        for stat in ("median", "p99"):
            report.figure(f"{prefix}{key}.{stat}",
                          f"{label_prefix}{ROUNDTRIP_LABELS[key]} round trip, {stat}", "us",
                          p[f"{stat}_us"], b[f"{stat}_us"], bar=ROUNDTRIP_BARS[stat],
                          count=count)


def _roundtrip_frames() -> Tuple[List[bytes], List[bytes], List[List[bytes]]]:
    """The bare client's requests: a read, an unchanged write, the two changed writes."""
    read = request("read", "READV", rid="bench-read")
    wsame = request("write", "WSAME", {"value": 1.5}, rid="bench-wsame")
    wchg = [request("write", "WCHG", {"value": v}, rid="bench-wchg") for v in (2.5, 1.5)]
    return read, wsame, wchg


def _bare_sub(env: Env, echo: Dict[str, Any]) -> zmq.Socket:
    """The bare client's SUB to the echo server's broadcasts, its subscription in place."""
    sub = env.context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, env.hwm)
    sub.setsockopt(zmq.SUBSCRIBE, (SERVICE + "\0").encode())
    sub.connect(echo["broadcast"])
    try:
        _slow_joiner(echo["raw"], _roundtrip_frames()[2], sub)
    except BaseException:
        sub.close(0)
        raise
    return sub


def _slow_joiner(raw: RawDealer, requests: List[List[bytes]], sub: zmq.Socket) -> None:
    """Send (changed writes, alternately) until the SUB receives something:
    its subscription has reached the publisher."""
    deadline = time.monotonic() + 10
    i = 0
    while True:
        i += 1
        raw.round_trip(requests[i % len(requests)])
        if sub.poll(20):
            sub.recv_multipart()
            return
        if time.monotonic() > deadline:
            raise BenchError("the SUB never received a broadcast")


def _roundtrip_diagnostics(env: Env, report: Report, count: int) -> None:
    """Each side alone: raw DEALER -> dispatcher, and ktl -> bare echo.

    Two groups, so that the bare echo's canned broadcasts (which always carry
    the same gseq) never reach the ktl client connected to the echo.
    """
    from cauldron_zmq import ktl
    disp, echo = env.dispatcher(), env.echo()
    raw_echo, raw_disp = echo["raw"], disp["raw"]
    read = request("read", "READV", rid="bench-read")
    wchg = [request("write", "WCHG", {"value": v}, rid="bench-wchg") for v in (2.5, 1.5)]
    svc = ktl.Service(SERVICE, config=_echo_config(env, echo))
    try:
        readv = svc["READV"]
        reads = interleaved({
            "ktl->echo": lambda: readv.read(binary=True),
            "raw->disp": lambda: raw_disp.round_trip(read),
            "bare": lambda: raw_echo.round_trip(read),
        }, count)
    finally:
        svc.shutdown()
    subs = []
    for address in (disp["address"]["broadcast"], echo["broadcast"]):
        sub = env.context.socket(zmq.SUB)     # the broadcasts of a changed write have a reader
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, env.hwm)
        sub.setsockopt(zmq.SUBSCRIBE, (SERVICE + "\0WCHG\0").encode())
        sub.connect(address)
        subs.append(sub)
    try:
        _slow_joiner(raw_disp, wchg, subs[0])
        _slow_joiner(raw_echo, wchg, subs[1])
        writes = interleaved({
            "raw->disp": _alternate(raw_disp, wchg, subs[0]),
            "bare": _alternate(raw_echo, wchg, subs[1]),
        }, count)
    finally:
        for sub in subs:
            sub.close(0)
    bare = latency(reads["bare"])["median_us"]
    report.diagnostic("read: raw DEALER -> dispatcher, median", "us",
                      latency(reads["raw->disp"])["median_us"], bare, "bare")
    report.diagnostic("read: ktl client -> bare echo, median", "us",
                      latency(reads["ktl->echo"])["median_us"], bare, "bare")
    report.diagnostic("write changed: raw DEALER -> dispatcher, median", "us",
                      latency(writes["raw->disp"])["median_us"],
                      latency(writes["bare"])["median_us"], "bare")


def _echo_config(env: Env, echo: Dict[str, Any]) -> Any:
    """The bench's configuration with the bare echo server as the service's only dispatcher."""
    from cauldron_zmq.config import config_from_mapping
    data = json.loads(json.dumps(env.config_data))
    data["zmq"].update({"dispatch-port": echo["port"], "broadcast-port": echo["pub_port"]})
    data["zmq-router"]["enable"] = False
    return config_from_mapping(data, source="bench")


def _alternate(raw: RawDealer, requests: List[List[bytes]], sub: zmq.Socket) -> Callable[[], None]:
    """A changed write (alternating values) and a drain of the broadcasts it caused."""
    state = {"i": 0}

    def op() -> None:
        state["i"] ^= 1
        raw.round_trip(requests[state["i"]])
        _drain(sub)
    return op


def _drain(sub: zmq.Socket) -> None:
    """Read every message the SUB holds now, without waiting."""
    try:
        while True:
            sub.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        pass


#: Reads in flight at once in one event loop (section aio).
AIO_CONCURRENT = 1000


class AsyncRawDealer:
    """The bare asyncio client: a ``zmq.asyncio`` DEALER, pre-encoded frames, nothing else.

    No timeout per call (a timer per request is not bare); the bench's time
    limit ends a run that hangs.
    """

    def __init__(self, context: Any, address: str, hwm: int = 1000) -> None:
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.connect(address)

    async def round_trip(self, frames: List[bytes]) -> List[bytes]:
        await self.sock.send_multipart(frames)
        return await self.sock.recv_multipart()

    async def concurrent(self, requests: List[List[bytes]]) -> None:
        """Every request at once, each awaiting its own reply, matched by request id
        (frame 1) by one receiving task -- what a minimal asyncio client does."""
        loop = asyncio.get_running_loop()
        pending: Dict[bytes, "asyncio.Future[List[bytes]]"] = {}

        async def receive() -> None:
            for _ in range(len(requests)):
                reply = await self.sock.recv_multipart()
                future = pending.pop(reply[1], None)
                if future is None:
                    raise BenchError(f"a reply to no request: {reply[:2]!r}")
                future.set_result(reply)

        async def one(frames: List[bytes]) -> List[bytes]:
            future = pending[frames[1]] = loop.create_future()
            await self.sock.send_multipart(frames)
            return await future

        receiver = asyncio.ensure_future(receive())
        try:
            await asyncio.gather(*[one(frames) for frames in requests])
            await receiver
        finally:
            receiver.cancel()

    def close(self) -> None:
        self.sock.close(linger=0)


def section_aio(env: Env, report: Report, count: int, rounds: int,
                concurrent: int = AIO_CONCURRENT) -> None:
    """The asyncio client: read and changed-write round trips, and ``concurrent`` reads at
    once, vs a bare ``zmq.asyncio`` DEALER -> bare echo, in one event loop of this process."""
    echo = env.echo()                   # (starts the dispatcher first, to capture its answers)
    bare_sub = _bare_sub(env, echo)
    try:
        lat, rates = asyncio.run(_aio_measures(env, echo, bare_sub, count, rounds, concurrent))
    finally:
        bare_sub.close(0)
    _roundtrip_figures(report, lat, "aio", ("read", "wchg"), count, prefix="aio.",
                       label_prefix="asyncio ")
    project, bare = statistics.median(rates["aio"]), statistics.median(rates["bare"])
    report.figure("aio.concurrent", f"asyncio: {concurrent:,} concurrent reads in one loop, "
                  "reads/s", "ops/s", project, bare, better="higher", concurrent=concurrent,
                  rounds=rounds, project_all=rates["aio"], bare_all=rates["bare"])
    lat, rates = asyncio.run(_aio_client_alone(env, echo, max(200, count // 2), rounds,
                                               concurrent))
    report.diagnostic("asyncio read: aio client -> bare echo, median", "us",
                      latency(lat["aio"])["median_us"], latency(lat["bare"])["median_us"],
                      "bare")
    report.diagnostic(f"asyncio {concurrent:,} concurrent reads: aio client -> bare echo",
                      "ops/s", statistics.median(rates["aio"]),
                      statistics.median(rates["bare"]), "bare")


async def _aio_client_alone(env: Env, echo: Dict[str, Any], count: int, rounds: int,
                            concurrent: int
                            ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """The asyncio client against the bare echo server: its own cost, apart from the
    dispatcher's (reads only: the echo's canned broadcasts never reach it)."""
    import zmq.asyncio
    from cauldron_zmq import aio
    read = _roundtrip_frames()[0]
    many = [request("read", "READV", rid=f"bench-{i:04d}") for i in range(concurrent)]
    context = zmq.asyncio.Context()
    dealer = AsyncRawDealer(context, echo["address"], env.hwm)
    log = logging.getLogger(f"cauldron_zmq.aio.{SERVICE}")
    level = log.level
    log.setLevel(logging.ERROR)     # the echo describes only READV, WSAME, WCHG: no warning
    try:                            # for each of the others (described as strings)
        async with aio.Service(SERVICE, config=_echo_config(env, echo)) as svc:
            readv = svc["READV"]

            async def aio_many() -> None:
                await asyncio.gather(*[readv.read(binary=True) for _ in range(concurrent)])

            lat = await interleaved_async({"aio": lambda: readv.read(binary=True),
                                           "bare": lambda: dealer.round_trip(read)}, count)
            rates = await _alternating_rates({"aio": aio_many,
                                              "bare": lambda: dealer.concurrent(many)},
                                             rounds, concurrent)
    finally:
        log.setLevel(level)
        dealer.close()
        context.term()
    return lat, rates


async def _aio_measures(env: Env, echo: Dict[str, Any], bare_sub: zmq.Socket, count: int,
                        rounds: int, concurrent: int
                        ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Round-trip latencies (interleaved) and concurrent-read rates (alternating rounds).

    The bare client's DEALER is a ``zmq.asyncio`` one of a context of its
    own, as the asyncio client has; its SUB (the roundtrip section's, read
    without waiting after each changed write) drains the echo's broadcasts.
    """
    import zmq.asyncio
    from cauldron_zmq import aio
    read, _wsame, wchg = _roundtrip_frames()
    many = [request("read", "READV", rid=f"bench-{i:04d}") for i in range(concurrent)]
    context = zmq.asyncio.Context()
    dealer = AsyncRawDealer(context, echo["address"], env.hwm)
    try:
        async with aio.Service(SERVICE, config=env.config) as svc:
            readv, wchg_kw = svc["READV"], svc["WCHG"]
            values, state = (2.5, 1.5), {"aio": 0, "bare": 0}

            def aio_changed() -> Awaitable[Any]:
                state["aio"] ^= 1
                return wchg_kw.write(values[state["aio"]])

            async def bare_changed() -> None:
                state["bare"] ^= 1
                await dealer.round_trip(wchg[state["bare"]])
                _drain(bare_sub)

            async def aio_many() -> None:
                await asyncio.gather(*[readv.read(binary=True) for _ in range(concurrent)])

            lat = await interleaved_async({
                "aio read": lambda: readv.read(binary=True),
                "bare read": lambda: dealer.round_trip(read),
                "aio wchg": aio_changed,
                "bare wchg": bare_changed,
            }, count)
            rates = await _alternating_rates({"aio": aio_many,
                                              "bare": lambda: dealer.concurrent(many)},
                                             rounds, concurrent)
    finally:
        dealer.close()
        context.term()
    return lat, rates


async def _alternating_rates(ops: Dict[str, Callable[[], Awaitable[Any]]], rounds: int,
                             per_round: int) -> Dict[str, List[float]]:
    """Operations per second of each op (``per_round`` operations a call), over
    ``rounds`` calls each after one warm-up call, the ops taking turns."""
    for op in ops.values():
        await op()
    out: Dict[str, List[float]] = {name: [] for name in ops}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, op in ops.items():
            t0 = clock()
            await op()
            out[name].append(per_round / (clock() - t0))
    return out


def section_broadcast(env: Env, report: Report, n: int, rounds: int = 1) -> None:
    """Throughput to 1 and 10 subscribers: dispatcher set() in a hook to ``ktl`` callbacks
    vs a bare PUB loop to bare SUBs, both with JSON.

    ``rounds`` alternating bare/project runs of each; rates are their medians,
    losses and missed final values their totals.  A diagnostic run per round
    has the dispatcher publish to bare SUBs (one subscriber): the
    dispatcher's share apart from the client's.
    """
    results: Dict[str, List[Dict[str, Any]]] = {}
    for _ in range(rounds):
        for nsubs in (1, SUBSCRIBERS):
            for kind in ("bare", "project"):
                results.setdefault(f"{kind}{nsubs}", []).append(
                    _broadcast_run(env, kind, nsubs, n))
        results.setdefault("dispatcher1", []).append(_broadcast_run(env, "dispatcher", 1, n))
    for nsubs, bar in ((1, 0.6), (SUBSCRIBERS, 0.8)):
        p, b = _combine(results[f"project{nsubs}"]), _combine(results[f"bare{nsubs}"])
        who = "1 subscriber" if nsubs == 1 else f"{nsubs} subscribers"
        report.figure(f"broadcast.{nsubs}.rate",
                      f"broadcast to {who}: msgs/s per subscriber", "msgs/s",
                      p["rate"], b["rate"], better="higher", bar=bar, messages=n,
                      rounds=rounds, project_rates=p["rates"], bare_rates=b["rates"],
                      project_publish_rate=p["publish_rate"], bare_publish_rate=b["publish_rate"])
        report.figure(f"broadcast.{nsubs}.lost", f"broadcast to {who}: messages lost", "",
                      p["lost"], b["lost"], better="lower", bar=0, bar_on="value",
                      messages=n * nsubs * rounds, project_received=p["received"],
                      bare_received=b["received"], project_shown=p["shown"],
                      project_shown_behind=p["behind"], bare_shown=b["shown"],
                      project_lost_per_round=p["losts"], bare_lost_per_round=b["losts"],
                      project_resyncs=p["resyncs"])
        if p["resyncs"]:
            report.notes.append(f"broadcast to {who}: the ktl clients re-synced "
                                f"{len(p['resyncs'])} time(s) during bursts (their loss "
                                f"listener), e.g.: " + " | ".join(p["resyncs"][:3]))
        report.figure(f"broadcast.{nsubs}.final",
                      f"broadcast to {who}: final value missed (subscriber-runs)", "",
                      p["final_missed"], b["final_missed"], better="lower", bar=0,
                      bar_on="value", runs=nsubs * rounds, project_last=p["last"],
                      bare_last=b["last"], final_value=n)
    d, b = _combine(results["dispatcher1"]), _combine(results["bare1"])
    report.diagnostic("broadcast to 1 subscriber: dispatcher -> bare JSON SUB", "msgs/s",
                      d["rate"], b["rate"], "bare")
    _note_log(report, "the subscribers' ktl clients", env.subscribers()["proc"])
    _note_log(report, "the bench dispatcher", env.dispatcher()["proc"])


def _note_log(report: Report, who: str, proc: subprocess.Popen, keep: int = 3) -> None:
    """A note quoting what a subprocess logged (warnings of a client that lost messages)."""
    try:
        with open(proc.log_path, "rb") as stream:   # type: ignore[attr-defined]
            lines = [line for line in stream.read().decode("utf-8", "replace").splitlines()
                     if line.strip() and "bench dispatcher ready" not in line]
    except OSError:
        return
    if lines:
        report.notes.append(f"{who} logged {len(lines)} line(s), e.g.: "
                            + " | ".join(line[:200] for line in lines[:keep]))


def _combine(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"rate": statistics.median(r["rate"] for r in runs),
            "rates": [r["rate"] for r in runs],
            "publish_rate": statistics.median(r["publish_rate"] for r in runs),
            "lost": sum(r["lost"] for r in runs), "losts": [r["lost"] for r in runs],
            "received": sum(r["received"] for r in runs),
            "final_missed": sum(r["final_missed"] for r in runs),
            "shown": sum(r["shown"] for r in runs), "behind": sum(r["behind"] for r in runs),
            "resyncs": [why for r in runs for why in r.get("resyncs", ())],
            "last": [last for r in runs for last in r["last"]]}


#: A subscriber ends its run when nothing new came for this long (s): long
#: enough that a process starved by a loaded machine is not taken for a loss.
IDLE_S = 3.0

#: Why a client re-syncs as it joins (before the burst): not a sign of loss.
EXPECTED_RESYNCS = ("broadcast socket connected", "first heartbeat since connecting")

#: Who publishes and who receives in each kind of broadcast run.
BROADCAST_KINDS = {"bare": (BARE_SERVICE, "raw"), "project": (SERVICE, "ktl"),
                   "dispatcher": (SERVICE, "raw")}


def _broadcast_run(env: Env, kind: str, nsubs: int, n: int) -> Dict[str, Any]:
    """One burst of ``n`` messages to ``nsubs`` subscribers (see BROADCAST_KINDS)."""
    from cauldron_zmq import protocol
    subs = env.subscribers()
    ctl: zmq.Socket = subs["ctl"]
    run = subs["runs"]
    subs["runs"] += 1
    if run >= COUNTERS:
        raise BenchError("out of counter keywords")
    counter = f"C{run:04d}"
    service, reader = BROADCAST_KINDS[kind]
    topic = protocol.topic(service, counter)
    prime_topic = protocol.topic(service, "PRIME")
    ids = subs["ids"][:nsubs]
    timeout = 30 + n / 2000.0
    for ident in ids:
        ctl.send_multipart([ident, json.dumps({
            "op": "run", "kind": reader, "prime": prime_topic.decode("latin-1"),
            "topic": topic.decode("latin-1"), "service": service, "counter": counter,
            "config": env.config_path, "threshold": run * 100000,
            "n": n, "idle": IDLE_S, "timeout": timeout}).encode()])
    disp_raw = env.dispatcher()["raw"]
    echo_raw = env.echo()["raw"]
    ready: set = set()
    deadline = time.monotonic() + 30
    k = 0
    while len(ready) < nsubs:              # slow joiners: publish PRIME until everyone has one
        k += 1
        if service == SERVICE:
            disp_raw.round_trip(request("write", "PRIME", {"value": run * 100000 + k}))
        else:
            echo_raw.round_trip(request("prime", prime_topic.decode("latin-1")))
        until = time.monotonic() + 0.02
        while time.monotonic() < until:
            if ctl.poll(5):
                ident, msg = _sub_message(ctl)
                if msg["op"] == "ready":
                    ready.add(ident)
        if time.monotonic() > deadline:
            raise BenchError(f"{kind}: only {len(ready)} of {nsubs} subscribers joined")
    t0 = time.monotonic()
    if service == SERVICE:
        disp_raw.final(request("write", "BURST", {"value": f"{counter} {n}"}),
                       timeout_ms=int(timeout * 1000))
    else:
        echo_raw.final(request("burst", topic.decode("latin-1"), n),
                       timeout_ms=int(timeout * 1000))
    t_published = time.monotonic()
    results: Dict[bytes, Dict[str, Any]] = {}
    deadline = time.monotonic() + timeout + 5
    while len(results) < nsubs:
        if ctl.poll(100):
            ident, msg = _sub_message(ctl)
            if msg["op"] == "result":
                results[ident] = msg
        if time.monotonic() > deadline:
            raise BenchError(f"{kind}: {nsubs - len(results)} subscriber(s) never reported")
    received = sum(r["received"] for r in results.values())
    t_last = max(r["t_last"] for r in results.values())
    window = max(t_last - t0, 1e-6)
    lasts = [r["last"] for r in results.values()]
    return {"received": received, "lost": n * nsubs - received, "last": lasts,
            "shown": sum(r["shown"] for r in results.values()),
            "resyncs": [why for r in results.values() for why in r.get("resyncs", ())
                        if not why.startswith(EXPECTED_RESYNCS)],
            "behind": sum(r["behind"] for r in results.values()),
            "final_missed": sum(1 for last in lasts if last != n),
            "rate": received / nsubs / window, "publish_rate": n / max(t_published - t0, 1e-6)}


def _sub_message(ctl: zmq.Socket) -> Tuple[bytes, Dict[str, Any]]:
    """A subscriber's message to the bench; BenchError if it is a subscriber's error."""
    ident, body = ctl.recv_multipart()
    msg = json.loads(body)
    if msg["op"] == "error":
        raise BenchError(f"subscriber {msg['index']}: {msg['message']}")
    return ident, msg


def section_services(env: Env, report: Report, count: int = SERVICES_OPENED) -> None:
    """What a process pays for ``count`` ``ktl.Service`` objects: threads, contexts, fds, time.

    A subprocess (``--role services``) of its own, so nothing the bench
    process holds is counted, opens ``count`` Services on the bench
    dispatcher's service (the same name each time) and reports what was
    added; issue 12 wants one I/O thread and one ZeroMQ context for them all.
    """
    env.dispatcher()
    proc = env.procs.spawn("services", [sys.executable, BENCH, "--role", "services",
                                        env.config_path, SERVICE, str(count)])
    try:
        match = env.procs.wait_for_log(proc, r"services result (\{.*\})", 120)
    finally:
        env.procs.stop(proc)
    r = json.loads(match.group(1))
    added, after = r["added"], r["after_shutdown"]
    extra = {"services": count, "os_threads_added": added["os_threads"],
             "after_one_read_each": r["after_read"], "left_after_shutdown": after,
             "shutdown_ms": r["shutdown_ms"]}
    what = f"{count} ktl.Service objects"
    report.figure("services.threads", f"{what}: Python threads added", "", added["threads"],
                  None, bar=2, bar_on="value", **extra)
    report.figure("services.contexts", f"{what}: ZeroMQ contexts added", "",
                  added["contexts"], None, bar=1, bar_on="value", services=count)
    report.figure("services.fds", f"{what}: file descriptors added", "", added["fds"], None,
                  services=count)
    report.figure("services.open", f"{what}: time to open them all", "ms", r["open_ms"], None,
                  services=count)


def role_services(config_path: str, service: str, count: int) -> None:
    """Open ``count`` Services, say what they added (and what one read each, and shutdown, leave)."""
    from cauldron_zmq import ktl
    base = _process_resources()
    t0 = time.perf_counter()
    services = [ktl.Service(service, config=config_path) for _ in range(count)]
    open_ms = (time.perf_counter() - t0) * 1000
    opened = _process_resources()
    for svc in services:
        svc["READV"].read()
    read = _process_resources()
    t0 = time.perf_counter()
    for svc in services:
        svc.shutdown()
    shutdown_ms = (time.perf_counter() - t0) * 1000
    closed = _process_resources()           # (the Services still referenced: shut down only)
    result = {"open_ms": open_ms, "shutdown_ms": shutdown_ms,
              "added": _resources_added(base, opened),
              "after_read": _resources_added(base, read),
              "after_shutdown": _resources_added(base, closed)}
    print("services result " + json.dumps(result), flush=True)


def _process_resources() -> Dict[str, Any]:
    """This process's Python threads, live ZeroMQ contexts (by id), fds and OS threads."""
    import gc
    gc.collect()
    contexts = {id(o) for o in gc.get_objects() if isinstance(o, zmq.Context) and not o.closed}
    return {"threads": threading.active_count(), "contexts": contexts,
            "fds": len(os.listdir("/proc/self/fd")),
            "os_threads": len(os.listdir("/proc/self/task"))}


def _resources_added(base: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, int]:
    added = {key: now[key] - base[key] for key in ("threads", "fds", "os_threads")}
    added["contexts"] = len(now["contexts"] - base["contexts"])
    return added


def section_concurrency(env: Env, report: Report, seconds: float,
                        threads: int = CONCURRENT_THREADS) -> None:
    """``threads`` threads reading one keyword synchronously through one ``ktl.Service``
    vs as many threads each with its own raw DEALER to the bare echo: total reads/s."""
    from cauldron_zmq import ktl
    echo = env.echo()
    read = request("read", "READV", rid="bench-read")
    svc = ktl.Service(SERVICE, config=env.config)
    try:
        kw = svc["READV"]
        project = _threaded_rate(threads, seconds,
                                 lambda: (lambda: kw.read(binary=True), lambda: None))
    finally:
        svc.shutdown()

    def bare_op() -> Tuple[Callable[[], Any], Callable[[], None]]:
        raw = RawDealer(env.context, echo["address"], env.hwm)   # made in, used by, its thread
        return (lambda: raw.round_trip(read)), raw.close

    bare = _threaded_rate(threads, seconds, bare_op)
    report.figure("concurrency.reads", f"{threads} threads reading one keyword: reads/s in all",
                  "ops/s", project["rate"], bare["rate"], better="higher", threads=threads,
                  seconds=seconds, project_per_thread=project["counts"],
                  bare_per_thread=bare["counts"])


def _threaded_rate(threads: int, seconds: float,
                   make: Callable[[], Tuple[Callable[[], Any], Callable[[], None]]]
                   ) -> Dict[str, Any]:
    """Operations per second of ``threads`` threads each running its own op for ``seconds``.

    ``make()`` runs in each thread and returns (op, close); the threads warm
    up, start together at a barrier and stop at the same deadline.
    """
    counts = [0] * threads
    errors: List[BaseException] = []
    window = {"end": 0.0}
    barrier = threading.Barrier(threads, action=lambda: window.update(
        end=time.monotonic() + seconds))

    def worker(i: int) -> None:
        close: Callable[[], None] = lambda: None   # noqa: E731
        try:
            op, close = make()
            for _ in range(20):
                op()
            barrier.wait(60)
            n, end, clock = 0, window["end"], time.monotonic
            while clock() < end:
                op()
                n += 1
            counts[i] = n
        except threading.BrokenBarrierError:
            pass                                       # another thread failed: it says why
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            barrier.abort()
        finally:
            close()

    pool = [threading.Thread(target=worker, args=(i,), name=f"bench-{i}", daemon=True)
            for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + 120)
    if errors or any(t.is_alive() for t in pool):
        raise BenchError(f"a reading thread failed: {errors[0]!r}" if errors
                         else "a reading thread never finished")
    return {"rate": sum(counts) / seconds, "counts": counts}


def section_recovery(env: Env, report: Report, repeats: int) -> None:
    """SIGKILL a dispatcher, start a replacement: from its ROUTER answering to the client's callback."""
    from cauldron_zmq import ktl
    env.router()
    serve = console_script("cauldron-zmq", "cauldron_zmq")

    def start(generation: int) -> subprocess.Popen:
        path = os.path.join(env.dir, f"recovery-{generation}.toml")
        with open(path, "w") as stream:
            stream.write(f'[keyword.STAMP]\ntype = "string"\ninitial = "generation {generation}"\n')
        return env.procs.spawn(f"recovery-{generation}", serve + ["serve", RECOVERY_SERVICE, path,
                                                                  "-c", env.config_path])

    proc = start(0)
    match = env.procs.wait_for_log(proc, r"requests (tcp://\S+),", 60)
    address = match.group(1)
    seen: List[Tuple[float, Optional[str]]] = []
    arrived = threading.Condition()

    def callback(kw: Any) -> None:
        with arrived:
            seen.append((time.monotonic(), kw["ascii"]))
            arrived.notify_all()

    svc = ktl.Service(RECOVERY_SERVICE, config=env.config)
    times: List[float] = []
    starts: List[float] = []
    try:
        stamp = svc["STAMP"]
        stamp.callback(callback)
        stamp.monitor()
        for generation in range(1, repeats + 1):
            # Steady state: the client has had a heartbeat from the dispatcher it
            # monitors (a client that joined less than a heartbeat before the
            # crash is a different case; see docs/benchmarks.rst).
            time.sleep(1.5 * env.config.zmq.heartbeat)
            Processes.kill(proc, signal.SIGKILL)
            t_kill = time.monotonic()
            proc = start(generation)
            t_listen = ping_until_answer(env.context, address, t_kill + 60, proc)
            expected = f"generation {generation}"
            deadline = t_listen + 10 + 3 * env.config.zmq.heartbeat
            with arrived:
                while not any(value == expected for _, value in seen):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BenchError(f"the client never saw {expected!r}; saw "
                                         f"{[v for _, v in seen[-5:]]}")
                    arrived.wait(remaining)
                t_update = next(t for t, value in seen if value == expected)
            times.append((t_update - t_listen) * 1000)
            starts.append((t_listen - t_kill) * 1000)
    finally:
        svc.shutdown()
        env.procs.stop(proc)
    report.figure("recovery", "recovery: replacement listening to client callback (median)",
                  "ms", statistics.median(times), None, repeats=repeats, all_ms=times,
                  replacement_start_ms=statistics.median(starts),
                  heartbeat_s=env.config.zmq.heartbeat)


def section_array(env: Env, report: Report, count: int) -> None:
    """A 16 MiB double array: ktl writes vs a raw DEALER and the bare echo moving the same frames.

    Each write sends the array, and its reply and broadcast each carry it
    back (the ktl client's SUB receives the broadcast, as the bare SUB does):
    48 MiB per write.  The figure is the array's MB/s (16 MiB per write), one
    write at a time, the two sides alternating.
    """
    import numpy as np
    from cauldron_zmq import ktl
    echo = env.echo()                       # (captures the dispatcher's answers first)
    raw = echo["raw"]
    bare_sub = env.context.socket(zmq.SUB)
    bare_sub.setsockopt(zmq.LINGER, 0)
    bare_sub.setsockopt(zmq.SUBSCRIBE, (SERVICE + "\0ARRAY\0").encode())
    bare_sub.connect(echo["broadcast"])
    header = {"dtype": "<f8", "shape": [ARRAY_ELEMENTS]}
    arrays = [np.full(ARRAY_ELEMENTS, float(i)) for i in (1, 2)]
    frames = [request("write", "ARRAY", {"value": header}, raw=a.tobytes(), rid="bench-array")
              for a in arrays]
    nbytes = arrays[0].nbytes
    svc = ktl.Service(SERVICE, config=env.config, timeout=60)
    times: Dict[str, List[float]] = {"project": [], "bare": []}
    try:
        kw = svc["ARRAY"]
        broadcast = threading.Event()
        kw.callback(lambda _kw: broadcast.set())
        kw.monitor(prime=False)
        for i in range(count + 1):          # the first of each is a warm-up
            for kind in ("project", "bare"):
                t0 = time.perf_counter()
                if kind == "project":       # binary: the ascii of 2 Mi doubles is not asked for
                    broadcast.clear()
                    kw.write(arrays[i % 2], binary=True)
                    if not broadcast.wait(10):
                        raise BenchError("the array's broadcast never reached the client")
                else:
                    raw.final(frames[i % 2])
                    if bare_sub.poll(10000):
                        bare_sub.recv_multipart()
                    elif i:                 # (the warm-up's may precede the subscription)
                        raise BenchError("the array's bare broadcast never arrived")
                if i:
                    times[kind].append(time.perf_counter() - t0)
    finally:
        svc.shutdown()
        bare_sub.close(0)
    rate = {kind: len(t) * nbytes / 1e6 / sum(t) for kind, t in times.items()}
    report.figure("array.write", "16 MiB double array write (+ reply, broadcast): MB/s",
                  "MB/s", rate["project"], rate["bare"], better="higher", bar=0.8,
                  count=count, array_bytes=nbytes,
                  median_ms=statistics.median(times["project"]) * 1000,
                  bare_median_ms=statistics.median(times["bare"]) * 1000)


def section_replicas(env: Env, report: Report, repeats: int) -> None:
    """Two routers ([zmq-router] replicas): a new client's first read with one dead vs both up.

    The client asks every router at once and takes the first good answer,
    so the dead router should cost (almost) nothing.  The configuration's
    own router (the first one asked) is the one killed; the replica's
    death is a diagnostic.
    """
    from cauldron_zmq import ktl
    from cauldron_zmq.router import RouterClient
    # Two routers of their own (the shared one, env.router(), stays untouched),
    # handing out the upper half of the bench's port range.
    port_a, port_b = env.free_port(), env.free_port()
    cfg = env.config.replace(router={"port": port_a, "replicas": [f"127.0.0.1:{port_b}"],
                                     "first-port": env.config.router.first_port + 16})
    cfg_b = cfg.replace(router={"port": port_b, "replicas": [f"127.0.0.1:{port_a}"]})
    paths = {"A": env.write_config("replicas-a.toml", cfg),
             "B": env.write_config("replicas-b.toml", cfg_b)}
    addresses = {"A": cfg.router_address(), "B": cfg_b.router_address()}
    router_cmd = console_script("Cauldron-router-zmq", "cauldron_zmq.router")
    routers = {}
    for name in ("A", "B"):
        routers[name] = env.procs.spawn(f"router-{name}", router_cmd + ["-c", paths[name]])
        ping_until_answer(env.context, addresses[name], time.monotonic() + 30, routers[name])
    service = "replsvc"
    disp = env.procs.spawn("replicas-dispatcher", [sys.executable, BENCH, "--role",
                                                   "dispatcher", paths["A"], service])
    env.procs.wait_for_log(disp, r"bench dispatcher ready", 60)

    def in_book(name: str) -> bool:
        try:
            with RouterClient(cfg, address=addresses[name], timeout=500,
                              context=env.context) as rc:
                return any(e["service"] == service and e["ready"]
                           for e in rc.list()["entries"])
        except Exception:  # noqa: BLE001 - not yet
            return False

    def registered(names: Sequence[str]) -> None:
        deadline = time.monotonic() + 30
        while not all(in_book(name) for name in names):
            if time.monotonic() > deadline:
                raise BenchError(f"the dispatcher is not in the book of {', '.join(names)}")
            time.sleep(0.02)

    registered(["A", "B"])

    def first_reads() -> List[float]:
        times = []
        for _ in range(repeats):
            t0 = time.monotonic()
            with ktl.Service(service, config=cfg) as svc:
                svc["READV"].read()
            times.append((time.monotonic() - t0) * 1000)
        return times

    try:
        both = first_reads()
        env.procs.kill(routers["A"], signal.SIGKILL)
        a_dead = first_reads()
        routers["A"] = env.procs.spawn("router-A2", router_cmd + ["-c", paths["A"]])
        ping_until_answer(env.context, addresses["A"], time.monotonic() + 30, routers["A"])
        registered(["A"])             # re-registered with the restarted router
        env.procs.kill(routers["B"], signal.SIGKILL)
        b_dead = first_reads()
    finally:
        env.procs.stop(disp)
        for proc in routers.values():
            env.procs.stop(proc)
    report.figure("replicas.first_read",
                  "new client's first read, one of two routers dead (median)", "ms",
                  statistics.median(a_dead), statistics.median(both), bar=1.5,
                  repeats=repeats, dead_ms=a_dead, both_ms=both,
                  baseline="the same with both routers alive")
    report.diagnostic("first read, the replica (not the own router) dead", "ms",
                      statistics.median(b_dead), statistics.median(both), "both alive")
