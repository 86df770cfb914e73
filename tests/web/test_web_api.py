"""The HTTP gateway for real: a router, a dispatcher and ``cauldron-zmq web`` as processes."""
from __future__ import annotations

import asyncio
import signal
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("starlette", reason="the web extra (starlette) is not installed")
pytest.importorskip("uvicorn", reason="the web extra (uvicorn) is not installed")

from click.testing import CliRunner  # noqa: E402

from cauldron_zmq.cli import main  # noqa: E402
from cauldron_zmq.commands.web import parse_bind  # noqa: E402
from cauldron_zmq.testing import ServiceHarness, wait_until  # noqa: E402
from cauldron_zmq.web.gateway import Subscriber, loss_kind, write_argument  # noqa: E402
from cauldron_zmq.web.gateway import GatewayError  # noqa: E402
from cauldron_zmq.web.testing import (DEMO_KEYWORDS, EventStream, GatewayProcess,  # noqa: E402
                                      request)

NAMES = {"TEMP", "COUNT", "MODE", "LABEL", "SERIAL"}


def _harness(tmp_path_factory: Any) -> ServiceHarness:
    directory = tmp_path_factory.mktemp("web")
    keywords = directory / "demo.toml"
    keywords.write_text(DEMO_KEYWORDS)
    return ServiceHarness(keywords, service="demo", subprocess=True).start()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: Any) -> Iterator[ServiceHarness]:
    h = _harness(tmp_path_factory)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def gateway(harness: ServiceHarness) -> Iterator[GatewayProcess]:
    with GatewayProcess(harness.config_path, allow_writes=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def readonly_gateway(harness: ServiceHarness) -> Iterator[GatewayProcess]:
    with GatewayProcess(harness.config_path) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(harness: ServiceHarness) -> Any:
    return harness.client()


# ----------------------------------------------------------------- reading

def test_services_lists_every_dispatcher_with_its_state(gateway: GatewayProcess,
                                                        harness: ServiceHarness) -> None:
    status, body = request(gateway.base, "GET", "/api/services")
    assert status == 200
    [service] = [s for s in body["services"] if s["name"] == "demo"]
    [d] = service["dispatchers"]
    assert set(d) >= {"name", "state", "host", "dispatch_port", "broadcast_port",
                      "heartbeat_age"}
    assert d["state"] == "live" and d["host"] == "127.0.0.1"
    assert isinstance(d["dispatch_port"], int) and d["heartbeat_age"] >= 0


def test_service_describes_every_keyword(gateway: GatewayProcess) -> None:
    status, body = request(gateway.base, "GET", "/api/services/demo")
    assert status == 200 and body["name"] == "demo"
    keywords = {k["name"]: k for k in body["keywords"]}
    assert set(keywords) == NAMES
    temp = keywords["TEMP"]
    assert (temp["type"], temp["units"], temp["min"], temp["max"]) == (
        "KTL_DOUBLE", "degC", -50.0, 50.0)
    assert temp["readonly"] is False and temp["description"] == "Detector temperature"
    assert keywords["SERIAL"]["readonly"] is True
    assert keywords["SERIAL"]["value"] == "CZ-0042" == keywords["SERIAL"]["ascii"]
    assert keywords["MODE"]["enumerators"] == ["OFF", "STANDBY", "ON"]


def test_keyword_names_are_case_insensitive(gateway: GatewayProcess) -> None:
    status, body = request(gateway.base, "GET", "/api/services/DEMO/keywords/serial")
    assert status == 200
    assert body["name"] == "SERIAL" and body["value"] == "CZ-0042"
    assert set(body) >= {"name", "value", "ascii", "timestamp", "type", "units"}


@pytest.mark.parametrize("path, code", [
    ("/api/services/nosuch", "not-found"),
    ("/api/services/nosuch/keywords/TEMP", "not-found"),
    ("/api/services/demo/keywords/NOSUCH", "unknown-keyword"),
    ("/api/nothing/here", "not-found"),
])
def test_unknown_names_are_404_with_a_code(gateway: GatewayProcess, path: str,
                                           code: str) -> None:
    status, body = request(gateway.base, "GET", path)
    assert status == 404
    assert body["error"] == code and body["message"]


# ----------------------------------------------------------------- writing

def test_put_native_and_ascii_reach_the_dispatcher(gateway: GatewayProcess, client: Any) -> None:
    status, body = request(gateway.base, "PUT", "/api/services/demo/keywords/temp",
                           {"value": 12.25})
    assert status == 200 and body["value"] == 12.25 and body["ascii"] == "12.25"
    assert client["TEMP"].read() == "12.25"
    status, body = request(gateway.base, "PUT", "/api/services/demo/keywords/MODE",
                           {"ascii": "ON"})
    assert status == 200 and (body["value"], body["ascii"]) == (2, "ON")
    assert client["MODE"].read() == "ON"


@pytest.mark.parametrize("keyword, body, status, code", [
    ("TEMP", {"value": 999}, 400, "invalid-value"),
    ("TEMP", {"ascii": "warm"}, 400, "invalid-value"),
    ("TEMP", {"nothing": 1}, 400, "bad-request"),
    ("TEMP", b"{not json", 400, "bad-json"),
    ("SERIAL", {"ascii": "X"}, 403, "read-only"),
    ("NOSUCH", {"ascii": "X"}, 404, "unknown-keyword"),
])
def test_refusals_keep_the_error_codes(gateway: GatewayProcess, client: Any, keyword: str,
                                       body: Any, status: int, code: str) -> None:
    before = client["TEMP"].read()
    got_status, got = request(gateway.base, "PUT", f"/api/services/demo/keywords/{keyword}",
                              body)
    assert (got_status, got["error"]) == (status, code), got
    assert got["message"]
    assert client["TEMP"].read() == before


def test_writes_are_refused_unless_allowed(readonly_gateway: GatewayProcess,
                                           client: Any) -> None:
    before = client["COUNT"].read()
    status, body = request(readonly_gateway.base, "PUT", "/api/services/demo/keywords/COUNT",
                           {"value": 99})
    assert status == 403 and body["error"] == "not-allowed"
    assert "--allow-writes" in body["message"]
    assert client["COUNT"].read() == before
    status, body = request(readonly_gateway.base, "PUT", "/api/services/demo/keywords/NOSUCH",
                           {"value": 99})
    assert (status, body["error"]) == (404, "unknown-keyword")     # names first


# ------------------------------------------------------------------ events

def test_events_start_with_every_value_then_follow_updates(gateway: GatewayProcess,
                                                           client: Any) -> None:
    with EventStream(gateway.base, "/api/services/demo/events") as events:
        assert events.status == 200
        first = [events.next() for _ in NAMES]
        assert {e["name"] for e in first} == NAMES
        assert all(e["type"] == "value" and {"value", "ascii", "timestamp", "seq"} <= set(e)
                   for e in first)
        client["COUNT"].write(41)
        seen = events.until(lambda e: e.get("name") == "COUNT" and e["value"] == 41)
        assert seen[-1]["ascii"] == "41" and isinstance(seen[-1]["seq"], int)
        assert request(gateway.base, "GET", "/api/services/demo")[1]["subscribers"] >= 1
    # A subscriber that goes away is forgotten (nothing grows with abandoned streams).
    wait_until(lambda: request(gateway.base, "GET", "/api/services/demo")[1]["subscribers"] == 0,
               10, 0.05, "the closed stream forgotten")


def test_events_of_an_unknown_service_are_404(gateway: GatewayProcess) -> None:
    status, body = request(gateway.base, "GET", "/api/services/nosuch/events")
    assert status == 404 and body["error"] == "not-found"


@pytest.fixture()
def own_harness(tmp_path_factory: Any) -> Iterator[ServiceHarness]:
    h = _harness(tmp_path_factory)
    try:
        yield h
    finally:
        h.close()


def test_a_restart_is_an_event_followed_by_fresh_values(own_harness: ServiceHarness) -> None:
    with GatewayProcess(own_harness.config_path, allow_writes=True) as gw, \
            EventStream(gw.base, "/api/services/demo/events", timeout=20) as events:
        for _ in NAMES:
            events.next()
        own_harness.kill_dispatcher()
        events.until(lambda e: e.get("name") == "TEMP" and e.get("connected") is False,
                     timeout=10)
        status, body = request(gw.base, "PUT", "/api/services/demo/keywords/COUNT",
                               {"value": 1})
        assert (status, body["error"]) == (502, "dispatcher-down")
        own_harness.start_dispatcher()
        seen = events.until(lambda e: e["type"] == "restart", timeout=15)
        assert seen[-1]["event"] == "restart" and seen[-1]["reason"]
        after = events.until(lambda e: e["type"] == "value" and e["name"] == "SERIAL", timeout=10)
        assert after[-1]["connected"] is True and after[-1]["value"] == "CZ-0042"


def test_a_silent_dispatcher_is_a_timeout_or_down(own_harness: ServiceHarness) -> None:
    with GatewayProcess(own_harness.config_path, allow_writes=True) as gw:
        assert request(gw.base, "GET", "/api/services/demo")[0] == 200
        own_harness.signal_dispatcher(signal.SIGSTOP)
        try:
            status, body = request(gw.base, "PUT", "/api/services/demo/keywords/COUNT",
                                   {"value": 3})
            # Timed out (504) if the write left before the client noticed the
            # silence, else refused at once as down (502): never a hang or a 500.
            assert (status, body["error"]) in {(504, "timeout"), (502, "dispatcher-down")}
            wait_until(lambda: request(gw.base, "GET", "/api/services/demo")[1]["alive"]
                       is False, 10, 0.05, "the service shown down")
            status, body = request(gw.base, "GET", "/api/services/demo/keywords/COUNT")
            assert (status, body["error"]) == (502, "dispatcher-down")
        finally:
            own_harness.signal_dispatcher(signal.SIGCONT)


# ------------------------------------------------------------- pure parts

def test_a_slow_subscriber_gets_a_gap_then_fresh_values() -> None:
    fresh = [{"type": "value", "name": "A", "value": 9}, {"type": "value", "name": "B",
                                                          "value": 8}]

    async def scenario() -> List[Dict[str, Any]]:
        sub = Subscriber(maxsize=4)
        for i in range(10):          # nobody reads: the queue overflows
            sub.offer({"type": "value", "name": "A", "value": i}, lambda: fresh)
        assert sub.queue.qsize() <= 4 and sub.gaps >= 1
        return [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]

    events = asyncio.run(scenario())
    gap = max(i for i, e in enumerate(events) if e["type"] == "gap")
    assert events[gap + 1:gap + 3] == fresh


@pytest.mark.parametrize("why, restarted, was_down, kind", [
    ("dispatcher restarted", True, False, "restart"),
    ("lost broadcasts (gseq 4 -> 9)", False, False, "gap"),
    ("first heartbeat since connecting", False, True, "gap"),
    ("first heartbeat since connecting", False, False, None),
    ("broadcast socket connected", False, False, None),
])
def test_loss_kind(why: str, restarted: bool, was_down: bool, kind: Any) -> None:
    assert loss_kind(why, restarted, was_down) == kind


@pytest.mark.parametrize("body, expected", [
    ({"value": 5}, 5), ({"ascii": "5"}, "5"), ({"value": [1, 2.5]}, "1 2.5"),
])
def test_write_argument(body: Any, expected: Any) -> None:
    assert write_argument(body) == expected


@pytest.mark.parametrize("body", [[], {"value": 1, "ascii": "1"}, {"ascii": 5}, {"value": None},
                                  {"value": {"a": 1}}, {"value": ["x"]}])
def test_write_argument_refuses(body: Any) -> None:
    with pytest.raises(GatewayError) as info:
        write_argument(body)
    assert info.value.status == 400


# ------------------------------------------------------------- the command

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:9000", ("::1", 9000)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
])
def test_parse_bind(text: str, expected: Any) -> None:
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:port", "host:0", "host:70000"])
def test_a_bad_bind_is_a_clear_error(text: str) -> None:
    result = CliRunner().invoke(main, ["web", "--bind", text])
    assert result.exit_code == 1
    assert "--bind" in result.output and "Traceback" not in result.output


