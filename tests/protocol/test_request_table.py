"""RequestTable: the life of requests in flight, with a fake clock and no sockets."""
from __future__ import annotations

from cauldron_zmq.errors import RouterError
from cauldron_zmq.protocol import E_NOT_FOUND, request
from cauldron_zmq.protocol.requests import (ROUTER, Pending, RequestTable, better_refusal,
                                            keep_waiting)


def pending(command: str = "read", target: str = "TEMP", link: str = "d1",
            deadline: float = 1.0, explicit: bool = True) -> Pending:
    return Pending(request(command, target, {}), task=None, timeout=deadline,
                   deadline=deadline, link=link, explicit=explicit)


def test_sent_answered_and_gone() -> None:
    table = RequestTable()
    p = pending()
    table.add(p, now=0.0)
    assert p.id in table and len(table) == 1 and p.sent_at == 0.0
    assert table.pop(p.id) is p
    assert table.pop(p.id) is None                     # a late reply finds nothing
    assert table.next_deadline() is None and table.due(5.0) == []


def test_deadlines_in_order_and_answered_ones_skipped() -> None:
    table = RequestTable()
    a, b, c = pending(deadline=3.0), pending(deadline=1.0), pending(deadline=2.0)
    for p in (a, b, c):
        table.add(p, now=0.0)
    table.pop(c.id)
    assert table.next_deadline() == 1.0
    assert table.due(0.5) == []
    assert table.due(3.0) == [b, a]                    # due ones leave the table
    assert len(table) == 0


def test_a_resend_keeps_its_id_and_deadline() -> None:
    table = RequestTable()
    p = pending(deadline=2.0)
    table.add(p, now=0.0)
    table.add(p, now=1.0)                              # the DEALER was reset: sent again
    assert len(table) == 1 and p.sent_at == 1.0 and table.next_deadline() == 2.0


def test_walking_a_link_survives_ending_requests_on_the_way() -> None:
    """The bug of _resend_unacked: a send failing mid-walk popped from the table it walked."""
    table = RequestTable()
    ps = [pending() for _ in range(5)]
    for p in ps:
        table.add(p, now=0.0)
    walked = []
    for p in table.on_link("d1", acked=False):
        walked.append(p)
        table.pop(p.id)                                # e.g. the send queue was full
    assert walked == ps and len(table) == 0


def test_acknowledged_requests_orphaned_by_a_restart() -> None:
    table = RequestTable()
    old, new, unacked = pending("write"), pending("write"), pending("write")
    for p in (old, new, unacked):
        table.add(p, now=0.0)
    table.acknowledged(old.id, started=100.0)
    table.acknowledged(new.id, started=200.0)
    assert table.take_orphans("d1", started=None) == []      # no heartbeat yet: cannot tell
    assert table.take_orphans("d1", started=200.0) == [old]
    assert set(p.id for p in table) == {new.id, unacked.id}


def test_a_refused_or_silent_link_takes_its_requests_only() -> None:
    table = RequestTable()
    mine, other = pending(link="d1"), pending(link="d2")
    table.add(mine, now=0.0)
    table.add(other, now=0.0)
    assert table.take_link("d1") == [mine]
    assert list(table) == [other]


def test_a_slow_write_waits_on_only_while_its_dispatcher_lives() -> None:
    slow = pending("write", explicit=False)
    assert not keep_waiting(slow, alive=True, refused=False)      # not acknowledged yet
    slow.acked = True
    assert keep_waiting(slow, alive=True, refused=False)
    assert not keep_waiting(slow, alive=False, refused=False)
    assert not keep_waiting(slow, alive=True, refused=True)
    bounded = pending("write", explicit=True)
    bounded.acked = True
    assert not keep_waiting(bounded, alive=True, refused=False)   # the caller's deadline holds
    table = RequestTable()
    table.add(slow, now=0.0)
    [due] = table.due(1.0)
    table.extend(due, 4.0)
    assert table.next_deadline() == 4.0 and table.due(3.9) == []


def test_the_routers_are_one_peer() -> None:
    table = RequestTable()
    look = pending("lookup", "svc", link=ROUTER)
    look.peers_left = {"tcp://a:1", "tcp://b:1"}
    table.add(look, now=0.0)
    assert look.router and table.any_router()
    assert table.waiting_on_router("tcp://a:1") == [look]
    assert table.waiting_on_router("tcp://c:1") == []


def test_the_most_telling_refusal_wins() -> None:
    busy = RouterError("busy", code="internal")
    missing = RouterError("no such service", code=E_NOT_FOUND)
    assert better_refusal(None, busy) is busy
    assert better_refusal(busy, missing) is missing
    assert better_refusal(missing, busy) is missing
