"""Several routers, without sockets: the registration plan, the strict book, the checks.

:mod:`cauldron_zmq.protocol.replicas` decides what a dispatcher sends each router and
what the answer means; :class:`cauldron_zmq.router.Book` grants a strict
registration (the pair the dispatcher holds) or refuses it with a conflict;
the configuration checks ``replicas``.  All driven with ``now`` by hand.
"""
from __future__ import annotations

from typing import Any, Dict, List

import pytest

from cauldron_zmq.protocol import replicas
from cauldron_zmq.config import DEFAULT, config_from_mapping, split_replica
from cauldron_zmq.errors import ConfigurationError, RouterError, TimeoutError
from cauldron_zmq.protocol.replicas import (HEARTBEAT, LOST, MOVED, OK, REGISTER, SILENT, RouterLink,
                                   disagreements, plan, record, should_spawn)
from cauldron_zmq.protocol.book import Book
from cauldron_zmq.protocol.entries import RouterRefusal
from cauldron_zmq.router import first_good

T0 = 1000.0
OURS = (7000, 7001)


def answer(ports: Any = OURS) -> Dict[str, Any]:
    return {"dispatch_port": ports[0], "broadcast_port": ports[1]}


# ----------------------------------------------------------------- the plan

def test_plan_registers_where_unknown_and_heartbeats_where_registered() -> None:
    a, b, c = RouterLink("a", registered=True), RouterLink("b"), RouterLink("c", due=T0 + 5)
    assert [(link.address, action) for link, action in plan([a, b, c], T0)] == \
        [("a", HEARTBEAT), ("b", REGISTER)]


def test_a_router_that_forgot_us_is_registered_with_at_once() -> None:
    link = RouterLink("a", registered=True)
    assert record(link, HEARTBEAT, "a/default is unknown here", OURS, T0, 2.0, strict=True,
                  code="not-found") == LOST
    assert not link.registered and link.due == T0
    assert plan([link], T0) == [(link, REGISTER)]
    assert record(link, REGISTER, answer(), OURS, T0, 2.0, strict=True) == OK
    assert link.registered and link.due == T0 + 2.0 and link.problem is None


def test_a_heartbeat_naming_other_ports_registers_again() -> None:
    link = RouterLink("a", registered=True)
    assert record(link, HEARTBEAT, answer((7002, 7003)), OURS, T0, 2.0, strict=True) == LOST
    assert not link.registered and link.due == T0


def test_silence_is_retried_within_a_heartbeat_so_a_restart_is_caught_within_two() -> None:
    link = RouterLink("a", registered=True)
    dues = []
    now = T0
    for _ in range(5):
        assert record(link, HEARTBEAT, None, OURS, now, 2.0, strict=True) == SILENT
        dues.append(link.due - now)
        now = link.due
    assert dues == [1.0, 2.0, 2.0, 2.0, 2.0]       # never longer than one interval
    assert link.registered                          # it may come back with its book


def test_a_strict_conflict_is_kept_reported_and_backed_off() -> None:
    link = RouterLink("b")
    message = "alpha/default holds ports 7000/7001, but this router gives them to live x/y"
    assert record(link, REGISTER, message, OURS, T0, 2.0, strict=True,
                  code="conflict") == replicas.CONFLICT
    first = link.due - T0
    assert record(link, REGISTER, message, OURS, link.due, 2.0, strict=True,
                  code="conflict") == replicas.CONFLICT
    assert link.due - (T0 + first) > first          # backing off
    assert replicas.conflicts([link, RouterLink("a")]) == [f"b: {message}"]
    assert record(link, REGISTER, answer(), OURS, T0 + 100, 2.0, strict=True) == OK
    assert replicas.conflicts([link]) == []


def test_a_refused_heartbeat_never_turns_into_a_registration() -> None:
    link = RouterLink("a", registered=True)
    assert record(link, HEARTBEAT, "alpha/default is now served by pid 7 on h", OURS, T0,
                  2.0, strict=True, code="conflict") == replicas.CONFLICT
    assert link.registered and link.due > T0 and link.problem
    assert plan([link], link.due) == [(link, HEARTBEAT)]


def test_another_pair_is_a_conflict_with_several_routers_and_a_move_with_one() -> None:
    assert record(RouterLink("a"), REGISTER, answer((7004, 7005)), OURS, T0, 2.0,
                  strict=True) == replicas.CONFLICT
    assert record(RouterLink("a"), REGISTER, answer((7004, 7005)), OURS, T0, 2.0,
                  strict=False) == MOVED


def test_spawn_only_when_every_router_is_silent_and_allowed() -> None:
    silent = [RouterLink("a", silent=1), RouterLink("b", silent=2)]
    assert should_spawn(silent, True, "tcp", None, T0, 10.0)
    assert not should_spawn(silent, False, "tcp", None, T0, 10.0)
    assert not should_spawn(silent, True, "ipc", None, T0, 10.0)      # ipc binds steal
    assert not should_spawn(silent, True, "tcp", T0 - 5, T0, 10.0)    # tried recently
    assert should_spawn(silent, True, "tcp", T0 - 10, T0, 10.0)
    assert not should_spawn([RouterLink("a", silent=1), RouterLink("b")], True, "tcp",
                            None, T0, 10.0)


# ------------------------------------------------------------- disagreements

def entry(service: str, dispatcher: str = "default", port: int = 7000,
          state: str = "live") -> Dict[str, Any]:
    return {"service": service, "dispatcher": dispatcher, "host": "127.0.0.1",
            "dispatch_port": port, "broadcast_port": port + 1, "state": state}


