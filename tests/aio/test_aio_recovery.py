"""The asyncio client through what happens at night: a dispatcher SIGKILLed and
restarted under a running monitor, a dispatcher stopped (SIGSTOP) while calls
wait; and nothing left running after ``async with`` (the dispatcher and router
are child processes, so every thread of this process is the test's own)."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest

from cauldron_zmq import aio, errors
from cauldron_zmq.config import load_config
from cauldron_zmq.router import Router
from cauldron_zmq.testing import (ServiceHarness, child_env, identify_pid, wait_until,
                                  write_test_config)

from aio_support import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

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
    path = tmp_path_factory.mktemp("keywords") / "artest.toml"
    path.write_text(KEYWORDS, encoding="utf-8")
    return path


@pytest.fixture
def harness(keyword_file: Path) -> Iterator[ServiceHarness]:
    with ServiceHarness(keyword_file, "artest", subprocess=True) as h:
        yield h


async def off_loop(fn: Any) -> Any:
    """A blocking harness call (kill, start: they wait for the process) off the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def test_sigkill_and_restart_under_a_running_monitor(
        harness: ServiceHarness) -> None:
    async with aio.Service("artest", config=harness.config) as svc:
        count = svc["COUNT"]
        seen: List[aio.Update] = []

        async def watch() -> None:
            async for update in count.monitor():
                seen.append(update)
        watcher = asyncio.ensure_future(watch())
        await eventually(lambda: [u.ascii for u in seen] == ["3"], 5, "the current value")
        assert await count.write(5) == "5"
        await eventually(lambda: seen[-1].ascii == "5", 3, "the monitor seeing 5")

        await off_loop(harness.kill_dispatcher)             # SIGKILL: no goodbye
        await eventually(lambda: not count.connected, 5, "the silence noticed")
        assert not svc.isAlive()
        with pytest.raises(errors.TimeoutError):
            await count.read(timeout=0.3)                     # down: a timeout, not a hang
        await off_loop(harness.start_dispatcher)              # same ports (the router kept them)
        await eventually(lambda: count.connected and seen[-1].ascii == "3", 10,
                         "the restarted value, by a fresh read")
        assert await count.write(8) == "8"                    # the next call just works
        await eventually(lambda: seen[-1].ascii == "8", 3, "the monitor seeing 8")

        await off_loop(harness.kill_dispatcher)               # again, back within liveness
        await off_loop(harness.start_dispatcher)
        await eventually(lambda: seen[-1].ascii == "3", 10, "re-read after a quick restart")
        assert await count.write(10) == "10"
        await eventually(lambda: seen[-1].ascii == "10", 3, "the monitor seeing 10")
        values = [u.ascii for u in seen]
        assert values[0] == "3" and values[-1] == "10"
        assert values.count("5") == 1 and values.count("8") == 1   # each change once
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
    assert not count.monitored


async def test_stopped_dispatcher_times_out_then_goes_silent(
        harness: ServiceHarness) -> None:
    async with aio.Service("artest", config=harness.config, timeout=1.0) as svc:
        count = svc["COUNT"]
        await count.write(4)
        harness.signal_dispatcher(signal.SIGSTOP)
        try:
            with pytest.raises(errors.TimeoutError) as info:
                await count.read(timeout=0.3)
            assert "artest.COUNT" in str(info.value) and "no answer" in str(info.value)
            slow = count.write(6, timeout=20, wait=False)     # in flight when liveness expires
            with pytest.raises(errors.DispatcherSilent, match="went silent"):
                await slow
            assert not svc.isAlive() and not count.connected
            later = count.write(7, wait=False, timeout=10)    # sent while it is down
        finally:
            harness.signal_dispatcher(signal.SIGCONT)
        assert await later == "7"
        await eventually(svc.isAlive, 5, "heartbeats again")
        assert await count.read() == "7"
        # nothing left behind: the client's own re-reads after the dispatcher came
        # back ("answering again") may still be in flight a moment longer
        await eventually(lambda: len(svc._engine.pending) == 0, 5, "no request left pending")


async def test_no_thread_is_started(harness: ServiceHarness) -> None:
    before = set(threading.enumerate())
    async with aio.Service("artest", config=harness.config) as svc:
        assert await svc["MODE"].write("ON") == "ON"
        async for update in svc["MODE"].monitor():
            assert update.ascii == "ON"
            break
        assert await asyncio.gather(*[svc["COUNT"].read() for _ in range(50)])
        assert set(threading.enumerate()) == before      # only libzmq's own I/O thread
    assert set(threading.enumerate()) == before


async def test_router_killed_while_clients_work(harness: ServiceHarness) -> None:
    async with aio.Service("artest", config=harness.config) as svc:
        count, mode = svc["COUNT"], svc["MODE"]
        updates = mode.monitor()
        assert (await updates.__anext__()).ascii == "OFF"
        harness.router.kill()
        await off_loop(lambda: harness.router.wait(10))
        harness.router = None
        loop = asyncio.get_running_loop()
        end, n = loop.time() + 1.5, 0                 # longer than liveness
        while loop.time() < end:                      # connected clients keep working
            n += 1
            assert await count.write(n) == str(n)
        assert svc.isAlive() and count.connected
        assert await mode.write("ON") == "ON"
        assert (await asyncio.wait_for(updates.__anext__(), 3)).ascii == "ON"
        with pytest.raises(errors.TimeoutError) as info:   # only new look-ups fail, clearly
            async with aio.Service("artest", config=harness.config):
                pass
        assert harness.config.router_address() in str(info.value)
        await off_loop(harness.start_router)          # the dispatcher registers again
        await eventually(lambda: harness._identify() is not None, 10, "registered again")
        async with aio.Service("artest", config=harness.config) as again:
            assert await again["COUNT"].read() == str(n)


