"""No single point of failure: two routers, and a router that comes back by itself.

Real processes on loopback ports: two ``Cauldron-router-zmq`` processes (a
configuration with ``[zmq-router] replicas`` naming the other), dispatchers
run by ``cauldron-zmq serve``, and clients in this process.

* either router SIGKILLed while clients read, write and monitor: no client
  error; a new client finds the service; the router restarted without a
  state file has the same book (same ports) within two heartbeats;
* a router SIGSTOPped (hung, not dead): new clients still find services;
* a router whose book gives our pair to another live dispatcher: a conflict,
  logged and shown by ``cauldron-zmq services``, never a silent move;
* the thread-hosted router's dispatcher exits: another dispatcher starts a
  replacement router process, and new clients succeed within 5 s.

Nothing sleeps to wait (every wait polls a condition with a deadline).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import pytest
from click.testing import CliRunner

from cauldron_zmq import DFW, ktl
from cauldron_zmq.commands.router import services
from cauldron_zmq.config import Config, load_config
from cauldron_zmq.errors import CauldronError
from cauldron_zmq.router import RouterClient
from cauldron_zmq.testing import free_port, wait_until, write_test_config
import process_support
from traffic_support import Traffic

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_client_threads_left")]


KEYWORDS = """
[keyword.COUNT]
type = "integer"
initial = 0

[keyword.MODE]
type = "enumerated"
enumerators = ["OFF", "ON"]
initial = "OFF"
"""


# =============================================================================
# Helpers
# =============================================================================

class Processes(process_support.Processes):
    """The base's children, plus dispatchers serving the KEYWORDS file."""

    def serve(self, service: str, config: Path, log: Optional[str] = None) -> subprocess.Popen:
        keywords = self.directory / "kw.toml"
        if not keywords.exists():
            keywords.write_text(KEYWORDS)
        return self.spawn(["-m", "cauldron_zmq", "serve", service, str(keywords), "-c",
                           str(config)], log or f"{service}.log")


procs = process_support.processes_fixture(Processes)


