"""The client's keyword cache (cauldron_zmq.protocol.cache) as a pure state machine.

No sockets and no clock: the dispatcher's times and the wall-clock time are
arguments.  A reply and a broadcast travel on different sockets and race;
a restarted dispatcher numbers its changes from the start again.
"""
from __future__ import annotations

from typing import Any, Optional

from cauldron_zmq.protocol.cache import (BROADCAST, FRESH, REPLY, HistorySlice, KeywordCache,
                                         State, fields, is_stale)

WALL = 5000.0      # the client's wall clock, for a value without a dispatcher time


def take(cache: KeywordCache, value: Any, seq: Optional[int], stamp: Optional[float],
         source: str, monitored: bool = True, polled: bool = False,
         has_callbacks: bool = True) -> Optional[State]:
    """Ingest as the Keyword does: ascii made from the value, then the cache decides."""
    return cache.ingest(value, str(value), stamp, seq, source, monitored=monitored,
                        polled=polled, has_callbacks=has_callbacks, wall=WALL)


def test_a_reply_older_than_a_broadcast_is_stale_and_not_stored() -> None:
    c = KeywordCache("COUNT")
    assert take(c, 7, 7, 107.0, BROADCAST) is not None
    fired = take(c, 6, 6, 106.0, REPLY, monitored=False)   # the read overtaken on its socket
    assert fired is None                                    # seq 6 is older than seq 7 fired
    assert c.state.value == 7 and c.state.seq == 7
    assert [h.binary for h in c.history] == [7]
    assert is_stale(c.state, 6, 106.0) and not is_stale(c.state, 8, 108.0)
    assert not is_stale(c.state, 6, 200.0)                  # newer time: a restarted dispatcher


def test_the_same_change_from_a_reply_and_a_broadcast_fires_once() -> None:
    c = KeywordCache("COUNT")
    first = take(c, 3, 3, 103.0, FRESH)                     # the priming read
    assert first is not None and first.value == 3 and first.populated
    assert take(c, 3, 3, 103.0, BROADCAST) is None          # its broadcast: no second call
    assert len(c.history) == 1
    later = take(c, 4, 4, 104.0, BROADCAST)
    assert later is not None and later.value == 4 and c.fired_seq == 4


def test_each_source_fires_by_the_rules() -> None:
    c = KeywordCache("MODE")
    assert take(c, 1, 1, 1.0, BROADCAST, monitored=False) is None     # not monitored
    assert take(c, 2, 2, 2.0, REPLY, monitored=True) is None          # its broadcast follows
    assert take(c, 3, 3, 3.0, FRESH, monitored=False, polled=True) is not None
    assert take(c, 4, 4, 4.0, REPLY, monitored=False) is not None
    assert take(c, 5, 5, 5.0, BROADCAST, has_callbacks=False) is None
    assert c.fired_seq == 4 and c.state.seq == 5                      # stored all the same


def test_a_restart_starts_the_sequence_again() -> None:
    c = KeywordCache("COUNT")
    take(c, 40, 40, 140.0, BROADCAST)
    c.forget_sequence()                                     # a heartbeat showed the restart
    assert c.state.seq is None and c.state.value == 40 and c.fired_seq is None
    fired = take(c, 1, 1, 200.0, BROADCAST)
    assert fired is not None and fired.value == 1 and c.state.seq == 1


def test_a_restart_seen_first_on_a_read_fires_by_its_newer_time() -> None:
    c = KeywordCache("COUNT")
    take(c, 40, 40, 140.0, BROADCAST)
    assert not c.unseen(40, 140.0) and not c.unseen(2, 130.0)
    assert c.unseen(2, 150.0)                               # lower seq, newer time: new
    fired = take(c, 2, 2, 150.0, FRESH)                     # no forget_sequence() yet
    assert fired is not None and c.state.value == 2
    assert take(c, 2, 2, 150.0, BROADCAST) is None          # the same change again


