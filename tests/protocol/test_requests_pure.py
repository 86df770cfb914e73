"""The request table and its decisions (cauldron_zmq.protocol.requests), without sockets:
what a due request comes to, and a cancelled or answered request leaving no trace."""
from __future__ import annotations

from typing import Any

from cauldron_zmq.protocol.requests import (EXTEND, ROUTER, TIMED_OUT, UNANSWERED, Pending,
                                            RequestTable, expiry, keep_waiting)
from cauldron_zmq.protocol.wire import request


def pending(command: str = "read", *, explicit: bool = True, acked: bool = False,
            sent_at: float = 10.0, link: Any = "d1") -> Pending:
    p = Pending(request(command, "KW", {}), None, 1.0, sent_at + 1.0, link=link,
                explicit=explicit)
    p.sent_at, p.acked = sent_at, acked
    return p


def test_an_unanswered_request_on_a_silent_connection_resets_it() -> None:
    p = pending(sent_at=10.0)
    assert expiry(p, alive=True, refused=False, last_reply=9.0) == UNANSWERED
    # something came back since it was sent: the connection works, only this timed out
    assert expiry(p, alive=True, refused=False, last_reply=10.5) == TIMED_OUT


def test_an_acknowledged_request_only_times_out() -> None:
    p = pending("write", acked=True, sent_at=10.0)
    assert expiry(p, alive=True, refused=False, last_reply=0.0) == TIMED_OUT


def test_a_slow_write_without_a_deadline_waits_while_its_dispatcher_lives() -> None:
    p = pending("write", explicit=False, acked=True)
    assert keep_waiting(p, alive=True, refused=False)
    assert expiry(p, alive=True, refused=False, last_reply=0.0) == EXTEND
    assert expiry(p, alive=False, refused=False, last_reply=0.0) == TIMED_OUT
    assert expiry(p, alive=True, refused=True, last_reply=0.0) == TIMED_OUT
    unacked = pending("write", explicit=False, acked=False)
    assert expiry(unacked, alive=True, refused=False, last_reply=0.0) == UNANSWERED


def test_a_cancelled_request_leaves_nothing_and_its_late_reply_finds_nothing() -> None:
    table = RequestTable()
    p = pending()
    table.add(p, now=10.0)
    assert table.next_deadline() == 11.0
    assert table.pop(p.id) is p                      # the caller cancelled
    assert len(table) == 0 and table.next_deadline() is None
    assert table.acknowledged(p.id, 1.0) is None     # a late ACK...
    assert table.pop(p.id) is None                   # ...and a late reply are dropped
    assert table.due(100.0) == []


def test_router_requests_are_one_peer() -> None:
    table = RequestTable()
    p = pending("lookup", link=ROUTER)
    p.peers_left.update({"tcp://a", "tcp://b"})
    table.add(p, now=0.0)
    assert table.any_router() and p.router
    assert table.waiting_on_router("tcp://a") == [p]
    assert table.on_link("d1") == []
