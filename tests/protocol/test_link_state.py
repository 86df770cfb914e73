"""LinkState: what a client concludes from a dispatcher's messages, with a fake clock.

No socket, no thread: events go in with the time they happened, and the
decisions come back as data (Resync, DOWN, RELOOKUP, REPAIR).
"""
from __future__ import annotations

from cauldron_zmq.protocol.backoff import Schedule
from cauldron_zmq.protocol.links import DOWN, RELOOKUP, REPAIR, LinkState, Resync
from cauldron_zmq.protocol.payloads import Heartbeat

ENTRY = {"dispatcher": "default", "host": "127.0.0.1", "dispatch_port": 5001,
         "broadcast_port": 5002, "keywords": ["TEMP", "count"]}


def link(now: float = 0.0, liveness: float = 1.0) -> LinkState:
    return LinkState("default", ENTRY, now, liveness, lookup=Schedule(0.05, 2.0, 1.0))


def synced(state: LinkState, gseq: int = 10) -> LinkState:
    """A link that has seen its first heartbeat (started 100.0, pid 7)."""
    assert state.on_heartbeat(Heartbeat(100.0, 7, gseq, 0.2)) == \
        Resync("first heartbeat since connecting")
    return state


def test_the_entry_is_taken_in() -> None:
    state = link()
    assert state.address == ("tcp", "127.0.0.1", 5001, 5002)
    assert state.keywords == {"TEMP", "COUNT"} and state.alive and not state.synced


def test_broadcasts_in_sequence_need_nothing() -> None:
    state = synced(link())
    assert [state.on_broadcast(g) for g in (11, 12, 13)] == [None, None, None]
    assert state.on_heartbeat(Heartbeat(100.0, 7, 13, 0.2)) is None


def test_a_lost_broadcast_is_a_gap_queued_behind_reads_in_flight() -> None:
    state = synced(link())
    action = state.on_broadcast(13)                  # 11 and 12 never came
    assert action == Resync("lost broadcasts (gseq 10 -> 13)", restarted=False, supersede=False)
    assert state.gseq == 13


def test_a_heartbeat_reveals_the_last_broadcast_lost() -> None:
    """The final broadcast of a burst dropped: only the heartbeat's gseq tells."""
    state = synced(link())
    assert state.on_broadcast(11) is None
    action = state.on_heartbeat(Heartbeat(100.0, 7, 12, 0.2))
    assert action is not None and "lost broadcasts" in action.why and not action.supersede


def test_a_sequence_going_backwards_is_a_restart() -> None:
    state = synced(link())
    action = state.on_broadcast(3)
    assert action is not None and action.restarted and action.supersede
    backwards = synced(link()).on_heartbeat(Heartbeat(100.0, 7, 2, 0.2))
    assert backwards is not None and backwards.restarted


def test_a_new_process_is_a_restart_whatever_its_sequence() -> None:
    state = synced(link())
    action = state.on_heartbeat(Heartbeat(200.0, 8, 10, 0.2))   # same gseq, new started/pid
    assert action == Resync("dispatcher restarted", restarted=True)
    assert (state.started, state.pid) == (200.0, 8)


def test_a_slow_heartbeat_stretches_liveness() -> None:
    """A dispatcher beating every 2 s is not silent after 1 s of liveness."""
    state = link(liveness=1.0)
    state.on_heartbeat(Heartbeat(100.0, 7, 0, 2.0))
    assert state.liveness() == 6.0
    state.heard(10.0)
    assert state.timers(15.9) == [] and state.timers(16.1) == [DOWN]


def test_silence_then_voice() -> None:
    state = synced(link())
    state.heard(1.0)
    assert state.next_due(1.0) == 2.0
    assert state.timers(1.5) == [] and state.timers(2.01) == [DOWN]
    state.went_down()
    assert not state.alive and not state.synced
    assert state.timers(3.0) == []                   # down: nothing more to time out
    assert state.heard(3.5) == Resync("answering again")
    assert state.alive and state.heard(3.6) is None


def test_the_relookup_schedule_is_the_back_off() -> None:
    state = synced(link())
    state.went_down()
    state.start_relookup(10.0, enabled=True)
    due = []
    now = 10.0
    while now < 11.6:
        if RELOOKUP in state.timers(now):
            due.append(round(now - 10.0, 2))
            state.relookup_sent()
            state.relookup_answered(found_same=False)   # still down: keep asking
        now = round(now + 0.01, 2)
    assert due == [0.0, 0.05, 0.15, 0.35, 0.75, 1.55]
    state.heard(12.0)
    assert state.relookup_start is None               # heard again: stop asking


def test_no_relookup_without_a_router_or_a_name() -> None:
    state = link()
    state.start_relookup(0.0, enabled=False)
    assert state.relookup_start is None
    anonymous = LinkState("h:1", {"host": "h", "dispatch_port": 1}, 0.0, 1.0)
    anonymous.start_relookup(0.0, enabled=True)
    assert anonymous.relookup_start is None


def test_a_refused_handshake_is_reported_once() -> None:
    state = link()
    assert state.handshake(False, True, "the key was refused") is True
    assert state.refused and state.handshake_error == "the key was refused"
    assert state.handshake(False, True, "the key was refused") is False   # already known
    assert state.handshake(False, False, "timed out") is False             # a failure, not a refusal
    assert state.handshake(True, False, "") is False
    assert not state.refused and state.handshake_error == ""


def test_a_move_renews_the_sync() -> None:
    state = synced(link())
    moved = dict(ENTRY, dispatch_port=6001, broadcast_port=6002)
    assert state.moved(moved) and not state.moved(ENTRY)
    state.move(moved)
    assert state.address[2:] == (6001, 6002) and not state.synced and state.gseq is None


def test_a_failed_repair_read_is_due_on_its_back_off() -> None:
    state = synced(link())
    state.heard(5.0)                                  # alive: silence not due before 6 s
    assert state.repair.lost(["TEMP"]) == ["TEMP"]
    epoch = state.repair.epoch
    assert state.repair.done("TEMP", epoch, False, 5.0) == []
    retry = state.next_due(5.0)
    assert retry is not None and 5.0 < retry < 6.0    # the retry, before the silence
    assert REPAIR in state.timers(retry + 0.001)
