"""The executor and scheduler that run instrument code (no sockets)."""
from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

import logging

from cauldron_zmq.workers import KeyedExecutor, QueueFull, RepeatLog, Scheduler, _next_time

try:
    from .test_dispatcher_support import wait_for
except ImportError:
    from test_dispatcher_support import wait_for  # type: ignore

pytestmark = pytest.mark.timeout(30)


def test_per_key_fifo_and_parallel_keys() -> None:
    ex = KeyedExecutor("cauldron-test", max_workers=4, idle_timeout=0.2)
    blocked, release = threading.Event(), threading.Event()
    order: List[Any] = []
    ex.submit("slow", lambda: (blocked.set(), release.wait(10)))
    for i in range(5):
        ex.submit("slow", lambda i=i: order.append(("slow", i)))
    assert blocked.wait(5)
    done = threading.Event()
    for i in range(5):
        ex.submit("fast", lambda i=i: order.append(("fast", i)))
    ex.submit("fast", done.set)
    assert done.wait(5)                       # "fast" ran while "slow" was blocked
    assert order == [("fast", i) for i in range(5)]
    release.set()
    wait_for(lambda: len(order) == 10, what="the slow key's queue")
    assert order[5:] == [("slow", i) for i in range(5)]
    wait_for(lambda: ex.worker_count == 0, what="idle workers to exit")
    assert ex.close() == []


def test_pool_is_bounded_and_errors_do_not_kill_workers() -> None:
    ex = KeyedExecutor("cauldron-test", max_workers=2, idle_timeout=5)
    gate = threading.Event()
    ran: List[int] = []
    for i in range(6):
        ex.submit(i, lambda i=i: (gate.wait(10), ran.append(i)))
    assert ex.worker_count == 2
    ex.submit("boom", lambda: 1 / 0)
    gate.set()
    wait_for(lambda: len(ran) == 6, what="all tasks")
    done = threading.Event()
    ex.submit("after", done.set)
    assert done.wait(5)
    assert ex.close() == []


def test_close_cancels_pending_tasks() -> None:
    ex = KeyedExecutor("cauldron-test", max_workers=1)
    started, release = threading.Event(), threading.Event()
    cancelled: List[int] = []
    ex.submit("k", lambda: (started.set(), release.wait(10)))
    ex.submit("k", lambda: None, on_cancel=lambda: cancelled.append(1))
    assert started.wait(5)
    threading.Timer(0.05, release.set).start()
    assert ex.close(timeout=5) == []
    assert cancelled == [1]
    with pytest.raises(RuntimeError):
        ex.submit("k", lambda: None)


def test_scheduler_periodic_and_one_shot() -> None:
    ex = KeyedExecutor("cauldron-test", max_workers=2, idle_timeout=0.5)
    sched = Scheduler("cauldron-test", ex)
    ticks: List[float] = []
    once: List[float] = []
    entry = sched.add("a", lambda e: ticks.append(time.time()), time.time() + 0.02, 0.02)
    when = time.time() + 0.1
    sched.add("b", lambda e: once.append(time.time()), when)
    cancelled = sched.add("c", lambda e: once.append(-1), time.time() + 0.05)
    cancelled.cancel()
    sched.start()
    wait_for(lambda: len(ticks) >= 5 and once, what="scheduled work")
    entry.cancel()
    sched.stop()
    ex.close()
    assert once[0] >= when and -1 not in once


def test_next_time_skips_missed_periods() -> None:
    assert _next_time(10.0, 1.0, 10.5) == 11.0
    assert _next_time(10.0, 1.0, 13.2) == 14.0


def test_submit_with_a_limit_refuses_beyond_it() -> None:
    ex = KeyedExecutor("cauldron-test", max_workers=2, idle_timeout=0.2)
    started, release = threading.Event(), threading.Event()
    ran: List[int] = []
    ex.submit("k", lambda: (started.set(), release.wait(10)), limit=2)
    assert started.wait(5)
    ex.submit("k", lambda: ran.append(1), limit=2)
    ex.submit("k", lambda: ran.append(2), limit=2)
    assert ex.waiting("k") == 2
    with pytest.raises(QueueFull) as info:
        ex.submit("k", lambda: ran.append(3), limit=2)
    assert (info.value.waiting, info.value.limit) == (2, 2)
    ex.submit("k", lambda: ran.append(4))        # no limit: internal work still queues
    with pytest.raises(QueueFull):
        ex.submit("k", lambda: ran.append(5), limit=0)
    done = threading.Event()
    ex.submit("other", done.set, limit=0)        # an idle key takes work even at limit 0
    assert done.wait(5)
    release.set()
    wait_for(lambda: ran == [1, 2, 4], what="the queued tasks")
    wait_for(lambda: ex.waiting("k") == 0, what="an empty queue")
    ex.submit("k", lambda: ran.append(6), limit=0)   # idle again: accepted
    wait_for(lambda: ran[-1:] == [6], what="the task after the queue emptied")
    assert ex.close() == []


def test_repeat_log_logs_once_with_traceback_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("cauldron_zmq.test.repeat")
    repeats = RepeatLog(log, period=60.0, size=2)
    try:
        raise NameError("name 'motor' is not defined")
    except NameError as exc:
        error = exc
    with caplog.at_level(logging.ERROR, logger=log.name):
        assert repeats.error("K", error, "hook of %s failed", "K", now=0.0)
        for t in range(1, 6):
            assert not repeats.error("K", error, "hook of %s failed", "K", now=float(t))
        assert repeats.error("OTHER", error, "hook of %s failed", "OTHER", now=6.0)
        assert repeats.error("K", error, "hook of %s failed", "K", now=61.0)
        def fail(n: int) -> BaseException:
            try:
                raise ValueError(f"cannot move to {n}")    # the message changes, the line not
            except ValueError as exc:
                return exc
        assert repeats.error("MOVE", fail(1), "move failed", now=62.0)
        assert not repeats.error("MOVE", fail(2), "move failed", now=63.0)
    records = [r for r in caplog.records if r.name == log.name]
    assert len(records) == 4
    assert records[0].exc_info is not None and records[0].exc_info[1] is error
    assert "Traceback" in caplog.text and "motor" in caplog.text
    assert "5 repeat(s)" in records[2].getMessage()
    assert len(repeats._seen) <= 2                 # bounded memory of distinct failures
