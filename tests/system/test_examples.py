"""Every example runs, so none can rot: the demo (router + example instrument +
client session, exactly as ``scripts/demo`` runs it), and the TOML keyword file
served by ``cauldron-zmq serve``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cauldron_zmq import ktl
from cauldron_zmq.testing import ServiceHarness, write_test_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("CAULDRON_ZMQ_CONFIG", None)
    return env


def _run(cmd, timeout=120.0) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), cwd=str(ROOT), start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:            # a hang: kill the whole group, then fail
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _check_demo_output(result: subprocess.CompletedProcess) -> None:
    out = result.stdout
    assert result.returncode == 0, out
    assert "Keywords of demo: FILTER, HEATER, MOVING, OBSERVER, SETPOINT, TARGET, TEMP" in out
    assert "refused: ConversionError: SETPOINT: 99.0 is above the maximum 40.0" in out
    assert "a second move while moving is refused: RuntimeError: the filter wheel is moving" in out
    assert "FILTER = R" in out
    assert "dispatcher exited with status 0" in out
    assert "router exited with status 0" in out
    assert out.rstrip().endswith("Demo finished.")


def test_demo_runs_end_to_end(tmp_path):
    config = write_test_config(tmp_path)
    _check_demo_output(_run([sys.executable, str(EXAMPLES / "demo.py"), "-c", str(config)]))


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="scripts/demo uses .venv, which scripts/test creates")
def test_readme_demo_command(tmp_path):
    """The README's main-job command itself, on free ports."""
    config = write_test_config(tmp_path)
    _check_demo_output(_run(["bash", str(ROOT / "scripts" / "demo"), "-c", str(config)]))


def test_instrument_toml_is_served(tmp_path):
    """examples/instrument.toml as a simulator: every keyword reads, writes apply."""
    with ServiceHarness(EXAMPLES / "instrument.toml", service="demo", directory=tmp_path,
                        subprocess=True) as harness:
        svc = harness.client()
        try:
            assert set(svc.keywords()) >= {"FILTER", "SETPOINT", "TEMP", "OFFSETS", "SHUTTERS"}
            assert svc["FILTER"].read() == "Clear"
            svc["FILTER"].write("Halpha")
            assert svc["FILTER"].read(binary=True) == 4
            svc["SHUTTERS"].write("blue, guider")
            assert svc["SHUTTERS"].read(binary=True) == 0b101
            svc["OFFSETS"].write([1.5, -2.0])
            assert list(svc["OFFSETS"].read(binary=True)) == [1.5, -2.0]
            with pytest.raises(ktl.DispatcherError, match="above the maximum 40.0"):
                svc["SETPOINT"].write(41)
            with pytest.raises(ktl.DispatcherError) as refused:
                svc["TEMP"].write(30)
            assert refused.value.code == "read-only"
        finally:
            svc.shutdown()


def test_instrument_xml_is_served(tmp_path):
    """examples/instrument.xml: the same keywords as a KTL XML bundle, with KTL's rules."""
    with ServiceHarness(EXAMPLES / "instrument.xml", service="demo", directory=tmp_path,
                        subprocess=True) as harness:
        svc = harness.client()
        try:
            assert set(svc.keywords()) == {"FILTER", "TARGET", "MOVING", "HEATER", "SETPOINT",
                                           "TEMP", "OBSERVER", "OFFSETS", "SHUTTERS"}
            svc["FILTER"].write("halpha")
            assert svc["FILTER"].read() == "Halpha" and svc["FILTER"].read(binary=True) == 4
            svc["HEATER"].write(1)
            assert svc["HEATER"].read() == "on"
            svc["SETPOINT"].write(25)
            assert svc["SETPOINT"].read() == "25.0"
            svc["OFFSETS"].write([1.5, -2.0])
            assert list(svc["OFFSETS"].read(binary=True)) == [1.5, -2.0]
            with pytest.raises(ktl.DispatcherError, match="1 element, expected 2"):
                svc["OFFSETS"].write([1.5])
            with pytest.raises(ktl.DispatcherError, match="above the maximum 40.0"):
                svc["SETPOINT"].write(41)
            with pytest.raises(ktl.DispatcherError) as refused:
                svc["TEMP"].write(30)
            assert refused.value.code == "read-only"
        finally:
            svc.shutdown()
