"""Two routers on two hosts, a dispatcher and a client on a third: a link cut and restored.

The network is :mod:`test_multihost`'s (Linux network namespaces joined by a
bridge; root and iproute2's ``ip`` needed, skipped otherwise): router A on
host ``r``, router B on host ``c``, the dispatcher and its client on host
``d``.  The link between the dispatcher's host and router A is cut (blackhole
routes on both sides, so the other links stay up) while the client reads,
writes and monitors, then restored: nothing is lost, and both books end up
the same, with the same ports.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cauldron_zmq.config import config_from_mapping
from cauldron_zmq.testing import wait_until

try:
    from .test_multihost import ADDRESSES, AGENT, KEYWORDS, Agent, Hosts, children, hosts
except ImportError:
    from test_multihost import (ADDRESSES, AGENT, KEYWORDS, Agent, Hosts,  # type: ignore
                                children, hosts)

pytestmark = pytest.mark.timeout(120)
_ = hosts

ROUTER_A, ROUTER_B, DISPATCHER = ADDRESSES["r"], ADDRESSES["c"], ADDRESSES["d"]

#: The multihost agent, plus "book": one router's live, ready entries.
BOOK_AGENT = AGENT.replace('''        elif op in ("lookup", "shutdown"):''', '''        elif op == "book":
            with RouterClient(config, address=cmd["address"], timeout=500) as rc:
                result = sorted([e["service"], e["host"], e["dispatch_port"],
                                 e["broadcast_port"]] for e in rc.list()["entries"]
                                if e["state"] == "live" and e["ready"])
        elif op in ("lookup", "shutdown"):''')
assert BOOK_AGENT != AGENT


def write_config(path: Path, zmq_host: str, router: str, replica: str) -> Path:
    config = config_from_mapping({
        "zmq": {"host": zmq_host, "timeout": 3000, "heartbeat": 0.2, "liveness": 1.0},
        "zmq-router": {"host": router, "replicas": [f"{replica}:6510"], "timeout": 500,
                       "allow-spawn": False, "heartbeat": 0.5, "expiry": 3.0},
    })
    path.write_text(config.to_toml(), encoding="utf-8")
    return path


def cut(net: Hosts, up: bool) -> None:
    """Blackhole routes between the dispatcher's host and router A (both ways)."""
    verb = "del" if up else "add"
    for host, other in (("d", ROUTER_A), ("r", DISPATCHER)):
        subprocess.run(["ip", "-n", net.ns[host], "route", verb, "blackhole", f"{other}/32"],
                       check=True, capture_output=True, timeout=20)


def book(agent: Agent, address: str) -> Any:
    answer = agent.call("book", address=address)
    return answer["result"] if answer["ok"] else None


def test_a_link_to_one_router_cut_and_restored(hosts: Hosts, tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text(BOOK_AGENT, encoding="utf-8")   # Agent runs this one
    keywords = tmp_path / "stage.toml"
    keywords.write_text(KEYWORDS, encoding="utf-8")
    cfg_a = write_config(tmp_path / "a.toml", "localhost", ROUTER_A, ROUTER_B)
    cfg_b = write_config(tmp_path / "b.toml", "localhost", ROUTER_B, ROUTER_A)
    cfg_d = write_config(tmp_path / "d.toml", DISPATCHER, ROUTER_A, ROUTER_B)
    addresses = [f"tcp://{ROUTER_A}:6510", f"tcp://{ROUTER_B}:6510"]
    with children(tmp_path) as procs:
        for host, cfg in (("r", cfg_a), ("c", cfg_b)):
            procs.append(hosts.run(host, [sys.executable, "-m", "cauldron_zmq.router", "-c",
                                          str(cfg), "-v"], tmp_path / f"router-{host}.log",
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        procs.append(hosts.run("d", [sys.executable, "-m", "cauldron_zmq", "serve", "stage",
                                     str(keywords), "-c", str(cfg_d)],
                               tmp_path / "dispatcher.log",
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        client = Agent(hosts, "d", cfg_d, tmp_path)
        procs.append(client)
        assert client.ok("connect", service="stage", wait=20) == ["MODE", "POSITION"]
        wait_until(lambda: book(client, addresses[0]) == book(client, addresses[1]) != [],
                   20, 0.1, "both routers holding the dispatcher")
        expected = book(client, addresses[0])
        assert expected[0][:2] == ["stage", DISPATCHER]
        client.ok("monitor", keyword="POSITION")

        cut(hosts, up=False)
        for value in (2.5, 3.5):
            client.ok("write", keyword="POSITION", value=value)
            client.wait_event(lambda e, v=value: e.get("ascii") == str(v))
        newcomer = Agent(hosts, "d", cfg_d, tmp_path)      # a new client finds it through B
        procs.append(newcomer)
        assert newcomer.ok("connect", service="stage", wait=10) == ["MODE", "POSITION"]
        assert newcomer.ok("read", keyword="POSITION") == "3.5"
        assert book(client, addresses[1]) == expected
        wait_until(lambda: "will keep trying" in (tmp_path / "dispatcher.log").read_text(),
                   10, 0.1, "the dispatcher noticing router A is cut off")

        cut(hosts, up=True)
        wait_until(lambda: book(client, addresses[0]) == expected and
                   book(client, addresses[1]) == expected, 20, 0.1, "the books converging")
        client.ok("write", keyword="POSITION", value=4.5)
        client.wait_event(lambda e: e.get("ascii") == "4.5")
        assert newcomer.ok("read", keyword="POSITION") == "4.5"
        values = [e["ascii"] for e in client.events if e.get("event") == "value"]
        assert [v for v in values if v in ("2.5", "3.5", "4.5")] == ["2.5", "3.5", "4.5"]
