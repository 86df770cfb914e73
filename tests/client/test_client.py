"""cauldron_zmq.ktl end to end: a real router and DFW dispatcher on 127.0.0.1.

The servers run in this process (threads) for speed; tests/client/test_client_restart.py
runs them as subprocesses to kill, stop and restart them.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Iterator, List

import pytest

from cauldron_zmq import DFW, ktl
from cauldron_zmq.client import ServiceShutDown, Task, UnknownKeyword
from cauldron_zmq.errors import (CauldronError, DispatcherError, ServiceNotFound,
                                 TimeoutError)
from cauldron_zmq.expression import ExpressionError
from cauldron_zmq.testing import ServiceHarness, running_service, service_fixture, wait_until

from conftest import client_threads

pytestmark = pytest.mark.usefixtures("no_client_threads_left")

GATE = threading.Event()          # SLOW's write hook blocks until it is set
TICKS = {"n": 0}


def _odd_refused(value: Any) -> None:
    if int(value) % 2:
        raise ValueError(f"PICKY refuses odd values like {value}")


def _unplugged() -> Any:
    raise RuntimeError("sensor unplugged")


def _tick() -> int:
    TICKS["n"] += 1
    return TICKS["n"]


def setup(svc: Any) -> None:
    DFW.Integer("COUNT", svc, initial=3, units="counts", maximum=100)
    DFW.Double("TEMP", svc, initial=20.5, units="degC")
    DFW.Enumerated("MODE", svc, enumerators=["OFF", "STANDBY", "ON"], initial="STANDBY")
    DFW.String("NAME", svc, initial="hello")
    DFW.Boolean("FLAG", svc, initial=False)
    DFW.Integer("SLOW", svc, initial=0, write=lambda value: GATE.wait(10))
    DFW.Integer("PICKY", svc, initial=0, check=_odd_refused)
    DFW.String("BROKEN", svc, initial="x", read=_unplugged)
    DFW.Integer("RO", svc, initial=7, readonly=True)
    DFW.Integer("TICK", svc, initial=0, read=_tick)
    DFW.DoubleArray("ARR", svc, initial=[1.0, 2.5])


@pytest.fixture(scope="module")
def harness() -> Iterator[ServiceHarness]:
    with ServiceHarness(setup, "ctest") as h:
        yield h


@pytest.fixture
def svc(harness: ServiceHarness) -> Iterator[ktl.Service]:
    GATE.clear()
    with ktl.Service("ctest", config=harness.config) as service:
        yield service
    GATE.set()


@pytest.fixture
def disp(harness: ServiceHarness) -> Any:
    """The dispatcher-side DFW.Service, to change values behind the client's back."""
    return harness.dispatcher


def collect(kw: ktl.Keyword) -> List[str]:
    """A list that a (lambda) callback appends each ascii value to."""
    seen: List[str] = []
    kw.callback(lambda k: seen.append(k["ascii"]))
    return seen


# ------------------------------------------------------------------ service

def test_keywords_and_membership(svc: ktl.Service) -> None:
    assert svc.keywords() == sorted(["ARR", "BROKEN", "COUNT", "FLAG", "MODE", "NAME", "PICKY",
                                     "RO", "SLOW", "TEMP", "TICK"])
    assert "COUNT" in svc and "count" in svc and "NOPE" not in svc
    assert svc.has_keyword("temp") and svc.has_key("TEMP") and not svc.has_keyword("X")
    assert svc.populated() == []
    svc["count"]
    assert svc.populated() == ["COUNT"]
    assert svc["COUNT"] is svc["count"]
    assert svc.name == "ctest"
    assert svc.isAlive()


def test_unknown_keyword_suggests(svc: ktl.Service) -> None:
    with pytest.raises(KeyError) as info:
        svc["COUNTT"]
    assert isinstance(info.value, UnknownKeyword)
    assert str(info.value) == "service 'ctest' has no keyword 'COUNTT'; did you mean 'COUNT'?"


