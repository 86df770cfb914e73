"""examples/aio_monitor.py runs against the example instrument, so it cannot rot."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cauldron_zmq.testing import ServiceHarness, child_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.timeout(120)


def test_aio_example_runs(tmp_path: Path) -> None:
    with ServiceHarness(EXAMPLES / "instrument.toml", service="demo", directory=tmp_path,
                        subprocess=True) as harness:
        proc = subprocess.Popen([sys.executable, str(EXAMPLES / "aio_monitor.py"), "-c",
                                 str(harness.config_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=child_env(),
                                cwd=str(ROOT), start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:            # a hang: kill it, then fail
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    assert proc.returncode == 0, out
    assert "Keywords of demo: FILTER, " in out
    assert "refused: ConversionError: SETPOINT: 99.0 is above the maximum 40.0" in out
    assert "  monitor: OBSERVER = nobody" in out
    assert "the monitor saw: ada, grace, vera" in out
    assert "FILTER = R" in out
    assert out.rstrip().endswith("Done.")
