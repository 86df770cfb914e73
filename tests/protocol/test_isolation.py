"""``cauldron_zmq.protocol`` is sans-I/O: it imports with no socket, thread or ZeroMQ.

The state machines take the time as an argument and return what to do; a
module that reached for ``zmq``, ``socket`` or ``threading`` would be doing
I/O (or locking) itself.  The import runs in a fresh interpreter in which
those modules cannot be imported at all.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from cauldron_zmq.testing import child_env

BLOCKED = ("zmq", "socket", "threading", "_socket", "selectors", "select", "asyncio")

PROBE = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is unimportable in this test")
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, Refuse())
    import cauldron_zmq.protocol as p
    from cauldron_zmq.protocol import (backoff, book, bookfile, cache, entries, links, pairs,
                                       payloads, replicas, requests, retry, wire)
    assert p.request("read", "X").command == "read"
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok", len([n for n in sys.modules if n.startswith("cauldron_zmq.")]))
""")


def test_protocol_imports_without_zmq_socket_or_threading() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, ",".join(BLOCKED)], env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_the_probe_would_notice_a_socket_import() -> None:
    """The blocking itself works: importing the client under it fails."""
    probe = PROBE.replace("import cauldron_zmq.protocol as p", "import cauldron_zmq.client")
    out = subprocess.run([sys.executable, "-c", probe, ",".join(BLOCKED)], env=child_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "unimportable in this test" in out.stderr
