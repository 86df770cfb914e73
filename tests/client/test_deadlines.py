"""Time, as an operator meets it (issue 11 items 1, 2, 3, 5, 7; issue 10 item 10).

A timeout is a deadline for the whole call; a request to a dispatcher that
went silent fails as soon as that is known; a slow write the dispatcher is
working on is not cut short by the default timeout.  Durations are checked
against the deadline with generous margins, never as benchmarks.
"""
from __future__ import annotations

import io
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from click.testing import CliRunner

from cauldron_zmq import DFW, ktl
from cauldron_zmq.client import Task, deadline
from cauldron_zmq.commands.progress import status_line, write_showing_progress
from cauldron_zmq.commands.tools import show
from cauldron_zmq.errors import (DispatcherDown, DispatcherSilent, ServiceNotFound,
                                 TimeoutError)
from cauldron_zmq.keywordfile import read_keyword_file
from cauldron_zmq.testing import ServiceHarness, wait_until

pytestmark = pytest.mark.usefixtures("no_client_threads_left")

MARGIN = 1.0          # s of slack for a loaded machine, on top of every deadline

KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = 3
"""


@pytest.fixture
def keyword_file(tmp_path: Path) -> Path:
    path = tmp_path / "dtest.toml"
    path.write_text(KEYWORDS, encoding="utf-8")
    return path


# ------------------------------------------------------------- item 1: deadlines

def test_service_wait_ends_at_its_deadline_with_the_router_down() -> None:
    """ktl.Service('x', wait=3) took 7 s (a 2 s router timeout per attempt, attempts
    not cut to what was left) and then said "after waiting 3 s"."""
    with ServiceHarness(None, "nobody", config={"zmq-router": {"timeout": 2000}}) as h:
        h.stop_dispatcher()
        h.stop_router()
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            ktl.Service("x", config=h.config, wait=3)
        waited = time.monotonic() - start
    assert waited < 3 + MARGIN
    assert "of waiting up to 3 s" in str(info.value)
    assert "router" in str(info.value)


def test_service_timeout_bounds_the_constructor_with_the_router_down() -> None:
    with ServiceHarness(None, "nobody", config={"zmq-router": {"timeout": 3000}}) as h:
        h.stop_dispatcher()
        h.stop_router()
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            ktl.Service("x", config=h.config, timeout=0.5)
        assert time.monotonic() - start < 0.5 + MARGIN
    assert "gave up after" in str(info.value)


def test_one_deadline_for_service_describe_and_read(keyword_file: Path) -> None:
    """show -t 1 against a stopped dispatcher: look-up, list, describe and read
    together end within the one second (it took 2.5 s)."""
    with ServiceHarness(keyword_file, "dtest", subprocess=True) as h:
        h.signal_dispatcher(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                with deadline(1.0):
                    with ktl.Service("dtest", config=h.config) as svc:
                        svc["COUNT"].read()
            assert time.monotonic() - start < 1.0 + MARGIN
            assert "the deadline was 1 s" in str(info.value)
        finally:
            h.signal_dispatcher(signal.SIGCONT)


def test_show_with_a_timeout_ends_in_time(keyword_file: Path) -> None:
    with ServiceHarness(keyword_file, "dtest", subprocess=True) as h:
        h.signal_dispatcher(signal.SIGSTOP)
        try:
            start = time.monotonic()
            result = CliRunner().invoke(show, ["-s", "dtest", "-t", "1", "COUNT",
                                               "-c", str(h.config_path)])
            assert time.monotonic() - start < 1.0 + MARGIN
        finally:
            h.signal_dispatcher(signal.SIGCONT)
    assert result.exit_code == 1
    assert "gave up after" in result.output


def test_deadline_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        with deadline(0):
            pass


def test_task_get_names_the_timeout_asked_for() -> None:
    """The message said 'within 2 s' (the grace period) whatever the caller asked."""
    task = Task("a test task", deadline=time.monotonic() + 0.3)
    with pytest.raises(TimeoutError) as info:
        task.get()                        # nothing completes it: gives up after the grace
    message = str(info.value)
    assert "not complete within 0.3 s" in message
    waited = float(re.search(r"gave up after waiting ([0-9.]+) s", message).group(1))
    assert 2.3 <= waited < 2.3 + MARGIN           # the 0.3 s asked for, plus the grace


# -------------------------------------------------- item 2: a dispatcher goes silent

def test_request_in_flight_fails_when_the_dispatcher_goes_silent(keyword_file: Path) -> None:
    """modify -t 30, then the dispatcher stops answering: the write failed only after
    30 s; now it fails at liveness expiry (1 s here) with its own error."""
    with ServiceHarness(keyword_file, "dtest", subprocess=True) as h:
        svc = h.client()
        count = svc["COUNT"]
        h.signal_dispatcher(signal.SIGSTOP)
        try:
            start = time.monotonic()
            task = count.write(5, wait=False, timeout=30)
            with pytest.raises(DispatcherSilent) as info:
                task.get()
            waited = time.monotonic() - start
            liveness = h.config.zmq.liveness
            assert waited < liveness + MARGIN
            message = str(info.value)
            assert "went silent" in message and "nothing heard since" in message
            assert "dtest.COUNT" in message
            assert isinstance(info.value, TimeoutError)       # except TimeoutError still works
            later = count.write(6, wait=False, timeout=10)    # sent while it is down: kept
        finally:
            h.signal_dispatcher(signal.SIGCONT)
        assert later.get() == "6"


# ------------------------------------------------------------ item 3: slow writes

MOVES: List[float] = []


def _move(value: Any) -> None:
    time.sleep(1.2)                        # longer than the 0.5 s service timeout
    MOVES.append(float(value))


def slow_setup(svc: Any) -> None:
    DFW.Double("FOCUS", svc, initial=0.0, write=_move, progress="FOCUSPROG")
    DFW.Double("BOUNDED", svc, initial=0.0, write=_move, timeout=0.6)
    DFW.String("FOCUSPROG", svc, initial="42 %")


@pytest.fixture(scope="module")
def slow() -> Iterator[ServiceHarness]:
    with ServiceHarness(slow_setup, "slow", config={"zmq": {"timeout": 500}}) as h:
        yield h


def _client(h: ServiceHarness, **kwargs: Any) -> ktl.Service:
    return ktl.Service(h.service, config=h.config, **kwargs)


def test_an_acknowledged_write_waits_while_the_dispatcher_works(slow: ServiceHarness) -> None:
    with _client(slow) as svc:
        assert svc["FOCUS"].write(3.5) == "3.5"        # 1.2 s, past the 0.5 s default
    assert MOVES[-1] == 3.5




def test_an_explicit_deadline_still_bounds_a_slow_write(slow: ServiceHarness) -> None:
    with _client(slow) as svc:
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            svc["FOCUS"].write(1.0, timeout=0.4)
        assert time.monotonic() - start < 0.4 + MARGIN
    assert "acknowledged" in str(info.value) and "0.4 s" in str(info.value)
    assert not isinstance(info.value, DispatcherSilent)   # slow, not silent
    with _client(slow, timeout=0.4) as svc:
        with pytest.raises(TimeoutError):
            svc["FOCUS"].write(2.0)                       # Service(timeout=) is explicit too


def test_a_keyword_declares_its_own_timeout(slow: ServiceHarness) -> None:
    with _client(slow) as svc:
        start = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            svc["BOUNDED"].write(1.0)
        assert 0.5 < time.monotonic() - start < 0.6 + MARGIN
    assert "0.6 s" in str(info.value)
    desc = slow.dispatcher["BOUNDED"].describe()
    assert desc["timeout"] == 0.6
    assert slow.dispatcher["FOCUS"].describe()["progress"] == "FOCUSPROG"


def test_keyword_file_timeout_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "k.toml"
    path.write_text('[keyword.MOVE]\ntype = "double"\ntimeout = 30\nprogress = "PROG"\n'
                    '[keyword.PROG]\ntype = "string"\n', encoding="utf-8")
    spec = {s.name: s for s in read_keyword_file(path)}["MOVE"]
    assert spec.timeout == 30.0 and spec.progress == "PROG"
    path.write_text('[keyword.MOVE]\ntype = "double"\ntimeout = -1\n', encoding="utf-8")
    with pytest.raises(ValueError, match="timeout"):
        read_keyword_file(path)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_modify_shows_a_slow_write_in_progress(slow: ServiceHarness) -> None:
    screen = _Terminal()
    quiet = io.StringIO()                           # not a terminal: nothing shown
    with _client(slow) as svc:
        assert write_showing_progress(svc, svc["FOCUS"], "4.5", stream=screen) == "4.5"
        assert write_showing_progress(svc, svc["FOCUS"], "5.5", stream=quiet) == "5.5"
    shown = screen.getvalue()
    assert "FOCUS: waiting" in shown and "FOCUSPROG = 42 %" in shown
    assert shown.endswith("\r")                     # the status line is cleared
    assert quiet.getvalue() == ""


def test_status_line() -> None:
    assert status_line("FOCUS", 3.21) == "FOCUS: waiting 3.2 s"
    assert status_line("FOCUS", 1, "PROG", "45 %") == "FOCUS: waiting 1.0 s (PROG = 45 %)"


# ------------------------------------------- items 5 and 7: say what is really wrong

def _camera(svc: Any) -> None:
    DFW.Boolean("SHUTTER", svc, initial=False)


def test_a_keyword_of_a_down_dispatcher_is_not_called_nonexistent() -> None:
    with ServiceHarness(lambda s: DFW.Integer("GRATING", s, initial=1), "spec",
                        dispatcher="grating") as h:
        camera = DFW.Service("spec", config=h.config, setup=_camera,
                             dispatcher="camera").begin()
        camera.shutdown()                              # unregisters: the book says down
        svc = h.client()
        assert svc["GRATING"].read() == "1"
        with pytest.raises(DispatcherDown) as info:
            svc["SHUTTER"]
        message = str(info.value)
        assert "SHUTTER is served by dispatcher 'camera', which is down (last heard" in message
        assert "s ago)" in message
        with pytest.raises(KeyError, match="no keyword 'NOSUCH'"):
            svc["NOSUCH"]                              # a real unknown keyword stays one


def test_a_misspelt_service_name_gets_a_suggestion() -> None:
    with ServiceHarness(lambda s: DFW.Integer("X", s, initial=1), "focus") as h:
        with pytest.raises(ServiceNotFound) as info:
            ktl.Service("fokus", config=h.config)
    assert "did you mean 'focus'?" in str(info.value)


def test_a_keyword_of_a_silent_dispatcher_says_so(keyword_file: Path) -> None:
    """Registered (the router still lists it live) but silent to this client."""
    with ServiceHarness(keyword_file, "dtest", subprocess=True) as h:
        with ktl.Service("dtest", config=h.config, timeout=1.0) as svc:
            engine = svc._engine
            wait_until(lambda: engine.call(lambda: all(link.started is not None
                                                       for link in engine.links.values())),
                       5, message="a heartbeat")
            h.signal_dispatcher(signal.SIGSTOP)
            try:
                wait_until(lambda: not svc.isAlive(), 5, message="liveness expired")
                with pytest.raises(DispatcherDown) as info:
                    svc["COUNT"]
            finally:
                h.signal_dispatcher(signal.SIGCONT)
    assert "dtest.COUNT is served by dispatcher" in str(info.value)
    assert "which is down (last heard" in str(info.value)


def test_the_binding_deadline_is_the_one_a_timeout_names() -> None:
    """An inner block cut short by an outer one leaves the message to the outer."""
    from cauldron_zmq.client import deadline
    from cauldron_zmq.errors import TimeoutError as CzTimeout
    with pytest.raises(CzTimeout) as info:
        with deadline(1):
            with deadline(5):          # cut to what is left of the outer second
                raise CzTimeout("no answer")
    assert str(info.value).count("the deadline was") == 1
    assert "the deadline was 1 s" in str(info.value)
    with pytest.raises(CzTimeout) as info:
        with deadline(5):
            with deadline(1):          # the inner second is the binding one
                raise CzTimeout("no answer")
    assert str(info.value).count("the deadline was") == 1
    assert "the deadline was 1 s" in str(info.value)
