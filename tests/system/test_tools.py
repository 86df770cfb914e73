"""``cauldron-zmq show | modify | monitor | list`` as real subprocesses."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, List

import click
import pytest

from cauldron_zmq import DFW
from cauldron_zmq.commands.tools import parse_assignments
from cauldron_zmq.testing import ServiceHarness, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _refuse_hot(value: Any) -> None:
    if float(value) > 40:
        raise ValueError(f"{value} degC would cook the detector")


def setup(svc: Any) -> None:
    DFW.Integer("COUNT", svc, initial=3, units="counts", maximum=100, description="A counter")
    DFW.Double("TEMP", svc, initial=20.5, units="degC", check=_refuse_hot)
    DFW.Enumerated("MODE", svc, enumerators=["OFF", "STANDBY", "ON"], initial="STANDBY")
    DFW.String("NAME", svc, initial="hello")
    DFW.String("LABEL", svc, initial="fixed", readonly=True)


@pytest.fixture(scope="module")
def harness() -> Iterator[ServiceHarness]:
    # Generous timeouts: these tests are about what is printed, on a machine that
    # may be busy (test_list_router_down tests a timeout, on a harness of its own).
    with ServiceHarness(setup, "tools", config={"zmq": {"timeout": 10000},
                                                "zmq-router": {"timeout": 5000}}) as h:
        yield h


def cli(harness: ServiceHarness, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CAULDRON_ZMQ_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "cauldron_zmq", *args,
                           "-c", str(harness.config_path)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_show(harness: ServiceHarness) -> None:
    harness.dispatcher["MODE"].set("STANDBY")
    harness.dispatcher["COUNT"].set(3)
    out = cli(harness, "show", "-s", "tools", "COUNT", "mode", "NAME")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["COUNT = 3 counts", "MODE = STANDBY", "NAME = hello"]
    assert out.stderr == ""


def test_show_binary_and_json(harness: ServiceHarness) -> None:
    harness.dispatcher["MODE"].set("ON")
    out = cli(harness, "show", "-s", "tools", "-b", "MODE")
    assert out.stdout == "MODE = 2\n"
    out = cli(harness, "show", "-s", "tools", "--json", "MODE", "TEMP")
    data = json.loads(out.stdout)
    assert data["MODE"]["ascii"] == "ON" and data["MODE"]["binary"] == 2
    assert data["MODE"]["type"] == "KTL_ENUMERATED"
    assert data["TEMP"]["units"] == "degC" and isinstance(data["TEMP"]["timestamp"], float)


def test_show_errors(harness: ServiceHarness) -> None:
    out = cli(harness, "show", "-s", "tools", "COUNTT")
    assert out.returncode == 1
    assert out.stderr.strip() == ("cauldron-zmq show: error: service 'tools' has no keyword "
                                  "'COUNTT'; did you mean 'COUNT'?")
    assert out.stdout == ""
    out = cli(harness, "show", "-s", "nosuch", "X")
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1
    assert "nosuch" in out.stderr and harness.config.router_address() in out.stderr
    out = cli(harness, "show", "-s", "nosuch", "X", "-v")
    assert out.returncode == 1 and "Traceback" in out.stderr
    out = cli(harness, "show", "-s", "tools")
    assert out.returncode == 2 and "Missing argument" in out.stderr


@pytest.mark.parametrize("args, why", [
    (["show", "-s", "../tools", "COUNT"], "names are not paths"),
    (["modify", "-service", "a\\b", "COUNT=4"], "names are not paths"),
    (["monitor", "-s", "..", "COUNT", "--count", "1"], "is not a name"),
    (["list", "-s", "to\x01ols"], "control characters"),
])
def test_a_bad_service_name_is_one_line(harness: ServiceHarness, args: List[str],
                                        why: str) -> None:
    """``-s`` is judged by names.check_name before anything is asked (exit 1, one line)."""
    before = harness.dispatcher["COUNT"].seq
    out = cli(harness, *args)
    assert out.returncode == 1, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith(f"cauldron-zmq {args[0]}: error: service name ") and why in line
    assert out.stdout == "" and harness.dispatcher["COUNT"].seq == before   # nothing written


def test_modify(harness: ServiceHarness) -> None:
    harness.dispatcher["MODE"].set("STANDBY")
    out = cli(harness, "modify", "-s", "tools", "COUNT=5", "TEMP", "=-3.5", "MODE=", "ON",
              "NAME", "=", "two words")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["setting COUNT = 5 (wait)", "setting TEMP = -3.5 (wait)",
                                       "setting MODE = ON (wait)",
                                       "setting NAME = two words (wait)"]
    d = harness.dispatcher
    assert (d["COUNT"].binary, d["TEMP"].binary, d["MODE"].ascii, d["NAME"].binary) == \
        (5, -3.5, "ON", "two words")


def test_modify_quiet_parallel_binary(harness: ServiceHarness) -> None:
    out = cli(harness, "modify", "-s", "tools", "-q", "COUNT=6")
    assert out.returncode == 0 and out.stdout == ""
    out = cli(harness, "modify", "-s", "tools", "-p", "COUNT=7", "MODE=OFF")
    assert out.stdout.splitlines() == ["setting COUNT = 7 (parallel)",
                                       "setting MODE = OFF (parallel)",
                                       "COUNT complete", "MODE complete"]
    out = cli(harness, "modify", "-s", "tools", "-b", "MODE=1")
    assert out.returncode == 0 and harness.dispatcher["MODE"].ascii == "STANDBY"


def test_modify_nowait(harness: ServiceHarness) -> None:
    out = cli(harness, "modify", "-s", "tools", "-n", "COUNT=8")
    assert out.returncode == 0 and out.stdout == "setting COUNT = 8 (nowait)\n"
    wait_until(lambda: harness.dispatcher["COUNT"].binary == 8, 3)


def test_modify_refused(harness: ServiceHarness) -> None:
    out = cli(harness, "modify", "-s", "tools", "TEMP=99")
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        "cauldron-zmq modify: error: ValueError: tools.TEMP: 99.0 degC would cook the detector"]
    out = cli(harness, "modify", "-s", "tools", "-p", "COUNT=9", "TEMP=99")
    assert out.returncode == 1 and "cook the detector" in out.stderr
    assert "COUNT complete" in out.stdout
    out = cli(harness, "modify", "-s", "tools", "COUNT=1000")
    assert out.returncode == 1 and "maximum 100" in out.stderr


def test_modify_usage(harness: ServiceHarness) -> None:
    out = cli(harness, "modify", "-s", "tools", "COUNT")
    assert out.returncode == 2 and "KEYWORD=VALUE" in out.stderr


@pytest.mark.parametrize("tokens, pairs", [
    (["A=1"], [("A", "1")]),
    (["A", "=1"], [("A", "1")]),
    (["A=", "1"], [("A", "1")]),
    (["A", "=", "1"], [("A", "1")]),
    (["A=1", "B", "=x y", "C=", "-5"], [("A", "1"), ("B", "x y"), ("C", "-5")]),
    (["A=a=b"], [("A", "a=b")]),
    (["A="], [("A", "")]),
])
def test_parse_assignments(tokens: List[str], pairs: List[tuple]) -> None:
    assert parse_assignments(tokens)[0] == pairs


def test_parse_assignment_flags_and_errors() -> None:
    assert parse_assignments(["nowait", "A=1", "silent"]) == ([("A", "1")], ["nowait", "quiet"])
    for bad in (["A"], ["=1"], ["nowait"], []):
        with pytest.raises(click.UsageError):
            parse_assignments(bad)


def test_monitor_count(harness: ServiceHarness) -> None:
    harness.dispatcher["COUNT"].set(10)
    proc = subprocess.Popen([sys.executable, "-m", "cauldron_zmq", "monitor", "-s", "tools",
                             "COUNT", "--count", "2", "-c", str(harness.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        first = proc.stdout.readline()                 # the current value: it is monitoring
        assert first.rstrip().endswith("COUNT = 10 counts"), first
        stop = threading.Event()

        def change() -> None:
            n = 11
            while not stop.is_set() and proc.poll() is None:
                harness.dispatcher["COUNT"].set(n)
                n += 1
                stop.wait(0.05)
        writer = threading.Thread(target=change)
        writer.start()
        out, err = proc.communicate(timeout=20)
        stop.set()
        writer.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "
    assert re.fullmatch(stamp + r"COUNT = 11 counts", lines[0]), lines
    assert re.fullmatch(stamp + r"COUNT = 12 counts", lines[1]), lines


def test_monitor_duration(harness: ServiceHarness) -> None:
    out = cli(harness, "monitor", "-s", "tools", "NAME", "MODE", "--duration", "0.3")
    assert out.returncode == 0, out.stderr
    assert [line.split(" ", 2)[2].split(" =")[0] for line in out.stdout.splitlines()] == \
        ["NAME", "MODE"]


def test_list(harness: ServiceHarness) -> None:
    out = cli(harness, "list")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["SERVICE  KEYWORDS    DISPATCHERS",
                                       "tools    5 keywords  default (live)"]
    assert json.loads(cli(harness, "list", "--json").stdout) == {"tools": ["default (live)"]}
    harness.dispatcher["NAME"].set("hello")
    harness.dispatcher["COUNT"].set(3)
    out = cli(harness, "list", "-s", "tools")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["KEYWORD", "TYPE", "UNITS", "RANGE", "ACCESS", "VALUE",
                                "DESCRIPTION"]
    starts = [lines[0].index(word) for word in ("TYPE", "UNITS", "RANGE", "ACCESS", "VALUE")]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == ["COUNT", "LABEL", "MODE", "NAME", "TEMP"]
    count = rows["COUNT"]                           # aligned: every cell under its heading
    assert [count.index(cell) for cell in (" KTL_INTEGER", " counts", " <= 100", " rw ", " 3 ")] \
        == [at - 1 for at in starts]
    assert rows["COUNT"].split() == ["COUNT", "KTL_INTEGER", "counts", "<=", "100", "rw", "3",
                                     "A", "counter"]
    assert rows["MODE"].split()[1:5] == ["KTL_ENUMERATED", "OFF|STANDBY|ON", "rw", "STANDBY"]
    assert rows["NAME"].split()[1:] == ["KTL_STRING", "rw", "hello"]
    assert rows["LABEL"].split()[1:] == ["KTL_STRING", "read-only", "fixed"]
    data = json.loads(cli(harness, "list", "-s", "tools", "--json").stdout)
    assert data["TEMP"]["units"] == "degC"
    assert data["COUNT"]["maximum"] == 100 and data["COUNT"]["description"] == "A counter"
    assert data["LABEL"]["readonly"] is True and data["MODE"]["readonly"] is False


def test_list_router_down(tmp_path: Path) -> None:
    h = ServiceHarness(None, "none", directory=tmp_path)      # nothing started
    out = cli(h, "list", "-t", "0.2")
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("cauldron-zmq list: error: ")
    assert h.config.router_address() in out.stderr


def test_help_lists_the_tools() -> None:
    out = subprocess.run([sys.executable, "-m", "cauldron_zmq", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=30)
    for name in ("show", "modify", "monitor", "list"):
        assert re.search(rf"^\s+{name}\s", out.stdout, re.M), out.stdout
