"""``cauldron-zmq serve``: a TOML-defined service in a real subprocess."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from click.testing import CliRunner

from cauldron_zmq.commands.serve import serve

try:
    from .test_dispatcher_support import (Client, child_env, router_config, router_process,
                                          router_request, wait_for, write_config)
except ImportError:
    from test_dispatcher_support import (Client, child_env, router_config,  # type: ignore
                                         router_process, router_request, wait_for, write_config)

pytestmark = pytest.mark.timeout(60)

KEYWORDS = textwrap.dedent("""
    [keyword.TEMP]
    type = "double"
    units = "degC"
    max = 100
    initial = 20.5

    [keyword.MODE]
    type = "enumerated"
    enumerators = ["OFF", "ON"]
    initial = "ON"
""")


def test_serve_runs_a_toml_service_until_sigterm(tmp_path: Any) -> None:
    cfg = router_config(tmp_path)
    kwfile = tmp_path / "sim.toml"
    kwfile.write_text(KEYWORDS)
    path = write_config(cfg, tmp_path / "cfg.toml")
    with router_process(cfg, tmp_path, "router.toml"):
        proc = subprocess.Popen([sys.executable, "-m", "cauldron_zmq", "serve", "sim",
                                 str(kwfile), "-c", path, "--dispatcher", "d1"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_env())
        try:
            line = proc.stderr.readline().decode()
            match = re.search(r"requests (tcp://\S+), broadcasts (tcp://\S+);", line)
            assert match, line + proc.stderr.read().decode()
            [entry] = router_request(cfg, "lookup", "sim")["dispatchers"]
            assert entry["dispatcher"] == "d1" and entry["keywords"] == ["MODE", "TEMP"]
            with Client(match.group(1), match.group(2)) as client:
                assert client.read("TEMP")["value"] == 20.5
                assert client.read("mode")["ascii"] == "ON"
                assert client.write("TEMP", 30).payload["value"] == 30.0
                assert client.write("TEMP", 101).payload["code"] == "invalid-value"
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()
        wait_for(lambda: _not_found(cfg, "sim"), what="the service to unregister")


def _not_found(cfg: Any, service: str) -> bool:
    from cauldron_zmq.errors import RouterError
    try:
        router_request(cfg, "lookup", service)
    except RouterError as exc:
        return exc.code == "not-found"
    return False


def test_bad_keyword_file_is_one_line_and_exit_1(tmp_path: Any) -> None:
    kwfile = tmp_path / "bad.toml"
    kwfile.write_text("[keyword.X]\ntype = 'integr'\n")
    result = CliRunner().invoke(serve, ["svc", str(kwfile)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "bad.toml" in lines[0] and "did you mean 'integer'" in lines[0]
    result = CliRunner().invoke(serve, ["svc", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and "not found" in result.output
