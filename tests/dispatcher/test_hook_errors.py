"""Errors reach the right person (issue 11, items 4 and 6).

* a hook's exception reaches the client *and* the dispatcher's log, with its
  traceback, repeats throttled (README's dispatcher, whose ``motor`` is
  undefined, run as a real process);
* the test harness quotes a child process's last output when it exits, and
  takes relative keyword-file paths.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cauldron_zmq import DFW
from cauldron_zmq.errors import DispatcherError
from cauldron_zmq.testing import ServiceHarness, _child_env, running_service, wait_until

pytestmark = pytest.mark.timeout(90)

# README's "dispatcher in ten lines", as printed: ``motor`` is not defined.
README_DISPATCHER = textwrap.dedent("""
    import sys
    from cauldron_zmq import DFW

    class Stage(DFW.Double):
        def write(self, value):            # drive the hardware; may take long, may raise
            motor.move_to(value)

    def setup(service):
        Stage("POSITION", service, initial=0.0, minimum=0, maximum=100, units="mm")
        DFW.Enumerated("MODE", service, enumerators=["Idle", "Track"], initial="Idle")

    DFW.Service("stage", config=sys.argv[1], setup=setup).serve_forever()
""")


def test_readme_dispatcher_logs_the_name_error_with_its_traceback(tmp_path: Path) -> None:
    script = tmp_path / "stage.py"
    script.write_text(README_DISPATCHER, encoding="utf-8")
    log_path = tmp_path / "stage.log"
    with ServiceHarness(None, "stage") as harness:
        harness.stop_dispatcher()                 # the harness's own; the script serves "stage"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, str(script), str(harness.config_path)],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=_child_env())
        try:
            def serving() -> bool:
                assert proc.poll() is None, log_path.read_text()
                from cauldron_zmq.testing import identify_pid
                return identify_pid(harness.config, "stage") == proc.pid
            wait_until(serving, 30, 0.05, "the README dispatcher serving")
            svc = harness.client()
            for _ in range(5):
                with pytest.raises(DispatcherError) as info:
                    svc["POSITION"].write(10)
                assert info.value.remote_type == "NameError" and "motor" in str(info.value)

            def logged() -> str:
                text = log_path.read_text()
                return text if "Traceback" in text else ""
            text = wait_until(logged, 10, 0.05, "the hook's traceback in the dispatcher's log")
            assert "stage.POSITION" in text and "NameError" in text
            assert "motor.move_to(value)" in text             # the traceback says where
            assert text.count("Traceback") == 1, text         # five failures, one traceback
        finally:
            proc.terminate()
            proc.wait(20)


def test_hook_errors_are_logged_and_throttled(caplog: pytest.LogCaptureFixture) -> None:
    def setup(svc: Any) -> None:
        DFW.Integer("MOVE", svc, initial=0, write=lambda v: 1 / 0)
        DFW.Integer("SENSOR", svc, initial=0, read=lambda: {}["gone"])
        DFW.Integer("LIMITED", svc, initial=0, maximum=5)

    with caplog.at_level(logging.ERROR, logger="cauldron_zmq.dispatcher.hooks"):
        with ServiceHarness(setup, "hooks") as harness:
            svc = harness.client()
            for value in (1, 2, 3):
                with pytest.raises(ZeroDivisionError):
                    svc["MOVE"].write(value)
            with pytest.raises(KeyError):
                svc["SENSOR"].read()
            with pytest.raises(DispatcherError) as info:
                svc["LIMITED"].write(9)                 # a refusal, not a hook failure
            assert info.value.code == "invalid-value"
    records = [r for r in caplog.records if r.name == "cauldron_zmq.dispatcher.hooks"]
    moves = [r for r in records if "hooks.MOVE" in r.getMessage()]
    assert len(moves) == 1 and moves[0].exc_info is not None
    assert "write hook raised ZeroDivisionError" in moves[0].getMessage()
    assert "write-failed" in moves[0].getMessage()
    reads = [r for r in records if "hooks.SENSOR" in r.getMessage()]
    assert len(reads) == 1 and "read hook raised KeyError" in reads[0].getMessage()
    assert not [r for r in records if "LIMITED" in r.getMessage()]


def test_harness_quotes_the_child_output_when_it_exits(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[keyword.X]\ntype = "nonsense"\n', encoding="utf-8")
    with pytest.raises(RuntimeError) as info:
        with running_service(bad, "broken", subprocess=True):
            pass
    message = str(info.value)
    assert "the dispatcher process exited with status 1" in message
    assert "its last output" in message and "nonsense" in message


def test_harness_takes_a_relative_keyword_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kw.toml").write_text('[keyword.TEMP]\ntype = "double"\ninitial = 21.5\n',
                                      encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with running_service("kw.toml", "relative", subprocess=True) as svc:
        assert svc["TEMP"].read() == "21.5"
        assert json.loads(json.dumps(svc.harness.keywords_file)) == str(tmp_path / "kw.toml")
