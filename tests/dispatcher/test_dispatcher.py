"""The dispatcher over real sockets, router disabled: keywords, hooks, broadcasts."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, List

import pytest
import zmq

from cauldron_zmq import DFW, protocol
from cauldron_zmq.dispatcher import Service
from cauldron_zmq.errors import CauldronError, NoWriteNecessary

try:
    from .test_dispatcher_support import Client, no_leaks, standalone_config, wait_for
except ImportError:
    from test_dispatcher_support import Client, no_leaks, standalone_config, wait_for  # type: ignore

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]
_ = no_leaks


@pytest.fixture
def cfg(tmp_path: Any) -> Any:
    return standalone_config(tmp_path)


# ---------------------------------------------------------------- container

def test_container_api(cfg: Any) -> None:
    svc = Service("MySvc", cfg)
    assert svc.name == "mysvc" and svc.dispatcher == "default"
    temp = DFW.Keyword.Double("temp", svc, initial=1.0)
    DFW.Keyword.Double("TEMP2", svc)
    assert temp.name == "TEMP"
    assert svc["Temp"] is temp and "temp" in svc and "NOPE" not in svc
    assert svc.keywords() == ["TEMP", "TEMP2"] and [k.name for k in svc] == ["TEMP", "TEMP2"]
    assert svc.get("nope") is None and len(svc) == 2
    with pytest.raises(KeyError) as info:
        svc["TEMPP"]
    assert "mysvc" in str(info.value) and "TEMP" in str(info.value)
    with pytest.raises(ValueError, match="already exists"):
        DFW.Keyword.Integer("TEMP", svc)
    assert svc.setStatusKeyword("TEMP") is True and svc.setStatusKeyword(temp) is False
    assert svc.address is None
    svc.shutdown()      # never begun: a no-op
    with pytest.raises(CauldronError):
        svc.begin()


def test_dfw_names() -> None:
    assert DFW.Keyword.Float is DFW.Keyword.Double is DFW.Double
    assert DFW.Keyword.types["integer"] is DFW.Integer
    assert DFW.Keyword.types["double array"] is DFW.DoubleArray
    assert issubclass(DFW.Keyword.Basic, DFW.Keyword.Keyword)


def test_begin_shutdown_idempotent(cfg: Any) -> None:
    svc = Service("idem", cfg, setup=lambda s: DFW.Keyword.Integer("N", s, initial=1))
    assert svc.begin() is svc and svc.begin() is svc
    context = svc._context
    svc.shutdown()
    svc.shutdown()
    assert context is not None and context.closed
    assert svc.address is None and not svc.running


# -------------------------------------------------------------- conversions

TYPE_CASES = [
    # class, kwargs, [(written, value, ascii)], [refused]
    (DFW.Boolean, {}, [("yes", True, "1"), (0, False, "0"), ("ON", True, "1")], ["maybe", 2]),
    (DFW.Integer, {"minimum": -5, "maximum": 100},
     [("42", 42, "42"), (7, 7, "7"), (4.0, 4, "4")], [2.5, "abc", 101, -6, True]),
    (DFW.Double, {}, [("1.5", 1.5, "1.5"), (2, 2.0, "2.0"), ("nan", "nan", "nan")], ["x", False]),
    (DFW.String, {}, [("hello", "hello", "hello"), (5, "5", "5")], [[1], {"a": 1}]),
    (DFW.Enumerated, {"enumerators": ["OFF", "ON", "AUTO"]},
     [("AUTO", 2, "AUTO"), (1, 1, "ON"), ("off", 0, "OFF")], ["FAST", 7]),
    (DFW.Mask, {"enumerators": ["A", "B", "C"]},
     [("A, C", 5, "A, C"), (2, 2, "B"), ("", 0, "")], ["D", -1]),
    (DFW.IntegerArray, {}, [([1, 2, 3], [1, 2, 3], "1 2 3"), ("4 5", [4, 5], "4 5")],
     [[1.5], "a b"]),
    (DFW.DoubleArray, {"maximum": 10},
     [([1, 2.5], [1.0, 2.5], "1.0 2.5"), ("3,4", [3.0, 4.0], "3.0 4.0")], [[11.0], ["x"]]),
]


def test_types_through_the_wire(cfg: Any) -> None:
    def setup(svc: Service) -> None:
        for i, (cls, kwargs, _, _) in enumerate(TYPE_CASES):
            cls(f"K{i}", svc, **kwargs)

    with Service("types", cfg, setup=setup) as svc, Client.of(svc) as client:
        for i, (cls, _, good, bad) in enumerate(TYPE_CASES):
            name = f"K{i}"
            for written, value, ascii in good:
                reply = client.write(name, written)
                assert reply.status == "ok", (cls.__name__, written, reply.payload)
                assert reply.payload["value"] == value
                if cls in (DFW.String, DFW.IntegerArray, DFW.DoubleArray):
                    assert "ascii" not in reply.payload     # the value, or formatted by clients
                else:
                    assert reply.payload["ascii"] == ascii
                assert client.read(name)["value"] == value
            before = client.read(name)
            for written in bad:
                reply = client.write(name, written)
                assert reply.status == "error", (cls.__name__, written)
                assert reply.payload["code"] == "invalid-value"
                assert reply.payload["type"] == "ConversionError"
                assert name in reply.payload["message"]
            assert client.read(name) == before
        # describe carries type metadata
        desc = client.request("describe", "K4").payload
        assert desc["type"] == "enumerated" and desc["ktl_type"] == "KTL_ENUMERATED"
        assert desc["enumerators"] == ["OFF", "ON", "AUTO"]
        everything = client.request("describe").payload["keywords"]
        assert sorted(everything) == svc.keywords()


def test_numpy_arrays_with_raw_frames(cfg: Any) -> None:
    np = pytest.importorskip("numpy")
    with Service("np", cfg, setup=lambda s: DFW.DoubleArray("A", s, initial=[0.0])) as svc, \
            Client.of(svc) as client:
        arr = np.arange(4, dtype="<f8")
        reply = client.request("write", "A", {"value": {"dtype": "<f8", "shape": [4]}},
                               raw=arr.tobytes())
        assert reply.status == "ok" and reply.raw is not None
        assert np.frombuffer(reply.raw, "<f8").tolist() == [0.0, 1.0, 2.0, 3.0]
        assert isinstance(svc["A"].value, np.ndarray)
        svc["A"].set(np.ones(3))
        assert np.frombuffer(client.request("read", "A").raw, "<f8").tolist() == [1.0] * 3


def test_read_only_write_only_and_unknown(cfg: Any) -> None:
    def setup(svc: Service) -> None:
        DFW.Integer("RO", svc, initial=1, readonly=True)
        DFW.Integer("WO", svc, initial=1, writeonly=True)

    with Service("rw", cfg, setup=setup) as svc, Client.of(svc) as client:
        reply = client.write("RO", 2)
        assert reply.payload["code"] == "read-only" and svc["RO"].value == 1
        assert client.request("read", "WO").payload["code"] == "write-only"
        assert client.write("WO", 3).status == "ok" and svc["WO"].value == 3
        reply = client.request("read", "R0")
        assert reply.payload["code"] == "unknown-keyword" and "RO" in reply.payload["message"]
        assert client.request("read", "").payload["code"] == "bad-request"
        assert client.request("write", "WO", {}).payload["code"] == "bad-request"
        listed = client.request("list").payload
        assert listed == {"service": "rw", "dispatcher": "default", "keywords": ["RO", "WO"]}
        ident = client.request("identify").payload
        assert ident["pid"] == os.getpid() and ident["keywords"] == 2
        assert ident["started"] == svc.started
        assert client.request("ping").payload == {}


# ----------------------------------------------------------------- hooks

class Recorder(DFW.Integer):
    """Records the order its hooks run in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.calls: List[str] = []
        super().__init__(*args, **kwargs)

    def check(self, value: Any) -> None:
        self.calls.append(f"check({value})")
        if value == 13:
            raise ValueError("13 is unlucky")

    def translate(self, value: Any) -> Any:
        self.calls.append(f"translate({value!r})")
        return {"ten": 10}.get(value, value)

    def prewrite(self, value: Any) -> Any:
        self.calls.append(f"prewrite({value})")
        return super().prewrite(value)

    def write(self, value: Any) -> None:
        self.calls.append(f"write({value})")
        if value == 66:
            raise RuntimeError("stage jammed")

    def postwrite(self, value: Any) -> None:
        self.calls.append(f"postwrite({value})")
        super().postwrite(value)

    def preread(self) -> None:
        self.calls.append("preread")

    def read(self) -> Any:
        self.calls.append("read")
        return 5

    def postread(self, value: Any) -> Any:
        self.calls.append(f"postread({value})")
        return super().postread(value)


