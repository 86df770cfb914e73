"""Child processes of one test, each killed and reaped at the end (SIGCONT first, so a
stopped one dies too).  Shared by the fault and replica tests."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List, Set

import pytest

from cauldron_zmq.testing import child_env


class Processes:
    """Children of one test; ``pids`` are others to kill (routers our dispatchers spawned)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: List[subprocess.Popen] = []
        self.pids: Set[int] = set()

    def spawn(self, args: List[str], log: str, **kwargs: Any) -> subprocess.Popen:
        """``python ARGS`` in the test's directory, its output appended to ``log``."""
        with open(self.directory / log, "ab") as stream:
            kwargs.setdefault("stdout", stream)
            proc = subprocess.Popen([sys.executable] + args, stdin=kwargs.pop(
                "stdin", subprocess.DEVNULL), stderr=stream, env=child_env(),
                cwd=self.directory, **kwargs)
        self.procs.append(proc)
        return proc

    def router(self, config_path: Path, log: str) -> subprocess.Popen:
        return self.spawn(["-m", "cauldron_zmq.router", "-c", str(config_path), "-vvv"], log)

    def log(self, name: str) -> str:
        path = self.directory / name
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
            proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def processes_fixture(kind: type = Processes) -> Any:
    """A ``procs`` fixture of ``kind`` (a Processes subclass) for one test module."""
    @pytest.fixture
    def procs(tmp_path: Path) -> Iterator[Processes]:
        p = kind(tmp_path)
        try:
            yield p
        finally:
            p.close()
    return procs
