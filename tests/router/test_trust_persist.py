"""Persisted values and the router's state file under hostile names and failing
disks, with real dispatchers and routers (issue 10, items 4, 7, 8)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from cauldron_zmq import DFW
from cauldron_zmq.config import load_config
from cauldron_zmq.dispatcher import Service
from cauldron_zmq.persist import persist_path
from cauldron_zmq.router import state as router_state
from cauldron_zmq.router import Router, RouterClient
from cauldron_zmq.testing import write_test_config

pytestmark = pytest.mark.timeout(60)


def static_config(tmp_path: Path, **zmq_section: Any) -> Any:
    """No router: the dispatcher binds the configured pair (one dispatcher at a time)."""
    return load_config(write_test_config(tmp_path, overrides={
        "zmq-router": {"enable": False}, "zmq": zmq_section}))


def persisted(name: str, dispatcher: str = "default") -> Any:
    def setup(svc: Any) -> None:
        DFW.Integer("VALUE", svc, initial=0, persist=True)
    return setup


def run(cfg: Any, name: str, dispatcher: str = "default", value: Any = None) -> str:
    """Start a dispatcher, optionally write VALUE, return what VALUE held at start."""
    svc = Service(name, cfg, setup=persisted(name), dispatcher=dispatcher).begin()
    try:
        start = svc["VALUE"].ascii
        if value is not None:
            svc["VALUE"].set(value)
        return start
    finally:
        svc.shutdown()


def files_under(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ====================================================================== item 4

@pytest.mark.parametrize("name", ["../escape", "/abs/name", "sub/../../up", "..", "a\\b"])
def test_names_that_are_paths_are_refused_everywhere(tmp_path: Path, name: str) -> None:
    cfg = static_config(tmp_path)
    with pytest.raises(ValueError, match="name"):
        Service(name, cfg, setup=persisted(name))
    with pytest.raises(ValueError, match="name"):
        Service("demo", cfg, setup=persisted("demo"), dispatcher=name)
    kwfile = tmp_path / "kw.toml"
    kwfile.write_text("[keyword.COUNT]\ntype = 'integer'\n")
    proc = subprocess.run([sys.executable, "-m", "cauldron_zmq", "serve", name, str(kwfile),
                           "-c", cfg.source], capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and len(proc.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path.parent / "escape.default.json").exists()
    assert all(not p.startswith("..") for p in files_under(tmp_path))


def test_no_two_pairs_share_a_file(tmp_path: Path) -> None:
    cfg = static_config(tmp_path)
    run(cfg, "ab.x", "y", 11)
    run(cfg, "ab", "x.y", 22)
    assert run(cfg, "ab.x", "y") == "11"
    assert run(cfg, "ab", "x.y") == "22"


def test_a_long_non_ascii_name_keeps_its_values(tmp_path: Path, caplog: Any) -> None:
    cfg = static_config(tmp_path)
    name = "é" * 200
    with caplog.at_level(logging.ERROR):
        run(cfg, name, value=33)
        assert run(cfg, name) == "33"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    [only] = list(Path(cfg.zmq.persist_dir).iterdir())
    assert len(only.name.encode()) <= 255


def test_an_upgrade_reads_the_old_file_name(tmp_path: Path) -> None:
    cfg = static_config(tmp_path)
    directory = Path(cfg.zmq.persist_dir)
    directory.mkdir(parents=True)
    old = directory / "ab.x.y.json"             # what the previous release wrote
    old.write_text(json.dumps({"format": 1, "saved": 0, "keywords": {"VALUE": {"value": 44}}}))
    assert run(cfg, "ab.x", "y") == "44"
    new = Path(persist_path(cfg.zmq.persist_dir, "ab.x", "y"))
    assert new.exists() and new != old
    assert json.loads(new.read_text())["keywords"]["VALUE"]["value"] == 44
    old.write_text(json.dumps({"format": 1, "saved": 0, "keywords": {"VALUE": {"value": 1}}}))
    assert run(cfg, "ab.x", "y") == "44"        # the new name wins once it exists


# ====================================================================== item 7

def test_a_deeply_nested_values_file_is_set_aside(tmp_path: Path) -> None:
    cfg = static_config(tmp_path)
    path = Path(persist_path(cfg.zmq.persist_dir, "deep", "default"))
    path.parent.mkdir(parents=True)
    path.write_text("[" * 100_000)
    assert run(cfg, "deep", value=5) == "0"     # started, from the initial value
    assert list(path.parent.glob(path.name + ".corrupt-*"))
    assert run(cfg, "deep") == "5"


# ====================================================================== item 8

def test_a_failing_persist_dir_is_retried_with_back_off(tmp_path: Path, caplog: Any) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")                      # every write under it fails (ENOTDIR)
    cfg = static_config(tmp_path, **{"persist-dir": str(blocker / "persist")})
    svc = Service("full", cfg, setup=persisted("full")).begin()
    try:
        with caplog.at_level(logging.ERROR, logger="cauldron_zmq.dispatcher.full"):
            deadline = time.monotonic() + 2.0
            n = 0
            while time.monotonic() < deadline:  # a change every 10 ms for 2 s
                n += 1
                svc["VALUE"].set(n)
                time.sleep(0.01)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert 1 <= len(errors) <= 2, [r.getMessage() for r in errors]
        assert "retrying" in errors[0].getMessage()
        assert svc._persister.retry.failures <= 6   # 0.1, 0.3, 0.7, 1.5 s ... not every 50 ms
    finally:
        svc.shutdown()


def test_an_unwritable_state_file_is_not_retried_per_request(tmp_path: Path, caplog: Any,
                                                             monkeypatch: Any) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cfg = load_config(write_test_config(tmp_path, overrides={
        "zmq-router": {"state-file": str(blocker / "book.json")}}))
    attempts: List[float] = []
    real = router_state.save_state

    def counted(path: str, data: Dict[str, Any]) -> None:
        attempts.append(time.monotonic())
        real(path, data)
    monkeypatch.setattr(router_state, "save_state", counted)
    with caplog.at_level(logging.ERROR, logger="cauldron_zmq.router"):
        with Router(cfg):
            with RouterClient(cfg, timeout=2000) as client:
                for i in range(100):
                    client.register("svc", f"d{i % 3}", "127.0.0.1", keywords=[f"K{i}"])
                    client.lookup("svc")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 3, [r.getMessage() for r in errors]
    assert len(attempts) <= 15, len(attempts)     # back-off, not one per request (was 201)


def test_keyword_files_use_the_same_name_rules(tmp_path: Path) -> None:
    from cauldron_zmq.errors import ConfigurationError
    from cauldron_zmq.keywordfile import read_keyword_file
    path = tmp_path / "kw.toml"
    path.write_text('[keyword."A/B"]\ntype = "integer"\n')
    with pytest.raises(ConfigurationError, match="names are not paths"):
        read_keyword_file(path)
    path.write_text('[keyword."X.Y"]\ntype = "integer"\n')
    assert [spec.name for spec in read_keyword_file(path)] == ["X.Y"]
