"""The dispatcher with a router: registration, spawning, recovery, signals."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from cauldron_zmq import DFW
from cauldron_zmq.dispatcher import registration
from cauldron_zmq.dispatcher import Service
from cauldron_zmq.errors import RouterError, TimeoutError as CzTimeout
from cauldron_zmq.router import Router

try:
    from .test_dispatcher_support import (Client, child_env, no_leaks, ping_router,
                                          router_config, router_process, router_request,
                                          stop_process, wait_for, write_config)
except ImportError:
    from test_dispatcher_support import (Client, child_env, no_leaks, ping_router,  # type: ignore
                                         router_config, router_process, router_request,
                                         stop_process, wait_for, write_config)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leaks")]
_ = no_leaks


def lookup(cfg: Any, service: str) -> Any:
    try:
        return router_request(cfg, "lookup", service)["dispatchers"]
    except RouterError as exc:
        assert exc.code == "not-found"
        return []


@pytest.fixture
def routed(tmp_path: Any) -> Any:
    """A configuration and a router thread serving it."""
    cfg = router_config(tmp_path)
    router = Router(cfg).start()
    try:
        yield cfg
    finally:
        router.stop()


def test_register_and_unregister(routed: Any) -> None:
    svc = Service("reg", routed, setup=lambda s: DFW.Integer("N", s, initial=1))
    with svc:
        [entry] = lookup(routed, "reg")
        assert entry["dispatcher"] == "default" and entry["host"] == "127.0.0.1"
        assert (entry["dispatch_port"], entry["broadcast_port"]) == (
            svc.address["dispatch_port"], svc.address["broadcast_port"])
        assert entry["keywords"] == ["N"]
        assert routed.router.first_port <= entry["dispatch_port"] <= routed.router.last_port
        with Client.of(svc) as client:
            assert client.read("N")["value"] == 1
        DFW.Integer("LATE", svc)                      # the router learns late keywords
        wait_for(lambda: lookup(routed, "reg")[0]["keywords"] == ["LATE", "N"],
                 what="re-registration with the new keyword")
    assert lookup(routed, "reg") == []


def test_two_dispatchers_and_a_duplicate_keyword(routed: Any) -> None:
    one = Service("multi", routed, dispatcher="one", setup=lambda s: DFW.Integer("A", s))
    two = Service("multi", routed, dispatcher="two", setup=lambda s: DFW.Integer("B", s))
    dup = Service("multi", routed, dispatcher="three", setup=lambda s: DFW.Integer("A", s))
    with one, two:
        entries = lookup(routed, "multi")
        assert sorted(e["dispatcher"] for e in entries) == ["one", "two"]
        assert one.address["dispatch_port"] != two.address["dispatch_port"]
        with pytest.raises(RouterError) as info:
            dup.begin()
        assert info.value.code == "conflict" and "A" in str(info.value)
        assert not dup.running and dup._context is None
        with Client.of(one) as client:
            assert client.request("identify").payload["dispatcher"] == "one"


def test_no_router_and_no_spawning_is_a_clear_error(tmp_path: Any) -> None:
    cfg = router_config(tmp_path, **{"allow-spawn": False}).replace(zmq={"timeout": 1000})
    svc = Service("lonely", cfg, setup=lambda s: DFW.Integer("N", s))
    with pytest.raises(CzTimeout) as info:
        svc.begin()
    assert cfg.router_address() in str(info.value) and "allow-spawn" in str(info.value)
    assert not svc.running



def test_a_router_that_answers_late_is_waited_for_without_spawning(tmp_path: Any) -> None:
    """Without allow-spawn a router slow to answer (or restarting) is asked again
    until [zmq] timeout, not given up on after one [zmq-router] timeout (300 ms)."""
    cfg = router_config(tmp_path, **{"allow-spawn": False})
    cfg = cfg.replace(zmq={"timeout": 5000})
    router = Router(cfg)
    late = threading.Timer(0.8, router.start)     # comes up after two router timeouts
    late.start()
    try:
        with Service("late", cfg, setup=lambda s: DFW.Integer("N", s, initial=1)) as svc:
            assert svc.running
            wait_for(lambda: lookup(cfg, "late"), 5)
    finally:
        late.join()
        router.stop()

def test_spawns_a_router_thread_that_stops_with_the_service(tmp_path: Any) -> None:
    cfg = router_config(tmp_path, **{"allow-spawn": True, "process": "thread"})
    assert ping_router(cfg) is None
    with Service("spawner", cfg, setup=lambda s: DFW.Integer("N", s, initial=2)) as svc:
        pong = ping_router(cfg)
        assert pong is not None and pong["pid"] == os.getpid()
        assert lookup(cfg, "spawner")[0]["dispatch_port"] == svc.address["dispatch_port"]
    assert ping_router(cfg) is None


def test_spawns_a_router_process_that_outlives_the_service(tmp_path: Any) -> None:
    cfg = router_config(tmp_path, **{"allow-spawn": True, "process": "process"})
    svc = Service("detached", cfg, setup=lambda s: DFW.Integer("N", s))
    pid = None
    try:
        with svc:
            pong = ping_router(cfg)
            assert pong is not None and pong["pid"] != os.getpid()
            pid = pong["pid"]
        assert ping_router(cfg)["pid"] == pid                # still there
        assert lookup(cfg, "detached") == []                  # and we unregistered
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        for proc in list(registration._spawned):
            proc.wait(10)
            registration._spawned.remove(proc)
    assert ping_router(cfg) is None


def test_reregisters_after_the_router_is_killed_and_restarted(tmp_path: Any) -> None:
    cfg = router_config(tmp_path)
    with router_process(cfg, tmp_path) as first:
        svc = Service("phoenix", cfg, setup=lambda s: DFW.Integer("N", s, initial=5))
        svc.begin()
        ports = (svc.address["dispatch_port"], svc.address["broadcast_port"])
        stop_process(first, signal.SIGKILL)
    try:
        # back with an empty book: we re-register on our own, keeping our pair (prefer)
        with router_process(cfg, tmp_path, "second.toml") as second:
            entries = wait_for(lambda: lookup(cfg, "phoenix"), what="re-registration")
            assert (entries[0]["dispatch_port"], entries[0]["broadcast_port"]) == ports
            stop_process(second, signal.SIGKILL)
        # back again, but someone else registers first and is given our pair: we move.
        # Hold the registrar between two heartbeats so that the intruder is first.
        entered, release = threading.Event(), threading.Event()
        beat = svc._registrar._beat

        def gated(client: Any) -> None:
            entered.set()
            assert release.wait(10)
            beat(client)
        svc._registrar._beat = gated
        assert entered.wait(10)
        with router_process(cfg, tmp_path, "third.toml"):
            intruder = router_request(cfg, "register", "other",
                                      {"dispatcher": "default", "host": "127.0.0.1"})
            release.set()
            assert intruder["dispatch_port"] == ports[0]
            entries = wait_for(lambda: lookup(cfg, "phoenix"), what="re-registration")
            moved = (entries[0]["dispatch_port"], entries[0]["broadcast_port"])
            assert moved != ports
            wait_for(lambda: svc.address["dispatch_port"] == moved[0], what="the move")
            with Client.of(svc) as client:
                assert client.read("N")["value"] == 5
    finally:
        svc.shutdown()


def test_a_foreign_process_on_our_port_gets_us_another_pair(routed: Any) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", routed.router.first_port))   # the first pair's dispatch port
    squatter.listen(1)
    try:
        with Service("squat", routed, setup=lambda s: DFW.Integer("N", s, initial=1)) as svc:
            assert svc.address["dispatch_port"] != routed.router.first_port
            [entry] = lookup(routed, "squat")
            assert entry["dispatch_port"] == svc.address["dispatch_port"]
            with Client.of(svc) as client:
                assert client.read("N")["value"] == 1
    finally:
        squatter.close()


SERVE_SCRIPT = textwrap.dedent("""
    import sys
    from cauldron_zmq import DFW
    def ready(svc):
        print("READY", svc.address["dispatch_port"], flush=True)
    svc = DFW.Service("sigterm", sys.argv[1], setup=lambda s: DFW.Integer("N", s, initial=1))
    svc.serve_forever(ready=ready)
    print("CLEAN", flush=True)