def test_hook_order_and_failures(cfg: Any) -> None:
    with Service("hooks", cfg, setup=lambda s: Recorder("R", s, initial=1)) as svc, \
            Client.of(svc) as client:
        kw = svc["R"]
        kw.calls.clear()
        rid = client.send("write", "R", {"value": "ten"})
        reply = client.final(rid)
        assert rid in client.acks                       # hooks ran on a worker, acked first
        assert reply.status == "ok" and reply.payload["value"] == 10
        assert reply.payload["changed"] is True
        assert kw.calls == ["translate('ten')", "prewrite(10)", "check(10)", "write(10)",
                            "postwrite(10)", "check(10)"]

        kw.calls.clear()
        reply = client.write("R", 10)                   # unchanged: prewrite says no write
        assert reply.status == "ok" and reply.payload["changed"] is False
        assert kw.calls == ["translate(10)", "prewrite(10)"]

        seq = kw.seq
        reply = client.write("R", 13)                   # check refuses
        assert reply.payload == {"code": "invalid-value", "message": "13 is unlucky",
                                 "type": "ValueError"}
        reply = client.write("R", 66)                   # write hook fails
        assert reply.payload == {"code": "write-failed", "message": "stage jammed",
                                 "type": "RuntimeError"}
        assert client.write("R", "x").payload["code"] == "invalid-value"
        assert kw.value == 10 and kw.seq == seq         # nothing changed

        kw.calls.clear()
        value = client.read("R")
        assert kw.calls == ["preread", "read", "postread(5)", "translate(5)", "check(5)"]
        assert value["value"] == 5 and value["seq"] == seq + 1

        with pytest.raises(ValueError, match="unlucky"):   # local calls raise the original
            kw.set(13)
        with pytest.raises(RuntimeError):
            kw.modify(66)
        assert kw.modify(5) is False


