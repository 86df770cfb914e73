"""The serving loop apart from its launchers: :class:`~cauldron_zmq.router.serving.Server`
on a socket bound by :func:`~cauldron_zmq.router.serving.bind`, in a plain
thread of the test's own (no :class:`~cauldron_zmq.router.Router`), on real
loopback sockets."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, List

import pytest
import zmq

from cauldron_zmq.config import Config, config_from_mapping
from cauldron_zmq.router import RouterBindError, RouterClient
from cauldron_zmq.router.serving import Server, bind
from cauldron_zmq.router.state import StateFile
from cauldron_zmq.testing import free_port, free_ports

pytestmark = pytest.mark.timeout(60)


def config(tmp_path: Any) -> Config:
    first = free_ports(4, consecutive=True)[0]
    port = free_port()
    while first <= port < first + 4:
        port = free_port()
    return config_from_mapping({"zmq": {"host": "127.0.0.1"}, "zmq-router": {
        "host": "127.0.0.1", "port": port, "first-port": first, "last-port": first + 3,
        "timeout": 2000, "state-file": str(tmp_path / "book.json")}})


class Serving:
    """A Server in a thread of its own: the socket is bound, used and closed there."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.context = zmq.Context()
        self.stop = threading.Event()
        self.bound = threading.Event()
        self.state = StateFile(cfg.router.state_file)
        self.outcome: List[Any] = []
        self.thread = threading.Thread(target=self._run, name="test serving")

    def _run(self) -> None:
        try:
            sock = bind(self.context, self.cfg)
        except BaseException as exc:   # noqa: BLE001 - the test looks at it
            self.outcome.append(exc)
            self.bound.set()
            return
        server = Server(self.cfg, self.state.load(self.cfg), self.state)
        self.bound.set()
        try:
            self.outcome.append(server.run(sock, self.stop))
        finally:
            self.state.save(server.book, final=True)
            sock.close(linger=0)

    def __enter__(self) -> "Serving":
        self.thread.start()
        assert self.bound.wait(10)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop.set()
        self.thread.join(10)
        self.context.term()
        assert not self.thread.is_alive()


@pytest.fixture
def cfg(tmp_path: Any) -> Config:
    return config(tmp_path)


def test_a_server_serves_in_any_thread_until_stopped(cfg: Config) -> None:
    with Serving(cfg) as serving, RouterClient(cfg) as client:
        ports = client.register("svc", "d1", "127.0.0.1", keywords=["K"])
        assert ports["dispatch_port"] == cfg.router.first_port
        found = client.lookup("svc")["dispatchers"]
        assert [e["dispatcher"] for e in found] == ["d1"]
    assert serving.outcome == [False]           # stopped, not shut down
    saved = json.loads(Path(str(cfg.router.state_file)).read_text(encoding="utf-8"))
    assert [e["service"] for e in saved["entries"]] == ["svc"]


def test_a_shutdown_request_ends_the_loop_with_true(cfg: Config) -> None:
    with Serving(cfg) as serving, RouterClient(cfg) as client:
        assert client.shutdown() == {}
        serving.thread.join(10)
        assert serving.outcome == [True]


def test_bind_names_an_address_in_use(cfg: Config) -> None:
    with Serving(cfg), Serving(cfg) as second:
        pass
    assert isinstance(second.outcome[0], RouterBindError)
    assert f"cannot bind tcp://127.0.0.1:{cfg.router.port}" in str(second.outcome[0])
