"""Clients surviving what happens at night: dispatchers killed, stopped, restarted and
moved, routers killed.  Dispatchers run as real ``cauldron-zmq serve`` processes
where the test signals them.
"""
from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from cauldron_zmq import DFW, ktl
from cauldron_zmq.errors import TimeoutError
from cauldron_zmq.testing import ServiceHarness, wait_until

pytestmark = pytest.mark.usefixtures("no_client_threads_left")

KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = 3

[keyword.MODE]
type = "enumerated"
enumerators = ["OFF", "ON"]
initial = "OFF"
"""


@pytest.fixture(scope="module")
def keyword_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keywords") / "rtest.toml"
    path.write_text(KEYWORDS, encoding="utf-8")
    return path


def record(kw: ktl.Keyword) -> List[Tuple[str, bool]]:
    """(ascii, connected) of every callback."""
    seen: List[Tuple[str, bool]] = []
    kw.callback(lambda k: seen.append((k["ascii"], k["connected"])))
    return seen


def test_dispatcher_killed_and_restarted(keyword_file: Path) -> None:
    with ServiceHarness(keyword_file, "rtest", subprocess=True) as h:
        svc = h.client()
        count = svc["COUNT"]
        seen = record(count)
        count.monitor()
        count.write(5)
        wait_until(lambda: seen[-1:] == [("5", True)], 3, message="monitor sees 5")

        h.kill_dispatcher()                          # SIGKILL: no unregister, no goodbye
        wait_until(lambda: not count.connected, 5, message="silence noticed")
        # callbacks told: disconnected (they run on the callback thread, so poll)
        wait_until(lambda: seen[-1:] == [("5", False)], 5, message="disconnection callback")
        assert not count.isAlive() and not svc.isAlive()

        h.start_dispatcher()                         # same ports: the router kept the pair
        wait_until(lambda: count.connected and count["ascii"] == "3", 5,
                   message="monitor back with the restarted value")
        assert count.write(8) == "8"                 # the next call just works
        wait_until(lambda: seen[-1:] == [("8", True)], 3, message="monitor sees 8")
        with ktl.Service("rtest", config=h.config) as other:
            other["COUNT"].write(9)
        wait_until(lambda: seen[-1:] == [("9", True)], 3, message="another client's write")

        h.kill_dispatcher()                          # again, restarted within liveness
        h.start_dispatcher()
        wait_until(lambda: count["ascii"] == "3", 5, message="re-read after a quick restart")
        count.write(10)
        wait_until(lambda: seen[-1:] == [("10", True)], 3, message="monitor sees 10")


def test_stopped_dispatcher_times_out_then_recovers(keyword_file: Path) -> None:
    with ServiceHarness(keyword_file, "rtest", subprocess=True) as h:
        svc = h.client(timeout=1.0)
        count = svc["COUNT"]
        count.write(4)
        h.signal_dispatcher(signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError) as info:
                count.read(timeout=0.3)
            message = str(info.value)
            assert "rtest.COUNT" in message and "no answer" in message
            port = h.config.router.first_port
            assert f"tcp://127.0.0.1:{port}" in message
            wait_until(lambda: not count.isAlive(), 5, message="liveness expiry")
            task = count.write(6, wait=False, timeout=5)   # queued while it is stopped
        finally:
            h.signal_dispatcher(signal.SIGCONT)
        wait_until(count.isAlive, 5, message="heartbeats again")
        assert task.get() == "6"
        assert count.read() == "6"


def test_router_killed_while_clients_work(keyword_file: Path) -> None:
    with ServiceHarness(keyword_file, "rtest", subprocess=True) as h:
        svc = h.client()
        count, mode = svc["COUNT"], svc["MODE"]
        seen = record(mode)
        mode.monitor(prime=False)
        h.router.kill()
        h.router.wait(10)
        h.router = None
        stop = threading.Event()
        timer = threading.Timer(1.5, stop.set)       # longer than liveness
        timer.start()
        n = 0
        while not stop.is_set():                     # connected clients keep working
            n += 1
            assert count.write(n) == str(n)
        assert svc.isAlive() and count.connected
        mode.write("ON")
        wait_until(lambda: seen[-1:] == [("ON", True)], 3, message="broadcasts still arrive")
        with pytest.raises(TimeoutError) as info:  # only new look-ups fail, clearly
            ktl.Service("rtest", config=h.config)
        assert h.config.router_address() in str(info.value)
        assert "router" in str(info.value)
        h.start_router()                            # the dispatcher registers again
        with ktl.Service("rtest", config=h.config, wait=5) as again:
            assert again["COUNT"].read() == str(n)


def _setup(svc: Any) -> None:
    DFW.Integer("A", svc, initial=1)


def test_dispatcher_moved_to_other_ports() -> None:
    with ServiceHarness(_setup, "mtest") as h:
        svc = h.client()
        a = svc["A"]
        seen = record(a)
        a.monitor()
        old = svc.dispatchers()[0]["address"]
        old_port = int(old.rsplit(":", 1)[1])
        h.stop_dispatcher()
        with socket.socket() as blocker:             # a foreign process takes the old port
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT
            blocker.bind(("127.0.0.1", old_port))
            blocker.listen(1)
            h.start_dispatcher()                     # so the router hands out another pair
            new_port = h.dispatcher.address["dispatch"]
            assert not new_port.endswith(f":{old_port}")
            wait_until(lambda: svc.dispatchers()[0]["address"] != old, 10,
                       message="client found the new address")
            assert a.write(5) == "5"
            h.dispatcher["A"].set(6)
            wait_until(lambda: seen[-1:] == [("6", True)], 5, message="broadcasts from new port")


@pytest.fixture
def many(keyword_file: Path) -> Iterator[ServiceHarness]:
    with ServiceHarness(keyword_file, "rtest") as h:
        yield h


def test_timeout_names_service_keyword_and_address(many: ServiceHarness) -> None:
    gate = threading.Event()
    many.dispatcher["COUNT"].write = lambda value: gate.wait(5)
    try:
        svc = many.client(timeout=0.2)
        with pytest.raises(TimeoutError) as info:
            svc["COUNT"].write(77)
        assert "rtest.COUNT" in str(info.value) and "127.0.0.1" in str(info.value)
    finally:
        gate.set()
    assert wait_until(lambda: svc["COUNT"].read() == "77", 5)


RESTART_KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = {initial}
"""