def test_callable_hooks_and_failures(cfg: Any) -> None:
    written: List[Any] = []

    def bad_read() -> Any:
        raise OSError("sensor unplugged")

    def prewrite(value: Any) -> Any:
        if value < 0:
            raise NoWriteNecessary("ignored")
        if value > 100:
            raise KeyError("custom refusal")
        return value

    def setup(svc: Service) -> None:
        DFW.Double("D", svc, initial=0.0, write=written.append, prewrite=prewrite)
        DFW.Double("S", svc, initial=0.0, read=bad_read)

    with Service("callables", cfg, setup=setup) as svc, Client.of(svc) as client:
        assert client.write("D", 3).payload["value"] == 3.0 and written == [3.0]
        reply = client.write("D", -1)
        assert reply.status == "ok" and reply.payload["changed"] is False
        assert reply.payload["value"] == 3.0
        reply = client.write("D", 101)
        assert reply.payload["code"] == "write-failed" and reply.payload["type"] == "KeyError"
        assert reply.payload["message"] == "custom refusal"
        reply = client.request("read", "S")
        assert reply.payload == {"code": "read-failed", "message": "sensor unplugged",
                                 "type": "OSError"}
        assert written == [3.0]


def test_fast_path_needs_no_ack(cfg: Any) -> None:
    def setup(svc: Service) -> None:
        DFW.Integer("PLAIN", svc, initial=1)
        DFW.Integer("HOOKED", svc, initial=1, write=lambda v: None)

    with Service("fast", cfg, setup=setup) as svc, Client.of(svc) as client:
        assert svc["PLAIN"].fast_write() and svc["PLAIN"].fast_read()
        assert not svc["HOOKED"].fast_write() and svc["HOOKED"].fast_read()
        client.write("PLAIN", 2)
        client.read("PLAIN")
        assert client.acks == []
        rid = client.send("write", "HOOKED", {"value": 2})
        assert client.final(rid).status == "ok" and client.acks == [rid]
        svc["PLAIN"].callback(lambda kw: None)          # callbacks leave the I/O thread
        assert not svc["PLAIN"].fast_write()
        svc["PLAIN"].write = lambda v: None             # so do hooks assigned later
        assert not svc["PLAIN"]._fast_paths()[1]


