"""Integer.increment is an atomic read-modify-write, from any number of threads.

The services here never begin (no socket): set() hands its broadcasts to the
outbox, which nobody reads, and that is all the I/O side does.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Iterator, List

import pytest

from cauldron_zmq import DFW
from cauldron_zmq.config import DEFAULT

CFG = DEFAULT.replace(router={"enable": False})


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond: a read-modify-write race shows at once."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_concurrent_increments_all_count(fast_switching: None) -> None:
    svc = DFW.Service("inc", CFG, start=False)
    counter = DFW.Integer("COUNT", svc)
    threads, each = 8, 500
    start = threading.Barrier(threads)

    def bump() -> None:
        start.wait(10)
        for _ in range(each):
            assert counter.increment() is True

    workers = [threading.Thread(target=bump, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers)
    assert counter.binary == threads * each
    assert counter.seq == threads * each          # one stored value per increment


def test_a_set_between_read_and_store_is_not_overwritten() -> None:
    """The increment whose check hook runs while another set() lands sums again."""
    in_check, release = threading.Event(), threading.Event()
    checked: List[Any] = []

    class Slow(DFW.Integer):
        def check(self, value: Any) -> None:
            if threading.current_thread().name != "incrementer":
                return
            checked.append(value)
            if len(checked) == 1:
                in_check.set()
                assert release.wait(10)

    svc = DFW.Service("cas", CFG, start=False)
    kw = Slow("N", svc)
    kw.set(5)
    results: List[bool] = []
    incrementer = threading.Thread(target=lambda: results.append(kw.increment(2)),
                                   daemon=True, name="incrementer")
    incrementer.start()
    assert in_check.wait(10)                  # it read 5 and is about to store 7...
    kw.set(100)                               # ...when another thread sets 100
    release.set()
    incrementer.join(10)
    assert results == [True]
    assert kw.binary == 102                   # 100 + 2, not a stale 7
    assert checked == ["7", "102"]            # checked again (ascii: DFW hooks get strings)


def test_increment_by_zero_changes_nothing() -> None:
    svc = DFW.Service("zero", CFG, start=False)
    kw = DFW.Integer("N", svc)
    assert kw.increment(3) is True and kw.binary == 3    # from unset: 0 + 3
    seq = kw.seq
    assert kw.increment(0) is False
    assert kw.seq == seq and kw.binary == 3
