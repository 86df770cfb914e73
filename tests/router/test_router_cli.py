"""The router's programs as real processes: ``Cauldron-router-zmq``,
``python -m cauldron_zmq.router`` and ``cauldron-zmq services``, with a real
TOML file, SIGTERM, SIGKILL and a restart."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import zmq
from click.testing import CliRunner

from cauldron_zmq import __version__
from cauldron_zmq.commands.router import format_age, format_table, services
from cauldron_zmq.config import load_config
from cauldron_zmq.errors import TimeoutError
from cauldron_zmq.router import RouterClient
from cauldron_zmq.testing import free_port, free_ports

BIN = Path(sys.executable).parent
ROUTER = [str(BIN / "Cauldron-router-zmq")]
ROUTER_MODULE = [sys.executable, "-m", "cauldron_zmq.router"]
CAULDRON = [str(BIN / "cauldron-zmq")]
ROUTER_LOWER = CAULDRON + ["router"]                  # the lower-case command family


# ============================================================================ helpers

def free_block(n: int) -> int:
    """The first port of ``n`` consecutive free ports."""
    return free_ports(n, consecutive=True)[0]


def write_config(tmp_path: Path, pairs: int = 8, **extra: Any) -> Path:
    """A TOML file: router port, range and state file in tmp_path."""
    first = free_block(2 * pairs)
    port = free_port()
    while first <= port < first + 2 * pairs:
        port = free_port()
    lines = ["[zmq]", 'host = "127.0.0.1"', "", "[zmq-router]", 'host = "127.0.0.1"',
             f"port = {port}", f"first-port = {first}", f"last-port = {first + 2 * pairs - 1}",
             f'state-file = "{tmp_path / "book.json"}"', "timeout = 2000"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "router.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def env() -> Dict[str, str]:
    e = dict(os.environ)
    e.pop("CAULDRON_ZMQ_CONFIG", None)
    return e


class Proc:
    """A router process; always reaped, stderr collected."""

    def __init__(self, argv: List[str]) -> None:
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=env())
        self.stderr = ""

    def wait_ready(self, config: Path, ctx: zmq.Context, timeout: float = 10.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        with RouterClient(load_config(str(config)), timeout=100, context=ctx) as client:
            while time.monotonic() < deadline:
                assert self.popen.poll() is None, self.finish()
                try:
                    pong = client.ping()
                except TimeoutError:
                    continue
                if pong["pid"] == self.popen.pid:
                    return pong
        raise AssertionError("router process not ready")

    def signal(self, sig: int) -> int:
        self.popen.send_signal(sig)
        return self.finish()

    def finish(self, timeout: float = 10.0) -> int:
        try:
            _, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        self.stderr += err.decode()
        return self.popen.returncode


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


@pytest.fixture
def procs() -> Iterator[List[Proc]]:
    started: List[Proc] = []
    try:
        yield started
    finally:
        for p in started:
            if p.popen.poll() is None:
                p.popen.kill()
            p.finish()


def start(procs: List[Proc], argv: List[str]) -> Proc:
    p = Proc(argv)
    procs.append(p)
    return p


def stable(entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in ("age", "last_heartbeat", "state")}
            for e in entries]


# ============================================================================ router program

@pytest.mark.parametrize("argv", [ROUTER, ROUTER_MODULE, ROUTER_LOWER],
                         ids=["script", "module", "cauldron-zmq-router"])
def test_router_starts_answers_and_stops_on_sigterm(tmp_path: Path, ctx: zmq.Context,
                                                    procs: List[Proc], argv: List[str]) -> None:
    config = write_config(tmp_path)
    proc = start(procs, argv + ["-c", str(config), "-v"])
    proc.wait_ready(config, ctx)
    cfg = load_config(str(config))
    with RouterClient(cfg, context=ctx) as client:
        reg = client.register("svc", "disp", "127.0.0.1")
        assert reg["dispatch_port"] == cfg.router.first_port
    assert proc.signal(signal.SIGTERM) == 0
    assert f"listening on tcp://127.0.0.1:{cfg.router.port}" in proc.stderr
    assert "registered svc/disp" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "book.json").read_text())["entries"][0]["dispatcher"] == "disp"


def test_sigint_also_saves_and_exits_zero(tmp_path: Path, ctx: zmq.Context,
                                          procs: List[Proc]) -> None:
    config = write_config(tmp_path)
    proc = start(procs, ROUTER + ["-c", str(config)])
    proc.wait_ready(config, ctx)
    assert proc.signal(signal.SIGINT) == 0
    assert (tmp_path / "book.json").exists() and "Traceback" not in proc.stderr


def test_sigkill_and_restart_keeps_every_assignment(tmp_path: Path, ctx: zmq.Context,
                                                    procs: List[Proc]) -> None:
    config = write_config(tmp_path)
    cfg = load_config(str(config))
    proc = start(procs, ROUTER + ["-c", str(config)])
    proc.wait_ready(config, ctx)
    with RouterClient(cfg, context=ctx) as client:
        for i in range(6):
            client.register(f"svc{i % 3}", f"d{i}", "127.0.0.1", keywords=[f"K{i}"])
        client.unregister("svc2", "d5")
        before = {f"svc{i}": client.lookup(f"svc{i}")["dispatchers"] for i in range(3)}
        book_before = client.list()["entries"]
    proc.popen.kill()
    assert proc.finish() == -signal.SIGKILL
    proc = start(procs, ROUTER + ["-c", str(config)])
    proc.wait_ready(config, ctx)
    with RouterClient(cfg, context=ctx) as client:
        after = {f"svc{i}": client.lookup(f"svc{i}")["dispatchers"] for i in range(3)}
        assert {k: stable(v) for k, v in after.items()} == {k: stable(v) for k, v in before.items()}
        assert stable(client.list()["entries"]) == stable(book_before)
        assert all(e["state"] == "live" for e in after["svc0"])          # fresh grace period
        d5 = [e for e in book_before if e["dispatcher"] == "d5"][0]
        again = client.register("svc2", "d5", "127.0.0.1")
        assert (again["dispatch_port"], again["broadcast_port"]) == \
            (d5["dispatch_port"], d5["broadcast_port"])
    assert proc.signal(signal.SIGTERM) == 0


def test_corrupt_state_file_is_reported_and_moved_aside(tmp_path: Path, ctx: zmq.Context,
                                                        procs: List[Proc]) -> None:
    config = write_config(tmp_path)
    (tmp_path / "book.json").write_bytes(b"\x00\xffnot json")
    proc = start(procs, ROUTER + ["-c", str(config)])
    proc.wait_ready(config, ctx)
    with RouterClient(load_config(str(config)), context=ctx) as client:
        assert client.list()["entries"] == []
    assert proc.signal(signal.SIGTERM) == 0
    aside = sorted(tmp_path.glob("book.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"\x00\xffnot json"
    assert "ERROR" in proc.stderr and aside[0].name in proc.stderr
    assert json.loads((tmp_path / "book.json").read_text())["entries"] == []


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = load_config(str(config)).router.port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        done = subprocess.run(ROUTER + ["-c", str(config)], capture_output=True, env=env(),
                              timeout=30)
    assert done.returncode == 1
    assert done.stderr.decode() == (f"Cauldron-router-zmq: cannot bind tcp://127.0.0.1:{port}: "
                                    "Address already in use\n")
    assert not (tmp_path / "book.json").exists()


@pytest.mark.parametrize("body", ['[zmq-router]\nport = "abc"\n', "[zmq-router\n"])
def test_bad_config_is_one_line_and_exit_1(tmp_path: Path, body: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    for argv in (ROUTER + ["-c", str(path)], ROUTER + ["-c", str(tmp_path / "missing.toml")]):
        done = subprocess.run(argv, capture_output=True, env=env(), timeout=30)
        err = done.stderr.decode()
        assert done.returncode == 1
        assert err.startswith("Cauldron-router-zmq: ") and err.count("\n") == 1, err


def test_cauldron_zmq_router_takes_v_and_c_before_it_too(tmp_path: Path, ctx: zmq.Context,
                                                        procs: List[Proc]) -> None:
    config = write_config(tmp_path)
    proc = start(procs, CAULDRON + ["-v", "-c", str(config), "router"])
    proc.wait_ready(config, ctx)
    with RouterClient(load_config(str(config)), context=ctx) as client:
        client.register("svc", "disp", "127.0.0.1")
    assert proc.signal(signal.SIGTERM) == 0
    assert "registered svc/disp" in proc.stderr                     # -v reached the router


def test_cauldron_zmq_router_port_in_use(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    port = load_config(str(config)).router.port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        done = subprocess.run(ROUTER_LOWER + ["-c", str(config)], capture_output=True,
                              env=env(), timeout=30)
    assert done.returncode == 1 and done.stderr.decode().count("\n") == 1
    assert "cannot bind" in done.stderr.decode()


def test_version() -> None:
    done = subprocess.run(ROUTER + ["--version"], capture_output=True, env=env(), timeout=30)
    assert done.returncode == 0
    assert done.stdout.decode().strip() == f"Cauldron-router-zmq, version {__version__}"


# ============================================================================ services

def test_services_command_as_a_process(tmp_path: Path, ctx: zmq.Context,
                                       procs: List[Proc]) -> None:
    config = write_config(tmp_path)
    cfg = load_config(str(config))
    proc = start(procs, ROUTER + ["-c", str(config)])
    proc.wait_ready(config, ctx)
    with RouterClient(cfg, context=ctx) as client:
        client.register("svc", "disp", "127.0.0.1")
    done = subprocess.run(CAULDRON + ["services", "-c", str(config)], capture_output=True,
                          env=env(), timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[0].split() == ["SERVICE", "DISPATCHER", "HOST", "DISPATCH", "BROADCAST",
                                "STATE", "AGE"]
    assert lines[1].split()[:6] == ["svc", "disp", "127.0.0.1", str(cfg.router.first_port),
                                    str(cfg.router.first_port + 1), "live"]
    assert proc.signal(signal.SIGTERM) == 0


def test_services_json_and_empty_table(tmp_path: Path, ctx: zmq.Context,
                                       procs: List[Proc]) -> None:
    config = write_config(tmp_path)
    cfg = load_config(str(config))
    proc = start(procs, ROUTER_MODULE + ["-c", str(config)])
    proc.wait_ready(config, ctx)
    runner = CliRunner()
    empty = runner.invoke(services, ["-c", str(config), "-v"])
    assert empty.exit_code == 0 and "no dispatchers registered" in empty.output
    with RouterClient(cfg, context=ctx) as client:
        client.register("svc", "a", "127.0.0.1", keywords=["X"])
        client.register("svc", "b", "127.0.0.1")
        client.unregister("svc", "b")
        client.register("svc", "c", "127.0.0.1", avoid=[cfg.router.last_port])
    table = runner.invoke(services, ["-c", str(config)])
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[-1] == (       # retried, not blocked for good
        "blocked ports (a dispatcher could not bind them; tried again after a back-off, "
        f"or 'cauldron-zmq unblock'): {cfg.router.last_port}")
    result = runner.invoke(services, ["-c", str(config), "--json", "-t", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["router"] == cfg.router_address()
    assert (data["first_port"], data["last_port"]) == (cfg.router.first_port, cfg.router.last_port)
    assert [(e["dispatcher"], e["state"], e["keywords"]) for e in data["entries"]] == \
        [("a", "live", ["X"]), ("b", "down", []), ("c", "live", [])]
    assert data["blocked"] == [cfg.router.last_port]
    assert proc.signal(signal.SIGTERM) == 0


def test_services_without_a_router_fails_in_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    started = time.monotonic()
    done = subprocess.run(CAULDRON + ["services", "-c", str(config), "-t", "0.3"],
                          capture_output=True, env=env(), timeout=30)
    port = load_config(str(config)).router.port
    assert done.returncode == 1 and done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("cauldron-zmq services: no answer")
    assert f"tcp://127.0.0.1:{port}" in err and "within 0.3 s" in err   # seconds, as everywhere
    assert time.monotonic() - started < 10


def test_services_bad_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(services, ["-c", str(tmp_path / "nope.toml")])
    assert result.exit_code == 1
    assert "configuration file not found" in result.output


def test_table_formatting() -> None:
    entries = [{"service": "s", "dispatcher": "long-dispatcher", "host": "h", "dispatch_port": 1,
                "broadcast_port": 2, "state": "stale", "age": 3725.0}]
    lines = format_table(entries).splitlines()
    assert lines[0].index("HOST") == lines[1].index(" h ") + 1
    assert lines[1].endswith("1h02m")
    assert [format_age(a) for a in (4.24, 725, 90000)] == ["4.2s", "12m05s", "1d01h"]