# ------------------------------------------------------------- concurrency

def test_slow_write_does_not_block_other_keywords(cfg: Any) -> None:
    started, release = threading.Event(), threading.Event()

    def slow(value: Any) -> None:
        started.set()
        assert release.wait(20)

    def setup(svc: Service) -> None:
        DFW.Double("STAGE", svc, initial=0.0, write=slow)
        DFW.Double("OTHER", svc, initial=0.0, write=lambda v: None)

    with Service("slow", cfg, setup=setup) as svc, Client.of(svc) as client:
        slow_id = client.send("write", "STAGE", {"value": 30})
        assert started.wait(5)
        assert client.write("OTHER", 1).status == "ok"       # a hooked keyword, on a worker
        assert client.read("STAGE")["value"] == 0.0          # reads of the slow one still work
        assert svc["STAGE"].value == 0.0
        release.set()
        reply = client.final(slow_id)
        assert reply.status == "ok" and reply.payload["value"] == 30.0


def test_writes_to_one_keyword_apply_in_order(cfg: Any) -> None:
    applied: List[Any] = []
    gate = threading.Event()

    def write(value: Any) -> None:
        gate.wait(10)
        applied.append(value)

    with Service("fifo", cfg, setup=lambda s: DFW.Integer("N", s, initial=0, write=write)) as svc, \
            Client.of(svc) as client:
        ids = [client.send("write", "N", {"value": v}) for v in range(1, 21)]
        gate.set()
        for rid in ids:
            assert client.final(rid).status == "ok"
        assert applied == list(range(1, 21)) and svc["N"].value == 20


def test_set_from_hooks_and_threads_never_deadlocks(cfg: Any) -> None:
    def setup(svc: Service) -> None:
        def write(value: Any) -> None:
            kw = svc["A"]
            kw.set(value - 1)                            # set() of its own keyword from a hook
            svc["B"].set(value * 2)                      # and of another one
        DFW.Integer("A", svc, initial=0, write=write)
        DFW.Integer("B", svc, initial=0)

    with Service("reentrant", cfg, setup=setup) as svc, Client.of(svc) as client:
        threads = [threading.Thread(target=lambda i=i: svc["B"].set(1000 + i)) for i in range(8)]
        for t in threads:
            t.start()
        reply = client.write("A", 5)
        for t in threads:
            t.join(5)
        assert reply.status == "ok" and svc["A"].value == 5


