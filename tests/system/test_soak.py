"""Load: a short soak in CI -- client processes reading, writing and monitoring
two dispatchers for a few seconds, bounded in time and in count.

The work is :func:`scripts/soak.run` (``scripts/soak --clients 20
--dispatchers 5 --duration 60`` is the long version).  Asserted: zero errors
and zero lost, duplicated or reordered broadcasts, every server alive at the
end, and that real work was done.  Never a timing: the figures are printed
(``pytest -s``), not checked.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from scripts_support import load_script

ROOT = Path(__file__).resolve().parents[2]

#: SOAK_DURATION overrides the length of the CI soak (seconds).
DURATION = float(os.environ.get("SOAK_DURATION", "10"))




@pytest.mark.timeout(180)
def test_short_soak(tmp_path: Path) -> None:
    soak = load_script("soak")
    figures = soak.run(clients=4, dispatchers=2, duration=DURATION, rate=100, monitors=2,
                       directory=str(tmp_path))
    print(json.dumps({k: v for k, v in figures.items() if k != "error_samples"}, indent=1))
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["lost"] == 0 and figures["duplicates"] == 0 and figures["disorder"] == 0
    assert figures["servers_died"] == []
    assert figures["problems"] == []
    # the load was real: every client wrote, and every monitor checked broadcasts
    assert figures["writes"] >= 4 * 10
    assert figures["broadcasts_checked"] >= 4 * 2 * 10
    assert figures["operations"] >= 3 * figures["writes"]


def test_a_burst_of_persisted_changes_is_coalesced(tmp_path: Path) -> None:
    """A keyword changed every millisecond is written once per COALESCE window, not
    (as it was) about every second change, each with two fsyncs."""
    import threading
    import time

    from cauldron_zmq.persist import COALESCE, Persister

    persister = Persister(str(tmp_path / "svc.default.json"))
    writes = []
    write = persister._write
    persister._write = lambda values: (writes.append(values), write(values))  # type: ignore
    persister.start("persist-test")
    pace = threading.Event()
    started = time.monotonic()
    for n in range(1, 201):                   # 200 changes, one per millisecond or so
        persister.note("K", n)
        pace.wait(0.001)
    elapsed = time.monotonic() - started
    persister.close()
    assert writes[-1]["K"] == 200              # the last value is always written
    # one write per coalescing window, plus the final flush (and some slack)
    assert len(writes) <= elapsed / COALESCE + 3, f"{len(writes)} writes in {elapsed:.2f} s"