""")


def test_sigterm_unregisters_and_exits_zero(routed: Any, tmp_path: Any) -> None:
    path = write_config(routed, tmp_path / "cfg.toml")
    proc = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env())
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("READY"), proc.stderr.read().decode()
        assert lookup(routed, "sigterm")[0]["dispatch_port"] == int(line.split()[1])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert b"CLEAN" in out
    assert lookup(routed, "sigterm") == []


EXIT_SCRIPT = textwrap.dedent("""
    import sys
    from cauldron_zmq import DFW
    svc = DFW.Service("atexit", sys.argv[1], setup=lambda s: DFW.Integer("N", s, initial=1))
    svc.begin()
    print("BEGUN", flush=True)
    # no shutdown(): the interpreter's exit must unregister and not hang
""")


def test_interpreter_exit_shuts_running_services_down(routed: Any, tmp_path: Any) -> None:
    path = write_config(routed, tmp_path / "cfg.toml")
    proc = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, path], capture_output=True,
                          env=child_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"BEGUN" in proc.stdout
    entries = router_request(routed, "list")["entries"]
    assert [e["state"] for e in entries if e["service"] == "atexit"] == ["down"]


def test_two_dispatchers_spawning_at_once_share_one_router(tmp_path: Any) -> None:
    cfg = router_config(tmp_path, **{"allow-spawn": True, "process": "thread"})
    services = [Service("race", cfg, dispatcher=f"d{i}",
                        setup=lambda s, i=i: DFW.Integer(f"K{i}", s)) for i in range(2)]
    errors = []

    def begin(svc: Service) -> None:
        try:
            svc.begin()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=begin, args=(svc,)) for svc in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert sorted(e["dispatcher"] for e in lookup(cfg, "race")) == ["d0", "d1"]
        owners = [svc for svc in services if svc._own_router is not None]
        assert len(owners) == 1                 # the loser's router could not bind
    finally:
        for svc in reversed(sorted(services, key=lambda s: s._own_router is not None)):
            svc.shutdown()