def test_a_payload_without_a_value_leaves_no_history() -> None:
    assert fields({"value": None, "seq": 3}, None) is None
    assert fields("not a dict", None) is None
    assert fields({}, None) is None
    framed = fields({"value": None}, b"\x00" * 8)           # an array's raw frame
    assert framed is not None and framed.value is None
    got = fields({"value": 5, "ascii": "5", "time": 12, "seq": 9}, None)
    assert got is not None and isinstance(got.time, float)
    assert tuple(got) == (5, "5", 12.0, 9, None)       # no gseq: a reply, not a broadcast
    odd = fields({"value": 5, "time": "noon", "seq": "9"}, None)
    assert odd is not None and odd.time is None and odd.seq is None
    c = KeywordCache("NOVALUE")                             # nothing ingested: empty
    assert not c.state.populated and c.state.value is None and list(c.history) == []


def test_history_only_on_change() -> None:
    c = KeywordCache("COUNT", length=3)
    take(c, 1, 1, 101.0, REPLY, monitored=False)
    take(c, 1, 1, 101.0, BROADCAST)                         # the same change: no entry
    take(c, 2, 2, 102.0, BROADCAST)
    take(c, 2, 3, 103.0, BROADCAST)                         # a new change, same value: entry
    assert [(h.binary, h.time) for h in c.history] == [(1, 101.0), (2, 102.0), (2, 103.0)]
    take(c, 3, 4, None, BROADCAST)                          # no dispatcher time: the wall's
    assert c.history[-1] == HistorySlice(WALL, 3, "3", "COUNT") and len(c.history) == 3


def test_equal_decides_a_same_seq_change() -> None:
    c = KeywordCache("ARR", equal=lambda a, b: list(a) == list(b))
    c.ingest((1, 2), None, 1.0, None, REPLY, monitored=False, polled=False,
             has_callbacks=False, wall=WALL)
    c.ingest([1, 2], None, 1.0, None, REPLY, monitored=False, polled=False,
             has_callbacks=False, wall=WALL)
    assert len(c.history) == 1 and c.state.ascii is None    # an array's ascii is made later
    c.ingest("on", None, 2.0, None, REPLY, monitored=False, polled=False,
             has_callbacks=False, wall=WALL)
    assert c.state.ascii == "on" and len(c.history) == 2    # a string is its own ascii


def test_connected_changes_fire_only_when_monitored_with_callbacks() -> None:
    c = KeywordCache("COUNT")
    before = c.state
    assert c.set_connected(True, monitored=True, has_callbacks=True) is None
    assert c.state is before                                # no change: the same object
    fired = c.set_connected(False, monitored=True, has_callbacks=True)
    assert fired is not None and not fired.connected and c.state is fired
    assert c.set_connected(True, monitored=False, has_callbacks=True) is None
    assert c.state.connected and c.state is not fired       # changed, nothing to fire
    assert c.set_connected(False, monitored=True, has_callbacks=False) is None
    assert not c.state.connected
    later = take(c, 1, 1, 1.0, BROADCAST)
    assert later is not None and not later.connected        # a value keeps the flag


def test_updates_count_every_broadcast_and_only_new_catch_up_reads() -> None:
    c = KeywordCache("COUNT")
    take(c, 1, 1, 101.0, FRESH)
    assert (c.updates, c.broadcasts) == (1, 0)              # new: counts
    take(c, 1, 1, 101.0, FRESH)
    assert c.updates == 1                                   # nothing new
    take(c, 1, 1, 101.0, BROADCAST)
    assert (c.updates, c.broadcasts) == (2, 1)              # a broadcast always counts
    take(c, 0, 0, 100.0, BROADCAST)
    assert (c.updates, c.broadcasts) == (3, 2) and c.state.seq == 1   # even a stale one
    take(c, 0, 0, 100.0, FRESH)
    assert c.updates == 3                                   # stale read: not stored, no count
    take(c, 2, 2, 102.0, REPLY, monitored=False)
    assert c.updates == 3                                   # a user's reply never counts
    take(c, 3, 3, 103.0, FRESH)
    assert c.updates == 4


def test_the_cache_imports_no_socket_thread_or_clock() -> None:
    import ast
    import pathlib

    import cauldron_zmq.protocol.cache as module
    tree = ast.parse(pathlib.Path(module.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level}
    assert imported and not imported & {"zmq", "socket", "threading", "time", "select"}
