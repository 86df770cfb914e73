"""The link repair logic (cauldron_zmq.protocol.links) as a pure state machine: no sockets.

Issue 10 item 0: a repair read was skipped while an older read of the keyword
was in flight to a killed dispatcher, so the final value never arrived.
"""
from __future__ import annotations

import random
from typing import List

from cauldron_zmq.protocol.links import Repair


def test_a_loss_supersedes_a_read_in_flight() -> None:
    r = Repair()
    assert r.lost(["COUNT"]) == ["COUNT"]          # read #1 (epoch 1) goes to the old process
    assert r.lost(["COUNT"]) == ["COUNT"]          # restart: a new read at once, not skipped
    assert not r.in_sync()
    assert r.done("COUNT", 2, True, now=0.0) == []
    assert r.in_sync()
    assert r.done("COUNT", 1, False, now=5.0) == []   # the old one times out: nothing owed
    assert r.in_sync() and r.next_due() is None


def test_an_answer_for_an_older_loss_does_not_count() -> None:
    r = Repair()
    r.lost(["A"])
    r.lost(["A"])
    r.done("A", 1, True, now=0.0)                  # answered by the old incarnation
    assert not r.in_sync() and r.owed() == ["A"]
    r.done("A", 2, True, now=0.1)
    assert r.in_sync()


def test_a_failed_read_is_retried_on_a_back_off() -> None:
    r = Repair()
    r.lost(["A"])
    r.done("A", 1, False, now=10.0)
    due = r.next_due()
    assert due is not None and 10.0 < due <= 10.1
    assert r.due(10.0, ["A"]) == []                # not yet
    assert r.due(due, ["A"]) == ["A"]              # the retry is issued at the current epoch
    assert r.next_due() is None
    r.done("A", r.epoch, False, now=20.0)          # fails again: a longer delay
    second = r.next_due()
    assert second is not None and second - 20.0 > due - 10.0
    r.due(second, ["A"])
    r.done("A", r.epoch, True, now=21.0)
    assert r.in_sync() and r.next_due() is None


def test_untracked_names_are_dropped() -> None:
    r = Repair()
    r.lost(["A", "B"])
    r.done("A", 1, False, now=0.0, tracked=False)
    r.done("B", 1, False, now=0.0)
    assert r.due(100.0, []) == []                  # B was no longer tracked at retry time
    assert r.slots == {} and r.in_sync()


def test_a_success_clears_the_back_off() -> None:
    r = Repair()
    r.lost(["A"])
    r.done("A", 1, False, now=0.0)
    r.lost(["A"])                                   # a new loss: read now, retry forgotten
    assert r.next_due() is None
    r.done("A", 2, True, now=0.0)
    assert r.in_sync()


def _simulate(seed: int) -> None:
    """Random interleavings of losses, answers, failures, late answers and retries:
    whenever nothing is in flight and no retry is pending, the keyword is in sync
    (its last read postdates its last loss), so the final value always arrives."""
    rng = random.Random(seed)
    r = Repair()
    inflight: List[int] = []                        # epochs of reads on the wire
    now = 0.0
    for _ in range(60):
        now += rng.random()
        event = rng.choice(["loss", "gap", "answer", "fail", "retry"])
        if event in ("loss", "gap"):
            reads = r.lost(["K"], supersede=event == "loss")
            inflight += [r.epoch for _ in reads]
        elif event in ("answer", "fail") and inflight:
            epoch = inflight.pop(rng.randrange(len(inflight)))   # any order
            inflight += [r.epoch for _ in r.done("K", epoch, event == "answer", now)]
        elif event == "retry":
            due = r.next_due()
            if due is not None:
                now = max(now, due)
                inflight += [r.epoch for _ in r.due(now, ["K"])]
    # drain: every read in flight resolves (some fail), retries run until success
    for _ in range(200):
        if inflight:
            epoch = inflight.pop(0)
            inflight += [r.epoch for _ in r.done("K", epoch, rng.random() < 0.7, now)]
            continue
        due = r.next_due()
        if due is None:
            break
        now = due
        inflight += [r.epoch for _ in r.due(now, ["K"])]
    assert not inflight and r.next_due() is None
    assert r.in_sync(), f"seed {seed}: {r.slots}"


def test_every_interleaving_ends_in_sync() -> None:
    for seed in range(500):
        _simulate(seed)


def test_gaps_on_a_live_connection_queue_behind_the_read_in_flight() -> None:
    r = Repair()
    assert r.lost(["A"], supersede=False) == ["A"]     # nothing in flight: read now
    for _ in range(100):                               # a flood of gaps meanwhile
        assert r.lost(["A"], supersede=False) == []    # queued, not one read per gap
    assert r.done("A", 1, True, now=0.0) == ["A"]      # answered: the queued read, once
    assert not r.in_sync()
    assert r.done("A", r.epoch, True, now=0.0) == []
    assert r.in_sync()


def test_a_reconnect_supersedes_even_a_queued_read() -> None:
    r = Repair()
    r.lost(["A"], supersede=False)
    assert r.lost(["A"]) == ["A"]                      # the connection is new: read now
    assert r.done("A", 1, False, now=0.0) == []        # the old one is lost: nothing owed
    r.done("A", 2, True, now=0.0)
    assert r.in_sync() and r.next_due() is None


def test_at_most_one_retry_pending_per_name() -> None:
    r = Repair()
    r.lost(["A"])
    for i in range(5):
        r.done("A", 1, False, now=float(i))
    assert len([s for s in r.slots.values() if s.retry_at is not None]) == 1
