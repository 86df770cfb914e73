"""The client engine under dispatcher restarts: the final value always arrives.

Issue 10 item 0, the way it failed: five monitoring clients, the dispatcher
SIGKILLed or SIGTERMed and started again ten times, COUNT written as soon as
it answers; every client must end on the last value, in its cache and in its
last callback.  The repair logic itself is tested pure in test_links_pure.py.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import List

import pytest

from cauldron_zmq import ktl
from cauldron_zmq.errors import CauldronError
from cauldron_zmq.testing import ServiceHarness, wait_until

pytestmark = pytest.mark.usefixtures("no_client_threads_left")

KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = 0
"""


def _write_when_it_answers(writer: ktl.Keyword, value: int) -> None:
    """The operator's script: write as soon as the new dispatcher answers."""
    def attempt() -> bool:
        try:
            writer.write(value, timeout=1.0)
        except CauldronError:
            return False
        return True
    wait_until(attempt, 10, 0.01, message=f"writing {value}")


def test_monitors_end_on_the_final_value_after_restarts(tmp_path: Path) -> None:
    path = tmp_path / "count.toml"
    path.write_text(KEYWORDS, encoding="utf-8")
    # a 5 s timeout (the default): a read lost with a killed process stays in flight
    # for several rounds
    with ServiceHarness(path, "rounds", subprocess=True,
                        config={"zmq": {"timeout": 5000, "heartbeat": 1.0, "liveness": 3.0}}) as h:
        clients = [h.client() for _ in range(5)]
        seen: List[List[str]] = []
        for svc in clients:
            kw = svc["COUNT"]
            got: List[str] = []
            kw.callback(lambda k, got=got: got.append(k["ascii"]))
            kw.monitor()
            seen.append(got)
        writer = h.client()["COUNT"]
        final = 0
        for i in range(10):
            if i % 2:
                h.stop_dispatcher()                  # SIGTERM: a clean shutdown
            else:
                h.signal_dispatcher(signal.SIGKILL)  # no goodbye
            h.start_dispatcher()                     # waits until it answers
            final = 2010 + 10 * i
            _write_when_it_answers(writer, final)

        def all_final() -> bool:
            return all(svc["COUNT"]["ascii"] == str(final) and got[-1:] == [str(final)]
                       for svc, got in zip(clients, seen))
        wait_until(all_final, 10, message=(
            "every monitor on the final value "
            f"(caches {[svc['COUNT']['ascii'] for svc in clients]}, "
            f"last callbacks {[got[-1:] for got in seen]})"))
        for svc in clients:                          # and it stays so: nothing older follows
            assert svc["COUNT"].read() == str(final)
        wait_until(lambda: all(d["in_sync"] for svc in clients for d in svc.dispatchers()),
                   5, message="every link in sync (each re-read owed answered)")


def test_a_read_lost_with_a_killed_dispatcher_does_not_block_the_repair(tmp_path: Path) -> None:
    """The interleaving of the stuck clients, made deterministic: a repair read is in
    flight to a dispatcher that is then killed (SIGSTOP holds it unanswered); the
    replacement starts with another value, which only a read can bring.  The
    reconnect, restart and first-heartbeat re-reads must not wait for the lost one
    (which ends only at its 5 s timeout, and used to end the repair with it)."""
    path = tmp_path / "count.toml"
    path.write_text(KEYWORDS, encoding="utf-8")
    with ServiceHarness(path, "lost", subprocess=True,
                        config={"zmq": {"timeout": 5000, "liveness": 3.0}}) as h:
        svc = h.client()
        count = svc["COUNT"]
        got: List[str] = []
        count.callback(lambda k: got.append(k["ascii"]))
        count.monitor()
        wait_until(lambda: got[-1:] == ["0"], 3, message="primed")
        engine = svc._engine
        wait_until(lambda: engine.call(lambda: all(link.started is not None
                                                   for link in engine.links.values())),
                   5, message="a heartbeat of the first dispatcher")
        h.signal_dispatcher(signal.SIGSTOP)
        # A possible loss while it is stopped (as a heartbeat gap would report):
        # the repair read goes to the process that is about to die.
        link = next(iter(engine.links.values()))
        engine.post(lambda: engine._resync(link, "test: a possible loss"))
        h.signal_dispatcher(signal.SIGKILL)
        path.write_text(KEYWORDS.replace("initial = 0", "initial = 7"), encoding="utf-8")
        h.start_dispatcher()
        wait_until(lambda: count["ascii"] == "7" and got[-1:] == ["7"], 8,
                   message=f"the replacement's value in the cache and a callback (seen {got})")