def test_callbacks_strong_and_failures_logged(cfg: Any, caplog: Any) -> None:
    seen: List[Any] = []
    with Service("cb", cfg, setup=lambda s: DFW.Integer("N", s, initial=0)) as svc, \
            Client.of(svc) as client:
        kw = svc["N"]
        kw.callback(lambda k: seen.append(k.value))      # a lambda is kept (strong reference)

        def broken(k: Any) -> None:
            raise RuntimeError("callback bug")
        kw.callback(broken)
        with caplog.at_level(logging.ERROR):
            assert client.write("N", 4).status == "ok"    # callbacks -> worker, still ok
        assert seen == [4] and kw.value == 4 and "callback bug" in caplog.text
        kw.set(4)                                          # unchanged: no callback
        kw.set(4, force=True)
        assert seen == [4, 4]
        kw.callback(broken, remove=True)
        kw.set(5)
        assert seen == [4, 4, 5]


# ------------------------------------------------------------- broadcasts

def test_every_change_broadcast_once_in_order(cfg: Any) -> None:
    def setup(svc: Service) -> None:
        DFW.Integer("A", svc, initial=1)
        DFW.Integer("B", svc, initial=2, write=lambda v: None)

    with Service("bc", cfg, setup=setup) as svc, Client.of(svc, b"bc\0") as client:
        hb = client.wait_heartbeat()
        assert hb.payload["gseq"] >= 2                     # the initial values went out
        assert client.read("A")["seq"] == 1 and client.read("B")["seq"] == 1   # primed by read
        gseq0 = hb.payload["gseq"]
        client.write("A", 10)
        client.write("A", 10)                              # unchanged: no broadcast
        client.write("B", 20)
        client.write("A", "x")                             # refused: no broadcast
        svc["A"].set(11)
        threading.Thread(target=svc["B"].set, args=(21,)).start()
        got = client.keyword_broadcasts(lambda g: len(g) >= 4)
        extra = [b for b in client.drain(0.3) if not b.is_heartbeat]
        assert extra == []
        by_kw = {"A": [b.payload for b in got if b.keyword == "A"],
                 "B": [b.payload for b in got if b.keyword == "B"]}
        assert [(p["value"], p["seq"]) for p in by_kw["A"]] == [(10, 2), (11, 3)]
        assert [(p["value"], p["seq"]) for p in by_kw["B"]] == [(20, 2), (21, 3)]
        gseqs = [b.payload["gseq"] for b in got]
        assert gseqs == list(range(gseq0 + 1, gseq0 + 5))
        for b in got:
            assert b.service == "bc" and b.payload["dispatcher"] == "default"
            assert isinstance(b.payload["time"], float) and b.payload["ascii"]
        hb = client.wait_heartbeat()                       # heartbeat says: nothing lost
        assert hb.payload["gseq"] == gseqs[-1]
        assert hb.payload["pid"] == os.getpid() and hb.payload["started"] == svc.started
        assert hb.payload["interval"] == pytest.approx(0.2)
        svc.broadcast()                                    # re-broadcast: same seq, new gseq
        again = client.keyword_broadcasts(lambda g: len(g) >= 2)
        assert {(b.keyword, b.payload["seq"]) for b in again} == {("A", 3), ("B", 3)}


def test_topic_filter_is_exact(cfg: Any) -> None:
    def setup(svc: Service) -> None:
        DFW.Integer("FOO", svc, initial=0)
        DFW.Integer("FOO2", svc, initial=0)

    with Service("topics", cfg, setup=setup) as svc, \
            Client.of(svc, protocol.topic("topics", "FOO")) as client:
        client.subscribe(protocol.topic("topics", ""))    # heartbeats, to know we are connected
        client.wait_heartbeat()
        svc["FOO2"].set(1)
        svc["FOO"].set(1)
        got = client.keyword_broadcasts(lambda g: len(g) >= 1)
        assert [b.keyword for b in got] == ["FOO"]


