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
            assert line.startswith("serving sim (dispatcher d1, 2 keywords): "), line
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


def test_serve_says_1_keyword(tmp_path: Any) -> None:
    """The announcement counts in English: '1 keyword', not '1 keywords' (issue 11)."""
    cfg = router_config(tmp_path)
    kwfile = tmp_path / "one.toml"
    kwfile.write_text('[keyword.TEMP]\ntype = "double"\ninitial = 1.5\n')
    path = write_config(cfg, tmp_path / "cfg.toml")
    with router_process(cfg, tmp_path, "router.toml"):
        proc = subprocess.Popen([sys.executable, "-m", "cauldron_zmq", "serve", "one",
                                 str(kwfile), "-c", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=child_env())
        try:
            line = proc.stderr.readline().decode()
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert line.startswith("serving one (dispatcher default, 1 keyword): "), \
            line + err.decode()
        assert proc.returncode == 0, err.decode()


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


def test_bad_xml_bundle_is_one_line_naming_file_keyword_and_element(tmp_path: Any) -> None:
    bundle = tmp_path / "wheel.xml"
    bundle.write_text('<bundle service="svc"><keyword><name>ATTEN</name><type>double</type>'
                      "<range><minimum>9</minimum><maximum>1</maximum></range></keyword>"
                      "</bundle>")
    result = CliRunner().invoke(serve, ["svc", str(bundle)])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert f"{bundle}: keyword ATTEN: <range>: minimum 9.0 is above maximum 1.0" in line
    bundle.write_text("<bundle><keyword>")
    result = CliRunner().invoke(serve, ["svc", str(bundle)])
    assert result.exit_code == 1 and "malformed XML" in result.output
    result = CliRunner().invoke(serve, ["svc"])
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_serve_toml_and_xml_together(tmp_path: Any) -> None:
    """Several files: a TOML keyword file and a directory of KTL XML bundles."""
    cfg = router_config(tmp_path)
    kwfile = tmp_path / "sim.toml"
    kwfile.write_text(KEYWORDS)
    xmldir = tmp_path / "xml"
    (xmldir / "sim").mkdir(parents=True)
    (xmldir / "sim" / "lamp.xml").write_text(textwrap.dedent("""\
        <?xml version="1.0" ?>
        <bundle name="lamp" service="sim">
          <keyword><name>LAMP</name><type>boolean</type>
            <values><entry><key>1</key><value>Normal</value></entry>
                    <entry><key>0</key><value>Fault</value></entry></values>
          </keyword>
        </bundle>
    """))
    path = write_config(cfg, tmp_path / "cfg.toml")
    with router_process(cfg, tmp_path, "router.toml"):
        proc = subprocess.Popen([sys.executable, "-m", "cauldron_zmq", "serve", "sim",
                                 str(kwfile), str(xmldir), "-c", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_env())
        try:
            line = proc.stderr.readline().decode()
            match = re.search(r"requests (tcp://\S+), broadcasts (tcp://\S+);", line)
            assert match and "3 keywords" in line, line + proc.stderr.read().decode()
            with Client(match.group(1), match.group(2)) as client:
                assert client.write("LAMP", "normal").payload["ascii"] == "Normal"
                assert client.write("LAMP", 0).payload["ascii"] == "Fault"
                assert client.read("TEMP")["value"] == 20.5
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.decode()