def test_populate(harness: ServiceHarness) -> None:
    with ktl.Service("ctest", config=harness.config, populate=True) as svc:
        assert svc.populated() == svc.keywords()
        assert svc["MODE"]["ascii"] in ("OFF", "STANDBY", "ON")


def test_service_not_found(harness: ServiceHarness) -> None:
    start = time.monotonic()
    with pytest.raises(ServiceNotFound) as info:
        ktl.Service("nosuch", config=harness.config)
    assert time.monotonic() - start < harness.config.zmq.timeout / 1000
    assert "'nosuch'" in str(info.value)
    assert harness.config.router_address() in str(info.value)


def test_wait_for_a_service_that_comes_up(harness: ServiceHarness) -> None:
    late = DFW.Service("late", config=harness.config,
                       setup=lambda s: DFW.Integer("X", s, initial=1))
    timer = threading.Timer(0.3, late.begin)
    timer.start()
    try:
        with ktl.Service("late", config=harness.config, wait=5) as svc:
            assert svc["X"].read() == "1"
    finally:
        timer.join()
        late.shutdown()
    with pytest.raises(ServiceNotFound) as info:
        ktl.Service("never", config=harness.config, wait=0.3)
    assert "of waiting up to 0.3 s" in str(info.value)


def test_shut_down_service_refuses_calls(harness: ServiceHarness) -> None:
    svc = ktl.Service("ctest", config=harness.config)
    kw = svc["COUNT"]
    svc.shutdown()
    svc.shutdown()                                    # idempotent
    assert svc.closed
    with pytest.raises(ServiceShutDown):
        kw.read()
    with pytest.raises(ServiceShutDown):
        svc["TEMP"]
    assert not [t for t in client_threads() if "ctest" in t.name and t.is_alive()]


# -------------------------------------------------------------------- reads

def test_read_forms(svc: ktl.Service, disp: Any) -> None:
    disp["MODE"].set("STANDBY")
    mode = svc["MODE"]
    assert mode.read() == "STANDBY"
    assert mode.read(binary=True) == 1
    assert mode.read(both=True) == (1, "STANDBY")
    temp = svc["TEMP"]
    disp["TEMP"].set(20.5)
    assert temp.read() == "20.5" and temp.read(binary=True) == 20.5
    assert svc["FLAG"].read(binary=True) is False
    assert svc["ARR"].read(binary=True) == [1.0, 2.5]
    assert svc.read("NAME") == "hello"


def test_read_without_waiting(svc: ktl.Service) -> None:
    task = svc["COUNT"].read(wait=False, binary=True)
    assert isinstance(task, Task)
    assert task.wait(2) and task.status == "success" and task.error is None
    assert isinstance(task.result, int) and task.get() == task.result


def test_read_hook_error_reaches_client(svc: ktl.Service) -> None:
    with pytest.raises(DispatcherError) as info:
        svc["BROKEN"].read()
    assert isinstance(info.value, RuntimeError)
    assert info.value.code == "read-failed"
    assert "sensor unplugged" in str(info.value) and "BROKEN" in str(info.value)
    task = svc["BROKEN"].read(wait=False)
    assert task.wait(2) and task.status == "error"
    with pytest.raises(RuntimeError):
        task.get()


# ------------------------------------------------------------------- writes

def test_write_forms(svc: ktl.Service) -> None:
    count = svc["COUNT"]
    assert count.write(5) == "5"
    assert count.read() == "5"
    assert count.write("6", binary=True) == 6
    mode = svc["MODE"]
    assert mode.write("ON") == "ON" and mode["binary"] == 2
    assert mode.write(0) == "OFF"
    assert svc["FLAG"].write(True) == "1" and svc["FLAG"].value is True
    assert math.isnan(svc["TEMP"].write(float("nan"), binary=True))
    assert math.isnan(svc["TEMP"].value) and svc["TEMP"]["ascii"] == "nan"
    assert svc["ARR"].write([3.0, 4.0], binary=True) == [3.0, 4.0]
    assert svc.write("NAME", "there") == "there"


