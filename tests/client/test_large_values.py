"""A value the dispatcher accepts never makes its keyword unreadable (issue 10, item 6).

* a request over ``[zmq] max-message-size`` is refused by the client before
  it is sent (MessageTooLarge, naming the size and the limit), not after a
  timeout;
* the dispatcher refuses a write whose reply or broadcast would not fit,
  and never sends one it knows is too large (a value set by instrument
  code is logged instead, and reading it is a clear error);
* strings and arrays travel once: no ascii copy (clients format an array's
  ascii when asked);
* describe carries numpy arrays (a new client's value is the array, not the
  frame header), and a 16 MB double array works end to end.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List

import numpy as np
import pytest
import zmq

from cauldron_zmq import DFW, protocol
from cauldron_zmq.errors import DispatcherError, MessageTooLarge
from cauldron_zmq.testing import ServiceHarness, wait_until

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
DEFAULT_LIMIT = 16 * MiB


def _setup(svc: Any) -> None:
    DFW.String("TEXT", svc, initial="")
    DFW.DoubleArray("ARR", svc, initial=[0.0])
    DFW.Integer("N", svc, initial=0)


def _raw(harness: ServiceHarness, command: str, target: str,
         payload: Any = None) -> protocol.Reply:
    """One request from a bare DEALER, its final answer (acks skipped)."""
    from cauldron_zmq.router import RouterClient
    with RouterClient(harness.config, timeout=2000) as rc:
        entry = rc.lookup(harness.service)["dispatchers"][0]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{entry['host']}:{entry['dispatch_port']}")
        sock.send_multipart(protocol.encode_request(protocol.request(command, target, payload)))
        while True:
            assert sock.poll(10000), f"no answer to {command} {target}"
            reply = protocol.decode_reply(sock.recv_multipart(), 64 * MiB)
            assert isinstance(reply, protocol.Reply), reply
            if reply.status != "ack":
                return reply
    finally:
        sock.close(0)
        ctx.term()


def test_too_large_requests_are_refused_before_they_are_sent() -> None:
    with ServiceHarness(_setup, "big") as harness:
        svc = harness.client()
        text, arr = svc["TEXT"], svc["ARR"]
        t0 = time.monotonic()
        with pytest.raises(MessageTooLarge) as info:
            text.write("x" * (17 * MiB))
        assert time.monotonic() - t0 < svc.timeout           # refused, not timed out
        message = str(info.value)
        assert "big.TEXT" in message and str(DEFAULT_LIMIT) in message
        assert str(info.value.size) in message and info.value.size > 17 * MiB
        assert info.value.limit == DEFAULT_LIMIT and isinstance(info.value, ValueError)
        with pytest.raises(MessageTooLarge) as info:
            arr.write(np.zeros(10_000_000))
        assert info.value.size >= 80_000_000 and "big.ARR" in str(info.value)
        t0 = time.monotonic()
        with pytest.raises(MessageTooLarge):
            arr.write([0.5] * 10_000_000)            # a list: refused before converting it
        assert time.monotonic() - t0 < svc.timeout
        # nothing was sent, nothing broke: the keywords answer at once
        assert text.write("small") == "small"
        assert arr.read(binary=True) == [0.0]


def test_a_10_mib_string_travels_once_and_stays_readable() -> None:
    big = "s" * (10 * MiB)
    with ServiceHarness(_setup, "big") as harness:
        watcher = harness.client()
        seen: List[int] = []
        arrived = threading.Event()
        watcher["TEXT"].callback(lambda kw: (seen.append(len(kw["ascii"] or "")),
                                             arrived.set()))
        watcher["TEXT"].monitor()
        watcher["N"].monitor()
        writer = harness.client()
        assert writer["TEXT"].write(big, timeout=30) == big
        wait_until(lambda: big and 10 * MiB in seen, 30, message="the 10 MiB broadcast")
        reply = _raw(harness, "read", "TEXT")
        assert reply.payload["value"] == big and "ascii" not in reply.payload
        fresh = harness.client(timeout=30)
        assert fresh["TEXT"].value == big                     # describe carries it
        assert fresh["TEXT"].read() == big
        writer["N"].write(7)                                  # the subscriber is still connected
        wait_until(lambda: watcher["N"].value == 7, 10, message="a later broadcast")
        assert watcher["N"].connected


def test_the_dispatcher_refuses_a_value_whose_reply_would_not_fit() -> None:
    limit = 256 * 1024

    def setup(svc: Any) -> None:
        _setup(svc)
        DFW.String("DOUBLED", svc, initial="", translate=lambda value: str(value) * 2)

    with ServiceHarness(setup, "big", config={"zmq": {"max-message-size": limit}}) as harness:
        # Fits as a request (the client's own check passes), not as a reply.
        near = "y" * (limit - 200)
        reply = _raw(harness, "write", "TEXT", {"value": near})
        assert reply.status == "error" and reply.payload["code"] == "too-large", reply.payload
        assert str(limit) in reply.payload["message"] and "big.TEXT" in reply.payload["message"]
        assert reply.payload["type"] == "ValueError"
        svc = harness.client()
        assert svc["TEXT"].read() == ""                       # nothing was applied
        # A hook (translate) that makes the value too large: refused before the write hook.
        with pytest.raises(DispatcherError) as info:
            svc["DOUBLED"].write("z" * (limit // 2))
        assert info.value.code == "too-large" and isinstance(info.value, ValueError)
        assert svc["DOUBLED"].read() == ""
        assert svc["DOUBLED"].write("ab") == "abab"


def test_a_value_too_large_set_by_instrument_code_is_not_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    limit = 64 * 1024
    with ServiceHarness(_setup, "big", config={"zmq": {"max-message-size": limit}}) as harness:
        svc = harness.client()
        svc["N"].monitor()
        svc["TEXT"].monitor()
        with caplog.at_level(logging.ERROR, logger="cauldron_zmq.dispatcher.big"):
            harness.dispatcher["TEXT"].set("q" * (2 * limit))
            harness.dispatcher["N"].set(3)
            wait_until(lambda: svc["N"].value == 3, 10, message="the next broadcast")
        assert svc["N"].connected and svc["TEXT"].value == ""
        assert "broadcast of big.TEXT not sent" in caplog.text and str(limit) in caplog.text
        with pytest.raises(DispatcherError) as info:
            svc["TEXT"].read()
        assert info.value.code == "too-large" and str(limit) in str(info.value)
        fresh = harness.client()                     # describe leaves the value out
        assert fresh["TEXT"].value is None and fresh["N"].value == 3


def test_numpy_arrays_travel_without_ascii_and_describe_carries_them() -> None:
    with ServiceHarness(_setup, "big") as harness:
        svc = harness.client()
        assert svc["ARR"].write(np.array([1.0, 2.5, -3.0]), binary=True).tolist() == [1.0, 2.5, -3.0]
        reply = _raw(harness, "read", "ARR")
        assert reply.payload["value"] == {"dtype": "<f8", "shape": [3]} and reply.raw
        assert "ascii" not in reply.payload
        fresh = harness.client()
        value = fresh["ARR"].value
        assert isinstance(value, np.ndarray) and value.tolist() == [1.0, 2.5, -3.0]
        assert fresh["ARR"]["ascii"] == "1.0 2.5 -3.0"       # formatted when asked
        assert fresh["ARR"].read() == "1.0 2.5 -3.0"
        populated = harness.client(populate=True)          # one describe for all: no frames
        value = populated["ARR"].value
        assert isinstance(value, np.ndarray) and value.tolist() == [1.0, 2.5, -3.0]
        assert harness.dispatcher["ARR"].ascii == "1.0 2.5 -3.0"


def test_an_8_mb_double_array_under_the_default_limit() -> None:
    data = np.linspace(0.0, 1.0, 1_000_000)
    with ServiceHarness(_setup, "big") as harness:
        svc = harness.client(timeout=30)
        back = svc["ARR"].write(data, binary=True)
        assert np.array_equal(back, data)
        assert np.array_equal(harness.client(timeout=30)["ARR"].value, data)
        # As a list it is 19 MB of JSON: sent as the 8 MB raw frame instead.
        as_list = (data + 1).tolist()
        assert np.array_equal(svc["ARR"].write(as_list, binary=True), data + 1)


def test_a_16_mb_double_array_end_to_end() -> None:
    data = np.arange(2 * MiB, dtype=np.float64)              # 16 MiB of doubles
    limit = data.nbytes + 1024                             # "plus 1 KiB is plenty"
    with ServiceHarness(_setup, "big", config={"zmq": {"max-message-size": limit}}) as harness:
        watcher = harness.client(timeout=30)
        got: Dict[str, Any] = {}
        watcher["ARR"].callback(lambda kw: got.__setitem__("value", kw.value))
        watcher["ARR"].monitor()
        svc = harness.client(timeout=30)
        for i in range(3):
            value = data + i
            assert np.array_equal(svc["ARR"].write(value, binary=True), value)
            wait_until(lambda: isinstance(got.get("value"), np.ndarray)
                       and got["value"][0] == i, 30, message=f"broadcast {i}")
        assert np.array_equal(svc["ARR"].read(binary=True), data + 2)
        assert np.array_equal(harness.client(timeout=30)["ARR"].value, data + 2)
        assert watcher["ARR"].connected


def test_describe_of_every_keyword_fits_the_limit() -> None:
    limit = 256 * 1024

    def setup(svc: Any) -> None:
        _setup(svc)
        for name in ("A", "B", "C"):
            DFW.String(name, svc, initial=name.lower() * (limit * 2 // 5))   # 40 % each

    with ServiceHarness(setup, "big", config={"zmq": {"max-message-size": limit}}) as harness:
        harness.dispatcher["ARR"].set(np.arange(5000.0))        # above 4096 elements
        reply = _raw(harness, "describe", "")
        assert reply.status == "ok" and protocol.frames_size(
            protocol.encode_reply(reply)) <= limit
        descs = reply.payload["keywords"]
        assert set(descs) == {"TEXT", "ARR", "N", "A", "B", "C"}
        with_value = [name for name in "ABC" if "value" in descs[name]]
        assert len(with_value) == 2                     # one left out, the rest kept
        assert all(descs[name]["type"] == "string" for name in "ABC")
        assert "value" not in descs["ARR"] and descs["N"]["value"] == 0
        svc = harness.client(populate=True)
        missing = ({"A", "B", "C"} - set(with_value)).pop()
        assert svc[missing].value is None and svc[missing].read() == missing.lower() * (
            limit * 2 // 5)
        assert svc["ARR"].value is None
        assert np.array_equal(svc["ARR"].read(binary=True), np.arange(5000.0))
