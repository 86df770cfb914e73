"""The book's trust rules as pure tests (issue 10, items 1, 2, 3, 10): instances,
reservations before the bind, owned entries, blocks that are retried, and the
operator's forget/unblock.  No sockets: ``now`` is passed in."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from cauldron_zmq import protocol
from cauldron_zmq.protocol.backoff import Schedule
from cauldron_zmq.protocol.book import Book
from cauldron_zmq.protocol.entries import DOWN, LIVE, Caller, RouterRefusal

T0 = 1_700_000_000.0
ADMIN = Caller(admin=True)


def refusal(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> RouterRefusal:
    with pytest.raises(RouterRefusal) as info:
        fn(*args, **kwargs)
    return info.value


def ports(result: dict) -> tuple:
    return result["dispatch_port"], result["broadcast_port"]


@pytest.fixture
def book() -> Book:
    return Book(7000, 7007, expiry=10.0, block_retry=Schedule(30, 2, 3600))


def serve(book: Book, instance: str, now: float = T0, dispatcher: str = "default",
          host: str = "127.0.0.1", **kw: Any) -> dict:
    """What a dispatcher does: reserve, (bind), register ready."""
    held = book.register("demo", dispatcher, host, instance=instance, ready=False, now=now, **kw)
    book.register("demo", dispatcher, host, instance=instance, prefer=list(ports(held)),
                  now=now, **kw)
    return held


# -------------------------------------------------------------- bind, then register

def test_a_reservation_is_not_looked_up_until_ready(book: Book) -> None:
    held = book.register("demo", "default", "127.0.0.1", instance="a", ready=False, now=T0)
    assert held["ready"] is False and "held_by" not in held
    assert refusal(book.lookup, "demo", now=T0).code == protocol.E_NOT_FOUND
    book.register("demo", "default", "127.0.0.1", instance="a", prefer=list(ports(held)), now=T0)
    [entry] = book.lookup("demo", now=T0)["dispatchers"]
    assert ports(entry) == ports(held) and entry["ready"] is True


def test_one_step_registration_still_works(book: Book) -> None:
    book.register("demo", "default", "127.0.0.1", now=T0)
    assert book.lookup("demo", now=T0)["dispatchers"][0]["state"] == LIVE


# -------------------------------------------------------------- restart or second copy

def test_a_second_copy_is_told_who_holds_the_name_and_changes_nothing(book: Book) -> None:
    first = serve(book, "a", pid=11)
    before = book.to_data(T0)
    again = book.register("demo", "default", "127.0.0.1", instance="b", pid=22, ready=False,
                          now=T0 + 1)
    assert ports(again) == ports(first) and again["held_by"] == {"pid": 11, "host": "127.0.0.1"}
    assert book.to_data(T0) == before and book.blocked == []
    # the second copy found the port bound by a dispatcher of its name: it gives up, and
    # its unregister (or a heartbeat) cannot touch the first copy's entry
    assert refusal(book.unregister, "demo", "default", instance="b",
                   now=T0 + 1).code == protocol.E_NOT_ALLOWED
    assert refusal(book.heartbeat, "demo", "default", instance="b",
                   now=T0 + 1).code == protocol.E_CONFLICT
    assert refusal(book.unregister, "demo", "default", now=T0 + 1).code == protocol.E_NOT_ALLOWED
    assert book.heartbeat("demo", "default", instance="a", now=T0 + 2)["state"] == LIVE
    assert book.unregister("demo", "default", instance="a", now=T0 + 3)["state"] == DOWN


def test_a_restart_within_expiry_takes_over_once_it_has_bound(book: Book) -> None:
    first = serve(book, "a", pid=11)
    held = book.register("demo", "default", "127.0.0.1", instance="b", pid=22, ready=False,
                         now=T0 + 1)
    assert held["held_by"]["pid"] == 11
    # it could bind the held pair, so the old process is gone: registering takes over
    book.register("demo", "default", "127.0.0.1", instance="b", pid=22,
                  prefer=list(ports(held)), now=T0 + 1)
    [entry] = book.lookup("demo", now=T0 + 1)["dispatchers"]
    assert ports(entry) == ports(first) and entry["pid"] == 22
    assert refusal(book.heartbeat, "demo", "default", instance="a",
                   now=T0 + 2).code == protocol.E_CONFLICT
    assert refusal(book.unregister, "demo", "default", instance="a",
                   now=T0 + 2).code == protocol.E_NOT_ALLOWED


def test_a_held_pair_that_does_not_answer_is_a_conflict_not_a_block(book: Book) -> None:
    serve(book, "a", pid=11)
    err = refusal(book.register, "demo", "default", "127.0.0.1", instance="b", ready=False,
                  avoid=[7000], now=T0 + 1)
    assert err.code == protocol.E_CONFLICT and "forget demo/default" in err.message
    assert book.blocked == []


def test_even_an_admin_unregisters_only_with_the_instance(book: Book) -> None:
    serve(book, "a")
    assert refusal(book.unregister, "demo", "default", now=T0,
                   caller=ADMIN).code == protocol.E_NOT_ALLOWED
    assert book.forget("demo", "default", now=T0, caller=ADMIN)["forgotten"]


# -------------------------------------------------------------- avoid and blocks

def test_avoid_never_blocks_or_moves_a_pair_another_name_holds(book: Book) -> None:
    serve(book, "a")                                            # demo/default on 7000/7001
    other = book.register("other", "x", "127.0.0.1", avoid=[7000, 7001], now=T0)
    assert ports(other) == (7002, 7003) and book.blocked == []
    assert ports(book.heartbeat("demo", "default", instance="a", now=T0 + 1)) == (7000, 7001)


def test_a_blocked_pair_is_retried_with_back_off_and_released_once_bindable(book: Book) -> None:
    first = book.register("s", "a", "h", now=T0)
    assert ports(first) == (7000, 7001)
    moved = book.register("s", "a", "h", avoid=[7000], now=T0)       # a squatter on 7000
    assert ports(moved) == (7002, 7003) and book.blocked == [7000]
    assert book.blocked_at(T0 + 29) == [7000] and book.blocked_at(T0 + 31) == []
    assert ports(book.register("s", "b", "h", now=T0 + 10)) == (7004, 7005)   # still skipped
    # after 30 s the pair is tried again; still taken: blocked for 60 s
    retried = book.register("s", "c", "h", ready=False, instance="c", now=T0 + 31)
    assert ports(retried) == (7000, 7001)
    again = book.register("s", "c", "h", ready=False, instance="c", avoid=[7000], now=T0 + 31)
    assert ports(again) == (7006, 7007)
    assert book.blocked_at(T0 + 31 + 59) == [7000] and book.blocked_at(T0 + 31 + 61) == []
    # the squatter left: the next one binds it and the block is released
    book.unregister("s", "b", now=T0 + 100)
    d = book.register("s", "d", "h", instance="d", ready=False, now=T0 + 100)
    assert ports(d) == (7000, 7001)
    book.register("s", "d", "h", instance="d", prefer=list(ports(d)), now=T0 + 100)
    assert book.blocked == []


def test_blocks_survive_a_restart_and_are_retried(book: Book) -> None:
    book.register("s", "a", "h", avoid=[7000], now=T0)
    again = Book.from_data(book.to_data(T0), first_port=7000, last_port=7007, expiry=10,
                           now=T0 + 5, block_retry=Schedule(30, 2, 3600))
    assert again.blocked == [7000] and again.blocked_at(T0 + 36) == []


# -------------------------------------------------------------- forget and unblock

def test_forget_and_unblock_are_for_admins(book: Book) -> None:
    serve(book, "a")
    book.register("demo", "other", "127.0.0.1", avoid=[7002], now=T0)
    for call in (lambda c: book.forget("demo", "default", now=T0, caller=c),
                 lambda c: book.unblock(7002, now=T0, caller=c)):
        assert refusal(call, Caller(key="k")).code == protocol.E_NOT_ALLOWED
    assert refusal(book.forget, "demo", "nobody", now=T0, caller=ADMIN).code == \
        protocol.E_NOT_FOUND
    assert refusal(book.unblock, 7100, now=T0, caller=ADMIN).code == protocol.E_NOT_FOUND
    gone = book.forget("demo", "default", now=T0, caller=ADMIN)["forgotten"]
    assert [(e["dispatcher"], e["dispatch_port"]) for e in gone] == [("default", 7000)]
    assert book.get("demo", "default") is None
    assert book.unblock(now=T0, caller=ADMIN) == {"unblocked": [7002]} and book.blocked == []
    assert ports(book.register("new", "x", "h", now=T0)) == (7000, 7001)   # free again
    book.forget("demo", now=T0, caller=ADMIN)
    assert refusal(book.lookup, "demo", now=T0).code == protocol.E_NOT_FOUND


def test_forget_and_unblock_through_handle(book: Book) -> None:
    serve(book, "a")
    assert book.handle("forget", "demo", {}, now=T0, caller=ADMIN)["forgotten"]
    assert book.handle("unblock", "", {}, now=T0, caller=ADMIN) == {"unblocked": []}
    assert refusal(book.handle, "unblock", "", {"port": "x"}, now=T0,
                   caller=ADMIN).code == protocol.E_REQUEST


# -------------------------------------------------------------- keys (CURVE)

def test_only_the_registering_key_or_an_admin_changes_an_entry(book: Book) -> None:
    owner, reader = Caller(key="K-disp"), Caller(key="K-reader")
    book.register("demo", "default", "127.0.0.1", instance="a", now=T0, caller=owner)
    for call in (lambda: book.unregister("demo", "default", now=T0, caller=reader),
                 lambda: book.register("demo", "default", "127.0.0.1", avoid=[7000], now=T0,
                                       caller=reader),
                 lambda: book.register("demo", "default", "127.0.0.1", now=T0 + 100,
                                       caller=reader),
                 lambda: book.heartbeat("demo", "default", now=T0, caller=reader)):
        assert refusal(call).code == protocol.E_NOT_ALLOWED
    # another name with avoid=[the live port]: nothing blocked, nothing moved
    book.register("evil", "x", "127.0.0.1", avoid=[7000, 7001], now=T0, caller=reader)
    assert book.blocked == [] and ports(book.lookup("demo", now=T0)["dispatchers"][0]) == \
        (7000, 7001)
    assert book.register("demo", "default", "127.0.0.1", instance="a", now=T0 + 1,
                         caller=owner)["dispatch_port"] == 7000
    admin = Caller(key="K-ops", admin=True)
    assert book.unregister("demo", "default", instance="a", now=T0 + 2,
                           caller=admin)["state"] == DOWN
    assert book.get("demo", "default").key == "K-disp"     # an admin does not take it over


def test_keys_and_instances_survive_a_restart(book: Book) -> None:
    book.register("demo", "default", "127.0.0.1", instance="a", now=T0, caller=Caller(key="K"))
    again = Book.from_data(book.to_data(T0), first_port=7000, last_port=7007, expiry=10,
                           now=T0 + 1)
    entry = again.get("demo", "default")
    assert (entry.key, entry.instance, entry.ready) == ("K", "a", True)
    assert refusal(again.unregister, "demo", "default", instance="a", now=T0,
                   caller=Caller(key="other")).code == protocol.E_NOT_ALLOWED


# -------------------------------------------------------------- bad names and hosts

@pytest.mark.parametrize("service, dispatcher, host", [
    ("demo", "zz", "bad host;"), ("demo", "zz", ""), ("../escape", "d", "h"),
    ("/abs/name", "d", "h"), ("sub/../../up", "d", "h"), ("demo", "..", "h"),
    ("demo", "a/b", "h"), ("x" * 257, "d", "h"),
])
def test_bad_names_and_hosts_are_refused_and_change_nothing(book: Book, service: str,
                                                            dispatcher: str, host: str) -> None:
    before = book.to_data(T0)
    assert refusal(book.register, service, dispatcher, host, now=T0).code == protocol.E_REQUEST
    assert book.to_data(T0) == before


def test_ipc_books_take_path_prefixes() -> None:
    book = Book(7000, 7003, expiry=10, protocol="ipc")
    assert book.register("s", "d", "/tmp/cz/sock", now=T0)["dispatch_port"] == 7000
    assert refusal(book.register, "s", "e", "/tmp/\x00", now=T0).code == protocol.E_REQUEST


def test_a_state_file_entry_with_a_bad_name_or_host_is_dropped_alone(book: Book) -> None:
    book.register("demo", "default", "127.0.0.1", now=T0)
    book.register("demo", "other", "127.0.0.1", now=T0)
    data = book.to_data(T0)
    data["entries"][1]["host"] = "bad host;"      # what an older release accepted
    data["entries"].append(dict(data["entries"][0], service="../escape", dispatch_port=7004,
                                broadcast_port=7005))
    again = Book.from_data(data, first_port=7000, last_port=7007, expiry=10, now=T0)
    assert [e.name for e in again.entries()] == ["demo/default"]


def test_saved_keys_do_not_lock_anyone_out_without_security(book: Book) -> None:
    book.register("demo", "default", "10.0.0.1", now=T0, caller=Caller(key="K"))
    book.unregister("demo", "default", now=T0, caller=Caller(key=None, admin=False))
    assert book.get("demo", "default").registered is False