def test_unchanged_write_returns_at_once(svc: ktl.Service) -> None:
    count = svc["COUNT"]
    count.write(9)
    start = time.monotonic()
    for _ in range(20):
        count.write(9)
    assert time.monotonic() - start < 0.5          # no broadcast to wait for


def test_write_without_waiting(svc: ktl.Service) -> None:
    task = svc["COUNT"].write(11, wait=False)
    assert task.status in ("pending", "success")
    assert task.wait(2) and task.status == "success" and task.result == "11"
    assert svc["COUNT"].wait(sequence=task) is True


def test_refused_write_keeps_type_and_reason(svc: ktl.Service) -> None:
    picky = svc["PICKY"]
    with pytest.raises(ValueError) as info:
        picky.write(3)
    exc = info.value
    assert isinstance(exc, DispatcherError) and isinstance(exc, CauldronError)
    assert exc.code == "invalid-value" and exc.remote_type == "ValueError"
    assert "PICKY refuses odd values like 3" in str(exc)
    task = picky.write(5, wait=False)
    assert task.wait(2) and task.status == "error" and isinstance(task.error, ValueError)
    with pytest.raises(ValueError):
        picky.wait(sequence=task)
    with pytest.raises(DispatcherError) as info:
        svc["RO"].write(1)
    assert info.value.code == "read-only"
    with pytest.raises(DispatcherError) as info:
        svc["COUNT"].write(1000)
    assert info.value.code == "invalid-value" and "maximum 100" in str(info.value)