@pytest.fixture(autouse=True)
def logs_on_failure(tmp_path: Path) -> Iterator[None]:
    """The children's logs, printed at teardown: pytest shows them when a test fails."""
    yield
    for log in sorted(tmp_path.glob("*.log")):
        print(f"---- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


class Installation:
    """Two routers on loopback: A (the configuration's own) and B (its replica)."""

    def __init__(self, tmp_path: Path, procs: Processes, **router_keys: Any) -> None:
        self.procs = procs
        port_b = free_port()
        self.path = write_test_config(tmp_path, pairs=4, overrides={"zmq-router": dict(
            replicas=[f"127.0.0.1:{port_b}"], **router_keys)})
        self.cfg = load_config(self.path)
        port_a = self.cfg.router.port
        # Router B's own configuration: it listens on port_b, A is its replica.
        self.path_b = tmp_path / "router-b.toml"
        self.cfg_b = self.cfg.replace(router={"port": port_b,
                                              "replicas": [f"127.0.0.1:{port_a}"]})
        self.path_b.write_text(self.cfg_b.to_toml())
        self.address = {"A": self.cfg.router_address(), "B": self.cfg_b.router_address()}
        self.router: Dict[str, subprocess.Popen] = {}
        self.starts = 0

    def start(self, which: str) -> subprocess.Popen:
        self.starts += 1
        proc = self.procs.router(self.path if which == "A" else self.path_b,
                                 f"router-{which}-{self.starts}.log")
        self.router[which] = proc
        wait_until(lambda: ping(self.cfg, self.address[which]) == proc.pid, 15,
                   message=f"router {which} answering")
        return proc

    def kill(self, which: str, signum: int = signal.SIGKILL) -> None:
        proc = self.router[which]
        os.kill(proc.pid, signum)
        if signum == signal.SIGKILL:
            proc.wait(10)

    def book(self, which: str) -> Set[Tuple[str, str, str, int, int]]:
        """(service, dispatcher, host, ports) of the live, ready entries of one router."""
        try:
            with RouterClient(self.cfg, address=self.address[which], timeout=500) as rc:
                entries = rc.list()["entries"]
        except CauldronError:
            return set()
        return {(e["service"], e["dispatcher"], e["host"], e["dispatch_port"],
                 e["broadcast_port"]) for e in entries if e["state"] == "live" and e["ready"]}

    def books_agree_on(self, services: Set[str]) -> bool:
        a, b = self.book("A"), self.book("B")
        return a == b and {entry[0] for entry in a} == services


def ping(cfg: Config, address: str) -> Optional[int]:
    try:
        with RouterClient(cfg, address=address, timeout=200) as rc:
            return int(rc.ping()["pid"])
    except CauldronError:
        return None


def new_client_reads(cfg: Config, service: str, expect: str) -> float:
    """Seconds a new client takes to connect and read MODE (asserting the value)."""
    start = time.monotonic()
    with ktl.Service(service, config=cfg) as svc:
        assert svc["MODE"].read() == expect
    return time.monotonic() - start


# =============================================================================
# Two routers, either killed
# =============================================================================

@pytest.mark.parametrize("victim", ["A", "B"])
def test_either_router_sigkilled_while_clients_work(tmp_path: Path, procs: Processes,
                                                    victim: str) -> None:
    site = Installation(tmp_path, procs)
    site.start("A")
    site.start("B")
    for name in ("alpha", "beta"):
        procs.serve(name, site.path)
    wait_until(lambda: site.books_agree_on({"alpha", "beta"}), 20,
               message="both routers hold both dispatchers")
    book = site.book("A")

    with ktl.Service("alpha", config=site.cfg) as alpha, \
            ktl.Service("beta", config=site.cfg) as beta:
        seen: List[str] = []
        mode = beta["MODE"]
        mode.callback(lambda kw: seen.append(kw["ascii"]))
        mode.monitor()
        traffic = Traffic([alpha, beta])
        traffic.start()
        try:
            traffic.progressed(50)
            site.kill(victim)
            traffic.progressed(100)
            mode.write("ON")
            wait_until(lambda: seen[-1:] == ["ON"], 5, message="the monitor sees ON")
            # a new client, after the kill, finds the service within its timeout
            assert new_client_reads(site.cfg, "beta", "ON") < site.cfg.zmq.timeout / 1000
            with ktl.Service("alpha", config=site.cfg) as fresh:
                assert int(fresh["COUNT"].read()) > 0
            wait_until(lambda: all("will keep trying" in procs.log(f"{n}.log")
                                   for n in ("alpha", "beta")), 10,
                       message="both dispatchers noticed the router is gone")

            # restarted without a state file: the same book, within two heartbeats
            restarted = time.monotonic()
            site.start(victim)
            wait_until(lambda: site.book(victim) == book, 10, 0.05,
                       message=f"router {victim} has the whole book again")
            took = time.monotonic() - restarted
            heartbeat = site.cfg.router.heartbeat
            assert took < 2 * heartbeat + 2.0, f"converged in {took:.2f} s"   # generous margin
            traffic.progressed(50)
            mode.write("OFF")
            wait_until(lambda: seen[-1:] == ["OFF"], 5, message="the monitor sees OFF")
        finally:
            traffic.stop()
    assert traffic.errors == []
    assert traffic.ops >= 200


def test_a_hung_router_costs_new_clients_nothing(tmp_path: Path, procs: Processes) -> None:
    site = Installation(tmp_path, procs)
    site.start("A")
    site.start("B")
    procs.serve("alpha", site.path)
    wait_until(lambda: site.books_agree_on({"alpha"}), 20, message="both routers hold alpha")
    for which in ("A", "B"):
        site.kill(which, signal.SIGSTOP)
        try:
            # the configuration's own router (A) hung, then its replica (B)
            took = new_client_reads(site.cfg, "alpha", "OFF")
            assert took < site.cfg.router.timeout / 1000, f"{took:.3f} s with {which} hung"
            with RouterClient(site.cfg) as rc:        # the CLI's client: parallel too
                assert rc.lookup("alpha")["dispatchers"][0]["dispatcher"] == "default"
            result = CliRunner().invoke(services, ["-c", str(site.path)])
            assert result.exit_code == 0, result.output
            assert f"router {site.address[which]}: no answer" in result.output
        finally:
            site.kill(which, signal.SIGCONT)


def test_a_router_that_cannot_grant_our_pair_is_a_reported_conflict(
        tmp_path: Path, procs: Processes) -> None:
    site = Installation(tmp_path, procs, expiry=60.0)
    site.start("A")
    site.start("B")
    first = (site.cfg.router.first_port, site.cfg.router.first_port + 1)
    # Router B's book gives the first pair to another live dispatcher ...
    with RouterClient(site.cfg, address=site.address["B"]) as rc:
        rc.register("other", "default", "127.0.0.1", prefer=first)
    # ... and B is hung while alpha starts, so A (a fresh book) allocates that pair.
    site.kill("B", signal.SIGSTOP)
    svc = DFW.Service("alpha", site.cfg, setup=lambda s: DFW.Integer("N", s, initial=1))
    try:
        assert (svc.address["dispatch_port"], svc.address["broadcast_port"]) == first
        site.kill("B", signal.SIGCONT)
        wait_until(lambda: conflicts_in(site, "A"), 10, 0.05,
                   message="the conflict reported to router A")
        [text] = conflicts_in(site, "A")
        assert site.address["B"] in text and "other/default" in text
        assert ("other", "default", "127.0.0.1") + first in site.book("B")   # never moved
        assert ("alpha", "default", "127.0.0.1") + first in site.book("A")
        result = CliRunner().invoke(services, ["-c", str(site.path)])
        assert result.exit_code == 0, result.output
        assert "conflict reported by alpha/default" in result.output
        assert "the routers disagree on: alpha/default, other/default" in result.output
        listed = json.loads(CliRunner().invoke(services, ["-c", str(site.path),
                                                          "--json"]).output)
        assert [r["router"] for r in listed["routers"]] == [site.address["A"],
                                                            site.address["B"]]
        assert listed["disagree"] == ["alpha/default", "other/default"]
        with ktl.Service("alpha", config=site.cfg) as client:     # still served
            assert client["N"].read() == "1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            site.kill("B", signal.SIGCONT)
        svc.shutdown()


def conflicts_in(site: Installation, which: str) -> List[str]:
    with RouterClient(site.cfg, address=site.address[which], timeout=500) as rc:
        entries = rc.list()["entries"]
    return [text for e in entries if e["service"] == "alpha" for text in e.get("conflicts", ())]


# =============================================================================
# A router that comes back by itself
# =============================================================================

def router_children(parents: Set[int]) -> Set[int]:
    """Router processes whose parent is one of ``parents`` (what dispatchers spawned)."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stream:
                stat = stream.read()
            with open(f"/proc/{name}/cmdline", "rb") as stream:
                cmdline = stream.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        if ppid in parents and b"cauldron_zmq.router" in cmdline:
            found.add(int(name))
    return found


def test_the_thread_hosted_routers_dispatcher_exits_and_another_replaces_it(
        tmp_path: Path, procs: Processes) -> None:
    path = write_test_config(tmp_path, pairs=4, overrides={"zmq-router": {
        "allow-spawn": True, "process": "thread", "timeout": 1500}})   # three starting at once
    cfg = load_config(path)
    host = procs.serve("first", path)        # no router answers: it hosts one in a thread
    wait_until(lambda: ping(cfg, cfg.router_address()) == host.pid, 20,
               message="the first dispatcher hosting the router")
    others = [procs.serve(name, path) for name in ("second", "third")]
    wait_until(lambda: identify_all(cfg, {"first", "second", "third"}), 20,
               message="every dispatcher registered")
    assert all(proc.poll() is None for proc in others)

    host.terminate()                          # a clean exit: its router thread goes with it
    host.wait(20)
    gone = time.monotonic()
    parents = {proc.pid for proc in others}

    def replaced() -> bool:
        procs.pids.update(router_children(parents))
        pid = ping(cfg, cfg.router_address())
        return pid is not None and pid not in parents
    wait_until(replaced, 10, 0.05, message="a replacement router")
    # new clients succeed again within 5 s of the exit
    wait_until(lambda: identify_all(cfg, {"second", "third"}), 10, 0.05,
               message="both dispatchers in the new router's book")
    assert new_client_reads(cfg, "third", "OFF") >= 0
    took = time.monotonic() - gone
    assert took < 5.0, f"new clients waited {took:.2f} s"
    # exactly one replacement serves; one that lost the bind race has exited
    wait_until(lambda: len(router_children(parents)) == 1, 10, 0.05,
               message="exactly one replacement router")
    assert router_children(parents) == {ping(cfg, cfg.router_address())}
    logs = procs.log("second.log") + procs.log("third.log")
    assert "starting a replacement" in logs
    # it outlives the dispatcher that started it
    for proc in others:
        proc.terminate()
        proc.wait(20)
    assert ping(cfg, cfg.router_address()) in procs.pids


def identify_all(cfg: Config, names: Set[str]) -> bool:
    try:
        with RouterClient(cfg, timeout=300) as rc:
            listed = {e["service"] for e in rc.list()["entries"]
                      if e["state"] == "live" and e["ready"]}
    except CauldronError:
        return False
    return names <= listed