def test_periodic_update_and_schedule(cfg: Any) -> None:
    counter = {"n": 0}
    scheduled: List[float] = []

    def read() -> Any:
        counter["n"] += 1
        return counter["n"]

    def setup(svc: Service) -> None:
        DFW.Integer("TICK", svc, initial=0, period=0.05, read=read)
        DFW.Double("ONCE", svc, initial=0.0, read=lambda: scheduled.append(time.time()) or 1.0)

    with Service("periodic", cfg, setup=setup) as svc, Client.of(svc, b"periodic\0") as client:
        client.wait_heartbeat()
        got = client.keyword_broadcasts(lambda g: len([b for b in g if b.keyword == "TICK"]) >= 3)
        ticks = [b.payload["value"] for b in got if b.keyword == "TICK"]
        assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
        when = time.time() + 0.15
        svc["ONCE"].schedule(when)
        svc["ONCE"].schedule(when + 100)
        svc["ONCE"].schedule(when + 100, cancel=True)
        wait_for(lambda: scheduled, what="the scheduled update")
        assert scheduled[0] >= when - 0.01                # sub-second, not truncated
        svc["TICK"].period(None)
        assert svc["TICK"].describe()["period"] is None


def test_periodic_update_stops_after_five_failures(cfg: Any, caplog: Any) -> None:
    calls = {"n": 0}

    def read() -> Any:
        calls["n"] += 1
        raise RuntimeError("broken sensor")

    with caplog.at_level(logging.WARNING, logger="cauldron_zmq.dispatcher.failing"):
        with Service("failing", cfg,
                     setup=lambda s: DFW.Integer("BAD", s, period=0.02, read=read)) as svc:
            wait_for(lambda: "stopped" in caplog.text, what="the periodic update to stop")
            n = calls["n"]
            assert n == 5
            entry = svc["BAD"]._periodic
            assert entry.cancelled


# -------------------------------------------------------------- robustness

def test_malformed_frames_get_errors_and_serving_goes_on(cfg: Any) -> None:
    with Service("robust", cfg, setup=lambda s: DFW.Integer("N", s, initial=1)) as svc, \
            Client.of(svc) as client:
        v = protocol.VERSION
        cases = [
            ([b"only", b"two"], "bad-frames"),
            ([b"CZMQ9", b"id1", b"read", b"N", b"{}"], "bad-version"),
            ([v, b"id2", b"read", b"N", b"{not json"], "bad-json"),
            ([v, b"id3", b"explode", b"N", b"{}"], "unknown-command"),
            ([v, b"id4", b"\xff\xfe", b"N", b"{}"], "bad-encoding"),
            ([v, b"id5", b"write", b"N", b"[1, 2]"], "bad-request"),
            ([v, b"id6", b"read", b"N", b"NaN"], "bad-json"),
        ]
        for frames, code in cases:
            client.send_frames(frames)
            reply = client.receive()
            assert reply.status == "error" and reply.payload["code"] == code, (frames, reply)
        client.send_frames([b""])                        # no body at all: dropped
        big = b"x" * (cfg.zmq.max_message_size + 10)
        client.send_frames([v, b"id7", b"write", b"N", big])   # too large: the socket drops it
        assert client.read("N")["value"] == 1
        assert client.write("N", 2).payload["value"] == 2