@pytest.mark.parametrize("heartbeat", [None, 30.0], ids=["heartbeat-seen", "no-heartbeat"])
def test_restart_value_with_the_same_seq_fires(tmp_path: Path, heartbeat: Any) -> None:
    """The replacement's first value has the seq the callbacks were last given (1 and 1),
    but another value: it is news.  With a 30 s heartbeat the client never hears one
    from the old dispatcher, so only the dispatcher's time can tell it apart."""
    path = tmp_path / "rtest.toml"
    path.write_text(RESTART_KEYWORDS.format(initial=3), encoding="utf-8")
    overrides = None if heartbeat is None else {"zmq": {"heartbeat": heartbeat,
                                                        "liveness": 2 * heartbeat}}
    with ServiceHarness(path, "rtest", subprocess=True, config=overrides) as h:
        svc = h.client()
        count = svc["COUNT"]
        seen = record(count)
        count.monitor()                              # primed: "3", the initial value (seq 1)
        wait_until(lambda: seen[-1:] == [("3", True)], 3, message="primed with 3")
        engine = svc._engine

        def heartbeats_heard() -> bool:
            return engine.call(lambda: all(link.started is not None
                                           for link in engine.links.values()))
        if heartbeat is None:
            wait_until(heartbeats_heard, 5, message="a heartbeat of the old dispatcher")
        else:
            assert not heartbeats_heard()

        h.kill_dispatcher()
        path.write_text(RESTART_KEYWORDS.format(initial=7), encoding="utf-8")
        h.start_dispatcher()                         # its COUNT: "7", seq 1 again
        wait_until(lambda: count["ascii"] == "7", 10, message="the cache holds 7")
        wait_until(lambda: ("7", True) in seen, 10,
                   message=f"a callback with the replacement's value (seen {seen})")
        assert count.write(8) == "8"                 # and it carries on as usual
        wait_until(lambda: seen[-1:] == [("8", True)], 5, message="monitor sees 8")
