"""The request handlers without a socket: request and keywords in, reply or Deferred out.

The service never begins (no context, no socket, no thread): the handlers
only look its keywords up, so a reply is decided and decoded right here.
"""
from __future__ import annotations

import logging
from typing import Any, List

import pytest

from cauldron_zmq import protocol
from cauldron_zmq.config import DEFAULT
from cauldron_zmq.dispatcher import Service, handlers
from cauldron_zmq.keywords import DoubleArray, Integer, String

CFG = DEFAULT.replace(router={"enable": False})


def service(name: str = "hd") -> Service:
    svc = Service(name, CFG)
    Integer("COUNT", svc, initial=3, minimum=0, maximum=10)
    String("RO", svc, initial="fixed", readonly=True)
    String("WO", svc, writeonly=True)
    svc._apply_initial(list(svc))
    return svc


def context(max_size: int = protocol.DEFAULT_MAX_MESSAGE) -> handlers.Context:
    return handlers.Context(max_size, logging.LoggerAdapter(logging.getLogger("test.handlers"),
                                                            {}))


def ask(svc: Service, command: str, target: str = "", payload: Any = None,
        ctx: Any = None) -> Any:
    req = protocol.request(command, target, payload, id="r1")
    return handlers.answer(req, svc, ctx or context())


def reply_of(frames: List[Any]) -> protocol.Reply:
    reply = protocol.decode_reply(frames)
    assert isinstance(reply, protocol.Reply), reply
    assert reply.id == "r1"
    return reply


def error_code(frames: List[Any]) -> str:
    reply = reply_of(frames)
    assert not reply.ok
    return str(reply.payload["code"])


# ------------------------------------------------------------------- reads

def test_a_plain_read_is_answered_at_once() -> None:
    reply = reply_of(ask(service(), "read", "count"))
    assert reply.ok and reply.payload["value"] == 3 and reply.payload["seq"] == 1


def test_unknown_keyword_missing_target_and_write_only_are_refused() -> None:
    svc = service()
    unknown = reply_of(ask(svc, "read", "COUNTT"))
    assert unknown.payload["code"] == protocol.E_UNKNOWN_KEYWORD
    assert "did you mean COUNT" in unknown.payload["message"]
    assert error_code(ask(svc, "read", "")) == protocol.E_REQUEST
    assert error_code(ask(svc, "read", "WO")) == protocol.E_WRITE_ONLY


def test_a_read_with_a_hook_is_deferred_and_runs_the_hook_only_when_asked() -> None:
    svc = service()
    reads: List[int] = []
    Integer("HOOKED", svc, read=lambda: reads.append(1) or 7)
    decision = ask(svc, "read", "HOOKED")
    assert isinstance(decision, handlers.Deferred) and decision.keyword.name == "HOOKED"
    assert reads == []                         # nothing ran on the "I/O thread"
    reply = reply_of(decision.work())
    assert reads == [1] and reply.ok and reply.payload["value"] == 7


def test_a_failing_read_hook_is_read_failed() -> None:
    svc = service()

    def broken() -> int:
        raise OSError("sensor unplugged")
    Integer("BROKEN", svc, read=broken)
    decision = ask(svc, "read", "BROKEN")
    reply = reply_of(decision.work())
    assert reply.payload["code"] == protocol.E_READ_FAILED
    assert reply.payload["type"] == "OSError" and "unplugged" in reply.payload["message"]


# ------------------------------------------------------------------ writes

def test_a_plain_write_is_applied_at_once_and_says_whether_it_changed() -> None:
    svc = service()
    first = reply_of(ask(svc, "write", "COUNT", {"value": 5}))
    assert first.ok and first.payload["changed"] is True and svc["COUNT"].binary == 5
    again = reply_of(ask(svc, "write", "COUNT", {"value": 5}))
    assert again.payload["changed"] is False and svc["COUNT"].seq == 2


def test_refused_writes_change_nothing() -> None:
    svc = service()
    assert error_code(ask(svc, "write", "RO", {"value": "x"})) == protocol.E_READ_ONLY
    assert error_code(ask(svc, "write", "COUNT", {"value": 11})) == protocol.E_INVALID
    assert error_code(ask(svc, "write", "COUNT", {"value": "many"})) == protocol.E_INVALID
    assert svc["COUNT"].binary == 3 and svc["RO"].value == "fixed"


