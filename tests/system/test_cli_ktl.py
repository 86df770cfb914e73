"""The command line as KTL users and operators meet it: KTL's ``show``/``modify``
spellings, every bad name reported, binary forms, writes that changed nothing,
``list`` with down dispatchers, -c/-v before the sub-command, one-line errors,
closed pipes, ``cauldron-zmq router``, and the newcomer's first steps (README's
dispatcher, the demo's state folder, the venv script, LICENSE and py.typed).

Commands run against a real router and dispatcher (cauldron_zmq.testing); the
spelling matrix runs the click command in this process (the parsing is what
is tested), the rest as real ``cauldron-zmq`` processes.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from click.testing import CliRunner

from cauldron_zmq import DFW
from cauldron_zmq.cli import hoist_common_options, main
from cauldron_zmq.commands.ktlargs import normalise
from cauldron_zmq.commands.text import binary_text, in_seconds, plural, range_text
from cauldron_zmq.errors import NoWriteNecessary
from cauldron_zmq.router import RouterClient
from cauldron_zmq.testing import ServiceHarness, wait_until, write_test_config
from cauldron_zmq.types import keyword_type

ROOT = Path(__file__).resolve().parents[2]
# Generous timeouts (client requests, router look-ups): these tests are about what
# is printed, and the machine may be busy; the tests of timeouts pass -t themselves.
ROOMY = {"zmq": {"timeout": 10000}, "zmq-router": {"timeout": 5000}}
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


class Gate(DFW.Integer):
    """A write hook that declines some writes with NoWriteNecessary."""

    def prewrite(self, value: Any) -> Any:
        if int(float(value)) < 0:
            raise NoWriteNecessary("negative: nothing to do")
        return super().prewrite(value)


def setup(svc: Any) -> None:
    DFW.Integer("COUNT", svc, initial=3, units="counts", maximum=100)
    DFW.Double("TEMP", svc, initial=20.5, units="degC")
    DFW.Enumerated("MODE", svc, enumerators=["OFF", "STANDBY", "ON"], initial="STANDBY")
    DFW.Boolean("FLAG", svc, initial=True)
    DFW.DoubleArray("ARR", svc, initial=[1.5, -2.0, 3.0])
    DFW.IntegerArray("IARR", svc, initial=[1, 2, 3])
    DFW.String("NAME", svc, initial="hello")
    Gate("GATE", svc, initial=1)


@pytest.fixture(scope="module")
def harness() -> Iterator[ServiceHarness]:
    with ServiceHarness(setup, "ktl", config=ROOMY) as h:
        yield h


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.pop("CAULDRON_ZMQ_CONFIG", None)
    return e


def run(*args: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
    """``cauldron-zmq ARGS`` as a process."""
    return subprocess.run([sys.executable, "-m", "cauldron_zmq", *args], capture_output=True,
                          text=True, timeout=timeout, env=env(), **kw)


class Result:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


def invoke(harness: ServiceHarness, *args: str) -> Result:
    """``cauldron-zmq ARGS -c CONFIG`` in this process (click's runner)."""
    try:
        runner = CliRunner(mix_stderr=False)          # click < 8.2
    except TypeError:
        runner = CliRunner()
    result = runner.invoke(main, [*args, "-c", str(harness.config_path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


# ============================================================ KTL spellings

@pytest.mark.parametrize("args, expected", [
    (["-service", "demo", "KW"], ["--service", "demo", "KW"]),
    (["-s", "demo", "-service", "x"], ["-s", "demo", "--service", "x"]),
    (["-service=demo", "KW"], ["--service=demo", "KW"]),
    (["-s", "demo", "-terse", "KW"], ["-s", "demo", "--terse", "KW"]),
    (["-t", "1", "KW"], ["-t", "1", "KW"]),                       # -t is still the timeout
    (["-timeout", "1", "-binary", "-timestamp", "-debug", "KW"],
     ["--timeout", "1", "--binary", "--timestamp", "--debug", "KW"]),
    (["-s", "-terse", "KW"], ["-s", "-terse", "KW"]),             # a value is never rewritten
    (["--", "-terse"], ["--", "-terse"]),
    (["-terser", "KW"], ["-terser", "KW"]),                       # only exact spellings
])
def test_normalise(args: List[str], expected: List[str]) -> None:
    assert normalise(args, SPELLINGS, VALUED) == expected


SPELLINGS = {"-service": "--service", "-terse": "--terse", "-binary": "--binary",
             "-timestamp": "--timestamp", "-debug": "--debug", "-timeout": "--timeout"}
VALUED = {"-s", "--service", "-t", "--timeout"}


@pytest.mark.parametrize("args, expected", [
    (["KW=", "-terse"], ["KW=-terse"]),                 # an assignment's value stays a value
    (["KW", "=", "-binary"], ["KW=-binary"]),
    (["KW", "=-t1", "-binary"], ["KW=-t1", "--binary"]),
    (["KW=-binary"], ["KW=-binary"]),
    (["A=1", "B", "=", "x y", "C=", "-5"], ["A=1", "B=x y", "C=-5"]),
    (["-s", "svc", "=", "1"], ["-s", "svc", "=", "1"]),  # an option's value is no keyword
    (["A=1", "=2"], ["A=1", "=2"]),                     # left for the parser to refuse
    (["KW="], ["KW="]),
])
def test_normalise_joins_assignments(args: List[str], expected: List[str]) -> None:
    assert normalise(args, SPELLINGS, VALUED, join_assignments=True) == expected


@pytest.mark.parametrize("args, out", [
    (["show", "-s", "ktl", "COUNT"], "COUNT = 3 counts"),
    (["show", "--service", "ktl", "COUNT"], "COUNT = 3 counts"),
    (["show", "-service", "ktl", "COUNT"], "COUNT = 3 counts"),
    (["show", "-service=ktl", "COUNT"], "COUNT = 3 counts"),
    (["show", "COUNT", "-service", "ktl"], "COUNT = 3 counts"),
    (["show", "-s", "ktl", "-terse", "COUNT"], "3"),
    (["show", "-service", "ktl", "--terse", "TEMP"], "20.5"),
    (["show", "-s", "ktl", "-binary", "FLAG"], "FLAG = 1"),
    (["show", "-s", "ktl", "-b", "MODE"], "MODE = 1"),
    (["show", "-s", "ktl", "-binary", "-terse", "ARR"], "1.5 -2.0 3.0"),
    (["show", "-s", "ktl", "-timeout", "5", "COUNT"], "COUNT = 3 counts"),
    (["show", "-s", "ktl", "-t", "5", "-terse", "COUNT"], "3"),
    (["show", "-s", "ktl", "--timeout=5", "COUNT"], "COUNT = 3 counts"),
    (["show", "-s", "ktl", "-debug", "-terse", "NAME"], "hello"),
])
def test_show_spellings(harness: ServiceHarness, args: List[str], out: str) -> None:
    harness.dispatcher["COUNT"].set(3)
    result = invoke(harness, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [out]


def test_monitor_and_list_take_the_spellings_too(harness: ServiceHarness) -> None:
    harness.dispatcher["NAME"].set("hello")
    watched = invoke(harness, "monitor", "-service", "ktl", "-binary", "FLAG", "NAME",
                     "--duration", "0.2", "-timeout", "5")
    assert watched.returncode == 0, watched.stderr
    assert [re.sub("^" + STAMP + " ", "", line) for line in watched.stdout.splitlines()] == \
        ["FLAG = 1", "NAME = hello"]
    listed = invoke(harness, "list", "-service", "ktl", "-timeout", "5")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split()[0] == "KEYWORD"


def test_show_timestamp(harness: ServiceHarness) -> None:
    harness.dispatcher["COUNT"].set(4)
    result = invoke(harness, "show", "-s", "ktl", "-timestamp", "COUNT", "NAME")
    lines = result.stdout.splitlines()
    assert re.fullmatch(STAMP + " COUNT = 4 counts", lines[0]), lines
    assert re.fullmatch(STAMP + " NAME = hello", lines[1]), lines
    terse = invoke(harness, "show", "-s", "ktl", "-timestamp", "-terse", "COUNT").stdout
    assert re.fullmatch(STAMP + " 4\n", terse), terse


def test_show_binary_forms(harness: ServiceHarness) -> None:
    d = harness.dispatcher
    d["FLAG"].set(False)
    d["MODE"].set("ON")
    result = invoke(harness, "show", "-s", "ktl", "-binary", "FLAG", "MODE", "ARR", "IARR",
                    "TEMP", "NAME")
    assert result.stdout.splitlines() == ["FLAG = 0", "MODE = 2", "ARR = 1.5 -2.0 3.0",
                                          "IARR = 1 2 3", "TEMP = 20.5 degC", "NAME = hello"]
    d["FLAG"].set(True)
    d["MODE"].set("STANDBY")


def test_binary_text() -> None:
    np = pytest.importorskip("numpy")
    assert binary_text(True) == "1" and binary_text(False) == "0"
    assert binary_text(np.array([1.0, float("nan"), float("inf")])) == "1.0 nan inf"
    assert binary_text(np.array([1, 2], dtype=np.int32)) == "1 2"
    assert binary_text([True, False]) == "1 0"
    assert binary_text(None) == "" and binary_text("a b") == "a b"


def test_show_keywords_lists_the_keywords(harness: ServiceHarness) -> None:
    result = invoke(harness, "show", "-s", "ktl", "keywords")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ARR", "COUNT", "FLAG", "GATE", "IARR", "MODE",
                                          "NAME", "TEMP"]


def test_show_prints_every_good_value_and_reports_each_bad_name(harness: ServiceHarness) -> None:
    harness.dispatcher["COUNT"].set(3)
    result = invoke(harness, "show", "-s", "ktl", "COUNTT", "COUNT", "NOSUCH", "NAME")
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["COUNT = 3 counts", "NAME = hello"]
    assert result.stderr.splitlines() == [
        "cauldron-zmq show: error: service 'ktl' has no keyword 'COUNTT'; did you mean 'COUNT'?",
        "cauldron-zmq show: error: service 'ktl' has no keyword 'NOSUCH'"]


# ================================================================= modify

@pytest.mark.parametrize("args, lines", [
    (["-service", "ktl", "COUNT=11"], ["setting COUNT = 11 (wait)"]),
    (["-s", "ktl", "-nowait", "COUNT=12"], ["setting COUNT = 12 (nowait)"]),
    (["-s", "ktl", "-silent", "COUNT=13"], []),
    (["-s", "ktl", "-notify", "COUNT=14"], ["setting COUNT = 14 (parallel)", "COUNT complete"]),
    (["-s", "ktl", "-timeout", "5", "-wait", "COUNT=15"], ["setting COUNT = 15 (wait)"]),
    (["-s", "ktl", "-binary", "COUNT=16"], ["setting COUNT = 16 (wait)"]),
    (["-s", "ktl", "-debug", "COUNT", "=", "17"], ["setting COUNT = 17 (wait)"]),
])
def test_modify_spellings(harness: ServiceHarness, args: List[str], lines: List[str]) -> None:
    result = invoke(harness, "modify", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == lines
    wanted = int(re.search(r"=\s*(\d+)", " ".join(args)).group(1))
    wait_until(lambda: harness.dispatcher["COUNT"].binary == wanted, 10)


def test_modify_value_that_looks_like_a_ktl_option(harness: ServiceHarness) -> None:
    result = invoke(harness, "modify", "-s", "ktl", "NAME=", "-terse")
    assert result.returncode == 0, result.stderr
    assert harness.dispatcher["NAME"].value == "-terse"
    harness.dispatcher["NAME"].set("hello")


def test_modify_wait_and_nowait_together_is_a_usage_error(harness: ServiceHarness) -> None:
    result = invoke(harness, "modify", "-s", "ktl", "-wait", "-nowait", "COUNT=1")
    assert result.returncode == 2 and "not both" in result.stderr


def test_modify_says_when_nothing_changed(harness: ServiceHarness) -> None:
    harness.dispatcher["COUNT"].set(20)
    result = invoke(harness, "modify", "-s", "ktl", "COUNT=20")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["setting COUNT = 20 (wait)",
                                          "COUNT was already 20; nothing changed"]
    moved = invoke(harness, "modify", "-s", "ktl", "COUNT=21")
    assert moved.stdout.splitlines() == ["setting COUNT = 21 (wait)"]
    both = invoke(harness, "modify", "-s", "ktl", "-p", "COUNT=21", "NAME=other")
    assert both.stdout.splitlines() == ["setting COUNT = 21 (parallel)",
                                        "setting NAME = other (parallel)",
                                        "COUNT was already 21; nothing changed",
                                        "NAME complete"]
    harness.dispatcher["NAME"].set("hello")


def test_modify_no_write_necessary_from_a_hook(harness: ServiceHarness) -> None:
    harness.dispatcher["GATE"].set(1)
    result = invoke(harness, "modify", "-s", "ktl", "GATE=-5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["setting GATE = -5 (wait)",
                                          "GATE was already 1; nothing changed"]
    assert harness.dispatcher["GATE"].binary == 1


def test_modify_reports_every_unknown_name_and_writes_nothing(harness: ServiceHarness) -> None:
    harness.dispatcher["COUNT"].set(30)
    result = invoke(harness, "modify", "-s", "ktl", "COUNT=31", "NOPE=1", "NADA=2")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "cauldron-zmq modify: error: service 'ktl' has no keyword 'NOPE'",
        "cauldron-zmq modify: error: service 'ktl' has no keyword 'NADA'"]
    assert harness.dispatcher["COUNT"].binary == 30


# ====================================================== -c and -v, anywhere

def test_hoist_common_options() -> None:
    assert hoist_common_options(["-c", "f", "-vv", "show", "-s", "x"]) == \
        ([], ["-c", "f", "-vv"], 3)
    assert hoist_common_options(["--config=f", "--verbose", "list"]) == \
        ([], ["--config=f", "--verbose"], 2)
    assert hoist_common_options(["--help"]) == (["--help"], [], None)
    assert hoist_common_options(["show", "-c", "f"]) == ([], [], 0)


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_config_and_verbose_before_or_after_the_sub_command(harness: ServiceHarness,
                                                            where: str) -> None:
    cfg = ["-c", str(harness.config_path)]
    show = ["show", "-s", "ktl", "COUNTT"]
    argv = {"before": cfg + ["-v"] + show, "after": show + cfg + ["-v"],
            "both": ["-v"] + show + cfg}[where]
    result = run(*argv)
    assert result.returncode == 1
    assert "Traceback" in result.stderr, result.stderr        # -v: the traceback too
    assert "did you mean 'COUNT'?" in result.stderr


def test_a_sub_command_without_the_option_says_so() -> None:
    result = run("-v", "keygen", "/nonexistent")
    assert result.returncode == 2 and "'keygen' takes no -v option" in result.stderr


# ========================================================= errors, one line

def test_crashed_dispatcher_gives_one_line_unless_verbose(tmp_path: Path) -> None:
    keywords = tmp_path / "kw.toml"
    keywords.write_text('[keyword.POS]\ntype = "double"\ninitial = 1.0\n')
    with ServiceHarness(keywords, "crash", subprocess=True, directory=tmp_path) as h:
        h.kill_dispatcher()
        quiet = run("show", "-s", "crash", "POS", "-t", "0.5", "-c", str(h.config_path))
        assert quiet.returncode == 1 and quiet.stdout == ""
        lines = quiet.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cauldron-zmq show: error: "), lines
        assert " ms" not in lines[0]                            # times in seconds
        loud = run("show", "-s", "crash", "POS", "-t", "0.5", "-v", "-c", str(h.config_path))
        assert loud.returncode == 1 and len(loud.stderr.splitlines()) > 1


def test_closed_pipe_exits_quietly(harness: ServiceHarness) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cauldron_zmq", "list", "-s", "ktl",
                             "-c", str(harness.config_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env())
    proc.stdout.close()                       # the reader went away ('| head -0')
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err.decode() == ""
    assert proc.returncode == 1


def test_in_seconds() -> None:
    assert in_seconds("no answer within 300 ms (list)") == "no answer within 0.3 s (list)"
    assert in_seconds("within 2500 ms") == "within 2.5 s"
    assert in_seconds("nothing to change, 5 msgs") == "nothing to change, 5 msgs"


# ==================================================================== list

def test_plural_and_ranges() -> None:
    assert [plural(n, "keyword") for n in (0, 1, 2)] == ["0 keywords", "1 keyword",
                                                         "2 keywords"]
    assert range_text(keyword_type("integer", minimum=0, maximum=100)) == "0..100"
    assert range_text(keyword_type("double", minimum=-20.0)) == ">= -20.0"
    assert range_text(keyword_type("enumerated", enumerators=["A", "B"])) == "A|B"
    assert range_text(keyword_type("string")) == ""


def _spec(camera_keywords: List[str]) -> Any:
    def make(svc: Any) -> None:
        for name in camera_keywords:
            DFW.Boolean(name, svc, initial=False)
    return make


def test_list_shows_keywords_of_a_dispatcher_that_is_down(tmp_path: Path) -> None:
    with ServiceHarness(lambda svc: DFW.Double("FOCUS", svc, initial=1.5, units="mm"),
                        "spec", directory=tmp_path, dispatcher="blue", config=ROOMY) as h:
        camera = DFW.Service("spec", config=h.config, setup=_spec(["SHUTTER"]),
                             dispatcher="camera").begin()
        camera.shutdown()                                   # unregistered: down
        result = run("list", "-s", "spec", "-c", str(h.config_path))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        rows = {line.split()[0]: line.split() for line in lines[1:3]}
        assert rows["FOCUS"][1:4] == ["KTL_DOUBLE", "mm", "rw"]
        assert rows["SHUTTER"] == ["SHUTTER", "(camera", "down)"]
        assert re.fullmatch(r"dispatcher 'camera' is down \(last heard \S+ s ago\); "
                            r"1 keyword without a value here", lines[3]), lines
        data = json.loads(run("list", "-s", "spec", "--json", "-c", str(h.config_path)).stdout)
        assert (data["SHUTTER"]["dispatcher"], data["SHUTTER"]["state"]) == ("camera", "down")
        assert (data["FOCUS"]["dispatcher"], data["FOCUS"]["state"]) == ("blue", "live")
        services = run("list", "-c", str(h.config_path)).stdout.splitlines()
        assert services[1].split() == ["spec", "2", "keywords", "blue", "(live),", "camera",
                                       "(down)"]


def test_list_a_service_whose_only_dispatcher_went_silent(tmp_path: Path) -> None:
    keywords = tmp_path / "kw.toml"
    keywords.write_text('[keyword.POS]\ntype = "double"\ninitial = 1.0\n')
    with ServiceHarness(keywords, "gone", subprocess=True, directory=tmp_path,
                        config=ROOMY) as h:
        h.kill_dispatcher()
        with RouterClient(h.config, timeout=500) as rc:      # expiry: 3 s in tests
            wait_until(lambda: rc.list()["entries"][0]["state"] == "stale", 10)
        result = run("list", "-s", "gone", "-c", str(h.config_path))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[1].split() == ["POS", "(default", "stale)"]
        assert re.fullmatch(r"dispatcher 'default' is stale \(last heard \d+(\.\d)? s ago\); "
                            r"1 keyword without a value here", lines[2]), lines


def test_list_a_live_and_a_stale_dispatcher_lists_each_keyword_once(tmp_path: Path) -> None:
    keywords = tmp_path / "camera.toml"
    keywords.write_text('[keyword.SHUTTER]\ntype = "boolean"\ninitial = false\n')
    with ServiceHarness(lambda svc: DFW.Double("FOCUS", svc, initial=1.5), "duo",
                        directory=tmp_path, dispatcher="blue", config=ROOMY) as h:
        camera = subprocess.Popen([sys.executable, "-m", "cauldron_zmq", "serve", "duo",
                                   str(keywords), "--dispatcher", "camera",
                                   "-c", str(h.config_path)], env=env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with RouterClient(h.config, timeout=500) as rc:
                def state() -> str:
                    return {e["dispatcher"]: e["state"] for e in rc.list()["entries"]}.get(
                        "camera", "")
                wait_until(lambda: state() == "live", 15)
                camera.kill()
                camera.wait(10)
                wait_until(lambda: state() == "stale", 10)   # expiry: 3 s in tests
        finally:
            if camera.poll() is None:
                camera.kill()
                camera.wait(10)
        result = run("list", "-s", "duo", "-t", "2", "-c", str(h.config_path))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split()[0] for line in lines[1:]] == ["FOCUS", "SHUTTER", "dispatcher"]
        assert lines[1].split()[1:4] == ["KTL_DOUBLE", "rw", "1.5"]
        assert lines[2].split()[1:] == ["(camera", "stale)"]


def test_list_a_dispatcher_that_died_a_moment_ago(tmp_path: Path) -> None:
    """Still live in the router's book (long expiry), but it does not answer."""
    keywords = tmp_path / "kw.toml"
    keywords.write_text('[keyword.POS]\ntype = "double"\ninitial = 1.0\n'
                        '[keyword.VEL]\ntype = "double"\ninitial = 0.0\n')
    with ServiceHarness(keywords, "died", subprocess=True, directory=tmp_path,
                        config={"zmq-router": {"expiry": 60.0, "timeout": 5000}}) as h:
        h.kill_dispatcher()
        started = time.monotonic()
        result = run("list", "-s", "died", "-t", "2", "-c", str(h.config_path))
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split()[0] for line in lines[1:3]] == ["POS", "VEL"]
        assert all(line.endswith("(default not answering)") for line in lines[1:3]), lines
        assert lines[3].startswith("dispatcher 'default' is registered but not answering (")
        assert lines[3].endswith("; 2 keywords without a value here")
        assert elapsed < 20                 # one timeout per dispatcher, not one per keyword


def test_listings_say_so_when_empty_and_count_in_the_singular(tmp_path: Path) -> None:
    h = ServiceHarness(None, "none", directory=tmp_path, config=ROOMY)
    h.start_router()
    try:
        empty = run("list", "-c", str(h.config_path))
        assert empty.returncode == 0
        assert empty.stdout == ("no services are registered with the router at "
                                f"{h.config.router_address()}\n")
        one = DFW.Service("one", config=h.config, setup=_spec(["ONLY"])).begin()
        bare = DFW.Service("bare", config=h.config, setup=lambda svc: None).begin()
        try:
            table = run("list", "-c", str(h.config_path)).stdout.splitlines()
            assert [line.split()[:3] for line in table[1:]] == [
                ["bare", "0", "keywords"], ["one", "1", "keyword"]]
            nothing = run("list", "-s", "bare", "-c", str(h.config_path))
            assert nothing.stdout == "service 'bare' has no keywords\n"
            names = run("show", "-s", "bare", "keywords", "-c", str(h.config_path))
            assert names.stdout == "service 'bare' has no keywords\n"
            typo = run("list", "-s", "onne", "-c", str(h.config_path))
            assert typo.returncode == 1 and "did you mean 'one'?" in typo.stderr
        finally:
            one.shutdown()
            bare.shutdown()
    finally:
        h.close()


# ========================================================== newcomer things

def _readme_block(title: str) -> str:
    text = (ROOT / "README.rst").read_text()
    section = text.split(title + "\n", 1)[1]
    block = section.split(".. code-block:: python\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_readme_dispatcher_runs_as_printed(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(_readme_block("A dispatcher in ten lines"))
    h = ServiceHarness(None, "stage", directory=tmp_path, config=ROOMY)
    h.start_router()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
                            env=dict(env(), CAULDRON_ZMQ_CONFIG=str(h.config_path)))
    try:
        cfg = ["-c", str(h.config_path)]
        wait_until(lambda: run("show", "-s", "stage", "POSITION", *cfg).returncode == 0
                   or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.communicate()[0]
        moved = run("modify", "-s", "stage", "POSITION=42.5", *cfg)
        assert moved.returncode == 0, moved.stderr
        assert run("show", "-s", "stage", "-terse", "POSITION", *cfg).stdout == "42.5\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
        h.close()
    assert "moving to 42.5 mm" in out
    assert proc.returncode == 0, out


def test_demo_keeps_its_state_out_of_home(tmp_path: Path) -> None:
    config = write_test_config(tmp_path)
    text = config.read_text()
    config.write_text("\n".join(line for line in text.splitlines()
                                if not line.startswith("persist-dir")) + "\n")
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "-c",
                           str(config)], capture_output=True, text=True, timeout=120,
                          env=dict(env(), HOME=str(home)), cwd=str(ROOT))
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(home.iterdir()) == []
    assert "starting the router (Cauldron-router-zmq): python -m cauldron_zmq.router" \
        in done.stdout


FAKE_PYTHON = """#!/bin/sh
# Stands in for python: -c prints a version, -m venv makes a venv of this very
# script, -m pip prints a lot and fails when FAKE_PIP_FAIL is set.
case "$1" in
  -c) echo 9.9 ;;
  -m) case "$2" in
        venv) mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
        pip) echo "pip noise line"; echo "boxed Editable installation warning" >&2
             [ -z "$FAKE_PIP_FAIL" ] ;;
      esac ;;
esac
"""


@pytest.mark.parametrize("fail", [False, True])
def test_venv_setup_shows_pip_output_only_on_failure(tmp_path: Path, fail: bool) -> None:
    for name in ("setup.cfg", "pyproject.toml"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "_venv.sh").write_text((ROOT / "scripts" / "_venv.sh").read_text())
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    e = dict(os.environ, PYTHON=str(fake))
    if fail:
        e["FAKE_PIP_FAIL"] = "1"
    done = subprocess.run(["bash", "-c", "set -euo pipefail; source scripts/_venv.sh; "
                                         "echo ready"],
                          cwd=str(tmp_path), capture_output=True, text=True, env=e, timeout=30)
    if fail:
        assert done.returncode == 1 and "ready" not in done.stdout
        assert "pip noise line" in done.stderr and "install.log" in done.stderr
    else:
        assert done.returncode == 0 and done.stdout == "ready\n"
        assert "noise" not in done.stderr and "Editable" not in done.stderr
        assert done.stderr.count("\n") == 1                     # "Installing ..." only
        assert "pip noise line" in (tmp_path / ".venv-9.9" / "install.log").read_text()


def test_scripts_test_header_examples_select_tests() -> None:
    header = (ROOT / "scripts" / "test").read_text()
    assert "-k router" in header and "tests/system/test_tools.py" in header
    assert "tests/unit/test_types.py" in header and "-m smoke" not in header
    assert (ROOT / "tests" / "unit" / "test_types.py").exists()
    assert any("router" in p.name for p in (ROOT / "tests").glob("*/test_*.py"))


def test_license_and_py_typed() -> None:
    license_text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause License" in license_text
    assert "Copyright (c) the cauldron_zmq developers" in license_text
    assert (ROOT / "cauldron_zmq" / "py.typed").exists()
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert re.search(r"\[options\.package_data\]\s+cauldron_zmq = py\.typed", setup_cfg)