def test_without_the_extra_the_command_says_what_to_install(monkeypatch: Any) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "uvicorn", None)     # import uvicorn -> ModuleNotFoundError
    result = CliRunner().invoke(main, ["web"])
    assert result.exit_code == 1
    assert "pip install 'cauldron_zmq[web]'" in result.output


def test_a_silent_router_is_a_timeout_and_the_page_says_so(own_harness: ServiceHarness) -> None:
    with GatewayProcess(own_harness.config_path) as gw:
        assert request(gw.base, "GET", "/api/services")[0] == 200
        own_harness.stop_router()
        status, body = request(gw.base, "GET", "/api/services")
        assert (status, body["error"]) == (504, "timeout")
        assert "router" in body["message"]
        status, page = request(gw.base, "GET", "/")
        assert status == 200 and 'id="router-state">down<' in page


def test_a_port_in_use_is_a_clear_error(tmp_path: Any) -> None:
    import socket
    import subprocess
    import sys
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cauldron_zmq", "web", "--bind",
                                 f"127.0.0.1:{port}"], capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert f"could not serve on 127.0.0.1:{port}" in result.stderr
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr


def test_the_client_tells_loss_listeners_on_its_callback_thread(
        own_harness: ServiceHarness) -> None:
    import threading
    calls: List[Any] = []
    svc = own_harness.client()
    temp = svc["TEMP"]
    temp.monitor()
    svc.add_loss_listener(lambda why, restarted: calls.append(
        (why, restarted, threading.current_thread().name)))
    own_harness.signal_dispatcher(signal.SIGSTOP)          # silent, then back:
    wait_until(lambda: not temp["connected"], 10, 0.02, "TEMP disconnected")
    own_harness.signal_dispatcher(signal.SIGCONT)          # a re-sync, not a restart
    wait_until(lambda: calls, 10, 0.02, "a loss listener call")
    assert all(not restarted for _, restarted, _ in calls)
    assert all(name.endswith(".callbacks") for _, _, name in calls)
    own_harness.kill_dispatcher()
    own_harness.start_dispatcher()
    wait_until(lambda: any(restarted for _, restarted, _ in calls), 15, 0.02,
               "a restart told")
    with pytest.raises(TypeError):
        svc.add_loss_listener("not callable")   # type: ignore[arg-type]