def test_a_write_with_a_hook_is_deferred_and_a_failing_hook_is_write_failed() -> None:
    svc = service()
    written: List[Any] = []

    def write(value: Any) -> None:
        if value == 9:
            raise RuntimeError("motor stalled")
        written.append(value)
    Integer("MOTOR", svc, write=write)
    decision = ask(svc, "write", "MOTOR", {"value": 4})
    assert isinstance(decision, handlers.Deferred) and written == []
    reply = reply_of(decision.work())
    assert written == [4] and reply.payload["changed"] is True
    failed = reply_of(ask(svc, "write", "MOTOR", {"value": 9}).work())
    assert failed.payload["code"] == protocol.E_WRITE_FAILED
    assert failed.payload["type"] == "RuntimeError" and svc["MOTOR"].binary == 4


def test_a_value_too_large_for_its_replies_is_refused_before_it_is_applied() -> None:
    svc = service()
    DoubleArray("WAVE", svc)
    ctx = context(max_size=20_000)
    refused = reply_of(ask(svc, "write", "WAVE", {"value": [0.5] * 5000}, ctx))
    assert refused.payload["code"] == protocol.E_TOO_LARGE
    assert "max-message-size" in refused.payload["message"] and svc["WAVE"].seq == 0
    assert reply_of(ask(svc, "write", "WAVE", {"value": [0.5] * 10}, ctx)).ok


def test_write_access_is_asked_of_the_security_policy_with_the_senders_key() -> None:
    svc = service()
    asked: List[Any] = []

    class Policy:
        def write_refusal(self, service_name: str, keyword: str, key: Any) -> Any:
            asked.append((service_name, keyword, key))
            return "not on the list" if key != "good" else None
    svc._security = Policy()
    ctx = context()
    ctx.client_key = "bad"
    reply = reply_of(ask(svc, "write", "COUNT", {"value": 4}, ctx))
    assert reply.payload["code"] == protocol.E_NOT_ALLOWED and svc["COUNT"].binary == 3
    ctx.client_key = "good"
    assert reply_of(ask(svc, "write", "COUNT", {"value": 4}, ctx)).ok
    assert asked == [("hd", "COUNT", "bad"), ("hd", "COUNT", "good")]


# ------------------------------------------------- list, describe, identify

def test_list_identify_and_ping() -> None:
    svc = service()
    listed = reply_of(ask(svc, "list"))
    assert listed.payload == {"service": "hd", "dispatcher": "default",
                              "keywords": ["COUNT", "RO", "WO"]}
    who = reply_of(ask(svc, "identify")).payload
    assert who["service"] == "hd" and who["keywords"] == 3
    assert who["protocol"] == protocol.VERSION.decode()
    assert reply_of(ask(svc, "ping")).payload == {}


def test_describe_one_keyword_and_every_keyword() -> None:
    svc = service()
    one = reply_of(ask(svc, "describe", "COUNT")).payload
    assert one["value"] == 3 and one["type"] == "integer"
    every = reply_of(ask(svc, "describe")).payload["keywords"]
    assert sorted(every) == ["COUNT", "RO", "WO"] and every["RO"]["value"] == "fixed"


def test_describe_of_everything_leaves_the_largest_values_out_to_fit() -> None:
    svc = service()
    String("BIG", svc, initial="x" * 6000)
    svc._apply_initial(list(svc))
    every = reply_of(ask(svc, "describe", ctx=context(max_size=5000))).payload["keywords"]
    assert "value" not in every["BIG"] and every["COUNT"]["value"] == 3


# ------------------------------------------------------ errors and replies

def test_a_bug_in_a_handler_is_an_internal_error_not_a_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    svc = service()

    class Broken(Integer):
        def describe(self) -> Any:
            raise ZeroDivisionError("oops")
    Broken("BUG", svc)
    with caplog.at_level(logging.ERROR, logger="test.handlers"):
        reply = reply_of(ask(svc, "describe", "BUG"))
    assert reply.payload["code"] == protocol.E_INTERNAL
    assert "ZeroDivisionError: oops" in reply.payload["message"]
    assert "internal error answering describe" in caplog.text


def test_busy_and_shutting_down_replies() -> None:
    svc = service()
    req = protocol.request("write", "COUNT", id="r1")
    busy = reply_of(handlers.busy(req, svc["COUNT"], 7, 7)).payload
    assert busy["code"] == protocol.E_BUSY and busy["type"] == "KeywordBusy"
    assert "7 request(s) already wait" in busy["message"]
    down = reply_of(handlers.shutting_down("r1", "hd")).payload
    assert down["code"] == protocol.E_SHUTTING_DOWN and "'hd'" in down["message"]
