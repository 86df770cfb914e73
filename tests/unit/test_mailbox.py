"""transport.Mailbox, the one hand-over into every I/O thread: counted, fillable by its owner."""
from __future__ import annotations

import select
import threading
from typing import Iterator

import pytest


from cauldron_zmq.transport import Mailbox as Outbox, MailboxClosed


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox()
    yield box
    box.close_fds()


def test_a_burst_costs_one_wake_up_and_comes_out_in_order(outbox: Outbox) -> None:
    assert outbox.empty() and outbox.qsize() == 0 and not readable(outbox.fd)
    for i in range(5):
        outbox.put((i,))
    assert outbox.qsize() == 5 and readable(outbox.fd)
    assert list(outbox.take_all()) == [(i,) for i in range(5)]
    assert outbox.empty() and not readable(outbox.fd)        # the wake-up was drained
    outbox.put(("next",))
    assert readable(outbox.fd)                               # and the next put wakes again


def test_put_here_queues_without_a_wake_up(outbox: Outbox) -> None:
    outbox.put_here(("own",))
    assert outbox.qsize() == 1 and not readable(outbox.fd)
    assert list(outbox.take_all()) == [("own",)]


def test_puts_from_many_threads_all_arrive(outbox: Outbox) -> None:
    def put(base: int) -> None:
        for i in range(200):
            outbox.put((base, i))
    threads = [threading.Thread(target=put, args=(b,)) for b in range(4)]
    for thread in threads:
        thread.start()
    taken = []
    while any(t.is_alive() for t in threads) or not outbox.empty():
        select.select([outbox.fd], [], [], 0.05)          # as the I/O thread's poller does
        taken.extend(outbox.take_all())
    for thread in threads:
        thread.join(10)
    taken.extend(outbox.take_all())
    assert sorted(taken) == sorted((b, i) for b in range(4) for i in range(200))
    for base in range(4):                                    # each thread's items in order
        assert [i for b, i in taken if b == base] == list(range(200))


def test_after_the_last_item_puts_are_refused(outbox: Outbox) -> None:
    assert outbox.put_last(("stop",)) is True
    with pytest.raises(MailboxClosed):
        outbox.put(("late",))
    assert outbox.put_last(("again",)) is False
    assert list(outbox.take_all()) == [("stop",)]
