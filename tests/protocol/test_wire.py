"""The sans-I/O protocol: round trips, every malformed-input class, and a
property that no frame list can make a decoder raise."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cauldron_zmq import protocol as p
from cauldron_zmq.protocol import wire
from cauldron_zmq.errors import DispatcherError, RemoteError, remote_exception


def test_request_round_trip_with_raw_frame():
    req = p.request("write", "TEMP", {"value": 3.5}, raw=b"\x00\x01")
    frames = p.encode_request(req)
    assert frames[0] == p.VERSION
    assert p.decode_request(frames, p.DISPATCHER_COMMANDS) == req


def test_request_ids_are_unique():
    assert len({p.new_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize("status,payload", [(p.OK, {"x": [1, 2]}), (p.ACK, None),
                                            (p.ERROR, p.error_payload("invalid-value", "no", "ValueError"))])
def test_reply_round_trip(status, payload):
    rep = p.Reply("abc", status, payload)
    assert p.decode_reply(p.encode_reply(rep)) == rep


def test_ack_helper_decodes():
    rep = p.decode_reply(p.ack("id-1"))
    assert rep == p.Reply("id-1", p.ACK, None)


def test_broadcast_round_trip_and_exact_topics():
    b = p.Broadcast("svc", "FOO", {"value": 1, "seq": 3}, raw=None)
    frames = p.encode_broadcast(b)
    assert p.decode_broadcast(frames) == b
    # The terminating NUL makes prefix subscription exact.
    assert not p.topic("svc", "FOO2").startswith(p.topic("svc", "FOO"))
    assert p.topic("svc", "FOO").startswith(p.service_prefix("svc"))
    assert not p.topic("svc2", "FOO").startswith(p.service_prefix("svc"))
    assert p.decode_broadcast(p.encode_broadcast(p.Broadcast("svc", "", {}))).is_heartbeat


@pytest.mark.parametrize("frames,code", [
    ([p.VERSION, b"1", b"read"], p.E_FRAMES),
    ([b"CZMQ9", b"1", b"read", b"", b"{}"], p.E_VERSION),
    ([p.VERSION, b"1", b"\xff\xfe", b"", b"{}"], p.E_ENCODING),
    ([p.VERSION, b"1", b"read", b"", b"{nope"], p.E_JSON),
    ([p.VERSION, b"1", b"read", b"", b"NaN"], p.E_JSON),
    ([p.VERSION, b"1", b"explode", b"", b"{}"], p.E_COMMAND),
    ([p.VERSION, b"", b"read", b"", b"{}"], p.E_REQUEST),
    ([p.VERSION, b"x" * 65, b"read", b"", b"{}"], p.E_REQUEST),
])
def test_malformed_requests_are_typed(frames, code):
    m = p.decode_request(frames, p.DISPATCHER_COMMANDS)
    assert isinstance(m, p.Malformed)
    assert m.code == code
    assert m.message


def test_malformed_request_keeps_the_id_for_the_error_reply():
    m = p.decode_request([p.VERSION, b"id-7", b"explode", b"", b"{}"], p.DISPATCHER_COMMANDS)
    rep = p.decode_reply(p.malformed_reply(m))
    assert rep.id == "id-7" and rep.status == p.ERROR
    assert rep.payload["code"] == p.E_COMMAND and rep.payload["type"] == "ProtocolError"


def test_oversize_message_is_refused():
    m = p.decode_request([p.VERSION, b"1", b"read", b"", b"{}", b"x" * 2000], max_size=1024)
    assert isinstance(m, p.Malformed) and m.code == p.E_TOO_LARGE


def test_envelope_keeps_req_delimiter():
    env, body = p.split_envelope([b"ident", b"", b"a", b"b"])
    assert env == [b"ident", b""] and body == [b"a", b"b"]
    env, body = p.split_envelope([b"ident", b"a"])
    assert env == [b"ident"] and body == [b"a"]
    assert p.split_envelope([]) == ([], [])


def test_error_reply_needs_code_and_message():
    frames = [p.VERSION, b"1", b"error", json.dumps({"nope": 1}).encode()]
    assert isinstance(p.decode_reply(frames), p.Malformed)


def test_exception_payload_uses_type_and_message_not_repr():
    assert p.exception_payload(ValueError("too hot"), "invalid-value") == {
        "code": "invalid-value", "message": "too hot", "type": "ValueError"}
    assert p.exception_payload(KeyError("FOO"), "x")["message"] == "FOO"


def test_field_of_checks_types():
    assert p.field_of({"a": 1}, "a", int) == 1
    assert p.field_of({}, "a", int, required=False, default=5) == 5
    with pytest.raises(p.BadRequest, match="'a' is required"):
        p.field_of({}, "a", int)
    with pytest.raises(p.BadRequest, match="boolean"):
        p.field_of({"a": True}, "a", int)
    with pytest.raises(p.BadRequest, match="JSON object"):
        p.field_of([1], "a", int)


def test_remote_exception_keeps_the_builtin_type():
    exc = remote_exception("too hot", code="invalid-value", remote_type="ValueError")
    assert isinstance(exc, DispatcherError) and isinstance(exc, ValueError)
    assert str(exc) == "ValueError: too hot"
    odd = remote_exception("strange", code="write-failed", remote_type="MotorStalled")
    assert type(odd) is DispatcherError and odd.remote_type == "MotorStalled"
    key = remote_exception("FOO", code="unknown-keyword", remote_type="KeyError")
    assert isinstance(key, KeyError) and str(key) == "KeyError: FOO"
    assert isinstance(key, RemoteError)


frame = st.one_of(st.binary(max_size=64), st.sampled_from([p.VERSION, b"", b"{}", b"null", b"read"]))


@settings(max_examples=400, deadline=None)
@given(st.lists(frame, max_size=8))
def test_decoders_never_raise(frames):
    for result in (p.decode_request(frames, p.ROUTER_COMMANDS), p.decode_reply(frames),
                   p.decode_broadcast(frames), p.decode_request(frames)):
        assert isinstance(result, (p.Request, p.Reply, p.Broadcast, p.Malformed))
    p.split_envelope(frames)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(min_size=1, max_size=64), st.text(max_size=30),
       st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=8))
def test_any_request_round_trips(command, rid, target, payload):
    req = p.Request(rid, command, target, payload)
    assert p.decode_request(p.encode_request(req)) == req


# --------------------------------------------------------------------- sizes

def test_oversize_decides_cheaply_and_exactly_near_the_limit(monkeypatch):
    limit = 10_000
    budget = limit - p.ENVELOPE_ALLOWANCE
    assert p.oversize("x" * 100, None, limit) is None
    assert p.oversize(list(range(100)), None, limit) is None
    # refused on the lower bound, without encoding
    encoded = []
    real_dumps = p.dumps
    monkeypatch.setattr(wire, "dumps", lambda obj: (encoded.append(1), real_dumps(obj))[1])
    assert p.oversize("x" * 20_000, None, limit) >= 20_000
    assert p.oversize([0] * 10_000, None, limit) >= 20_000
    assert p.oversize({"dtype": "<f8"}, b"\0" * limit, limit) > limit
    assert not encoded
    # near the limit: exact (escapes count; a 6-byte escape per control character)
    assert p.oversize("x" * (budget - 2), None, limit) is None
    assert p.oversize("x" * (budget - 1), None, limit) == limit + 1
    assert p.oversize("\n" * (budget // 2), None, limit) is not None
    assert p.oversize("é" * ((budget - 2) // 2), None, limit) is None      # 2 bytes each
    assert encoded
    # the raw frame counts, a memoryview by its bytes
    frame = memoryview(bytearray(budget - 40)).cast("B")
    assert p.oversize({"dtype": "<f8", "shape": [1]}, frame, limit) is None
    assert p.oversize({"dtype": "<f8", "shape": [1]}, frame, limit - 100) is not None
    assert p.frames_size([b"ab", memoryview(b"cde")]) == 5


def test_busy_has_a_code_and_a_client_class():
    from cauldron_zmq.errors import KeywordBusy
    assert p.E_BUSY == "busy" and p.E_BUSY in p.ERROR_CODES
    exc = remote_exception("demo.STAGE is busy", code="busy", remote_type="KeywordBusy")
    assert isinstance(exc, KeywordBusy) and isinstance(exc, DispatcherError)
    from cauldron_zmq.errors import RouterError
    assert not isinstance(remote_exception("x", code="busy", base=RouterError), KeywordBusy)
