"""Smoke test of ``scripts/bench``: it runs, cleans up and reports every figure.

No timing is asserted: figures depend on the machine and its load.  This only
checks that ``scripts/bench --quick --json`` finishes, and that its JSON holds
every figure with a finite value and, where a bare baseline exists, a finite
ratio, and that the figures issue 12 sets targets for carry them as bars --
so a change that breaks a measure (or the project path it measures) is
noticed before the next full run.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "scripts" / "bench"

#: Every figure of a run, by id.
FIGURES = {
    "startup", "memory.router", "memory.dispatcher",
    "router.lookups", "router.register.median", "router.register.p99",
    "read.median", "read.p99", "wsame.median", "wsame.p99", "wchg.median", "wchg.p99",
    "aio.read.median", "aio.read.p99", "aio.wchg.median", "aio.wchg.p99", "aio.concurrent",
    "concurrency.reads",
    "broadcast.1.rate", "broadcast.1.lost", "broadcast.1.final",
    "broadcast.10.rate", "broadcast.10.lost", "broadcast.10.final",
    "services.threads", "services.contexts", "services.fds", "services.open",
    "recovery", "array.write", "replicas.first_read",
}
#: Figures without a bare baseline, or whose ratio is undefined when the bare figure is 0.
NO_RATIO = {"recovery", "services.threads", "services.contexts", "services.fds",
            "services.open"}
MAYBE_NO_RATIO = {"broadcast.1.lost", "broadcast.10.lost", "broadcast.1.final",
                  "broadcast.10.final"}
#: Figures with a bar (issue 12's targets, issue 15's for asyncio), and the bar each must carry.
BARS = {"read.median": 1.3, "wchg.median": 1.3, "read.p99": 1.5, "wchg.p99": 1.5,
        "aio.read.median": 1.3, "aio.wchg.median": 1.3, "aio.read.p99": 1.5,
        "aio.wchg.p99": 1.5,
        "broadcast.1.rate": 0.6, "broadcast.10.rate": 0.8, "broadcast.1.lost": 0,
        "broadcast.10.lost": 0, "broadcast.1.final": 0, "broadcast.10.final": 0,
        "services.threads": 2, "services.contexts": 1, "array.write": 0.8}


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.timeout(180)
def test_quick_bench_reports_every_figure() -> None:
    env = dict(os.environ)
    env.pop("CAULDRON_ZMQ_CONFIG", None)
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=170)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads(proc.stdout)

    assert report["quick"] is True
    figures = {f["id"]: f for f in report["figures"]}
    assert set(figures) == FIGURES, stderr[-3000:]
    for fid, f in figures.items():
        assert f["figure"] and f["unit"] is not None, fid
        assert finite(f["project"]), (fid, f["project"])
        if fid in NO_RATIO:
            assert f["bare"] is None and f["ratio"] is None, fid
            continue
        assert finite(f["bare"]), (fid, f["bare"])
        if fid in MAYBE_NO_RATIO and f["bare"] == 0:
            assert f["ratio"] is None, fid
        else:
            assert finite(f["ratio"]) and f["ratio"] >= 0, (fid, f["ratio"])
    for fid, bar in BARS.items():
        assert figures[fid]["bar"] == bar, (fid, figures[fid]["bar"])
        assert isinstance(figures[fid]["meets_bar"], bool), fid
    # the 50 Services really were opened: their sockets hold descriptors
    assert figures["services.fds"]["project"] > 0, figures["services.fds"]
    for d in report["diagnostics"]:
        assert finite(d["value"]) and finite(d["ratio"]), d
    assert "Traceback" not in stderr, stderr[-3000:]
    # nothing of the run is left behind
    assert report["pids"], "the bench reports the processes it started"
    assert not [pid for pid in report["pids"] if _ours(pid)]


def _ours(pid: int) -> bool:
    """Whether ``pid`` is (still) one of the bench's processes, not a reused pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            cmdline = stream.read()
    except OSError:
        return False
    return b"bench" in cmdline or b"auldron" in cmdline