def test_timeout_then_recovery(svc: ktl.Service) -> None:
    slow = svc["SLOW"]
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        slow.write(1, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2.0
    message = str(info.value)
    assert "ctest.SLOW" in message and "acknowledged" in message
    assert "tcp://127.0.0.1:" in message
    task = slow.write(2, wait=False, timeout=0.2)
    assert task.wait(2) and isinstance(task.error, TimeoutError)
    GATE.set()                                         # the late replies are dropped
    assert svc["COUNT"].write(12) == "12"
    assert wait_until(lambda: slow.read() == "2", 5)
    assert slow.write(3) == "3"


def test_task_get_timeout(svc: ktl.Service) -> None:
    task = svc["SLOW"].write(7, wait=False, timeout=2)
    with pytest.raises(TimeoutError):
        task.get(timeout=0.05)
    assert task.status == "pending"
    assert svc["SLOW"].wait(sequence=task, timeout=0.05) is False     # KTL: False on timeout
    with pytest.raises(TimeoutError):
        svc["SLOW"].wait(sequence=task, timeout=0.05, raise_on_timeout=True)
    with pytest.raises(TypeError):
        svc["SLOW"].wait(sequence=3)                  # KTL's sequence numbers are Tasks here
    GATE.set()
    assert task.get() == "7"
    assert svc["SLOW"].wait(sequence=task) is True


# --------------------------------------------------------------- item access

def test_items_and_properties(svc: ktl.Service, disp: Any) -> None:
    disp["COUNT"].set(42)
    count = svc["COUNT"]
    count.read()
    assert count["ascii"] == "42" and count["binary"] == 42 and count.value == 42
    assert count["populated"] is True
    assert count["monitored"] is False and count["monitor"] is False
    assert count["reads"] is True and count["writes"] is True
    assert count["units"] == "counts" and count["type"] == "KTL_INTEGER"
    assert count["name"] == "COUNT" and count.name == "COUNT"
    assert count.full_name == "ctest.COUNT"
    assert count["connected"] is True and count.connected
    stamp = count["timestamp"]
    assert stamp == count.timestamp and abs(stamp - time.time()) < 60
    assert stamp != int(stamp) or stamp == disp["COUNT"].timestamp   # sub-second
    assert count.cast("17") == 17
    assert svc["RO"]["writes"] is False and svc["RO"]["reads"] is True
    assert svc["MODE"]["enumerators"] == {"0": "OFF", "1": "STANDBY", "2": "ON"}
    with pytest.raises(KeyError):
        count["enumerators"]
    with pytest.raises(KeyError):
        count["bogus"]


def test_history(svc: ktl.Service) -> None:
    count = svc["COUNT"]
    for n in (20, 21, 22):
        count.write(n)
    last = list(count.history)[-3:]
    assert [h.binary for h in last] == [20, 21, 22]
    assert [h.ascii for h in last] == ["20", "21", "22"]
    assert all(isinstance(h.time, float) for h in last)
    time_, binary, text, name = last[-1]           # Cauldron's four fields
    assert binary == 22 and text == "22" and name == "COUNT"


# -------------------------------------------------------- monitor and callback

def test_monitor_and_callbacks(svc: ktl.Service, disp: Any) -> None:
    count = svc["COUNT"]
    count.write(30)
    seen = collect(count)
    threads: List[str] = []
    count.callback(lambda k: threads.append(threading.current_thread().name))
    count.monitor()
    assert count["monitored"]
    disp["COUNT"].set(31)
    disp["COUNT"].set(32)
    count.write(33)
    wait_until(lambda: seen[-1:] == ["33"], 3, message="callback for 33")
    assert seen == ["30", "31", "32", "33"]       # primed, then once per change, in order
    assert set(threads) == {"cauldron_zmq.client.ctest.callbacks"}


def test_callbacks_fire_on_every_broadcast(svc: ktl.Service, disp: Any) -> None:
    count = svc["COUNT"]
    seen = collect(count)
    count.subscribe(prime=False)
    count.write(41)                                    # monitored: its broadcast fires
    wait_until(lambda: seen == ["41"], 3, message="the write's broadcast")
    disp["COUNT"].set(41, force=True)                  # same value, broadcast again
    disp["COUNT"].set(41, force=True)
    wait_until(lambda: len(seen) == 3, 3, message="two more callbacks")
    assert seen == ["41", "41", "41"]


def test_raising_callback_does_not_stop_others(svc: ktl.Service, disp: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    count = svc["COUNT"]

    def bad(kw: ktl.Keyword) -> None:
        raise RuntimeError("callback bug")

    count.callback(bad)
    seen = collect(count)
    count.monitor(prime=False)
    disp["COUNT"].set(50)
    disp["COUNT"].set(51)
    wait_until(lambda: seen == ["50", "51"], 3, message="callbacks after a raising one")
    assert "callback bug" in caplog.text


def test_preferred_and_removed_callbacks(svc: ktl.Service, disp: Any) -> None:
    count = svc["COUNT"]
    order: List[str] = []

    def first(kw: ktl.Keyword) -> None:
        order.append("first")

    def second(kw: ktl.Keyword) -> None:
        order.append("second")

    count.callback(second)
    count.callback(first, preferred=True)
    count.monitor(prime=False)
    disp["COUNT"].set(60)
    wait_until(lambda: len(order) == 2, 3)
    assert order == ["first", "second"]
    count.callback(first, remove=True)
    count.callback(second, remove=True)
    seen = collect(count)
    disp["COUNT"].set(61)
    wait_until(lambda: seen == ["61"], 3)
    assert order == ["first", "second"]
    count.monitor(start=False)
    disp["COUNT"].set(62)
    wait_until(lambda: count["ascii"] == "62", 3)     # the broadcast arrived, unmonitored
    count.monitor(prime=False)
    disp["COUNT"].set(63)
    wait_until(lambda: seen[-1:] == ["63"], 3)
    assert "62" not in seen


def test_lost_broadcast_is_recovered(svc: ktl.Service, disp: Any) -> None:
    """A broadcast lost on the way: the heartbeat's gseq reveals it, a re-read recovers it."""
    count = svc["COUNT"]
    seen = collect(count)
    count.monitor(prime=False)
    engine = svc._engine
    assert engine is not None
    deliver = engine._on_broadcast
    lost: List[Any] = []

    def lossy(link: Any, b: Any) -> None:
        if b.keyword == "COUNT" and not lost:
            lost.append(b)
            return
        deliver(link, b)

    engine._on_broadcast = lossy                        # type: ignore[assignment]
    disp["COUNT"].set(95)
    wait_until(lambda: seen == ["95"], 3, message="the lost value, re-read")
    assert lost and lost[0].payload["ascii"] == "95"


def test_callback_must_be_callable(svc: ktl.Service) -> None:
    with pytest.raises(TypeError):
        svc["COUNT"].callback(3)  # type: ignore[arg-type]


def test_poll(svc: ktl.Service) -> None:
    tick = svc["TICK"]
    seen = collect(tick)
    tick.poll(0.05)
    wait_until(lambda: len(seen) >= 3, 3, message="three polled values")
    tick.poll(start=False)
    assert [int(v) for v in seen] == sorted(int(v) for v in seen)
    with pytest.raises(ValueError):
        tick.poll(0)


# ------------------------------------------------------------------- waiting

def test_wait_for_next_broadcast(svc: ktl.Service, disp: Any) -> None:
    count = svc["COUNT"]
    threading.Timer(0.1, lambda: disp["COUNT"].set(70)).start()
    assert count.wait(timeout=3) is True
    assert count["ascii"] == "70"
    assert count.wait(timeout=0.1) is False              # KTL: False on timeout
    with pytest.raises(TimeoutError) as info:
        count.wait(timeout=0.1, raise_on_timeout=True)
    assert "ctest.COUNT='70'" in str(info.value)


def test_wait_for_comparison(svc: ktl.Service, disp: Any) -> None:
    disp["MODE"].set("OFF")
    mode = svc["MODE"]
    threading.Timer(0.1, lambda: disp["MODE"].set("ON")).start()
    assert mode.wait(timeout=3, operator="==", value="on") is True
    assert mode.wait(timeout=1, operator="==", value=2)
    assert mode.wait(timeout=1, operator=">=", value="STANDBY")
    disp["TEMP"].set(10.0)
    temp = svc["TEMP"]
    temp.monitor()
    timer = threading.Timer(0.1, lambda: [disp["TEMP"].set(v) for v in (11.0, 12.0, 30.0)])
    timer.start()
    assert temp.wait(timeout=3, operator=">", value=25)
    timer.join()
    assert temp.wait(timeout=0.1, operator="<", value=0) is False
    with pytest.raises(TimeoutError) as info:
        temp.wait(timeout=0.1, operator="<", value=0, raise_on_timeout=True)
    assert "ctest.TEMP='30.0'" in str(info.value)
    with pytest.raises(ValueError):
        temp.wait(timeout=0.1, operator="=~", value=0)


def test_waitfor_expressions(harness: ServiceHarness, disp: Any) -> None:
    ktl.cache("ctest", config=harness.config)
    try:
        disp["COUNT"].set(1)
        disp["MODE"].set("OFF")
        timer = threading.Timer(0.1, lambda: (disp["COUNT"].set(5), disp["MODE"].set("ON")))
        timer.start()
        assert ktl.waitFor("$ctest.COUNT > 3 and $ctest.MODE == 'ON'", timeout=3) is True
        timer.join()
        assert ktl.waitfor("$ctest.COUNT == 5 or $ctest.NAME == 'nope'", 1)
        assert ktl.waitFor("$ctest.COUNT < 0", timeout=0.2) is False
        with pytest.raises(TimeoutError) as info:
            ktl.waitFor("$ctest.COUNT < 0", timeout=0.2, raise_on_timeout=True)
        assert "ctest.COUNT='5'" in str(info.value)
        with pytest.raises(ExpressionError):
            ktl.waitFor("$ctest.COUNT <", timeout=0.2)
        with pytest.raises(ExpressionError):
            ktl.waitFor("1 == 1", timeout=0.2)
        with pytest.raises(KeyError):
            ktl.waitFor("$ctest.NOPE == 1", timeout=0.2)
    finally:
        ktl.cache_clear()


# ---------------------------------------------------------------- procedural

def test_procedural_interface(harness: ServiceHarness, disp: Any) -> None:
    ktl.cache("ctest", config=harness.config)
    try:
        assert ktl.write("ctest", "COUNT", 77) == "77"
        assert ktl.read("ctest", "count") == "77"
        assert ktl.read("ctest", "COUNT", binary=True) == 77
        seen: List[str] = []
        ktl.callback("ctest", "COUNT", lambda k: seen.append(k["ascii"]))
        ktl.monitor("ctest", "COUNT", prime=False)
        disp["COUNT"].set(78)
        assert ktl.wait("ctest", "COUNT", timeout=2, operator="==", value=78)
        wait_until(lambda: "78" in seen, 2)
        assert ktl.cache("ctest") is ktl.cache("CTEST")
        assert isinstance(ktl.cache("ctest", "COUNT"), ktl.Keyword)
        with pytest.raises(TypeError):
            ktl.read("ctest", 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            ktl.read(None, "COUNT")  # type: ignore[arg-type]
    finally:
        ktl.cache_clear()


# ------------------------------------------------------------------ threads

def test_many_threads_share_one_service(svc: ktl.Service) -> None:
    errors: List[BaseException] = []
    names = ["COUNT", "TEMP", "NAME", "PICKY"]

    def worker(i: int) -> None:
        try:
            for j in range(15):
                name = names[(i + j) % len(names)]
                kw = svc[name]
                if name == "PICKY":
                    assert kw.write(2 * j) == str(2 * j)
                elif name == "COUNT":
                    kw.read(binary=True)
                else:
                    kw.read()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_callback_may_call_back_into_the_service(svc: ktl.Service, disp: Any) -> None:
    count = svc["COUNT"]
    reads: List[str] = []
    count.callback(lambda k: reads.append(svc["NAME"].read()))
    count.monitor(prime=False)
    disp["COUNT"].set(90)
    wait_until(lambda: reads, 3, message="a read from inside a callback")


# ------------------------------------------------------------------- harness

def test_running_service_harness() -> None:
    with running_service(lambda s: DFW.Integer("A", s, initial=4), service="tiny") as svc:
        assert svc["A"].read() == "4"
        assert svc.harness.service == "tiny"
        assert svc.isAlive()


def test_router_disabled_uses_zmq_ports() -> None:
    settings = {"zmq-router": {"enable": False}}
    with ServiceHarness(lambda s: DFW.Integer("B", s, initial=8), "direct",
                        config=settings) as h:
        svc = h.client()
        assert svc["B"].write(9) == "9"
        assert svc.dispatchers()[0]["address"].endswith(f":{h.config.zmq.dispatch_port}")


def test_shutdown_wakes_waiters(harness: ServiceHarness) -> None:
    svc = ktl.Service("ctest", config=harness.config)
    kw = svc["COUNT"]
    errors: List[BaseException] = []

    def waiter() -> None:
        try:
            kw.wait(timeout=30)
        except ServiceShutDown as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    svc.shutdown()
    thread.join(5)
    assert not thread.is_alive() and errors


tiny = service_fixture(lambda s: DFW.Integer("A", s, initial=4), service="tiny")


def test_service_fixture(tiny: ktl.Service) -> None:
    assert tiny["A"].read() == "4"


def test_pytest_plugin_fixture(cauldron_service: Any, tmp_path: Any) -> None:
    path = tmp_path / "kw.toml"
    path.write_text('[keyword.B]\ntype = "boolean"\ninitial = true\n')
    svc = cauldron_service(path, service="plug")
    assert svc["B"].read(binary=True) is True


def test_waitfor_uses_a_service_the_program_opened(tmp_path):
    """``ktl.waitFor('$svc.KW ...')`` after ``ktl.Service(name, config=...)`` uses
    that Service (and its configuration), not a new one with the default config."""
    from cauldron_zmq import DFW, ktl
    from cauldron_zmq.testing import running_service

    def setup(service):
        DFW.Integer("COUNT", service, initial=1)

    with running_service(setup, service="opened") as svc:
        try:
            svc["COUNT"].write(3)
            assert ktl.waitFor("$opened.COUNT == 3", timeout=5) is True
            assert ktl.cache("opened") is svc
        finally:
            ktl.cache_clear()
        assert not svc.closed, "cache_clear() must not shut down the program's own Service"