def test_wake_pipe_survives_many_producers(cfg: Any) -> None:
    with Service("flood", cfg, setup=lambda s: DFW.Integer("N", s, initial=0)) as svc, \
            Client.of(svc, b"flood\0") as client:
        client.wait_heartbeat()

        def hammer(base: int) -> None:
            for i in range(2000):
                svc["N"].set(base + i)
        threads = [threading.Thread(target=hammer, args=(k * 10000 + 1,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        got = client.keyword_broadcasts(lambda g: len(g) >= 8000, timeout=20)
        seqs = [b.payload["seq"] for b in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 8000
        assert client.read("N")["seq"] == 8001


# --------------------------------------------------------------- lifecycle

def test_set_before_begin_and_keyword_after_begin(cfg: Any) -> None:
    svc = Service("late", cfg, setup=lambda s: DFW.Integer("EARLY", s, initial=1))
    svc["EARLY"].set(7)                                  # before begin: kept, initial skipped
    with svc, Client.of(svc) as client:
        assert client.read("EARLY")["value"] == 7
        DFW.String("LATE", svc, initial="hi")           # after begin: served at once
        assert client.read("LATE")["value"] == "hi"


def test_bind_failure_with_router_disabled_is_clear(cfg: Any) -> None:
    blocker = zmq.Context()
    sock = blocker.socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{cfg.zmq.dispatch_port}")
    try:
        svc = Service("busy", cfg, setup=lambda s: DFW.Integer("N", s))
        with pytest.raises(OSError, match=str(cfg.zmq.dispatch_port)):
            svc.begin()
        assert svc._context is None and svc._io is None
    finally:
        sock.close(0)
        blocker.term()
    with svc:                                          # a failed begin may be retried
        assert svc.running


def test_no_threads_or_sockets_left(cfg: Any) -> None:
    before = {t for t in threading.enumerate()}
    svc = Service("leak", cfg, setup=lambda s: [DFW.Integer("N", s, initial=1, period=0.05),
                                                DFW.Integer("P", s, persist=True, initial=1)])
    svc.begin()
    with Client.of(svc) as client:
        client.write("N", 3)
    context = svc._context
    svc.shutdown()
    assert context.closed
    left = [t for t in threading.enumerate() if t not in before]
    assert left == [], left


# -------------------------------------------------------------- persistence

def test_persisted_values_survive_a_restart(cfg: Any, tmp_path: Any) -> None:
    def setup(svc: Service) -> None:
        DFW.Double("SAVED", svc, initial=1.0, persist=True)
        DFW.Double("NOT", svc, initial=1.0)
        DFW.IntegerArray("ARR", svc, initial=[1], persist=True)

    with Service("keep", cfg, setup=setup) as svc, Client.of(svc) as client:
        for value in (2.0, 3.0, 4.5):
            client.write("SAVED", value)
        client.write("NOT", 9.0)
        client.write("ARR", [1, 2, 3])
    path = tmp_path / "persist" / "keep.default.json"
    data = json.loads(path.read_text())
    assert data["keywords"]["SAVED"]["value"] == 4.5
    assert "NOT" not in data["keywords"]
    with Service("keep", cfg, setup=setup) as svc:
        assert svc["SAVED"].value == 4.5 and svc["NOT"].value == 1.0
        assert svc["ARR"].value == [1, 2, 3]
    path.write_text("{ corrupt")
    with Service("keep", cfg, setup=setup) as svc:
        assert svc["SAVED"].value == 1.0
    assert [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name]


def test_a_req_socket_is_answered_too(cfg: Any) -> None:
    with Service("req", cfg, setup=lambda s: DFW.Integer("N", s, initial=3)) as svc:
        context = zmq.Context()
        req = context.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        try:
            req.connect(svc.address["dispatch"])
            req.send_multipart(protocol.encode_request(protocol.request("read", "N")))
            assert req.poll(5000)
            reply = protocol.decode_reply(req.recv_multipart())
            assert reply.status == "ok" and reply.payload["value"] == 3
        finally:
            req.close(0)
            context.term()


def test_serve_forever_returns_after_shutdown_from_another_thread(cfg: Any) -> None:
    svc = Service("forever", cfg, setup=lambda s: DFW.Integer("N", s, initial=1))
    returned: List[Any] = []

    def serve() -> None:
        svc.serve_forever()
        returned.append(svc._context)       # None once the teardown has finished

    thread = threading.Thread(target=serve)
    thread.start()
    wait_for(lambda: svc.running, what="serving")
    svc.shutdown()
    thread.join(10)
    assert returned == [None] and not svc.running
