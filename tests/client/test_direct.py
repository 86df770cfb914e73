"""Synchronous calls in the caller's thread, and one I/O thread for every Service.

``read()``/``write()`` with ``wait=True`` go out on a DEALER of the calling
thread (cauldron_zmq.client.direct); everything else goes through the one
I/O loop of the process (cauldron_zmq.client.loop).  These tests check the
rules the fast path shares with the I/O thread (silence, timeouts, shutdown,
late replies) and what a process with many Services costs.  Durations are
checked against deadlines with generous margins, never as benchmarks.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback
import warnings
from typing import Iterator, List

import pytest

from cauldron_zmq import ktl
from cauldron_zmq.client import ServiceShutDown
from cauldron_zmq.client.loop import THREAD_NAME
from cauldron_zmq.errors import DispatcherSilent, TimeoutError
from cauldron_zmq.testing import ServiceHarness, wait_until

from conftest import client_threads

pytestmark = pytest.mark.usefixtures("no_client_threads_left")

MARGIN = 1.0          # s of slack for a loaded machine, on top of every deadline

KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = 3
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceHarness]:
    path = tmp_path_factory.mktemp("direct") / "direct.toml"
    path.write_text(KEYWORDS, encoding="utf-8")
    with ServiceHarness(path, "direct", subprocess=True) as h:
        yield h


def _resume(h: ServiceHarness) -> None:
    h.signal_dispatcher(signal.SIGCONT)


def test_fifty_services_share_one_io_thread_and_one_context(harness: ServiceHarness) -> None:
    services = [harness.client() for _ in range(50)]
    try:
        assert all(svc["COUNT"].read() == "3" for svc in services)
        names = [t.name for t in client_threads()]
        assert names.count(THREAD_NAME) == 1, names
        assert len(names) == 1, f"no callback thread until a callback is registered: {names}"
        contexts = {id(svc._engine.ctx) for svc in services}
        assert len(contexts) == 1
        services[0]["COUNT"].callback(lambda kw: None)
        services[0]["COUNT"].monitor()
        wait_until(lambda: len(client_threads()) == 2, 5, message="one callback thread more")
    finally:
        for svc in services:
            svc.shutdown()
    wait_until(lambda: not client_threads(), 5, message="every client thread ended")


def test_a_service_after_the_last_one_starts_a_new_loop(harness: ServiceHarness) -> None:
    with harness.client() as first:
        assert first["COUNT"].read() == "3"
    wait_until(lambda: not client_threads(), 5, message="the loop ended with its last Service")
    with harness.client() as second:
        assert second["COUNT"].read() == "3"
        assert [t.name for t in client_threads()] == [THREAD_NAME]


def test_reads_and_writes_from_many_threads(harness: ServiceHarness) -> None:
    """Each thread its own socket: replies never cross between threads."""
    errors: List[BaseException] = []
    with harness.client() as svc:
        count = svc["COUNT"]

        def work(base: int) -> None:
            try:
                for i in range(30):
                    value = base * 1000 + i
                    assert count.write(value) == str(value)
                    assert int(count.read()) >= 0
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(svc._engine.direct._all) <= 9        # one socket per thread (GC'd after)
        count.write(3)


def test_a_direct_write_to_a_silent_dispatcher_fails_at_liveness(
        harness: ServiceHarness) -> None:
    with harness.client() as svc:
        count = svc["COUNT"]
        assert count.read() == "3"
        harness.signal_dispatcher(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(DispatcherSilent) as info:
                count.write(5, timeout=30)
            waited = time.monotonic() - start
        finally:
            _resume(harness)
        assert waited < harness.config.zmq.liveness + MARGIN
        assert "went silent" in str(info.value) and "direct.COUNT" in str(info.value)
        wait_until(lambda: count.isAlive(), 5, message="the dispatcher heard again")
        assert count.write(3) == "3"


def test_a_late_reply_is_never_taken_for_the_next_call(harness: ServiceHarness) -> None:
    """A read times out while the dispatcher is stopped; its answer comes after the
    dispatcher resumes and must not be mistaken for a later call's."""
    with harness.client() as svc:
        count = svc["COUNT"]
        count.write(3)
        harness.signal_dispatcher(signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                count.read(timeout=0.2)
        finally:
            _resume(harness)
        wait_until(lambda: count.isAlive(), 5, message="the dispatcher heard again")
        assert count.write(11) == "11"
        assert count.read() == "11"
        assert count.write(3) == "3"


def test_shutdown_ends_a_direct_call_in_another_thread(harness: ServiceHarness) -> None:
    svc = harness.client()
    count = svc["COUNT"]
    assert count.read() == "3"
    outcome: List[BaseException] = []
    harness.signal_dispatcher(signal.SIGSTOP)
    try:
        def call() -> None:
            try:
                count.read(timeout=20)
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)
        t = threading.Thread(target=call)
        t.start()
        wait_until(lambda: any(s.lock.locked() for s in list(svc._engine.direct._all)), 5,
                   0.01, message="the call in flight on its thread's socket")
        start = time.monotonic()
        svc.shutdown()
        t.join(5)
        assert not t.is_alive()
        assert time.monotonic() - start < 5
    finally:
        _resume(harness)
    assert outcome and isinstance(outcome[0], (ServiceShutDown, DispatcherSilent)), outcome


def _child_reads(config_path: str, out: int) -> None:
    """In a forked child: a new Service must work (a loop of its own), then exit."""
    code = 1
    try:
        with ktl.Service("direct", config=config_path) as svc:
            os.write(out, svc["COUNT"].read().encode())
            code = 0
    except BaseException:  # noqa: BLE001 - the parent sees the exit status and this
        traceback.print_exc()
    finally:
        os._exit(code)


def test_a_forked_child_gets_a_loop_of_its_own(harness: ServiceHarness) -> None:
    with harness.client() as svc:
        assert svc["COUNT"].read() == "3"          # the parent's loop runs
        r, w = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads: 3.12+
            pid = os.fork()
        if pid == 0:
            os.close(r)
            _child_reads(str(harness.config_path), w)
        os.close(w)
        try:
            deadline = time.monotonic() + 30
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.02)       # polling the child's exit with a deadline
            assert done, "the forked child did not finish"
            assert os.waitstatus_to_exitcode(status) == 0
            assert os.read(r, 100) == b"3"
        finally:
            os.close(r)
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        assert svc["COUNT"].read() == "3"          # and the parent's still does