def _setup(svc: Any) -> None:
    from cauldron_zmq import DFW
    DFW.Integer("A", svc, initial=1)


async def test_dispatcher_moved_to_other_ports() -> None:
    with ServiceHarness(_setup, "amove") as h:
        async with aio.Service("amove", config=h.config) as svc:
            a = svc["A"]
            seen: List[str] = []

            async def watch() -> None:
                async for update in a.monitor():
                    seen.append(update.ascii or "")
            watcher = asyncio.ensure_future(watch())
            await eventually(lambda: seen == ["1"], 5, "the current value")
            old = svc.dispatchers()[0]["address"]
            old_port = int(old.rsplit(":", 1)[1])
            await off_loop(h.stop_dispatcher)
            with socket.socket() as blocker:          # a foreign process takes the old port
                blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                blocker.bind(("127.0.0.1", old_port))
                blocker.listen(1)
                await off_loop(h.start_dispatcher)    # so the router hands out another pair
                assert not h.dispatcher.address["dispatch"].endswith(f":{old_port}")
                await eventually(lambda: svc.dispatchers()[0]["address"] != old, 10,
                                 "the client finding the new address")
                assert await a.write(5) == "5"
                h.dispatcher["A"].set(6)
                await eventually(lambda: seen[-1:] == ["6"], 5, "broadcasts from the new port")
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def test_a_blocked_loop_is_not_taken_for_a_silent_dispatcher(
        harness: ServiceHarness) -> None:
    """A program that blocks its loop longer than liveness (here 1.5 s) wakes with
    heartbeats waiting in the socket and its timer due: the heartbeats win."""
    async with aio.Service("artest", config=harness.config) as svc:
        count = svc["COUNT"]
        slow = count.read(wait=False, timeout=5)
        time.sleep(1.5 * harness.config.zmq.liveness)       # the whole loop stops
        assert await slow == "3"
        assert count.connected and svc.isAlive()


SLOW_DISPATCHER = textwrap.dedent('''
    import sys, threading
    from cauldron_zmq import DFW

    class Slow(DFW.Integer):
        def write(self, value):              # a long move: hangs until killed
            threading.Event().wait(60)

    def setup(s):
        Slow("SLOW", s, initial=0)

    DFW.Service("arestart", sys.argv[1], setup=setup).serve_forever()
''')


async def test_acknowledged_write_fails_when_its_dispatcher_restarts(
        tmp_path: Path) -> None:
    """The restarted dispatcher cannot answer what the killed one acknowledged: the
    write fails at once (DispatcherRestarted, or DispatcherSilent if the restart took
    longer than liveness), not at the end of its 60 s."""
    config_path = write_test_config(tmp_path, overrides={"zmq": {"liveness": 3.0}})
    cfg = load_config(config_path)
    script = tmp_path / "slow.py"
    script.write_text(SLOW_DISPATCHER, encoding="utf-8")
    router = Router(cfg).start()
    procs: List[subprocess.Popen] = []

    def spawn() -> None:
        proc = subprocess.Popen([sys.executable, str(script), str(config_path)],
                                env=child_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_until(lambda: identify_pid(cfg, "arestart") == proc.pid, 20, 0.02,
                   "the dispatcher serving")
    try:
        await off_loop(spawn)
        async with aio.Service("arestart", config=cfg, timeout=60) as svc:
            engine = svc._engine
            await eventually(lambda: all(lk.started for lk in engine.links.values()), 5,
                             "a heartbeat of the first dispatcher")
            write = svc["SLOW"].write(5, wait=False)
            await eventually(lambda: any(p.acked for p in engine.pending), 10,
                             "the write acknowledged")
            procs[0].kill()
            await off_loop(lambda: procs[0].wait(10))
            await off_loop(spawn)
            with pytest.raises((errors.DispatcherRestarted, errors.DispatcherSilent)) as info:
                await asyncio.wait_for(write, 10)
            assert "may or may not have been applied" in str(info.value)
            assert await svc["SLOW"].read() == "0"            # it was not
            assert len(engine.pending) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        router.stop()


def _first(svc: Any) -> None:
    from cauldron_zmq import DFW
    DFW.Integer("A1", svc, initial=1)


def _second(svc: Any) -> None:
    from cauldron_zmq import DFW
    DFW.Integer("B1", svc, initial=2)


async def test_a_dispatcher_found_later_is_described() -> None:
    """The first dispatcher goes; looking it up again finds a second one of the service,
    whose keywords become the Service's (listed and described, no call needed)."""
    from cauldron_zmq import DFW
    with ServiceHarness(_first, "atwo", dispatcher="first") as h:
        async with aio.Service("atwo", config=h.config) as svc:
            assert svc.keywords() == ["A1"]
            second = await off_loop(lambda: DFW.Service("atwo", h.config, setup=_second,
                                                        dispatcher="second").begin())
            try:
                await off_loop(h.stop_dispatcher)       # first gone: silence, a look-up
                await eventually(lambda: "B1" in svc, 15, "the second dispatcher's keyword")
                assert await svc["b1"].read() == "2"
                assert svc["B1"].value == 2              # described: its value came too
            finally:
                await off_loop(second.shutdown)