def test_disagreements() -> None:
    a = [entry("alpha"), entry("beta", port=7002), entry("gamma", port=7004)]
    b = [entry("alpha", state="stale"), entry("beta", port=7006)]
    assert disagreements({"A": a, "B": b}) == {("beta", "default"), ("gamma", "default")}
    assert disagreements({"A": a, "B": None}) == set()        # silence is not disagreement
    assert disagreements({"A": a, "B": list(a)}) == set()
    assert disagreements({"A": [entry("x", state="down")], "B": [entry("x")]}) == \
        {("x", "default")}


# ---------------------------------------------------------------- the book

def make_book() -> Book:
    return Book(7000, 7009, expiry=10.0)


def test_strict_registration_takes_the_pair_it_holds() -> None:
    book = make_book()
    got = book.register("alpha", "default", "h", prefer=[7004, 7005], strict=True, now=T0)
    assert (got["dispatch_port"], got["broadcast_port"]) == (7004, 7005)


def test_strict_registration_refuses_a_pair_a_live_name_holds() -> None:
    book = make_book()
    book.register("other", "default", "h", now=T0)                 # takes 7000/7001
    with pytest.raises(RouterRefusal) as info:
        book.register("alpha", "default", "h", prefer=[7000, 7001], strict=True, now=T0)
    assert info.value.code == "conflict" and "other/default" in info.value.message
    assert book.get("alpha", "default") is None                    # nothing changed
    # not strict: today's behaviour, another pair
    got = book.register("alpha", "default", "h", prefer=[7000, 7001], now=T0)
    assert got["dispatch_port"] == 7002


def test_strict_registration_takes_the_pair_from_a_name_no_longer_live() -> None:
    book = make_book()
    book.register("other", "default", "h", now=T0)
    got = book.register("alpha", "default", "h", prefer=[7000, 7001], strict=True,
                        now=T0 + 11)                                # other is stale
    assert got["dispatch_port"] == 7000 and book.get("other", "default") is None


def test_strict_needs_a_pair_of_the_range() -> None:
    with pytest.raises(RouterRefusal) as info:
        make_book().register("alpha", "default", "h", prefer=[8000, 8001], strict=True, now=T0)
    assert info.value.code == "conflict" and "range" in info.value.message


def test_conflicts_reported_are_listed_bounded_and_cleared() -> None:
    book = make_book()
    reports = [f"tcp://b:{i}: {'x' * 1000}" for i in range(20)]
    book.handle("register", "alpha", {"dispatcher": "default", "host": "h",
                                      "conflicts": reports}, now=T0)
    [listed] = book.list(now=T0)["entries"]
    assert len(listed["conflicts"]) == 8 and all(len(c) <= 400 for c in listed["conflicts"])
    book.handle("heartbeat", "alpha", {"dispatcher": "default", "conflicts": []}, now=T0 + 1)
    assert "conflicts" not in book.list(now=T0 + 1)["entries"][0]
    with pytest.raises(RouterRefusal):
        book.handle("heartbeat", "alpha", {"dispatcher": "default", "conflicts": [1]}, now=T0)


# ---------------------------------------------------------- first good answer

def test_first_good_answer_and_the_most_telling_error() -> None:
    found = RouterError("no such service", code="not-found")
    other = RouterError("refused", code="not-allowed")
    assert first_good({"a": TimeoutError("x"), "b": {"ok": 1}}, "lookup", "s", 100) == {"ok": 1}
    with pytest.raises(RouterError) as info:
        first_good({"a": other, "b": found, "c": TimeoutError("x")}, "lookup", "s", 100)
    assert info.value is found
    with pytest.raises(TimeoutError) as timeout:
        first_good({"a": TimeoutError("x"), "b": TimeoutError("y")}, "lookup", "s", 100)
    assert "a, b" in str(timeout.value)


# -------------------------------------------------------------- configuration

def routers(**keys: Any) -> List[str]:
    return config_from_mapping({"zmq-router": keys}).router_addresses()


def test_replicas_in_the_configuration() -> None:
    assert DEFAULT.router.replicas == () and DEFAULT.router_addresses() == ["tcp://127.0.0.1:6510"]
    assert routers(replicas=["b.example:6510", "[::1]:7000", "localhost:6510"]) == [
        "tcp://127.0.0.1:6510", "tcp://b.example:6510", "tcp://[::1]:7000"]   # own one left out
    assert routers(protocol="ipc", host="/tmp/r1", replicas=["/tmp/r2"]) == \
        ["ipc:///tmp/r1", "ipc:///tmp/r2"]
    assert split_replica("host:1") == ("host", 1)
    cfg = config_from_mapping({"zmq-router": {"replicas": ["b:7000"]}})
    assert config_from_mapping({"zmq-router": {"replicas": list(cfg.router.replicas)}}) == cfg
    assert "replicas = [\"b:7000\"]" in cfg.to_toml()


@pytest.mark.parametrize("value, words", [
    ("b:7000", "list"), (["b"], "host:port"), (["b:0"], "port 1..65535"),
    (["b:x"], "host:port"), ([":7000"], "host:port"), (["b:7000", "b:7000"], "once"),
    ([3], "list"), ([""], "list"),
])
def test_bad_replicas(value: Any, words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        config_from_mapping({"zmq-router": {"replicas": value}})
    assert "[zmq-router] replicas" in str(info.value) and words in str(info.value)
